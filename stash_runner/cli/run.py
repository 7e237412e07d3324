"""``backup`` and ``restore``: one database, named by its AppBinding and Repository or by a session."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from stash_runner.errors import BadInput

from .options import (
    COMPRESSION_DEFAULT_LEVEL,
    COMPRESSION_MAX_LEVEL,
    COMPRESSION_MIN_LEVEL,
    driver_options,
    es_options,
    lock_options,
    mongo_options,
    no_lock_option,
    objects_options,
    one_of,
    output_dir_flag,
    pg_restore_options,
    report_options,
    retention_options,
    retention_override,
    retry_policy,
    storage_options,
    tool_options,
    wait_timeout,
)
from .wiring import (
    backup_host,
    backup_session,
    named_storage_and_driver,
    reporting,
    require,
    restore_host,
    restore_session,
    session_storage,
)

if TYPE_CHECKING:
    from drivers import DriverOptions
    from stash_runner.stash.output import SnapshotStats

# The drivers, the flows and the Stash layer are imported when a command runs (see options.py, "Start-up").

_BATCH_HELP = ("without Stash's operator: the global and each member's hooks, the members (spec.executionOrder), "
               "spec.timeOut{retry}; a table of the members on stdout, an output.json per member in "
               "<--output-dir>/<member>/. No session exists for such a run, so nothing is written to the cluster "
               "(with --kubeconfig too): hook outcomes go to the log only. exec hooks need --kubeconfig.")


@click.command()
@objects_options
@click.option("--backupsession", default="",
              help="Run for this BackupSession: the rest comes from it and its invoker; status, Events and metrics "
                   "are reported.")
@click.option("--backupbatch", default="",
              help="Run this BackupBatch " + _BATCH_HELP.format(
                  retry=", spec.retryConfig, and once every member succeeded the retention policy and an integrity "
                        "check"))
@click.option("--appbinding", default="",
              help="AppBinding of the database: required unless a session, a batch or --stdin is given (with a "
                   "session: which target).")
@click.option("--repository", default="",
              help="Repository to back up into: required unless a session or a batch is given (with one: default "
                   "the invoker's).")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Back up what is piped to stdin as one file, as `restic backup --stdin`: any tool's dump (e.g. "
                   "mysqldump's), no AppBinding needed. An empty stdin is an error (nothing is written); "
                   "--wait-timeout bounds the wait for its first byte.")
@click.option("--stdin-filename", default=None, metavar="NAME",
              help="With --stdin: the file's name in the snapshot (dump.sql, or mysql/all.sql)  [default: stdin]")
@click.option("--hostname", default="host-0", show_default=True, help="Host name recorded in the snapshot.")
@click.option("--tag", "tags", multiple=True, help="Tag for the snapshot (repeatable).")
@click.option("--output-dir", default="", callback=output_dir_flag, help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@click.option("--backup-cmd", default="pg_dumpall", show_default=True, help="pg_dumpall or pg_dump.")
@click.option("--compression-level", default=COMPRESSION_DEFAULT_LEVEL, show_default=True,
              type=click.IntRange(COMPRESSION_MIN_LEVEL, COMPRESSION_MAX_LEVEL), help="zstd's level.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Threads for hashing/compressing/encrypting (each holds up to two 8 MiB chunks).")
@tool_options()
@mongo_options
@es_options()
@retention_options
@lock_options
@storage_options
@report_options
def backup(**kw) -> None:
    """Dump a database into a snapshot of a repository (created if it does not exist), or run a BackupSession's
    target, or a whole BackupBatch (--backupbatch).

    With --retention-keep-* the policy is applied afterwards (forget, and prune with --retention-prune),
    and the repository's size and snapshot count go into output.json.
    """
    from stash_runner.stash.host import run_host

    if kw["from_stdin"]:
        _backup_stdin(kw)
        return
    if kw["stdin_filename"] is not None:
        raise BadInput(f"--stdin-filename={kw['stdin_filename']} without --stdin")
    opts = driver_options(kw, kw["backup_cmd"])
    if kw["backupbatch"]:
        _backup_batch(kw, opts)
        return
    if kw["backupsession"]:
        backup_session(kw, opts, list(kw["tags"]), kw["compression_level"], kw["workers"])
        return
    require(kw, "appbinding", "repository")

    def work() -> tuple[SnapshotStats, dict | None]:
        storage, drv = named_storage_and_driver(kw, opts, open_ahead=True)
        return backup_host(drv, storage, kw["hostname"], list(kw["tags"]), wait_timeout(kw), kw["compression_level"],
                       kw["workers"], kw)

    run_host(kw["output_dir"], kw["appbinding"], kw["hostname"], work)


@click.command()
@objects_options
@click.option("--restoresession", default="",
              help="Run for this RestoreSession: the rest comes from it; status, Events and metrics are reported.")
@click.option("--restorebatch", default="",
              help="Run this RestoreBatch " + _BATCH_HELP.format(retry="") + " With --appbinding/--target-name: only "
                   "that member, as the operator's Job for it (also --invoker-kind=RestoreBatch --invoker-name), "
                   "reported to the RestoreBatch's status.members.")
@click.option("--appbinding", default="",
              help="AppBinding of the database to restore into: required unless a session or a batch is given (with "
                   "one: which target or member).")
@click.option("--repository", default="",
              help="Repository to restore from: required unless a session or a batch is given (with one: default "
                   "the invoker's).")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot ID (or prefix) or 'latest'.")
@click.option("--hostname", default="host-0", show_default=True,
              help="This host's name: whose latest snapshot is restored (unless --source-hostname), and output.json's.")
@click.option("--source-hostname", default="", help="Host whose latest snapshot to restore (default: --hostname).")
@click.option("--output-dir", default="", callback=output_dir_flag, help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@tool_options()
@pg_restore_options
@mongo_options
@es_options(restore=True)
@lock_options
@no_lock_option
@storage_options
@report_options
def restore(**kw) -> None:
    """Restore a snapshot into the database of an AppBinding, or run a RestoreSession, or a whole RestoreBatch
    (--restorebatch)."""
    from stash_runner.stash.host import run_host

    opts = driver_options(kw, purpose="restore")
    if restore_batch_member(kw, opts):
        return
    if kw["restorebatch"]:
        _restore_batch(kw, opts)
        return
    if kw["restoresession"]:
        restore_session(kw, opts)
        return
    require(kw, "appbinding", "repository")

    def work() -> None:
        storage, drv = named_storage_and_driver(kw, opts)
        restore_host(drv, storage, kw["snapshot"], kw["source_hostname"] or kw["hostname"], wait_timeout(kw),
                     kw["lock_wait"], kw["no_lock"])

    run_host(kw["output_dir"], kw["appbinding"], kw["hostname"], work)


#: flags that name a database, its tool or a session: with --stdin the data comes from the pipe instead
_NOT_WITH_STDIN = {"appbinding": "--appbinding", "backupsession": "--backupsession", "backupbatch": "--backupbatch",
                   "driver": "--driver", "tool_args": "--args"}


def _backup_stdin(kw: dict) -> None:
    """``backup --stdin``: the piped bytes into a snapshot of --repository, with backup's host, tags, retention and
    output.json (its ref names no AppBinding: there is none)."""
    from drivers.stdin import DEFAULT_FILENAME, StdinDriver
    from stash_runner.stash.host import run_host
    from stash_runner.stash.resolve import open_objects, storage_from_repository

    for name, flag in _NOT_WITH_STDIN.items():
        if kw.get(name):
            raise BadInput(f"--stdin together with {flag}={kw[name]}: with --stdin the data comes from the pipe, "
                           "not from a database; give one of them")
    if not kw["repository"]:
        raise BadInput("--stdin: --repository is missing")

    def work() -> tuple[SnapshotStats, dict | None]:
        drv = StdinDriver(sys.stdin.buffer if sys.stdin is not None else None,
                          kw["stdin_filename"] or DEFAULT_FILENAME)
        with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
            storage = storage_from_repository(source, kw["namespace"], kw["repository"],
                                              retry_policy(kw["backend_retries"], kw["backend_timeout"]))
        return backup_host(drv, storage, kw["hostname"], list(kw["tags"]), wait_timeout(kw), kw["compression_level"],
                           kw["workers"], kw)

    run_host(kw["output_dir"], "", kw["hostname"], work)


def _alone(kw: dict, batch_flag: str, *others: str) -> None:
    """A batch names its members, their hosts and its repository: flags that name one of them contradict it."""
    for name in others:
        if kw.get(name):
            raise BadInput(f"--{batch_flag}={kw[batch_flag]} together with --{name.replace('_', '-')}={kw[name]}: "
                           "a batch names its members itself")


def _backup_batch(kw: dict, opts: DriverOptions) -> None:
    from stash_runner.stash import batch
    from stash_runner.stash.resolve import open_objects

    _alone(kw, "backupbatch", "backupsession", "appbinding", "target_name")
    settings = batch.BatchBackupSettings(
        driver=opts, wait_timeout=kw["wait_timeout"], compression_level=kw["compression_level"],
        workers=kw["workers"], lock_wait=kw["lock_wait"], tags=list(kw["tags"]), retention=retention_override(kw),
        output_dir=kw["output_dir"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        outcome = batch.backup_batch(batch.BatchContext(source, cluster, session_storage(source, kw)),
                                     kw["namespace"], kw["backupbatch"], settings)
    click.echo(outcome.table())
    outcome.raise_if_failed()


def _restore_batch(kw: dict, opts: DriverOptions) -> None:
    from stash_runner.stash import batch
    from stash_runner.stash.resolve import open_objects

    _alone(kw, "restorebatch", "restoresession", "appbinding", "target_name", "source_hostname")
    if kw["snapshot"] != "latest":
        raise BadInput(f"--restorebatch={kw['restorebatch']} together with --snapshot={kw['snapshot']}: each member "
                       "takes its snapshot from its rules")
    settings = batch.BatchRestoreSettings(driver=opts, wait_timeout=kw["wait_timeout"], lock_wait=kw["lock_wait"],
                                          no_lock=kw["no_lock"],
                                          output_dir=kw["output_dir"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        outcome = batch.restore_batch(batch.BatchContext(source, cluster, session_storage(source, kw)),
                                      kw["namespace"], kw["restorebatch"], settings)
    click.echo(outcome.table())
    outcome.raise_if_failed()


def _restore_batch_named(kw: dict) -> tuple[str, str]:
    """The RestoreBatch a restore runs for, and the flags that name it: --restorebatch, or the operator's
    --invoker-kind=RestoreBatch --invoker-name (with which a --restoresession, when given, must agree)."""
    by_invoker = kw.get("invoker_name", "") if kw.get("invoker_kind") == "RestoreBatch" else ""
    if kw.get("invoker_kind") == "RestoreBatch" and not by_invoker:
        raise BadInput("--invoker-kind=RestoreBatch: --invoker-name is missing (the RestoreBatch's name)")
    flag = kw.get("restorebatch", "")
    if flag and by_invoker and flag != by_invoker:
        raise BadInput(f"--restorebatch={flag} and --invoker-kind=RestoreBatch --invoker-name={by_invoker} name "
                       "different RestoreBatches")
    name = flag or by_invoker
    if name and kw.get("restoresession") and kw["restoresession"] != name:
        raise BadInput(f"--restoresession={kw['restoresession']} together with the RestoreBatch {name}: give one")
    named_by = f"--restorebatch={flag}" if flag else f"--invoker-kind=RestoreBatch --invoker-name={by_invoker}"
    return name, named_by if name else ""


def restore_batch_member(kw: dict, opts: DriverOptions) -> bool:
    """Run a RestoreBatch member's Job (restore, restore-<db>) when the flags name a batch and a member; False when
    they do not (a --restorebatch with no member is the whole batch, run without the operator)."""
    name, named_by = _restore_batch_named(kw)
    if not name:
        return False
    member = one_of(kw, "appbinding", "target_name")
    if not member:
        if kw.get("restorebatch"):
            return False
        raise BadInput(f"{named_by}: which member? give --appbinding or --target-name (the member's target)")
    from stash_runner.stash import executor
    from stash_runner.stash.resolve import open_objects

    settings = executor.RestoreSettings(
        hostname=kw["hostname"], snapshot="" if kw["snapshot"] in ("", "latest") else kw["snapshot"],
        source_hostname=kw["source_hostname"], driver=opts, wait_timeout=kw["wait_timeout"],
        lock_wait=kw["lock_wait"], no_lock=kw["no_lock"], output_dir=kw["output_dir"], appbinding=member,
        target_kind=kw["target_kind"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        executor.restore_batch_member(reporting(source, cluster, kw), kw["namespace"], name, settings,
                                      session_storage(source, kw), named_by=named_by)
    return True
