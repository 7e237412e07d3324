"""One host's backup or restore outside a session (plain ``backup``/``restore``, and Stash's addon spellings when
no session is named): the flow, the driver and storage closed afterwards, and Stash's output.json when asked."""

from __future__ import annotations

import time
from collections.abc import Callable

from stash_runner.errors import Interrupted, RunnerError
from stash_runner.flows.backup import BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore

from .output import HostResult, SnapshotStats, write_output
from .resolve import Storage
from .status import SUCCEEDED


def run_host(output_dir: str, target: str, hostname: str,
             fn: Callable[[], tuple[SnapshotStats, dict | None] | None]) -> None:
    """Run one host's work; write output.json (also on failure) when asked to.

    ``fn`` returns nothing (restore) or a backup's snapshot figures and, when post-backup actions
    ran, the repository's figures.
    """
    started = time.monotonic()
    try:
        outcome = fn()
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if output_dir:
            msg = str(e) or type(e).__name__
            write_output(output_dir, target, HostResult(hostname, "Failed", time.monotonic() - started, msg))
        raise
    snap, repository = outcome if outcome else (None, None)
    if output_dir:
        write_output(output_dir, target, HostResult(hostname, SUCCEEDED, time.monotonic() - started,
                                                    snapshots=[snap] if snap else []), repository=repository)


def backup(plan: BackupPlan, storage: Storage) -> tuple[SnapshotStats, dict | None]:
    """Run the backup; returns the snapshot's figures and, when post-backup actions ran, Stash's repository
    figures. The driver and the storage are closed afterwards."""
    try:
        outcome = run_backup(plan)
    finally:
        plan.driver.close()
        storage.close()
    return SnapshotStats.from_result(outcome.result), outcome.post.repository_json() if outcome.post else None


def restore(plan: RestorePlan, storage: Storage) -> None:
    """Run the restore; the driver and the storage are closed afterwards."""
    try:
        run_restore(plan)
    finally:
        plan.driver.close()
        storage.close()
