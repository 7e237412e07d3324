"""Waiting for a database: one loop for every driver, so that every wait says what it waits for and how long
is left, and ends at once on an error that waiting does not fix (a wrong password)."""

from __future__ import annotations

import time
from collections.abc import Callable

from stash_runner.errors import DatabaseUnreachable


def wait_until(what: str, check: Callable[[], None], timeout: float, say: Callable[[str], None], *,
               waitable: Callable[[BaseException], str | None], interval: float = 2.0, unready: str = "") -> None:
    """Call ``check`` until it returns. An error ``waitable`` describes (its text) is waited on, and the wait is
    said every ~15 s; any other is raised (``waitable`` may also raise its own final error). After ``timeout``
    s, DatabaseUnreachable with the last error: "<what>: not ready after N s: ...", or "<unready> after N s: ..."
    (a driver's own wording)."""
    deadline = time.monotonic() + timeout
    last_said = 0.0
    while True:
        try:
            check()
            return
        except Exception as e:  # noqa: BLE001 - waitable decides
            error = waitable(e)
            if error is None:
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise DatabaseUnreachable(f"{unready or what + ': not ready'} after {timeout:g} s: {error}") from None
        now = time.monotonic()
        if now - last_said >= 15 or last_said == 0.0:
            say(f"waiting for {what} ({left:.0f} s left): {error}")
            last_said = now
        time.sleep(min(interval, max(0.0, left)))
