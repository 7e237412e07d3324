"""The maintenance commands through the CLI: retention after a backup, forget, prune, check, unlock,
stats and lock waiting — restic 0.14 is the judge."""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time

from backends.base import FileType
from backends.local import LocalBackend
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository
from stash_runner.restic.timefmt import format_time, now

from .helpers import REPO_PASSWORD, objects_yaml, restic, runner

NS = ["-n", "demo"]


def cli(command: str, objects: str, *extra: str, check: bool = False):
    return runner(command, "--objects", objects, *NS, "--repository", "repo", *extra, check=check)


def backup(objects: str, *extra: str, check: bool = True):
    return cli("backup", objects, "--appbinding", "pg", *extra, check=check)


def snapshot_ids(repo_dir: str) -> set[str]:
    return {s["id"] for s in json.loads(restic(repo_dir, "snapshots", "--json").stdout)}


def test_retention_after_backup_and_its_report(source_pg, fresh_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    for _ in range(3):
        backup(objects)
    first_three = snapshot_ids(repo_dir)
    out = tmp_path / "out"
    r = backup(objects, "--retention-keep-last", "2", "--retention-prune", "true", "--output-dir", str(out))
    assert b"retention" in r.stderr and b"prune:" in r.stderr
    remaining = snapshot_ids(repo_dir)
    assert len(remaining) == 2 and len(remaining & first_three) == 1
    doc = json.loads((out / "output.json").read_text())
    assert doc["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    repo = doc["repository"]
    assert repo["snapshotCount"] == 2 and repo["snapshotsRemovedOnLastCleanup"] == 2
    raw = json.loads(restic(repo_dir, "stats", "--mode", "raw-data", "--json").stdout)
    assert repo["size"] == raw["total_size"]
    restic(repo_dir, "check", "--read-data")
    target = fresh_pg()
    cli("restore", objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir), "--appbinding", "pg",
        check=True)
    assert target.contents() == source_pg.contents()

    # A dry run reports and removes nothing.
    backup(objects, "--retention-keep-last", "1", "--retention-dry-run", "true", "--output-dir", str(out))
    assert len(snapshot_ids(repo_dir)) == 3
    assert json.loads((out / "output.json").read_text())["repository"]["snapshotsRemovedOnLastCleanup"] == 0


def test_stash_retention_flags_on_backup_pg(source_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    flags = ["--objects", objects, "--provider=local", f"--path={repo_dir}", "--storage-secret-name=repo-secret",
             "--namespace=demo", "--appbinding=pg"]
    runner("backup-pg", *flags, "--retention-keep-tags=", check=True)
    runner("backup-pg", *flags, check=True)
    runner("backup-pg", *flags, "--retention-keep-last=1", "--retention-prune=true", "--retention-dry-run=false",
           check=True)
    assert len(snapshot_ids(repo_dir)) == 1
    restic(repo_dir, "check", "--read-data")


def test_forget_prune_check_stats_commands(source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    for _ in range(3):
        backup(objects)
    ours = json.loads(cli("forget", objects, "--keep-last", "1", "--dry-run", "--json", check=True).stdout)
    theirs = json.loads(restic(repo_dir, "forget", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert [{s["id"] for s in g["remove"]} for g in ours] == [{s["id"] for s in g["remove"]} for g in theirs]
    assert len(snapshot_ids(repo_dir)) == 3

    r = cli("forget", objects, "--keep-last", "1", "--prune", "--max-unused", "0", check=True)
    assert b"prune: deleted" in r.stdout, r.stdout
    assert len(snapshot_ids(repo_dir)) == 1
    restic(repo_dir, "check", "--read-data")
    cli("prune", objects, check=True)
    restic(repo_dir, "check", "--read-data")

    r = cli("check", objects, "--read-data", check=True)
    assert b"no errors were found" in r.stdout
    st = json.loads(cli("stats", objects, "--json", check=True).stdout)
    raw = json.loads(restic(repo_dir, "stats", "--mode", "raw-data", "--json").stdout)
    restore_size = json.loads(restic(repo_dir, "stats", "--json").stdout)
    assert st["snapshots"] == 1 and st["raw_data"] == raw["total_size"]
    assert st["restore_size"] == restore_size["total_size"]

    # Damage one pack: check lists it and exits 4; restic agrees that it is damaged.
    packs = sorted((os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo_dir, "data")) for f in fs),
                   key=os.path.getsize)
    with open(packs[-1], "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = cli("check", objects, "--read-data")
    assert r.returncode == 4, r.stderr
    assert os.path.basename(packs[-1])[:8].encode() in r.stderr
    assert restic(repo_dir, "check", "--read-data", check=False).returncode != 0


def _lock_file(repo_dir: str, *, pid: int, exclusive: bool, age_minutes: float = 0) -> None:
    repo = Repository.open(LocalBackend(repo_dir), REPO_PASSWORD)
    repo.save_unpacked(FileType.LOCK, {
        "time": format_time(now() - datetime.timedelta(minutes=age_minutes)),
        "exclusive": exclusive, "hostname": socket.gethostname(), "username": "someone", "pid": pid,
        "uid": 0, "gid": 0,
    })


def test_unlock_removes_stale_locks_only(source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    backup(objects)
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
    _lock_file(repo_dir, pid=dead, exclusive=True)  # a crashed run on this host
    _lock_file(repo_dir, pid=os.getpid(), exclusive=False, age_minutes=45)  # not refreshed for 45 minutes
    _lock_file(repo_dir, pid=os.getpid(), exclusive=False)  # live
    r = cli("unlock", objects, check=True)
    assert b"2 lock(s) removed, 1 live lock(s) kept" in r.stdout
    assert len(os.listdir(os.path.join(repo_dir, "locks"))) == 1
    cli("unlock", objects, "--remove-all", check=True)
    assert os.listdir(os.path.join(repo_dir, "locks")) == []

    # A backup that finds a crashed run's exclusive lock proceeds.
    _lock_file(repo_dir, pid=dead, exclusive=True)
    backup(objects)
    restic(repo_dir, "check")


def test_backup_waits_for_a_live_exclusive_lock_then_fails_naming_it(source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    backup(objects)
    repo = Repository.open(LocalBackend(repo_dir), REPO_PASSWORD)
    with RepositoryLock(repo, exclusive=True):
        started = time.monotonic()
        r = backup(objects, "--lock-wait", "3", check=False)
        assert time.monotonic() - started >= 3
    assert r.returncode == 4, r.stderr
    assert b"exclusive lock" in r.stderr and f"PID {os.getpid()}".encode() in r.stderr

    # Released while the backup waits: the backup goes on.
    lock = RepositoryLock(repo, exclusive=True)
    lock.acquire()
    threading.Timer(2.0, lock.release).start()
    backup(objects, "--lock-wait", "60")
    assert len(snapshot_ids(repo_dir)) == 2


def test_post_backup_sees_what_other_hosts_wrote_after_this_run_read_the_index(tmp_path):
    """Hosts of one session back up into one repository at once; the one that runs the post-backup
    actions loaded the index before the others wrote theirs, and must still count their snapshots."""
    from stash_runner.maintenance.post_backup import post_backup
    from stash_runner.maintenance.retention import Policy

    from .test_engine import backup_bytes, sample_bytes

    path = str(tmp_path / "repo")
    mine = Repository.init(LocalBackend(path), REPO_PASSWORD)
    mine.load_index()
    backup_bytes(mine, sample_bytes(300_000, seed=1), host="host-0")
    other = Repository.open(LocalBackend(path), REPO_PASSWORD)
    other.load_index()
    backup_bytes(other, sample_bytes(300_000, seed=2), host="host-1")  # after `mine` read the index
    post = post_backup(mine, Policy(last=5), verify=True)
    assert post.errors == {}
    assert post.integrity is True and post.stats.snapshots == 2
    assert post.repository_json()["snapshotCount"] == 2
