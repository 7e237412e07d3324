"""Uploading finished packs: in parallel, never more in the air than the backend has connections."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .pack import PackBuilder, PackedBlob
from .repository import Repository

#: called with (pack ID, its blobs, its size) from an upload thread
Saved = Callable[[bytes, list[PackedBlob], int], None]
#: the same, plus the error, when the save failed (the pack may exist partly or wholly)
Failed = Callable[[bytes, list[PackedBlob], int, BaseException], None]


class PackUploader:
    def __init__(self, repo: Repository, saved: Saved, failed: Failed, name: str = "upload"):
        connections = max(1, repo.backend.connections)
        self.repo = repo
        self._saved = saved
        self._failed = failed
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(connections)
        self._lock = threading.Lock()
        self._futures: list[Future] = []

    def upload(self, builder: PackBuilder) -> None:
        """Finish the pack and hand it to an upload thread; blocks while every connection is busy, so
        at most that many finished packs wait in memory (back-pressure on the producers)."""
        self._slots.acquire()
        try:
            pack_id, data = builder.finish(self.repo.key)
            fut = self._pool.submit(self._save, pack_id, data, builder.blobs)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        with self._lock:
            self._futures.append(fut)

    def _save(self, pack_id: bytes, data: bytes, blobs: list[PackedBlob]) -> None:
        try:
            self.repo.save_pack(pack_id, data)
        except BaseException as e:
            self._failed(pack_id, blobs, len(data), e)
            raise
        self._saved(pack_id, blobs, len(data))

    def wait(self, *, quiet: bool = False) -> None:
        """Wait for the uploads started so far; the first failure is raised unless ``quiet``."""
        with self._lock:
            futures, self._futures = self._futures, []
        for fut in futures:
            if quiet:
                with contextlib.suppress(BaseException):
                    fut.result()
            else:
                fut.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
