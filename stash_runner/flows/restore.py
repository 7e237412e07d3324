"""Restore a database from a snapshot (or, for a multi-host database, one snapshot per host): the flow behind
``restore`` and ``restore-<db>``."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from backends.base import Backend
from drivers import Driver, RestoreHost, SnapshotFiles
from stash_runner.errors import Interrupted, SnapshotNotFound
from stash_runner.restic import tree
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.reader import extract, find_file, iter_content, walk_files
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot
from stash_runner.units import rate, stash_bytes

from .hosts import gather
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
    no_lock: bool = False  # restic's --no-lock: no lock at all (a restore falls back to none on read-only storage)
    #: for a multi-host restore: a host's (snapshot, source host); default: the latest of that same host.
    #: A single-host restore takes ``snapshot`` and ``source_hostname``.
    choose: Callable[[str], tuple[str, str]] | None = field(default=None, repr=False)
    #: told the host names once the driver has named them, before anything is restored (a session's totalHosts)
    on_hosts: Callable[[list[str]], None] | None = field(default=None, repr=False)


@dataclass
class RestoreResult:
    snapshot: Snapshot
    bytes_restored: int
    seconds: float
    hostname: str = ""  # the driver's host it was restored as (a sharded cluster's member)


@dataclass
class _Pick:
    host: RestoreHost
    snapshot: Snapshot
    node: tree.Node | None  # the one file a stream restore reads; None for a restore of the snapshot's files


class _Files(SnapshotFiles):
    """A snapshot's files for a driver's ``restore_files``; every byte read is counted (and stops on SIGTERM)."""

    def __init__(self, repo: Repository, snap: Snapshot, count: list[int], stop: threading.Event | None = None):
        self.repo, self.snap, self.count, self.stop = repo, snap, count, stop
        self.paths = list(snap.paths)

    def files(self, under: str = "/") -> list[str]:
        return [path for path, _ in walk_files(self.repo, self.snap, under)]

    def read(self, path: str) -> Iterator[bytes]:
        _, node = find_file(self.repo, self.snap, path)
        return _counted(iter_content(self.repo, node), self.count, self.stop)

    def scan(self, path: str) -> Iterator[bytes]:
        _, node = find_file(self.repo, self.snap, path)
        return _counted(iter_content(self.repo, node), [0], self.stop)

    def extract(self, path: str, target: str) -> None:
        def counted(n: int) -> None:
            if self.stop is not None and self.stop.is_set():
                raise Interrupted("restore stopped")
            self.count[0] += n

        extract(self.repo, self.snap, path, target, counted)


def _restore_one(repo: Repository, p: _Pick, count: list[int], stop: threading.Event | None = None) -> None:
    if p.host.restore_files is not None:
        p.host.restore_files(_Files(repo, p.snapshot, count, stop))
    else:
        assert p.host.restore is not None and p.node is not None
        p.host.restore(_counted(iter_content(repo, p.node), count, stop))


def run_restore(plan: RestorePlan) -> list[RestoreResult]:
    started = time.monotonic()
    repo = Repository.open(plan.backend, plan.password)
    repo.load_index()
    hosts = plan.driver.restore_hosts(plan.source_hostname)
    if plan.on_hosts is not None:
        plan.on_hosts([h.hostname for h in hosts])
    # Every snapshot is found before the database is touched: a missing one fails the restore untouched.
    picks = [_pick(repo, plan, host, single=len(hosts) == 1) for host in hosts]
    for p in picks:
        where = plan.driver.target if len(picks) == 1 else f"{plan.driver.target}, host {p.host.hostname}"
        log.info("restoring snapshot %s (%s, host %s) into %s", p.snapshot.short_id, p.snapshot.time,
                 p.snapshot.hostname, where)
    plan.driver.wait_ready(plan.wait_timeout)
    # A restore only reads: on storage that cannot be written it goes on without a lock, with a warning.
    with RepositoryLock(repo, wait=plan.lock_wait, read_only=True, no_lock=plan.no_lock):
        if len(picks) == 1:
            count = [0]
            # A stream restore reads one file: its node's size gives the progress a total (percentage, ETA).
            total = picks[0].node.size if picks[0].node is not None else _single_file_size(repo, picks[0].snapshot)
            progress = Progress("restore", lambda: count[0], interval=plan.progress_interval, total=total)
            with progress:
                _restore_one(repo, picks[0], count)
            results = [RestoreResult(picks[0].snapshot, count[0], time.monotonic() - started, picks[0].host.hostname)]
        else:
            results = _parallel(repo, plan, picks, started)
    for result in results:
        log.info("restored snapshot %s: %s in %.1f s (%s)", result.snapshot.short_id,
                 stash_bytes(result.bytes_restored), result.seconds, rate(result.bytes_restored, result.seconds))
    return results


def _single_file_size(repo: Repository, snap: Snapshot) -> int | None:
    """The size of a snapshot's one file (a dump a driver reads through ``restore_files``, as PostgreSQL's, which
    may look at it before restoring it); None for a snapshot of several files, whose restore may read a part."""
    files = [node for _, node in itertools.islice(walk_files(repo, snap, "/"), 2)]
    return files[0].size if len(files) == 1 else None


def _pick(repo: Repository, plan: RestorePlan, host: RestoreHost, single: bool) -> _Pick:
    if single:
        snapshot, source = plan.snapshot, plan.source_hostname
    elif plan.choose is not None:
        snapshot, source = plan.choose(host.hostname)
    else:
        snapshot, source = "latest", host.hostname
    path = plan.driver.snapshot_path
    latest = snapshot in ("", "latest")
    snap = repo.find_snapshot(snapshot, hostname=source if latest else None, path=path if latest else None)
    if host.restore_files is not None:
        return _Pick(host, snap, None)
    try:
        _, node = find_file(repo, snap, path)
    except SnapshotNotFound:
        _, node = find_file(repo, snap, None)  # a snapshot of a single stream under another name
    return _Pick(host, snap, node)


def _counted(chunks: Iterator[bytes], count: list[int], stop: threading.Event | None = None) -> Iterator[bytes]:
    for c in chunks:
        if stop is not None and stop.is_set():
            raise Interrupted("restore stopped")
        count[0] += len(c)
        yield c


def _parallel(repo: Repository, plan: RestorePlan, picks: list[_Pick], started: float) -> list[RestoreResult]:
    """Each host into its own target, ``max_parallel_hosts`` at a time. A SIGTERM in the main thread stops every
    host's stream; a host that fails does not stop the others (HostsFailed names the failures)."""
    stop = threading.Event()
    counts = {p.host.hostname: [0] for p in picks}
    limit = plan.driver.max_parallel_hosts or len(picks)

    def one(p: _Pick) -> RestoreResult:
        _restore_one(repo, p, counts[p.host.hostname], stop)
        return RestoreResult(p.snapshot, counts[p.host.hostname][0], time.monotonic() - started, p.host.hostname)

    with ThreadPoolExecutor(limit, thread_name_prefix="restore") as pool:
        futures = [pool.submit(one, p) for p in picks]
        try:
            while wait(futures, timeout=0.5).not_done:  # short waits: a signal handler runs between them
                pass
        except BaseException:
            stop.set()
            raise
    return gather([p.host.hostname for p in picks], futures)
