"""What the backup and restore flows need from a database driver."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol


class Dump(Protocol):
    """A running dump: read ``stream`` to the end, then ``finish()`` raises if the dump failed."""

    stream: BinaryIO

    def finish(self) -> None: ...


class Driver(abc.ABC):
    #: the file the dump is stored as in the snapshot (Stash's name for it)
    filename: str
    #: where the database is, for messages
    target: str

    @abc.abstractmethod
    def wait_ready(self, timeout: float) -> None:
        """Return once the database accepts connections; DatabaseUnreachable after ``timeout`` s."""

    @abc.abstractmethod
    def dump(self) -> AbstractContextManager[Dump]:
        """Start the dump tool; leaving the context kills it if it is still running."""

    @abc.abstractmethod
    def restore(self, chunks: Iterator[bytes]) -> None:
        """Feed a dump's bytes to the restore tool; ToolFailed if it fails."""

    def close(self) -> None:
        """Remove temporary files (certificates)."""
