"""Read-only repositories: restore, dump, snapshots, stats and check on storage that cannot be written — a read-only
bind mount, and S3 with a credential that may only read (moto enforcing IAM) — go on without a lock after one
warning; --no-lock takes none (restic's flag); on writable storage the lock is still taken (seen with inotify)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest

from backends.local import LocalBackend
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository

from . import servers
from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .pgcluster import free_port

NS = ["-n", "demo"]
WARNING = "reading it without a lock"
READING = ("snapshots", "stats", "check")


def cli(command: str, objects: str, *extra: str) -> subprocess.CompletedProcess:
    return runner(command, "--objects", objects, *NS, "--repository", "repo", *extra)


def restore(objects: str, *extra: str) -> subprocess.CompletedProcess:
    return cli("restore", objects, "--appbinding", "pg", *extra)


def warnings(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.decode().splitlines() if WARNING in line]


def files(root: str) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, f), root): os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs}


@contextlib.contextmanager
def read_only_mount(source: str, view: str) -> Iterator[str]:
    """``source`` seen read-only at ``view`` (a bind mount: writes there fail with EROFS, also for root)."""
    os.makedirs(view)
    try:
        subprocess.run(["mount", "--bind", source, view], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot bind-mount here: {e}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True, capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", view], check=True)


class Created:
    """Names created in a directory while it is watched (inotify through libc): a lock file that lives for a
    millisecond is seen too."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, directory: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, directory.encode(), self.IN_CREATE | self.IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def names(self) -> list[str]:
        """Files that appeared since the last call (the local backend's temporary names left out)."""
        found = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return [n for n in found if "-tmp-" not in n]
            i = 0
            while i < len(buf):
                _, _, _, length = struct.unpack_from("iIII", buf, i)
                found.append(buf[i + 16:i + 16 + length].rstrip(b"\0").decode())
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(scope="module")
def backed_up(source_pg, workdir):
    """A local repository with one backup of source_pg, and its objects."""
    root = os.path.join(workdir, "readonly-repo")
    objects = objects_yaml(os.path.join(workdir, "readonly-o.yaml"), cluster=source_pg, repo_dir=root)
    runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", check=True)
    return root


def test_read_only_local_repository(backed_up, source_pg, fresh_pg, tmp_path):
    before = files(backed_up)
    with read_only_mount(backed_up, str(tmp_path / "ro")) as ro:
        target = fresh_pg()
        r = restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=ro))
        assert r.returncode == 0, r.stderr.decode()
        assert target.contents() == source_pg.contents()
        # one warning line, naming the storage and the cause
        [line] = warnings(r)
        assert f"local:{ro}: cannot write locks/" in line and "Read-only file system" in line, line

        objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=ro)
        r = cli("dump", objects, "latest")
        assert r.returncode == 0, r.stderr.decode()
        assert normalize_dump(r.stdout) == normalize_dump(restic(backed_up, "dump", "latest", "/dumpfile.sql").stdout)
        assert len(warnings(r)) == 1, r.stderr.decode()
        for command in READING:
            r = cli(command, objects, *(["--json"] if command != "check" else []))
            assert r.returncode == 0, (command, r.stderr.decode())
            assert len(warnings(r)) == 1, (command, r.stderr.decode())
        assert len(json.loads(cli("snapshots", objects, "--json").stdout)) == 1
        assert json.loads(cli("stats", objects, "--json").stdout)["snapshots"] == 1
        assert b"no errors were found" in cli("check", objects).stdout

        # --no-lock: not even tried, so no warning
        target = fresh_pg()
        r = restore(objects_yaml(str(tmp_path / "t2.yaml"), cluster=target, repo_dir=ro), "--no-lock")
        assert r.returncode == 0 and not warnings(r), r.stderr.decode()
        assert target.contents() == source_pg.contents()
        for command in (*READING, "dump"):
            r = cli(command, objects, *(["latest"] if command == "dump" else []), "--no-lock")
            assert r.returncode == 0 and not warnings(r), (command, r.stderr.decode())
    assert files(backed_up) == before  # nothing written


def test_a_backup_to_read_only_storage_still_fails_at_once(backed_up, source_pg, tmp_path):
    """Only the commands that read fall back: a backup's lock failing is its error, before anything is dumped."""
    with read_only_mount(backed_up, str(tmp_path / "ro")) as ro:
        r = runner("backup", "--objects", objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=ro),
                   *NS, "--appbinding", "pg", "--repository", "repo")
    err = r.stderr.decode()
    assert r.returncode in (4, 8), err  # the storage's error: 8 where the local backend reports EROFS as refused
    assert "cannot write locks/" in err and "Read-only file system" in err and WARNING not in err


def test_no_lock_takes_none_and_a_writable_repository_is_still_locked(backed_up, source_pg, fresh_pg, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=backed_up)
    locks = os.path.join(backed_up, "locks")
    watch = Created(locks)
    try:
        for command in (*READING, "dump"):
            extra = ["latest"] if command == "dump" else []
            assert cli(command, objects, *extra).returncode == 0
            assert len(watch.names()) == 1, command  # a lock was written (and removed again)
            assert cli(command, objects, *extra, "--no-lock").returncode == 0
            assert watch.names() == [], command  # none with --no-lock
        for i, extra in enumerate(([], ["--no-lock"])):
            target = fresh_pg()
            r = restore(objects_yaml(str(tmp_path / f"t{i}.yaml"), cluster=target, repo_dir=backed_up), *extra)
            assert r.returncode == 0, r.stderr.decode()
            assert target.contents() == source_pg.contents()
            assert len(watch.names()) == (0 if extra else 1), extra
    finally:
        watch.close()
    assert os.listdir(locks) == []

    # A prune's exclusive lock keeps the locking commands out at once (exit 4, the holder named), as restic's; with
    # --no-lock they do not look at locks.
    with RepositoryLock(Repository.open(LocalBackend(backed_up), REPO_PASSWORD), exclusive=True):
        for command in (*READING, "dump"):
            extra = ["latest"] if command == "dump" else []
            r = cli(command, objects, *extra)
            assert r.returncode == 4 and f"PID {os.getpid()}".encode() in r.stderr, (command, r.stderr.decode())
            assert cli(command, objects, *extra, "--no-lock").returncode == 0, command


# moto's server checks a SigV4 signature against the URL as werkzeug decoded it, so a listing whose prefix has a "/"
# (every restic listing: "keys/", "pg/index/") never matches (getmoto/moto#5948). Checked against the query the client
# sent instead; every signature is still verified.
_MOTO_RAW_QUERY = r"""
import sys
from urllib.parse import urlsplit, urlunsplit

from moto.core import authorization, responses
from moto.server import main

setup = responses.BaseResponse.setup_class
check = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action


def setup_class(self, request, full_url, headers, *args, **kw):
    self._raw_query = urlsplit(getattr(request, "environ", {}).get("RAW_URI", "")).query
    return setup(self, request, full_url, headers, *args, **kw)


def authenticate(self, *args, **kw):
    decoded = self.uri
    if getattr(self, "_raw_query", ""):
        self.uri = urlunsplit(urlsplit(decoded)._replace(query=self._raw_query))
    try:
        return check(self, *args, **kw)
    finally:
        self.uri = decoded


responses.BaseResponse.setup_class = setup_class
authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def moto_read_only(workdir):
    """moto checking credentials: ``.env`` may read and write the bucket, ``.read_only`` may only read it.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked: the six IAM calls."""
    port = free_port()
    s = servers._start("moto", [sys.executable, "-c", _MOTO_RAW_QUERY, "-H", "127.0.0.1", "-p", str(port)],
                       os.path.join(workdir, "moto-read-only"), port, "/moto-api/",
                       env={"INITIAL_NO_AUTH_ACTION_COUNT": "6"})
    iam = boto3.client("iam", endpoint_url=s.url, region_name="us-east-1", aws_access_key_id="admin",
                       aws_secret_access_key="admin")

    def user(name: str, actions: list[str]) -> dict[str, str]:
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": actions}]}))
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    s.env = user("writer", ["s3:CreateBucket", "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"])
    s.read_only = user("reader", ["s3:GetObject", "s3:ListBucket"])
    yield s
    s.stop()


def test_read_only_s3_credential(moto_read_only, source_pg, fresh_pg, tmp_path):
    s = moto_read_only

    def objects(name: str, secret: dict[str, str], cluster=None) -> str:
        return objects_yaml(str(tmp_path / name), cluster=cluster, storage_secret=secret,
                            backend={"s3": {"endpoint": s.url, "bucket": "read-only", "prefix": "pg"}})

    runner("backup", "--objects", objects("w.yaml", s.env, source_pg), *NS, "--appbinding", "pg", "--repository",
           "repo", check=True)
    target = fresh_pg()
    r = restore(objects("t.yaml", s.read_only, target))
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()
    [line] = warnings(r)
    assert f"s3:{s.url}/read-only/pg: save locks/" in line and "access denied (AccessDenied)" in line, line

    reader = objects("r.yaml", s.read_only)
    for command in (*READING, "dump"):
        extra = ["latest"] if command == "dump" else []
        r = cli(command, reader, *extra)
        assert r.returncode == 0 and len(warnings(r)) == 1, (command, r.stderr.decode())
        r = cli(command, reader, *extra, "--no-lock")
        assert r.returncode == 0 and not warnings(r), (command, r.stderr.decode())
    client = boto3.client("s3", endpoint_url=s.url, region_name="us-east-1",
                          aws_access_key_id=s.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s.env["AWS_SECRET_ACCESS_KEY"])
    assert client.list_objects_v2(Bucket="read-only", Prefix="pg/locks/").get("KeyCount") == 0

    # The read-only credential cannot back up: exit 8 at its lock, nothing dumped.
    r = runner("backup", "--objects", objects("b.yaml", s.read_only, source_pg), *NS, "--appbinding", "pg",
               "--repository", "repo")
    assert r.returncode == 8 and b"access denied" in r.stderr and WARNING.encode() not in r.stderr, r.stderr
