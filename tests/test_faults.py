"""Storage faults between the runner and each emulator: a proxy drops connections, answers 503 and
stalls. Backups still succeed through retries and restore byte-exact; faults that never stop fail the
run cleanly, with the reason, no snapshot, and a repository that restic still checks clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from backends import open_backend
from backends.base import FileType
from backends.spec import BackendSpec
from stash_runner.stash.objects import Secret

from .backend_contract import mirror_to_local
from .faultproxy import FaultProxy, Faults
from .helpers import objects_yaml, restic, runner
from .pgcluster import bulk_cluster

PROVIDERS = ["s3", "gcs", "azure"]
# Writes of pack files only: S3 and Azure PUT them, GCS POSTs (and PUTs resumable parts).
PACK_WRITES = {"only_methods": ("PUT", "POST"), "path_contains": "/data/"}


@pytest.fixture(scope="module")
def mid_pg(workdir):
    """A cluster whose dump (~40 MB) fills several packs."""
    yield from bulk_cluster(workdir, "faults-pg", 40)


class Remote:
    """One provider's repository, reached through a fault proxy in front of its emulator."""

    def __init__(self, provider: str, server, proxy: FaultProxy, name: str):
        self.provider, self.server, self.proxy = provider, server, proxy
        self.bucket, self.prefix = f"faults-{name}", "stash/pg"
        self.env = dict(os.environ)
        if provider == "s3":
            self.backend = {"s3": {"endpoint": proxy.url, "bucket": self.bucket, "prefix": self.prefix}}
            self.secret = dict(server.env)
        elif provider == "gcs":
            self.backend = {"gcs": {"bucket": self.bucket, "prefix": self.prefix}}
            self.secret = {}
            self.env["STORAGE_EMULATOR_HOST"] = proxy.url
        else:
            self.backend = {"azure": {"container": self.bucket, "prefix": self.prefix}}
            self.secret = {**server.env, "AZURE_ENDPOINT": f"{proxy.url}/devstoreaccount1"}

    def objects(self, path, cluster) -> str:
        return objects_yaml(str(path), cluster=cluster, backend=self.backend, storage_secret=self.secret)

    def run(self, command: str, objects: str, *extra: str):
        return runner(command, "--objects", objects, "-n", "demo", "--appbinding", "pg", "--repository", "repo",
                      "--backend-timeout", "2", *extra, env=self.env)

    def direct(self):
        """The repository's backend, straight to the emulator (no proxy)."""
        spec_conf = next(iter(self.backend.values()))
        spec = BackendSpec(self.provider, bucket=self.bucket, prefix=self.prefix, endpoint=self.server.url)
        secret = dict(self.secret)
        environ = {}
        if self.provider == "gcs":
            environ["STORAGE_EMULATOR_HOST"] = self.server.url
        if self.provider == "azure":
            secret["AZURE_ENDPOINT"] = f"{self.server.url}/devstoreaccount1"
        assert spec_conf
        return open_backend(spec, Secret("Secret demo/repo-secret", {k: v.encode() for k, v in secret.items()}),
                            "test", environ=environ)

    def snapshots(self) -> list[str]:
        b = self.direct()
        try:
            return [n for n, _ in b.list(FileType.SNAPSHOT)]
        finally:
            b.close()

    def restic_check(self, tmp_path) -> None:
        b = self.direct()
        try:
            local = mirror_to_local(b, str(tmp_path / f"mirror-{os.urandom(3).hex()}"))
        finally:
            b.close()
        restic(local, "check", "--read-data", "--no-lock")


@pytest.fixture(params=PROVIDERS)
def remote(request):
    server = request.getfixturevalue({"s3": "moto_server", "gcs": "gcs_server", "azure": "azurite_server"}
                                     [request.param])
    with FaultProxy(server.url).start() as proxy:
        yield Remote(request.param, server, proxy, os.urandom(4).hex())


def test_backup_and_restore_succeed_through_faults(remote, mid_pg, fresh_pg, tmp_path):
    remote.proxy.faults = Faults(error_rate=0.08, drop_rate=0.08, stall_rate=0.04, stall_seconds=4, seed=7)
    r = remote.run("backup", remote.objects(tmp_path / "o.yaml", mid_pg), "--backend-retries", "12")
    assert r.returncode == 0, r.stderr.decode()
    counts = remote.proxy.counts
    assert counts["errors"] and counts["drops"], counts
    assert b"retry" in r.stderr  # the faults were met and retried, not missed

    target = fresh_pg()
    r = remote.run("restore", remote.objects(tmp_path / "t.yaml", target), "--backend-retries", "12")
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == mid_pg.contents()
    remote.proxy.faults = Faults()
    remote.restic_check(tmp_path)


@pytest.mark.parametrize("fault", ["error", "stall"])
def test_endless_faults_fail_cleanly_and_the_next_run_succeeds(remote, fault, mid_pg, tmp_path):
    objects = remote.objects(tmp_path / "o.yaml", mid_pg)
    r = remote.run("backup", objects)
    assert r.returncode == 0, r.stderr.decode()
    before = remote.snapshots()

    # Every pack upload now fails (the lock, index and snapshot still could be written).
    remote.proxy.faults = Faults(error_rate=1.0, **PACK_WRITES) if fault == "error" else \
        Faults(stall_rate=1.0, stall_seconds=5, **PACK_WRITES)
    # A changed database, so that the backup has new packs to write.
    mid_pg.execute(f"CREATE TABLE fault_{os.urandom(4).hex()} AS SELECT md5(random()::text) AS v "
                   "FROM generate_series(1, 200000)")
    r = remote.run("backup", objects, "--backend-retries", "3", "--output-dir", str(tmp_path / "out"))
    err = r.stderr.decode()
    assert r.returncode == 4, err
    last = err.strip().splitlines()[-1]
    assert "failed after 3 attempts" in last and "data/" in last and remote.bucket in last, last
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert out["targetStatus"]["stats"][0]["phase"] == "Failed"
    assert remote.snapshots() == before  # no snapshot
    remote.proxy.faults = Faults()
    remote.restic_check(tmp_path)  # still valid

    assert remote.run("backup", objects).returncode == 0  # and the next run succeeds
    assert len(remote.snapshots()) == len(before) + 1
    remote.restic_check(tmp_path)


def test_sigterm_during_retries_ends_promptly(moto_server, mid_pg, tmp_path):
    """Pack uploads stalling and being retried must not hold up a SIGTERM for a minute."""
    with FaultProxy(moto_server.url).start() as proxy:
        remote = Remote("s3", moto_server, proxy, os.urandom(4).hex())
        proxy.faults = Faults(stall_rate=1.0, stall_seconds=30, **PACK_WRITES)
        objects = remote.objects(tmp_path / "o.yaml", mid_pg)
        proc = subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--objects", objects, "-n", "demo",
                                 "--appbinding", "pg", "--repository", "repo", "--backend-timeout", "1",
                                 "--backend-retries", "20"], stderr=subprocess.PIPE, env=remote.env)
        deadline = time.monotonic() + 60
        while proxy.counts["stalls"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proxy.counts["stalls"] >= 2
        time.sleep(1.5)  # well into the backoff between attempts
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err.decode()
        assert time.monotonic() - started < 15, "SIGTERM waited out the retries"
        proxy.faults = Faults()
        assert remote.snapshots() == []
        remote.restic_check(tmp_path)
