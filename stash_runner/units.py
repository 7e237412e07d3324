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


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.1f} MB/s" if seconds > 0 else "-"
