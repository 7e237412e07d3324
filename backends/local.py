"""A repository on a mounted volume, in restic's local layout."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from .base import AccessDeniedError, Backend, BackendError, FileType, Handle, NotFoundError

# A pod without the volume's permissions, or a volume mounted read-only: the storage refuses, as a bucket
# policy would (exit 8), rather than failing (exit 4).
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


class LocalBackend(Backend):
    connections = 2
    detects_layout = True

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.location = f"local:{self.root}"

    def _path(self, h: Handle) -> str:
        return os.path.join(self.root, self.layout.path(h))

    def _error(self, what: str, e: OSError | ValueError) -> BackendError:
        """An OS error as the backend error it stands for, one line naming the path: every OSError (and
        os's ValueError for a NUL in a path) must end here, never in a traceback."""
        if isinstance(e, ValueError):
            return BackendError(f"{self.location}: cannot {what}: {e}")
        if e.errno in _REFUSED:
            return AccessDeniedError(f"{self.location}: cannot {what}: {e.strerror} ({e.filename})")
        if e.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_in_the_way(self.root)):
            return BackendError(f"{self.location}: " + ("" if blocker == self.root else f"{blocker} is ")
                                + "not a directory")
        return BackendError(f"{self.location}: cannot {what}: {e.strerror or e}")

    def create(self) -> None:
        # restic's init makes every directory up front; restic itself relies on data/xx existing.
        try:
            for t in (FileType.KEY, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK):
                os.makedirs(os.path.join(self.root, t.value), exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, "data", f"{i:02x}"), exist_ok=True)
        except (OSError, ValueError) as e:
            raise self._error("create the repository's directories", e) from None

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
        except (OSError, ValueError) as e:
            _unlink_quietly(tmp)
            raise self._error(f"write {h}", e) from None

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(h), "rb") as f:
                if offset:
                    f.seek(offset)
                data = f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFoundError(f"{self.location}: {h} not found") from None
        except (OSError, ValueError) as e:
            raise self._error(f"read {h}", e) from None
        if length is not None and len(data) != length:
            raise BackendError(f"{self.location}: {h} is shorter than expected (truncated?)")
        return data

    def stat(self, h: Handle) -> int:
        try:
            return os.stat(self._path(h)).st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self.location}: {h} not found") from None
        except (OSError, ValueError) as e:  # a root that is a file, a volume this UID may not read
            raise self._error(f"stat {h}", e) from None

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        base = os.path.join(self.root, self.layout.dir(t))
        dirs = [base]
        if t is FileType.DATA and self.layout.fanout:
            try:
                dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
            except FileNotFoundError:
                return
            except (OSError, ValueError) as e:
                raise self._error(f"list {t.value}", e) from None
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, ValueError) as e:
                raise self._error(f"list {os.path.relpath(d, self.root)}", e) from None
            for entry in entries:
                try:
                    if entry.is_file() and "-tmp-" not in entry.name:
                        yield entry.name, entry.stat().st_size
                except FileNotFoundError:  # removed by a concurrent prune since the listing
                    continue
                except OSError as e:
                    raise self._error(f"stat {os.path.relpath(entry.path, self.root)}", e) from None

    def remove(self, h: Handle) -> None:
        try:
            os.unlink(self._path(h))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            raise self._error(f"remove {h}", e) from None


def _file_in_the_way(path: str) -> str:
    """The path itself or the ancestor of it that exists and is no directory ('' when there is none)."""
    while True:
        if os.path.lexists(path):
            return "" if os.path.isdir(path) else path
        parent = os.path.dirname(path)
        if parent == path:
            return ""
        path = parent


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
    with contextlib.suppress(OSError, ValueError):
        os.unlink(path)
