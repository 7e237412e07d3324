"""Whatever is piped to stdin, backed up as one file: ``backup --stdin`` (as ``restic backup --stdin``), for the
databases (and anything else) this version has no driver for: ``mysqldump ... | stash-runner backup --stdin``.

No AppBinding: the bytes come from the pipe, so there is nothing to connect to. Waiting for the database is
waiting for the first byte; an input that ends before it is an error, as in restic 0.14 ("snapshot is empty"),
so that a producer that failed at once does not leave an empty snapshot behind. A producer that fails part-way
cannot be told from one that finished: the shell knows its exit status (``set -o pipefail``), this process does not.
"""

from __future__ import annotations

import contextlib
import io
import select
from collections.abc import Iterable, Iterator
from typing import BinaryIO, cast

from stash_runner.errors import BadInput, DatabaseUnreachable

from .base import Driver, DriverOptions, Endpoint, Item

#: restic's default for --stdin-filename
DEFAULT_FILENAME = "stdin"


def snapshot_path(filename: str) -> str:
    """The path ``filename`` is stored under ("/stdin", "/db/all.sql"); BadInput for a name that is no path."""
    parts = [p for p in filename.strip().split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or "\0" in filename:
        raise BadInput(f"--stdin-filename {filename!r}: not a file name (e.g. dump.sql, or mysql/all.sql)")
    return "/" + "/".join(parts)


class _StdinDump:
    def __init__(self, path: str, stream: BinaryIO):
        self.path, self.stream = path, stream

    def items(self) -> Iterable[Item]:
        return [Item(self.path, stream=self.stream)]

    def finish(self) -> None:
        """Nothing to check: an end of input is the end of the dump (see the module's note on pipefail)."""


class StdinDriver(Driver):
    """One file from a byte stream (stdin); backup only."""

    def __init__(self, stream: BinaryIO | None, filename: str = DEFAULT_FILENAME):
        self.path = snapshot_path(filename)
        self.filename = self.path.lstrip("/")
        self.target = "stdin"
        if stream is not None and not hasattr(stream, "peek"):
            stream = cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, stream)))
        self.stream = stream

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> StdinDriver:
        raise BadInput(f"{endpoint.ref}: --stdin reads no AppBinding (the data comes from the pipe)")

    def wait_ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the first byte (a dump tool may take a while to start writing). Checked
        before the repository is created or locked: a bad input writes nothing."""
        if self.stream is None or self.stream.closed:
            raise BadInput("--stdin: stdin is closed; pipe the data in (e.g. mysqldump ... | stash-runner backup "
                           "--stdin ...)")
        if self.stream.isatty():
            raise BadInput("--stdin: stdin is a terminal; pipe the data in (e.g. mysqldump ... | stash-runner "
                           "backup --stdin ...)")
        fd = _fileno(self.stream)
        if fd is not None and not select.select([fd], [], [], max(timeout, 0))[0]:
            raise DatabaseUnreachable(f"--stdin: no data on stdin within {timeout:g} s (--wait-timeout)")
        if not cast(io.BufferedReader, self.stream).peek(1):
            raise BadInput("--stdin: stdin is empty (did the command writing to it fail?); no snapshot was written")

    @contextlib.contextmanager
    def dump(self) -> Iterator[_StdinDump]:
        assert self.stream is not None  # wait_ready ran
        yield _StdinDump(self.path, self.stream)

    def restore(self, chunks: Iterator[bytes]) -> None:
        raise BadInput("a --stdin snapshot is read back with `stash-runner dump` (or `restic dump`)")


def _fileno(stream: BinaryIO) -> int | None:
    """The descriptor to wait on, when the stream has one (a pipe, a file); None for an in-memory stream."""
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
