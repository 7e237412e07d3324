"""Runs the operator starts: one host of a BackupSession or a RestoreSession, and Stash's update-status step.

Everything else is resolved from the session: its invoker gives the target, the Repository, the retention
policy, the Task params and the timeout; a RestoreSession gives the repository, the target and the rules.
Once the session is read, every failure is reported (host and session Failed with the reason, an Event,
the failure metrics) before the error is raised again for the exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from drivers import Driver, DriverOptions
from stash_runner.errors import BadInput, HostsFailed, Interrupted, RunnerError, TimedOut, describe
from stash_runner.flows.backup import BackupOutcome, BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore
from stash_runner.maintenance.post_backup import PostBackup, post_backup
from stash_runner.restic import compression
from stash_runner.restic.archiver import BackupResult
from stash_runner.restic.repository import Repository
from stash_runner.restic.timefmt import go_duration

from . import metrics
from .objects import ObjectSource
from .output import REPORTED, HostResult, SnapshotStats, read_output, write_output
from .reporting import BackupReporter, Pusher, RestoreReporter, StatusWriter
from .resolve import Storage, driver_for
from .sessions import (
    BackupInvoker,
    BackupTarget,
    ObjectRef,
    RestoreRule,
    RestoreSession,
    Retention,
    read_backup_session,
    read_restore_session,
)
from .status import FAILED, SUCCEEDED

log = logging.getLogger("stash_runner")

#: (namespace, Repository name) -> the opened storage; its ``repository`` must be set (status and metrics name it)
StorageOpener = Callable[[str, str], Storage]


@dataclass
class Reporting:
    """What every session run shares: where objects come from, where status goes, where metrics go."""

    source: ObjectSource
    writer: StatusWriter | None = None
    metrics_url: str | None = None
    job_name: str = ""  # Stash's --prom-job-name; default <lower(invokerKind)>-<namespace>-<invokerName>
    user_labels: Mapping[str, str] = field(default_factory=dict)

    def pusher(self, kind: str, name: str, namespace: str, repository: str = "") -> Pusher:
        return Pusher(self.metrics_url, metrics.Invoker(kind, name, namespace, repository, dict(self.user_labels)),
                      self.job_name)


@contextlib.contextmanager
def deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Stop the run as for SIGTERM (cleanup runs) once ``seconds`` have passed: Stash's ``timeOut``."""
    if not seconds:
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise TimedOut(f"{what}: timed out after {go_duration(seconds)}")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class BackupSettings:
    hostname: str = "host-0"
    target_name: str = ""  # which target of the invoker (Stash's TARGET_NAME); "" for the only one
    driver: DriverOptions = field(default_factory=DriverOptions)
    wait_timeout: float | None = None  # None: the Task's waitTimeout param, else 300 s
    compression_level: int = compression.DEFAULT_LEVEL
    workers: int | None = None
    lock_wait: float = 300.0
    tags: list[str] = field(default_factory=list)
    retention: Retention | None = None  # None: the invoker's retentionPolicy
    output_dir: str = ""


def _driver_options(opts: DriverOptions, params: Mapping[str, str], interim_meta: str = "") -> DriverOptions:
    """The Task's params (as the operator would put them into the Function's args) where no flag says."""
    backup_cmd = opts.backup_cmd
    if opts.backup_cmd in ("", "pg_dumpall"):  # a flag left at its default gives way to the Task's param
        backup_cmd = params.get("backupCMD") or params.get("backupCmd") or backup_cmd
    auth_database = opts.auth_database
    if opts.auth_database in ("", "admin"):
        auth_database = params.get("authenticationDatabase") or auth_database
    return dataclasses.replace(
        opts,
        backup_cmd=backup_cmd,
        args=opts.args or params.get("args", ""),
        user=opts.user or params.get("user", ""),
        auth_database=auth_database,
        interim_meta=opts.interim_meta or interim_meta,
    )


def _wait_timeout(flag: float | None, params: Mapping[str, str], ref: str) -> float:
    if flag is not None:
        return flag
    value = params.get("waitTimeout")
    if not value:
        return 300.0
    try:
        return float(value)
    except ValueError:
        raise BadInput(f"{ref}: task param waitTimeout {value!r} is not a number of seconds") from None


def _app_type(source: ObjectSource, ref: ObjectRef, namespace: str) -> str | None:
    if ref.kind != "AppBinding":
        return None
    try:
        return str((source.get("AppBinding", ref.namespace or namespace, ref.name).get("spec") or {})
                   .get("type") or "")
    except BadInput:
        return None  # the driver's lookup names the missing AppBinding; metrics then carry no app labels


def backup_session(rep: Reporting, namespace: str, name: str, settings: BackupSettings,
                   open_storage: StorageOpener) -> list[HostResult]:
    """Back up this Job's target of a BackupSession (one host, or each member of a sharded cluster) and report
    it; raises after reporting a failure."""
    session = read_backup_session(rep.source, namespace, name)
    reporter = BackupReporter(rep.writer, session, rep.pusher(session.invoker_kind, session.invoker_name, namespace))
    started = time.monotonic()
    reported = False
    try:
        invoker = session.invoker(rep.source)
        target = invoker.target(settings.target_name)
        _aim(reporter, rep.source, invoker, target, namespace)
        reporter.started()
        with deadline(invoker.timeout, f"{invoker.ref}: spec.timeOut"):
            try:
                hosts, outcome, storage = _backup_target(rep.source, invoker, target, settings, open_storage,
                                                         started, reporter)
            except HostsFailed as e:
                # The hosts that finished are reported beside those that failed; the run still fails.
                hosts = [_host_result(r, started) for r in e.results] + [
                    HostResult(h, FAILED, time.monotonic() - started, describe(err)) for h, err in e.failures.items()]
                recorded = all([reporter.fail(h) for h in hosts])
                reported = True
                if settings.output_dir:
                    write_output(settings.output_dir, target.ref.name, hosts,
                                 reported=recorded and rep.writer is not None, ref=target.ref.json())
                raise
            try:
                run_post = False
                for host in hosts:
                    run_post = reporter.host_done(host, initialized=outcome.initialized) or run_post
                reported = True
                if settings.output_dir:
                    # after the status write: "statusReported" must never claim a write that did not happen
                    write_output(settings.output_dir, target.ref.name, hosts, reported=rep.writer is not None,
                                 ref=target.ref.json())
                if run_post:
                    _post_backup(reporter, invoker, settings, outcome.repo, storage)
            finally:
                storage.close()
        return hosts
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if not reported:
            failed = HostResult(settings.hostname, FAILED, time.monotonic() - started, describe(e))
            recorded = reporter.fail(failed)
            if settings.output_dir and reporter.target_ref is not None:
                write_output(settings.output_dir, reporter.target_ref["name"], failed,
                             reported=recorded and rep.writer is not None, ref=reporter.target_ref)
        raise


def _host_result(result: BackupResult, started: float) -> HostResult:
    return HostResult(result.snapshot.hostname, SUCCEEDED, time.monotonic() - started,
                      snapshots=[SnapshotStats.from_result(result)])


def _aim(reporter: BackupReporter, source: ObjectSource, invoker: BackupInvoker, target: BackupTarget,
         namespace: str, total_hosts: int = 1) -> None:
    """Point the reporter at the target once the invoker is read: its metrics name the invoker's Repository."""
    reporter.pusher.invoker = dataclasses.replace(reporter.pusher.invoker, repository=invoker.repository)
    reporter.set_target(target.ref, app_type=_app_type(source, target.ref, namespace),
                        expected_targets=len(invoker.targets), total_hosts=total_hosts)


def _backup_target(source: ObjectSource, invoker: BackupInvoker, target: BackupTarget, settings: BackupSettings,
                   open_storage: StorageOpener, started: float,
                   reporter: BackupReporter) -> tuple[list[HostResult], BackupOutcome, Storage]:
    """The dump into snapshots (one per host); the storage stays open for the post-backup actions (the caller
    closes it)."""
    if target.ref.kind != "AppBinding":
        raise BadInput(f"{invoker.ref}: target {target.ref.kind} {target.ref.name}: stash-runner backs up "
                       "databases (AppBinding targets) only")
    drv: Driver | None = None
    storage = open_storage(invoker.repository_namespace, invoker.repository)
    try:
        opts = _driver_options(settings.driver, target.params, target.interim_volume_size)
        drv = driver_for(source, target.ref.namespace or invoker.namespace, target.ref.name, opts)
        plan = BackupPlan(driver=drv, backend=storage.backend, password=storage.password,
                          hostname=settings.hostname, tags=settings.tags,
                          wait_timeout=_wait_timeout(settings.wait_timeout, target.params, invoker.ref),
                          compression_level=settings.compression_level, workers=settings.workers,
                          lock_wait=settings.lock_wait, on_hosts=reporter.set_hosts)
        outcome = run_backup(plan)
    except BaseException:
        storage.close()
        raise
    finally:
        if drv is not None:
            drv.close()
    return [_host_result(r, started) for r in outcome.results], outcome, storage


def _post_backup(reporter: BackupReporter, invoker: BackupInvoker, settings: BackupSettings, repo: Repository,
                 storage: Storage) -> None:
    """Retention, integrity check and repository figures, once per session; a failure fails the run."""
    retention = settings.retention or invoker.retention
    repository = storage.repository
    assert repository is not None, "the StorageOpener names the Repository"
    try:
        post = post_backup(repo, retention.policy, prune=retention.prune, dry_run=retention.dry_run,
                           lock_wait=settings.lock_wait, verify=True)
    except (Interrupted, KeyboardInterrupt) as e:
        # Interrupted mid-way: the session must still end (Failed), not stay Running.
        post = PostBackup(errors={"retention": RunnerError(f"interrupted: {e}")})
        reporter.post_backup_done(post, repository)
        raise
    reporter.post_backup_done(post, repository)
    if post.errors:
        first = next(iter(post.errors.values()))
        raise type(first)("the snapshot was saved, but the post-backup actions failed: "
                          + "; ".join(map(str, post.errors.values())))


@dataclass
class RestoreSettings:
    hostname: str = "host-0"
    snapshot: str = ""  # "" : from the session's rules, else latest
    source_hostname: str = ""  # "" : from the session's rules, else this host
    driver: DriverOptions = field(default_factory=DriverOptions)
    wait_timeout: float | None = None
    lock_wait: float = 300.0
    output_dir: str = ""
    appbinding: str = ""  # "" : the session's target


def _restore_reporter(rep: Reporting, session: RestoreSession, namespace: str,
                      total_hosts: int = 1) -> RestoreReporter:
    target = session.target
    mtarget = metrics.Target.from_ref(target.json(), _app_type(rep.source, target, namespace)) \
        if target is not None else None
    pusher = rep.pusher("RestoreSession", session.name, namespace, session.repository)
    return RestoreReporter(rep.writer, session, pusher, mtarget, total_hosts=total_hosts)


def restore_session(rep: Reporting, namespace: str, name: str, settings: RestoreSettings,
                    open_storage: StorageOpener) -> list[HostResult]:
    """Restore this host of a RestoreSession (or each member of a sharded cluster, each from the snapshot its
    rules give) and report it; raises after reporting a failure."""
    session = read_restore_session(rep.source, namespace, name)
    target = session.target
    reporter = _restore_reporter(rep, session, namespace)
    started = time.monotonic()
    reported = False
    appbinding = settings.appbinding or (target.name if target is not None else "")
    try:
        reporter.started()
        if not appbinding:
            raise BadInput(f"{session.ref}: spec.target.ref is missing (or give --appbinding)")
        with deadline(session.timeout, f"{session.ref}: spec.timeOut"):
            storage = open_storage(session.repository_namespace, session.repository)
            drv = None
            try:
                drv = driver_for(rep.source, (target.namespace if target else "") or namespace, appbinding,
                                 _driver_options(settings.driver, session.params))
                # One host: the flags, else this host's rule (no rule for it fails here). Several (a sharded
                # cluster's members): each member's own rule, through ``choose``; this Job's host name need not be one.
                single = len(drv.restore_hosts(settings.hostname)) == 1
                snapshot, source_host = _restore_pick(session, settings, settings.hostname, single=True) \
                    if single else ("latest", settings.hostname)
                results = run_restore(RestorePlan(
                    driver=drv, backend=storage.backend, password=storage.password, snapshot=snapshot,
                    source_hostname=source_host, lock_wait=settings.lock_wait,
                    wait_timeout=_wait_timeout(settings.wait_timeout, session.params, session.ref),
                    choose=lambda host: _restore_pick(session, settings, host, single=False),
                    on_hosts=reporter.set_hosts))
            except HostsFailed as e:
                hosts = [HostResult(r.hostname, SUCCEEDED, r.seconds) for r in e.results] + [
                    HostResult(h, FAILED, time.monotonic() - started, describe(err)) for h, err in e.failures.items()]
                recorded = all([reporter.fail(h) for h in hosts])
                reported = True
                if settings.output_dir:
                    write_output(settings.output_dir, appbinding, hosts, reported=recorded and rep.writer is not None)
                raise
            finally:
                if drv is not None:
                    drv.close()
                storage.close()
        hosts = [HostResult(settings.hostname, SUCCEEDED, time.monotonic() - started)] if len(results) == 1 else [
            HostResult(r.hostname, SUCCEEDED, r.seconds) for r in results]
        for host in hosts:
            reporter.host_done(host)
        reported = True
        if settings.output_dir:
            write_output(settings.output_dir, appbinding, hosts, reported=rep.writer is not None)
        return hosts
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if reported:
            raise
        failed = HostResult(settings.hostname, FAILED, time.monotonic() - started, describe(e))
        recorded = reporter.fail(failed)
        if settings.output_dir and appbinding:
            write_output(settings.output_dir, appbinding, failed, reported=recorded and rep.writer is not None)
        raise


def _restore_pick(session: RestoreSession, settings: RestoreSettings, hostname: str,
                  single: bool) -> tuple[str, str]:
    """The snapshot and source host for ``hostname``: the flags (for this Job's one host), else the session's
    rule for it (Stash's choice: the rule naming the host, else the one naming none), else its latest."""
    try:
        rule = session.rule_for(hostname)
    except BadInput:
        if single:
            raise
        rule = RestoreRule()  # a member no rule names: its own latest snapshot, as Stash's MongoDB addon restores it
    snapshot = (settings.snapshot if single else "") or (rule.snapshots[0] if rule.snapshots else "latest")
    # Stash names snapshots "<repository>-<short id>"; the repository knows them by id
    prefix = session.repository + "-"
    if snapshot.startswith(prefix):
        snapshot = snapshot[len(prefix):]
    source_host = (settings.source_hostname if single else "") or rule.source_host or hostname
    return snapshot, source_host


# -- update-status ---------------------------------------------------------------------------

@dataclass
class UpdateStatusSettings:
    output_dir: str
    target_name: str = ""
    target_kind: str = ""
    lock_wait: float = 300.0
    retention: Retention | None = None


def _step_output(output_dir: str, step: str) -> tuple[list[HostResult], dict | None]:
    """The hosts of the ``step``'s (backup or restore) output.json, and the document; None for it when the step
    already wrote the status (nothing is left to report)."""
    doc = read_output(output_dir)
    hosts = [HostResult.from_json(h) for h in doc["targetStatus"]["stats"]]
    if doc.get(REPORTED):
        log.info("%s: the %s step already wrote the status; nothing to do", output_dir, step)
        return hosts, None
    return hosts, doc


def update_backup_status(rep: Reporting, namespace: str, name: str, settings: UpdateStatusSettings,
                         open_storage: StorageOpener) -> list[HostResult]:
    """Stash's update-status for a BackupSession: output.json's hosts into status, then (once per session)
    the post-backup actions. Returns the hosts; the caller fails the run when one of them failed."""
    hosts, doc = _step_output(settings.output_dir, "backup")
    if doc is None:
        return hosts
    session = read_backup_session(rep.source, namespace, name)
    reporter = BackupReporter(rep.writer, session, rep.pusher(session.invoker_kind, session.invoker_name, namespace))
    invoker = session.invoker(rep.source)
    ref_name = settings.target_name or ((doc["targetStatus"].get("ref") or {}).get("name") or "")
    target = invoker.target(ref_name, settings.target_kind)
    _aim(reporter, rep.source, invoker, target, namespace, total_hosts=max(1, len(hosts)))
    run_post = False
    for host in hosts:
        run_post = reporter.host_done(host) or run_post
    if run_post:
        storage = open_storage(invoker.repository_namespace, invoker.repository)
        try:
            # post_backup reads the index itself
            repo = Repository.open(storage.backend, storage.password)
            _post_backup(reporter, invoker, BackupSettings(lock_wait=settings.lock_wait, retention=settings.retention),
                         repo, storage)
        finally:
            storage.close()
    return hosts


def update_restore_status(rep: Reporting, namespace: str, name: str, output_dir: str) -> list[HostResult]:
    """Stash's update-status for a RestoreSession: output.json's hosts into status."""
    hosts, doc = _step_output(output_dir, "restore")
    if doc is None:
        return hosts
    session = read_restore_session(rep.source, namespace, name)
    reporter = _restore_reporter(rep, session, namespace, total_hosts=max(1, len(hosts)))
    for host in hosts:
        reporter.host_done(host)
    return hosts
