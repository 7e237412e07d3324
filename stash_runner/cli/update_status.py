"""``update-status``: Stash's second Task step, reporting a backup or restore step's output.json to its session."""

from __future__ import annotations

import click

from stash_runner.errors import BadInput, RunnerError
from stash_runner.stash.executor import UpdateStatusSettings, update_backup_status, update_restore_status
from stash_runner.stash.resolve import open_objects
from stash_runner.stash.status import SUCCEEDED

from .options import lock_options, report_options, stash_flags
from .wiring import reporting, session_storage


@click.command("update-status")
@stash_flags
@click.option("--backupsession", default="", help="The BackupSession to report the output to.")
@click.option("--restoresession", default="", help="The RestoreSession to report the output to.")
@click.option("--repository", default="", help="Repository for the post-backup actions (default: the invoker's).")
@click.option("--scratch-dir", default=None, hidden=True)
@lock_options
@report_options
def update_status(**kw) -> None:
    """Stash's second Task step: report output.json from --output-dir to the session (status, Events, metrics)
    and, once per BackupSession, run the post-backup actions (retention, integrity check, repository figures)."""
    if bool(kw["backupsession"]) == bool(kw["restoresession"]):
        raise BadInput("update-status: give one of --backupsession or --restoresession")
    if not kw["output_dir"]:
        raise BadInput("--output-dir is missing (where the backup/restore step wrote output.json)")
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        rep = reporting(source, cluster, kw)
        if kw["backupsession"]:
            hosts = update_backup_status(rep, kw["namespace"], kw["backupsession"], UpdateStatusSettings(
                kw["output_dir"], kw["target_name"], kw["target_kind"], kw["lock_wait"]), session_storage(source, kw))
        else:
            hosts = update_restore_status(rep, kw["namespace"], kw["restoresession"], kw["output_dir"])
    failed = [h for h in hosts if h.phase != SUCCEEDED]
    if failed:
        raise RunnerError(f"host {failed[0].hostname} failed: {failed[0].error or 'no reason given'}")
