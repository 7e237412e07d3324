"""zstd as restic uses it: compressed blobs and ``0x02 || zstd(JSON)`` unpacked files (v2 only)."""

from __future__ import annotations

import io

import zstandard

# Level 1, not 3: on SQL dumps of hashed/random text (make bench) level 3 ran at 83 MB/s a core and
# level 1 at 219 MB/s with the same ratio (~2x); level 3 made the runner slower than pg_dumpall.
DEFAULT_LEVEL = 1


class Compressor:
    """Not thread-safe: make one per worker thread."""

    def __init__(self, level: int = DEFAULT_LEVEL):
        self._c = zstandard.ZstdCompressor(level=level)

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)


def decompress(data: bytes, expected_size: int | None = None) -> bytes:
    """Decompress a zstd frame that may not record its content size (restic's do not)."""
    d = zstandard.ZstdDecompressor()
    if expected_size is not None:
        try:
            out = d.decompress(data, max_output_size=expected_size)
        except zstandard.ZstdError:
            out = None
        if out is not None and len(out) == expected_size:
            return out
    with d.stream_reader(io.BytesIO(data)) as r:
        return r.read()
