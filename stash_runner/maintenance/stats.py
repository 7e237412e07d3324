"""Repository figures: what Stash puts in Repository status (totalSize, snapshotCount) and more.

The figures are restic 0.14's ``stats`` over all snapshots: ``restore_size``/``restore_files`` are its default mode
("restore-size": total_size, total_file_count), ``raw_data``/``raw_data_uncompressed``/``referenced_blobs`` its
``--mode raw-data`` (total_size, total_uncompressed_size, total_blob_count). A damaged repository (a tree that cannot
be read, a blob in no index, a pack that is gone) is an error naming what is missing, never a figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from backends.base import FileType, Handle
from stash_runner.errors import IntegrityError, RepositoryError
from stash_runner.restic.crypto import OVERHEAD
from stash_runner.restic.reader import load_tree
from stash_runner.restic.repository import Repository


@dataclass
class RepoStats:
    snapshots: int = 0
    #: bytes a restore of every snapshot would write (restic stats' default "restore-size"): hard links once
    restore_size: int = 0
    #: entries a restore of every snapshot would make: files, directories and the rest (its total_file_count)
    restore_files: int = 0
    #: stored bytes of the blobs the snapshots reference (restic stats --mode raw-data; Stash's totalSize)
    raw_data: int = 0
    #: what those blobs would take stored without compression (raw-data's total_uncompressed_size in format 2)
    raw_data_uncompressed: int = 0
    #: bytes of every file in storage: packs, index, snapshots, keys, config, locks
    repository_size: int = 0
    blobs: int = 0  # blobs in the index
    referenced_blobs: int = 0  # raw-data's total_blob_count: trees and data
    packs: int = 0  # pack files in storage
    index_files: int = 0

    def json(self) -> dict:
        return asdict(self)


@dataclass
class _TreeSum:
    """A tree's share of a snapshot's restore size, everything below it included."""

    nodes: int = 0
    #: sizes that always count: nodes that are not hard links (restic: links == 1, directories, no inode)
    plain: int = 0
    #: hard links: (device, inode) -> size; restic counts each once per snapshot, the first one met
    linked: dict[tuple[int, int], int] = field(default_factory=dict)


def run_stats(repo: Repository) -> RepoStats:
    """Reads the index, the snapshots and each distinct tree once (snapshots share most trees)."""
    st = RepoStats()
    if not repo.index:
        repo.load_index()
    st.blobs = len(repo.index)
    snaps = repo.list_snapshots()
    st.snapshots = len(snaps)

    sums: dict[str, _TreeSum] = {}
    referenced: set[bytes] = set()  # raw-data: every tree and data blob the snapshots reach

    def summary(tree_id: str, where: str) -> _TreeSum:
        if tree_id in sums:
            return sums[tree_id]
        referenced.add(bytes.fromhex(tree_id))
        try:
            nodes = load_tree(repo, tree_id)
        except RepositoryError as e:
            # The snapshot and the tree that cannot be read, then why (restic: "walking tree …: …").
            loc = f"{repo.backend.location}: "
            why = str(e)[len(loc):] if str(e).startswith(loc) else str(e)
            raise type(e)(f"{loc}{where}: tree {tree_id}: {why}") from None
        total = _TreeSum()
        # restic's walker goes by name (Go compares bytes), depth first: "first met" is in this order.
        for node in sorted(nodes, key=lambda n: n.name.encode()):
            total.nodes += 1
            if node.type == "dir":
                if not node.subtree:
                    raise IntegrityError(f"{repo.backend.location}: {where}: tree {tree_id}: directory "
                                         f"{node.name!r} has no subtree")
                below = summary(node.subtree, f"{where}/{node.name}")
                total.nodes += below.nodes
                total.plain += (node.size or 0) + below.plain
                for key, size in below.linked.items():
                    total.linked.setdefault(key, size)
                continue
            referenced.update(bytes.fromhex(c) for c in node.content or [])
            inode = int(node.extra.get("inode") or 0)
            if int(node.extra.get("links") or 0) > 1 and inode:
                total.linked.setdefault((int(node.extra.get("device_id") or 0), inode), node.size or 0)
            else:
                total.plain += node.size or 0
        sums[tree_id] = total
        return total

    for snap in snaps:
        s = summary(snap.tree, f"snapshot {snap.short_id}")
        st.restore_size += s.plain + sum(s.linked.values())
        st.restore_files += s.nodes

    # Listed after the index was read: packs a concurrent backup adds before its index are in this listing.
    listings = {t: repo.list_files(t) for t in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.KEY,
                                                 FileType.LOCK)}
    st.packs = len(listings[FileType.DATA])
    st.index_files = len(listings[FileType.INDEX])
    st.repository_size = sum(size for files in listings.values() for _, size in files)
    st.repository_size += repo.file_size(Handle(FileType.CONFIG))

    packs_present = {name for name, _ in listings[FileType.DATA]}
    missing: dict[str, list[str]] = {}  # pack -> the needed blobs in it
    st.referenced_blobs = len(referenced)
    for blob_id in sorted(referenced):
        found = repo.index.lookup(blob_id)
        if found is None:
            # restic stats --mode raw-data: "blob … not found"
            raise IntegrityError(f"{repo.backend.location}: blob {blob_id.hex()} is referenced by a snapshot but "
                                 "is in no index")
        pack_id, b = found
        if pack_id.hex() not in packs_present:
            missing.setdefault(pack_id.hex(), []).append(f"{b.type} blob {b.id.hex()}")
        st.raw_data += b.length
        st.raw_data_uncompressed += b.uncompressed_length + OVERHEAD if b.uncompressed_length else b.length
    if missing:
        # restic's stats reads only trees and the index, so it prints figures over a lost data pack; a Repository's
        # status must not show the size of data that is gone.
        pack, blobs = next(iter(sorted(missing.items())))
        more = f" ({len(missing) - 1} more pack(s) missing)" if len(missing) > 1 else ""
        raise IntegrityError(f"{repo.backend.location}: pack {pack} does not exist, and it holds {len(blobs)} "
                             f"blob(s) the snapshots need, e.g. {blobs[0]}{more}")
    return st
