"""Retention (forget, then prune) under one exclusive lock, and the actions Stash runs after a backup."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stash_runner.errors import IntegrityError, RunnerError
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository

from .forget import ForgetResult, run_forget
from .retention import Policy

if TYPE_CHECKING:
    from .prune import PruneResult
    from .stats import RepoStats

# prune, check and stats are imported by the actions that run them: `stash-runner forget` without --prune is
# forget alone, and its start-up should not pay for the others.

log = logging.getLogger("stash_runner")


@dataclass
class RetentionOutcome:
    forget: ForgetResult
    prune: PruneResult | None = None


def apply_retention(repo: Repository, policy: Policy, *, prune: bool = False, dry_run: bool = False,
                    group_by: str | Sequence[str] = ("host", "paths"), hosts: list[str] | None = None,
                    tag_filter: Sequence[str] = (), path_filter: Sequence[str] = (), max_unused: str = "5%",
                    max_repack_size: str | None = None, lock_wait: float = 0.0) -> RetentionOutcome:
    """restic forget [--prune]: one exclusive lock for both, none for a dry run's forget."""
    lock = contextlib.nullcontext() if dry_run else RepositoryLock(repo, exclusive=True, wait=lock_wait)
    with lock:
        result = run_forget(repo, policy, dry_run=dry_run, group_by=group_by, host=hosts, tag_filter=tag_filter,
                            path_filter=path_filter, prune=prune, lock=False)
        pruned = None
        if result.prune:
            from .prune import run_prune

            # A dry run holds no lock yet: prune takes its own shared one; a real run already holds ours.
            pruned = run_prune(repo, dry_run=dry_run, max_unused=max_unused, max_repack_size=max_repack_size,
                               lock=dry_run, progress=log.debug)
    return RetentionOutcome(result, pruned)


@dataclass
class PostBackup:
    """The outcome of the post-backup actions, as Stash reports them in Repository status."""

    retention: RetentionOutcome | None = None
    stats: RepoStats | None = None
    integrity: bool | None = None
    #: action ("retention", "check", "stats") -> why it failed; the other actions still ran
    errors: dict[str, RunnerError] = field(default_factory=dict)

    @property
    def snapshots_removed(self) -> int:
        return len(self.retention.forget.removed) if self.retention else 0

    def repository_json(self) -> dict:
        """Stash's RepositoryStats: integrity, size, snapshotCount, snapshotsRemovedOnLastCleanup."""
        out: dict = {}
        if self.integrity is not None:
            out["integrity"] = self.integrity
        if self.stats is not None:
            out["size"] = self.stats.raw_data
            out["snapshotCount"] = self.stats.snapshots
        out["snapshotsRemovedOnLastCleanup"] = self.snapshots_removed
        return out


def post_backup(repo: Repository, policy: Policy, *, prune: bool = False, dry_run: bool = False,
                lock_wait: float = 0.0, verify: bool = False) -> PostBackup:
    """Retention when a policy is given, an integrity check with ``verify``, then the repository's size
    and snapshot count. A failing action is recorded in ``errors`` and the others still run, so that
    each gets its own verdict (Stash's one condition per action)."""
    outcome = PostBackup()
    try:
        # Other hosts of the session may have written since this run read the index: their snapshots'
        # trees are in index files this process has not seen.
        repo.load_index()
    except RunnerError as e:
        outcome.errors.update(retention=e, check=e, stats=e)
        return outcome
    if not policy.empty():
        try:
            outcome.retention = apply_retention(repo, policy, prune=prune, dry_run=dry_run, lock_wait=lock_wait)
        except RunnerError as e:
            outcome.errors["retention"] = e
        else:
            f = outcome.retention.forget
            verb = "would remove" if dry_run else "removed"
            log.info("retention (%s): %s %d snapshot(s), kept %d", policy, verb, len(f.to_remove),
                     sum(len(g.keep) for g in f.groups))
            if outcome.retention.prune is not None:
                log.info("%s", outcome.retention.prune.summary())
    if verify:
        from .check import run_check

        try:
            checked = run_check(repo, read_data=False)
        except RunnerError as e:
            outcome.errors["check"] = e
        else:
            outcome.integrity = checked.ok
            if not checked.ok:
                outcome.errors["check"] = IntegrityError(
                    f"check found {len(checked.errors)} error(s), the first: {checked.errors[0]}")
    from .stats import run_stats

    try:
        outcome.stats = run_stats(repo)
    except RunnerError as e:
        outcome.errors["stats"] = e
    return outcome
