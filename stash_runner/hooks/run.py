"""When a hook runs and what it records: Stash's execution policies, its hook conditions (names, reasons and
messages word for word), and the rule that a hook whose condition is recorded is not run again.

The handler itself is run by ``probe.run_handler``; this module decides and words the outcome, so the session
executor, ``run-hook`` and the offline batch all report hooks the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stash_runner.conditions import Condition
from stash_runner.errors import HookFailed, RunnerError, one_line

from . import probe
from .spec import (
    ALWAYS,
    ON_FAILURE,
    ON_FINAL_RETRY_FAILURE,
    ON_SUCCESS,
    POST_BACKUP,
    POST_RESTORE,
    PRE_BACKUP,
    PRE_RESTORE,
    Hook,
    Summary,
)

log = logging.getLogger("stash_runner")

#: Stash's default (and only) time a hook may take: the prober's DefaultProbeTimeout
DEFAULT_TIMEOUT = 5 * 60.0

# hook type -> (condition type, reason when it succeeded, reason when it failed), for a target's own hooks
_LOCAL = {
    PRE_BACKUP: ("PreBackupHookExecutionSucceeded", "SuccessfullyExecutedPreBackupHook",
                 "FailedToExecutePreBackupHook"),
    POST_BACKUP: ("PostBackupHookExecutionSucceeded", "SuccessfullyExecutedPostBackupHook",
                  "FailedToExecutePostBackupHook"),
    PRE_RESTORE: ("PreRestoreHookExecutionSucceeded", "SuccessfullyExecutedPreRestoreHook",
                  "FailedToExecutePreRestoreHook"),
    POST_RESTORE: ("PostRestoreHookExecutionSucceeded", "SuccessfullyExecutedPostRestoreHook",
                   "FailedToExecutePostRestoreHook"),
}
# ... and for a batch's global hooks (session conditions)
_GLOBAL = {t: (f"Global{t[0].upper()}{t[1:]}HookSucceeded", f"Global{t[0].upper()}{t[1:]}HookExecutedSuccessfully",
               f"Global{t[0].upper()}{t[1:]}HookExecutionFailed") for t in _LOCAL}


def condition_type(hook_type: str, *, global_: bool = False) -> str:
    return (_GLOBAL if global_ else _LOCAL)[hook_type][0]


def succeeded(hook_type: str, *, global_: bool = False, message: str = "") -> Condition:
    ctype, ok, _ = (_GLOBAL if global_ else _LOCAL)[hook_type]
    if not message:
        title = f"{hook_type[0].upper()}{hook_type[1:]}"
        message = f"Global {title} hook has been executed successfully" if global_ else \
            f"Successfully executed {hook_type} hook."
    return Condition(ctype, True, ok, message)


def failed(hook_type: str, error: str, *, global_: bool = False) -> Condition:
    ctype, _, bad = (_GLOBAL if global_ else _LOCAL)[hook_type]
    title = f"{hook_type[0].upper()}{hook_type[1:]}"
    message = f"Failed to execute global {title} Hook. Reason: {error}." if global_ else \
        f"Failed to execute {hook_type} hook. Reason: {error}"
    return Condition(ctype, False, bad, message)


def skip_message(hook: Hook, summary: Summary) -> str | None:
    """Why a post hook is skipped under its executionPolicy (Stash's IsAllowedByExecutionPolicy), else None."""
    policy = hook.policy or ALWAYS
    phase = summary.phase
    allowed = (policy == ALWAYS or (policy == ON_SUCCESS and phase == "Succeeded")
               or (policy == ON_FAILURE and phase == "Failed")
               or (policy == ON_FINAL_RETRY_FAILURE and phase == "Failed" and summary.retry_left == 0))
    if allowed:
        return None
    return f'Skipping executing {hook.type}. Reason: executionPolicy is "{policy}" but phase is "{phase}".'


@dataclass(frozen=True)
class HookRun:
    """What a hook did: the condition to record, and whether its handler ran."""

    condition: Condition
    ran: bool

    @property
    def ok(self) -> bool:
        return self.condition.ok


def run(hook: Hook, summary: Summary, handler: Callable[[Hook, Summary], str], *, global_: bool = False,
        recorded: Mapping[str, bool | None] | None = None) -> HookRun:
    """Run ``hook`` unless its policy skips it or its condition is already recorded (``recorded``: condition type
    -> True/False/None); never raises for a failing handler: the failure is the returned condition."""
    ctype = condition_type(hook.type, global_=global_)
    before = (recorded or {}).get(ctype)
    if before is True:
        log.info("%s hook: already executed (condition %s), not run again", hook.type, ctype)
        return HookRun(succeeded(hook.type, global_=global_), ran=False)
    if before is False:
        # Stash refuses to run a hook again whose failure is recorded: the session has failed already.
        return HookRun(failed(hook.type, "it failed before in this session", global_=global_), ran=False)
    skip = skip_message(hook, summary)
    if skip is not None:
        log.info("%s hook: %s", hook.type, skip)
        return HookRun(succeeded(hook.type, global_=global_, message=skip), ran=False)
    named = probe.hook_name.set(f"{'global ' if global_ else ''}{hook.type} hook")  # its wait messages name it
    try:
        what = handler(hook, summary)
    except (HookFailed, RunnerError, OSError) as e:
        reason = one_line(str(e))
        log.warning("%s hook failed: %s", hook.type, reason)
        return HookRun(failed(hook.type, reason, global_=global_), ran=True)
    finally:
        probe.hook_name.reset(named)
    log.info("%s hook succeeded: %s", hook.type, what)
    return HookRun(succeeded(hook.type, global_=global_), ran=True)
