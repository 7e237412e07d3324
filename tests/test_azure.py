"""The Azure Blob backend against a real Azurite: the contract, restic's layout, PostgreSQL end to end."""

from __future__ import annotations

import base64
import http.server
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import AccountSasPermissions, BlobServiceClient, ResourceTypes, generate_account_sas

from backends.azure import AzureBackend, redact
from backends.base import AccessDeniedError, BackendError, FileType, Handle, NotFoundError, TransientError
from backends.retry import RetryBackend, RetryPolicy
from backends.spec import BackendSpec
from stash_runner.errors import BadInput
from stash_runner.restic.reader import find_file, iter_content
from stash_runner.restic.repository import Repository
from stash_runner.stash.objects import Secret

from .backend_contract import check_contract
from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .servers import AZURITE_KEY
from .test_engine import backup_bytes

NS = ["-n", "demo"]
ID = r"[0-9a-f]{64}"
RESTIC_NAME = re.compile(rf"^(config|keys/{ID}|index/{ID}|snapshots/{ID}|locks/{ID}|data/(?P<fan>[0-9a-f]{{2}})/{ID})$")


@pytest.fixture(scope="module")
def az(azurite_server) -> dict[str, str]:
    """AZURE_ACCOUNT_NAME, AZURE_ACCOUNT_KEY, AZURE_ENDPOINT of the running Azurite."""
    return dict(azurite_server.env)


@pytest.fixture(scope="module")
def service(az):
    """The SDK, used directly as the independent view of what is in the containers."""
    client = BlobServiceClient(az["AZURE_ENDPOINT"],
                               credential=AzureNamedKeyCredential(az["AZURE_ACCOUNT_NAME"], az["AZURE_ACCOUNT_KEY"]))
    yield client
    client.close()


def container_name() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


def secret(**data: str) -> Secret:
    return Secret("Secret demo/repo-secret", {k: v.encode() for k, v in data.items()})


def open_azure(container: str, prefix: str, creds: dict[str, str], *, environ: dict[str, str] | None = None,
               max_connections: int = 0) -> AzureBackend:
    spec = BackendSpec("azure", bucket=container, prefix=prefix, max_connections=max_connections)
    return AzureBackend.from_spec(spec, secret(**creds), "Repository demo/repo", timeout=30, environ=environ or {})


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Azure setting of its own, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env.update(extra)
    return env


def blob_names(service: BlobServiceClient, container: str) -> list[str]:
    return sorted(b.name for b in service.get_container_client(container).list_blobs())


def container_exists(service: BlobServiceClient, container: str) -> bool:
    return service.get_container_client(container).exists()


def backup(objects: str, *extra: str, env: dict[str, str]):
    return runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", *extra,
                  env=env, check=True)


def dump_latest(objects: str, env: dict[str, str]) -> bytes:
    return runner("dump", "--objects", objects, *NS, "--repository", "repo", "latest", env=env, check=True).stdout


# -- the backend on its own -----------------------------------------------------------------------


def test_contract_on_a_new_container(az, service):
    container = container_name()
    assert not container_exists(service, container)
    backend = open_azure(container, "/stash/pg-one/", az)
    try:
        assert backend.location == f"azure:{container}:/stash/pg-one"
        check_contract(backend)  # its create() makes the container
        assert container_exists(service, container)
        assert all(n.startswith("stash/pg-one/") for n in blob_names(service, container))
        # Put Blob with Content-MD5: the service checked the body and keeps the hash
        props = service.get_blob_client(container, "stash/pg-one/config").get_blob_properties()
        assert props.content_settings.content_md5 is not None
    finally:
        backend.close()


def test_contract_with_a_sas_and_no_prefix(az, service):
    """A SAS token (given with its leading '?'), the account taken from the environment."""
    sas = generate_account_sas(az["AZURE_ACCOUNT_NAME"], az["AZURE_ACCOUNT_KEY"],
                               ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1))
    container = container_name()
    environ = {"AZURE_ACCOUNT_NAME": az["AZURE_ACCOUNT_NAME"], "AZURE_ENDPOINT": az["AZURE_ENDPOINT"]}
    backend = open_azure(container, "", {"AZURE_ACCOUNT_SAS": "?" + sas}, environ=environ)
    try:
        assert backend.location == f"azure:{container}:/"
        check_contract(backend)
        assert [n for n in blob_names(service, container) if not RESTIC_NAME.match(n)] == []
    finally:
        backend.close()
    # A read-only SAS: the refusal is AccessDeniedError, and the token's signature is in no message.
    read_only = generate_account_sas(az["AZURE_ACCOUNT_NAME"], az["AZURE_ACCOUNT_KEY"],
                                     ResourceTypes(container=True, object=True),
                                     AccountSasPermissions(read=True, list=True),
                                     expiry=datetime.now(UTC) + timedelta(hours=1))
    backend = open_azure(container, "", {"AZURE_ACCOUNT_SAS": read_only, "AZURE_ENDPOINT": az["AZURE_ENDPOINT"]})
    try:
        assert backend.load(Handle(FileType.CONFIG)) == b"cfg"
        with pytest.raises(AccessDeniedError) as e:
            backend.save(Handle(FileType.SNAPSHOT, "0" * 64), b"x")
        signature = dict(p.split("=", 1) for p in read_only.split("&"))["sig"]
        assert str(e.value).startswith(f"azure:{container}:/: save snapshots/{'0' * 64}")
        assert signature not in str(e.value) and signature not in repr(backend)
    finally:
        backend.close()


def test_parallel_saves_use_a_pool_as_large_as_the_connections(az, service, caplog):
    """12 uploads at once: the HTTP pool holds them all (requests' default of 10 would discard some)."""
    container = container_name()
    backend = open_azure(container, "p", az, max_connections=12)
    payloads = {os.urandom(32).hex(): os.urandom(4 * 1024 * 1024) for _ in range(12)}
    barrier = threading.Barrier(12)

    def save(item: tuple[str, bytes]) -> None:
        barrier.wait(10)  # all twelve start together
        backend.save(Handle(FileType.DATA, item[0]), item[1])

    try:
        backend.create()
        with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"), ThreadPoolExecutor(12) as pool:
            list(pool.map(save, payloads.items()))
        assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
        assert dict(backend.list(FileType.DATA)) == {n: len(d) for n, d in payloads.items()}
        name = next(iter(payloads))
        assert backend.load(Handle(FileType.DATA, name), 12345, 1000) == payloads[name][12345:13345]
    finally:
        backend.close()


def test_a_40_mb_stream_in_several_packs_uploaded_in_parallel(az, service):
    container = container_name()
    backend = RetryBackend(open_azure(container, "big", az), RetryPolicy(timeout=30))
    data = random.Random(7).randbytes(40 * 1024 * 1024)  # incompressible: three ~16 MiB packs
    try:
        assert backend.connections == 5
        started = time.monotonic()
        snap_id = backup_bytes(Repository.init(backend, REPO_PASSWORD), data)
        elapsed = time.monotonic() - started
        packs = list(backend.list(FileType.DATA))
        assert len(packs) >= 3 and max(size for _, size in packs) > 15 * 1024 * 1024
        # each pack went up as one Put Blob: committed, with no uncommitted blocks left behind
        for name, _ in packs:
            blob = service.get_blob_client(container, f"big/data/{name[:2]}/{name}")
            assert blob.get_block_list("uncommitted")[1] == []
        repo = Repository.open(backend, REPO_PASSWORD)
        repo.load_index()
        snap = repo.find_snapshot(snap_id)
        _, node = find_file(repo, snap, "/dumpfile.sql")
        assert b"".join(iter_content(repo, node)) == data
        assert elapsed < 60
    finally:
        backend.close()


def test_settings_that_cannot_work_are_bad_input_naming_the_secret(az):
    with pytest.raises(BadInput, match=r"^Secret demo/repo-secret: data\.AZURE_ACCOUNT_NAME is missing"):
        open_azure(container_name(), "", {"AZURE_ACCOUNT_KEY": az["AZURE_ACCOUNT_KEY"]})
    with pytest.raises(BadInput, match=r"^Secret demo/repo-secret: data\.AZURE_ACCOUNT_KEY is not valid base64$"):
        open_azure(container_name(), "", {"AZURE_ACCOUNT_NAME": "acct", "AZURE_ACCOUNT_KEY": "not base64!"})
    with pytest.raises(BadInput, match=r"container 'Bad_Name' is not a valid container name"):
        open_azure("Bad_Name", "", az)
    with pytest.raises(BadInput, match=r"AZURE_STORAGE_CONNECTION_STRING is not a valid storage connection"):
        open_azure(container_name(), "", {"AZURE_STORAGE_CONNECTION_STRING": "AccountKey=secret-part"})
    # Without key, SAS or connection string: a token credential, which Azure only accepts over https.
    with pytest.raises(BadInput, match="need an https endpoint"):
        open_azure(container_name(), "", {"AZURE_ACCOUNT_NAME": "acct", "AZURE_ENDPOINT": az["AZURE_ENDPOINT"]})
    # the default endpoint is the public cloud's, or the one AZURE_ENDPOINT_SUFFIX names
    b = open_azure(container_name(), "", {"AZURE_ACCOUNT_NAME": "acct", "AZURE_ACCOUNT_SAS": "sv=1&sig=abc"},
                   environ={"AZURE_ENDPOINT_SUFFIX": "core.chinacloudapi.cn"})
    assert b.service.url.startswith("https://acct.blob.core.chinacloudapi.cn")
    b.close()
    assert redact("GET https://a.blob.core.windows.net/c/x?sv=1&sig=abc%2Fdef failed; sig=zzz") == \
        "GET https://a.blob.core.windows.net/c/x failed; sig=REDACTED"


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status and error code in ``server.answer``; or hangs up."""

    def _answer(self) -> None:
        status, code = self.server.answer  # type: ignore[attr-defined]
        if status == 0:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>m</Message></Error>'.encode()
        self.send_response(status)
        self.send_header("x-ms-error-code", code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def test_failures_map_to_the_contract_and_never_quote_the_sas():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/acct"
    backend = open_azure("faults", "p", {"AZURE_ACCOUNT_SAS": "sv=2022-11-02&ss=b&sig=TOPSECRETSIG%3D",
                                         "AZURE_ENDPOINT": endpoint})
    h = Handle(FileType.DATA, "cd" * 32)
    cases = [((503, "ServerBusy"), TransientError), ((500, "InternalError"), TransientError),
             ((429, "TooManyRequests"), TransientError), ((400, "Md5Mismatch"), TransientError),
             ((0, ""), TransientError), ((403, "AuthenticationFailed"), AccessDeniedError),
             ((403, "AuthorizationPermissionMismatch"), AccessDeniedError), ((400, "InvalidUri"), BackendError)]
    calls = [("save", lambda: backend.save(h, b"data")), ("load", lambda: backend.load(h, 5, 10)),
             ("stat", lambda: backend.stat(h)), ("remove", lambda: backend.remove(h))]
    try:
        for answer, expected in cases:
            server.answer = answer  # type: ignore[attr-defined]
            for what, call in calls:
                if what == "stat" and answer[1] == "Md5Mismatch":
                    continue  # a HEAD answer has no body to say so: a plain 400
                with pytest.raises(BackendError) as e:
                    call()
                assert type(e.value) is expected, (answer, what, e.value)
                message = str(e.value)
                assert message.startswith(f"azure:faults:/p: {what} data/cd/{'cd' * 32}"), message
                assert "TOPSECRETSIG" not in message and "sig=" not in message, message
        server.answer = (404, "ContainerNotFound")  # type: ignore[attr-defined]
        assert list(backend.list(FileType.SNAPSHOT)) == []  # no container: an empty repository
        with pytest.raises(NotFoundError):
            backend.stat(h)
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


# -- through the CLI ------------------------------------------------------------------------------


def test_backup_writes_restics_layout_under_the_prefix(source_pg, az, service, tmp_path):
    container = container_name()
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, storage_secret=az,
                           backend={"azure": {"container": container, "prefix": "/stash/demo/pg/"}})
    r = backup(objects, env=clean_env())
    assert f"azure:{container}:/stash/demo/pg".encode() in r.stderr
    names = blob_names(service, container)
    assert all(n.startswith("stash/demo/pg/") for n in names), names
    rel = [n[len("stash/demo/pg/"):] for n in names]
    assert [n for n in rel if not RESTIC_NAME.match(n)] == []
    for n in rel:
        m = RESTIC_NAME.match(n)
        assert m is not None
        if m["fan"]:
            assert n.split("/")[2].startswith(m["fan"])  # data/xx/xx...
    kinds = {n.split("/")[0] for n in rel}
    assert kinds == {"config", "keys", "index", "snapshots", "data"}  # and the lock is gone again
    # restic itself judges the bytes: a copy of the blobs is a valid local repository
    local = tmp_path / "copy"
    for n in rel:
        (local / n).parent.mkdir(parents=True, exist_ok=True)
        (local / n).write_bytes(service.get_blob_client(container, f"stash/demo/pg/{n}").download_blob().readall())
    restic(str(local), "check", "--read-data")
    assert normalize_dump(restic(str(local), "dump", "latest", "/dumpfile.sql").stdout) == \
        normalize_dump(source_pg.pg_dumpall())


def test_backup_and_restore_with_the_key_in_the_secret(source_pg, fresh_pg, az, tmp_path):
    container = container_name()
    backend = {"azure": {"container": container, "prefix": "pg"}}
    env = clean_env()
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, backend=backend, storage_secret=az)
    r = backup(objects, env=env)
    assert AZURITE_KEY.encode() not in r.stderr and REPO_PASSWORD.encode() not in r.stderr
    assert b"Request URL" not in r.stderr  # the SDK's per-request log lines belong to --verbose only
    assert normalize_dump(dump_latest(objects, env)) == normalize_dump(source_pg.pg_dumpall())
    target = fresh_pg()
    dst = objects_yaml(str(tmp_path / "dst.yaml"), cluster=target, backend=backend, storage_secret=az)
    runner("restore", "--objects", dst, *NS, "--appbinding", "pg", "--repository", "repo", env=env, check=True)
    assert target.contents() == source_pg.contents()


def test_credentials_from_the_environment_or_a_connection_string(source_pg, az, service, tmp_path):
    # the Secret holds only RESTIC_PASSWORD; the pod's environment has the account
    container = container_name()
    objects = objects_yaml(str(tmp_path / "env.yaml"), cluster=source_pg,
                           backend={"azure": {"container": container, "prefix": "by-env"}})
    env = clean_env(**az)
    backup(objects, env=env)
    assert normalize_dump(dump_latest(objects, env)) == normalize_dump(source_pg.pg_dumpall())
    assert any(n.startswith("by-env/snapshots/") for n in blob_names(service, container))

    conn = (f"DefaultEndpointsProtocol=http;AccountName={az['AZURE_ACCOUNT_NAME']};"
            f"AccountKey={az['AZURE_ACCOUNT_KEY']};BlobEndpoint={az['AZURE_ENDPOINT']};")
    objects = objects_yaml(str(tmp_path / "cs.yaml"), cluster=source_pg,
                           storage_secret={"AZURE_STORAGE_CONNECTION_STRING": conn},
                           backend={"azure": {"container": container, "prefix": "by-conn-string"}})
    r = backup(objects, env=clean_env())
    assert AZURITE_KEY.encode() not in r.stderr
    assert normalize_dump(dump_latest(objects, clean_env())) == normalize_dump(source_pg.pg_dumpall())
    assert any(n.startswith("by-conn-string/snapshots/") for n in blob_names(service, container))


def test_stash_addon_flags(source_pg, fresh_pg, az, tmp_path):
    """backup-pg / restore-pg with --provider azure --bucket CONTAINER --path P, as a Stash Function passes."""
    container = container_name()
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, storage_secret=az,
                           backend={"azure": {"container": "unused", "prefix": ""}})
    runner("backup-pg", "--objects", objects, "--provider=azure", f"--bucket={container}", "--path=stash/pg",
           "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo", "--namespace=demo",
           "--appbinding=pg", "--hostname=host-0", "--backup-cmd=pg_dumpall", "--pg-args=", "--enable-cache=true",
           "--max-connections=0", "--retention-keep-last=0", "--retention-prune=false", "--backupsession=",
           "--wait-timeout=30", env=clean_env(), check=True)
    target = fresh_pg()
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    for key, value in {"RESTIC_PASSWORD": REPO_PASSWORD, **az}.items():
        (secret_dir / key).write_text(value)
    runner("restore-pg", "--objects", objects_yaml(str(tmp_path / "t.yaml"), cluster=target),
           "--provider=azure", f"--bucket={container}", "--path=stash/pg", f"--secret-dir={secret_dir}",
           "--appbinding=pg", "--appbinding-namespace=demo", "--snapshot=latest", "--source-hostname=host-0",
           "--restoresession=", env=clean_env(), check=True)
    assert target.contents() == source_pg.contents()


def test_wrong_account_key_fails_fast_naming_access_and_creates_nothing(source_pg, az, service, tmp_path):
    container = container_name()
    wrong_key = base64.b64encode(b"not the Azurite key".ljust(64, b"!")).decode()
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg,
                           storage_secret={**az, "AZURE_ACCOUNT_KEY": wrong_key},
                           backend={"azure": {"container": container, "prefix": "pg"}})
    started = time.monotonic()
    r = runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo",
               env=clean_env(), timeout=120)
    elapsed = time.monotonic() - started
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"azure:{container}:/pg" in lines[0]
    assert re.search(r"credentials|access denied", lines[0]), lines[0]
    assert wrong_key not in lines[0] and AZURITE_KEY not in lines[0]
    assert elapsed < 20  # rejected credentials are not retried
    assert not container_exists(service, container)
