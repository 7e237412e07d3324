"""prune's sizes: its --max-unused and --max-repack-size values, and restic's way of printing bytes and shares.

Apart from prune itself so that the CLI checks the flags before it opens anything without importing prune's engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stash_runner.errors import BadInput


def parse_size(text: str) -> int:
    """restic's parseSizeStr: bytes, or a number with k/K, m/M, g/G, t/T (binary multiples)."""
    s = text.strip()
    mult = 1
    if s and s[-1] in "kKmMgGtT":
        mult = 1024 ** ("kmgt".index(s[-1].lower()) + 1)
        s = s[:-1]
    try:
        n = int(s)
    except ValueError:
        raise BadInput(f"invalid size {text!r}: use bytes or a number with k, m, g or t") from None
    if n < 0:
        raise BadInput(f"invalid size {text!r}: must not be negative")
    return n * mult


def max_unused_limit(spec: str) -> Callable[[int], float]:
    """``--max-unused`` as restic parses it: maps the used size to the unused bytes tolerated after prune.

    A percentage p is of the total size after prune, hence ``used * p / (100 - p)``.
    """
    s = spec.strip()
    if not s:
        raise BadInput(f"invalid value for --max-unused: {spec!r}")
    if s == "unlimited":
        return lambda used: math.inf
    if s.endswith("%"):
        try:
            p = float(s[:-1])
        except ValueError:
            raise BadInput(f"invalid percentage {spec!r} passed for --max-unused") from None
        if not math.isfinite(p):
            raise BadInput(f"invalid percentage {spec!r} passed for --max-unused")
        if p < 0:
            raise BadInput("percentage for --max-unused must be positive")
        if p >= 100:
            raise BadInput("percentage for --max-unused must be below 100%")
        return lambda used: int(p / (100 - p) * used)
    size = parse_size(s)
    return lambda used: size


# -- formatting (restic's ui.FormatBytes / FormatPercent; they belong in units.py) ---------------

def format_bytes(c: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if c >= 1 << shift:
            return f"{c / (1 << shift):.3f} {unit}"
    return f"{c} B"


def format_percent(numerator: int, denominator: int) -> str:
    if denominator == 0:
        return ""
    return f"{min(100.0, 100.0 * numerator / denominator):3.2f}%"
