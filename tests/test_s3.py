"""S3 through moto's real server: the backend contract, PostgreSQL round trips, restic as the judge,
credentials, a bucket that must be created, and TLS with a private CA."""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import pytest

from backends.s3 import S3Backend, endpoint_url
from backends.spec import BackendSpec
from stash_runner.stash.objects import Secret

from . import servers
from .backend_contract import check_contract
from .helpers import normalize_dump, objects_yaml, restic, runner
from .test_postgres import backup, restore

NS = ["-n", "demo"]


def s3_backend(server, bucket: str, prefix: str = "") -> S3Backend:
    data = {k: v.encode() for k, v in server.env.items()}
    spec = BackendSpec("s3", bucket=bucket, prefix=prefix, endpoint=server.url)
    return S3Backend.from_spec(spec, Secret("Secret demo/s3", data), "Repository demo/repo", timeout=10, environ={})


def s3_objects(path, server, bucket: str, prefix: str, cluster=None, secret: dict | None = None, **s3) -> str:
    return objects_yaml(str(path), cluster=cluster,
                        backend={"s3": {"endpoint": server.url, "bucket": bucket, "prefix": prefix, **s3}},
                        storage_secret=server.env if secret is None else secret)


def keys(server, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))




def test_contract(moto_server):
    check_contract(s3_backend(moto_server, "contract-bucket", "some/prefix"))
    names = keys(moto_server, "contract-bucket")
    assert names[0] == "some/prefix/config"
    assert any(k.startswith("some/prefix/data/") and k.count("/") == 4 for k in names)


def test_endpoint_spellings():
    assert endpoint_url("minio.example:9000") == "https://minio.example:9000"
    assert endpoint_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert endpoint_url("") is None


def test_backup_restic_checks_and_restore_is_byte_exact(moto_server, source_pg, fresh_pg, tmp_path):
    # The bucket does not exist yet: the first backup creates it.
    objects = s3_objects(tmp_path / "o.yaml", moto_server, "pg-backups", "stash/demo/pg", cluster=source_pg)
    r = backup(objects)
    assert moto_server.env["AWS_SECRET_ACCESS_KEY"].encode() not in r.stderr or \
        moto_server.env["AWS_SECRET_ACCESS_KEY"] == "test"
    names = keys(moto_server, "pg-backups")
    assert all(k.startswith("stash/demo/pg/") for k in names)
    assert {k.split("/")[3] for k in names} == {"config", "keys", "data", "index", "snapshots"}

    repo = f"s3:{moto_server.url}/pg-backups/stash/demo/pg"
    restic(repo, "check", "--read-data", env=moto_server.env)
    ours = restic(repo, "dump", "latest", "/dumpfile.sql", env=moto_server.env).stdout
    assert normalize_dump(ours) == normalize_dump(source_pg.pg_dumpall())

    target = fresh_pg()
    restore(s3_objects(tmp_path / "t.yaml", moto_server, "pg-backups", "stash/demo/pg", cluster=target))
    assert target.contents() == source_pg.contents()


def test_we_restore_what_restic_wrote(moto_server, source_pg, fresh_pg, tmp_path):
    repo = f"s3:{moto_server.url}/restic-made/db"
    restic(repo, "init", env=moto_server.env)
    dump = subprocess.run(["pg_dumpall"], env=source_pg.env(), check=True, capture_output=True).stdout
    restic(repo, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "host-0", input=dump,
           env=moto_server.env)
    target = fresh_pg()
    restore(s3_objects(tmp_path / "t.yaml", moto_server, "restic-made", "db", cluster=target))
    assert target.contents() == source_pg.contents()


def test_stash_addon_flags(moto_server, source_pg, fresh_pg, tmp_path):
    # The storage Secret in a file of its own (its Repository object is not used: the flags say where).
    storage = objects_yaml(str(tmp_path / "s.yaml"), backend={"local": {"mountPath": "/unused"}},
                           storage_secret=moto_server.env)
    flags = ["--objects", storage, "--provider=s3", f"--endpoint={moto_server.url}", "--bucket=stash-flags",
             "--path=demo/pg", "--region=", "--storage-secret-name=repo-secret", "--namespace=demo",
             "--max-connections=3"]
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg)
    runner("backup-pg", "--objects", objects, *flags, "--appbinding=pg", "--hostname=host-0",
           f"--output-dir={tmp_path / 'out'}", check=True)
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert out["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    restic(f"s3:{moto_server.url}/stash-flags/demo/pg", "check", env=moto_server.env)
    target = fresh_pg()
    target_objects = objects_yaml(str(tmp_path / "t.yaml"), cluster=target)
    runner("restore-pg", "--objects", target_objects, *flags, "--appbinding=pg",
           "--snapshot=latest", check=True)
    assert target.contents() == source_pg.contents()


@pytest.fixture(scope="module")
def moto_with_auth(workdir):
    """A moto server that checks credentials, with a user who may read and write but not create buckets.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked: the three IAM calls.
    """
    s = servers.start_moto(os.path.join(workdir, "moto-auth"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    kw = {"endpoint_url": s.url, "region_name": "us-east-1"}
    iam = boto3.client("iam", aws_access_key_id="admin", aws_secret_access_key="admin", **kw)
    iam.create_user(UserName="backup")
    key = iam.create_access_key(UserName="backup")["AccessKey"]
    iam.put_user_policy(UserName="backup", PolicyName="rw", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Resource": "*",
                       "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"]}]}))
    s.env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    yield s
    s.stop()


def test_wrong_credentials_fail_before_the_database_is_read(moto_with_auth, tmp_path):
    wrong = {**moto_with_auth.env, "AWS_SECRET_ACCESS_KEY": "not-the-key-0123456789"}
    # An unreachable database: the credentials must be refused first (exit 8, not 5).
    objects = objects_yaml(str(tmp_path / "o.yaml"), url="postgresql://127.0.0.1:1/postgres", pg_password="x",
                           backend={"s3": {"endpoint": moto_with_auth.url, "bucket": "any-bucket", "prefix": "p"}},
                           storage_secret=wrong)
    r = backup(objects, "--wait-timeout", "5", check=False)
    err = r.stderr.decode()
    assert r.returncode == 8, err
    assert "access denied" in err and "any-bucket" in err and "not-the-key" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_bucket_without_permission_to_create(moto_with_auth, source_pg, tmp_path):
    objects = s3_objects(tmp_path / "o.yaml", moto_with_auth, "no-such-bucket", "p", cluster=source_pg)
    r = backup(objects, check=False)
    err = r.stderr.decode()
    assert r.returncode == 8, err
    assert "bucket no-such-bucket does not exist and these credentials may not create it" in err


def test_private_ca_and_insecure_tls(workdir, source_pg, fresh_pg, tmp_path):
    cert, key = servers.self_signed_cert(str(tmp_path / "tls"))
    s = servers.start_moto(os.path.join(workdir, "moto-tls"), tls=(cert, key))
    try:
        with open(cert) as f:
            ca = f.read()
        # Without the CA: a clear TLS error at once, not a minute of retries.
        r = backup(s3_objects(tmp_path / "a.yaml", s, "tls-bucket", "p", cluster=source_pg), check=False)
        assert r.returncode == 4 and b"CA_CERT_DATA" in r.stderr, r.stderr
        backup(s3_objects(tmp_path / "b.yaml", s, "tls-bucket", "p", cluster=source_pg,
                          secret={**s.env, "CA_CERT_DATA": ca}))
        backup(s3_objects(tmp_path / "c.yaml", s, "tls-bucket", "p", cluster=source_pg, insecureTLS=True))
        target = fresh_pg()
        restore(s3_objects(tmp_path / "t.yaml", s, "tls-bucket", "p", cluster=target,
                           secret={**s.env, "CA_CERT_DATA": ca}))
        assert target.contents() == source_pg.contents()
        restic(f"s3:{s.url}/tls-bucket/p", "--cacert", cert, "check", env=s.env)
    finally:
        s.stop()


def test_maintenance_on_s3(moto_server, source_pg, tmp_path):
    """forget, prune, check, stats and retention after a backup, on S3, judged by restic."""
    objects = s3_objects(tmp_path / "o.yaml", moto_server, "maintenance", "pg", cluster=source_pg)
    for _ in range(3):
        backup(objects)
    backup(objects, "--retention-keep-last", "2", "--retention-prune", "true")
    repo = f"s3:{moto_server.url}/maintenance/pg"
    assert len(json.loads(restic(repo, "snapshots", "--json", env=moto_server.env).stdout)) == 2
    where = ["--objects", objects, *NS, "--repository", "repo"]
    runner("forget", *where, "--keep-last", "1", "--prune", "--max-unused", "0", check=True)
    restic(repo, "check", "--read-data", env=moto_server.env)
    r = runner("check", *where, "--read-data", check=True)
    assert b"no errors were found" in r.stdout
    st = json.loads(runner("stats", *where, "--json", check=True).stdout)
    raw = json.loads(restic(repo, "stats", "--mode", "raw-data", "--json", env=moto_server.env).stdout)
    assert st["snapshots"] == 1 and st["raw_data"] == raw["total_size"]
    runner("unlock", *where, check=True)
