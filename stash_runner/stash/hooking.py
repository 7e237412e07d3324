"""A session's hooks, run by the runner as Stash's executor runs them: the summary their templates and execution
policies see, the handler (HTTP and TCP from here; exec in the first ready pod behind the AppBinding's Service,
through the pods/exec API), and the condition recorded on the target (backup) or the RestoreSession."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

from stash_runner.conditions import Condition
from stash_runner.errors import HookFailed
from stash_runner.hooks import probe
from stash_runner.hooks import run as hook_run
from stash_runner.hooks.spec import Hook, Summary
from stash_runner.restic.timefmt import format_time, go_duration, now, parse_time

from . import status
from .objects import ObjectSource
from .reporting import StatusWriter
from .sessions import ObjectRef

log = logging.getLogger("stash_runner")


class HookReporter(Protocol):
    def hook_conditions(self) -> dict[str, bool | None]: ...

    def record_hook(self, cond: Condition) -> None: ...


@dataclass
class HookRunner:
    """Where a session's hooks run: the objects (for the AppBinding's Service), the cluster (pods/exec), the
    target namespace, and the time a hook may take (Stash's prober: 5 minutes)."""

    source: ObjectSource
    cluster: object | None
    namespace: str
    target: ObjectRef | None
    timeout: float = hook_run.DEFAULT_TIMEOUT

    def _handler(self, hook: Hook, summary: Summary) -> str:
        pod_exec = None
        if hook.handler.exec_command:
            pod_exec = self._pod_exec(hook.handler.container)
        # Stash's prober sends an HTTP hook with no host to the executor's own pod IP.
        return probe.run_handler(hook.handler, summary, pod_exec=pod_exec,
                                 default_host=os.environ.get("POD_IP") or "127.0.0.1", timeout=self.timeout)

    def _pod_exec(self, container: str) -> probe.PodExec:
        from .podexec import KubePodExec, pod_for_appbinding  # only exec hooks need the pods/exec client

        if self.target is None:
            raise HookFailed("a batch's global exec hooks run in Stash's operator pod, which stash-runner is not: "
                             "give the global hook as httpGet, httpPost or tcpSocket")
        if self.cluster is None or self.target.kind != "AppBinding":
            raise HookFailed("exec hooks run in the pod behind the target's AppBinding: they need the cluster "
                             "(pods/exec); give HTTP or TCP hooks offline")
        ns = self.target.namespace or self.namespace
        appbinding = self.source.get("AppBinding", ns, self.target.name)
        pod, first = pod_for_appbinding(self.cluster, ns, appbinding)
        return KubePodExec(self.cluster, ns, pod, container or first)

    def run(self, hook: Hook, summary: Summary, reporter: HookReporter, *, global_: bool = False) -> Condition:
        """Run ``hook`` (unless its policy skips it or its condition is recorded already) and record its condition;
        returns the condition."""
        outcome = hook_run.run(hook, summary, self._handler, recorded=reporter.hook_conditions(), global_=global_)
        reporter.record_hook(outcome.condition)
        return outcome.condition


class SessionConditions:
    """A session's own conditions, where a batch's global hooks are recorded (GlobalPreBackupHookSucceeded ...)."""

    def __init__(self, writer: StatusWriter | None, kind: str, namespace: str, name: str) -> None:
        self.writer, self.kind, self.namespace, self.name = writer, kind, namespace, name

    def hook_conditions(self) -> dict[str, bool | None]:
        if self.writer is None:
            return {}
        st = self.writer.get(self.kind, self.namespace, self.name).get("status") or {}
        return status.condition_states(st.get("conditions"))

    def record_hook(self, cond: Condition) -> None:
        if self.writer is None:
            return
        when = format_time(now())

        def change(obj: dict) -> dict | None:
            old = obj.get("status") or {}
            created = str((obj.get("metadata") or {}).get("creationTimestamp") or when)
            new = status.record_session_condition(old, cond, created=created, now=when)
            return None if new == old else new

        self.writer.update_status(self.kind, self.namespace, self.name, change)


def session_phase(st: dict, target: ObjectRef | None) -> tuple[str, str]:
    """Stash's summary phase for a post hook run on its own (run-hook): Failed with the first error when a host of
    the target (every target, for a global hook) failed or one of its conditions is False, else Succeeded."""
    targets = st.get("targets")
    if targets is None:  # a RestoreSession: its own hosts and conditions
        targets = [st]
    for t in targets:
        if target is not None and "ref" in t and not status.same_ref(t.get("ref") or {}, target.json()):
            continue
        for h in t.get("stats") or []:
            if h.get("phase") == status.FAILED:
                return status.FAILED, str(h.get("error") or "")
        for c in t.get("conditions") or []:
            if c.get("status") == "False":
                return status.FAILED, str(c.get("message") or "")
    if st.get("phase") == status.FAILED:
        return status.FAILED, ""
    return status.SUCCEEDED, ""


def summary(*, session_name: str, namespace: str, invoker_kind: str, invoker_name: str, target: ObjectRef | None,
            created: str, phase: str, error: str = "", retry_left: int | None = None) -> Summary:
    """Stash's Summary for a hook: the session, its invoker and target, and the phase so far (Succeeded while
    nothing has failed, as Stash computes it even during the run)."""
    duration = ""
    try:
        duration = go_duration(max((now() - parse_time(created)).total_seconds(), 0.0)) if created else ""
    except ValueError:
        duration = ""
    return Summary(name=session_name, namespace=namespace, invoker_kind=invoker_kind, invoker_name=invoker_name,
                   target_api_version=target.api_version if target else "", target_kind=target.kind if target else "",
                   target_name=target.name if target else "",
                   target_namespace=(target.namespace or namespace) if target else "", phase=phase, error=error,
                   duration=duration, retry_left=retry_left or 0)


def raise_if_failed(cond: Condition, hook: Hook) -> None:
    if not cond.ok:
        raise HookFailed(f"{hook.type} hook failed: {cond.message}")

