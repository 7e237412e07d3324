"""One retry policy for every remote provider: exponential backoff with full jitter, bounded.

Providers classify their failures (``TransientError`` or not); this wrapper decides when to try
again. All repository files are content-addressed or written once, so repeating a save, a load or
a remove is always safe.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .base import Backend, BackendError, FileType, Handle, TransientError

log = logging.getLogger("stash_runner.backend")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th wait is uniform in [0, min(cap, base * 2**n)]."""

    attempts: int = 8
    base: float = 0.5
    cap: float = 20.0
    #: seconds a remote request may take to connect, or stay silent while reading, before it is retried
    timeout: float = 60.0

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * (2 ** retry)))


class RetryBackend(Backend):
    def __init__(self, inner: Backend, policy: RetryPolicy | None = None):
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.location = inner.location
        self.connections = inner.connections
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        # Set on cancel or close: a run that is being torn down must not sit out a long backoff.
        self._cancelled = threading.Event()

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except TransientError as e:
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise BackendError(f"{self.location}: {what} failed after {attempt} attempts: {e}") from None
                with self._rng_lock:
                    wait = self.policy.delay(attempt - 1, self._rng)
                log.warning("%s: %s failed (%s); retry %d/%d in %.1f s", self.location, what, e, attempt,
                            self.policy.attempts - 1, wait)
                if self._cancelled.wait(wait):
                    raise BackendError(f"{self.location}: {what} abandoned (shutting down): {e}") from None

    def save(self, h: Handle, data: bytes) -> None:
        self._retry(f"save {h}", lambda: self.inner.save(h, data))

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(f"load {h}", lambda: self.inner.load(h, offset, length))

    def stat(self, h: Handle) -> int:
        return self._retry(f"stat {h}", lambda: self.inner.stat(h))

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        # A listing that breaks part-way is started over, so it is collected before it is returned.
        return iter(self._retry(f"list {t.value}", lambda: list(self.inner.list(t))))

    def remove(self, h: Handle) -> None:
        self._retry(f"remove {h}", lambda: self.inner.remove(h))

    def exists(self, h: Handle) -> bool:
        return self._retry(f"stat {h}", lambda: self.inner.exists(h))

    def create(self) -> None:
        self._retry("create", self.inner.create)

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self._cancelled.set()
        self.inner.close()
