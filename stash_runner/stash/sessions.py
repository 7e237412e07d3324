"""The operator's objects that start a run: a BackupSession and its invoker, or a RestoreSession.

Read through any ObjectSource (the Kubernetes API or ``--objects`` files), as typed views. A missing or
malformed field is a BadInput naming the object and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stash_runner.errors import BadInput
from stash_runner.hooks.spec import Hooks, parse_hooks
from stash_runner.maintenance.retention import Policy
from stash_runner.restic.timefmt import parse_go_duration

from .objects import ObjectSource, field_at, namespace_and_name

STASH_GROUP = "stash.appscode.com"
BACKUP_INVOKERS = ("BackupConfiguration", "BackupBatch")


@dataclass(frozen=True)
class ObjectRef:
    """A target reference as Stash writes it into status: apiVersion, kind, name (namespace when set)."""

    api_version: str
    kind: str
    name: str
    namespace: str = ""

    def json(self) -> dict:
        out = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        return out

    @classmethod
    def from_json(cls, d: Mapping, ref: str, path: str) -> ObjectRef:
        if not isinstance(d, Mapping) or not d.get("kind") or not d.get("name"):
            raise BadInput(f"{ref}: {path}.kind and {path}.name are required")
        return cls(str(d.get("apiVersion") or ""), str(d["kind"]), str(d["name"]), str(d.get("namespace") or ""))


def _params(task: object) -> dict[str, str]:
    """A Task's params, ``[{name, value}]``, as a mapping (Stash fills ``${name}`` in a Function's args)."""
    out: dict[str, str] = {}
    params = task.get("params") if isinstance(task, dict) else None
    for p in params if isinstance(params, list) else []:
        if isinstance(p, dict) and p.get("name"):
            out[str(p["name"])] = str(p.get("value") if p.get("value") is not None else "")
    return out


def _timeout(spec: dict, ref: str) -> float | None:
    value = spec.get("timeOut")
    if not value:
        return None
    try:
        seconds = parse_go_duration(str(value))
    except ValueError as e:
        raise BadInput(f"{ref}: spec.timeOut: {e}") from None
    if seconds <= 0:
        raise BadInput(f"{ref}: spec.timeOut must be positive")
    return seconds


@dataclass(frozen=True)
class BackupTarget:
    ref: ObjectRef
    alias: str = ""
    #: the member's Task params (args, backupCMD, waitTimeout, ...)
    params: Mapping[str, str] = field(default_factory=dict)
    #: the size its interimVolumeTemplate requests ("1Gi"), which Stash's Elasticsearch addon writes to meta.txt
    interim_volume_size: str = ""
    #: its own (local) preBackup/postBackup hooks
    hooks: Hooks = field(default_factory=Hooks)


def _member(member: object, ref: str, path: str) -> BackupTarget:
    if not isinstance(member, dict) or not isinstance(member.get("target"), dict):
        raise BadInput(f"{ref}: {path}.target is missing")
    target = member["target"]
    return BackupTarget(ObjectRef.from_json(target.get("ref"), ref, f"{path}.target.ref"),
                        str(target.get("alias") or ""), _params(member.get("task")),
                        _interim_volume_size(member.get("interimVolumeTemplate"), ref, path),
                        parse_hooks(member.get("hooks"), f"{ref}: {path}.hooks", restore=False))


def _interim_volume_size(template: object, ref: str, path: str) -> str:
    """The template's spec.resources.requests.storage: the PVC the operator makes from it requests the same, so
    it is read here rather than from the PVC (which the backup Job's ClusterRole may not allow reading)."""
    if not template:
        return ""
    if not isinstance(template, dict):
        raise BadInput(f"{ref}: {path}.interimVolumeTemplate must be a mapping")
    size = (((template.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    return str(size or "")


@dataclass(frozen=True)
class Retention:
    policy: Policy = field(default_factory=Policy)
    prune: bool = False
    dry_run: bool = False
    name: str = ""

    @classmethod
    def from_spec(cls, spec: object, ref: str) -> Retention:
        if not spec:
            return cls()
        if not isinstance(spec, dict):
            raise BadInput(f"{ref}: spec.retentionPolicy must be a mapping")
        counts = {}
        for key, attr in (("keepLast", "last"), ("keepHourly", "hourly"), ("keepDaily", "daily"),
                          ("keepWeekly", "weekly"), ("keepMonthly", "monthly"), ("keepYearly", "yearly")):
            value = spec.get(key) or 0
            if not isinstance(value, int) or value < 0:
                raise BadInput(f"{ref}: spec.retentionPolicy.{key} must be a non-negative number")
            counts[attr] = value
        tags = spec.get("keepTags") or []
        if not isinstance(tags, list):
            raise BadInput(f"{ref}: spec.retentionPolicy.keepTags must be a list")
        # Stash passes each tag as its own --keep-tag: a snapshot with any one of them is kept.
        policy = Policy(**counts, tags=tuple(str(t) for t in tags))
        return cls(policy, bool(spec.get("prune")), bool(spec.get("dryRun")), str(spec.get("name") or ""))


@dataclass(frozen=True)
class BackupInvoker:
    """A BackupConfiguration (one target) or BackupBatch (its members), and what they share."""

    kind: str
    name: str
    namespace: str
    repository: str
    repository_namespace: str
    targets: tuple[BackupTarget, ...]
    retention: Retention = field(default_factory=Retention)
    timeout: float | None = None
    #: a BackupBatch's global hooks (a BackupConfiguration's hooks are its one target's)
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def target(self, name: str = "", kind: str = "") -> BackupTarget:
        """The target this run backs up: the one named (Stash's TARGET_NAME), or the only one."""
        if name:
            for t in self.targets:
                if t.ref.name == name and (not kind or t.ref.kind == kind):
                    return t
            raise BadInput(f"{self.ref}: no target named {name!r} "
                           f"(targets: {', '.join(t.ref.name for t in self.targets) or 'none'})")
        if len(self.targets) != 1:
            raise BadInput(f"{self.ref}: {len(self.targets)} targets; say which one with --appbinding/--target-name")
        return self.targets[0]

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> BackupInvoker:
        ns, name = namespace_and_name(obj, namespace)
        kind = obj.get("kind") or "BackupConfiguration"
        ref = f"{kind} {ns}/{name}"
        spec = field_at(obj, "spec", ref, kind=dict)
        repo = field_at(obj, "spec.repository.name", ref, kind=str)
        repo_ns = (spec.get("repository") or {}).get("namespace") or ns
        hooks = Hooks()
        if kind == "BackupBatch":
            members = field_at(obj, "spec.members", ref, kind=list)
            targets = tuple(_member(m, ref, f"spec.members[{i}]") for i, m in enumerate(members))
            hooks = parse_hooks(spec.get("hooks"), f"{ref}: spec.hooks", restore=False)
        else:  # a BackupConfiguration's spec has a member's shape: target, task and hooks
            targets = (_member(spec, ref, "spec"),)
        return cls(kind, name, ns, repo, repo_ns, targets, Retention.from_spec(spec.get("retentionPolicy"), ref),
                   _timeout(spec, ref), hooks)


@dataclass(frozen=True)
class BackupSession:
    namespace: str
    name: str
    uid: str
    created: str
    invoker_kind: str
    invoker_name: str
    retry_left: int | None = None
    obj: dict = field(default_factory=dict, repr=False, compare=False)  # as read, for Events

    @property
    def ref(self) -> str:
        return f"BackupSession {self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> BackupSession:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"BackupSession {ns}/{name}"
        kind = field_at(obj, "spec.invoker.kind", ref, kind=str)
        if kind not in BACKUP_INVOKERS:
            raise BadInput(f"{ref}: spec.invoker.kind {kind!r}: not one of {', '.join(BACKUP_INVOKERS)}")
        meta = obj.get("metadata") or {}
        retry = (obj.get("spec") or {}).get("retryLeft")
        return cls(ns, name, str(meta.get("uid") or ""), str(meta.get("creationTimestamp") or ""), kind,
                   field_at(obj, "spec.invoker.name", ref, kind=str), retry if isinstance(retry, int) else None, obj)

    def invoker(self, source: ObjectSource) -> BackupInvoker:
        return BackupInvoker.from_object(source.get(self.invoker_kind, self.namespace, self.invoker_name),
                                         self.namespace)


def read_backup_session(source: ObjectSource, namespace: str, name: str) -> BackupSession:
    return BackupSession.from_object(source.get("BackupSession", namespace, name), namespace)


@dataclass(frozen=True)
class RestoreRule:
    target_hosts: tuple[str, ...] = ()
    source_host: str = ""
    snapshots: tuple[str, ...] = ()

    def applies_to(self, hostname: str) -> bool:
        return not self.target_hosts or hostname in self.target_hosts


@dataclass(frozen=True)
class RestoreSession:
    namespace: str
    name: str
    uid: str
    created: str
    repository: str
    repository_namespace: str
    target: ObjectRef | None
    rules: tuple[RestoreRule, ...] = ()
    timeout: float | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    obj: dict = field(default_factory=dict, repr=False, compare=False)
    #: its preRestore/postRestore hooks
    hooks: Hooks = field(default_factory=Hooks)
    #: the object this restore reports to: a RestoreSession, or the RestoreBatch a member belongs to (``name`` is
    #: then the batch's), and where its target lies in that object's spec (for messages)
    invoker_kind: str = "RestoreSession"
    target_path: str = "spec.target"

    @property
    def ref(self) -> str:
        return f"{self.invoker_kind} {self.namespace}/{self.name}"

    def rule_for(self, hostname: str) -> RestoreRule:
        """Stash's rule choice: the first rule naming this host, else the first with no targetHosts."""
        for rule in self.rules:
            if hostname in rule.target_hosts:
                return rule
        for rule in self.rules:
            if not rule.target_hosts:
                return rule
        if self.rules:
            raise BadInput(f"{self.ref}: {self.target_path}.rules: no rule for host {hostname!r}")
        return RestoreRule()

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> RestoreSession:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"RestoreSession {ns}/{name}"
        spec = field_at(obj, "spec", ref, kind=dict)
        repo = field_at(obj, "spec.repository.name", ref, kind=str)
        repo_ns = (spec.get("repository") or {}).get("namespace") or ns
        target = spec.get("target") or {}
        if not isinstance(target, dict):
            raise BadInput(f"{ref}: spec.target must be a mapping")
        tref = ObjectRef.from_json(target["ref"], ref, "spec.target.ref") if target.get("ref") else None
        meta = obj.get("metadata") or {}
        return cls(ns, name, str(meta.get("uid") or ""), str(meta.get("creationTimestamp") or ""), repo, repo_ns,
                   tref, _rules(target, ref, "spec.target"), _timeout(spec, ref), _params(spec.get("task")), obj,
                   parse_hooks(spec.get("hooks"), f"{ref}: spec.hooks", restore=True))


def _rules(target: dict, ref: str, path: str) -> tuple[RestoreRule, ...]:
    """A restore target's ``rules`` (a RestoreSession's spec.target, a RestoreBatch member's target)."""
    rules = []
    if not isinstance(target.get("rules") or [], list):
        raise BadInput(f"{ref}: {path}.rules must be a list")
    for i, r in enumerate(target.get("rules") or []):
        if not isinstance(r, dict):
            raise BadInput(f"{ref}: {path}.rules[{i}] must be a mapping")
        hosts, snaps = r.get("targetHosts") or [], r.get("snapshots") or []
        if not isinstance(hosts, list) or not isinstance(snaps, list):
            raise BadInput(f"{ref}: {path}.rules[{i}]: targetHosts and snapshots must be lists")
        rules.append(RestoreRule(tuple(map(str, hosts)), str(r.get("sourceHost") or ""), tuple(map(str, snaps))))
    return tuple(rules)


def read_restore_session(source: ObjectSource, namespace: str, name: str) -> RestoreSession:
    return RestoreSession.from_object(source.get("RestoreSession", namespace, name), namespace)


#: a batch's spec.executionOrder (Stash's default: Parallel)
PARALLEL, SEQUENTIAL = "Parallel", "Sequential"


def execution_order(spec: Mapping, ref: str) -> str:
    """A BackupBatch's or RestoreBatch's spec.executionOrder: Parallel (the default) or Sequential."""
    order = spec.get("executionOrder") or PARALLEL
    if order not in (PARALLEL, SEQUENTIAL):
        raise BadInput(f"{ref}: spec.executionOrder: {order!r} is not one of {PARALLEL}, {SEQUENTIAL}")
    return str(order)


@dataclass(frozen=True)
class RestoreMember:
    """One member of a RestoreBatch: its alias (the host it restores as) and the rest as a RestoreSession of its
    own (the batch's repository, its target, rules, task params and local hooks), so that a member restores
    exactly as a RestoreSession does."""

    alias: str
    session: RestoreSession


@dataclass(frozen=True)
class RestoreBatch:
    """A RestoreBatch (Stash Enterprise): members restored from one repository, global hooks, an order."""

    namespace: str
    name: str
    repository: str
    repository_namespace: str
    members: tuple[RestoreMember, ...]
    execution_order: str = PARALLEL
    timeout: float | None = None
    #: the global preRestore/postRestore hooks
    hooks: Hooks = field(default_factory=Hooks)
    uid: str = ""
    created: str = ""
    obj: dict = field(default_factory=dict, repr=False, compare=False)  # as read, for Events

    @property
    def ref(self) -> str:
        return f"RestoreBatch {self.namespace}/{self.name}"

    @property
    def refs(self) -> list[ObjectRef]:
        """The members' targets in spec.members order (the order of status.members)."""
        return [m.session.target for m in self.members if m.session.target is not None]

    def member(self, name: str = "", kind: str = "") -> RestoreMember:
        """The member a Job restores: the one whose target is named (Stash's TARGET_NAME), or the only one."""
        if name:
            for m in self.members:
                t = m.session.target
                if t is not None and t.name == name and (not kind or t.kind == kind):
                    return m
            raise BadInput(f"{self.ref}: no member with target {name!r} "
                           f"(members: {', '.join(t.name for t in self.refs) or 'none'})")
        if len(self.members) != 1:
            raise BadInput(f"{self.ref}: {len(self.members)} members; say which one with --appbinding/--target-name")
        return self.members[0]

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> RestoreBatch:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"RestoreBatch {ns}/{name}"
        spec = field_at(obj, "spec", ref, kind=dict)
        repo = field_at(obj, "spec.repository.name", ref, kind=str)
        repo_ns = (spec.get("repository") or {}).get("namespace") or ns
        meta = obj.get("metadata") or {}
        uid, created = str(meta.get("uid") or ""), str(meta.get("creationTimestamp") or "")
        timeout = _timeout(spec, ref)
        members = []
        for i, m in enumerate(field_at(obj, "spec.members", ref, kind=list)):
            path = f"spec.members[{i}]"
            if not isinstance(m, dict) or not isinstance(m.get("target"), dict):
                raise BadInput(f"{ref}: {path}.target is missing")
            target = m["target"]
            # Named, timed and reported as the batch: a member's Job writes to the RestoreBatch's status.
            session = RestoreSession(ns, name, uid, created, repo, repo_ns,
                                     ObjectRef.from_json(target.get("ref"), ref, f"{path}.target.ref"),
                                     _rules(target, ref, f"{path}.target"), timeout, _params(m.get("task")), obj,
                                     parse_hooks(m.get("hooks"), f"{ref}: {path}.hooks", restore=True),
                                     "RestoreBatch", f"{path}.target")
            members.append(RestoreMember(str(target.get("alias") or ""), session))
        return cls(ns, name, repo, repo_ns, tuple(members), execution_order(spec, ref), timeout,
                   parse_hooks(spec.get("hooks"), f"{ref}: spec.hooks", restore=True), uid, created, obj)


def read_restore_batch(source: ObjectSource, namespace: str, name: str) -> RestoreBatch:
    return RestoreBatch.from_object(source.get("RestoreBatch", namespace, name), namespace)
