"""Repository figures: what Stash puts in Repository status (totalSize, snapshotCount) and more."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from backends.base import FileType, Handle
from stash_runner.restic.reader import load_tree
from stash_runner.restic.repository import Repository


@dataclass
class RepoStats:
    snapshots: int = 0
    #: bytes a restore of every snapshot would write (restic stats' default "restore-size")
    restore_size: int = 0
    #: stored bytes of the blobs the snapshots reference (restic stats --mode raw-data; Stash's totalSize)
    raw_data: int = 0
    #: uncompressed bytes of those blobs
    raw_data_uncompressed: int = 0
    #: bytes of every file in storage: packs, index, snapshots, keys, config, locks
    repository_size: int = 0
    blobs: int = 0  # blobs in the index
    referenced_blobs: int = 0
    packs: int = 0  # pack files in storage
    index_files: int = 0

    def json(self) -> dict:
        return asdict(self)


def run_stats(repo: Repository) -> RepoStats:
    """Reads the index, the snapshots and each distinct tree once (snapshots share most trees)."""
    st = RepoStats()
    listings = {t: repo.list_files(t) for t in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.KEY,
                                                 FileType.LOCK)}
    st.packs = len(listings[FileType.DATA])
    st.index_files = len(listings[FileType.INDEX])
    st.repository_size = sum(size for files in listings.values() for _, size in files)
    st.repository_size += repo.file_size(Handle(FileType.CONFIG))
    if not repo.index:
        repo.load_index()
    st.blobs = len(repo.index)
    snaps = repo.list_snapshots()
    st.snapshots = len(snaps)

    tree_sizes: dict[str, int] = {}  # tree ID -> restore size of everything below it
    referenced: set[bytes] = set()

    def size_of(tree_id: str) -> int:
        if tree_id in tree_sizes:
            return tree_sizes[tree_id]
        referenced.add(bytes.fromhex(tree_id))
        total = 0
        for node in load_tree(repo, tree_id):
            if node.type == "dir" and node.subtree:
                total += size_of(node.subtree)
            elif node.type == "file":
                total += node.size or 0
                referenced.update(bytes.fromhex(c) for c in node.content or [])
        tree_sizes[tree_id] = total
        return total

    st.restore_size = sum(size_of(s.tree) for s in snaps)
    st.referenced_blobs = len(referenced)
    for blob_id in referenced:
        found = repo.index.lookup(blob_id)
        if found:
            st.raw_data += found[1].length
            st.raw_data_uncompressed += found[1].uncompressed_length or found[1].length
    return st
