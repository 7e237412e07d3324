"""The storage interface every provider implements, and restic's file layout on top of it."""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator
from dataclasses import dataclass


class FileType(enum.Enum):
    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"


@dataclass(frozen=True)
class Handle:
    type: FileType
    name: str = ""

    def path(self) -> str:
        """restic's layout: config at the top, packs fanned out by their first two hex digits."""
        if self.type is FileType.CONFIG:
            return "config"
        if self.type is FileType.DATA:
            return f"data/{self.name[:2]}/{self.name}"
        return f"{self.type.value}/{self.name}"

    def __str__(self) -> str:
        return self.path()


class NotFoundError(Exception):
    """The named file does not exist in the backend."""


class BackendError(Exception):
    """The storage failed; the message names the backend and the object."""


class TransientError(BackendError):
    """A failure worth retrying: throttling, a 5xx, a dropped or stalled connection, a short read."""


class AccessDeniedError(BackendError):
    """The credentials were rejected or lack a permission; retrying cannot help."""


class Backend(abc.ABC):
    """save, load a range, stat, list, remove: all the repository needs from storage.

    Files are written once and never modified; ``save`` must be atomic (a reader sees the whole
    file or none of it). Every method is called from several threads at once.

    Errors: ``NotFoundError`` for a missing file, ``AccessDeniedError`` for rejected credentials,
    ``TransientError`` for what a retry may cure, ``BackendError`` for the rest. Providers do not
    retry themselves: ``RetryBackend`` wraps them with one policy for all.
    """

    #: where the repository is, for messages (never contains credentials)
    location: str = ""
    #: how many requests may usefully run at once
    connections: int = 2

    @abc.abstractmethod
    def save(self, h: Handle, data: bytes) -> None: ...

    @abc.abstractmethod
    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes [offset, offset+length) of a file (all of it from offset when length is None)."""

    @abc.abstractmethod
    def stat(self, h: Handle) -> int:
        """The file's size; raises NotFoundError."""

    @abc.abstractmethod
    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        """(name, size) of every file of a type."""

    @abc.abstractmethod
    def remove(self, h: Handle) -> None: ...

    def exists(self, h: Handle) -> bool:
        try:
            self.stat(h)
        except NotFoundError:
            return False
        return True

    def create(self) -> None:
        """Prepare an empty location for a new repository (directories, a bucket)."""

    def cancel(self) -> None:
        """The run is being torn down: stop waiting between retries (each call still gets one try)."""

    def close(self) -> None:
        """Release connections."""
