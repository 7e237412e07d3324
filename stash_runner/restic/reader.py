"""Reading snapshots back: walking trees and streaming a file's blobs, verified, with read-ahead."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from stash_runner.errors import SnapshotNotFound

from . import tree
from .repository import Repository
from .snapshot import Snapshot

READ_AHEAD = 8  # blobs fetched ahead, at least; each at most 8 MiB
READ_AHEAD_BYTES = 64 << 20  # stored bytes fetched ahead, at most (one blob more when it is bigger)


def load_tree(repo: Repository, tree_id: str) -> list[tree.Node]:
    return tree.decode_tree(repo.load_blob(bytes.fromhex(tree_id)))


def walk_files(repo: Repository, snap: Snapshot, under: str = "/") -> Iterator[tuple[str, tree.Node]]:
    """Every file of a snapshot (or of its directory ``under``) as (path inside the snapshot, node), depth
    first, sorted."""

    def walk(tree_id: str, prefix: str) -> Iterator[tuple[str, tree.Node]]:
        for node in load_tree(repo, tree_id):
            path = f"{prefix}/{node.name}"
            if node.type == "dir" and node.subtree:
                yield from walk(node.subtree, path)
            elif node.type == "file":
                yield path, node

    start = _normal(under)
    if start == "/":
        yield from walk(snap.tree, "")
        return
    node = find_node(repo, snap, start)
    if node is not None and node.type == "dir" and node.subtree:
        yield from walk(node.subtree, start)
    elif node is not None and node.type == "file":
        yield start, node


def find_node(repo: Repository, snap: Snapshot, path: str) -> tree.Node | None:
    """The node (file or directory) at ``path`` in a snapshot; None when there is none."""
    parts = [p for p in path.split("/") if p]
    tree_id: str | None = snap.tree
    node = None
    for part in parts:
        if tree_id is None:
            return None
        node = next((n for n in load_tree(repo, tree_id) if n.name == part), None)
        if node is None:
            return None
        tree_id = node.subtree if node.type == "dir" else None
    return node


def extract(repo: Repository, snap: Snapshot, path: str, target: str,
            on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Write the directory at ``path`` of a snapshot into ``target`` (which exists): its regular files and
    subdirectories, with their permission bits. Other kinds of entries (symlinks, devices) are not written."""
    if _normal(path) == "/":
        tree_id = snap.tree
    else:
        node = find_node(repo, snap, path)
        if node is None or node.type != "dir" or not node.subtree:
            raise SnapshotNotFound(f"snapshot {snap.short_id} has no directory {path!r}")
        tree_id = node.subtree

    def write(tree_id: str, into: str) -> None:
        for child in load_tree(repo, tree_id):
            if child.name in ("", ".", "..") or "/" in child.name:
                raise SnapshotNotFound(f"snapshot {snap.short_id} holds an unsafe name {child.name!r}")
            dest = os.path.join(into, child.name)
            if child.type == "dir":
                os.makedirs(dest, exist_ok=True)
                if child.subtree:
                    write(child.subtree, dest)
                os.chmod(dest, (child.mode & 0o777) or 0o755)
            elif child.type == "file":
                with open(dest, "wb") as f:
                    for data in iter_content(repo, child):
                        f.write(data)
                        on_bytes(len(data))
                os.chmod(dest, (child.mode & 0o777) or 0o644)

    write(tree_id, target)


def _normal(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


def find_file(repo: Repository, snap: Snapshot, path: str | None) -> tuple[str, tree.Node]:
    """The file at ``path``, or the snapshot's only file when path is None."""
    if path is None:
        files = []
        for item in walk_files(repo, snap):
            files.append(item)
            if len(files) > 1:
                raise SnapshotNotFound(
                    f"snapshot {snap.short_id} holds several files: name the one to read"
                )
        if not files:
            raise SnapshotNotFound(f"snapshot {snap.short_id} holds no file")
        return files[0]
    node = find_node(repo, snap, path)
    if node is not None and node.type == "file":
        return _normal(path), node
    raise SnapshotNotFound(f"snapshot {snap.short_id} has no file {path!r}")


def read_workers(repo: Repository) -> int:
    """Threads that fetch and check blobs: the backend's connections, and at least one more than the cores (a
    blob's hash and decompression run without the GIL, so they spread over the cores while one thread waits)."""
    return max(2, repo.backend.connections, min(8, (os.cpu_count() or 1) + 1))


def iter_content(repo: Repository, node: tree.Node) -> Iterator[bytes]:
    """A file's bytes, blob by blob, each checked against its MAC and ID, fetched ahead in parallel: up to
    ``READ_AHEAD`` blobs, and at least two per worker, are fetched and checked while the caller uses the ones
    before them (at most READ_AHEAD_BYTES of them, by their stored size, besides the one the caller holds)."""
    ids = [bytes.fromhex(x) for x in node.content or []]
    if not ids:
        return
    workers = read_workers(repo)
    ahead = max(READ_AHEAD, 2 * workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="read")
    queue: collections.deque[tuple[Future, int]] = collections.deque()
    queued = 0  # stored bytes of the blobs in the queue
    nxt = 0

    def fill() -> None:
        nonlocal nxt, queued
        while nxt < len(ids) and len(queue) < ahead and (not queue or queued < READ_AHEAD_BYTES):
            blob_id = ids[nxt]
            found = repo.index.lookup(blob_id)
            size = found[1].length if found is not None else 0
            queue.append((pool.submit(repo.load_blob, blob_id), size))
            queued += size
            nxt += 1

    try:
        fill()
        while queue:
            future, size = queue.popleft()
            queued -= size
            data = future.result()
            fill()
            yield data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
