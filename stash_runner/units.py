"""Sizes and speeds for people, and Stash's own formats for status fields."""


def stash_bytes(c: int) -> str:
    """Stash's formatBytes: '%.3f MiB' and friends, as its status and metrics parsers expect."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if c > 1 << shift:
            return f"{c / (1 << shift):.3f} {unit}"
    return f"{c} B"


def stash_seconds(sec: float) -> str:
    """Stash's formatSeconds: 'm:ss' or 'h:mm:ss'."""
    s = int(sec)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_stash_bytes(s: str) -> int:
    """The inverse of stash_bytes ("3.408 MiB" -> bytes), for output.json files Stash's images wrote."""
    number, _, unit = str(s).strip().partition(" ")
    try:
        return round(float(number) * _UNITS[unit or "B"])
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {s!r}") from None


def parse_stash_seconds(s: str) -> float:
    """The inverse of stash_seconds ("1:05" or "1:02:05")."""
    try:
        parts = [int(p) for p in str(s).strip().split(":")]
    except ValueError:
        raise ValueError(f"not a processing time: {s!r}") from None
    total = 0
    for p in parts:
        total = total * 60 + p
    return float(total)


def rate(nbytes: int, seconds: float) -> str:
    """A speed in the unit that fits it (B/s up to GiB/s, binary as the sizes beside it), so that a small run
    reads "36.2 KiB/s" rather than "0.0 MB/s"; "-" without a duration."""
    if seconds <= 0:
        return "-"
    per_second = nbytes / seconds
    for shift, unit in ((30, "GiB/s"), (20, "MiB/s"), (10, "KiB/s")):
        if per_second >= 1 << shift:
            return f"{per_second / (1 << shift):.1f} {unit}"
    return f"{per_second:.0f} B/s"
