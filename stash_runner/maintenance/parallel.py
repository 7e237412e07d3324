"""Many small reads at once: the snapshot and index files every maintenance command loads, and the files it removes.

A thread pool's future costs tens of microseconds of Python (locks, a condition, a wakeup): as much as reading,
decrypting and parsing a snapshot file from a local disk. So each task takes a run of items; items still run
``workers`` at a time, which is what remote storage needs (its latency is in the call, not in Python).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from backends.base import FileType
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot

T = TypeVar("T")
R = TypeVar("R")

#: items one task takes at most: small enough that a slow item does not hold many others back
MAX_RUN = 32


def chunked_map(pool: Executor, workers: int, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, in order, on ``pool`` (``workers`` threads) in runs of items; the first
    exception raised by ``fn`` is raised (after the runs under way end)."""
    seq: Sequence[T] = items if isinstance(items, Sequence) else list(items)
    if not seq:
        return []
    run = max(1, min(MAX_RUN, -(-len(seq) // (4 * max(1, workers)))))
    runs = [seq[i : i + run] for i in range(0, len(seq), run)]
    out: list[R] = []
    for part in pool.map(lambda part: [fn(x) for x in part], runs):
        out.extend(part)
    return out


def workers_for(repo: Repository) -> int:
    return max(2, repo.backend.connections)


def load_snapshots(repo: Repository, pool: Executor | None = None, names: Iterable[str] | None = None
                   ) -> list[Snapshot]:
    """``repo.list_snapshots()``, oldest first, with the files read in runs (see the module docstring)."""
    if names is None:
        names = [name for name, _ in repo.list_files(FileType.SNAPSHOT)]

    def one(name: str) -> Snapshot:
        return Snapshot.from_json(repo.load_unpacked(FileType.SNAPSHOT, name), name)

    workers = workers_for(repo)
    if pool is None:
        with ThreadPoolExecutor(workers, thread_name_prefix="snapshots") as own:
            snaps = chunked_map(own, workers, one, names)
    else:
        snaps = chunked_map(pool, workers, one, names)
    return sorted(snaps, key=lambda s: s.datetime)
