"""Random irreducible polynomials over GF(2), as restic's chunker keeps in the repository config.

restic refuses a config whose polynomial is reducible, so a repository we initialise must carry a
real one even though our own chunker (FastCDC) does not use it.
"""

from __future__ import annotations

import os

DEGREE = 53


def _deg(p: int) -> int:
    return p.bit_length() - 1


def _mod(x: int, m: int) -> int:
    dm = _deg(m)
    while x and _deg(x) >= dm:
        x ^= m << (_deg(x) - dm)
    return x


def _mulmod(a: int, b: int, m: int) -> int:
    result = 0
    while b:
        if b & 1:
            result ^= a
        a <<= 1
        b >>= 1
    return _mod(result, m)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, _mod(a, b)
    return a


def _x_pow_2p_minus_x(p: int, g: int) -> int:
    """(x^(2^p) - x) mod g, by p repeated squarings of x."""
    res = 2
    for _ in range(p):
        res = _mulmod(res, res, g)
    return _mod(res ^ 2, g)


def is_irreducible(p: int) -> bool:
    """Ben-Or's test, the one restic's chunker package uses."""
    return all(_gcd(p, _x_pow_2p_minus_x(i, p)) == 1 for i in range(1, _deg(p) // 2 + 1))


def random_polynomial() -> int:
    for _ in range(1_000_000):
        f = int.from_bytes(os.urandom(8), "little") & ((1 << (DEGREE + 1)) - 1)
        f |= (1 << DEGREE) | 1
        if is_irreducible(f):
            return f
    raise RuntimeError("no irreducible polynomial found")
