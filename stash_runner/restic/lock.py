"""Repository locks as restic writes them: a file under locks/, refreshed, removed when done."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from backends.base import FileType, Handle
from stash_runner.errors import LockedError, RepositoryError, StorageAccessDenied

from .repository import Repository, current_username
from .timefmt import format_time, now, parse_time

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 5 * 60
STALE_AFTER = 30 * 60
#: a wait for another run's lock is said when it starts and again this often, with the time left
SAY_EVERY = 15.0


def storage_is_read_only(error: BaseException) -> bool:
    """Whether a failed write means that this storage cannot be written at all (a read-only mount or directory, a
    read-only credential), rather than a failure of that one write."""
    if isinstance(error, StorageAccessDenied):
        # These credentials have just listed and read the repository: a write they are denied is one they may not do.
        return True
    seen: BaseException | None = error
    while seen is not None:  # the local backend's OSError is kept as the context of the errors raised from it
        if isinstance(seen, OSError) and seen.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class LockInfo:
    name: str
    time: str
    exclusive: bool
    hostname: str
    username: str
    pid: int

    def age(self) -> float:
        return (now() - parse_time(self.time)).total_seconds()

    def is_stale(self) -> bool:
        if self.age() > STALE_AFTER:
            return True
        if self.hostname == socket.gethostname() and self.pid > 0:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def holder(self) -> str:
        return f"PID {self.pid} on {self.hostname} (user {self.username}) since {self.time}"

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{kind} lock {self.name[:8]} held by {self.holder()}"


def list_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for name, _ in repo.list_files(FileType.LOCK):
        try:
            obj = repo.load_unpacked(FileType.LOCK, name)
        except RepositoryError:
            continue  # removed while we looked, or unreadable: restic ignores those as well
        locks.append(
            LockInfo(
                name,
                obj.get("time", ""),
                bool(obj.get("exclusive")),
                obj.get("hostname", ""),
                obj.get("username", ""),
                int(obj.get("pid") or 0),
            )
        )
    return locks


class RepositoryLock:
    """A shared (backup, restore) or exclusive (prune) lock, refreshed in the background."""

    def __init__(self, repo: Repository, exclusive: bool = False, wait: float = 0.0, read_only: bool = False,
                 no_lock: bool = False):
        """``read_only``: the holder only reads (restore, dump, snapshots, stats, check), so a shared lock the
        storage refuses to store because it is read-only is given up with a warning and the holder goes on
        unlocked. ``no_lock``: restic's --no-lock, a shared lock is not taken at all (nor are others read)."""
        self.repo = repo
        self.exclusive = exclusive
        self.wait = wait
        self.read_only = read_only
        self.no_lock = no_lock and not exclusive
        self._name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _conflict(self) -> LockInfo | None:
        for lock in list_locks(self.repo):
            if lock.name == self._name:
                continue
            if lock.is_stale():
                # A crashed run's lock: restic would refuse to lock while it exists, so clear it as
                # `restic unlock` would (its holder is gone or has not refreshed for 30 minutes).
                log.info("removing stale %s", lock.describe())
                try:
                    self.repo.remove(Handle(FileType.LOCK, lock.name))
                except RepositoryError as e:
                    if not (self._may_go_unlocked() and storage_is_read_only(e)):
                        log.warning("could not remove a stale lock: %s", e)
                    # else: the storage is read-only, which acquire() says once when its own lock is refused
                continue
            if lock.exclusive or self.exclusive:
                return lock
        return None

    def _write(self) -> str:
        obj = {
            "time": format_time(now()),
            "exclusive": self.exclusive,
            "hostname": socket.gethostname(),
            "username": current_username(),
            "pid": os.getpid(),
            "uid": os.getuid(),
            "gid": os.getgid(),
        }
        name, _ = self.repo.save_unpacked(FileType.LOCK, obj)
        return name

    def _may_go_unlocked(self) -> bool:
        return self.read_only and not self.exclusive

    def acquire(self) -> None:
        where = self.repo.backend.location
        if self.no_lock:
            log.debug("%s: not locked (--no-lock)", where)
            return
        deadline = time.monotonic() + self.wait
        said = None  # when the wait was last said
        while True:
            conflict = self._conflict()
            if conflict is None:
                try:
                    self._name = self._write()
                except (RepositoryError, StorageAccessDenied) as e:
                    if not (self._may_go_unlocked() and storage_is_read_only(e)):
                        raise
                    log.warning("%s: the storage cannot be written; reading it without a lock (as with --no-lock)",
                                e)
                    return
                # Someone may have locked between our look and our write: look again, as restic does.
                conflict = self._conflict()
                if conflict is None:
                    break
                self.repo.remove(Handle(FileType.LOCK, self._name))
                self._name = None
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockedError(f"repository {where} is locked: {conflict.describe()}")
            if said is None or time.monotonic() - said >= SAY_EVERY:
                # A wait of up to --lock-wait (300 s): say whose lock it is and how long we still wait for it.
                kind = "exclusive" if conflict.exclusive else "shared"
                log.info("waiting for the %s lock %s of %s held by %s (%.0f s left)", kind, conflict.name[:8], where,
                         conflict.holder(), left)
                said = time.monotonic()
            time.sleep(min(5.0, max(0.1, left)))
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            try:
                new = self._write()
                with self._mutex:
                    old, self._name = self._name, new
                if old:
                    self.repo.remove(Handle(FileType.LOCK, old))
            except RepositoryError as e:
                log.warning("could not refresh the repository lock: %s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._mutex:
            name, self._name = self._name, None
        if name:
            try:
                self.repo.remove(Handle(FileType.LOCK, name))
            except RepositoryError as e:
                log.warning("could not remove the repository lock: %s", e)

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def unlock(repo: Repository, remove_all: bool = False) -> tuple[list[LockInfo], list[LockInfo]]:
    """Remove stale locks (no refresh for 30 minutes, or a dead process on this host), or every lock.

    Returns (removed, kept): a live lock is kept and named, so the user sees who holds it.
    """
    removed, kept = [], []
    for lock in list_locks(repo):
        if remove_all or lock.is_stale():
            repo.remove(Handle(FileType.LOCK, lock.name))
            removed.append(lock)
        else:
            kept.append(lock)
    return removed, kept
