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
from stash_runner.errors import BadInput, HookFailed, HostsFailed, Interrupted, RunnerError, TimedOut, describe
from stash_runner.flows.backup import BackupOutcome, BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore
from stash_runner.hooks.spec import POST_BACKUP, POST_RESTORE, PRE_BACKUP, PRE_RESTORE, Summary
from stash_runner.maintenance.post_backup import PostBackup, post_backup
from stash_runner.restic import compression
from stash_runner.restic.archiver import BackupResult
from stash_runner.restic.repository import Repository
from stash_runner.restic.timefmt import go_duration

from . import metrics
from .hooking import HookRunner, SessionConditions, raise_if_failed, session_phase, summary
from .objects import ObjectSource
from .output import REPORTED, HostResult, SnapshotStats, read_output, write_output
from .reporting import BackupReporter, Pusher, RestoreMemberReporter, RestoreReporter, StatusWriter
from .resolve import Storage, driver_for
from .sessions import (
    BACKUP_INVOKERS,
    BackupInvoker,
    BackupSession,
    BackupTarget,
    ObjectRef,
    RestoreBatch,
    RestoreMember,
    RestoreRule,
    RestoreSession,
    Retention,
    read_backup_session,
    read_restore_batch,
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
        spec = source.get("AppBinding", ref.namespace or namespace, ref.name).get("spec")
    except BadInput:
        return None  # the driver's lookup names the missing AppBinding; metrics then carry no app labels
    return str(spec.get("type") or "") if isinstance(spec, dict) else None  # (a bad spec: the same)


def backup_session(rep: Reporting, namespace: str, name: str, settings: BackupSettings,
                   open_storage: StorageOpener) -> list[HostResult]:
    """Back up this Job's target of a BackupSession (one host, or each member of a sharded cluster) and report
    it; raises after reporting a failure."""
    session = read_backup_session(rep.source, namespace, name)
    reporter = BackupReporter(rep.writer, session, rep.pusher(session.invoker_kind, session.invoker_name, namespace))
    started = time.monotonic()
    reported = False
    hooks: HookRunner | None = None
    target: BackupTarget | None = None
    pre_hook_failed = False
    try:
        invoker = session.invoker(rep.source)
        target = invoker.target(settings.target_name)
        _aim(reporter, rep.source, invoker, target, namespace)
        reporter.started()
        hooks = HookRunner(rep.source, rep.writer, namespace, target.ref)
        with deadline(invoker.timeout, f"{invoker.ref}: spec.timeOut"):
            if target.hooks.pre is not None:
                cond = hooks.run(target.hooks.pre, _backup_summary(session, target, namespace, SUCCEEDED), reporter)
                pre_hook_failed = not cond.ok
                raise_if_failed(cond, target.hooks.pre)  # no dump after a failed pre hook (Stash)
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
                    write_output(settings.output_dir, target.ref.name, hosts, reported=recorded,
                                 ref=target.ref.json())
                raise
            try:
                run_post = False
                for host in hosts:
                    run_post = reporter.host_done(host, initialized=outcome.initialized) or run_post
                reported = True
                if settings.output_dir:
                    # After the status write, and marked only when nothing is left for an update-status step:
                    # the post-backup actions, when they fall to this run, are marked done once they ran.
                    write_output(settings.output_dir, target.ref.name, hosts, reported=not run_post,
                                 ref=target.ref.json())
                if run_post:
                    post = _post_backup(reporter, invoker, settings, outcome.repo, storage)
                    if settings.output_dir:
                        write_output(settings.output_dir, target.ref.name, hosts, post.repository_json(),
                                     reported=True, ref=target.ref.json())
                    _raise_post_backup_errors(post)
            finally:
                storage.close()
            if target.hooks.post is not None:
                cond = hooks.run(target.hooks.post, _backup_summary(session, target, namespace, SUCCEEDED), reporter)
                raise_if_failed(cond, target.hooks.post)  # the snapshot stays; the target is Failed (Stash)
        return hosts
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if not reported:
            failed = HostResult(settings.hostname, FAILED, time.monotonic() - started, describe(e))
            recorded = reporter.fail(failed)
            if settings.output_dir and reporter.target_ref is not None:
                write_output(settings.output_dir, reporter.target_ref["name"], failed, reported=recorded,
                             ref=reporter.target_ref)
        if (isinstance(e, RunnerError) and not isinstance(e, HookFailed) and not pre_hook_failed
                and hooks is not None and target is not None and target.hooks.post is not None):
            # A failed backup still runs the post hook its executionPolicy allows (OnFailure, Always, ...);
            # an interrupted one (SIGTERM, spec.timeOut) does not.
            hooks.run(target.hooks.post, _backup_summary(session, target, namespace, FAILED, describe(e)), reporter)
        raise


def _backup_summary(session: BackupSession, target: BackupTarget, namespace: str, phase: str,
                    error: str = "") -> Summary:
    return summary(session_name=session.name, namespace=namespace, invoker_kind=session.invoker_kind,
                   invoker_name=session.invoker_name, target=target.ref, created=session.created, phase=phase,
                   error=error, retry_left=session.retry_left)


def _host_result(result: BackupResult, started: float) -> HostResult:
    return HostResult(result.snapshot.hostname, SUCCEEDED, time.monotonic() - started,
                      snapshots=[SnapshotStats.from_result(result)])


def _aim(reporter: BackupReporter, source: ObjectSource, invoker: BackupInvoker, target: BackupTarget,
         namespace: str, total_hosts: int = 1) -> None:
    """Point the reporter at the target once the invoker is read: its metrics name the invoker's Repository."""
    reporter.pusher.invoker = dataclasses.replace(reporter.pusher.invoker, repository=invoker.repository)
    reporter.set_target(target.ref, app_type=_app_type(source, target.ref, namespace),
                        expected_targets=len(invoker.targets), total_hosts=total_hosts,
                        order=[t.ref for t in invoker.targets])


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
                          lock_wait=settings.lock_wait, on_hosts=reporter.set_hosts,
                          await_repository=reporter.await_repository, on_initialised=reporter.repository_initialised)
        outcome = run_backup(plan)
    except BaseException:
        storage.close()
        raise
    finally:
        if drv is not None:
            drv.close()
    return [_host_result(r, started) for r in outcome.results], outcome, storage


def _post_backup(reporter: BackupReporter, invoker: BackupInvoker, settings: BackupSettings, repo: Repository,
                 storage: Storage) -> PostBackup:
    """Retention, integrity check and repository figures, once per session, and their verdicts reported; the
    caller fails the run through ``_raise_post_backup_errors`` once it has recorded that they ran."""
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
    return post


def _raise_post_backup_errors(post: PostBackup) -> None:
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
    no_lock: bool = False  # restic's --no-lock
    output_dir: str = ""
    appbinding: str = ""  # "" : the session's target; a RestoreBatch's: which member (Stash's TARGET_NAME)
    target_kind: str = ""  # a RestoreBatch member's target kind, when the name alone is ambiguous


def _restore_reporter(rep: Reporting, session: RestoreSession, namespace: str,
                      total_hosts: int = 1) -> RestoreReporter:
    target = session.target
    mtarget = metrics.Target.from_ref(target.json(), _app_type(rep.source, target, namespace)) \
        if target is not None else None
    pusher = rep.pusher("RestoreSession", session.name, namespace, session.repository)
    return RestoreReporter(rep.writer, session, pusher, mtarget, total_hosts=total_hosts)


def _member_reporter(rep: Reporting, batch: RestoreBatch, member: RestoreMember, namespace: str,
                     total_hosts: int = 1) -> RestoreMemberReporter:
    """A member reports into the batch's status.members; its metrics go out as the batch's (invoker RestoreBatch)."""
    target = member.session.target
    assert target is not None, "RestoreBatch.from_object requires each member's target.ref"
    mtarget = metrics.Target.from_ref(target.json(), _app_type(rep.source, target, namespace))
    pusher = rep.pusher("RestoreBatch", batch.name, namespace, batch.repository)
    return RestoreMemberReporter(rep.writer, batch, target, pusher, mtarget, total_hosts=total_hosts)


#: what restores one target and reports it: a RestoreSession's reporter, or a RestoreBatch member's
AnyRestoreReporter = RestoreReporter | RestoreMemberReporter


def _read_restore_batch(source: ObjectSource, namespace: str, name: str, named_by: str = "") -> RestoreBatch:
    """The RestoreBatch, with the flags that named it in front of a read error (a miswired Function says so)."""
    try:
        return read_restore_batch(source, namespace, name)
    except BadInput as e:
        if not named_by:
            raise
        raise BadInput(f"{named_by}: {e}") from None


def restore_session(rep: Reporting, namespace: str, name: str, settings: RestoreSettings,
                    open_storage: StorageOpener) -> list[HostResult]:
    """Restore this host of a RestoreSession (or each member of a sharded cluster, each from the snapshot its
    rules give) and report it; raises after reporting a failure."""
    session = read_restore_session(rep.source, namespace, name)
    return _restore_target(rep, namespace, session, _restore_reporter(rep, session, namespace), settings,
                           open_storage)


def restore_batch_member(rep: Reporting, namespace: str, name: str, settings: RestoreSettings,
                         open_storage: StorageOpener, named_by: str = "") -> list[HostResult]:
    """A RestoreBatch member's Job (the operator's, one per member): the member named by ``settings.appbinding``
    (and ``target_kind``) restored as a RestoreSession is — its rules, task params, local hooks — and reported
    into the batch's status.members entry, Events and metrics; raises after reporting a failure."""
    batch = _read_restore_batch(rep.source, namespace, name, named_by)
    member = batch.member(settings.appbinding, settings.target_kind)
    # The host is --hostname as given; none given: the member's alias (Stash's host for it), else host-0.
    settings = dataclasses.replace(settings, hostname=settings.hostname or member.alias or "host-0",
                                   appbinding=settings.appbinding or (member.session.target.name
                                                                      if member.session.target else ""))
    return _restore_target(rep, namespace, member.session, _member_reporter(rep, batch, member, namespace),
                           settings, open_storage)


def _restore_target(rep: Reporting, namespace: str, session: RestoreSession, reporter: AnyRestoreReporter,
                    settings: RestoreSettings, open_storage: StorageOpener) -> list[HostResult]:
    """The restore of one target (a RestoreSession's, or a RestoreBatch member's as a RestoreSession-like
    ``session``) between its pre and post hooks, reported through ``reporter``; raises after reporting a failure."""
    target = session.target
    hooks = HookRunner(rep.source, rep.writer, namespace, target)
    pre_hook_failed = False
    started = time.monotonic()
    reported = False
    appbinding = settings.appbinding or (target.name if target is not None else "")
    try:
        reporter.started()
        if not appbinding:
            raise BadInput(f"{session.ref}: {session.target_path}.ref is missing (or give --appbinding)")
        with deadline(session.timeout, f"{session.ref}: spec.timeOut"):
            if session.hooks.pre is not None:
                cond = hooks.run(session.hooks.pre, _restore_summary(session, namespace, SUCCEEDED), reporter)
                pre_hook_failed = not cond.ok
                raise_if_failed(cond, session.hooks.pre)  # nothing is restored after a failed pre hook
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
                    source_hostname=source_host, lock_wait=settings.lock_wait, no_lock=settings.no_lock,
                    wait_timeout=_wait_timeout(settings.wait_timeout, session.params, session.ref),
                    choose=lambda host: _restore_pick(session, settings, host, single=False),
                    on_hosts=reporter.set_hosts))
            except HostsFailed as e:
                hosts = [HostResult(r.hostname, SUCCEEDED, r.seconds) for r in e.results] + [
                    HostResult(h, FAILED, time.monotonic() - started, describe(err)) for h, err in e.failures.items()]
                recorded = all([reporter.fail(h) for h in hosts])
                reported = True
                if settings.output_dir:
                    write_output(settings.output_dir, appbinding, hosts, reported=recorded)
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
            write_output(settings.output_dir, appbinding, hosts, reported=True)
        if session.hooks.post is not None:
            cond = hooks.run(session.hooks.post, _restore_summary(session, namespace, SUCCEEDED), reporter)
            raise_if_failed(cond, session.hooks.post)
        return hosts
    except (RunnerError, Interrupted, KeyboardInterrupt) as e:
        if not reported:
            failed = HostResult(settings.hostname, FAILED, time.monotonic() - started, describe(e))
            recorded = reporter.fail(failed)
            if settings.output_dir and appbinding:
                write_output(settings.output_dir, appbinding, failed, reported=recorded)
        if isinstance(e, RunnerError) and not isinstance(e, HookFailed) and not pre_hook_failed \
                and session.hooks.post is not None:
            hooks.run(session.hooks.post, _restore_summary(session, namespace, FAILED, describe(e)), reporter)
        raise


def _restore_summary(session: RestoreSession, namespace: str, phase: str, error: str = "") -> Summary:
    # A member's session is named as its batch: .Name and .Invoker are the RestoreBatch's.
    return summary(session_name=session.name, namespace=namespace, invoker_kind=session.invoker_kind,
                   invoker_name=session.name, target=session.target, created=session.created, phase=phase,
                   error=error)


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
    source_host = (settings.source_hostname if single else "") or rule.source_host or hostname
    return snapshot, source_host


# -- update-status ---------------------------------------------------------------------------

#: the restore invokers an update-status or run-hook step can report to (a RestoreBatch: one member's entry, or
#: its global hooks)
RESTORE_INVOKERS = ("RestoreSession", "RestoreBatch")


@dataclass(frozen=True)
class SessionToUpdate:
    kind: str  # BackupSession | RestoreSession | RestoreBatch
    name: str
    named_by: str = ""  # the flags that named it, for an error reading it


def session_to_update(backupsession: str, restoresession: str = "", invoker_kind: str = "",
                      invoker_name: str = "", command: str = "update-status") -> SessionToUpdate:
    """The session an update-status step reports to, chosen as Stash's does: the BackupSession when
    --backupsession is given, else the restore invoker (the operator passes ``--backupsession=`` and names the
    RestoreSession or RestoreBatch by --invoker-kind/--invoker-name; --restoresession is our own and older Stash's
    spelling of a RestoreSession). Flags that contradict each other are a BadInput naming them."""
    known = (*BACKUP_INVOKERS, *RESTORE_INVOKERS)
    if invoker_kind and invoker_kind not in known:
        raise BadInput(f"--invoker-kind={invoker_kind}: not an invoker kind (one of: {', '.join(known)})")
    if backupsession:
        if restoresession:
            raise BadInput(f"--backupsession={backupsession} together with --restoresession={restoresession}: "
                           "give one")
        if invoker_kind in RESTORE_INVOKERS:
            raise BadInput(f"--backupsession={backupsession} together with --invoker-kind={invoker_kind}"
                           f"{' --invoker-name=' + invoker_name if invoker_name else ''}: a BackupSession's invoker "
                           f"is a {' or '.join(BACKUP_INVOKERS)}")
        return SessionToUpdate("BackupSession", backupsession)
    if invoker_kind in BACKUP_INVOKERS:
        raise BadInput(f"--invoker-kind={invoker_kind} needs --backupsession (an empty one means a restore)")
    named = invoker_name if invoker_kind in RESTORE_INVOKERS else ""
    if restoresession and named and restoresession != named:
        raise BadInput(f"--restoresession={restoresession} and --invoker-kind={invoker_kind} "
                       f"--invoker-name={named} name different {invoker_kind}s")
    if invoker_kind == "RestoreBatch":
        if not named:
            raise BadInput("--invoker-kind=RestoreBatch: --invoker-name is missing (the RestoreBatch's name)")
        return SessionToUpdate("RestoreBatch", named, f"--invoker-kind=RestoreBatch --invoker-name={named}")
    if not (restoresession or named):
        raise BadInput(f"{command}: no session: give --backupsession, or --invoker-kind=RestoreSession "
                       "--invoker-name (or --restoresession)")
    return SessionToUpdate("RestoreSession", restoresession or named)


@dataclass
class UpdateStatusSettings:
    output_dir: str
    #: Stash's --target-*: which target of the invoker (default: output.json's), checked against the session
    target_name: str = ""
    target_kind: str = ""
    target_namespace: str = ""
    #: Stash's --invoker-kind/--invoker-name: checked against the BackupSession's spec.invoker
    invoker_kind: str = ""
    invoker_name: str = ""
    #: older Stash's --repository/--repo-name (--repo-namespace): must be the invoker's Repository
    repository: str = ""
    repository_namespace: str = ""
    lock_wait: float = 300.0
    retention: Retention | None = None


def _check_repository(settings: UpdateStatusSettings, namespace: str, name: str, repo_namespace: str,
                      owner: str) -> None:
    """The Repository is the invoker's; a flag naming another is a miswired Function, not a choice."""
    if not settings.repository:
        return
    flag_ns = settings.repository_namespace or namespace
    if (flag_ns, settings.repository) != (repo_namespace, name):
        raise BadInput(f"--repository/--repo-name {flag_ns}/{settings.repository}: {owner} uses Repository "
                       f"{repo_namespace}/{name}")


def _check_target(settings: UpdateStatusSettings, ref: ObjectRef, namespace: str, owner: str) -> None:
    ns = ref.namespace or namespace
    for flag, want, have in (("--target-kind", settings.target_kind, ref.kind),
                             ("--target-name", settings.target_name, ref.name),
                             ("--target-namespace", settings.target_namespace, ns)):
        if want and want != have:
            raise BadInput(f"{flag}={want}: the target of {owner} is {ref.kind} {ns}/{ref.name}")


def _backup_target_for(invoker: BackupInvoker, settings: UpdateStatusSettings, doc: dict) -> BackupTarget:
    """The invoker's target this output belongs to: --target-name/--target-kind, else output.json's ref."""
    name = settings.target_name or ((doc["targetStatus"].get("ref") or {}).get("name") or "")
    try:
        target = invoker.target(name, settings.target_kind)
    except BadInput as e:
        flag = f"--target-name={settings.target_name}" if settings.target_name else \
            f"--target-kind={settings.target_kind}" if settings.target_kind else ""
        if flag:
            raise BadInput(f"{flag}: {e}") from None
        raise
    _check_target(settings, target.ref, invoker.namespace, invoker.ref)
    return target


def _step_output(output_dir: str) -> tuple[list[HostResult], dict, bool]:
    """The hosts of the ``step``'s (backup or restore) output.json, the document, and whether the step already
    did everything (the marker: nothing is left to report or run)."""
    doc = read_output(output_dir)
    return [HostResult.from_json(h) for h in doc["targetStatus"]["stats"]], doc, bool(doc.get(REPORTED))


def _nothing_to_do(output_dir: str, step: str) -> None:
    log.info("%s: the %s step already reported and ran its post-backup actions; nothing to do", output_dir, step)


def update_backup_status(rep: Reporting, namespace: str, name: str, settings: UpdateStatusSettings,
                         open_storage: StorageOpener) -> list[HostResult]:
    """Stash's update-status for a BackupSession: output.json's hosts into status, then (once per session)
    the post-backup actions. Returns the hosts; the caller fails the run when one of them failed.

    The flags are checked against the session first, also when the step already reported: a Function
    that names another invoker, target or Repository is miswired."""
    hosts, doc, done = _step_output(settings.output_dir)
    session = read_backup_session(rep.source, namespace, name)
    for flag, want, have in (("--invoker-kind", settings.invoker_kind, session.invoker_kind),
                             ("--invoker-name", settings.invoker_name, session.invoker_name)):
        if want and want != have:
            raise BadInput(f"{flag}={want}: {session.ref} is invoked by {session.invoker_kind} "
                           f"{session.invoker_name}")
    invoker = session.invoker(rep.source)
    _check_repository(settings, namespace, invoker.repository, invoker.repository_namespace, invoker.ref)
    target = _backup_target_for(invoker, settings, doc)
    if done:
        _nothing_to_do(settings.output_dir, "backup")
        return hosts
    reporter = BackupReporter(rep.writer, session, rep.pusher(session.invoker_kind, session.invoker_name, namespace))
    _aim(reporter, rep.source, invoker, target, namespace, total_hosts=max(1, len(hosts)))
    run_post = False
    for host in hosts:
        run_post = reporter.host_done(host) or run_post
    if run_post:
        storage = open_storage(invoker.repository_namespace, invoker.repository)
        try:
            # post_backup reads the index itself
            repo = Repository.open(storage.backend, storage.password)
            post = _post_backup(reporter, invoker, BackupSettings(lock_wait=settings.lock_wait,
                                                                  retention=settings.retention), repo, storage)
        finally:
            storage.close()
        _raise_post_backup_errors(post)
    return hosts


def _restore_report_target(rep: Reporting, namespace: str, session_ref: SessionToUpdate, target_name: str,
                           target_kind: str) -> tuple[RestoreSession, Callable[[int], AnyRestoreReporter]]:
    """The restore target a step reports: a RestoreSession's, or the RestoreBatch member named by ``target_name``
    (``target_kind``); with a factory of its reporter (given the host count)."""
    if session_ref.kind == "RestoreBatch":
        batch = _read_restore_batch(rep.source, namespace, session_ref.name, session_ref.named_by)
        try:
            member = batch.member(target_name, target_kind)
        except BadInput as e:
            raise BadInput(f"--target-name={target_name}: {e}" if target_name else str(e)) from None
        return member.session, lambda total: _member_reporter(rep, batch, member, namespace, total)
    session = read_restore_session(rep.source, namespace, session_ref.name)
    return session, lambda total: _restore_reporter(rep, session, namespace, total)


def update_restore_status(rep: Reporting, namespace: str, name: str, settings: UpdateStatusSettings,
                          session_ref: SessionToUpdate | None = None) -> list[HostResult]:
    """Stash's update-status for a RestoreSession, or for a RestoreBatch's member (``session_ref``; the member is
    --target-name, else output.json's ref): output.json's hosts into status (flags checked as for a backup)."""
    hosts, doc, done = _step_output(settings.output_dir)
    session_ref = session_ref or SessionToUpdate("RestoreSession", name)
    member_name = settings.target_name or ((doc["targetStatus"].get("ref") or {}).get("name") or "") \
        if session_ref.kind == "RestoreBatch" else ""
    session, make_reporter = _restore_report_target(rep, namespace, session_ref, member_name, settings.target_kind)
    _check_repository(settings, namespace, session.repository, session.repository_namespace, session.ref)
    if session.target is not None:
        _check_target(settings, session.target, session.namespace, session.ref)
    if done:
        _nothing_to_do(settings.output_dir, "restore")
        return hosts
    reporter = make_reporter(max(1, len(hosts)))
    for host in hosts:
        reporter.host_done(host)
    return hosts


# -- run-hook ----------------------------------------------------------------------------------

@dataclass
class RunHookSettings:
    hook_type: str
    target_kind: str = ""
    target_name: str = ""


_BACKUP_HOOKS, _RESTORE_HOOKS = (PRE_BACKUP, POST_BACKUP), (PRE_RESTORE, POST_RESTORE)


def run_hook_step(rep: Reporting, namespace: str, session_ref: SessionToUpdate, settings: RunHookSettings) -> bool:
    """Stash's run-hook: one hook of a session — the target's own (a RestoreBatch member's), or a BackupBatch's or
    RestoreBatch's global one when no target is named — run and recorded as the executor records it. Returns whether
    it succeeded; a failed pre hook raises (the Job must stop before the backup or restore), a failed post hook is
    only reported (Stash's run-hook exits 0)."""
    hook_type = settings.hook_type
    if session_ref.kind == "BackupSession":
        if hook_type not in _BACKUP_HOOKS:
            raise BadInput(f"--hook-type={hook_type}: a BackupSession's hooks are {' or '.join(_BACKUP_HOOKS)}")
        session = read_backup_session(rep.source, namespace, session_ref.name)
        invoker = session.invoker(rep.source)
        if settings.target_name:
            target = invoker.target(settings.target_name, settings.target_kind)
            reporter = BackupReporter(rep.writer, session, rep.pusher(session.invoker_kind, session.invoker_name,
                                                                      namespace))
            _aim(reporter, rep.source, invoker, target, namespace)
            hooks, ref, recorder, global_ = target.hooks, target.ref, reporter, False
        elif invoker.kind == "BackupBatch":
            hooks, ref, global_ = invoker.hooks, None, True
            recorder = SessionConditions(rep.writer, "BackupSession", namespace, session.name)
        else:
            raise BadInput(f"run-hook: --target-name is missing ({invoker.ref} has one target; global hooks are a "
                           "BackupBatch's)")
        created, invoker_kind, invoker_name, retry = session.created, session.invoker_kind, session.invoker_name, \
            session.retry_left
        obj_kind = "BackupSession"
    else:
        if hook_type not in _RESTORE_HOOKS:
            raise BadInput(f"--hook-type={hook_type}: a {session_ref.kind}'s hooks are {' or '.join(_RESTORE_HOOKS)}")
        obj_kind = invoker_kind = session_ref.kind
        if session_ref.kind == "RestoreBatch" and not settings.target_name:
            # The batch's global hook (Stash's operator runs it), recorded on the RestoreBatch's own conditions.
            batch = _read_restore_batch(rep.source, namespace, session_ref.name, session_ref.named_by)
            hooks, ref, global_ = batch.hooks, None, True
            recorder = SessionConditions(rep.writer, "RestoreBatch", namespace, batch.name)
            created, invoker_name, retry = batch.created, batch.name, None
        else:
            # A RestoreSession's hook, or a RestoreBatch member's local one (on its status.members entry).
            rsession, make_reporter = _restore_report_target(rep, namespace, session_ref, settings.target_name,
                                                             settings.target_kind)
            hooks, ref, global_ = rsession.hooks, rsession.target, False
            recorder = make_reporter(1)
            created, invoker_name, retry = rsession.created, rsession.name, None
    hook = hooks.pre if hook_type in (PRE_BACKUP, PRE_RESTORE) else hooks.post
    if hook is None:
        log.info("run-hook: %s %s/%s has no %s hook%s", obj_kind, namespace, session_ref.name, hook_type,
                 f" for {ref.kind} {ref.name}" if ref else "")
        return True
    phase, error = SUCCEEDED, ""
    if hook is hooks.post and rep.writer is not None:
        current = rep.writer.get(obj_kind, namespace, session_ref.name).get("status") or {}
        if obj_kind == "RestoreBatch":
            # A batch's members are its targets: the member's entry (every member's, for a global hook) decides.
            current = {"targets": current.get("members") or [], "phase": current.get("phase")}
        phase, error = session_phase(current, ref)
    runner = HookRunner(rep.source, rep.writer, namespace, ref)
    cond = runner.run(hook, summary(session_name=session_ref.name, namespace=namespace, invoker_kind=invoker_kind,
                                    invoker_name=invoker_name, target=ref, created=created, phase=phase,
                                    error=error, retry_left=retry), recorder, global_=global_)
    if not cond.ok and hook is hooks.pre:
        raise_if_failed(cond, hook)
    if not cond.ok:
        log.warning("%s hook failed (recorded on %s %s/%s): %s", hook_type, obj_kind, namespace, session_ref.name,
                    cond.message)
    return cond.ok
