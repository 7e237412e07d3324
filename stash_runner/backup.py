"""Back up one database into a repository: the flow behind ``backup`` and ``backup-pg``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from backends.base import Backend
from drivers.base import Driver

from . import __version__, compression
from .archiver import Archiver, BackupResult
from .errors import RepositoryNotFound
from .lock import RepositoryLock
from .maintenance import PostBackup, post_backup
from .output import SnapshotStats
from .progress import Progress
from .repository import Repository, current_username
from .retention import Policy
from .units import rate, stash_bytes

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


@dataclass
class BackupOutcome:
    result: BackupResult
    post: PostBackup | None = None
    #: the repository, still open: a session's post-backup actions run on it later
    repo: Repository | None = None
    #: this run created the repository
    initialized: bool = False


def open_or_none(backend: Backend, password: str) -> Repository | None:
    try:
        return Repository.open(backend, password)
    except RepositoryNotFound:
        return None


def run_backup(plan: BackupPlan) -> BackupOutcome:
    # Check the repository password before touching the database, and initialise a new
    # repository only once the database is known to be there: bad input never writes anything.
    repo = open_or_none(plan.backend, plan.password)
    plan.driver.wait_ready(plan.wait_timeout)
    initialized = repo is None
    if repo is None:
        repo = Repository.init(plan.backend, plan.password)
        log.info("initialised a new repository at %s", plan.backend.location)
    repo.load_index()
    with RepositoryLock(repo, wait=plan.lock_wait), \
            Archiver(repo, workers=plan.workers, level=plan.compression_level) as arch:
        progress = Progress(
            "backup", lambda: arch.stats.bytes_read,
            extra=lambda: f"{stash_bytes(arch.stats.bytes_stored)} stored", interval=plan.progress_interval,
        )
        with plan.driver.dump() as dump, progress:
            arch.add_stream(plan.driver.filename, dump.stream)
            dump.finish()  # a failed or truncated dump raises here, before anything refers to its data
        result = arch.commit(
            hostname=plan.hostname,
            paths=["/" + plan.driver.filename],
            tags=plan.tags,
            username=current_username(),
            program_version=f"stash-runner {__version__}",
        )
    st = result.stats
    log.info("snapshot %s saved for %s: %s read, %s stored, %.1f s (%s)", result.snapshot.short_id, plan.hostname,
             stash_bytes(st.bytes_read), stash_bytes(st.bytes_stored), st.elapsed, rate(st.bytes_read, st.elapsed))
    if not plan.post_actions and plan.retention.empty():
        return BackupOutcome(result, repo=repo, initialized=initialized)
    post = post_backup(repo, plan.retention, prune=plan.retention_prune, dry_run=plan.retention_dry_run,
                       lock_wait=plan.lock_wait)
    if post.errors:
        # The snapshot is saved and stays; the run still fails, so that the failed action is seen.
        first = next(iter(post.errors.values()))
        raise type(first)(f"snapshot {result.snapshot.short_id} was saved, but the post-backup actions failed: "
                          + "; ".join(map(str, post.errors.values())))
    return BackupOutcome(result, post, repo, initialized)



def snapshot_stats(result: BackupResult) -> SnapshotStats:
    """A snapshot's figures as Stash reports them (one stream: one file, new or modified)."""
    st = result.stats
    return SnapshotStats(
        name=result.snapshot.id, path=result.snapshot.paths[0], total_size=st.bytes_read,
        uploaded=st.bytes_stored, processing_seconds=st.elapsed,
        new_files=1 if st.blobs_known == 0 else 0, modified_files=0 if st.blobs_known == 0 else 1,
    )
