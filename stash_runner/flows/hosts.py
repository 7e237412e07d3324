"""What a multi-host backup or restore ends with: every host's result, or the failures beside the results."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import TypeVar

from stash_runner.errors import HostsFailed

T = TypeVar("T")


def gather(hostnames: Sequence[str], futures: Sequence[Future[T]]) -> list[T]:
    """The finished hosts' results, in host order; HostsFailed names the hosts that failed and carries the others'
    results. An interruption (SIGTERM, Ctrl-C) is no host's failure: it is raised as it is."""
    failures: dict[str, Exception] = {}
    results = []
    for hostname, future in zip(hostnames, futures, strict=True):
        error = future.exception()
        if error is None:
            results.append(future.result())
        elif isinstance(error, Exception):
            failures[hostname] = error
        else:
            raise error
    if failures:
        raise HostsFailed(failures, results)
    return results
