"""Prune: remove the data no snapshot needs, planned as restic 0.14 plans it, written in a crash-safe order.

Plan (restic's cmd/restic/cmd_prune.go: getUsedBlobs, packInfoFromIndex, decidePackAction):

1. Used blobs: every tree reachable from every snapshot (each tree loaded once) and the data blobs they name.
2. Per pack: used/unused blob counts and sizes; a blob stored in several packs (duplicate) counts as used
   in one of them only, preferring packs that hold other used blobs.
3. Packs with no used blob are deleted; packs with unused blobs (or of mixed type, or uncompressed trees
   in a v2 repository) are candidates for repacking, most-unused first, until the unused bytes left are
   within ``max_unused``; pack files that no index names are deleted.

Order of writes, so that a crash at any moment leaves a repository that ``restic check`` accepts and every
snapshot restorable:

1. exclusive lock; 2. delete unindexed packs (nothing can refer to them: the lock keeps backups out, and
prune stops before deleting anything if a used blob is in no index); 3. copy the still-used blobs of the
packs to repack into new packs; 4. write a new index of every pack that stays plus the new ones; the last
index file written names every old index file in ``supersedes``, so a crash while writing leaves the old
index in force; 5. delete the old index files; 6. delete the dropped and repacked packs.

A crash leaves only extra files behind (new packs no index names, or old packs no index names, or old index
files superseded by a complete new index): restic check accepts them and the next prune removes them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from backends.base import BackendError, FileType, Handle, NotFoundError
from stash_runner.errors import BadInput, IntegrityError, RepositoryError
from stash_runner.restic import compression
from stash_runner.restic.index import Index, index_json, index_packs, index_supersedes, split_for_files
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.pack import (
    DATA,
    HEADER_OVERHEAD,
    TARGET_PACK_SIZE,
    TREE,
    PackBuilder,
    PackedBlob,
    entry_size,
    header_size,
)
from stash_runner.restic.repository import Repository
from stash_runner.restic.uploader import PackUploader

from .parallel import chunked_map, workers_for
from .sizes import format_bytes, format_percent, max_unused_limit, parse_size

log = logging.getLogger("stash_runner")

MIXED = "mixed"  # a pack with both data and tree blobs: restic always repacks those
# restic keeps packs below 1/25 of the target size unless at least this many exist (then repacks them).
MIN_SMALL_PACKS = 10
# Ranged reads while repacking: blobs closer than MAX_GAP share one request of at most MAX_RANGE bytes.
MAX_GAP = 1 << 20
MAX_RANGE = TARGET_PACK_SIZE
TREES_PER_BATCH = 64  # trees decoded at once while walking snapshots: bounds memory on wide trees
PROGRESS_INTERVAL = 5.0

Progress = Callable[[str], None]


@dataclass
class PruneResult:
    """What prune found and did; sizes in bytes. ``bytes_freed`` is exact after a run, an estimate for dry runs."""

    dry_run: bool = False
    snapshots: int = 0
    # blobs as restic's prune counts them (sizes: stored blob lengths)
    blobs_used: int = 0
    size_used: int = 0
    blobs_duplicate: int = 0
    size_duplicate: int = 0
    blobs_unused: int = 0
    size_unused: int = 0
    size_unreferenced: int = 0  # pack files no index names
    blobs_repack: int = 0
    size_repack: int = 0
    blobs_repackrm: int = 0  # unused blobs that repacking drops
    size_repackrm: int = 0
    blobs_remove: int = 0  # unused blobs in packs deleted whole
    size_remove: int = 0
    # packs
    packs_used: int = 0
    packs_partly_used: int = 0
    packs_unused: int = 0
    packs_keep: int = 0
    packs_repack: int = 0
    packs_remove: int = 0
    packs_unreferenced: int = 0
    packs_missing: int = 0  # in the index but not in storage, and not needed: dropped from the index
    # storage before and after (data/ only)
    packs_before: int = 0
    pack_bytes_before: int = 0
    packs_after: int = 0
    pack_bytes_after: int = 0
    packs_written: int = 0
    pack_bytes_written: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    bytes_freed: int = 0  # data/ shrank by this much
    packs_not_removed: int = 0  # deletions that failed (warned about): the next prune removes them
    elapsed: float = 0.0
    removed_packs: list[str] = field(default_factory=list, repr=False)  # deleted whole (unused)
    repacked_packs: list[str] = field(default_factory=list, repr=False)
    unreferenced_packs: list[str] = field(default_factory=list, repr=False)
    new_packs: list[str] = field(default_factory=list, repr=False)

    @property
    def size_prune(self) -> int:
        """restic's "total prune" size: unused blobs dropped plus unreferenced pack files."""
        return self.size_remove + self.size_repackrm + self.size_unreferenced

    def stats_lines(self) -> list[str]:
        """The statistics block restic 0.14's prune prints, same wording and layout."""
        total_blobs = self.blobs_used + self.blobs_unused + self.blobs_duplicate
        total_size = self.size_used + self.size_duplicate + self.size_unused + self.size_unreferenced
        unused_size = self.size_duplicate + self.size_unused
        pruned_blobs = self.blobs_remove + self.blobs_repackrm
        unused_after = unused_size - self.size_remove - self.size_repackrm
        lines = [f"used:         {self.blobs_used:10d} blobs / {format_bytes(self.size_used)}"]
        if self.blobs_duplicate:
            lines.append(f"duplicates:   {self.blobs_duplicate:10d} blobs / {format_bytes(self.size_duplicate)}")
        lines.append(f"unused:       {self.blobs_unused:10d} blobs / {format_bytes(self.size_unused)}")
        if self.size_unreferenced:
            lines.append(f"unreferenced:                    {format_bytes(self.size_unreferenced)}")
        lines += [
            f"total:        {total_blobs:10d} blobs / {format_bytes(total_size)}",
            f"unused size: {format_percent(unused_size, total_size)} of total size",
            "",
            f"to repack:    {self.blobs_repack:10d} blobs / {format_bytes(self.size_repack)}",
            f"this removes: {self.blobs_repackrm:10d} blobs / {format_bytes(self.size_repackrm)}",
            f"to delete:    {self.blobs_remove:10d} blobs / {format_bytes(self.size_remove + self.size_unreferenced)}",
            f"total prune:  {pruned_blobs:10d} blobs / {format_bytes(self.size_prune)}",
            f"remaining:    {total_blobs - pruned_blobs:10d} blobs / {format_bytes(total_size - self.size_prune)}",
            f"unused size after prune: {format_bytes(unused_after)} "
            f"({format_percent(unused_after, total_size - self.size_prune)} of remaining size)",
            "",
            f"totally used packs: {self.packs_used:10d}",
            f"partly used packs:  {self.packs_partly_used:10d}",
            f"unused packs:       {self.packs_unused:10d}",
            "",
            f"to keep:      {self.packs_keep:10d} packs",
            f"to repack:    {self.packs_repack:10d} packs",
            f"to delete:    {self.packs_remove:10d} packs",
        ]
        if self.packs_unreferenced:
            lines.append(f"to delete:    {self.packs_unreferenced:10d} unreferenced packs")
        return lines

    def summary(self) -> str:
        """One line for logs and for a backup's post-action report."""
        if self.dry_run:
            return (f"prune (dry run): would delete {self.packs_remove + self.packs_unreferenced} packs and repack "
                    f"{self.packs_repack}, freeing about {format_bytes(self.bytes_freed)}")
        return (f"prune: deleted {self.packs_remove + self.packs_unreferenced} packs, repacked {self.packs_repack} "
                f"into {self.packs_written}, freed {format_bytes(self.bytes_freed)} "
                f"({self.packs_before} -> {self.packs_after} packs, {format_bytes(self.pack_bytes_before)} -> "
                f"{format_bytes(self.pack_bytes_after)}) in {self.elapsed:.1f} s")


# -- the index as prune needs it (every copy of every blob, per pack) ---------------------------

@dataclass
class _IndexState:
    files: list[str]  # every index file in storage, superseded ones too: the new index replaces them all
    superseded: set[str]
    packs: dict[bytes, list[PackedBlob]]  # from the index files in force; a pack listed twice counts once


@dataclass(slots=True)
class _PackInfo:
    used_blobs: int = 0
    unused_blobs: int = 0
    used_size: int = 0  # starts at the header size, as in restic
    unused_size: int = 0
    tpe: str | None = None  # DATA, TREE, MIXED; None while no blob was seen
    uncompressed: bool = False
    must_compress: bool = False

    @property
    def size(self) -> int:
        return self.used_size + self.unused_size


@dataclass
class _Plan:
    unreferenced: dict[bytes, int]  # pack id -> file size
    sizes: dict[bytes, int]  # file sizes of the packs to remove and to repack
    remove: set[bytes]
    repack: list[bytes]  # in the order restic would pick them
    ignore: set[bytes]  # indexed, missing from storage, not needed: left out of the new index
    must_compress: set[bytes]
    keep_blobs: dict[str, set[bytes]]  # used blobs that live only in packs to repack
    rewrite_index: bool


# -- entry point -------------------------------------------------------------------------------

def run_prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    max_unused: str = "5%",
    max_repack_size: str | None = None,
    repack_small: bool = False,
    repack_uncompressed: bool = False,
    repack_cacheable_only: bool = False,
    lock: bool = True,
    progress: Progress | None = None,
) -> PruneResult:
    """Remove unneeded data from ``repo`` as ``restic prune`` does; see the module docstring.

    ``lock=False`` when the caller already holds an exclusive lock (or, for a dry run, any lock).
    ``progress`` receives restic's messages and its statistics block, line by line.
    After a run (not a dry run) ``repo.index`` describes the repository as pruned.
    """
    limit = max_unused_limit(max_unused)
    max_repack = parse_size(max_repack_size) if max_repack_size else math.inf
    if repack_uncompressed and not repo.compressed:
        raise BadInput("compression requires at least repository format version 2")
    pruner = _Pruner(repo, limit, max_repack, repack_small, repack_uncompressed, repack_cacheable_only,
                     progress or (lambda _msg: None))
    if not lock:
        return pruner.run(dry_run)
    # A dry run changes nothing, so a shared lock is enough (as in later restic versions).
    with RepositoryLock(repo, exclusive=not dry_run):
        return pruner.run(dry_run)


class _Pruner:
    def __init__(self, repo: Repository, limit: Callable[[int], float], max_repack: float, repack_small: bool,
                 repack_uncompressed: bool, repack_cacheable_only: bool, say: Progress):
        self.repo = repo
        self.limit = limit
        self.max_repack = max_repack
        self.repack_small = repack_small
        self.repack_uncompressed = repack_uncompressed
        self.repack_cacheable_only = repack_cacheable_only
        self.say = say
        self.result = PruneResult()
        self.started = time.monotonic()

    def run(self, dry_run: bool) -> PruneResult:
        r = self.result
        r.dry_run = dry_run
        with ThreadPoolExecutor(max(2, self.repo.backend.connections), thread_name_prefix="prune") as pool:
            self.say("loading indexes...")
            state = load_index_state(self.repo, pool)
            used = self._used_blobs(state, pool)
            self.say("searching used packs...")
            keep, infos = self._pack_infos(state.packs, used)
            del used
            self.say("collecting packs for deletion and repacking")
            plan = self._decide(state, keep, infos)
            for line in ["", *r.stats_lines(), ""]:
                self.say(line)
            if dry_run:
                r.bytes_freed = self._estimate_freed(state, plan)
                r.packs_after = r.packs_before - r.packs_remove - r.packs_repack - r.packs_unreferenced
                r.pack_bytes_after = r.pack_bytes_before - r.bytes_freed
            else:
                self._execute(state, plan, pool)
                self.say("done")
        r.elapsed = time.monotonic() - self.started
        return r

    # -- 1. used blobs -----------------------------------------------------------------------

    def _used_blobs(self, state: _IndexState, pool: ThreadPoolExecutor) -> dict[str, set[bytes]]:
        self.say("loading all snapshots...")
        names = [name for name, _ in self.repo.list_files(FileType.SNAPSHOT)]

        def tree_of(name: str) -> str:
            tree = self.repo.load_unpacked(FileType.SNAPSHOT, name).get("tree")
            if not isinstance(tree, str):
                raise IntegrityError(f"{self.repo.backend.location}: snapshot {name[:8]} has no tree (damaged)")
            return tree

        roots = set(chunked_map(pool, workers_for(self.repo), tree_of, names))
        self.result.snapshots = len(names)
        self.say(f"finding data that is still in use for {len(names)} snapshots")
        # Where to read each tree: the first copy the index names (restic reads any copy).
        where: dict[bytes, tuple[bytes, PackedBlob]] = {}
        for pack_id, blobs in state.packs.items():
            for b in blobs:
                if b.type == TREE and b.id not in where:
                    where[b.id] = (pack_id, b)

        def load_tree(tree_id: bytes) -> tuple[list[bytes], list[bytes]]:
            found = where.get(tree_id)
            if found is None:
                raise IntegrityError(
                    f"{self.repo.backend.location}: tree {tree_id.hex()} is in no index: the index is not "
                    "complete; prune stops to prevent (additional) data loss")
            pack_id, b = found
            raw = _load(self.repo, Handle(FileType.DATA, pack_id.hex()), b.offset, b.length)
            nodes = json.loads(self.repo.decode_blob(raw, b, pack_id)).get("nodes") or []
            content = [bytes.fromhex(x) for n in nodes for x in n.get("content") or ()]
            subtrees = [bytes.fromhex(n["subtree"]) for n in nodes if n.get("subtree")]
            return content, subtrees

        used_trees = {bytes.fromhex(t) for t in roots}
        used_data: set[bytes] = set()
        frontier = list(used_trees)
        while frontier:
            batch, frontier = frontier[:TREES_PER_BATCH], frontier[TREES_PER_BATCH:]
            for content, subtrees in pool.map(load_tree, batch):
                used_data.update(content)
                for t in subtrees:
                    if t not in used_trees:  # shared subtrees are walked once
                        used_trees.add(t)
                        frontier.append(t)
        return {DATA: used_data, TREE: used_trees}

    # -- 2. per pack: used and unused (restic's packInfoFromIndex) -----------------------------

    def _pack_infos(self, packs: dict[bytes, list[PackedBlob]], used: dict[str, set[bytes]]
                    ) -> tuple[dict[str, set[bytes]], dict[bytes, _PackInfo]]:
        r = self.result
        keep: dict[str, set[bytes]] = {DATA: set(), TREE: set()}
        duplicates: dict[tuple[str, bytes], int] = {}
        empty: set[bytes] = set()
        for blobs in packs.values():
            for b in blobs:
                wanted = used.get(b.type, empty)
                kept = keep.setdefault(b.type, set())
                if b.id in wanted:  # first copy of a used blob
                    wanted.discard(b.id)
                    kept.add(b.id)
                    r.blobs_used += 1
                    r.size_used += b.length
                elif b.id in kept:  # a further copy
                    key = (b.type, b.id)
                    duplicates[key] = duplicates.get(key, 1) + 1
                    r.blobs_duplicate += 1
                    r.size_duplicate += b.length
                else:
                    r.blobs_unused += 1
                    r.size_unused += b.length
        missing = sum(len(s) for s in used.values())
        if missing:
            sample = next(t + " " + i.hex() for t, s in used.items() for i in s)
            raise IntegrityError(
                f"{self.repo.backend.location}: {missing} used blobs are in no index (e.g. {sample}). "
                "Integrity check failed: data seems to be missing; prune stops to prevent (additional) data loss")

        infos: dict[bytes, _PackInfo] = {}
        for pack_id, blobs in packs.items():
            ip = _PackInfo(used_size=header_size(blobs))
            for b in blobs:
                if ip.tpe is None:
                    ip.tpe = b.type
                elif ip.tpe != b.type:
                    ip.tpe = MIXED
                if (b.type, b.id) in duplicates:
                    pass  # decided below
                elif b.id in keep[b.type]:
                    ip.used_blobs += 1
                    ip.used_size += b.length
                else:
                    ip.unused_blobs += 1
                    ip.unused_size += b.length
                if not b.uncompressed_length:
                    ip.uncompressed = True
            infos[pack_id] = ip

        # Each duplicated blob is used in exactly one pack: one that holds other used blobs if any, else
        # its last copy (restic's rule, which tends to leave whole packs unused so that they are deleted).
        if duplicates:
            for pack_id, blobs in packs.items():
                ip = infos[pack_id]
                for b in blobs:
                    key = (b.type, b.id)
                    count = duplicates.get(key)
                    if count is None:
                        continue
                    if count == 0:
                        ip.unused_blobs += 1
                        ip.unused_size += b.length
                    elif ip.used_blobs > 0 or count == 1:
                        ip.used_blobs += 1
                        ip.used_size += b.length
                        duplicates[key] = 0
                    else:
                        ip.unused_blobs += 1
                        ip.unused_size += b.length
                        duplicates[key] = count - 1
        return keep, infos

    # -- 3. what to do with each pack (restic's decidePackAction) -------------------------------

    def _decide(self, state: _IndexState, keep: dict[str, set[bytes]], infos: dict[bytes, _PackInfo]) -> _Plan:
        r = self.result
        small = TARGET_PACK_SIZE // 5 * 4 if self.repack_small else TARGET_PACK_SIZE // 25
        unreferenced: dict[bytes, int] = {}
        remove: set[bytes] = set()
        candidates: list[tuple[bytes, _PackInfo]] = []
        small_candidates: list[tuple[bytes, _PackInfo]] = []
        listed: dict[bytes, int] = {}
        for name, size in self.repo.list_files(FileType.DATA):
            pack_id = _pack_id(name)
            if pack_id is None:
                continue  # not a pack file name (restic ignores those as well)
            listed[pack_id] = size
            r.packs_before += 1
            r.pack_bytes_before += size
            ip = infos.get(pack_id)
            if ip is None:  # in no index: left by an interrupted backup or prune
                unreferenced[pack_id] = size
                r.size_unreferenced += size
                continue
            if ip.size != size and ip.used_blobs:
                raise IntegrityError(
                    f"{self.repo.backend.location}: pack {pack_id.hex()[:16]}: calculated size {ip.size} does not "
                    f"match real size {size}; the index is wrong (run 'restic rebuild-index')")
            if ip.used_blobs == 0:
                r.packs_unused += 1
            elif ip.unused_blobs == 0:
                r.packs_used += 1
            else:
                r.packs_partly_used += 1
            # v2: trees are always stored compressed; data too when asked to.
            ip.must_compress = (self.repo.compressed and ip.uncompressed
                                and (ip.tpe == TREE or self.repack_uncompressed))
            if ip.used_blobs == 0:
                remove.add(pack_id)
                r.blobs_remove += ip.unused_blobs
                r.size_remove += ip.unused_size
            elif self.repack_cacheable_only and ip.tpe == DATA:
                r.packs_keep += 1
            elif ip.unused_blobs == 0 and ip.tpe != MIXED and not ip.must_compress:
                if size >= small:
                    r.packs_keep += 1
                else:
                    small_candidates.append((pack_id, ip))
            else:
                candidates.append((pack_id, ip))

        ignore: set[bytes] = set()
        needed_missing = []
        for pack_id, ip in infos.items():
            if pack_id in listed:
                continue
            if ip.used_blobs == 0:
                ignore.add(pack_id)
                r.blobs_remove += ip.unused_blobs
                r.size_remove += ip.unused_size
            else:
                needed_missing.append(pack_id.hex())
        if needed_missing:
            raise IntegrityError(
                f"{self.repo.backend.location}: the index references {len(needed_missing)} needed pack files "
                f"which are missing from the repository: {', '.join(needed_missing[:5])}")
        r.packs_missing = len(ignore)

        if len(small_candidates) < MIN_SMALL_PACKS:
            # Too few to be worth it; also stops a lone small pack from being repacked over and over.
            r.packs_keep += len(small_candidates)
        else:
            candidates += small_candidates

        def order(a: tuple[bytes, _PackInfo], b: tuple[bytes, _PackInfo]) -> int:
            # Trees and mixed packs first, then small packs, then by unused/used ratio, highest first.
            pa, pb = a[1], b[1]
            if (pa.tpe != DATA) != (pb.tpe != DATA):
                return -1 if pa.tpe != DATA else 1
            if (pa.size < small) != (pb.size < small):
                return -1 if pa.size < small else 1
            lhs, rhs = pa.unused_size * pb.used_size, pb.unused_size * pa.used_size
            return -1 if lhs > rhs else (1 if lhs < rhs else 0)

        candidates.sort(key=functools.cmp_to_key(order))
        # restic 0.14 leaves duplicates out of this sum (its uint64 can then wrap); unused is unused.
        max_unused_after = self.limit(r.size_used)
        repack: list[bytes] = []
        must_compress: set[bytes] = set()
        for pack_id, ip in candidates:
            unused_left = r.size_unused + r.size_duplicate - r.size_remove - r.size_repackrm
            if r.size_repack + ip.size >= self.max_repack:
                r.packs_keep += 1
            elif ip.tpe != DATA or ip.must_compress or not (unused_left < max_unused_after and ip.size >= small):
                repack.append(pack_id)
                if ip.must_compress:
                    must_compress.add(pack_id)
                r.blobs_repack += ip.used_blobs + ip.unused_blobs
                r.size_repack += ip.size
                r.blobs_repackrm += ip.unused_blobs
                r.size_repackrm += ip.unused_size
            else:
                r.packs_keep += 1
        r.packs_unreferenced = len(unreferenced)
        r.packs_repack = len(repack)
        r.packs_remove = len(remove)
        r.removed_packs = sorted(p.hex() for p in remove)
        r.repacked_packs = [p.hex() for p in repack]
        r.unreferenced_packs = sorted(p.hex() for p in unreferenced)

        # Copy only used blobs that no pack we keep already holds.
        dropped = remove | ignore | set(repack)
        if repack:
            for pack_id, blobs in state.packs.items():
                if pack_id not in dropped:
                    for b in blobs:
                        keep[b.type].discard(b.id)
        else:
            keep = {DATA: set(), TREE: set()}
        # Superseded index files still present (a crash after the new index was written): rewrite to clean up.
        rewrite = bool(dropped or state.superseded)
        sizes = {p: listed[p] for p in remove | set(repack)}
        return _Plan(unreferenced, sizes, remove, repack, ignore, must_compress, keep, rewrite)

    def _estimate_freed(self, state: _IndexState, plan: _Plan) -> int:
        """Files deleted minus what repacking writes (the new packs' headers estimated per 16 MiB)."""
        deleted = sum(plan.unreferenced.values()) + sum(plan.sizes.values())
        written = 0
        seen: set[tuple[str, bytes]] = set()
        for pack_id in plan.repack:
            for b in state.packs[pack_id]:
                if b.id in plan.keep_blobs[b.type] and (b.type, b.id) not in seen:
                    seen.add((b.type, b.id))
                    written += b.length + entry_size(b)
        if seen:
            written += HEADER_OVERHEAD * max(1, math.ceil(written / TARGET_PACK_SIZE))
        return deleted - written

    # -- 4. doing it, in the crash-safe order --------------------------------------------------

    def _execute(self, state: _IndexState, plan: _Plan, pool: ThreadPoolExecutor) -> None:
        r = self.result
        repo = self.repo
        if plan.unreferenced:
            self.say("deleting unreferenced packs")
            failed = _remove_all(repo, FileType.DATA, [p.hex() for p in plan.unreferenced], pool)
            r.bytes_freed += sum(s for p, s in plan.unreferenced.items() if p.hex() not in failed)
            self._not_removed(failed)

        repacker = _Repacker(repo, state.packs, plan.keep_blobs, plan.must_compress, self.say)
        written_index: list[str] = []
        final_written = False
        try:
            if plan.repack:
                self.say("repacking packs")
                repacker.run(plan.repack)
                left = sum(len(s) for s in plan.keep_blobs.values())
                if left:
                    raise RepositoryError(f"internal error: {left} blobs were not repacked; nothing was deleted")
            if plan.rewrite_index:
                self.say("rebuilding index")
                dropped = plan.remove | plan.ignore | set(plan.repack)
                remaining = [(p, blobs) for p, blobs in state.packs.items() if p not in dropped]
                remaining += [(p, blobs) for p, blobs, _ in repacker.written]
                groups = split_for_files(remaining)
                # Every file but the last first: only the last names the old files as superseded, so until
                # it exists the old index stays in force (for readers that honour "supersedes"). Each file's
                # JSON is built in its task, so at most `connections` of them are in memory.
                futures = [pool.submit(lambda g=g: repo.save_unpacked(FileType.INDEX, index_json(g))[0])
                           for g in groups[:-1]]
                wait(futures)  # all of them, so that undo knows every file that was written
                written_index += [f.result() for f in futures if f.exception() is None]
                for f in futures:
                    f.result()
                if groups:
                    obj = index_json(groups[-1], supersedes=sorted(state.files))
                    written_index.append(repo.save_unpacked(FileType.INDEX, obj)[0])
                final_written = True
                r.index_files_written = len(written_index)
        except BaseException:
            if not final_written:
                self._undo(written_index, [p for p, _, _ in repacker.written])
            raise

        for pack_id, _, size in repacker.written:
            r.new_packs.append(pack_id.hex())
            r.packs_written += 1
            r.pack_bytes_written += size
        r.bytes_freed -= r.pack_bytes_written
        if plan.rewrite_index:
            self.say("deleting obsolete index files")
            old = [n for n in state.files if n not in written_index]
            failed = _remove_all(repo, FileType.INDEX, old, pool)
            r.index_files_removed = len(old) - len(failed)
            # An old index file left behind may name the packs below (for readers that ignore
            # "supersedes", restic among them), so they must stay until it is gone.
            _raise_failed(repo, failed, "old index file")
            doomed = sorted(plan.remove | set(plan.repack))
            if doomed:
                self.say(f"removing {len(doomed)} old packs")
                failed = _remove_all(repo, FileType.DATA, [p.hex() for p in doomed], pool)
                r.bytes_freed += sum(plan.sizes[p] for p in doomed if p.hex() not in failed)
                self._not_removed(failed)
            # The caller's repository object now describes what is stored.
            fresh = Index()
            dropped = plan.remove | plan.ignore | set(plan.repack)
            for p, blobs in state.packs.items():
                if p not in dropped:
                    fresh.add_pack(p, blobs)
            for p, blobs, _ in repacker.written:
                fresh.add_pack(p, blobs)
            repo.index = fresh
        r.packs_after = (r.packs_before - r.packs_unreferenced - r.packs_remove - r.packs_repack + r.packs_written
                         + r.packs_not_removed)
        r.pack_bytes_after = r.pack_bytes_before - r.bytes_freed

    def _not_removed(self, failed: set[str]) -> None:
        """As restic: a pack that could not be deleted is a warning; no index names it, the next prune retries."""
        if failed:
            self.result.packs_not_removed += len(failed)
            self.say(f"warning: {len(failed)} pack files could not be removed (e.g. {sorted(failed)[0][:16]}); "
                     "the repository is valid, the next prune removes them")

    def _undo(self, index_files: list[str], packs: list[bytes]) -> None:
        """After a failure before the new index took over: remove what this run wrote, index files first.

        Best effort: whatever stays is valid (new packs no index names, or new index files naming them).
        """
        for name in index_files:
            try:
                self.repo.remove(Handle(FileType.INDEX, name))
            except RepositoryError:
                return  # the packs it names must stay
        for pack_id in packs:
            with contextlib.suppress(RepositoryError):
                self.repo.remove(Handle(FileType.DATA, pack_id.hex()))


class _Repacker:
    """Copies the blobs still needed out of packs into new packs, uploaded in parallel.

    A blob's stored bytes (IV, ciphertext, MAC) are self-contained, so after checking that they decrypt to
    the blob's ID they are copied as they are: no re-compression or re-encryption, except for uncompressed
    blobs that must become compressed. Memory: one ranged read per download worker (at most MAX_RANGE or
    one blob), one pack per blob type being filled, and at most ``connections`` packs being uploaded.
    """

    def __init__(self, repo: Repository, packs: dict[bytes, list[PackedBlob]], keep: dict[str, set[bytes]],
                 must_compress: set[bytes], say: Progress):
        self.repo = repo
        self.packs = packs
        self.keep = keep
        self.must_compress = must_compress
        self.say = say
        self.written: list[tuple[bytes, list[PackedBlob], int]] = []
        self._lock = threading.Lock()
        self._builders = {DATA: PackBuilder(DATA), TREE: PackBuilder(TREE)}
        self._uploader = PackUploader(repo, self._pack_saved, self._pack_failed, name="prune-upload")
        self._error: BaseException | None = None
        self._local = threading.local()
        self._done = 0
        self._last_report = time.monotonic()

    def run(self, pack_ids: list[bytes]) -> None:
        # As restic: one connection fewer for downloads than there are, so that uploads always get one.
        workers = max(1, self.repo.backend.connections - 1)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="prune-read")
        try:
            for fut in [pool.submit(self._repack_pack, p, len(pack_ids)) for p in pack_ids]:
                fut.result()
            for blob_type in (DATA, TREE):
                builder = self._builders[blob_type]
                self._builders[blob_type] = PackBuilder(blob_type)
                if builder.blobs:
                    self._upload(builder)
        except BaseException as e:
            if self._error is None:
                self._error = e  # the other workers stop at their next pack
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # Always wait for the uploads: the caller must know every pack that was written.
            self._uploader.shutdown()
        self._uploader.wait()

    def _repack_pack(self, pack_id: bytes, total: int) -> None:
        if self._error is not None:
            raise self._error
        with self._lock:
            wanted = sorted((b for b in self.packs[pack_id] if b.id in self.keep[b.type]), key=lambda b: b.offset)
        h = Handle(FileType.DATA, pack_id.hex())
        for group in _ranges(wanted):
            start = group[0].offset
            data = _load(self.repo, h, start, group[-1].offset + group[-1].length - start)
            for b in group:
                raw = data[b.offset - start: b.offset - start + b.length]
                plain = self.repo.decode_blob(raw, b, pack_id)  # checks the MAC and the blob's ID
                ulen = b.uncompressed_length
                if not ulen and pack_id in self.must_compress:
                    comp = getattr(self._local, "compressor", None)
                    if comp is None:
                        comp = self._local.compressor = compression.Compressor()
                    raw, ulen = self.repo.key.encrypt(comp.compress(plain)), len(plain)
                self._add(b, raw, ulen)
        with self._lock:
            self._done += 1
            now = time.monotonic()
            report = now - self._last_report >= PROGRESS_INTERVAL
            if report:
                self._last_report = now
        if report:
            self.say(f"packs repacked: {self._done} / {total}")

    def _add(self, b: PackedBlob, raw: bytes, ulen: int) -> None:
        full = None
        with self._lock:
            kept = self.keep[b.type]
            if b.id not in kept:
                return  # another copy was taken already
            kept.discard(b.id)
            builder = self._builders[b.type]
            builder.add(b.id, raw, ulen)
            if builder.size >= TARGET_PACK_SIZE:
                full = builder
                self._builders[b.type] = PackBuilder(b.type)
        if full is not None:
            self._upload(full)

    def _upload(self, builder: PackBuilder) -> None:
        if self._error is not None:
            raise self._error
        self._uploader.upload(builder)

    def _pack_failed(self, pack_id: bytes, blobs: list[PackedBlob], size: int, e: BaseException) -> None:
        self._error = e
        # It may exist partly or wholly (a timeout after the write): list it so that undo removes it.
        with self._lock:
            self.written.append((pack_id, blobs, size))

    def _pack_saved(self, pack_id: bytes, blobs: list[PackedBlob], size: int) -> None:
        with self._lock:
            self.written.append((pack_id, blobs, size))


# -- helpers -----------------------------------------------------------------------------------

def load_index_state(repo: Repository, pool: ThreadPoolExecutor) -> _IndexState:
    """Every index file, decoded into per-pack blob lists (duplicates kept), honouring ``supersedes``."""
    names = sorted(name for name, _ in repo.list_files(FileType.INDEX))

    def load(name: str) -> tuple[str, list[str], list[tuple[bytes, list[PackedBlob]]]]:
        obj = repo.load_unpacked(FileType.INDEX, name)
        # restic's earliest index files (a bare list) predate compression: their blobs are stored as they are
        compressed = not isinstance(obj, list)
        packs = [
            (bytes.fromhex(p["id"]),
             [PackedBlob(bytes.fromhex(b["id"]), b["type"], b["offset"], b["length"],
                         (b.get("uncompressed_length") or 0) if compressed else 0)
              for b in p.get("blobs") or []])
            for p in index_packs(obj)
        ]
        return name, index_supersedes(obj), packs

    loaded = list(pool.map(load, names))
    superseded = {s for _, sup, _ in loaded for s in sup} & set(names)
    packs: dict[bytes, list[PackedBlob]] = {}
    for name, _, file_packs in loaded:
        if name in superseded:
            continue
        for pack_id, blobs in file_packs:
            packs.setdefault(pack_id, blobs)
    return _IndexState(names, superseded, packs)


def _pack_id(name: str) -> bytes | None:
    if len(name) != 64:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None


def _ranges(blobs: list[PackedBlob]) -> Iterator[list[PackedBlob]]:
    """Blobs sorted by offset, grouped into reads: small gaps are read through, a read stays bounded."""
    group: list[PackedBlob] = []
    for b in blobs:
        if group:
            start, end = group[0].offset, group[-1].offset + group[-1].length
            if b.offset - end > MAX_GAP or b.offset + b.length - start > MAX_RANGE:
                yield group
                group = []
        group.append(b)
    if group:
        yield group


def _load(repo: Repository, h: Handle, offset: int, length: int) -> bytes:
    """A ranged read with the repository's error translation (Repository.load_range would be the home)."""
    try:
        return repo.backend.load(h, offset, length)
    except NotFoundError as e:
        raise RepositoryError(str(e)) from None
    except BackendError as e:
        raise RepositoryError(str(e)) from None


def _remove_all(repo: Repository, ftype: FileType, names: list[str], pool: ThreadPoolExecutor) -> set[str]:
    """Remove files in parallel; returns the names that could not be removed."""

    def rm(name: str) -> str | None:
        try:
            repo.remove(Handle(ftype, name))
        except RepositoryError as e:
            log.warning("prune: %s", e)
            return name
        return None

    return {n for n in pool.map(rm, names) if n is not None}


def _raise_failed(repo: Repository, failed: set[str], what: str) -> None:
    if failed:
        raise RepositoryError(
            f"{repo.backend.location}: {len(failed)} {what}(s) could not be removed "
            f"(e.g. {sorted(failed)[0][:16]}); the repository is valid, run prune again")
