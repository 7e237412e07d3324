"""The GCS backend against a real fake-gcs-server: the contract, restic's layout, the CLI end to end."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import threading
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as api
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from backends import open_backend
from backends.base import AccessDeniedError, BackendError, FileType, Handle, NotFoundError, TransientError
from backends.gcs import KEY_FIELD, GCSBackend, map_error
from backends.spec import BackendSpec
from stash_runner.errors import BadInput
from stash_runner.restic.reader import find_file, iter_content
from stash_runner.restic.repository import Repository
from stash_runner.stash.objects import Secret

from .backend_contract import check_contract
from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, runner
from .pgcluster import free_port
from .test_engine import backup_bytes

NS = ["-n", "demo"]
NO_SECRET = Secret("Secret demo/repo-secret", {})
# Names of a restic repository under a prefix: config, keys/<id>, data/<xx>/<xx...>, index/, snapshots/.
_HEX = "[0-9a-f]{64}"
LAYOUT = re.compile(rf"^(config|(keys|index|snapshots)/{_HEX}|data/([0-9a-f]{{2}})/\3[0-9a-f]{{62}})$")


def fresh_bucket() -> str:
    return f"stash-{uuid.uuid4().hex[:16]}"


def emulator_client(gcs_server) -> storage.Client:
    """The google client pointed at the emulator directly: the judge of what the backend wrote."""
    return storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs_server.url})


def backend(gcs_server, bucket: str, prefix: str = "", secret: Secret = NO_SECRET, **spec) -> GCSBackend:
    return GCSBackend.from_spec(BackendSpec("gcs", bucket=bucket, prefix=prefix, **spec), secret, "test",
                                timeout=30, environ=gcs_server.env)


def gcs_env(gcs_server) -> dict[str, str]:
    return {**os.environ, **gcs_server.env}


def object_names(gcs_server, bucket: str) -> list[str]:
    with emulator_client(gcs_server) as client:
        return sorted(b.name for b in client.list_blobs(bucket))


def test_contract_on_a_bucket_that_does_not_exist_yet(gcs_server):
    bucket = fresh_bucket()
    judge = emulator_client(gcs_server)
    assert judge.lookup_bucket(bucket) is None
    b = backend(gcs_server, bucket, "/stash/demo/")
    assert b.location == f"gs:{bucket}:/stash/demo" and b.connections == 5
    try:
        check_contract(b)
    finally:
        b.close()
    assert judge.lookup_bucket(bucket) is not None
    names = object_names(gcs_server, bucket)
    assert "stash/demo/config" in names and all(n.startswith("stash/demo/") for n in names)


def test_no_prefix_and_missing_bucket(gcs_server):
    b = backend(gcs_server, fresh_bucket(), max_connections=9)
    assert b.location == f"gs:{b.bucket_name}:/" and b.connections == 9
    assert list(b.list(FileType.SNAPSHOT)) == []  # no bucket: nothing in it
    assert not b.exists(Handle(FileType.CONFIG))
    b.create()
    b.save(Handle(FileType.CONFIG), b"x")
    assert object_names(gcs_server, b.bucket_name) == ["config"]  # no leading slash without a prefix
    b.close()


def test_unreachable_server_is_transient_and_names_the_object():
    dead = GCSBackend.from_spec(BackendSpec("gcs", bucket="b", prefix="p"), NO_SECRET, "test", timeout=2,
                                environ={"STORAGE_EMULATOR_HOST": f"127.0.0.1:{free_port()}"})
    h = Handle(FileType.DATA, "ab" * 32)
    # Above 8 MiB the client takes the resumable path; its session URL must not leak into messages.
    for call in (lambda: dead.save(h, os.urandom(9 * 1024 * 1024)), lambda: dead.load(h), lambda: dead.stat(h)):
        with pytest.raises(TransientError) as e:
            call()
        assert str(e.value).startswith("gs:b:/p: ") and h.path() in str(e.value)
        assert "upload_id" not in str(e.value)


def test_parallel_16mib_uploads_use_parallel_connections(gcs_server, caplog):
    b = backend(gcs_server, fresh_bucket(), "p", max_connections=8)
    b.create()
    rnd = random.Random(7)
    blobs = {Handle(FileType.DATA, f"{i:02x}" + "0" * 62): rnd.randbytes(16 * 1024 * 1024 + i) for i in range(8)}
    start = threading.Barrier(len(blobs))

    def save(h: Handle) -> None:
        start.wait()
        b.save(h, blobs[h])

    with caplog.at_level(logging.WARNING, logger="urllib3"):
        threads = [threading.Thread(target=save, args=(h,)) for h in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(b.list(FileType.DATA)) == sorted((h.name, len(d)) for h, d in blobs.items())
    for h, data in blobs.items():
        assert b.load(h) == data
        assert b.load(h, 8 * 1024 * 1024 - 3, 1 << 20) == data[8 * 1024 * 1024 - 3:9 * 1024 * 1024 - 3]
    pools = b.client._http.get_adapter(gcs_server.url).poolmanager.pools
    keys = pools.keys()  # a RecentlyUsedContainer: no iteration, but keys()
    opened = sum(pools[k].num_connections for k in keys)
    assert opened >= 2, "the uploads were serialized on one connection"
    assert "Connection pool is full" not in caplog.text
    b.close()


def test_engine_stream_of_several_packs_restores_byte_exact(gcs_server, caplog):
    """40 MB of incompressible data: three 16 MiB packs, uploaded by the archiver's upload threads."""
    spec = BackendSpec("gcs", bucket=fresh_bucket(), prefix="engine")
    data = random.Random(3).randbytes(40 * 1024 * 1024)
    with caplog.at_level(logging.WARNING):
        be = open_backend(spec, NO_SECRET, "test", environ=gcs_server.env)  # as the CLI does: with retries
        try:
            snap_id = backup_bytes(Repository.init(be, REPO_PASSWORD), data)
        finally:
            be.close()
        be = open_backend(spec, NO_SECRET, "test", environ=gcs_server.env)
        try:
            repo = Repository.open(be, REPO_PASSWORD)
            repo.load_index()
            _, node = find_file(repo, repo.find_snapshot(snap_id), "/dumpfile.sql")
            assert b"".join(iter_content(repo, node)) == data
        finally:
            be.close()
    packs = [n for n in object_names(gcs_server, spec.bucket) if n.startswith("engine/data/")]
    assert len(packs) >= 3
    assert "Connection pool is full" not in caplog.text and "retry" not in caplog.text


def test_cli_backup_writes_restics_layout_and_restores(gcs_server, source_pg, fresh_pg, tmp_path):
    bucket = fresh_bucket()
    gcs = {"gcs": {"bucket": bucket, "prefix": "/demo/pg"}}
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, backend=gcs)
    r = runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo",
               env=gcs_env(gcs_server), check=True)
    assert b"saved for host-0" in r.stderr, r.stderr

    names = object_names(gcs_server, bucket)
    assert names and all(n.startswith("demo/pg/") for n in names), names
    rel = [n[len("demo/pg/"):] for n in names]
    assert all(LAYOUT.match(n) for n in rel), rel
    kinds = {n.split("/")[0] for n in rel}
    assert kinds == {"config", "keys", "data", "index", "snapshots"}  # and no lock left behind

    # restic itself judges the objects: the gs layout is the local layout, so a copy is a repository.
    copy = tmp_path / "copy"
    with emulator_client(gcs_server) as client:
        for blob in client.list_blobs(bucket, prefix="demo/pg/"):
            dest = copy / blob.name[len("demo/pg/"):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob.download_as_bytes())
    env = {**os.environ, "RESTIC_PASSWORD": REPO_PASSWORD, "RESTIC_REPOSITORY": str(copy)}
    check = subprocess.run(["restic", "--no-cache", "--no-lock", "check", "--read-data"], env=env,
                           capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    dump = subprocess.run(["restic", "--no-cache", "--no-lock", "dump", "latest", "/dumpfile.sql"], env=env,
                          capture_output=True, check=True).stdout
    assert normalize_dump(dump) == normalize_dump(source_pg.pg_dumpall())

    target = fresh_pg()
    runner("restore", "--objects", objects_yaml(str(tmp_path / "dst.yaml"), cluster=target, backend=gcs), *NS,
           "--appbinding", "pg", "--repository", "repo", env=gcs_env(gcs_server), check=True)
    assert target.contents() == source_pg.contents()


def test_stash_addon_flags_with_gcs(gcs_server, source_pg, fresh_pg, tmp_path):
    bucket = fresh_bucket()
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, backend={"gcs": {"bucket": bucket}})
    flags = ["--provider=gcs", f"--bucket={bucket}", "--path=stash/pg", "--storage-secret-name=repo-secret",
             "--namespace=demo", "--appbinding=pg"]
    runner("backup-pg", "--objects", objects, *flags, "--hostname=host-0", "--max-connections=3",
           env=gcs_env(gcs_server), check=True)
    names = object_names(gcs_server, bucket)
    assert "stash/pg/config" in names and any(n.startswith("stash/pg/snapshots/") for n in names)
    target = fresh_pg()
    runner("restore-pg", "--objects", objects_yaml(str(tmp_path / "t.yaml"), cluster=target,
                                                    backend={"gcs": {"bucket": bucket}}),
           *flags, "--snapshot=latest", "--source-hostname=host-0", env=gcs_env(gcs_server), check=True)
    assert target.contents() == source_pg.contents()


KEY_TEXT = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BA'


def test_malformed_key_is_exit_2_naming_secret_and_key(gcs_server, source_pg, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, backend={"gcs": {"bucket": "b"}},
                           storage_secret={KEY_FIELD: KEY_TEXT, "GOOGLE_PROJECT_ID": "proj"})
    for env in (gcs_env(gcs_server), {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}):
        r = runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and f"Secret demo/repo-secret: data.{KEY_FIELD}" in lines[0], lines
        assert "MIIEvQ" not in lines[0] and "BEGIN PRIVATE" not in lines[0]


@pytest.mark.parametrize("text", [
    "not json at all MIIEvQ",
    '["MIIEvQ"]',
    '{"type": "service_account", "client_email": "a@b", "token_uri": "https://x"}',
    '{"type": "service_account", "client_email": "a@b", "token_uri": "https://x", "private_key": "MIIEvQ"}',
])
def test_unusable_keys_are_bad_input_without_the_key(text):
    secret = Secret("Secret demo/s", {KEY_FIELD: text.encode()})
    with pytest.raises(BadInput) as e:
        GCSBackend.from_spec(BackendSpec("gcs", bucket="b"), secret, "test", timeout=5, environ={})
    assert str(e.value).startswith(f"Secret demo/s: data.{KEY_FIELD} ") and "MIIEvQ" not in str(e.value)


def test_a_valid_key_is_used_with_its_project(gcs_server):
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "from-key", "private_key_id": "1", "private_key": pem,
           "client_email": "runner@from-key.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": "https://oauth2.googleapis.com/token"}
    secret = Secret("Secret demo/s", {KEY_FIELD: json.dumps(key).encode()})
    b = GCSBackend.from_spec(BackendSpec("gcs", bucket="b"), secret, "test", timeout=5, environ={})
    assert isinstance(b.client._credentials, service_account.Credentials)
    assert b.client.project == "from-key"
    b.close()
    secret = Secret("Secret demo/s", {KEY_FIELD: json.dumps(key).encode(), "GOOGLE_PROJECT_ID": b"explicit"})
    b = backend(gcs_server, "b", secret=secret)  # the emulator: anonymous, whatever the key
    assert isinstance(b.client._credentials, AnonymousCredentials) and b.client.project == "explicit"
    b.close()


def test_no_key_and_no_default_credentials_is_bad_input(source_pg, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, backend={"gcs": {"bucket": "b"}})
    # No emulator, no GOOGLE_APPLICATION_CREDENTIALS, an empty gcloud config, no metadata server probe.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "STORAGE_EMULATOR", "CLOUDSDK"))}
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True")
    r = runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip().splitlines() == [
        f"stash-runner: error: Secret demo/repo-secret: data.{KEY_FIELD} is missing and no application default "
        "credentials (workload identity) are available"]


def test_error_mapping():
    url = "PUT http://h/upload/storage/v1/b/x/o?uploadType=resumable&upload_id=SESSION-TOKEN: "
    cases = [(api.TooManyRequests(url + "slow down"), TransientError),
             (api.ServiceUnavailable(url + "busy"), TransientError),
             (api.from_http_status(599, url + "odd"), TransientError),
             (api.Forbidden(url + "denied"), AccessDeniedError),
             (api.Unauthorized(url + "who"), AccessDeniedError),
             (api.NotFound(url + "gone"), NotFoundError),
             (api.BadRequest(url + "bad"), BackendError),
             (ConnectionResetError("reset"), TransientError),
             (RuntimeError("odd"), BackendError)]
    for exc, cls in cases:
        got = map_error(exc, "gs:b:/p", "save data/ab/ab12")
        assert type(got) is cls, (exc, got)
        assert str(got).startswith("gs:b:/p: save data/ab/ab12: ") and "SESSION-TOKEN" not in str(got)
    assert "credentials were rejected" in str(map_error(api.Forbidden("x"), "gs:b:/", "stat config"))
