"""``update-status``: Stash's second Task step, reporting a backup or restore step's output.json to its session.

It takes the args of the update-status Function Stash's operator generates (and those of older Stash
releases), so our image runs that step exactly as the operator writes it."""

from __future__ import annotations

import click

from stash_runner.errors import BadInput, RunnerError

from .options import bool_option, lock_options, one_of, report_options, stash_flags
from .wiring import reporting, session_storage


@click.command("update-status")
@stash_flags(update_status=True)
@click.option("--backupsession", default="",
              help="The BackupSession to report to; empty means a restore (Stash's rule).")
@click.option("--restoresession", default="",
              help="The RestoreSession to report to (what the operator passes as --invoker-kind=RestoreSession "
                   "--invoker-name).")
@click.option("--backup-session", default="", help="Stash v0.9's spelling of --backupsession.")
@click.option("--restore-session", default="", help="Stash v0.9's spelling of --restoresession.")
@click.option("--repository", default="",
              help="Stash v0.9-v0.17: the Repository; it must be the invoker's (the default).")
@click.option("--repo-name", default="",
              help="The spelling of --repository in Stash between v0.17 and v0.18.0.")
@click.option("--repo-namespace", default="", help="Namespace of --repository/--repo-name (default: --namespace).")
@bool_option("--enable-status-subresource", "true",
             "Stash v0.9: accepted and ignored (status is always written through the status subresource).")
@click.option("--scratch-dir", default=None, help="Accepted and ignored: update-status writes no temporary files.")
@lock_options
@report_options
def update_status(**kw) -> None:
    """Stash's second Task step: report output.json from --output-dir to the session (status, Events, metrics)
    and, once per BackupSession, run the post-backup actions (retention, integrity check, repository figures).

    Takes the args of the operator's update-status Function: the session is the BackupSession given by
    --backupsession, else (empty) the RestoreSession named by --invoker-kind=RestoreSession --invoker-name (or the
    member --target-name of the RestoreBatch named by --invoker-kind=RestoreBatch --invoker-name). The
    Repository is the invoker's, opened from the storage flags with their Secret, else by name. Flags that
    contradict each other or the session are an error (exit 2). Nothing is done when the step before already
    reported and ran its post-backup actions (output.json's "statusReported").
    """
    from stash_runner.stash.executor import (
        UpdateStatusSettings,
        session_to_update,
        update_backup_status,
        update_restore_status,
    )
    from stash_runner.stash.resolve import open_objects
    from stash_runner.stash.status import SUCCEEDED

    if not kw["output_dir"]:
        raise BadInput("--output-dir is missing (where the backup/restore step wrote output.json)")
    session = session_to_update(one_of(kw, "backupsession", "backup_session"),
                                one_of(kw, "restoresession", "restore_session"),
                                kw["invoker_kind"], kw["invoker_name"])
    settings = UpdateStatusSettings(
        kw["output_dir"], target_name=one_of(kw, "target_name", "appbinding"), target_kind=kw["target_kind"],
        target_namespace=one_of(kw, "target_namespace", "appbinding_namespace"), invoker_kind=kw["invoker_kind"],
        invoker_name=kw["invoker_name"], repository=one_of(kw, "repository", "repo_name"),
        repository_namespace=kw["repo_namespace"], lock_wait=kw["lock_wait"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        rep = reporting(source, cluster, kw)
        if session.kind == "BackupSession":
            hosts = update_backup_status(rep, kw["namespace"], session.name, settings,
                                         session_storage(source, kw, repository_flag=False))
        else:
            hosts = update_restore_status(rep, kw["namespace"], session.name, settings, session)
    failed = [h for h in hosts if h.phase != SUCCEEDED]
    if failed:
        raise RunnerError(f"host {failed[0].hostname} failed: {failed[0].error or 'no reason given'}")
