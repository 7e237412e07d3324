"""Stash's status shapes (status.py) and the session objects (sessions.py), without a server."""

from __future__ import annotations

import pytest

from stash_runner.errors import BadInput
from stash_runner.restic.timefmt import parse_go_duration
from stash_runner.stash import status as st
from stash_runner.stash.objects import FileSource
from stash_runner.stash.sessions import BackupInvoker, BackupSession, RestoreSession, read_backup_session

PG = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"}
APP = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}
T0 = "2026-11-22T10:00:00Z"
T1 = "2026-11-22T10:00:07.5Z"


def host(name: str, phase: str = "Succeeded", error: str = "") -> dict:
    h = {"hostname": name, "phase": phase, "duration": "1.5s"}
    if error:
        h["error"] = error
    return h


def record(status: dict, ref: dict, h: dict, total: int = 1, expected: int = 1, conds=()) -> dict:
    return st.record_backup_host(status, ref, h, total_hosts=total, expected_targets=expected, created=T0, now=T1,
                                 conditions=conds)


def post_ok(status: dict, ref: dict = PG, expected: int = 1) -> dict:
    conds = [st.Condition(st.RETENTION_POLICY_APPLIED, True, "SuccessfullyAppliedRetentionPolicy", "ok"),
             st.Condition(st.REPOSITORY_INTEGRITY_VERIFIED, True, "SuccessfullyVerifiedRepositoryIntegrity", "ok")]
    return st.record_post_backup(status, ref, conds, expected_targets=expected, created=T0, now=T1)


def test_one_host_then_post_backup_ends_the_session():
    s = st.start_backup_target({}, PG, 1, expected_targets=1, created=T0, now=T0)
    assert s == {"targets": [{"ref": PG, "totalHosts": 1, "phase": "Running", "stats": []}], "phase": "Running"}
    s = record(s, PG, host("host-0"))
    assert s["targets"][0]["phase"] == "Succeeded" and s["targets"][0]["stats"] == [host("host-0")]
    # all targets succeeded, but the post-backup actions have not run: still Running, no duration yet
    assert s["phase"] == "Running" and "sessionDuration" not in s
    assert st.all_targets_succeeded(s, 1)
    s = post_ok(s)
    assert s["phase"] == "Succeeded" and s["sessionDuration"] == "7.5s"
    assert s["targets"][0]["postBackupActions"] == list(st.POST_BACKUP_ACTIONS)
    assert [c["type"] for c in s["conditions"]] == [st.RETENTION_POLICY_APPLIED, st.REPOSITORY_INTEGRITY_VERIFIED]


def test_hosts_accumulate_and_a_failed_host_fails_target_and_session_at_once():
    s = {"targets": [{"ref": PG, "totalHosts": 3, "phase": "Running", "stats": []}]}
    s = record(s, PG, host("host-1"))
    assert s["targets"][0]["phase"] == "Running" and s["phase"] == "Running"
    s = record(s, PG, host("host-0", "Failed", "pg_dump: connection refused"))
    assert s["targets"][0]["phase"] == "Failed" and s["phase"] == "Failed" and s["sessionDuration"] == "7.5s"
    assert [h["hostname"] for h in s["targets"][0]["stats"]] == ["host-0", "host-1"]
    # a late success changes neither the failed target nor the finished session
    s = record(s, PG, host("host-2"))
    assert s["targets"][0]["phase"] == "Failed" and s["phase"] == "Failed"
    assert len(s["targets"][0]["stats"]) == 3


def test_a_host_reporting_again_replaces_its_entry():
    s = record({}, PG, host("host-0", "Failed", "boom"), total=2)
    s = record(s, PG, host("host-0"), total=2)
    assert s["targets"][0]["stats"] == [host("host-0")]


def test_two_targets_the_session_waits_for_both_and_keeps_both():
    s = record({}, APP, host("app"), expected=2)
    assert s["phase"] == "Running" and not st.all_targets_succeeded(s, 2)
    s = record(s, PG, host("db"), expected=2)
    assert st.all_targets_succeeded(s, 2) and s["phase"] == "Running"
    s = post_ok(s, PG, expected=2)
    assert s["phase"] == "Succeeded"
    assert [t["ref"]["kind"] for t in s["targets"]] == ["Deployment", "AppBinding"]
    assert "postBackupActions" not in s["targets"][0] and "postBackupActions" in s["targets"][1]


def test_a_failed_post_backup_action_fails_the_session():
    s = record({}, PG, host("host-0"))
    conds = [st.Condition(st.RETENTION_POLICY_APPLIED, True, "SuccessfullyAppliedRetentionPolicy", "ok"),
             st.Condition(st.REPOSITORY_INTEGRITY_VERIFIED, False, "FailedToVerifyRepositoryIntegrity", "bad pack")]
    s = st.record_post_backup(s, PG, conds, expected_targets=1, created=T0, now=T1)
    assert s["phase"] == "Failed" and st.condition(s, st.REPOSITORY_INTEGRITY_VERIFIED) is False


def test_metrics_condition_false_does_not_fail_the_session():
    s = record({}, PG, host("host-0"))
    s = post_ok(s)
    s = st.record_post_backup(s, PG, [st.Condition(st.REPOSITORY_METRICS_PUSHED, False, "FailedToPushRepositoryMetrics",
                                                   "down")], expected_targets=1, created=T0, now=T1)
    assert s["phase"] == "Succeeded"


def test_condition_transition_time_moves_only_when_the_status_changes():
    c = st.set_conditions([], [st.Condition("X", True, "R", "m")], T0)
    c = st.set_conditions(c, [st.Condition("X", True, "R2", "m2")], T1)
    assert c == [{"type": "X", "status": "True", "reason": "R2", "message": "m2", "lastTransitionTime": T0}]
    c = st.set_conditions(c, [st.Condition("X", False, "R3", "m3")], T1)
    assert c[0]["lastTransitionTime"] == T1 and c[0]["status"] == "False"


def test_same_ref_ignores_the_version_but_not_the_group():
    assert st.same_ref(PG, {**PG, "apiVersion": "appcatalog.appscode.com/v1"})
    assert st.same_ref(PG, {"kind": "AppBinding", "name": "pg"})
    assert not st.same_ref(PG, {**PG, "apiVersion": "other.io/v1alpha1"})
    assert not st.same_ref(PG, {**PG, "name": "pg2"})


def test_fail_session_without_a_target():
    s = st.fail_session({}, "BackupFailed", "BackupConfiguration demo/x: not found", created=T0, now=T1)
    assert s["phase"] == "Failed" and st.condition(s, st.SESSION_FAILED) is False
    assert s["conditions"][0]["message"] == "BackupConfiguration demo/x: not found"


def test_restore_status():
    s = st.start_restore({}, 2)
    assert s == {"totalHosts": 2, "phase": "Running"}
    s = st.record_restore_host(s, {**host("host-0"), "snapshots": []}, total_hosts=2, created=T0, now=T1)
    assert s["phase"] == "Running" and s["stats"] == [host("host-0")]  # restore stats carry no snapshots
    s = st.record_restore_host(s, host("host-1"), total_hosts=2, created=T0, now=T1)
    assert s["phase"] == "Succeeded" and s["sessionDuration"] == "7.5s"
    f = st.record_restore_host({}, host("host-0", "Failed", "no snapshot"), total_hosts=1, created=T0, now=T1)
    assert f["phase"] == "Failed" and f["stats"][0]["error"] == "no snapshot"


def test_repository_status():
    s = st.repository_status({}, {"integrity": True, "size": 3 * 1024 * 1024 + 512, "snapshotCount": 4,
                                  "snapshotsRemovedOnLastCleanup": 2}, now=T1)
    assert s == {"firstBackupTime": T1, "lastBackupTime": T1, "integrity": True, "totalSize": "3.000 MiB",
                 "snapshotCount": 4, "snapshotsRemovedOnLastCleanup": 2}
    s2 = st.repository_status(s, {"snapshotsRemovedOnLastCleanup": 0}, now="2026-11-23T00:00:00Z")
    assert s2["firstBackupTime"] == T1 and s2["lastBackupTime"] == "2026-11-23T00:00:00Z"
    assert s2["snapshotCount"] == 4  # kept when the figures were not measured


# -- session objects ---------------------------------------------------------------------------

def bc(**spec) -> dict:
    base = {"repository": {"name": "repo"}, "target": {"ref": PG},
            "task": {"name": "postgres-backup-14", "params": [{"name": "args", "value": "--clean"}]},
            "retentionPolicy": {"name": "keep-3", "keepLast": 3, "keepTags": ["a", "b"], "prune": True},
            "timeOut": "1h30m"}
    base.update(spec)
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "pg-backup", "namespace": "demo"}, "spec": base}


def test_backup_configuration_view():
    inv = BackupInvoker.from_object(bc(), "demo")
    assert (inv.kind, inv.name, inv.repository, inv.repository_namespace) == ("BackupConfiguration", "pg-backup",
                                                                              "repo", "demo")
    assert inv.timeout == 5400 and inv.retention.prune and not inv.retention.dry_run
    assert inv.retention.policy.last == 3 and inv.retention.policy.tags == ("a", "b")
    t = inv.target()
    assert t.ref.json() == PG and t.params == {"args": "--clean"}
    with pytest.raises(BadInput, match=r"BackupConfiguration demo/pg-backup: no target named 'x'"):
        inv.target("x")


def test_backup_batch_members():
    obj = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBatch",
           "metadata": {"name": "b", "namespace": "demo"},
           "spec": {"repository": {"name": "repo", "namespace": "other"},
                    "members": [{"target": {"ref": APP}}, {"target": {"ref": PG}, "task": {"name": "t"}}]}}
    inv = BackupInvoker.from_object(obj, "demo")
    assert inv.repository_namespace == "other" and len(inv.targets) == 2
    assert inv.target("pg").ref.kind == "AppBinding"
    with pytest.raises(BadInput, match="2 targets"):
        inv.target()


@pytest.mark.parametrize("spec, message", [
    ({"repository": None}, r"spec.repository.name is missing"),
    ({"target": None}, r"spec.target is missing"),
    ({"target": {"ref": {"kind": "AppBinding"}}}, r"spec.target.ref.kind and spec.target.ref.name are required"),
    ({"timeOut": "soon"}, r"spec.timeOut: invalid duration 'soon'"),
    ({"retentionPolicy": {"keepLast": -1}}, r"spec.retentionPolicy.keepLast must be a non-negative number"),
])
def test_bad_invokers_name_object_and_field(spec, message):
    with pytest.raises(BadInput, match=r"^BackupConfiguration demo/pg-backup: " + message):
        BackupInvoker.from_object(bc(**spec), "demo")


def test_backup_session_view_and_its_invoker(tmp_path):
    import yaml
    session = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
               "metadata": {"name": "s1", "namespace": "demo", "uid": "u-1", "creationTimestamp": T0},
               "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration",
                                    "name": "pg-backup"}, "retryLeft": 2}}
    path = tmp_path / "o.yaml"
    path.write_text(yaml.safe_dump_all([session, bc()]))
    src = FileSource([str(path)])
    s = read_backup_session(src, "demo", "s1")
    assert (s.uid, s.created, s.invoker_kind, s.retry_left) == ("u-1", T0, "BackupConfiguration", 2)
    assert s.invoker(src).name == "pg-backup"
    bad = {**session, "spec": {"invoker": {"kind": "Deployment", "name": "x"}}}
    with pytest.raises(BadInput, match="spec.invoker.kind 'Deployment'"):
        BackupSession.from_object(bad, "demo")


def test_restore_session_rules():
    obj = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
           "metadata": {"name": "r", "namespace": "demo"},
           "spec": {"repository": {"name": "repo"}, "target": {"ref": PG, "rules": [
               {"targetHosts": ["host-3"], "sourceHost": "host-1", "snapshots": ["repo-abcd1234"]},
               {"sourceHost": "host-0"}]}, "timeOut": "10m",
               "task": {"params": [{"name": "args", "value": "--single-transaction"}]}}}
    r = RestoreSession.from_object(obj, "demo")
    assert r.rule_for("host-3").snapshots == ("repo-abcd1234",) and r.rule_for("host-3").source_host == "host-1"
    assert r.rule_for("host-0").source_host == "host-0" and r.timeout == 600
    assert r.params == {"args": "--single-transaction"} and r.target.name == "pg"
    only = RestoreSession.from_object({**obj, "spec": {**obj["spec"], "target": {"ref": PG, "rules": [
        {"targetHosts": ["host-3"]}]}}}, "demo")
    with pytest.raises(BadInput, match="no rule for host 'host-0'"):
        only.rule_for("host-0")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25),
                                           ("2h0m0.5s", 7200.5), ("0", 0)])
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "-1s"])
def test_bad_go_durations(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)
