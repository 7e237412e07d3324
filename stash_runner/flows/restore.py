"""Restore one database from a snapshot: the flow behind ``restore`` and ``restore-pg``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from backends.base import Backend
from drivers.base import Driver
from stash_runner.errors import SnapshotNotFound
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.reader import find_file, iter_content
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot
from stash_runner.units import rate, stash_bytes

from .progress import Progress

log = logging.getLogger("stash_runner")


@dataclass
class RestorePlan:
    driver: Driver
    backend: Backend
    password: str = field(repr=False)
    snapshot: str = "latest"
    source_hostname: str = "host-0"
    wait_timeout: float = 300.0
    progress_interval: float = 5.0
    lock_wait: float = 0.0  # seconds to wait for a live exclusive lock (a prune) before failing


@dataclass
class RestoreResult:
    snapshot: Snapshot
    bytes_restored: int
    seconds: float


def run_restore(plan: RestorePlan) -> RestoreResult:
    started = time.monotonic()
    repo = Repository.open(plan.backend, plan.password)
    repo.load_index()
    path = "/" + plan.driver.filename
    latest = plan.snapshot in ("", "latest")
    snap = repo.find_snapshot(plan.snapshot, hostname=plan.source_hostname if latest else None,
                              path=path if latest else None)
    try:
        _, node = find_file(repo, snap, path)
    except SnapshotNotFound:
        _, node = find_file(repo, snap, None)  # a snapshot of a single stream under another name
    log.info("restoring snapshot %s (%s, host %s) into %s", snap.short_id, snap.time, snap.hostname,
             plan.driver.target)
    plan.driver.wait_ready(plan.wait_timeout)
    count = [0]

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for c in chunks:
            count[0] += len(c)
            yield c

    progress = Progress("restore", lambda: count[0], interval=plan.progress_interval)
    with RepositoryLock(repo, wait=plan.lock_wait), progress:
        plan.driver.restore(counted(iter_content(repo, node)))
    result = RestoreResult(snap, count[0], time.monotonic() - started)
    log.info("restored snapshot %s: %s in %.1f s (%s)", snap.short_id, stash_bytes(result.bytes_restored),
             result.seconds, rate(result.bytes_restored, result.seconds))
    return result
