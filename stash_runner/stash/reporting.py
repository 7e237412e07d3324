"""Reporting a run back to the operator as Stash's executor does: session status, Events, metrics.

A ``BackupReporter`` records one host of one target of a BackupSession; a ``RestoreReporter`` one host of
a RestoreSession; a ``RestoreMemberReporter`` one host of a RestoreBatch's member (its status.members entry).
Status writes go through a ``StatusWriter`` (``kube.Cluster``): read, change, write
with the resourceVersion read, again on a conflict, so that hosts and targets finishing at the same
moment never drop each other's entries. Without a writer (objects from ``--objects`` files) only the
metrics are pushed.

Events are Stash's status updater's: one per host on the session, with its reasons, messages and source
component "Status Updater"; none for the session as a whole (Stash's operator writes those).

The post-backup actions (retention, integrity check, repository metrics) run once per session: the
host whose write makes the last target Succeeded runs them. Optimistic concurrency guarantees that
exactly one write makes that transition.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry

from stash_runner.errors import ClusterError, RunnerError, one_line
from stash_runner.maintenance.post_backup import PostBackup
from stash_runner.restic.timefmt import format_time, now, parse_time

from . import metrics, status
from .objects import Repository
from .output import HostResult
from .sessions import BackupSession, ObjectRef, RestoreBatch, RestoreSession
from .status import Condition

log = logging.getLogger("stash_runner")

#: the Events' source.component (and reportingComponent): Stash's eventer.EventSourceStatusUpdater, the component
#: its images' update-status step writes the per-host Events as
COMPONENT = "Status Updater"

# Stash's eventer reasons for the per-host Events (stash pkg/eventer/recorder.go)
REASON_HOST_BACKUP_SUCCEEDED = "Host Backup Succeeded"
REASON_HOST_BACKUP_FAILED = "Host Backup Failed"
REASON_HOST_RESTORE_SUCCEEDED = "Host Restore Succeeded"
REASON_HOST_RESTORE_FAILED = "Host Restore Failed"
#: an Event's message at most (events.k8s.io's note limit; the Event is for people to read)
MAX_EVENT_MESSAGE = 1024


#: how long a BackupBatch member waits for the first member to initialise the repository (Stash: 30 min), and
#: how often it looks
INITIALISE_WAIT = 30 * 60.0
INITIALISE_POLL = 2.0


class StatusWriter(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict: ...

    def update_status(self, kind: str, namespace: str, name: str,
                      change: Callable[[dict], dict | None]) -> dict: ...

    def event(self, obj: dict, *, reason: str, message: str, type: str = "Normal",
              component: str = COMPONENT) -> bool: ...


@dataclass
class Pusher:
    """Where metrics go: the Pushgateway (None: metrics off) and the job they are pushed under."""

    url: str | None
    invoker: metrics.Invoker
    job: str = ""

    def push(self, registry: CollectorRegistry, grouping: Mapping[str, str] | None = None) -> bool:
        if not self.url:
            return False
        return metrics.push(self.url, self.job or metrics.job_name(self.invoker), registry, grouping=grouping)


def _now() -> str:
    return format_time(now())


def _seconds_since(created: str) -> float:
    try:
        return max(0.0, (now() - parse_time(created)).total_seconds())
    except (ValueError, TypeError):
        return 0.0


@dataclass
class _Write:
    """The status before and after the write that landed (the change may run several times)."""

    old: dict = field(default_factory=dict)
    new: dict = field(default_factory=dict)

    @property
    def ended(self) -> str | None:
        """The final phase when this write is the one that ended the session, else None."""
        phase = self.new.get("phase")
        return phase if phase in status.TERMINAL and self.old.get("phase") != phase else None


class _Reporter:
    kind = ""

    def __init__(self, writer: StatusWriter | None, obj: dict, namespace: str, name: str, pusher: Pusher) -> None:
        self.writer, self.obj, self.namespace, self.name, self.pusher = writer, obj, namespace, name, pusher
        self._offline: dict[tuple[str, str, str], dict] = {}

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def _write(self, fn: Callable[[dict], dict], kind: str = "", name: str = "", namespace: str = "") -> _Write:
        seen = _Write()
        if self.writer is None:
            # Offline: the status lives only here, so that phases still add up (and session metrics go out).
            key = (kind or self.kind, namespace or self.namespace, name or self.name)
            seen.old = self._offline.get(key, {})
            seen.new = self._offline[key] = fn(seen.old)
            return seen

        def change(obj: dict) -> dict | None:
            seen.old = obj.get("status") or {}
            seen.new = fn(seen.old)
            return None if seen.new == seen.old else seen.new

        self.writer.update_status(kind or self.kind, namespace or self.namespace, name or self.name, change)
        return seen

    def host_done(self, host: HostResult) -> object:
        raise NotImplementedError

    def fail(self, host: HostResult) -> bool:
        """Report a failed host after the session is known; never raises (the original error is what counts).
        Returns whether the status was written."""
        try:
            self.host_done(host)
        except (RunnerError, OSError) as e:
            log.warning("%s: the failure could not be recorded: %s", self.ref, e)
            return False
        return True

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        if self.writer is not None:
            self.writer.event(self.obj, reason=reason, message=event_message(message),
                              type="Warning" if warning else "Normal", component=COMPONENT)

    def _host_event(self, host: HostResult, target: Mapping[str, str] | None = None) -> None:
        """The Event Stash's status updater writes for one host: reason, type and message as it words them."""
        reason, message, warning = host_event(self.kind, host, target)
        self._event(reason, message, warning)

    def _session_ended(self, phase: str) -> None:
        """Only a log line: Stash's backup/restore images write no session Event (its operator writes
        "BackupSession Succeeded" and the like itself, so one from us would be a duplicate)."""
        log.info("%s %s", self.ref, phase.lower())


class BackupReporter(_Reporter):
    kind = "BackupSession"

    def __init__(self, writer: StatusWriter | None, session: BackupSession, pusher: Pusher) -> None:
        super().__init__(writer, session.obj, session.namespace, session.name, pusher)
        self.session = session
        self.target_ref: dict | None = None
        self.metrics_target: metrics.Target | None = None
        self.total_hosts = 1
        self.expected_targets = 1
        self.order: list[dict] = []

    def set_target(self, ref: ObjectRef, *, app_type: str | None = None, total_hosts: int = 1,
                   expected_targets: int = 1, order: Sequence[ObjectRef] = ()) -> None:
        """This run's target; ``order``: the invoker's targets, in whose order the session lists its entries."""
        self.target_ref = ref.json()
        self.metrics_target = metrics.Target.from_ref(self.target_ref, app_type)
        self.total_hosts, self.expected_targets = total_hosts, expected_targets
        self.order = [r.json() for r in order]

    def _write(self, fn: Callable[[dict], dict], kind: str = "", name: str = "", namespace: str = "") -> _Write:
        if self.order and not kind:  # the session's own status: its targets in the invoker's members order
            inner = fn
            return super()._write(lambda st: status.targets_in_order(inner(st), self.order), kind, name, namespace)
        return super()._write(fn, kind, name, namespace)

    def set_hosts(self, hostnames: list[str]) -> None:
        """The target's totalHosts, once the driver has named its hosts (several for a sharded cluster)."""
        if len(hostnames) == self.total_hosts or self.target_ref is None:
            return
        self.total_hosts = len(hostnames)
        ref, total = self.target_ref, self.total_hosts
        self._write(lambda st: status.set_target_hosts(st, ref, total))

    def started(self) -> None:
        """The target entry (with totalHosts) and the session Running, before the backup starts."""
        assert self.target_ref is not None
        ref, when = self.target_ref, _now()
        self._write(lambda st: status.start_backup_target(st, ref, self.total_hosts,
                                                          expected_targets=self.expected_targets,
                                                          created=self.session.created, now=when))

    def hook_conditions(self) -> dict[str, bool | None]:
        """The target's hook conditions as the session has them now (a hook already recorded is not run again)."""
        if self.writer is None or self.target_ref is None:
            return {}
        st = self.writer.get(self.kind, self.namespace, self.name).get("status") or {}
        entry = status.target_entry(st, self.target_ref) or {}
        return status.condition_states(entry.get("conditions"))

    def record_hook(self, cond: Condition) -> None:
        """A hook's condition on the target's entry; a failed one fails the target (and the session)."""
        assert self.target_ref is not None
        ref, when = self.target_ref, _now()
        w = self._write(lambda st: status.record_target_condition(
            st, ref, cond, total_hosts=self.total_hosts, expected_targets=self.expected_targets,
            created=self.session.created, now=when))
        self._maybe_finished(w)

    def repository_initialised(self) -> None:
        """Say at once that the repository exists: members of a BackupBatch wait for this condition."""
        when = _now()
        self._write(lambda st: {**st, "conditions": status.set_conditions(
            st.get("conditions"), [_initialised(True)], when)})

    def await_repository(self, timeout: float = INITIALISE_WAIT) -> bool:
        """There is no repository yet. True once it exists because the target the operator gave the
        InitializeBackendRepository pre-backup action created it (as Stash's members wait for the first);
        False when this target is to create it: it is that target, no target has the action, or offline."""
        if self.writer is None or self.target_ref is None:
            return False
        owner = status.initialising_target(self.writer.get(self.kind, self.namespace, self.name).get("status") or {})
        if owner is None or status.same_ref(owner, self.target_ref):
            return False
        who = f"{owner.get('kind')} {owner.get('name')}"
        log.info("%s: waiting up to %.0f s for %s to initialise the repository (condition %s)", self.ref, timeout,
                 who, status.BACKEND_REPOSITORY_INITIALIZED)
        deadline = time.monotonic() + timeout
        while True:
            st = self.writer.get(self.kind, self.namespace, self.name).get("status") or {}
            done = status.condition(st, status.BACKEND_REPOSITORY_INITIALIZED)
            if done:
                return True
            entry = status.target_entry(st, owner) or {}
            if done is False or entry.get("phase") == status.FAILED or st.get("phase") == status.FAILED:
                raise RunnerError(f"{self.ref}: {who} failed before initialising the repository")
            if time.monotonic() >= deadline:
                raise RunnerError(f"{self.ref}: timed out after {timeout:.0f} s waiting for {who} to initialise "
                                  "the repository")
            time.sleep(min(INITIALISE_POLL, max(deadline - time.monotonic(), 0.1)))

    def host_done(self, host: HostResult, *, initialized: bool | None = None) -> bool:
        """Record a host's result; True when this host is to run the session's post-backup actions."""
        ref = self.target_ref
        when = _now()

        def conds(st: dict) -> list[Condition]:
            # Set once per session, by whoever comes first (the member that created the repository says so
            # right away; see repository_initialised).
            if initialized is None or status.condition(st, status.BACKEND_REPOSITORY_INITIALIZED) is not None:
                return []
            return [_initialised(initialized)]

        if ref is None:  # the target never became known: the session fails as a whole
            w = self._write(lambda st: status.fail_session(st, "BackupFailed", one_line(host.error),
                                                           created=self.session.created, now=when))
        else:
            w = self._write(lambda st: status.record_backup_host(
                st, ref, host.to_json(), total_hosts=self.total_hosts, expected_targets=self.expected_targets,
                created=self.session.created, now=when, conditions=conds(st)))
        ok = host.phase == status.SUCCEEDED
        self._host_event(host, ref)
        if self.metrics_target is not None:
            self.pusher.push(metrics.backup_host_metrics(self.pusher.invoker, self.metrics_target, [host]),
                             grouping=metrics.host_grouping(host.hostname))
        self._maybe_finished(w)
        if not ok:
            return False
        if self.writer is None:
            return True
        # Exactly one write turns the last target Succeeded: that host runs the post-backup actions.
        return (status.all_targets_succeeded(w.new, self.expected_targets)
                and not status.all_targets_succeeded(w.old, self.expected_targets)
                and status.condition(w.new, status.RETENTION_POLICY_APPLIED) is None)

    def post_backup_done(self, post: PostBackup, repository: Repository) -> None:
        """The post-backup actions' verdicts as conditions, Repository status and repository metrics."""
        assert self.target_ref is not None
        info = metrics.RepositoryInfo.from_spec(repository.name, repository.namespace, repository.backend)
        pushed = self.pusher.push(metrics.repository_metrics(self.pusher.invoker, info, post))
        conds = [_verdict(status.RETENTION_POLICY_APPLIED, post.errors.get("retention"),
                          "SuccessfullyAppliedRetentionPolicy", "Successfully applied retention policy.",
                          "FailedToApplyRetentionPolicy"),
                 _verdict(status.REPOSITORY_INTEGRITY_VERIFIED, post.errors.get("check"),
                          "SuccessfullyVerifiedRepositoryIntegrity", "Repository integrity verification succeeded.",
                          "FailedToVerifyRepositoryIntegrity")]
        if self.pusher.url:
            conds.append(Condition(status.REPOSITORY_METRICS_PUSHED, pushed,
                                   "SuccessfullyPushedRepositoryMetrics" if pushed else "FailedToPushRepositoryMetrics",
                                   "Successfully pushed repository metrics." if pushed
                                   else "The Pushgateway did not take the repository metrics (see the log)."))
        ref, when = self.target_ref, _now()
        w = self._write(lambda st: status.record_post_backup(st, ref, conds, expected_targets=self.expected_targets,
                                                             created=self.session.created, now=when))
        if "stats" not in post.errors:
            figures = post.repository_json()
            try:
                self._write(lambda st: status.repository_status(st, figures, now=when), kind="Repository",
                            name=repository.name, namespace=repository.namespace)
            except ClusterError as e:
                # The session's own status is written; a Repository we may not update is only a warning.
                log.warning("%s: status not updated: %s", repository.ref, e)
        self._maybe_finished(w)

    def _maybe_finished(self, w: _Write) -> None:
        """The write that ended the session pushes the session metrics and logs the end."""
        phase = w.ended
        if phase is None:
            return
        ok = phase == status.SUCCEEDED
        targets = [metrics.TargetOutcome(
            self.metrics_target if self.target_ref and status.same_ref(t.get("ref") or {}, self.target_ref)
            else metrics.Target.from_ref(t.get("ref") or {}),
            t.get("phase") == status.SUCCEEDED, t.get("totalHosts")) for t in w.new.get("targets") or []]
        self.pusher.push(metrics.backup_session_metrics(self.pusher.invoker, targets,
                                                        duration_seconds=_seconds_since(self.session.created),
                                                        succeeded=ok))
        self._session_ended(phase)


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (strconv.Quote): double quotes; ``"`` and ``\\`` backslashed; printable runes as
    they are; \\a \\b \\f \\n \\r \\t \\v; other control bytes as \\xNN, other unprintable runes as \\uNNNN or
    \\UNNNNNNNN. Stash's messages quote names this way."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == " " or (unicodedata.category(ch)[0] in "LMNPS"):  # unicode.IsPrint
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            # A lone surrogate is no valid UTF-8 to Go: each byte of it is escaped. The low ones carry a
            # byte that was not UTF-8 (Python's surrogateescape), which Go would see as that byte.
            raw = bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else ch.encode("utf-8", "surrogatepass")
            out.extend(f"\\x{b:02x}" for b in raw)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def host_event(session_kind: str, host: HostResult,
               target: Mapping[str, str] | None = None) -> tuple[str, str, bool]:
    """(reason, message, warning) of the Event Stash's status updater writes for one host of a BackupSession or
    RestoreSession or RestoreBatch (stash pkg/status/status.go: UpdatePostBackupStatus, UpdatePostRestoreStatus).
    ``target`` is the backup target's ref ({kind, name}); an unknown one quotes as "" like Stash's empty TargetRef."""
    # Stash goes by the error alone; a host Failed without one is a failure here too (as in the metrics).
    failed = host.phase != status.SUCCEEDED or bool(host.error)
    reason_text = one_line(host.error)  # the one free-text part: one line, as in the status
    if session_kind in ("RestoreSession", "RestoreBatch"):  # a batch member's hosts are worded as a session's
        if failed:
            return REASON_HOST_RESTORE_FAILED, \
                f"restore failed for host {go_quote(host.hostname)}. Reason: {reason_text}", True
        return REASON_HOST_RESTORE_SUCCEEDED, f"restore succeeded for host {go_quote(host.hostname)}", False
    kind, name = go_quote(str((target or {}).get("kind") or "")), go_quote(str((target or {}).get("name") or ""))
    if failed:
        return REASON_HOST_BACKUP_FAILED, \
            f"backup failed for host {go_quote(host.hostname)} of {kind}/{name}. Reason: {reason_text}", True
    # Stash's success message has the hostname unquoted (%s) and a full stop
    return REASON_HOST_BACKUP_SUCCEEDED, f"backup succeeded for host {host.hostname} of {kind}/{name}.", False


def event_message(message: str) -> str:
    """An Event's message: on one line (only when it is not already, so that what Stash's format gives stays
    byte for byte) and at most ``MAX_EVENT_MESSAGE`` characters."""
    if message.splitlines() != [message]:
        message = one_line(message)
    return message[:MAX_EVENT_MESSAGE]


def _initialised(created: bool) -> Condition:
    """Stash's BackendRepositoryInitialized condition: this session created the repository, or found it."""
    return Condition(status.BACKEND_REPOSITORY_INITIALIZED, True,
                     "BackendRepositoryInitialized" if created else "BackendRepositoryFound",
                     "Repository was initialized in the backend." if created else "Repository exist in the backend.")


def _verdict(type_: str, error: BaseException | None, ok_reason: str, ok_message: str, bad_reason: str) -> Condition:
    if error is None:
        return Condition(type_, True, ok_reason, ok_message)
    return Condition(type_, False, bad_reason, one_line(str(error))[:1024])


class RestoreReporter(_Reporter):
    kind = "RestoreSession"

    def __init__(self, writer: StatusWriter | None, session: RestoreSession, pusher: Pusher,
                 target: metrics.Target | None = None, total_hosts: int = 1) -> None:
        super().__init__(writer, session.obj, session.namespace, session.name, pusher)
        self.session, self.target, self.total_hosts = session, target, total_hosts

    def started(self) -> None:
        self._write(lambda st: status.start_restore(st, self.total_hosts))

    def hook_conditions(self) -> dict[str, bool | None]:
        """The session's hook conditions as it has them now."""
        if self.writer is None:
            return {}
        st = self.writer.get(self.kind, self.namespace, self.name).get("status") or {}
        return status.condition_states(st.get("conditions"))

    def record_hook(self, cond: Condition) -> None:
        """A hook's condition on the RestoreSession; a failed one fails it."""
        when = _now()
        self._write(lambda st: status.record_restore_condition(st, cond, created=self.session.created, now=when))

    def set_hosts(self, hostnames: list[str]) -> None:
        """The session's totalHosts, once the driver has named the hosts it restores."""
        if len(hostnames) == self.total_hosts:
            return
        self.total_hosts = total = len(hostnames)
        self._write(lambda st: status.set_restore_hosts(st, total))

    def host_done(self, host: HostResult) -> None:
        when = _now()
        w = self._write(lambda st: status.record_restore_host(st, host.to_json(), total_hosts=self.total_hosts,
                                                              created=self.session.created, now=when))
        self._host_event(host)
        if self.target is not None:
            self.pusher.push(metrics.restore_host_metrics(self.pusher.invoker, self.target, [host]),
                             grouping=metrics.host_grouping(host.hostname))
        phase = w.ended
        if phase is not None:
            ok = phase == status.SUCCEEDED
            outcome = [metrics.TargetOutcome(self.target, ok, w.new.get("totalHosts"))] if self.target else []
            self.pusher.push(metrics.restore_session_metrics(self.pusher.invoker, outcome,
                                                             duration_seconds=_seconds_since(self.session.created),
                                                             succeeded=ok))
            self._session_ended(phase)


class RestoreMemberReporter(_Reporter):
    """One member of a RestoreBatch, as a RestoreReporter does for a RestoreSession, but into the batch's
    status.members entry for the member's target; the batch ends when every member of spec.members has."""

    kind = "RestoreBatch"

    def __init__(self, writer: StatusWriter | None, batch: RestoreBatch, ref: ObjectRef, pusher: Pusher,
                 target: metrics.Target | None = None, total_hosts: int = 1) -> None:
        super().__init__(writer, batch.obj, batch.namespace, batch.name, pusher)
        self.batch, self.target, self.total_hosts = batch, target, total_hosts
        self.member_ref = ref.json()
        self.members = [r.json() for r in batch.refs]

    def started(self) -> None:
        when = _now()
        self._write(lambda st: status.start_restore_member(st, self.member_ref, self.total_hosts,
                                                           members=self.members, created=self.batch.created,
                                                           now=when))

    def hook_conditions(self) -> dict[str, bool | None]:
        """The member's hook conditions as the batch has them now."""
        if self.writer is None:
            return {}
        st = self.writer.get(self.kind, self.namespace, self.name).get("status") or {}
        entry = status.member_entry(st, self.member_ref) or {}
        return status.condition_states(entry.get("conditions"))

    def record_hook(self, cond: Condition) -> None:
        """A local hook's condition on the member's entry; a failed one fails the member."""
        when = _now()
        w = self._write(lambda st: status.record_restore_member_condition(
            st, self.member_ref, cond, total_hosts=self.total_hosts, members=self.members,
            created=self.batch.created, now=when))
        self._maybe_ended(w)

    def set_hosts(self, hostnames: list[str]) -> None:
        """The member's totalHosts, once the driver has named the hosts it restores."""
        if len(hostnames) == self.total_hosts:
            return
        self.total_hosts = total = len(hostnames)
        self._write(lambda st: status.set_restore_member_hosts(st, self.member_ref, total, members=self.members))

    def host_done(self, host: HostResult) -> None:
        when = _now()
        w = self._write(lambda st: status.record_restore_member_host(
            st, self.member_ref, host.to_json(), total_hosts=self.total_hosts, members=self.members,
            created=self.batch.created, now=when))
        self._host_event(host)
        if self.target is not None:
            self.pusher.push(metrics.restore_host_metrics(self.pusher.invoker, self.target, [host]),
                             grouping=metrics.host_grouping(host.hostname))
        self._maybe_ended(w)

    def _maybe_ended(self, w: _Write) -> None:
        """The write that ended the batch (whichever member's) pushes the batch's metrics, every member in them."""
        phase = w.ended
        if phase is None:
            return
        ok = phase == status.SUCCEEDED
        outcome = [metrics.TargetOutcome(
            self.target if self.target is not None and status.same_ref(m.get("ref") or {}, self.member_ref)
            else metrics.Target.from_ref(m.get("ref") or {}),
            m.get("phase") == status.SUCCEEDED, m.get("totalHosts")) for m in w.new.get("members") or []]
        self.pusher.push(metrics.restore_session_metrics(self.pusher.invoker, outcome,
                                                         duration_seconds=_seconds_since(self.batch.created),
                                                         succeeded=ok))
        self._session_ended(phase)
