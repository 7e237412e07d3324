"""Back up one database into a repository: the flow behind ``backup`` and ``backup-pg``."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from backends.base import Backend
from drivers import Driver, Dump, HostDump
from stash_runner import __version__
from stash_runner.errors import RepositoryNotFound
from stash_runner.maintenance.post_backup import PostBackup, post_backup
from stash_runner.maintenance.retention import Policy
from stash_runner.restic import compression
from stash_runner.restic.archiver import Archiver, BackupResult
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository, current_username
from stash_runner.units import rate, stash_bytes

from .hosts import gather
from .progress import Progress

log = logging.getLogger("stash_runner")


@dataclass
class BackupPlan:
    driver: Driver
    backend: Backend
    password: str = field(repr=False)
    hostname: str = "host-0"
    tags: list[str] = field(default_factory=list)
    wait_timeout: float = 300.0
    workers: int | None = None
    compression_level: int = compression.DEFAULT_LEVEL
    progress_interval: float = 5.0
    #: seconds to wait for a live exclusive lock (a prune) before failing
    lock_wait: float = 0.0
    #: post-backup actions: retention (forget, prune) then the repository's figures
    retention: Policy = field(default_factory=Policy)
    retention_prune: bool = False
    retention_dry_run: bool = False
    post_actions: bool = False
    #: told the host names once the driver has named them, before any dump starts (a session's totalHosts)
    on_hosts: Callable[[list[str]], None] | None = field(default=None, repr=False)
    #: asked when there is no repository: True when another run creates it and it now exists (a BackupBatch
    #: member waits for the member the operator gave the initialisation), False when this run is to create it
    await_repository: Callable[[], bool] | None = field(default=None, repr=False)
    #: told right after this run created the repository
    on_initialised: Callable[[], None] | None = field(default=None, repr=False)
    #: the repository opened ahead (open_ahead), instead of opening it here
    opened: Callable[[], Repository | None] | None = field(default=None, repr=False)


@dataclass
class BackupOutcome:
    #: one snapshot per host the driver dumped (most drivers: one), in the driver's order
    results: list[BackupResult]
    post: PostBackup | None = None
    #: the repository, still open: a session's post-backup actions run on it later
    repo: Repository | None = None
    #: this run created the repository
    initialized: bool = False

    @property
    def result(self) -> BackupResult:
        """The snapshot of a single-host backup (the first host's otherwise)."""
        return self.results[0]


def open_or_none(backend: Backend, password: str) -> Repository | None:
    try:
        return Repository.open(backend, password)
    except RepositoryNotFound:
        return None


def open_ahead(backend: Backend, password: str) -> Callable[[], Repository | None]:
    """Start opening the repository on a thread; the returned call waits for it (open_or_none's result or error).

    Opening is mostly the key file's scrypt (restic calibrates it to ~0.5 s), which releases the GIL: started
    before the driver and the flow are imported, it runs beside them. A daemon thread, so that a run that fails
    before it asks (a bad AppBinding) does not wait for it."""
    result: list = []

    def run() -> None:
        try:
            result.append((open_or_none(backend, password), None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result.append((None, e))

    thread = threading.Thread(target=run, name="open", daemon=True)
    thread.start()

    def opened() -> Repository | None:
        while thread.is_alive():
            thread.join(0.5)  # in short waits: a signal handler runs between them
        repo, error = result[0]
        if error is not None:
            raise error
        return repo

    return opened


def run_backup(plan: BackupPlan) -> BackupOutcome:
    # Check the repository password before touching the database, and initialise a new repository only once the
    # database is known to be there: bad input never writes anything, and its error is the only line said.
    repo = plan.opened() if plan.opened is not None else open_or_none(plan.backend, plan.password)
    plan.driver.wait_ready(plan.wait_timeout)
    if repo is None and plan.await_repository is not None and plan.await_repository():
        repo = Repository.open(plan.backend, plan.password)
    initialized = repo is None
    if repo is None:
        repo = Repository.init(plan.backend, plan.password)
        log.info("initialised a new repository at %s", plan.backend.location)
        if plan.on_initialised is not None:
            plan.on_initialised()
    with RepositoryLock(repo, wait=plan.lock_wait), plan.driver.backup_hosts(plan.hostname) as hosts:
        if plan.on_hosts is not None:
            plan.on_hosts([h.hostname for h in hosts])
        if len(hosts) == 1:
            with _archiver(repo, plan) as arch, hosts[0].open() as dump:
                repo.load_index()  # while the dump tool starts: both are on the way to the first byte stored
                results = [_snapshot(arch, dump, hosts[0], plan, "backup")]
        else:
            repo.load_index()
            results = _parallel_snapshots(repo, plan, hosts, plan.driver.max_parallel_hosts or len(hosts))
    for result in results:
        st = result.stats
        log.info("snapshot %s saved for %s: %s read, %s stored, %.1f s (%s)", result.snapshot.short_id,
                 result.snapshot.hostname, stash_bytes(st.bytes_read), stash_bytes(st.bytes_stored), st.elapsed,
                 rate(st.bytes_read, st.elapsed))
        log.debug("snapshot %s: %s", result.snapshot.short_id, st.pipeline())
    if not plan.post_actions and plan.retention.empty():
        return BackupOutcome(results, repo=repo, initialized=initialized)
    post = post_backup(repo, plan.retention, prune=plan.retention_prune, dry_run=plan.retention_dry_run,
                       lock_wait=plan.lock_wait)
    if post.errors:
        # The snapshot is saved and stays; the run still fails, so that the failed action is seen.
        first = next(iter(post.errors.values()))
        saved = ", ".join(r.snapshot.short_id for r in results)
        raise type(first)(f"snapshot {saved} was saved, but the post-backup actions failed: "
                          + "; ".join(map(str, post.errors.values())))
    return BackupOutcome(results, post, repo, initialized)


def _archiver(repo: Repository, plan: BackupPlan) -> Archiver:
    return Archiver(repo, workers=plan.workers, level=plan.compression_level)


def _snapshot(arch: Archiver, dump: Dump, host: HostDump, plan: BackupPlan, label: str) -> BackupResult:
    """Store a dump's items, then its snapshot; a failed dump raises before the snapshot is written."""
    progress = Progress(label, lambda: arch.stats.bytes_read,
                        extra=lambda: f"{stash_bytes(arch.stats.bytes_stored)} stored", interval=plan.progress_interval)
    paths = []
    with progress:
        for item in dump.items():
            if item.directory is not None:
                arch.add_directory(item.directory, prefix=item.path)
            else:
                arch.add_stream(item.path, item.stream)
            paths.append(item.path)
        dump.finish()  # a failed or truncated dump raises here, before anything refers to its data
    return arch.commit(hostname=host.hostname, paths=host.paths or paths, tags=plan.tags, username=current_username(),
                       program_version=f"stash-runner {__version__}")


def _parallel_snapshots(repo: Repository, plan: BackupPlan, hosts: list[HostDump], limit: int) -> list[BackupResult]:
    """One snapshot per host, ``limit`` at a time. Every dump is started here, in the main thread, so that a
    SIGTERM stops them all: each host's stream then ends, its dump fails and its archiver removes what it wrote.
    A host that fails does not stop the others; their snapshots are saved, and HostsFailed names the failures
    and carries the others' results."""
    slots = threading.Semaphore(limit)
    with ThreadPoolExecutor(limit, thread_name_prefix="host") as pool, contextlib.ExitStack() as dumps:
        futures = []
        for host in hosts:
            while not slots.acquire(timeout=0.5):  # in short waits: a signal handler runs between them
                pass
            dump = dumps.enter_context(host.open())
            future = pool.submit(_host_snapshot, repo, plan, host, dump)
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)
        wait(futures)
    return gather([h.hostname for h in hosts], futures)


def _host_snapshot(repo: Repository, plan: BackupPlan, host: HostDump, dump: Dump) -> BackupResult:
    with _archiver(repo, plan) as arch:
        return _snapshot(arch, dump, host, plan, f"backup {host.hostname}")
