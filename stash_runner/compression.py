"""zstd as restic uses it: compressed blobs and ``0x02 || zstd(JSON)`` unpacked files (v2 only)."""

from __future__ import annotations

import io

import zstandard

# restic's "auto" is zstd's fastest-but-default-ish level; level 3 gives its ratio at ~450 MB/s a thread.
DEFAULT_LEVEL = 3


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
