"""The command line. Commands are thin: they resolve names and call the flows in library modules."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import click

from backends.retry import RetryPolicy

from . import __version__, compression, metrics
from .backup import BackupPlan, run_backup, snapshot_stats
from .check import parse_subset, run_check, summarize
from .errors import BadInput, IntegrityError, Interrupted, RunnerError, one_line
from .executor import (
    BackupSettings,
    Reporting,
    RestoreSettings,
    StorageOpener,
    UpdateStatusSettings,
    backup_session,
    restore_session,
    update_backup_status,
    update_restore_status,
)
from .lock import unlock as remove_locks
from .maintenance import apply_retention
from .objects import ObjectSource
from .output import HostResult, SnapshotStats, write_output
from .prune import run_prune
from .reader import find_file, iter_content
from .repository import Repository
from .resolve import (
    DriverOptions,
    Storage,
    driver_for,
    open_objects,
    storage_from_flags,
    storage_from_repository,
)
from .restore import RestorePlan, run_restore
from .retention import Policy
from .sessions import Retention
from .stats import run_stats
from .status import SUCCEEDED
from .units import stash_bytes

if TYPE_CHECKING:
    from .kube import Cluster

log = logging.getLogger("stash_runner")


# -- shared options --------------------------------------------------------------------------

def _objects_options(f: Callable) -> Callable:
    f = click.option("--kubeconfig", default="",
                     help="Read the objects from this kubeconfig's cluster (default: in-cluster, then KUBECONFIG).")(f)
    f = click.option("--namespace", "-n", default="default", show_default=True,
                     help="Namespace of the objects.")(f)
    return click.option("--objects", "objects", multiple=True, type=click.Path(),
                        help="YAML/JSON file or directory with the objects (repeatable); "
                             "without it they come from the Kubernetes API.")(f)


def _report_options(f: Callable) -> Callable:
    """Stash's metrics flags: where the Pushgateway is, the job and extra labels."""
    opts = [
        click.option("--metrics-enabled", default="true", show_default=True,
                     help="Push metrics when a Pushgateway is known (true/false)."),
        click.option("--metrics-pushgateway-url", default="",
                     help=f"Pushgateway URL (default: ${metrics.ENV_PUSHGATEWAY_URL}; none: no metrics)."),
        click.option("--prom-job-name", default="", envvar="PROMETHEUS_JOB_NAME",
                     help="Job to push under (default: <lower(invokerKind)>-<namespace>-<invokerName>)."),
        click.option("--metrics-labels", multiple=True, help="Extra labels key=value (comma-separated; repeatable)."),
        click.option("--invoker-kind", default="", help="Accepted for Stash's Functions; read from the session."),
        click.option("--invoker-name", default="", help="Accepted for Stash's Functions; read from the session."),
        click.option("--target-kind", default="", help="Kind of the target to report (default: from the session)."),
        click.option("--target-name", default="", help="Name of the target to report (Stash's TARGET_NAME)."),
        click.option("--target-namespace", default="", hidden=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _reporting(source: ObjectSource, cluster: Cluster | None, kw: dict) -> Reporting:
    url = metrics.pushgateway_url(kw["metrics_pushgateway_url"], os.environ) if _truthy(kw["metrics_enabled"]) \
        else None
    labels = metrics.parse_user_labels(item for value in kw["metrics_labels"] for item in value.split(","))
    return Reporting(source, cluster, url, kw["prom_job_name"], labels)


class _OptionalFloat(click.ParamType):
    """A number, or empty for the default: Stash's Functions pass ``--wait-timeout=${waitTimeout:=}``."""

    name = "float"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if value is None or isinstance(value, float) or str(value).strip() == "":
            return value if isinstance(value, float) else None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)


_OPTIONAL_FLOAT = _OptionalFloat()


def _pg_options(f: Callable) -> Callable:
    f = click.option("--pg-args", default="", help="Extra arguments for pg_dumpall/pg_dump or psql.")(f)
    f = click.option("--user", default="", help="Database user (default: from the AppBinding's Secret).")(f)
    f = click.option("--wait-timeout", default=None, type=_OPTIONAL_FLOAT,
                     help="Seconds to wait for the database to accept connections  [default: the Task's "
                          "waitTimeout param, else 300]")(f)
    return click.option("--scratch-dir", default=None, help="Directory for temporary files (certificates).")(f)


def _storage_options(f: Callable) -> Callable:
    """How hard to try a remote storage before giving up (local volumes are not retried)."""
    f = click.option("--backend-timeout", default=RetryPolicy.timeout, show_default=True, type=float,
                     envvar="STASH_RUNNER_BACKEND_TIMEOUT",
                     help="Seconds a storage request may stall before it is retried.")(f)
    return click.option("--backend-retries", default=RetryPolicy.attempts, show_default=True, type=click.IntRange(1),
                        envvar="STASH_RUNNER_BACKEND_RETRIES",
                        help="Attempts per storage request (throttling, 5xx, dropped connections).")(f)


def _lock_options(f: Callable) -> Callable:
    return click.option("--lock-wait", default=300.0, show_default=True, type=float,
                        help="Seconds to wait while another run holds an exclusive lock (a prune).")(f)


def _retention_options(f: Callable) -> Callable:
    """Stash's retention flags: forget (and prune) after a successful backup."""
    opts = [click.option(f"--retention-keep-{k}", default=0, type=click.IntRange(min=0),
                         help=f"Keep the last n {k} snapshots." if k != "last" else "Keep the last n snapshots.")
            for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly")]
    opts += [
        click.option("--retention-keep-tags", default="", help="Keep snapshots with any of these tags (a,b)."),
        click.option("--retention-prune", default="false", help="Prune after forgetting (true/false)."),
        click.option("--retention-dry-run", default="false", help="Only report what retention would remove."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _retention(kw: dict) -> tuple[Policy, bool, bool]:
    # Stash passes each tag as its own --keep-tag: "a,b" keeps snapshots tagged a or b.
    tags = tuple(t.strip() for t in kw["retention_keep_tags"].split(",") if t.strip())
    policy = Policy(last=kw["retention_keep_last"], hourly=kw["retention_keep_hourly"],
                    daily=kw["retention_keep_daily"], weekly=kw["retention_keep_weekly"],
                    monthly=kw["retention_keep_monthly"], yearly=kw["retention_keep_yearly"], tags=tags)
    return policy, _truthy(kw["retention_prune"]), _truthy(kw["retention_dry_run"])


def _retention_override(kw: dict) -> Retention | None:
    """The --retention-* flags when they name a policy; None leaves the invoker's retentionPolicy."""
    policy, prune, dry_run = _retention(kw)
    return None if policy.empty() else Retention(policy, prune, dry_run)


def _wait(kw: dict) -> float:
    return 300.0 if kw["wait_timeout"] is None else kw["wait_timeout"]


def _policy(retries: int, timeout: float) -> RetryPolicy:
    return RetryPolicy(attempts=retries, timeout=timeout)


def _stash_flags(f: Callable) -> Callable:
    """The flags of Stash's addon images, so a Stash Function's args work unchanged."""
    opts = [
        click.option("--appbinding", default="", help="Name of the AppBinding."),
        click.option("--appbinding-namespace", default="", help="Namespace of the AppBinding."),
        click.option("--provider", default="", help="Backend provider: local, s3, gcs, azure."),
        click.option("--bucket", default="", help="Bucket or container (local: the mount path)."),
        click.option("--endpoint", default=""),
        click.option("--region", default=""),
        click.option("--path", "path_", default="", help="Prefix inside the bucket (local: the directory)."),
        click.option("--storage-secret-name", default=""),
        click.option("--storage-secret-namespace", default=""),
        click.option("--secret-dir", default="", help="Directory where the storage Secret is mounted."),
        click.option("--max-connections", default=0, type=int),
        click.option("--insecure-tls", default="false"),
        click.option("--enable-cache", default="false", help="Accepted for compatibility; no cache is kept."),
        click.option("--hostname", default="host-0", show_default=True),
        click.option("--output-dir", default="", help="Write output.json here."),
        click.option("--kubeconfig", default=""),
        click.option("--master", default="", hidden=True),
        click.option("--license-apiservice", default="", hidden=True),
        click.option("--objects", "objects", multiple=True, type=click.Path(), help="Files with the objects."),
        click.option("--namespace", default="default", show_default=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return _storage_options(f)


def _truthy(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _flags_storage(source, kw: dict, namespace: str = "", repository: str = "") -> Storage:
    return storage_from_flags(
        source,
        provider=kw["provider"],
        bucket=kw["bucket"],
        endpoint=kw["endpoint"],
        region=kw["region"],
        path=kw["path_"],
        secret_name=kw["storage_secret_name"],
        secret_namespace=kw["storage_secret_namespace"] or kw["namespace"],
        secret_dir=kw["secret_dir"],
        max_connections=kw["max_connections"],
        insecure_tls=_truthy(kw["insecure_tls"]),
        policy=_policy(kw["backend_retries"], kw["backend_timeout"]),
        repository_name=repository,
        namespace=namespace,
    )


def _driver_options(kw: dict, backup_cmd: str = "") -> DriverOptions:
    """The driver flags. --driver "" means the AppBinding's spec.type; Stash's postgres spellings (backup-pg,
    restore-pg) have no --driver and are postgres."""
    return DriverOptions(backup_cmd=backup_cmd, pg_args=kw["pg_args"], user=kw["user"],
                         scratch_dir=kw["scratch_dir"], driver=kw.get("driver", "postgres"))


def _with_driver(storage: Storage, source: ObjectSource, namespace: str, appbinding: str, opts: DriverOptions):
    """The storage and the AppBinding's driver; the storage is closed if the driver cannot be made."""
    try:
        return storage, driver_for(source, namespace, appbinding, opts)
    except BaseException:
        storage.close()
        raise


def _flags_storage_and_driver(source: ObjectSource, kw: dict, backup_cmd: str = "pg_dumpall"):
    """Storage from Stash's flags, then the postgres driver."""
    return _with_driver(_flags_storage(source, kw), source, kw["appbinding_namespace"] or kw["namespace"],
                        kw["appbinding"], _driver_options(kw, backup_cmd))


def _session_storage(source: ObjectSource, kw: dict) -> StorageOpener:
    """A session's Repository: from Stash's storage flags when the Function passes them, else by name."""
    if kw.get("provider"):
        return lambda ns, name: _flags_storage(source, kw, ns, name)
    policy = _policy(kw["backend_retries"], kw["backend_timeout"])
    if kw.get("repository"):  # a --repository flag wins over the invoker's
        return lambda ns, name: storage_from_repository(source, kw["namespace"], kw["repository"], policy)
    return lambda ns, name: storage_from_repository(source, ns, name, policy)


@contextlib.contextmanager
def _opened(objects, namespace: str, repository: str, retries: int, timeout: float,
            kubeconfig: str = "") -> Iterator[Repository]:
    """The named Repository, opened; its storage closed afterwards."""
    with open_objects(objects, kubeconfig) as (source, _):
        storage = storage_from_repository(source, namespace, repository, _policy(retries, timeout))
    try:
        yield Repository.open(storage.backend, storage.password)
    finally:
        storage.close()


# -- the host result wrapper -----------------------------------------------------------------

def _run_host(output_dir: str, target: str, hostname: str,
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


def _backup(driver, storage: Storage, hostname: str, tags: list[str], wait_timeout: float,
            level: int, workers: int | None, kw: dict) -> tuple[SnapshotStats, dict | None]:
    """Returns the snapshot's figures and, when post-backup actions ran, Stash's repository figures."""
    policy, prune, dry_run = _retention(kw)
    try:
        plan = BackupPlan(driver=driver, backend=storage.backend, password=storage.password, hostname=hostname,
                          tags=tags, wait_timeout=wait_timeout, compression_level=level, workers=workers,
                          lock_wait=kw["lock_wait"], retention=policy, retention_prune=prune,
                          retention_dry_run=dry_run)
        outcome = run_backup(plan)
    finally:
        driver.close()
        storage.close()
    return snapshot_stats(outcome.result), outcome.post.repository_json() if outcome.post else None


def _restore(driver, storage: Storage, snapshot: str, source_hostname: str, wait_timeout: float,
             lock_wait: float) -> None:
    try:
        run_restore(RestorePlan(driver=driver, backend=storage.backend, password=storage.password,
                                snapshot=snapshot, source_hostname=source_hostname,
                                wait_timeout=wait_timeout, lock_wait=lock_wait))
    finally:
        driver.close()
        storage.close()


# -- commands --------------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="stash-runner")
@click.option("-v", "--verbose", is_flag=True, help="Also log the dump tools' stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose: bool, quiet: bool) -> None:
    """Back up and restore databases into restic repositories, as Stash's executor."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr, force=True)
    # -v is for our own messages only: the storage SDKs' debug logs print request URLs, and a SAS token
    # or a signed URL in them is a credential.
    logging.getLogger("stash_runner").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    # The SDKs log every request at INFO, and warn of what we retry or report ourselves in one line.
    for sdk in ("azure", "google", "botocore", "boto3", "urllib3", "kubernetes"):
        logging.getLogger(sdk).setLevel(logging.ERROR)


@cli.command()
@_objects_options
@click.option("--backupsession", default="",
              help="Run for this BackupSession: the rest comes from it and its invoker; status, Events and metrics "
                   "are reported.")
@click.option("--appbinding", default="", help="AppBinding of the database (with a session: which target).")
@click.option("--repository", default="", help="Repository to back up into (with a session: its invoker's).")
@click.option("--hostname", default="host-0", show_default=True, help="Host name recorded in the snapshot.")
@click.option("--tag", "tags", multiple=True, help="Tag for the snapshot (repeatable).")
@click.option("--output-dir", default="", help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@click.option("--backup-cmd", default="pg_dumpall", show_default=True, help="pg_dumpall or pg_dump.")
@click.option("--compression-level", default=compression.DEFAULT_LEVEL, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Threads for hashing/compressing/encrypting.")
@_pg_options
@_retention_options
@_lock_options
@_storage_options
@_report_options
def backup(**kw) -> None:
    """Dump a database into a snapshot of a repository (created if it does not exist).

    With --retention-keep-* the policy is applied afterwards (forget, and prune with --retention-prune),
    and the repository's size and snapshot count go into output.json.
    """
    opts = _driver_options(kw, kw["backup_cmd"])
    if kw["backupsession"]:
        _backup_session(kw, opts, list(kw["tags"]), kw["compression_level"], kw["workers"])
        return
    _require(kw, "appbinding", "repository")

    def work() -> tuple[SnapshotStats, dict | None]:
        storage, drv = _named_storage_and_driver(kw, opts)
        return _backup(drv, storage, kw["hostname"], list(kw["tags"]), _wait(kw), kw["compression_level"],
                       kw["workers"], kw)

    _run_host(kw["output_dir"], kw["appbinding"], kw["hostname"], work)


def _named_storage_and_driver(kw: dict, opts: DriverOptions):
    """The --repository's storage and the --appbinding's driver (storage closed if the driver fails)."""
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
        storage = storage_from_repository(source, kw["namespace"], kw["repository"],
                                          _policy(kw["backend_retries"], kw["backend_timeout"]))
        return _with_driver(storage, source, kw["namespace"], kw["appbinding"], opts)


def _require(kw: dict, *names: str) -> None:
    for name in names:
        if not kw[name]:
            raise BadInput(f"--{name} is missing (or give a session to take it from)")


def _backup_session(kw: dict, opts: DriverOptions, tags: list[str], level: int, workers: int | None) -> None:
    settings = BackupSettings(
        hostname=kw["hostname"] or "host-0", target_name=kw["appbinding"] or kw["target_name"], driver=opts,
        wait_timeout=kw["wait_timeout"], compression_level=level, workers=workers, lock_wait=kw["lock_wait"],
        tags=tags, retention=_retention_override(kw), output_dir=kw["output_dir"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        backup_session(_reporting(source, cluster, kw), kw["namespace"], kw["backupsession"], settings,
                       _session_storage(source, kw))


def _restore_session(kw: dict, opts: DriverOptions) -> None:
    settings = RestoreSettings(
        hostname=kw["hostname"] or "host-0", snapshot="" if kw["snapshot"] == "latest" else kw["snapshot"],
        source_hostname=kw["source_hostname"], driver=opts, wait_timeout=kw["wait_timeout"],
        lock_wait=kw["lock_wait"], output_dir=kw["output_dir"], appbinding=kw["appbinding"] or kw["target_name"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        restore_session(_reporting(source, cluster, kw), kw["namespace"], kw["restoresession"], settings,
                        _session_storage(source, kw))


@cli.command("backup-pg")
@_stash_flags
@click.option("--backupsession", default="", help="Run for this BackupSession and report to it.")
@click.option("--backup-cmd", default="pg_dumpall", show_default=True)
@_retention_options
@_lock_options
@_pg_options
@_report_options
def backup_pg(**kw) -> None:
    """Stash's postgres addon spelling of `backup` (same flags as its image)."""
    if kw["backupsession"]:
        _backup_session(kw, _driver_options(kw, kw["backup_cmd"]), [], compression.DEFAULT_LEVEL, None)
        return

    def work() -> tuple[SnapshotStats, dict | None]:
        with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
            storage, drv = _flags_storage_and_driver(source, kw, backup_cmd=kw["backup_cmd"])
        return _backup(drv, storage, kw["hostname"] or "host-0", [], _wait(kw), compression.DEFAULT_LEVEL, None, kw)

    _run_host(kw["output_dir"], kw["appbinding"], kw["hostname"] or "host-0", work)


@cli.command()
@_objects_options
@click.option("--restoresession", default="",
              help="Run for this RestoreSession: the rest comes from it; status, Events and metrics are reported.")
@click.option("--appbinding", default="", help="AppBinding of the database to restore into.")
@click.option("--repository", default="", help="Repository to restore from.")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot ID (or prefix) or 'latest'.")
@click.option("--hostname", default="host-0", show_default=True, help="This host's name (for output.json).")
@click.option("--source-hostname", default="", help="Host whose latest snapshot to restore (default: --hostname).")
@click.option("--output-dir", default="", help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@_pg_options
@_lock_options
@_storage_options
@_report_options
def restore(**kw) -> None:
    """Restore a snapshot into the database of an AppBinding."""
    opts = _driver_options(kw)
    if kw["restoresession"]:
        _restore_session(kw, opts)
        return
    _require(kw, "appbinding", "repository")

    def work() -> None:
        storage, drv = _named_storage_and_driver(kw, opts)
        _restore(drv, storage, kw["snapshot"], kw["source_hostname"] or kw["hostname"], _wait(kw), kw["lock_wait"])

    _run_host(kw["output_dir"], kw["appbinding"], kw["hostname"], work)


@cli.command("restore-pg")
@_stash_flags
@click.option("--restoresession", default="", help="Run for this RestoreSession and report to it.")
@click.option("--snapshot", default="latest", show_default=True)
@click.option("--source-hostname", default="")
@_lock_options
@_pg_options
@_report_options
def restore_pg(**kw) -> None:
    """Stash's postgres addon spelling of `restore` (same flags as its image)."""
    if kw["restoresession"]:
        _restore_session(kw, _driver_options(kw))
        return
    hostname = kw["hostname"] or "host-0"

    def work() -> None:
        with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
            storage, drv = _flags_storage_and_driver(source, kw)
        _restore(drv, storage, kw["snapshot"] or "latest", kw["source_hostname"] or hostname, _wait(kw),
                 kw["lock_wait"])

    _run_host(kw["output_dir"], kw["appbinding"], hostname, work)


@cli.command("update-status")
@_stash_flags
@click.option("--backupsession", default="", help="The BackupSession to report the output to.")
@click.option("--restoresession", default="", help="The RestoreSession to report the output to.")
@click.option("--repository", default="", help="Repository for the post-backup actions (default: the invoker's).")
@click.option("--scratch-dir", default=None, hidden=True)
@_lock_options
@_report_options
def update_status(**kw) -> None:
    """Stash's second Task step: report output.json from --output-dir to the session (status, Events, metrics)
    and, once per BackupSession, run the post-backup actions (retention, integrity check, repository figures)."""
    if bool(kw["backupsession"]) == bool(kw["restoresession"]):
        raise BadInput("update-status: give one of --backupsession or --restoresession")
    if not kw["output_dir"]:
        raise BadInput("--output-dir is missing (where the backup/restore step wrote output.json)")
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        rep = _reporting(source, cluster, kw)
        if kw["backupsession"]:
            hosts = update_backup_status(rep, kw["namespace"], kw["backupsession"], UpdateStatusSettings(
                kw["output_dir"], kw["target_name"], kw["target_kind"], kw["lock_wait"]), _session_storage(source, kw))
        else:
            hosts = update_restore_status(rep, kw["namespace"], kw["restoresession"], kw["output_dir"])
    failed = [h for h in hosts if h.phase != SUCCEEDED]
    if failed:
        raise RunnerError(f"host {failed[0].hostname} failed: {failed[0].error or 'no reason given'}")


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to list.")
@click.option("--host", "host", default="", help="Only snapshots of this host.")
@click.option("--json", "as_json", is_flag=True, help="Print restic's JSON (as `restic snapshots --json`).")
@_storage_options
def snapshots(objects, namespace, kubeconfig, repository, host, as_json, backend_retries, backend_timeout) -> None:
    """List the snapshots of a repository."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        snaps = [s for s in repo.list_snapshots() if not host or s.hostname == host]
    if as_json:
        click.echo(json.dumps([s.summary_json() for s in snaps]))
        return
    click.echo(f"{'ID':<10}{'Time':<22}{'Host':<16}{'Tags':<16}Paths")
    for s in snaps:
        click.echo(f"{s.short_id:<10}{s.datetime.strftime('%Y-%m-%d %H:%M:%S'):<22}{s.hostname:<16}"
                   f"{','.join(s.tags):<16}{', '.join(s.paths)}")
    click.echo(f"{len(snaps)} snapshots")


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to read.")
@click.option("--host", "host", default="", help="With 'latest': the latest snapshot of this host.")
@click.argument("snapshot")
@click.argument("path", required=False)
@_storage_options
def dump(objects, namespace, kubeconfig, repository, host, snapshot, path, backend_retries, backend_timeout) -> None:
    """Write a file of a snapshot to stdout (the snapshot's only file when PATH is not given)."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        repo.load_index()
        snap = repo.find_snapshot(snapshot, hostname=host or None)
        _, node = find_file(repo, snap, path)
        out = sys.stdout.buffer
        for chunk in iter_content(repo, node):
            out.write(chunk)
        out.flush()


def _prune_options(f: Callable) -> Callable:
    f = click.option("--max-unused", default="5%", show_default=True,
                     help="Unused space to tolerate: a share (5%), a size (100M), 0 or unlimited.")(f)
    return click.option("--max-repack-size", default=None, help="Repack at most this much (e.g. 2G).")(f)


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to apply the policy to.")
@click.option("--keep-last", "-l", default=0, type=click.IntRange(min=0), help="Keep the last n snapshots.")
@click.option("--keep-hourly", "-H", default=0, type=click.IntRange(min=0), help="Keep the last n hourly snapshots.")
@click.option("--keep-daily", "-d", default=0, type=click.IntRange(min=0), help="Keep the last n daily snapshots.")
@click.option("--keep-weekly", "-w", default=0, type=click.IntRange(min=0), help="Keep the last n weekly snapshots.")
@click.option("--keep-monthly", "-m", default=0, type=click.IntRange(min=0), help="Keep the last n monthly snapshots.")
@click.option("--keep-yearly", "-y", default=0, type=click.IntRange(min=0), help="Keep the last n yearly snapshots.")
@click.option("--keep-within", default="", help="Keep snapshots within DURATION (1y5m7d2h) of the newest.")
@click.option("--keep-within-hourly", default="")
@click.option("--keep-within-daily", default="")
@click.option("--keep-within-weekly", default="")
@click.option("--keep-within-monthly", default="")
@click.option("--keep-within-yearly", default="")
@click.option("--keep-tag", "keep_tags", multiple=True, help="Keep snapshots with all of these tags (a,b); repeatable.")
@click.option("--host", "hosts", multiple=True, help="Only snapshots of this host (repeatable).")
@click.option("--tag", "tag_filter", multiple=True, help="Only snapshots with these tags (a,b; repeatable).")
@click.option("--path", "path_filter", multiple=True, help="Only snapshots including this path (repeatable).")
@click.option("--group-by", "-g", default="host,paths", show_default=True)
@click.option("--dry-run", is_flag=True, help="Remove nothing; print what would be removed.")
@click.option("--prune", is_flag=True, help="Prune afterwards when snapshots were removed.")
@click.option("--json", "as_json", is_flag=True, help="Print restic's `forget --json` output.")
@_prune_options
@_storage_options
def forget(objects, namespace, kubeconfig, repository, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
           keep_yearly, keep_within, keep_within_hourly, keep_within_daily, keep_within_weekly,
           keep_within_monthly, keep_within_yearly, keep_tags, hosts, tag_filter, path_filter, group_by,
           dry_run, prune, as_json, max_unused, max_repack_size, backend_retries, backend_timeout) -> None:
    """Remove snapshots by a retention policy, exactly as `restic forget` (then prune with --prune)."""
    policy = Policy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                    monthly=keep_monthly, yearly=keep_yearly, tags=tuple(keep_tags), within=keep_within,
                    within_hourly=keep_within_hourly, within_daily=keep_within_daily,
                    within_weekly=keep_within_weekly, within_monthly=keep_within_monthly,
                    within_yearly=keep_within_yearly)
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        outcome = apply_retention(repo, policy, prune=prune, dry_run=dry_run, group_by=group_by,
                                  hosts=list(hosts) or None, tag_filter=tag_filter, path_filter=path_filter,
                                  max_unused=max_unused, max_repack_size=max_repack_size)
    click.echo(outcome.forget.json_text() if as_json else outcome.forget.summary(), nl=False)
    if outcome.prune is not None:
        click.echo("\n".join(outcome.prune.stats_lines()), err=as_json)  # stdout stays pure JSON with --json
        click.echo(outcome.prune.summary(), err=as_json)


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to prune.")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@_prune_options
@_storage_options
def prune(objects, namespace, kubeconfig, repository, dry_run, max_unused, max_repack_size, backend_retries,
          backend_timeout) -> None:
    """Delete data no snapshot needs: unused packs go, mostly unused packs are repacked (exclusive lock)."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        result = run_prune(repo, dry_run=dry_run, max_unused=max_unused, max_repack_size=max_repack_size,
                           progress=log.debug)
    click.echo("\n".join(result.stats_lines()))
    if result.packs_not_removed:
        log.warning("%d pack(s) could not be removed; the next prune removes them", result.packs_not_removed)
    click.echo(result.summary())


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to check.")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob's MAC and hash.")
@click.option("--read-data-subset", default="", metavar="n/t|x%|SIZE",
              help="Read only a subset of the packs: bucket n of t, x% of them, or about SIZE bytes.")
@click.option("--no-lock", is_flag=True, help="Do not lock the repository.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_storage_options
def check(objects, namespace, kubeconfig, repository, read_data, read_data_subset, no_lock, as_json, backend_retries,
          backend_timeout) -> None:
    """Verify the repository's structure (and with --read-data its contents); exit 4 if damaged."""
    if read_data_subset:
        parse_subset(read_data_subset)  # a bad value fails before anything is opened
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        result = run_check(repo, read_data=read_data, subset=read_data_subset or None, lock=not no_lock)
        location = repo.backend.location
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(result), "ok": result.ok}))
    else:
        for hint in result.hints:
            click.echo(f"hint: {hint}")
        for error in result.errors:
            click.echo(f"error: {error}", err=True)
        for line in summarize(result):
            click.echo(line)
    if not result.ok:
        raise IntegrityError(f"{location}: check found {len(result.errors)} error(s)")


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to unlock.")
@click.option("--remove-all", is_flag=True, help="Remove every lock, also live ones.")
@_storage_options
def unlock(objects, namespace, kubeconfig, repository, remove_all, backend_retries, backend_timeout) -> None:
    """Remove stale locks: not refreshed for 30 minutes, or held by a process gone from this host."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        removed, kept = remove_locks(repo, remove_all=remove_all)
    for lock in removed:
        click.echo(f"removed {lock.describe()}")
    for lock in kept:
        click.echo(f"kept live {lock.describe()}")
    click.echo(f"{len(removed)} lock(s) removed, {len(kept)} live lock(s) kept")


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to measure.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_storage_options
def stats(objects, namespace, kubeconfig, repository, as_json, backend_retries, backend_timeout) -> None:
    """Sizes and counts of a repository (what Stash puts in Repository status)."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig) as repo:
        st = run_stats(repo)
    if as_json:
        click.echo(json.dumps(st.json()))
        return
    click.echo(f"snapshots:            {st.snapshots}")
    click.echo(f"restore size:         {stash_bytes(st.restore_size)}  (all files of all snapshots)")
    click.echo(f"raw data:             {stash_bytes(st.raw_data)}  (stored blobs the snapshots use)")
    click.echo(f"repository size:      {stash_bytes(st.repository_size)}  (all files in storage)")
    click.echo(f"blobs:                {st.blobs} in the index, {st.referenced_blobs} referenced")
    click.echo(f"packs:                {st.packs} ({st.index_files} index files)")


# -- entry point -----------------------------------------------------------------------------

def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="stash-runner", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("stash-runner: error: aborted", err=True)
        return 130
    except RunnerError as e:
        click.echo(f"stash-runner: error: {one_line(e)}", err=True)
        return e.exit_code
    except Interrupted as e:
        click.echo(f"stash-runner: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("stash-runner: error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    return 0


def entry() -> None:
    sys.exit(main())

