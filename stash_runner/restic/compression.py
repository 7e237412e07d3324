"""zstd as restic uses it: compressed blobs and ``0x02 || zstd(JSON)`` unpacked files (v2 only)."""

from __future__ import annotations

import io
import threading

import zstandard

from stash_runner.errors import BadInput

# Level 1, not 3: on SQL dumps of hashed/random text (make bench) level 3 ran at 83 MB/s a core and
# level 1 at 219 MB/s with the same ratio (~2x); level 3 made the runner slower than pg_dumpall.
DEFAULT_LEVEL = 1
# zstd's own range: ZSTD_minCLevel() (the fastest "negative" level) to ZSTD_maxCLevel(). Outside it the
# compressor raises in a worker thread, after the dump has started: the CLI checks the flag against these.
MIN_LEVEL = -(1 << 17)
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL


def check_level(level: int) -> int:
    """``level`` when zstd takes it; BadInput otherwise."""
    if isinstance(level, bool) or not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise BadInput(f"compression level {level!r}: must be an integer from {MIN_LEVEL} to {MAX_LEVEL}")
    return level


class Compressor:
    """Not thread-safe: make one per worker thread."""

    def __init__(self, level: int = DEFAULT_LEVEL):
        self._c = zstandard.ZstdCompressor(level=check_level(level))

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: making one per call cost more than decompressing a small file (12-29 ms against
    1.5 ms for 1,000 snapshot files), and one may not be shared between threads."""
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def decompress(data: bytes, expected_size: int | None = None) -> bytes:
    """Decompress a zstd frame that may not record its content size (restic's do not)."""
    d = _decompressor()
    if expected_size is not None:
        try:
            out = d.decompress(data, max_output_size=expected_size)
        except zstandard.ZstdError:
            out = None
        if out is not None and len(out) == expected_size:
            return out
    else:
        try:
            obj = d.decompressobj()
            out = obj.decompress(data)
            if obj.eof:
                return out
        except zstandard.ZstdError:
            pass
    # A frame cut short or damaged: the stream reader says what is wrong with it.
    with d.stream_reader(io.BytesIO(data)) as r:
        return r.read()
