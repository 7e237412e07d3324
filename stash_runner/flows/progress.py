"""Progress lines every few seconds while a long backup or restore runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from stash_runner.units import rate, stash_bytes

log = logging.getLogger("stash_runner")


class Progress:
    """Logs ``label: <bytes> so far (<MB/s>)[, extra]`` every ``interval`` seconds from a thread."""

    def __init__(self, label: str, counter: Callable[[], int], extra: Callable[[], str] | None = None,
                 interval: float = 5.0):
        self.label = label
        self.counter = counter
        self.extra = extra
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        last_n, last_t = 0, self._start
        while not self._stop.wait(self.interval):
            n, t = self.counter(), time.monotonic()
            line = f"{self.label}: {stash_bytes(n)} so far, {rate(n - last_n, t - last_t)}"
            if self.extra:
                line += f", {self.extra()}"
            log.info(line)
            last_n, last_t = n, t

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
