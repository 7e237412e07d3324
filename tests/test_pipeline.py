"""The backup pipeline's own account of its time, and the dump tool's pipe read in large pieces."""

from __future__ import annotations

import hashlib
import io
import sys
import time

from backends.local import LocalBackend
from drivers.process import DumpProcess
from stash_runner.restic.archiver import Archiver
from stash_runner.restic.repository import Repository

from .helpers import REPO_PASSWORD


class _SlowStream:
    """A stream whose every read waits, as a pipe from a slow dump tool does."""

    def __init__(self, data: bytes, pause: float):
        self._f = io.BytesIO(data)
        self._pause = pause

    def readinto(self, b) -> int:
        time.sleep(self._pause)
        return self._f.readinto(memoryview(b)[:64 << 10])  # a pipe gives at most what it holds


def test_the_archiver_says_where_the_time_went(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), REPO_PASSWORD)
    data = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(100_000))  # 6.4 MB
    with Archiver(repo, workers=2) as a:
        # pyfastcdc fills a 16 MiB buffer, one read at a time: 6.4 MB in 64 KiB reads is ~100 of them.
        a.add_stream("dumpfile.sql", _SlowStream(data, 0.005))
        result = a.commit(hostname="h", paths=["/dumpfile.sql"])
    st = result.stats
    assert st.read_wait >= 0.4  # ~100 reads of 5 ms, all waited for
    assert 0 < st.worker_busy <= st.workers * st.elapsed
    assert st.worker_wait >= 0 and st.workers == 2
    line = st.pipeline()
    assert line.startswith(f"the reader waited {st.read_wait:.2f} s for the dump tool and ")
    assert f"for 2 workers, which were busy {st.worker_busy:.2f} s of " in line


class _CountingReader:
    def __init__(self, stream):
        self._stream = stream
        self.calls = 0

    def read_all(self) -> bytes:
        out = bytearray()
        buf = bytearray(4 << 20)
        while n := self._stream.readinto(buf):
            self.calls += 1
            out += buf[:n]
        return bytes(out)


def test_a_dump_tools_small_writes_are_read_in_large_pieces():
    # 2,000 writes of 4 KiB, a little apart, as pg_dump writes its output: read as they come, that is a read
    # (and a wake-up) per write; after a short read the reader lets the pipe fill, so far fewer reads.
    writer = ("import os, sys, time\n"
              "for i in range(2000):\n"
              "    os.write(1, bytes([i % 251]) * 4096)\n"
              "    time.sleep(0.0002) if i % 4 == 0 else None\n")
    with DumpProcess([sys.executable, "-c", writer], {}, "/dumpfile") as dump:
        reader = _CountingReader(dump.stream)
        data = reader.read_all()
        dump.finish()
    assert data == b"".join(bytes([i % 251]) * 4096 for i in range(2000))
    assert dump.stream.total == len(data) and dump.stream.tail == data[-4096:] and dump.stream.head == data[:4096]
    assert reader.calls <= 400, reader.calls
