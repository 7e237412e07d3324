"""Retention policies with exactly restic 0.14's result: grouping, then ``ApplyPolicy`` per group.

Ported from restic 0.14.0: internal/restic/snapshot_policy.go (ExpirePolicy, ApplyPolicy, the bucket
functions, findLatestTimestamp), internal/restic/snapshot_group.go (GroupSnapshots and its key),
internal/restic/duration.go (the ``1y2m3d4h`` durations), internal/restic/tag_list.go and
snapshot.go (``--keep-tag`` lists and HasTags).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stash_runner.errors import BadInput
from stash_runner.restic.snapshot import Snapshot
from stash_runner.restic.timefmt import parse_time

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


# -- times as Go sees them ------------------------------------------------------------------------

@dataclass(frozen=True)
class GoTime:
    """A snapshot time as restic holds it: an instant (ns) plus the wall clock of its stored offset.

    restic computes the buckets (hour, day, ISO week, month, year) from ``time.Time`` as unmarshalled
    from the snapshot's JSON, i.e. in the offset the snapshot was written with, not in UTC; and it
    orders snapshots by instant with nanosecond precision (Python's datetime stops at microseconds).
    """

    instant_ns: int
    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    nanos: int
    offset: int  # seconds east of UTC

    @classmethod
    def parse(cls, s: str) -> GoTime:
        # forget parses each snapshot's time for the policy and again for its table: once is enough.
        return _parse_go_time(s) if cls is GoTime else cls._parse(s)

    @classmethod
    def _parse(cls, s: str) -> GoTime:
        m = _RFC3339.match(s.strip())
        if m is None:
            # Not RFC 3339 as Go writes it; timefmt's lenient parser (microseconds) is the best we can do.
            t = parse_time(s)
            off = int(t.utcoffset().total_seconds()) if t.utcoffset() else 0
            return cls._make(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond * 1000, off)
        y, mo, d, h, mi, sec = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
        nanos = int((m.group(7) or "")[:9].ljust(9, "0"))
        off = 0 if m.group(8) else (int(m.group(10)) * 3600 + int(m.group(11)) * 60) * (-1 if m.group(9) == "-" else 1)
        return cls._make(y, mo, d, h, mi, sec, nanos, off)

    @classmethod
    def _make(cls, y: int, mo: int, d: int, h: int, mi: int, sec: int, nanos: int, off: int) -> GoTime:
        days = dt.date(y, mo, d).toordinal() - _EPOCH_ORDINAL
        instant = ((days * 86400 + h * 3600 + mi * 60 + sec - off) * _NS) + nanos
        return cls(instant, y, mo, d, h, mi, sec, nanos, off)

    def add_date_hours(self, years: int, months: int, days: int, hours: int) -> int:
        """``t.AddDate(years, months, days).Add(hours * time.Hour)`` as an instant.

        Go's Date() normalizes overflowing months and days (31 March minus one month is 3 March), which
        counting days from the first of the normalized month reproduces. The offset stays fixed, as for
        Go's fabricated zones (a stored offset that happens to equal the machine's local zone makes Go
        use time.Local, whose DST rules could shift this by an hour; that depends on where restic runs).
        """
        y, mo0 = divmod((self.year + years) * 12 + (self.month - 1) + months, 12)
        ordinal = dt.date(y, mo0 + 1, 1).toordinal() + (self.day - 1) + days
        secs = (ordinal - _EPOCH_ORDINAL) * 86400 + self.hour * 3600 + self.minute * 60 + self.second - self.offset
        return (secs + hours * 3600) * _NS + self.nanos

    # The bucket functions of snapshot_policy.go, evaluated on the stored wall clock.
    def ymdh(self) -> int:
        return self.year * 1000000 + self.month * 10000 + self.day * 100 + self.hour

    def ymd(self) -> int:
        return self.year * 10000 + self.month * 100 + self.day

    def yw(self) -> int:
        iso_year, week, _ = dt.date(self.year, self.month, self.day).isocalendar()
        return iso_year * 100 + week

    def ym(self) -> int:
        return self.year * 100 + self.month

    def y(self) -> int:
        return self.year


@functools.lru_cache(maxsize=1 << 16)
def _parse_go_time(s: str) -> GoTime:
    return GoTime._parse(s)


# -- durations and tag lists ----------------------------------------------------------------------

@dataclass(frozen=True)
class Duration:
    """restic's Duration: hours, days, months and years, written like ``1y2m3d4h``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, s: str) -> Duration:
        """As restic's ParseDuration: numbers each followed by y, m, d or h; a repeated unit wins last."""
        s = s.strip()
        vals = {"y": 0, "m": 0, "d": 0, "h": 0}
        i = 0
        while i < len(s):
            j = i
            while j < len(s) and s[j].isdigit():
                j += 1
            if j == i:
                raise BadInput(f"invalid duration {s!r}: no number found (negative values are not allowed)")
            if j == len(s):
                raise BadInput(f"invalid duration {s!r}: no unit found after number {s[i:j]}")
            if s[j] not in vals:
                raise BadInput(f"invalid duration {s!r}: invalid unit {s[j]!r} after number {s[i:j]} (use y, m, d, h)")
            vals[s[j]] = int(s[i:j])
            i = j + 1
        return cls(vals["y"], vals["m"], vals["d"], vals["h"])

    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def threshold(self, latest: GoTime | None) -> int | None:
        """The instant a snapshot must be after to be "within" (None: every snapshot is)."""
        if latest is None:
            # restic's latest is then Go's zero time (year 1): every real snapshot is after it.
            return None
        try:
            return latest.add_date_hours(-self.years, -self.months, -self.days, -self.hours)
        except (ValueError, OverflowError):  # before year 1 (Python's dates stop there; Go's do not)
            return None

    def __str__(self) -> str:
        return "".join(f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"),
                                               (self.hours, "h")) if n)


def split_tag_list(value: str) -> tuple[str, ...]:
    """restic's splitTagList: "a, b" is the list [a b]; "" is [""] (which matches untagged snapshots)."""
    return tuple(t.strip() for t in value.split(","))


def has_tags(snapshot_tags: Iterable[str], wanted: Sequence[str]) -> bool:
    """restic's Snapshot.HasTags: all tags of ``wanted``; an empty tag matches a snapshot without tags."""
    have = set(snapshot_tags)
    for tag in wanted:
        if tag == "" and not have:
            return True
        if tag not in have:
            return False
    return True


def _tag_list_str(tags: Sequence[str]) -> str:
    return "[" + ", ".join(tags) + "]"  # TagList.String()


# -- the policy -----------------------------------------------------------------------------------

_WITHIN_BUCKETS = (("within_hourly", "hourly"), ("within_daily", "daily"), ("within_weekly", "weekly"),
                   ("within_monthly", "monthly"), ("within_yearly", "yearly"))


@dataclass(frozen=True)
class Policy:
    """restic's ExpirePolicy. ``tags`` are ``--keep-tag`` values: "a,b" keeps snapshots having a and b.

    ``within*`` are restic durations ("1y2m3d4h") relative to the newest snapshot of the group.
    Negative counts are refused: restic 0.14 accepts them and then keeps nothing of the group.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    tags: tuple[str, ...] = ()
    within: str = ""
    within_hourly: str = ""
    within_daily: str = ""
    within_weekly: str = ""
    within_monthly: str = ""
    within_yearly: str = ""
    # parsed forms, derived from the fields above
    _durations: dict[str, Duration] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < 0:
                raise BadInput(f"--keep-{name}: negative values are not allowed "
                               f"(restic 0.14 would remove every snapshot)")
        # A lone string is one --keep-tag value, not a sequence of one-letter values.
        object.__setattr__(self, "tags", (self.tags,) if isinstance(self.tags, str) else tuple(self.tags))
        for name in ("within", *(n for n, _ in _WITHIN_BUCKETS)):
            self._durations[name] = Duration.parse(getattr(self, name) or "")

    def tag_lists(self) -> list[tuple[str, ...]]:
        return [split_tag_list(v) for v in self.tags]

    def duration(self, name: str) -> Duration:
        return self._durations[name]

    def empty(self) -> bool:
        """restic's ExpirePolicy.Empty(): no count, no duration, no tag list."""
        return (not self.tags and not any((self.last, self.hourly, self.daily, self.weekly, self.monthly,
                                           self.yearly))
                and all(d.zero() for d in self._durations.values()))

    def __str__(self) -> str:
        """As restic 0.14 prints it after "Applying Policy: "."""
        keeps = [f"{n} {what}" for n, what in ((self.last, "latest"), (self.hourly, "hourly"),
                                                (self.daily, "daily"), (self.weekly, "weekly"),
                                                (self.monthly, "monthly"), (self.yearly, "yearly")) if n > 0]
        keepw = [f"{what} snapshots within {self.duration(name)}" for name, what in _WITHIN_BUCKETS
                 if not self.duration(name).zero()]
        s = f"{', '.join(keeps)} snapshots" if keeps else ""
        if keepw:
            s += (", " if s else "") + ", ".join(keepw)
        if self.tags:
            s += (" and " if s else "") + "all snapshots with tags [" + " ".join(
                _tag_list_str(t) for t in self.tag_lists()) + "]"
        if not self.duration("within").zero():
            s += (" and " if s else "") + f"all snapshots within {self.duration('within')} of the newest"
        return "keep " + s


# -- grouping -------------------------------------------------------------------------------------

GROUP_BY_DEFAULT = ("host", "paths")
_GROUP_OPTIONS = {"host": "host", "hosts": "host", "path": "paths", "paths": "paths", "tag": "tags", "tags": "tags"}


def parse_group_by(value: str | Iterable[str]) -> tuple[str, ...]:
    """``host,paths`` (restic's --group-by; '' disables grouping) as a normalized tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if item == "":
            continue
        if item not in _GROUP_OPTIONS:
            raise BadInput(f"--group-by: unknown grouping option {item!r} (use host, paths and/or tags)")
        if _GROUP_OPTIONS[item] not in out:
            out.append(_GROUP_OPTIONS[item])
    return tuple(out)


@dataclass(frozen=True)
class GroupKey:
    """restic's SnapshotGroupKey: only the grouped-by parts are set, paths and tags sorted."""

    hostname: str = ""
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        return {"hostname": self.hostname, "paths": None if self.paths is None else list(self.paths),
                "tags": None if self.tags is None else list(self.tags)}

    def __str__(self) -> str:
        """The key as restic marshals it (also our order of groups: Go's map order is random)."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)


def group_key(snapshot: Snapshot, by: Sequence[str]) -> GroupKey:
    by = parse_group_by(by)
    return GroupKey(
        hostname=snapshot.hostname if "host" in by else "",
        # Go marshals a nil slice as null; a snapshot without paths or tags has nil slices.
        paths=(tuple(sorted(snapshot.paths)) if snapshot.paths else None) if "paths" in by else None,
        tags=(tuple(sorted(snapshot.tags)) if snapshot.tags else None) if "tags" in by else None,
    )


def group(snapshots: Iterable[Snapshot], by: str | Sequence[str] = GROUP_BY_DEFAULT) -> dict[GroupKey, list[Snapshot]]:
    """restic's GroupSnapshots; each group keeps the order of ``snapshots``; groups sorted by key."""
    by = parse_group_by(by)
    groups: dict[GroupKey, list[Snapshot]] = {}
    for s in snapshots:
        groups.setdefault(group_key(s, by), []).append(s)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


# -- ApplyPolicy ----------------------------------------------------------------------------------

@dataclass
class KeepReason:
    """Why a snapshot is kept, with the bucket counters left after it (restic's KeepReason)."""

    snapshot: Snapshot
    matches: list[str]
    counters: dict[str, int]  # last, hourly, daily, weekly, monthly, yearly; zeros left out (omitempty)


def apply_policy(
    snapshots: Iterable[Snapshot], policy: Policy, *, now_ns: int | None = None
) -> tuple[list[Snapshot], list[Snapshot], list[KeepReason]]:
    """restic 0.14's ApplyPolicy: (keep, remove, reasons), keep and remove newest first.

    ``now_ns`` (default: the clock) is only used, as by restic, to ignore snapshots from the future
    when finding the newest snapshot that ``within*`` durations count back from.
    """
    timed = [(GoTime.parse(s.time), s) for s in snapshots]
    # Newest first. Equal instants keep their input order: restic sorts the group as loaded (in
    # directory-listing order, by two workers) with a sort that is stable for small groups, so the
    # listing order is the closest one can come to restic's (itself not deterministic) tie order.
    timed.sort(key=lambda ts: ts[0].instant_ns, reverse=True)
    if policy.empty():
        return ([s for _, s in timed], [],
                [KeepReason(s, ["policy is empty"], {}) for _, s in timed])
    if not timed:
        return [], [], []

    now = time.time_ns() if now_ns is None else now_ns
    past = [t for t, _ in timed if t.instant_ns < now]
    latest = max(past, key=lambda t: t.instant_ns) if past else None

    # [count, bucket function, last bucket value, reason]; "last" buckets by position in the list.
    buckets: list[list] = [
        [policy.last, None, -1, "last snapshot"],
        [policy.hourly, GoTime.ymdh, -1, "hourly snapshot"],
        [policy.daily, GoTime.ymd, -1, "daily snapshot"],
        [policy.weekly, GoTime.yw, -1, "weekly snapshot"],
        [policy.monthly, GoTime.ym, -1, "monthly snapshot"],
        [policy.yearly, GoTime.y, -1, "yearly snapshot"],
    ]
    within_fns = {"within_hourly": GoTime.ymdh, "within_daily": GoTime.ymd, "within_weekly": GoTime.yw,
                  "within_monthly": GoTime.ym, "within_yearly": GoTime.y}
    # [threshold instant (None: all), bucket function, last bucket value, reason]
    buckets_within: list[list] = [
        [policy.duration(name).threshold(latest), within_fns[name], -1, f"{what} within {policy.duration(name)}"]
        for name, what in _WITHIN_BUCKETS if not policy.duration(name).zero()
    ]
    within = policy.duration("within")
    within_after = None if within.zero() else within.threshold(latest)
    tag_lists = policy.tag_lists()

    keep: list[Snapshot] = []
    remove: list[Snapshot] = []
    reasons: list[KeepReason] = []
    for nr, (t, cur) in enumerate(timed):
        matches: list[str] = []
        # Tags are not counted.
        for tl in tag_lists:
            if has_tags(cur.tags, tl):
                matches.append(f"has tags {_tag_list_str(tl)}")
        if not within.zero() and (within_after is None or t.instant_ns > within_after):
            matches.append(f"within {within}")
        for b in buckets:
            if b[0] > 0:
                val = nr if b[1] is None else b[1](t)
                if val != b[2]:
                    b[2] = val
                    b[0] -= 1
                    matches.append(b[3])
        for b in buckets_within:
            if b[0] is None or t.instant_ns > b[0]:
                val = b[1](t)
                if val != b[2]:
                    b[2] = val
                    matches.append(b[3])
        if matches:
            keep.append(cur)
            names = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
            reasons.append(KeepReason(cur, matches, {n: b[0] for n, b in zip(names, buckets, strict=True) if b[0]}))
        else:
            remove.append(cur)
    return keep, remove, reasons
