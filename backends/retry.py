"""One retry policy for every remote provider: exponential backoff with full jitter, bounded.

Providers classify their failures (``TransientError`` or not); this wrapper decides when to try
again. All repository files are content-addressed or written once, so repeating a save, a load or
a remove is always safe.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .base import Backend, BackendError, FileType, Handle, Layout, TransientError

log = logging.getLogger("stash_runner.backend")

T = TypeVar("T")

#: a request still under way after this many seconds is said (a stalled one is retried only after the timeout)
SAY_AFTER = 10.0
#: ... and again this often while it lasts; a long backoff is said again this often too
SAY_EVERY = 15.0


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
        self._under_way = _UnderWay(self._say_under_way)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            token = self._under_way.begin(what, attempt + 1)
            try:
                return fn()
            except TransientError as e:
                error = e
            finally:
                self._under_way.end(token)
            attempt += 1
            cause = _cause(error, self.location, what)
            if attempt >= self.policy.attempts:
                raise BackendError(f"{self.location}: {what}: failed after {attempt} attempts: {cause}") from None
            with self._rng_lock:
                wait = self.policy.delay(attempt - 1, self._rng)
            self._back_off(what, cause, attempt + 1, wait)

    def _back_off(self, what: str, cause: str, attempt: int, wait: float) -> None:
        """Wait before ``attempt``, saying so at once and every SAY_EVERY s of a long wait."""
        log.warning("%s: retrying %s after %s: attempt %d of %d, next in %s", self.location, what, cause, attempt,
                    self.policy.attempts, _seconds(wait))
        end = time.monotonic() + wait
        left = wait
        while left > 0:
            if self._cancelled.wait(min(left, SAY_EVERY)):
                raise BackendError(f"{self.location}: {what} abandoned (shutting down): {cause}") from None
            left = end - time.monotonic()
            if left >= 1:
                log.info("%s: retrying %s: attempt %d of %d in %s", self.location, what, attempt,
                         self.policy.attempts, _seconds(left))

    def _say_under_way(self, what: str, attempt: int, elapsed: float) -> None:
        # info, not a warning: a large upload on a slow link takes this long without anything being wrong
        log.info("%s: still waiting for %s after %.0f s (attempt %d of %d; tried again after %g s without an answer)",
                 self.location, what, elapsed, attempt, self.policy.attempts, self.policy.timeout)

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

    # The layout is the provider's: it builds the paths.
    @property
    def layout(self) -> Layout:
        return self.inner.layout

    @property
    def detects_layout(self) -> bool:
        return self.inner.detects_layout

    def use_layout(self, layout: Layout) -> None:
        self.inner.use_layout(layout)

    def exists(self, h: Handle) -> bool:
        return self._retry(f"stat {h}", lambda: self.inner.exists(h))

    def create(self) -> None:
        self._retry("create", self.inner.create)

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self._cancelled.set()
        self.inner.close()


class _UnderWay:
    """The requests under way. One that takes longer than SAY_AFTER s is said every SAY_EVERY s while it lasts, so
    that a stalled request (retried only after --backend-timeout s of silence) is no silent minute. A watcher thread
    runs only while requests are under way."""

    def __init__(self, say: Callable[[str, int, float], None]) -> None:
        self._say = say
        self._calls: dict[int, list] = {}  # token -> [what, attempt, started, when to say it next]
        self._tokens = itertools.count()
        self._mutex = threading.Lock()
        self._watching = False

    def begin(self, what: str, attempt: int) -> int:
        started = time.monotonic()
        with self._mutex:
            token = next(self._tokens)
            self._calls[token] = [what, attempt, started, started + SAY_AFTER]
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="storage-requests", daemon=True).start()
        return token

    def end(self, token: int) -> None:
        with self._mutex:
            del self._calls[token]

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            due = []
            with self._mutex:
                if not self._calls:
                    self._watching = False  # the next request starts a new watcher
                    return
                for call in self._calls.values():
                    if now >= call[3]:
                        due.append((call[0], call[1], now - call[2]))
                        call[3] = now + SAY_EVERY
            for what, attempt, elapsed in due:
                self._say(what, attempt, elapsed)


def _cause(error: Exception, location: str, what: str) -> str:
    """The error's own text: providers start it with the location and the request, which the message names already."""
    text = str(error)
    for prefix in (f"{location}: ", f"{what}: "):
        text = text.removeprefix(prefix)
    return text


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
