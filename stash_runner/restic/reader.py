"""Reading snapshots back: walking trees and streaming a file's blobs, verified, with read-ahead."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from stash_runner.errors import SnapshotNotFound

from . import tree
from .repository import Repository
from .snapshot import Snapshot

READ_AHEAD = 8  # blobs; each at most 8 MiB


def load_tree(repo: Repository, tree_id: str) -> list[tree.Node]:
    return tree.decode_tree(repo.load_blob(bytes.fromhex(tree_id)))


def walk_files(repo: Repository, snap: Snapshot) -> Iterator[tuple[str, tree.Node]]:
    """Every file of a snapshot as (path inside the snapshot, node), depth first, sorted."""

    def walk(tree_id: str, prefix: str) -> Iterator[tuple[str, tree.Node]]:
        for node in load_tree(repo, tree_id):
            path = f"{prefix}/{node.name}"
            if node.type == "dir" and node.subtree:
                yield from walk(node.subtree, path)
            elif node.type == "file":
                yield path, node

    yield from walk(snap.tree, "")


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
    parts = [p for p in path.split("/") if p]
    tree_id = snap.tree
    for i, part in enumerate(parts):
        node = next((n for n in load_tree(repo, tree_id) if n.name == part), None)
        if node is None:
            break
        if i == len(parts) - 1 and node.type == "file":
            return "/" + "/".join(parts), node
        if node.type != "dir" or not node.subtree:
            break
        tree_id = node.subtree
    raise SnapshotNotFound(f"snapshot {snap.short_id} has no file {path!r}")


def iter_content(repo: Repository, node: tree.Node) -> Iterator[bytes]:
    """A file's bytes, blob by blob, each checked against its MAC and ID, fetched ahead in parallel."""
    ids = iter(bytes.fromhex(x) for x in node.content or [])
    pool = ThreadPoolExecutor(max(2, repo.backend.connections), thread_name_prefix="read")
    queue: collections.deque[Future] = collections.deque()
    try:
        for blob_id in ids:
            queue.append(pool.submit(repo.load_blob, blob_id))
            if len(queue) >= READ_AHEAD:
                break
        while queue:
            data = queue.popleft().result()
            nxt = next(ids, None)
            if nxt is not None:
                queue.append(pool.submit(repo.load_blob, nxt))
            yield data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
