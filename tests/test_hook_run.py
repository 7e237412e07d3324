"""stash_runner.hooks.run: when a hook runs and the condition it records, word for word Stash's (apimachinery
pkg/conditions, pkg/hooks IsAllowedByExecutionPolicy)."""

from __future__ import annotations

import pytest

from stash_runner.errors import HookFailed
from stash_runner.hooks import run
from stash_runner.hooks.spec import Handler, Hook, Summary, TCPAction

HANDLER = Handler(tcp_socket=TCPAction(80))


def hook(hook_type: str = "postBackup", policy: str = "Always") -> Hook:
    return Hook(hook_type, HANDLER, policy)


class Calls:
    def __init__(self, fail: str = "") -> None:
        self.n = 0
        self.fail = fail

    def __call__(self, h: Hook, s: Summary) -> str:
        self.n += 1
        if self.fail:
            raise HookFailed(self.fail)
        return "tcp 127.0.0.1:80"


@pytest.mark.parametrize(("policy", "phase", "retry_left", "runs"), [
    ("Always", "Succeeded", 0, True), ("Always", "Failed", 0, True),
    ("OnSuccess", "Succeeded", 0, True), ("OnSuccess", "Failed", 0, False),
    ("OnFailure", "Failed", 0, True), ("OnFailure", "Succeeded", 0, False),
    ("OnFinalRetryFailure", "Failed", 0, True), ("OnFinalRetryFailure", "Failed", 1, False),
    ("OnFinalRetryFailure", "Succeeded", 0, False),
])
def test_execution_policy(policy, phase, retry_left, runs):
    calls = Calls()
    out = run.run(hook(policy=policy), Summary(phase=phase, retry_left=retry_left), calls)
    assert (calls.n == 1) == runs and out.ran == runs and out.ok
    if not runs:
        assert out.condition.message == (f'Skipping executing postBackup. Reason: executionPolicy is "{policy}" but '
                                          f'phase is "{phase}".')


def test_conditions_word_for_word():
    ok = run.run(hook("preRestore"), Summary(), Calls()).condition
    assert (ok.type, ok.ok, ok.reason, ok.message) == ("PreRestoreHookExecutionSucceeded", True,
                                                       "SuccessfullyExecutedPreRestoreHook",
                                                       "Successfully executed preRestore hook.")
    bad = run.run(hook("preBackup"), Summary(), Calls(fail="HTTP probe failed with statuscode: 503")).condition
    assert (bad.type, bad.ok, bad.reason, bad.message) == (
        "PreBackupHookExecutionSucceeded", False, "FailedToExecutePreBackupHook",
        "Failed to execute preBackup hook. Reason: HTTP probe failed with statuscode: 503")
    glob = run.run(hook("postRestore"), Summary(phase="Failed"), Calls(fail="refused"), global_=True).condition
    assert (glob.type, glob.ok, glob.reason, glob.message) == (
        "GlobalPostRestoreHookSucceeded", False, "GlobalPostRestoreHookExecutionFailed",
        "Failed to execute global PostRestore Hook. Reason: refused.")


def test_a_recorded_hook_is_not_run_again():
    calls = Calls()
    done = run.run(hook(), Summary(), calls, recorded={"PostBackupHookExecutionSucceeded": True})
    assert calls.n == 0 and done.ok and not done.ran
    failed = run.run(hook(), Summary(), calls, recorded={"PostBackupHookExecutionSucceeded": False})
    assert calls.n == 0 and not failed.ok and not failed.ran
    assert failed.condition.message == "Failed to execute postBackup hook. Reason: it failed before in this session"
