"""What the benchmarks' generated documents are made of: a fixed vocabulary (the same on every run, so that
generated data is reproducible) and a few value lists they share."""

from __future__ import annotations

import random

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ber", "dan", "fel", "gor", "hin", "jus", "kel",
              "mar", "nor", "pel", "quin", "ros", "sten", "tal", "ul", "ver", "wen", "xa", "yor", "zel", "an", "el",
              "is", "on")
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "SE", "PL", "ES", "IT", "JP", "BR", "IN", "CA", "AU", "AT", "CH")
STATUSES = ("new", "paid", "packed", "shipped", "delivered", "returned", "cancelled")


def vocabulary(n: int = 4096) -> list[str]:
    """``n`` made-up words of 1 to 4 syllables, sorted, from a fixed seed."""
    rnd = random.Random(7)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rnd.choice(_SYLLABLES) for _ in range(rnd.randint(1, 4))))
    return sorted(words)
