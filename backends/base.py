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


class Layout:
    """Where each file type lives. restic 0.14 knows two layouts: "default" (``keys/``, ``snapshots/``,
    ``locks/``, ``data/xx/<id>``) and "s3legacy" (``key/``, ``snapshot/``, ``lock/``, flat ``data/<id>``), which
    early restic wrote to S3 and which restic still reads and writes where it finds it (local and S3)."""

    def __init__(self, name: str, dirs: dict[FileType, str], fanout: bool) -> None:
        self.name = name
        self._dirs = dirs
        #: packs in data/<first two hex digits>/
        self.fanout = fanout

    def dir(self, t: FileType) -> str:
        return self._dirs[t]

    def path(self, h: Handle) -> str:
        if h.type is FileType.CONFIG:
            return "config"
        if h.type is FileType.DATA and self.fanout:
            return f"data/{h.name[:2]}/{h.name}"
        return f"{self._dirs[h.type]}/{h.name}"

    def __repr__(self) -> str:
        return f"Layout({self.name})"


DEFAULT_LAYOUT = Layout("default", {t: t.value for t in FileType if t is not FileType.CONFIG}, fanout=True)
S3_LEGACY_LAYOUT = Layout("s3legacy", {FileType.KEY: "key", FileType.DATA: "data", FileType.INDEX: "index",
                                       FileType.SNAPSHOT: "snapshot", FileType.LOCK: "lock"}, fanout=False)


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
    #: where the file types live (providers build their paths with it); see detect_layout
    layout: Layout = DEFAULT_LAYOUT
    #: restic 0.14 detects the layout on local and S3 storage only (GCS and Azure are always "default")
    detects_layout: bool = False

    def use_layout(self, layout: Layout) -> None:
        self.layout = layout

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


def _is_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdefABCDEF" for c in name)


def detect_layout(backend: Backend) -> Layout:
    """restic's DetectLayout, used from then on for reading and writing: a key file under ``key/`` and none under
    ``keys/`` is "s3legacy"; anything else (keys/ only, both, neither) is "default". Only where restic detects."""
    if not backend.detects_layout:
        return backend.layout
    backend.use_layout(DEFAULT_LAYOUT)
    if not any(_is_id(name) for name, _ in backend.list(FileType.KEY)):
        backend.use_layout(S3_LEGACY_LAYOUT)
        if not any(_is_id(name) for name, _ in backend.list(FileType.KEY)):
            backend.use_layout(DEFAULT_LAYOUT)
    return backend.layout
