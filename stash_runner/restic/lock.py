"""Repository locks as restic writes them: a file under locks/, refreshed, removed when done."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from backends.base import FileType, Handle
from stash_runner.errors import LockedError, RepositoryError

from .repository import Repository, current_username
from .timefmt import format_time, now, parse_time

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 5 * 60
STALE_AFTER = 30 * 60


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

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (
            f"{kind} lock {self.name[:8]} held by PID {self.pid} on {self.hostname} "
            f"(user {self.username}) since {self.time}"
        )


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

    def __init__(self, repo: Repository, exclusive: bool = False, wait: float = 0.0):
        self.repo = repo
        self.exclusive = exclusive
        self.wait = wait
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
                    log.warning("could not remove a stale lock: %s", e)
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

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            conflict = self._conflict()
            if conflict is None:
                self._name = self._write()
                # Someone may have locked between our look and our write: look again, as restic does.
                conflict = self._conflict()
                if conflict is None:
                    break
                self.repo.remove(Handle(FileType.LOCK, self._name))
                self._name = None
            if time.monotonic() >= deadline:
                raise LockedError(f"repository {self.repo.backend.location} is locked: {conflict.describe()}")
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
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
