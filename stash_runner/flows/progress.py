"""Progress lines every few seconds while a long backup or restore runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from stash_runner.units import rate, stash_bytes, stash_seconds

log = logging.getLogger("stash_runner")


class Progress:
    """Logs ``label: <bytes> so far, <rate>[, extra]`` every ``interval`` seconds from a thread; with a ``total``
    (a restore knows its file's size from the tree) ``label: <bytes> of <total> (<n>%), <rate>, about <m:ss> left``.
    """

    def __init__(self, label: str, counter: Callable[[], int], extra: Callable[[], str] | None = None,
                 interval: float = 5.0, total: int | None = None):
        self.label = label
        self.counter = counter
        self.extra = extra
        self.interval = interval
        self.total = total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._start = time.monotonic()

    def line(self, n: int, elapsed: float, delta_n: int, delta_t: float) -> str:
        """The line for ``n`` bytes after ``elapsed`` s, ``delta_n`` of them in the last ``delta_t`` s."""
        speed = rate(delta_n, delta_t)  # the last interval's: a stall shows at once
        if not self.total:
            line = f"{self.label}: {stash_bytes(n)} so far, {speed}"
        else:
            share = min(n / self.total, 1)
            line = f"{self.label}: {stash_bytes(n)} of {stash_bytes(self.total)} ({share:.0%}), {speed}"
            if 0 < n < self.total and elapsed > 0:
                # The ETA from the average since the start: steadier than the last interval's rate.
                line += f", about {stash_seconds((self.total - n) * elapsed / n)} left"
        if self.extra:
            line += f", {self.extra()}"
        return line

    def _run(self) -> None:
        last_n, last_t = 0, self._start
        while not self._stop.wait(self.interval):
            n, t = self.counter(), time.monotonic()
            log.info(self.line(n, t - self._start, n - last_n, t - last_t))
            last_n, last_t = n, t

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
