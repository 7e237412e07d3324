"""``forget``: remove the snapshots a retention policy does not keep, as ``restic forget`` does.

Flow of restic 0.14's cmd/restic/cmd_forget.go: lock exclusively, load the snapshots (optionally
filtered by host, tags, paths), group them, apply the policy to each group, delete the snapshot files
of the removed ones. Only snapshot files are deleted; their data stays until a prune.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from backends.base import FileType, Handle
from stash_runner.errors import RepositoryError
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot

from .parallel import chunked_map, load_snapshots, workers_for
from .retention import GROUP_BY_DEFAULT, GoTime, GroupKey, KeepReason, Policy, apply_policy, group, has_tags
from .retention import parse_group_by as _parse_group_by
from .retention import split_tag_list as _split_tag_list


@dataclass
class ForgetGroup:
    key: GroupKey
    keep: list[Snapshot]  # newest first, as restic lists them
    remove: list[Snapshot]  # newest first
    reasons: list[KeepReason]  # one per kept snapshot, same order


@dataclass
class ForgetResult:
    policy: Policy
    group_by: tuple[str, ...]
    dry_run: bool
    groups: list[ForgetGroup] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # IDs whose files were deleted (none on a dry run)
    prune: bool = False  # prune was asked for and snapshots were (or, dry run: would be) removed

    @property
    def to_remove(self) -> list[str]:
        return [s.id for g in self.groups for s in g.remove]

    def json(self) -> list[dict]:
        """``restic forget --json``: one object per group (tags, host, paths, keep, remove, reasons)."""
        sort_tags = "tags" in self.group_by
        return [
            {
                "tags": None if g.key.tags is None else list(g.key.tags),
                "host": g.key.hostname,
                "paths": None if g.key.paths is None else list(g.key.paths),
                # Go's nil slices: null, not [].
                "keep": [_snapshot_json(s, sort_tags, with_id=True) for s in g.keep] or None,
                "remove": [_snapshot_json(s, sort_tags, with_id=True) for s in g.remove] or None,
                "reasons": [
                    {"snapshot": _snapshot_json(r.snapshot, sort_tags, with_id=False), "matches": r.matches,
                     "counters": r.counters}
                    for r in g.reasons
                ] or None,
            }
            for g in self.groups
        ]

    def json_text(self) -> str:
        """What restic prints with --json: one line, or nothing at all when there is no group."""
        return go_json(self.json()) + "\n" if self.groups else ""

    def summary(self) -> str:
        """The human-readable report (restic's layout: a table of kept and one of removed snapshots)."""
        if self.policy.empty():
            return "no policy was specified, no snapshots will be removed\n"
        out = [f"Applying Policy: {self.policy}", ""]
        for g in self.groups:
            out.append(_group_header(g.key, self.group_by))
            if g.keep:
                reasons = {id(r.snapshot): r.matches for r in g.reasons}
                out.append(f"keep {len(g.keep)} snapshots:")
                out.append(_table(g.keep, reasons))
            if g.remove:
                out.append(f"remove {len(g.remove)} snapshots:")
                out.append(_table(g.remove, None))
        n = len(self.to_remove)
        if self.dry_run:
            out.append(f"would remove {n} snapshots" + (": " + " ".join(sorted(i[:8] for i in self.to_remove))
                                                         if n else ""))
        else:
            out.append(f"removed {len(self.removed)} snapshots")
        return "\n".join(out) + "\n"


def run_forget(
    repo: Repository,
    policy: Policy,
    *,
    dry_run: bool = False,
    group_by: str | Sequence[str] = GROUP_BY_DEFAULT,
    host: str | Sequence[str] | None = None,
    tag_filter: Sequence[str] = (),
    path_filter: Sequence[str] = (),
    prune: bool = False,
    lock: bool = True,
    lock_wait: float = 0.0,
    now_ns: int | None = None,
) -> ForgetResult:
    """Apply ``policy`` to the repository's snapshots and delete the files of those it removes.

    ``host``, ``tag_filter`` ("a,b" values, any one matching) and ``path_filter`` (all of them) restrict
    which snapshots are considered, as restic's --host/--tag/--path. An empty policy removes nothing (restic:
    "no policy was specified"). ``dry_run`` deletes nothing and takes no lock. ``lock=False`` when the
    caller already holds an exclusive lock (restic runs forget and then prune under one lock).
    ``result.prune`` tells the caller to run prune now (asked for, and snapshots were removed).
    """
    by = _parse_group_by(group_by)
    result = ForgetResult(policy=policy, group_by=by, dry_run=dry_run)
    if policy.empty():
        return result
    hosts = [host] if isinstance(host, str) else list(host or [])
    tag_lists = [_split_tag_list(t) for t in tag_filter]
    # restic 0.14 locks exclusively before it lists: a concurrent backup's snapshot cannot appear
    # half-way, and two forgets cannot race.
    held = contextlib.nullcontext() if dry_run or not lock else RepositoryLock(repo, exclusive=True, wait=lock_wait)
    with held:
        snaps = [
            s for s in load_snapshots(repo)
            if (not hosts or s.hostname in hosts)
            and (not tag_lists or any(has_tags(s.tags, tl) for tl in tag_lists))
            and (not path_filter or set(path_filter) <= set(s.paths))
        ]
        for key, members in group(snaps, by).items():
            keep, remove, reasons = apply_policy(members, policy, now_ns=now_ns)
            result.groups.append(ForgetGroup(key, keep, remove, reasons))
        if not dry_run:
            result.removed = _remove_snapshots(repo, result.to_remove)
    result.prune = prune and bool(result.to_remove)
    return result


def _remove_snapshots(repo: Repository, ids: list[str]) -> list[str]:
    """Delete snapshot files in parallel (as many at once as the backend has connections)."""
    if not ids:
        return []

    def remove(i: str) -> Exception | None:
        try:
            repo.remove(Handle(FileType.SNAPSHOT, i))
        except Exception as e:  # noqa: BLE001 - every failure is reported below, with how many succeeded
            return e
        return None

    workers = workers_for(repo)
    with ThreadPoolExecutor(workers, thread_name_prefix="forget") as pool:
        errors = chunked_map(pool, workers, remove, ids)
    failed = [(i, e) for i, e in zip(ids, errors, strict=True) if e is not None]
    if failed:
        i, err = failed[0]
        raise RepositoryError(
            f"removed {len(ids) - len(failed)} of {len(ids)} snapshots; could not remove {len(failed)}, "
            f"e.g. {i[:8]}: {err}"
        )
    return list(ids)


def _snapshot_json(s: Snapshot, sort_tags: bool, *, with_id: bool) -> dict:
    """A snapshot as restic's forget prints it: GroupSnapshots sorts its paths (and, when grouping by
    tags, its tags) in place before the JSON is written."""
    d = s.to_json()
    d["paths"] = sorted(s.paths)
    if sort_tags and s.tags:
        d["tags"] = sorted(s.tags)
    if with_id:
        d["id"] = s.id
        d["short_id"] = s.short_id
    return d


def go_json(obj: object) -> str:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, >, &, U+2028/9 escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # These characters only ever occur inside strings, so replacing them in the text is safe.
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


def _group_header(key: GroupKey, by: tuple[str, ...]) -> str:
    parts = []
    if "host" in by:
        parts.append(f"host [{key.hostname}]")
    if "paths" in by:
        parts.append(f"paths [{', '.join(key.paths or ())}]")
    if "tags" in by:
        parts.append(f"tags [{', '.join(key.tags or ())}]")
    return f"snapshots for ({', '.join(parts)}):" if parts else "snapshots:"


def _table(snaps: list[Snapshot], reasons: dict[int, list[str]] | None) -> str:
    """restic's snapshot table: oldest first, one line per reason and per path."""
    heads = ["ID", "Time", "Host", "Tags"] + (["Reasons"] if reasons is not None else []) + ["Paths"]
    rows: list[list[list[str]]] = []
    for s in reversed(snaps):
        t = GoTime.parse(s.time)
        cells = [[s.short_id], [f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"],
                 [s.hostname], [",".join(s.tags)]]
        if reasons is not None:
            cells.append(reasons.get(id(s), []))
        cells.append(sorted(s.paths))
        rows.append(cells)
    widths = [max([len(h)] + [len(line) for r in rows for line in r[c]]) for c, h in enumerate(heads)]

    # One format for every line (a forget of 1,000 snapshots prints 1,000 rows).
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)

    def line(values: list[str]) -> str:
        return fmt.format(*values).rstrip()

    out = [line(heads), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    for r in rows:
        n = max(len(c) for c in r)
        if n <= 1:
            out.append(line([c[0] if c else "" for c in r]))
            continue
        for k in range(n):
            out.append(line([c[k] if k < len(c) else "" for c in r]))
    out += [out[1], f"{len(snaps)} snapshots", ""]
    return "\n".join(out)
