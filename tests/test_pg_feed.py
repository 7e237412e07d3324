"""drivers/postgres.py feed: the dump written into the restore tool from a thread of its own, byte for byte, and
every way it can end (the tool stops reading, fails, or the stream fails) reported as before."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from drivers import postgres
from drivers.postgres import feed
from stash_runner.errors import IntegrityError, ToolFailed


def _chunks(total: int, seed: int = 1) -> list[bytes]:
    """Chunks of uneven sizes (1 byte to several MiB), as blobs come out of a repository."""
    out, n, i = [], 0, 0
    sizes = [1, 7, 65536, 3 << 20, 1 << 20, 300_000, 9 << 20, 12345]
    while n < total:
        size = min(sizes[i % len(sizes)], total - n)
        out.append(hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32) + b"x" * (size % 32))
        n += size
        i += 1
    return out


def _where(seen: list):
    def where(line, consumed):
        seen.append((line, consumed))
        return f"consumed {consumed}"
    return where


def test_feed_writes_every_byte_in_order(tmp_path):
    chunks = _chunks(60 << 20)  # more than the write-ahead queue holds
    out = tmp_path / "out"
    feed(["sh", "-c", f"cat > {out}"], dict(os.environ), iter(chunks), where=_where([]))
    assert out.read_bytes() == b"".join(chunks)


def test_feed_with_a_slow_reader(tmp_path):
    """The writer waits for the tool: the queue stays bounded, nothing is lost."""
    chunks = _chunks(6 << 20, seed=2)
    out = tmp_path / "out"
    script = ("import sys, time\nwith open(sys.argv[1], 'wb') as f:\n"
              "    while data := sys.stdin.buffer.read(65536):\n        f.write(data)\n        time.sleep(0.002)\n")
    feed([sys.executable, "-c", script, str(out)], dict(os.environ), iter(chunks), where=_where([]))
    assert out.read_bytes() == b"".join(chunks)


def test_tool_that_fails_early(tmp_path):
    seen: list = []
    with pytest.raises(ToolFailed, match="exited with code 3") as e:
        feed(["sh", "-c", "head -c 1000 > /dev/null; echo boom >&2; exit 3"], dict(os.environ),
             iter(_chunks(40 << 20)), where=_where(seen))
    assert "boom" in str(e.value)
    assert seen and seen[0][1] is not None and 1000 <= seen[0][1] <= 40 << 20


def test_tool_that_stops_reading_but_succeeds():
    with pytest.raises(ToolFailed, match="exited before it read the whole dump"):
        feed(["true"], dict(os.environ), iter(_chunks(40 << 20)), where=_where([]))


def test_stream_failure_reports_what_the_tool_read(tmp_path):
    out = tmp_path / "out"
    sent = []

    def stream():
        for c in _chunks(20 << 20, seed=3):
            sent.append(len(c))
            yield c
        raise IntegrityError("blob damaged")

    seen: list = []
    with pytest.raises(IntegrityError, match="blob damaged; consumed") as e:
        feed(["sh", "-c", f"cat > {out}"], dict(os.environ), stream(), where=_where(seen))
    consumed = seen[0][1]
    assert consumed is not None and 0 <= consumed <= sum(sent)
    assert str(consumed) in str(e.value)


def test_small_write_ahead_still_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "_WRITE_AHEAD", 1)
    monkeypatch.setattr(postgres, "_WRITE_PIECE", 4096)
    chunks = _chunks(5 << 20, seed=4)
    out = tmp_path / "out"
    feed(["sh", "-c", f"cat > {out}"], dict(os.environ), iter(chunks), where=_where([]))
    assert out.read_bytes() == b"".join(chunks)
