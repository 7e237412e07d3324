"""A repository on a mounted volume, in restic's local layout."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from .base import Backend, BackendError, FileType, Handle, NotFoundError


class LocalBackend(Backend):
    connections = 2

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.location = f"local:{self.root}"

    def _path(self, h: Handle) -> str:
        return os.path.join(self.root, h.path())

    def create(self) -> None:
        # restic's init makes every directory up front; restic itself relies on data/xx existing.
        for t in (FileType.KEY, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK):
            os.makedirs(os.path.join(self.root, t.value), exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(self.root, "data", f"{i:02x}"), exist_ok=True)

    def save(self, h: Handle, data: bytes) -> None:
        final = self._path(h)
        directory = os.path.dirname(final)
        # Same temp naming as restic's local backend: its listing skips names that are not IDs.
        tmp = f"{final}-tmp-{os.urandom(6).hex()}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                os.makedirs(directory, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(directory)
        except OSError as e:
            _unlink_quietly(tmp)
            raise BackendError(f"{self.location}: cannot write {h}: {e.strerror}") from None

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(h), "rb") as f:
                if offset:
                    f.seek(offset)
                data = f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFoundError(f"{self.location}: {h} not found") from None
        except OSError as e:
            raise BackendError(f"{self.location}: cannot read {h}: {e.strerror}") from None
        if length is not None and len(data) != length:
            raise BackendError(f"{self.location}: {h} is shorter than expected (truncated?)")
        return data

    def stat(self, h: Handle) -> int:
        try:
            return os.stat(self._path(h)).st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self.location}: {h} not found") from None

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        base = os.path.join(self.root, t.value)
        dirs = [base]
        if t is FileType.DATA:
            try:
                dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.is_file() and "-tmp-" not in entry.name:
                    yield entry.name, entry.stat().st_size

    def remove(self, h: Handle) -> None:
        try:
            os.unlink(self._path(h))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise BackendError(f"{self.location}: cannot remove {h}: {e.strerror}") from None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
