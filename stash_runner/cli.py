"""The command line. Commands are thin: they resolve names and call the flows in library modules."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator

import click

from backends.retry import RetryPolicy

from . import __version__, compression
from .backup import BackupPlan, run_backup
from .check import parse_subset, run_check, summarize
from .errors import BadInput, IntegrityError, Interrupted, RunnerError
from .lock import unlock as remove_locks
from .output import HostResult, SnapshotStats, write_output
from .reader import find_file, iter_content
from .repository import Repository
from .resolve import (
    DriverOptions,
    Storage,
    driver_for,
    object_source,
    storage_from_flags,
    storage_from_repository,
)
from .restore import RestorePlan, run_restore
from .stats import run_stats
from .units import rate, stash_bytes

log = logging.getLogger("stash_runner")


# -- shared options --------------------------------------------------------------------------

def _objects_options(f: Callable) -> Callable:
    f = click.option("--namespace", "-n", default="default", show_default=True,
                     help="Namespace of the objects.")(f)
    return click.option("--objects", "objects", multiple=True, type=click.Path(),
                        help="YAML/JSON file or directory with the objects (repeatable).")(f)


def _pg_options(f: Callable) -> Callable:
    f = click.option("--pg-args", default="", help="Extra arguments for pg_dumpall/pg_dump or psql.")(f)
    f = click.option("--user", default="", help="Database user (default: from the AppBinding's Secret).")(f)
    f = click.option("--wait-timeout", default=300, show_default=True, type=float,
                     help="Seconds to wait for the database to accept connections.")(f)
    return click.option("--scratch-dir", default=None, help="Directory for temporary files (certificates).")(f)


def _storage_options(f: Callable) -> Callable:
    """How hard to try a remote storage before giving up (local volumes are not retried)."""
    f = click.option("--backend-timeout", default=RetryPolicy.timeout, show_default=True, type=float,
                     envvar="STASH_RUNNER_BACKEND_TIMEOUT",
                     help="Seconds a storage request may stall before it is retried.")(f)
    return click.option("--backend-retries", default=RetryPolicy.attempts, show_default=True, type=click.IntRange(1),
                        envvar="STASH_RUNNER_BACKEND_RETRIES",
                        help="Attempts per storage request (throttling, 5xx, dropped connections).")(f)


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


def _flags_storage(source, kw: dict) -> Storage:
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
    )


def _flags_storage_and_driver(kw: dict, backup_cmd: str = "pg_dumpall"):
    """Storage from Stash's flags (the secret by name needs --objects), then the postgres driver."""
    source = object_source(kw["objects"]) if kw["objects"] else None
    storage = _flags_storage(source, kw)
    drv = driver_for(source or object_source(()), kw["appbinding_namespace"] or kw["namespace"], kw["appbinding"],
                     DriverOptions(backup_cmd=backup_cmd, pg_args=kw["pg_args"], user=kw["user"],
                                   scratch_dir=kw["scratch_dir"], driver="postgres"))
    return storage, drv


def _no_cluster(session_flag: str, value: str, kubeconfig: str) -> None:
    if value or kubeconfig:
        raise BadInput(f"{session_flag}/--kubeconfig: reading sessions from the Kubernetes API is not "
                       "supported by this version; give --objects")


@contextlib.contextmanager
def _opened(objects, namespace: str, repository: str, retries: int, timeout: float) -> Iterator[Repository]:
    """The named Repository, opened; its storage closed afterwards."""
    storage = storage_from_repository(object_source(objects), namespace, repository, _policy(retries, timeout))
    try:
        yield Repository.open(storage.backend, storage.password)
    finally:
        storage.close()


# -- the host result wrapper -----------------------------------------------------------------

def _run_host(output_dir: str, target: str, hostname: str, fn: Callable[[], SnapshotStats | None]) -> None:
    """Run one host's work; write output.json (also on failure) when asked to."""
    started = time.monotonic()
    try:
        snap = fn()
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if output_dir:
            msg = str(e) or type(e).__name__
            write_output(output_dir, target, HostResult(hostname, "Failed", time.monotonic() - started, msg))
        raise
    if output_dir:
        write_output(output_dir, target, HostResult(hostname, "Succeeded", time.monotonic() - started,
                                                    snapshots=[snap] if snap else []))


def _backup(driver, storage: Storage, hostname: str, tags: list[str], wait_timeout: float,
            level: int, workers: int | None) -> SnapshotStats:
    try:
        plan = BackupPlan(driver=driver, backend=storage.backend, password=storage.password, hostname=hostname,
                          tags=tags, wait_timeout=wait_timeout, compression_level=level, workers=workers)
        result = run_backup(plan)
    finally:
        driver.close()
        storage.close()
    st = result.stats
    log.info(
        "snapshot %s saved for %s: %s read, %s stored, %.1f s (%s)",
        result.snapshot.short_id, hostname, stash_bytes(st.bytes_read), stash_bytes(st.bytes_stored),
        st.elapsed, rate(st.bytes_read, st.elapsed),
    )
    return SnapshotStats(
        name=result.snapshot.id, path=result.snapshot.paths[0], total_size=st.bytes_read,
        uploaded=st.bytes_stored, processing_seconds=st.elapsed,
        new_files=1 if st.blobs_known == 0 else 0, modified_files=0 if st.blobs_known == 0 else 1,
    )


def _restore(driver, storage: Storage, snapshot: str, source_hostname: str, wait_timeout: float) -> None:
    try:
        result = run_restore(RestorePlan(driver=driver, backend=storage.backend, password=storage.password,
                                         snapshot=snapshot, source_hostname=source_hostname,
                                         wait_timeout=wait_timeout))
    finally:
        driver.close()
        storage.close()
    log.info("restored snapshot %s: %s in %.1f s (%s)", result.snapshot.short_id,
             stash_bytes(result.bytes_restored), result.seconds, rate(result.bytes_restored, result.seconds))


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
    for sdk in ("azure", "google", "botocore", "boto3", "urllib3"):
        logging.getLogger(sdk).setLevel(logging.ERROR)


@cli.command()
@_objects_options
@click.option("--appbinding", required=True, help="AppBinding of the database to back up.")
@click.option("--repository", required=True, help="Repository to back up into.")
@click.option("--hostname", default="host-0", show_default=True, help="Host name recorded in the snapshot.")
@click.option("--tag", "tags", multiple=True, help="Tag for the snapshot (repeatable).")
@click.option("--output-dir", default="", help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@click.option("--backup-cmd", default="pg_dumpall", show_default=True, help="pg_dumpall or pg_dump.")
@click.option("--compression-level", default=compression.DEFAULT_LEVEL, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Threads for hashing/compressing/encrypting.")
@_pg_options
@_storage_options
def backup(objects, namespace, appbinding, repository, hostname, tags, output_dir, driver, backup_cmd,
           compression_level, workers, pg_args, user, wait_timeout, scratch_dir, backend_retries,
           backend_timeout) -> None:
    """Dump a database into a snapshot of a repository (created if it does not exist)."""
    def work() -> SnapshotStats:
        source = object_source(objects)
        storage = storage_from_repository(source, namespace, repository, _policy(backend_retries, backend_timeout))
        drv = driver_for(source, namespace, appbinding, DriverOptions(
            backup_cmd=backup_cmd, pg_args=pg_args, user=user, scratch_dir=scratch_dir, driver=driver))
        return _backup(drv, storage, hostname, list(tags), wait_timeout, compression_level, workers)

    _run_host(output_dir, appbinding, hostname, work)


@cli.command("backup-pg")
@_stash_flags
@click.option("--backupsession", default="")
@click.option("--backup-cmd", default="pg_dumpall", show_default=True)
@click.option("--retention-keep-last", default=0, type=int)
@click.option("--retention-keep-hourly", default=0, type=int)
@click.option("--retention-keep-daily", default=0, type=int)
@click.option("--retention-keep-weekly", default=0, type=int)
@click.option("--retention-keep-monthly", default=0, type=int)
@click.option("--retention-keep-yearly", default=0, type=int)
@click.option("--retention-keep-tags", default="")
@click.option("--retention-prune", default="false")
@click.option("--retention-dry-run", default="false")
@_pg_options
def backup_pg(**kw) -> None:
    """Stash's postgres addon spelling of `backup` (same flags as its image)."""
    _no_cluster("--backupsession", kw["backupsession"], kw["kubeconfig"])
    keep = [k for k in kw if k.startswith("retention_keep_") and kw[k] not in (0, "")]
    if keep or _truthy(kw["retention_prune"]):
        raise BadInput(f"--{keep[0].replace('_', '-') if keep else 'retention-prune'}: retention is not "
                       "supported by this version")

    def work() -> SnapshotStats:
        storage, drv = _flags_storage_and_driver(kw, backup_cmd=kw["backup_cmd"])
        return _backup(drv, storage, kw["hostname"] or "host-0", [], kw["wait_timeout"],
                       compression.DEFAULT_LEVEL, None)

    _run_host(kw["output_dir"], kw["appbinding"], kw["hostname"] or "host-0", work)


@cli.command()
@_objects_options
@click.option("--appbinding", required=True, help="AppBinding of the database to restore into.")
@click.option("--repository", required=True, help="Repository to restore from.")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot ID (or prefix) or 'latest'.")
@click.option("--hostname", default="host-0", show_default=True, help="This host's name (for output.json).")
@click.option("--source-hostname", default="", help="Host whose latest snapshot to restore (default: --hostname).")
@click.option("--output-dir", default="", help="Write Stash's output.json here.")
@click.option("--driver", default="", help="Database driver (default: from the AppBinding's spec.type).")
@_pg_options
@_storage_options
def restore(objects, namespace, appbinding, repository, snapshot, hostname, source_hostname, output_dir, driver,
            pg_args, user, wait_timeout, scratch_dir, backend_retries, backend_timeout) -> None:
    """Restore a snapshot into the database of an AppBinding."""
    def work() -> None:
        source = object_source(objects)
        storage = storage_from_repository(source, namespace, repository, _policy(backend_retries, backend_timeout))
        drv = driver_for(source, namespace, appbinding, DriverOptions(
            pg_args=pg_args, user=user, scratch_dir=scratch_dir, driver=driver))
        _restore(drv, storage, snapshot, source_hostname or hostname, wait_timeout)

    _run_host(output_dir, appbinding, hostname, work)


@cli.command("restore-pg")
@_stash_flags
@click.option("--restoresession", default="")
@click.option("--snapshot", default="latest", show_default=True)
@click.option("--source-hostname", default="")
@_pg_options
def restore_pg(**kw) -> None:
    """Stash's postgres addon spelling of `restore` (same flags as its image)."""
    _no_cluster("--restoresession", kw["restoresession"], kw["kubeconfig"])
    hostname = kw["hostname"] or "host-0"

    def work() -> None:
        storage, drv = _flags_storage_and_driver(kw)
        _restore(drv, storage, kw["snapshot"] or "latest", kw["source_hostname"] or hostname, kw["wait_timeout"])

    _run_host(kw["output_dir"], kw["appbinding"], hostname, work)


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to list.")
@click.option("--host", "host", default="", help="Only snapshots of this host.")
@click.option("--json", "as_json", is_flag=True, help="Print restic's JSON (as `restic snapshots --json`).")
@_storage_options
def snapshots(objects, namespace, repository, host, as_json, backend_retries, backend_timeout) -> None:
    """List the snapshots of a repository."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout) as repo:
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
def dump(objects, namespace, repository, host, snapshot, path, backend_retries, backend_timeout) -> None:
    """Write a file of a snapshot to stdout (the snapshot's only file when PATH is not given)."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout) as repo:
        repo.load_index()
        snap = repo.find_snapshot(snapshot, hostname=host or None)
        _, node = find_file(repo, snap, path)
        out = sys.stdout.buffer
        for chunk in iter_content(repo, node):
            out.write(chunk)
        out.flush()


@cli.command()
@_objects_options
@click.option("--repository", required=True, help="Repository to check.")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob's MAC and hash.")
@click.option("--read-data-subset", default="", metavar="n/t|x%|SIZE",
              help="Read only a subset of the packs: bucket n of t, x% of them, or about SIZE bytes.")
@click.option("--no-lock", is_flag=True, help="Do not lock the repository.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_storage_options
def check(objects, namespace, repository, read_data, read_data_subset, no_lock, as_json, backend_retries,
          backend_timeout) -> None:
    """Verify the repository's structure (and with --read-data its contents); exit 4 if damaged."""
    if read_data_subset:
        parse_subset(read_data_subset)  # a bad value fails before anything is opened
    with _opened(objects, namespace, repository, backend_retries, backend_timeout) as repo:
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
def unlock(objects, namespace, repository, remove_all, backend_retries, backend_timeout) -> None:
    """Remove stale locks: not refreshed for 30 minutes, or held by a process gone from this host."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout) as repo:
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
def stats(objects, namespace, repository, as_json, backend_retries, backend_timeout) -> None:
    """Sizes and counts of a repository (what Stash puts in Repository status)."""
    with _opened(objects, namespace, repository, backend_retries, backend_timeout) as repo:
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


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


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
        click.echo(f"stash-runner: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except Interrupted as e:
        click.echo(f"stash-runner: error: {e}", err=True)
        return Interrupted.exit_code
    except KeyboardInterrupt:
        click.echo("stash-runner: error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    return 0


def entry() -> None:
    sys.exit(main())

