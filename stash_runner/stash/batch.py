"""A BackupBatch or a RestoreBatch run by the runner alone, without Stash's (Enterprise) operator.

What the operator and its Jobs would do between them, in one process:

* the global pre hook; when it fails no member runs, and the global post hook does not run either (Stash);
* for a backup, the repository, created once before any member starts (Stash gives the initialisation to the
  first member and makes the others wait for it; here parallel members simply never race to create it);
* the members, in ``members`` order one after the other (``executionOrder: Sequential``: each starts once the
  previous one has ended, and a failed member does not stop the next, as Stash's ``NextInOrder``) or all at once
  (``Parallel``, the default: one thread each); each member runs as a session's target does: its local pre hook,
  its backup or restore (host = its alias, else host-0; its Task params), its local post hook per its
  executionPolicy;
* for a backup, once, the post-backup actions (retention, integrity check, the repository's figures): only when
  every member succeeded (Stash's last member runs them when its own hosts succeeded, after the others ended);
* the global post hook with the batch's phase, per its executionPolicy.

``spec.timeOut`` is a deadline for each attempt (a session's, in Stash: each retry is a new session with its own
deadline); ``spec.retryConfig`` (BackupBatch) runs a failed batch again after ``delay``, at most ``maxRetry`` more
times, the hooks' ``.RetryLeft`` counting down as in the operator's new BackupSessions.

No BackupSession or RestoreSession exists for such a run, so there is no status to write: hook conditions are
kept in memory (they decide, as in a session, that a hook is not run twice), and the outcome is the log, the
summary table, one ``output.json`` per member and the exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from drivers import Driver, DriverOptions, Dump, Endpoint, HostDump, RestoreHost, SnapshotFiles
from stash_runner.conditions import Condition
from stash_runner.errors import BadInput, HookFailed, HostsFailed, Interrupted, RunnerError, TimedOut, describe
from stash_runner.flows.backup import BackupPlan, open_or_none, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore
from stash_runner.hooks.spec import Hook, Hooks, Summary
from stash_runner.maintenance.post_backup import PostBackup, post_backup
from stash_runner.restic import compression
from stash_runner.restic.archiver import BackupResult
from stash_runner.restic.repository import Repository
from stash_runner.restic.timefmt import format_time, go_duration, now, parse_go_duration
from stash_runner.units import stash_bytes

from .executor import RestoreSettings, StorageOpener, _driver_options, _restore_pick, _wait_timeout, deadline
from .hooking import HookRunner, raise_if_failed, summary
from .objects import ObjectSource
from .output import HostResult, SnapshotStats, write_output
from .resolve import driver_for
from .sessions import (
    SEQUENTIAL,
    BackupInvoker,
    ObjectRef,
    RestoreBatch,
    RestoreSession,
    Retention,
    execution_order,
    read_restore_batch,
)
from .status import FAILED, SUCCEEDED

log = logging.getLogger("stash_runner")

PENDING, RUNNING = "Pending", "Running"
#: how long an interrupted parallel batch waits for its members to wind down (their dumps are stopped at once;
#: a hook in flight may take longer, and is left behind)
STOP_GRACE = 15.0


# -- what the objects say, beyond sessions.py ----------------------------------------------------------------


@dataclass(frozen=True)
class RetryConfig:
    """A BackupBatch's spec.retryConfig: run a failed batch again, ``max_retry`` more times, ``delay`` s apart."""

    max_retry: int = 1
    delay: float = 0.0

    @classmethod
    def from_spec(cls, spec: Mapping, ref: str) -> RetryConfig | None:
        value = spec.get("retryConfig")
        if not value:
            return None
        if not isinstance(value, dict):
            raise BadInput(f"{ref}: spec.retryConfig must be a mapping")
        retries = value.get("maxRetry", 1)  # Stash's default when retryConfig is given
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise BadInput(f"{ref}: spec.retryConfig.maxRetry must be a non-negative number")
        delay = 0.0
        if value.get("delay"):
            try:
                delay = parse_go_duration(str(value["delay"]))
            except ValueError as e:
                raise BadInput(f"{ref}: spec.retryConfig.delay: {e}") from None
        return cls(retries, delay)


class MemoryConditions:
    """The hook conditions of one attempt, where a session's status would hold them: none exists for a batch run
    by the runner alone. As in a session, a hook whose condition is recorded is not run again."""

    def __init__(self) -> None:
        self.conditions: dict[str, Condition] = {}
        self._lock = threading.Lock()

    def hook_conditions(self) -> dict[str, bool | None]:
        with self._lock:
            return {t: c.ok for t, c in self.conditions.items()}

    def record_hook(self, cond: Condition) -> None:
        with self._lock:
            self.conditions[cond.type] = cond


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class MemberResult:
    """One member's outcome in one attempt."""

    index: int
    ref: ObjectRef
    hostname: str  # its alias, else host-0: the restic host it is backed up as or restored as
    phase: str = PENDING
    hosts: list[HostResult] = field(default_factory=list)
    #: restore: host -> (snapshot's short id, bytes restored); a backup's come from ``hosts``
    restored: dict[str, tuple[str, int]] = field(default_factory=dict)
    error: BaseException | None = None
    seconds: float = 0.0
    #: it started (a member the batch's own failure kept from starting has not)
    ran: bool = False
    #: Stash's repository figures, on the member whose output.json carries the post-backup actions' outcome
    repository: dict | None = None

    @property
    def name(self) -> str:
        return self.ref.name

    def fail(self, error: BaseException) -> None:
        self.phase, self.error = FAILED, error

    def host_results(self) -> list[HostResult]:
        """Its hosts for output.json; a member that failed before any host finished is one failed host."""
        if self.hosts:
            return self.hosts
        return [HostResult(self.hostname, FAILED, self.seconds, describe(self.error) if self.error else "not run")]

    def rows(self) -> list[list[str]]:
        """Its lines of the summary table: one per host (a sharded database's members, most often one)."""
        error = describe(self.error) if self.error else ""
        out = []
        for h in self.host_results():
            snap, size = "-", "-"
            if h.snapshots:
                snap, size = h.snapshots[0].name[:8], stash_bytes(h.snapshots[0].total_size)
            elif h.hostname in self.restored:
                snap, size = self.restored[h.hostname][0], stash_bytes(self.restored[h.hostname][1])
            # A host that succeeded in a member that failed later (its post hook) shows the member's verdict.
            phase = h.phase if h.phase == FAILED else self.phase
            out.append([self.name, h.hostname, phase, snap, size, go_duration(round(h.duration_seconds, 1)),
                        h.error or error])
        return out


@dataclass
class BatchOutcome:
    """A batch's last attempt: its members, its phase and the failure that decides the exit code."""

    kind: str
    namespace: str
    name: str
    members: list[MemberResult]
    phase: str = SUCCEEDED
    error: BaseException | None = None
    attempt: int = 1
    attempts: int = 1
    seconds: float = 0.0
    post: PostBackup | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def table(self) -> str:
        """The summary: a line per member (per host), then the batch's verdict."""
        rows = [["MEMBER", "HOST", "PHASE", "SNAPSHOT", "SIZE", "DURATION", "ERROR"]]
        for m in self.members:
            rows.extend(m.rows())
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]
        verdict = f"{self.ref}: {self.phase} in {go_duration(round(self.seconds, 1))}"
        if self.attempts > 1:
            verdict += f" (attempt {self.attempt} of {self.attempts})"
        if self.post is not None:
            verdict += f"; retention removed {self.post.snapshots_removed} snapshot(s)"
            if self.post.integrity is not None:
                verdict += f", integrity {'verified' if self.post.integrity else 'FAILED'}"
        if self.error is not None:
            verdict += f"; {describe(self.error)}"
        return "\n".join([*lines, verdict])

    def raise_if_failed(self) -> None:
        """The exit code: 0 only when everything succeeded, else the first failure's (see ``_first_failure``)."""
        if self.error is None:
            return
        if isinstance(self.error, Interrupted):  # spec.timeOut: TimedOut's own code (124)
            raise self.error
        failed = [m.name for m in self.members if m.phase != SUCCEEDED and m.ran]
        what = f"{len(failed)} of {len(self.members)} members failed ({', '.join(failed)}); first failure: " \
            if failed else ""
        raise BatchFailed(f"{self.ref}: {what}{describe(self.error)}",
                          getattr(self.error, "exit_code", RunnerError.exit_code))


class BatchFailed(RunnerError):
    """A batch that failed, with the exit code of its first failure (a hook's 11, a database's 5, ...)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- stopping a parallel batch ----------------------------------------------------------------------------


class _Stop:
    """Stops the members running in threads when the main thread is interrupted (SIGTERM, spec.timeOut): signals
    reach only the main thread, so each member's dumps are tracked and ended from there (the dump's stream then
    ends, the dump fails and its archiver removes what it wrote, as a SIGTERM does to a session's run), and a
    restore's bytes stop flowing."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._open: list[AbstractContextManager[Dump]] = []
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted(f"stopped: {self.reason}")

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.event.set()
        with self._lock:
            running = list(self._open)
        for cm in running:
            with contextlib.suppress(Exception):  # the member's own exit runs it again, and reports its error
                _end(cm)

    def tracked(self, open_dump: Callable[[], AbstractContextManager[Dump]]) \
            -> Callable[[], AbstractContextManager[Dump]]:
        @contextlib.contextmanager
        def opened() -> Iterator[Dump]:
            self.check()
            cm = open_dump()
            with cm as dump:
                with self._lock:
                    self._open.append(cm)
                try:
                    self.check()  # stopped between the first check and the line above: ``stop`` did not see it
                    yield dump
                finally:
                    with self._lock:
                        self._open.remove(cm)

        return opened

    def checked(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.check()
            yield chunk


def _end(dump: AbstractContextManager[Dump]) -> None:
    """End a running dump from another thread. A dump tool's whole process group is ended, so that its stream
    ends as the tool's children (pg_dumpall's pg_dump) go too, and the member's thread, blocked reading it, sees
    the dump fail; a dump of another kind is left (its own leaving stops it)."""
    proc = getattr(getattr(dump, "tool", None), "proc", None)  # drivers.process.DumpProcess
    if proc is not None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own session (start_new_session): the group is its
        return
    dump.__exit__(None, None, None)


class _StoppableFiles:
    """A snapshot's files for a driver's restore_files, whose reads stop with the batch."""

    def __init__(self, files: SnapshotFiles, stop: _Stop) -> None:
        self._files, self._stop = files, stop
        self.paths = files.paths

    def files(self, under: str = "/") -> list[str]:
        return self._files.files(under)

    def read(self, path: str) -> Iterator[bytes]:
        return self._stop.checked(self._files.read(path))

    def extract(self, path: str, target: str) -> None:
        self._stop.check()
        self._files.extract(path, target)


class _Stoppable(Driver):
    """A member's driver whose dumps and restores ``stop`` can end from the main thread."""

    def __init__(self, inner: Driver, stop: _Stop) -> None:
        self._inner, self._stop = inner, stop
        self.filename = getattr(inner, "filename", "")
        self.target = getattr(inner, "target", "")
        self.max_parallel_hosts = inner.max_parallel_hosts

    @property
    def snapshot_path(self) -> str:
        return self._inner.snapshot_path

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> Driver:
        raise NotImplementedError("a wrapper: made from a driver")

    def wait_ready(self, timeout: float) -> None:
        self._stop.check()
        self._inner.wait_ready(timeout)

    def dump(self) -> AbstractContextManager[Dump]:
        return self._stop.tracked(self._inner.dump)()

    @contextlib.contextmanager
    def _hosts(self, hostname: str) -> Iterator[list[HostDump]]:
        with self._inner.backup_hosts(hostname) as hosts:
            yield [dataclasses.replace(h, open=self._stop.tracked(h.open)) for h in hosts]

    def backup_hosts(self, hostname: str) -> AbstractContextManager[list[HostDump]]:
        return self._hosts(hostname)

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        out = []
        for h in self._inner.restore_hosts(hostname):
            restore, files = h.restore, h.restore_files
            out.append(RestoreHost(
                h.hostname,
                restore=(lambda chunks, r=restore: r(self._stop.checked(chunks))) if restore is not None else None,
                restore_files=(lambda f, r=files: r(_StoppableFiles(f, self._stop))) if files is not None else None))
        return out

    def restore(self, chunks: Iterator[bytes]) -> None:
        self._inner.restore(self._stop.checked(chunks))

    def close(self) -> None:
        self._inner.close()


# -- one attempt, for either kind ------------------------------------------------------------------------------


@dataclass
class BatchContext:
    """Where a batch runs: the objects, the cluster (exec hooks need it; None offline) and the storage."""

    source: ObjectSource
    cluster: object | None
    open_storage: StorageOpener


@dataclass
class _Job:
    """What differs between a BackupBatch and a RestoreBatch, for ``_attempt``."""

    ctx: BatchContext
    kind: str
    namespace: str
    name: str
    hooks: Hooks
    refs: list[ObjectRef]
    aliases: list[str]
    sequential: bool
    timeout: float | None
    output_dir: str
    run_member: Callable[[_Job, _Attempt, MemberResult, _Stop | None], None]
    #: before the members (a backup's repository); after them when all succeeded (its post-backup actions)
    prepare: Callable[[], None] = lambda: None
    finish: Callable[[list[MemberResult]], PostBackup | None] = lambda members: None

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass
class _Attempt:
    """One run of the batch: what Stash would make one session of."""

    session: str  # as Stash names a batch's BackupSession: <invoker>-<unix time>
    created: str
    retry_left: int | None
    started: float = field(default_factory=time.monotonic)

    def summary(self, job: _Job, target: ObjectRef | None, phase: str, error: str = "") -> Summary:
        return summary(session_name=self.session, namespace=job.namespace, invoker_kind=job.kind,
                       invoker_name=job.name, target=target, created=self.created, phase=phase, error=error,
                       retry_left=self.retry_left)


def _check_output_names(refs: list[ObjectRef], output_dir: str, ref: str) -> None:
    seen: set[str] = set()
    for r in refs:
        if output_dir and r.name in seen:
            raise BadInput(f"{ref}: two members are named {r.name!r}: their output.json would share "
                           f"{os.path.join(output_dir, r.name)}")
        seen.add(r.name)


def _attempt(job: _Job, retry_left: int | None) -> BatchOutcome:
    """Global pre hook, the members, the finishing actions, the global post hook; outputs written. Only SIGTERM
    (and Ctrl-C) raises, after the outputs are written; every other failure is in the outcome."""
    attempt = _Attempt(f"{job.name}-{int(time.time())}", format_time(now()), retry_left)
    members = [MemberResult(i, ref, job.aliases[i] or "host-0") for i, ref in enumerate(job.refs)]
    outcome = BatchOutcome(job.kind, job.namespace, job.name, members)
    global_runner = HookRunner(job.ctx.source, job.ctx.cluster, job.namespace, None)
    conditions = MemoryConditions()
    batch_error: BaseException | None = None  # the global pre hook's, the repository's or spec.timeOut's
    pre_failed = False
    try:
        with deadline(job.timeout, f"{job.ref}: spec.timeOut"):
            if job.hooks.pre is not None:
                cond = global_runner.run(job.hooks.pre, attempt.summary(job, None, SUCCEEDED), conditions,
                                         global_=True)
                pre_failed = not cond.ok
                _raise_if_global_failed(cond, job.hooks.pre)
            job.prepare()
            _run_members(job, attempt, members)
            if all(m.phase == SUCCEEDED for m in members):
                outcome.post = job.finish(members)
    except (RunnerError, TimedOut) as e:
        batch_error = e
        _not_run(members, e)
    except (Interrupted, KeyboardInterrupt) as e:
        _not_run(members, e)
        outcome.seconds = time.monotonic() - attempt.started
        _write_outputs(job, members)
        raise
    outcome.error = _first_failure(batch_error, members)
    if job.hooks.post is not None and not pre_failed:
        # Not after a failed global pre hook (Stash); after a failed member or spec.timeOut, per its policy.
        phase = FAILED if outcome.error is not None else SUCCEEDED
        cond = global_runner.run(job.hooks.post, attempt.summary(job, None, phase, _error_text(outcome.error)),
                                 conditions, global_=True)
        if not cond.ok and outcome.error is None:
            outcome.error = HookFailed(f"global {job.hooks.post.type} hook failed: {cond.message}")
    outcome.phase = FAILED if outcome.error is not None else SUCCEEDED
    outcome.seconds = time.monotonic() - attempt.started
    _write_outputs(job, members)
    return outcome


def _raise_if_global_failed(cond: Condition, hook: Hook) -> None:
    if not cond.ok:
        raise HookFailed(f"global {hook.type} hook failed: {cond.message}")


def _error_text(error: BaseException | None) -> str:
    return describe(error) if error is not None else ""


def _not_run(members: list[MemberResult], error: BaseException) -> None:
    """Members the batch's own failure stopped (running) or kept from starting (pending)."""
    for m in members:
        if m.phase == RUNNING:
            m.fail(error)
        elif m.phase == PENDING:
            m.fail(RunnerError(f"not run: {describe(error)}"))


def _first_failure(batch_error: BaseException | None, members: list[MemberResult]) -> BaseException | None:
    """What decides the exit code: the batch's own failure (global pre hook, repository, spec.timeOut), else the
    first failed member in ``members`` order (a post-backup action's failure is the batch's own: they run only
    once every member succeeded)."""
    if batch_error is not None:
        return batch_error
    return next((m.error for m in members if m.phase == FAILED), None)


def _run_members(job: _Job, attempt: _Attempt, members: list[MemberResult]) -> None:
    if job.sequential:
        # In the main thread, one after the other: a signal (SIGTERM, spec.timeOut) stops the one running.
        for m in members:
            _timed(job, attempt, m, None)
        return
    stop = _Stop()
    # Each thread says it has ended through an Event: waiting in Thread.join, a signal handler's exception can leave
    # a thread that still runs marked as stopped (CPython's join, bpo-45274's repair).
    done = [threading.Event() for _ in members]
    for m, ended in zip(members, done, strict=True):
        threading.Thread(target=_member_thread, args=(job, attempt, m, stop, ended), name=f"member-{m.name}",
                         daemon=True).start()
    try:
        for ended in done:
            while not ended.wait(0.5):  # short waits: SIGTERM's and spec.timeOut's handlers run in this thread
                pass
    except BaseException as e:
        stop.stop(describe(e))
        until = time.monotonic() + STOP_GRACE
        for ended in done:
            ended.wait(max(0.0, until - time.monotonic()))
        raise


def _member_thread(job: _Job, attempt: _Attempt, m: MemberResult, stop: _Stop, ended: threading.Event) -> None:
    try:
        _timed(job, attempt, m, stop)
    except BaseException as e:  # noqa: BLE001 - a thread's error is its member's verdict, read by the main thread
        if stop.event.is_set():
            # Stopped from the main thread: whatever the dump's end looked like from here (a closed pipe, a killed
            # tool), the reason is the batch's interruption.
            m.fail(Interrupted(f"stopped: {stop.reason}"))
        else:
            log.exception("member %s: unexpected error", m.name)
            m.fail(e if isinstance(e, RunnerError) else RunnerError(describe(e)))
    finally:
        ended.set()


def _timed(job: _Job, attempt: _Attempt, m: MemberResult, stop: _Stop | None) -> None:
    started = time.monotonic()
    m.phase, m.ran = RUNNING, True
    log.info("%s: member %s (host %s) started", job.ref, m.name, m.hostname)
    try:
        job.run_member(job, attempt, m, stop)
    finally:
        m.seconds = time.monotonic() - started
    log.info("%s: member %s %s in %s%s", job.ref, m.name, m.phase.lower(), go_duration(round(m.seconds, 1)),
             f": {describe(m.error)}" if m.error else "")


def _write_outputs(job: _Job, members: list[MemberResult]) -> None:
    """One output.json per member, in <output-dir>/<member name>/, in Stash's shape. Marked reported: nothing is
    left for an update-status step (there is no session to report to, and the post-backup actions ran here)."""
    if not job.output_dir:
        return
    for m in members:
        write_output(os.path.join(job.output_dir, m.name), m.name, m.host_results(), m.repository, reported=True,
                     ref=m.ref.json())


def _local_hooks(job: _Job, attempt: _Attempt, m: MemberResult, hooks: Hooks, work: Callable[[], None],
                 stop: _Stop | None) -> None:
    """A member as a session's target runs: its pre hook (a failure: no work, no post hook), the work, its post
    hook per its executionPolicy (a failure fails the member; what the work wrote stays). An interruption
    (SIGTERM, spec.timeOut) runs no post hook, as in a session."""
    runner = HookRunner(job.ctx.source, job.ctx.cluster, job.namespace, m.ref)
    conditions = MemoryConditions()
    pre_failed = False
    try:
        if hooks.pre is not None:
            cond = runner.run(hooks.pre, attempt.summary(job, m.ref, SUCCEEDED), conditions)
            pre_failed = not cond.ok
            raise_if_failed(cond, hooks.pre)
        work()
    except RunnerError as e:
        if stop is not None and stop.event.is_set():
            # Its dump was ended from the main thread: an interruption, which runs no post hook.
            raise Interrupted(f"stopped: {stop.reason}") from e
        m.fail(e)
        if not pre_failed and hooks.post is not None:
            # Its own failure changes nothing: the member has failed already.
            runner.run(hooks.post, attempt.summary(job, m.ref, FAILED, describe(e)), conditions)
        return
    m.phase = SUCCEEDED
    if hooks.post is not None:
        cond = runner.run(hooks.post, attempt.summary(job, m.ref, SUCCEEDED), conditions)
        if not cond.ok:
            m.fail(HookFailed(f"{hooks.post.type} hook failed: {cond.message}"))


def _appbinding(ref: ObjectRef, owner: str) -> None:
    if ref.kind != "AppBinding":
        raise BadInput(f"{owner}: member {ref.kind} {ref.name}: stash-runner backs up and restores databases "
                       "(AppBinding targets) only")


# -- BackupBatch ----------------------------------------------------------------------------------------------


@dataclass
class BatchBackupSettings:
    """The backup command's flags that apply to every member."""

    driver: DriverOptions = field(default_factory=DriverOptions)
    wait_timeout: float | None = None  # None: each member's waitTimeout param, else 300 s
    compression_level: int = compression.DEFAULT_LEVEL
    workers: int | None = None
    lock_wait: float = 300.0
    tags: list[str] = field(default_factory=list)
    retention: Retention | None = None  # None: the batch's retentionPolicy
    output_dir: str = ""


def backup_batch(ctx: BatchContext, namespace: str, name: str, settings: BatchBackupSettings,
                 sleep: Callable[[float], None] = time.sleep) -> BatchOutcome:
    """Run a BackupBatch (see the module's doc), again per its retryConfig while it fails; returns the last
    attempt's outcome (``raise_if_failed`` gives the exit code)."""
    obj = ctx.source.get("BackupBatch", namespace, name)
    invoker = BackupInvoker.from_object({**obj, "kind": "BackupBatch"}, namespace)
    spec = obj.get("spec") or {}
    order = execution_order(spec, invoker.ref)
    retry = RetryConfig.from_spec(spec, invoker.ref)
    refs = [t.ref for t in invoker.targets]
    _check_output_names(refs, settings.output_dir, invoker.ref)

    def prepare() -> None:
        # Once, before any member: parallel members then only open it. After the global pre hook, so that a
        # batch stopped by it writes nothing.
        storage = ctx.open_storage(invoker.repository_namespace, invoker.repository)
        try:
            if open_or_none(storage.backend, storage.password) is None:
                Repository.init(storage.backend, storage.password)
                log.info("%s: initialised a new repository at %s", invoker.ref, storage.backend.location)
        finally:
            storage.close()

    def finish(members: list[MemberResult]) -> PostBackup:
        retention = settings.retention or invoker.retention
        storage = ctx.open_storage(invoker.repository_namespace, invoker.repository)
        try:
            repo = Repository.open(storage.backend, storage.password)
            post = post_backup(repo, retention.policy, prune=retention.prune, dry_run=retention.dry_run,
                               lock_wait=settings.lock_wait, verify=True)
        finally:
            storage.close()
        # Stash's last member runs them, and its output.json carries the repository's figures.
        members[-1].repository = post.repository_json()
        if post.errors:
            first = next(iter(post.errors.values()))
            raise type(first)("the snapshots were saved, but the post-backup actions failed: "
                              + "; ".join(map(str, post.errors.values())))
        return post

    def run_member(job: _Job, attempt: _Attempt, m: MemberResult, stop: _Stop | None) -> None:
        target = invoker.targets[m.index]
        started = time.monotonic()

        def work() -> None:
            _appbinding(target.ref, invoker.ref)
            storage = ctx.open_storage(invoker.repository_namespace, invoker.repository)
            drv: Driver | None = None
            try:
                opts = _driver_options(settings.driver, target.params, target.interim_volume_size)
                drv = driver_for(ctx.source, target.ref.namespace or namespace, target.ref.name, opts)
                plan = BackupPlan(driver=_Stoppable(drv, stop) if stop is not None else drv,
                                  backend=storage.backend, password=storage.password, hostname=m.hostname,
                                  tags=settings.tags,
                                  wait_timeout=_wait_timeout(settings.wait_timeout, target.params, invoker.ref),
                                  compression_level=settings.compression_level, workers=settings.workers,
                                  lock_wait=settings.lock_wait)
                try:
                    outcome = run_backup(plan)
                except HostsFailed as e:  # the hosts that finished are reported beside those that failed
                    m.hosts = [_backup_host(r, started) for r in e.results] + [
                        HostResult(h, FAILED, time.monotonic() - started, describe(err))
                        for h, err in e.failures.items()]
                    raise
                m.hosts = [_backup_host(r, started) for r in outcome.results]
            finally:
                if drv is not None:
                    drv.close()
                storage.close()

        _local_hooks(job, attempt, m, target.hooks, work, stop)

    job = _Job(ctx, "BackupBatch", invoker.namespace, invoker.name, invoker.hooks, refs,
               [t.alias for t in invoker.targets], order == SEQUENTIAL, invoker.timeout, settings.output_dir,
               run_member, prepare, finish)
    attempts = 1 + (retry.max_retry if retry else 0)
    for i in range(attempts):
        # Without a retryConfig, Stash's BackupSession has no retryLeft: 0, so OnFinalRetryFailure runs.
        retry_left = attempts - 1 - i
        outcome = _attempt(job, retry_left)
        outcome.attempt, outcome.attempts = i + 1, attempts
        if outcome.error is None or retry_left == 0 or retry is None:
            return outcome
        log.warning("%s: attempt %d of %d failed (%s); again in %s (RetryLeft %d)", job.ref, i + 1, attempts,
                    describe(outcome.error), go_duration(retry.delay), retry_left - 1)
        sleep(retry.delay)
    raise AssertionError("unreachable")


def _backup_host(result: BackupResult, started: float) -> HostResult:
    return HostResult(result.snapshot.hostname, SUCCEEDED, time.monotonic() - started,
                      snapshots=[SnapshotStats.from_result(result)])


# -- RestoreBatch ---------------------------------------------------------------------------------------------


@dataclass
class BatchRestoreSettings:
    driver: DriverOptions = field(default_factory=DriverOptions)
    wait_timeout: float | None = None
    lock_wait: float = 300.0
    no_lock: bool = False  # restic's --no-lock
    output_dir: str = ""


def restore_batch(ctx: BatchContext, namespace: str, name: str, settings: BatchRestoreSettings) -> BatchOutcome:
    """Run a RestoreBatch (see the module's doc); a RestoreBatch has no retryConfig."""
    batch = read_restore_batch(ctx.source, namespace, name)
    refs: list[ObjectRef] = []
    for member in batch.members:
        assert member.session.target is not None, "RestoreBatch.from_object requires each member's target.ref"
        refs.append(member.session.target)
    _check_output_names(refs, settings.output_dir, batch.ref)

    def run_member(job: _Job, attempt: _Attempt, m: MemberResult, stop: _Stop | None) -> None:
        member = batch.members[m.index]
        _local_hooks(job, attempt, m, member.session.hooks,
                     lambda: _restore_member(ctx, batch, member.session, m, settings, stop), stop)

    job = _Job(ctx, "RestoreBatch", batch.namespace, batch.name, batch.hooks, refs,
               [m.alias for m in batch.members], batch.execution_order == SEQUENTIAL, batch.timeout,
               settings.output_dir, run_member)
    return _attempt(job, None)


def _restore_member(ctx: BatchContext, batch: RestoreBatch, session: RestoreSession, m: MemberResult,
                    settings: BatchRestoreSettings, stop: _Stop | None) -> None:
    """A member restores as a RestoreSession does: the snapshot its rules give for its host (its alias), from
    that rule's sourceHost, else its own host's latest; a sharded database's members each by their own rule."""
    started = time.monotonic()
    target = session.target
    assert target is not None
    _appbinding(target, batch.ref)
    where = f"{batch.ref}: spec.members[{m.index}]"
    picks = RestoreSettings()
    storage = ctx.open_storage(batch.repository_namespace, batch.repository)
    drv: Driver | None = None
    try:
        drv = driver_for(ctx.source, target.namespace or batch.namespace, target.name,
                         _driver_options(settings.driver, session.params))
        single = len(drv.restore_hosts(m.hostname)) == 1
        if single:
            try:
                session.rule_for(m.hostname)
            except BadInput:
                raise BadInput(f"{where}.target.rules: no rule for host {m.hostname!r}") from None
        snapshot, source_host = _restore_pick(session, picks, m.hostname, single=True) if single \
            else ("latest", m.hostname)
        results = run_restore(RestorePlan(
            driver=_Stoppable(drv, stop) if stop is not None else drv, backend=storage.backend,
            password=storage.password, snapshot=snapshot, source_hostname=source_host, lock_wait=settings.lock_wait,
            no_lock=settings.no_lock, wait_timeout=_wait_timeout(settings.wait_timeout, session.params, where),
            choose=lambda host: _restore_pick(session, picks, host, single=False)))
    except HostsFailed as e:
        m.hosts = [HostResult(r.hostname, SUCCEEDED, r.seconds) for r in e.results] + [
            HostResult(h, FAILED, time.monotonic() - started, describe(err)) for h, err in e.failures.items()]
        raise
    finally:
        if drv is not None:
            drv.close()
        storage.close()
    if len(results) == 1:
        m.hosts = [HostResult(m.hostname, SUCCEEDED, time.monotonic() - started)]
        m.restored = {m.hostname: (results[0].snapshot.short_id, results[0].bytes_restored)}
    else:
        m.hosts = [HostResult(r.hostname, SUCCEEDED, r.seconds) for r in results]
        m.restored = {r.hostname: (r.snapshot.short_id, r.bytes_restored) for r in results}
