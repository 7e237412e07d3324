"""Stash's status shapes for BackupSession, RestoreSession, RestoreBatch and Repository, as pure functions.

Each function takes the ``.status`` just read (maybe empty) and returns the one to write. The caller
writes with optimistic concurrency and calls the function again after a conflict, so the functions are
deterministic and keep whatever other writers put there: other hosts' entries, other targets, conditions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

from stash_runner.conditions import Condition
from stash_runner.restic.timefmt import go_duration, parse_time
from stash_runner.units import stash_bytes

SUCCEEDED, FAILED, RUNNING, PENDING = "Succeeded", "Failed", "Running", "Pending"
TERMINAL = (SUCCEEDED, FAILED)

# BackupSession conditions, with Stash's names.
BACKEND_REPOSITORY_INITIALIZED = "BackendRepositoryInitialized"
RETENTION_POLICY_APPLIED = "RetentionPolicyApplied"
REPOSITORY_INTEGRITY_VERIFIED = "RepositoryIntegrityVerified"
REPOSITORY_METRICS_PUSHED = "RepositoryMetricsPushed"
#: the session ends only when these are set; one of them False fails it
REQUIRED_POST_BACKUP = (RETENTION_POLICY_APPLIED, REPOSITORY_INTEGRITY_VERIFIED)
#: the pre-backup action the operator gives the target that is to create the repository
INITIALIZE_BACKEND_REPOSITORY = "InitializeBackendRepository"
#: what a target entry lists under postBackupActions when it ran them
POST_BACKUP_ACTIONS = ("ApplyRetentionPolicy", "VerifyRepositoryIntegrity", "SendRepositoryMetrics")
#: a session that failed before any target could be recorded (its invoker is missing, say)
SESSION_FAILED = "SessionFailed"


def set_conditions(conditions: list[dict] | None, new: Iterable[Condition], now: str) -> list[dict]:
    """Replace conditions by type; lastTransitionTime moves only when the status does (as apimachinery's)."""
    out = [dict(c) for c in conditions or []]
    for cond in new:
        value = "True" if cond.ok else "False"
        entry = {"type": cond.type, "status": value, "reason": cond.reason, "message": cond.message,
                 "lastTransitionTime": now}
        for i, old in enumerate(out):
            if old.get("type") == cond.type:
                if old.get("status") == value:
                    entry["lastTransitionTime"] = old.get("lastTransitionTime", now)
                out[i] = entry
                break
        else:
            out.append(entry)
    return out


def condition_states(conditions: Iterable[Mapping] | None) -> dict[str, bool | None]:
    """Condition type -> True/False as recorded (a hook whose condition is recorded is not run again)."""
    return {str(c.get("type")): c.get("status") == "True" for c in conditions or []}


def condition(status: Mapping, type_: str) -> bool | None:
    """True/False for a condition that is set, None for one that is not."""
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status") == "True"
    return None


def same_ref(a: Mapping, b: Mapping) -> bool:
    """Same target: kind and name, and the API group when both name one (versions may differ)."""
    if a.get("kind") != b.get("kind") or a.get("name") != b.get("name"):
        return False
    ga, gb = str(a.get("apiVersion") or "").rpartition("/")[0], str(b.get("apiVersion") or "").rpartition("/")[0]
    return not (a.get("apiVersion") and b.get("apiVersion")) or ga == gb


def _duration_since(created: str, now: str) -> str:
    try:
        return go_duration((parse_time(now) - parse_time(created)).total_seconds())
    except (ValueError, TypeError):
        return "0s"


def _upsert_host(stats: list[dict], host: Mapping) -> list[dict]:
    out = [dict(h) for h in stats if h.get("hostname") != host.get("hostname")]
    out.append(dict(host))
    return sorted(out, key=lambda h: str(h.get("hostname")))


def _hosts_phase(stats: list[dict], total_hosts: int) -> str:
    """A failed host fails the whole at once (so that nothing waits on it); all hosts done: Succeeded."""
    if any(h.get("phase") == FAILED for h in stats):
        return FAILED
    done = sum(1 for h in stats if h.get("phase") == SUCCEEDED)
    return SUCCEEDED if done >= max(total_hosts, 1) else RUNNING


# -- BackupSession ---------------------------------------------------------------------------

def target_entry(status: Mapping, ref: Mapping) -> dict | None:
    """The session's entry for target ``ref``, if it has one."""
    for t in status.get("targets") or []:
        if same_ref(t.get("ref") or {}, ref):
            return t
    return None


def initialising_target(status: Mapping) -> dict | None:
    """The ref of the target the operator gave the pre-backup action InitializeBackendRepository (a
    BackupBatch's first member), if any."""
    for t in status.get("targets") or []:
        if INITIALIZE_BACKEND_REPOSITORY in (t.get("preBackupActions") or []):
            return t.get("ref") or {}
    return None


def _ensure_target_entry(status: dict, ref: Mapping, total_hosts: int) -> dict:
    """The target's entry in ``status`` (created when missing); a host count already there is kept."""
    entry = target_entry(status, ref)
    if entry is None:
        entry = {"ref": dict(ref), "totalHosts": total_hosts, "stats": []}
        status.setdefault("targets", []).append(entry)
    entry.setdefault("totalHosts", total_hosts)
    return entry


def backup_session_phase(status: Mapping, expected_targets: int) -> str:
    """Failed as soon as a target or a required post-backup action failed; Succeeded once every target
    succeeded and the post-backup actions are done; Running in between."""
    targets = status.get("targets") or []
    if status.get("phase") == FAILED or any(t.get("phase") == FAILED for t in targets):
        return FAILED
    if any(condition(status, c) is False for c in REQUIRED_POST_BACKUP + (SESSION_FAILED,)):
        return FAILED
    if not all_targets_succeeded(status, expected_targets):  # no target failed (above): some are still running
        return RUNNING
    if any(condition(status, c) is None for c in REQUIRED_POST_BACKUP):
        return RUNNING
    return SUCCEEDED


def all_targets_succeeded(status: Mapping, expected_targets: int) -> bool:
    targets = status.get("targets") or []
    return (sum(1 for t in targets if t.get("phase") == SUCCEEDED) >= max(expected_targets, 1)
            and not any(t.get("phase") == FAILED for t in targets))


def _with_session_phase(status: dict, expected_targets: int, created: str, now: str) -> dict:
    return _settle(status, backup_session_phase(status, expected_targets), created, now)


def _settle(status: dict, phase: str, created: str, now: str) -> dict:
    """``phase`` into ``status`` unless it had finished already (a finished session or batch stays as it
    finished), with ``sessionDuration`` once it is final."""
    if status.get("phase") in TERMINAL:
        phase = status["phase"]
    status["phase"] = phase
    if phase in TERMINAL and not status.get("sessionDuration"):
        status["sessionDuration"] = _duration_since(created, now)
    return status


def start_backup_target(status: Mapping, ref: Mapping, total_hosts: int, *, expected_targets: int, created: str,
                        now: str) -> dict:
    """The target entry with its host count, and the session Running, before the backup starts."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_target_entry(new, ref, total_hosts)
    if entry.get("phase") not in TERMINAL:
        entry["phase"] = RUNNING
    return _with_session_phase(new, expected_targets, created, now)


def set_target_hosts(status: Mapping, ref: Mapping, total_hosts: int) -> dict:
    """A target's host count once its driver has named its hosts (a sharded cluster: shards + 1), as Stash's
    MongoDB addon patches it."""
    new = copy.deepcopy(dict(status))
    _ensure_target_entry(new, ref, total_hosts)["totalHosts"] = total_hosts
    return new


def set_restore_hosts(status: Mapping, total_hosts: int) -> dict:
    new = copy.deepcopy(dict(status))
    new["totalHosts"] = total_hosts
    return new


def record_backup_host(status: Mapping, ref: Mapping, host: Mapping, *, total_hosts: int, expected_targets: int,
                       created: str, now: str, conditions: Iterable[Condition] = ()) -> dict:
    """A host's result (output.json's ``stats`` entry) under its target; target and session phases follow."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_target_entry(new, ref, total_hosts)
    entry["stats"] = _upsert_host(entry.get("stats") or [], host)
    entry["phase"] = FAILED if _hook_failed(entry.get("conditions")) else \
        _hosts_phase(entry["stats"], int(entry.get("totalHosts") or total_hosts))
    if conditions:
        new["conditions"] = set_conditions(new.get("conditions"), conditions, now)
    return _with_session_phase(new, expected_targets, created, now)


def record_post_backup(status: Mapping, ref: Mapping, conditions: Iterable[Condition], *, expected_targets: int,
                       created: str, now: str) -> dict:
    """The post-backup actions' conditions, listed on the target that ran them; the session ends here."""
    new = copy.deepcopy(dict(status))
    new["conditions"] = set_conditions(new.get("conditions"), conditions, now)
    entry = target_entry(new, ref)
    if entry is not None:
        entry["postBackupActions"] = list(POST_BACKUP_ACTIONS)
    return _with_session_phase(new, expected_targets, created, now)


#: a target's hook conditions: one of them False fails the target (Stash's calculateBackupTargetPhase), and a
#: RestoreSession's fails the session
HOOK_CONDITIONS = ("PreBackupHookExecutionSucceeded", "PostBackupHookExecutionSucceeded",
                   "PreRestoreHookExecutionSucceeded", "PostRestoreHookExecutionSucceeded")


def _hook_failed(conditions: list[dict] | None) -> bool:
    return any(c.get("type") in HOOK_CONDITIONS and c.get("status") == "False" for c in conditions or [])


def record_target_condition(status: Mapping, ref: Mapping, cond: Condition, *, total_hosts: int,
                            expected_targets: int, created: str, now: str) -> dict:
    """A condition on the target's entry (its hooks'); a failed hook fails the target, and so the session."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_target_entry(new, ref, total_hosts)
    entry["conditions"] = set_conditions(entry.get("conditions"), [cond], now)
    if _hook_failed(entry["conditions"]):
        entry["phase"] = FAILED
        if new.get("phase") == SUCCEEDED:
            new["phase"] = FAILED  # a post hook runs after the session succeeded; its failure fails it (Stash)
    return _with_session_phase(new, expected_targets, created, now)


def record_session_condition(status: Mapping, cond: Condition, *, created: str, now: str) -> dict:
    """A condition on the session itself (a batch's global hooks). A failed global hook fails the session, as
    Stash's calculateBackupSessionPhase and its restore twin do."""
    new = copy.deepcopy(dict(status))
    new["conditions"] = set_conditions(new.get("conditions"), [cond], now)
    if not cond.ok and cond.type.startswith("Global"):
        new["phase"] = FAILED
        if not new.get("sessionDuration"):
            new["sessionDuration"] = _duration_since(created, now)
    return new


def fail_session(status: Mapping, reason: str, message: str, *, created: str, now: str) -> dict:
    """The session Failed before a target could be recorded (its invoker is missing, say)."""
    new = copy.deepcopy(dict(status))
    new["conditions"] = set_conditions(new.get("conditions"), [Condition(SESSION_FAILED, False, reason, message)],
                                       now)
    return _with_session_phase(new, 1, created, now)


# -- RestoreSession --------------------------------------------------------------------------

def start_restore(status: Mapping, total_hosts: int) -> dict:
    new = copy.deepcopy(dict(status))
    new.setdefault("totalHosts", total_hosts)
    if new.get("phase") not in TERMINAL:
        new["phase"] = RUNNING
    return new


def record_restore_condition(status: Mapping, cond: Condition, *, created: str, now: str) -> dict:
    """A condition on a RestoreSession (its hooks'); a failed hook fails the session."""
    new = copy.deepcopy(dict(status))
    new["conditions"] = set_conditions(new.get("conditions"), [cond], now)
    if _hook_failed(new["conditions"]):
        new["phase"] = FAILED
        if not new.get("sessionDuration"):
            new["sessionDuration"] = _duration_since(created, now)
    return new


def record_restore_host(status: Mapping, host: Mapping, *, total_hosts: int, created: str, now: str) -> dict:
    """A host's result in ``stats`` (hostname, phase, duration, error); the session phase follows."""
    new = copy.deepcopy(dict(status))
    new.setdefault("totalHosts", total_hosts)
    keep = ("hostname", "phase", "duration", "error")
    new["stats"] = _upsert_host(new.get("stats") or [], {k: v for k, v in host.items() if k in keep})
    phase = FAILED if _hook_failed(new.get("conditions")) else \
        _hosts_phase(new["stats"], int(new.get("totalHosts") or total_hosts))
    if new.get("phase") in TERMINAL:
        phase = new["phase"] if new["phase"] == FAILED else phase
    new["phase"] = phase
    if phase in TERMINAL and not new.get("sessionDuration"):
        new["sessionDuration"] = _duration_since(created, now)
    return new


# -- RestoreBatch ----------------------------------------------------------------------------
# A member's Job writes its entry of status.members (Stash's RestoreMemberStatus: ref, conditions, totalHosts,
# phase, stats); the batch's phase follows from every member of spec.members.

#: a batch's global hook conditions (set by run-hook); one of them False fails the batch once its members ended
GLOBAL_RESTORE_HOOKS = ("GlobalPreRestoreHookSucceeded", "GlobalPostRestoreHookSucceeded")


def member_entry(status: Mapping, ref: Mapping) -> dict | None:
    """The RestoreBatch's status.members entry for target ``ref``, if it has one."""
    for m in status.get("members") or []:
        if same_ref(m.get("ref") or {}, ref):
            return m
    return None


def _ensure_member_entry(status: dict, ref: Mapping, total_hosts: int, members: Sequence[Mapping]) -> dict:
    """The member's entry (created when missing; a host count already there is kept), entries kept in
    spec.members order (entries for refs the spec no longer names go last, as they were)."""
    entry = member_entry(status, ref)
    if entry is None:
        entry = {"ref": dict(ref), "totalHosts": total_hosts, "phase": PENDING, "stats": []}
        status.setdefault("members", []).append(entry)
    entry.setdefault("totalHosts", total_hosts)
    status["members"] = in_ref_order(status["members"], members)
    return entry


def in_ref_order(entries: list[dict], refs: Sequence[Mapping]) -> list[dict]:
    """Entries (each with a ``ref``) in the order ``refs`` lists them — Stash's spec.members order; entries for
    refs it does not name go last, in the order they were (the sort is stable)."""
    def rank(e: Mapping) -> int:
        return next((i for i, r in enumerate(refs) if same_ref(e.get("ref") or {}, r)), len(refs))

    return sorted(entries, key=rank)


def targets_in_order(status: dict, refs: Sequence[Mapping]) -> dict:
    """A BackupSession's status with its targets in spec.members order (as the operator creates them)."""
    if status.get("targets") and refs:
        status = {**status, "targets": in_ref_order(status["targets"], refs)}
    return status


def restore_batch_phase(status: Mapping, members: Sequence[Mapping]) -> str:
    """Running until every member of spec.members has a terminal phase; then Failed if one failed (or a global
    hook did), else Succeeded."""
    phases = [(member_entry(status, ref) or {}).get("phase") for ref in members]
    if not members or any(p not in TERMINAL for p in phases):
        return RUNNING
    if FAILED in phases or any(condition(status, c) is False for c in GLOBAL_RESTORE_HOOKS):
        return FAILED
    return SUCCEEDED


def _with_batch_phase(status: dict, members: Sequence[Mapping], created: str, now: str) -> dict:
    return _settle(status, restore_batch_phase(status, members), created, now)


def _member_phase(entry: Mapping, total_hosts: int) -> str:
    if _hook_failed(entry.get("conditions")):
        return FAILED
    return _hosts_phase(entry.get("stats") or [], int(entry.get("totalHosts") or total_hosts))


def start_restore_member(status: Mapping, ref: Mapping, total_hosts: int, *, members: Sequence[Mapping],
                         created: str, now: str) -> dict:
    """The member's entry Running (with its host count), and the batch Running, before its restore starts."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_member_entry(new, ref, total_hosts, members)
    if entry.get("phase") not in TERMINAL:
        entry["phase"] = RUNNING
    return _with_batch_phase(new, members, created, now)


def set_restore_member_hosts(status: Mapping, ref: Mapping, total_hosts: int, *, members: Sequence[Mapping]) -> dict:
    """A member's host count once its driver has named its hosts (a sharded cluster's)."""
    new = copy.deepcopy(dict(status))
    _ensure_member_entry(new, ref, total_hosts, members)["totalHosts"] = total_hosts
    return new


def record_restore_member_condition(status: Mapping, ref: Mapping, cond: Condition, *, total_hosts: int,
                                    members: Sequence[Mapping], created: str, now: str) -> dict:
    """A hook's condition on the member's entry; a failed hook fails the member (and, once all ended, the batch)."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_member_entry(new, ref, total_hosts, members)
    entry["conditions"] = set_conditions(entry.get("conditions"), [cond], now)
    if _hook_failed(entry["conditions"]):
        entry["phase"] = FAILED
        if new.get("phase") == SUCCEEDED:
            new["phase"] = FAILED  # a post hook runs after the member's restore; its failure fails the batch
    return _with_batch_phase(new, members, created, now)


def record_restore_member_host(status: Mapping, ref: Mapping, host: Mapping, *, total_hosts: int,
                               members: Sequence[Mapping], created: str, now: str) -> dict:
    """A host's result (hostname, phase, duration, error) under its member; member and batch phases follow."""
    new = copy.deepcopy(dict(status))
    entry = _ensure_member_entry(new, ref, total_hosts, members)
    keep = ("hostname", "phase", "duration", "error")
    entry["stats"] = _upsert_host(entry.get("stats") or [], {k: v for k, v in host.items() if k in keep})
    entry["phase"] = _member_phase(entry, total_hosts)
    return _with_batch_phase(new, members, created, now)


# -- Repository ------------------------------------------------------------------------------

def repository_status(status: Mapping, figures: Mapping, *, now: str) -> dict:
    """Stash's Repository status from the post-backup figures (maintenance.PostBackup.repository_json())."""
    new = copy.deepcopy(dict(status))
    new.setdefault("firstBackupTime", now)
    new["lastBackupTime"] = now
    if "integrity" in figures:
        new["integrity"] = bool(figures["integrity"])
    if "size" in figures:
        new["totalSize"] = stash_bytes(int(figures["size"]))
    if "snapshotCount" in figures:
        new["snapshotCount"] = int(figures["snapshotCount"])
    new["snapshotsRemovedOnLastCleanup"] = int(figures.get("snapshotsRemovedOnLastCleanup") or 0)
    return new
