"""The single-core cost of a backup's repository stages (chunking, SHA-256, zstd, encryption), measured the same
way by every benchmark on the bytes its dump produced."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: a benchmark's row recorder: (key, stage, bytes, the timed function, what it is)
Row = Callable[[str, str, int, Callable[[], object], str], None]


@dataclass
class Staged:
    """What the stages made of the data, for the restore side's stages a benchmark may time after."""

    chunks: list[bytes]
    packed: list[bytes]  # compressed
    sealed: list[bytes]  # encrypted
    key: Any  # the restic/crypto Key that sealed them

    @property
    def ratio(self) -> float:
        return sum(map(len, self.packed)) / sum(map(len, self.chunks))


def repository_stages(data: bytes, level: int, row: Row) -> Staged:
    """Time each stage on ``data`` through ``row``."""
    import pyfastcdc

    from stash_runner.restic import compression
    from stash_runner.restic.archiver import AVG_CHUNK, MAX_CHUNK, MIN_CHUNK
    from stash_runner.restic.crypto import Key

    chunks: list[bytes] = []

    def chunk() -> None:
        cdc = pyfastcdc.FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        for c in cdc.cut_stream(io.BytesIO(data)):
            chunks.append(bytes(c.data))

    row("chunk", "FastCDC chunking + copy", len(data), chunk,
        "restic/archiver.py add_stream (pyfastcdc), in MainThread")
    row("sha", "SHA-256", len(data), lambda: [hashlib.sha256(c).digest() for c in chunks], "blob IDs")
    comp = compression.Compressor(level)
    packed: list[bytes] = []
    row("zstd", f"zstd level {level}", len(data), lambda: packed.extend(comp.compress(c) for c in chunks),
        "restic/compression.py Compressor")
    ratio = sum(map(len, packed)) / len(data)
    key = Key.random()
    sealed: list[bytes] = []
    row("encrypt", "AES-256-CTR + Poly1305", sum(map(len, packed)),
        lambda: sealed.extend(key.encrypt(p) for p in packed),
        f"restic/crypto.py Key.encrypt, of the compressed bytes (ratio {ratio:.2f})")
    return Staged(chunks, packed, sealed, key)
