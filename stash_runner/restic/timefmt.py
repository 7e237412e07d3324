"""Timestamps as restic writes them (Go's RFC 3339 with nanoseconds) and reads them back."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_FRACTION = re.compile(r"\.(\d+)")


def now() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """RFC 3339 with the fraction Go would print (trailing zeros dropped)."""
    s = t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        s += f".{t.microsecond:06d}".rstrip("0")
    return s + "Z"


def display_time(t: datetime) -> str:
    """A time for people, as `restic snapshots` prints it (this machine's local time, "2006-01-02 15:04:05"),
    plus the zone restic leaves out ("UTC", "CET", "+0530"): snapshots written anywhere read alike."""
    local = t.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or local.strftime('%z')}"


def parse_time(s: str) -> datetime:
    """Parse restic's times: any fraction length (Go writes up to 9 digits), 'Z' or an offset."""
    s = s.replace("Z", "+00:00").replace("z", "+00:00")
    s = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], s, count=1)
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t


def go_duration(seconds: float) -> str:
    """A duration the way Go's time.Duration.String() prints it, as Stash's status carries it."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.3f}".rstrip("0").rstrip(".") + "ms"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    out = ""
    if h >= 1:
        out += f"{int(h)}h"
    if h >= 1 or m >= 1:
        out += f"{int(m)}m"
    return out + (f"{s:.9f}".rstrip("0").rstrip(".") or "0") + "s"


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(s: str) -> float:
    """Seconds of a Go duration string ("2h30m", "90s", "1.5h"), as Stash's ``timeOut`` fields carry them.

    Raises ValueError for anything Go's time.ParseDuration would refuse (also a sign: a timeout is positive).
    """
    text = s.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _GO_DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {s!r} (e.g. 30m, 2h, 1h30m)")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return total
