"""``check``: is the repository whole? Structure always; with read-data, every blob's MAC and hash.

What is checked, as restic 0.14's checker does (internal/checker/checker.go, cmd/restic/cmd_check.go):

* index files: each loads (its name is its SHA-256, it decrypts, it parses); a pack named by
  several index files, an old-format index and a pack mixing tree and data blobs are hints;
* packs: every pack an index names exists, with the size the index implies (a truncated pack is
  found from the listing alone); a pack no index names is a hint (a crashed backup leaves those);
* snapshots and trees: every snapshot loads and names a tree; every tree reachable from a snapshot
  is indexed, loads and is well formed; every data blob a file names is indexed;
* pack headers (beyond restic, which reads them only with --read-data): each pack's header, read
  from its end, decrypts and lists exactly the blobs the index places in that pack;
* with read-data (all packs, or a subset): the pack file's SHA-256 equals its name, and every
  blob the index places in it decrypts (MAC), decompresses and hashes to its ID.

Problems are collected, one line each naming the file or blob, and the check goes on: it stops
early only when storage cannot be listed or refuses the credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import struct
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import zstandard

from backends.base import AccessDeniedError, BackendError, FileType, Handle, NotFoundError
from stash_runner.errors import BadInput, IntegrityError, RepositoryError, StorageAccessDenied
from stash_runner.restic.compression import decompress
from stash_runner.restic.crypto import Key
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.pack import DATA, TREE, PackedBlob, header_size, parse_header
from stash_runner.restic.repository import Repository

from .parallel import chunked_map

log = logging.getLogger(__name__)

# read-data fetches a pack in ranges of this size, so a worker holds about two segments plus the
# blob being decoded, whatever the pack size (restic's --pack-size allows up to 128 MiB).
SEGMENT = 4 * 1024 * 1024
# Bytes kept from the end of what was read, to find the header without another request.
TAIL_KEEP = 64 * 1024
# restic's --read-data-subset=n/t buckets by the first byte of the pack ID.
MAX_BUCKETS = 256
# Threads reading packs with --read-data at most (see _check_packs).
READ_WORKERS_MAX = 8
NULL_ID = "0" * 64
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
# Node types restic's checkTree accepts without further checks.
_PLAIN_NODE_TYPES = {"symlink", "socket", "chardev", "dev", "fifo"}
# How many example blobs a header/index mismatch line names.
_EXAMPLES = 3


@dataclass
class CheckResult:
    """What the check found: ``errors`` make the repository damaged, ``hints`` do not."""

    errors: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    snapshots: int = 0
    index_files: int = 0
    packs: int = 0  # packs named by the index
    trees: int = 0  # distinct trees loaded and checked
    headers_checked: int = 0  # pack headers read and compared with the index
    packs_checked: int = 0  # packs read in full (read-data)
    blobs_checked: int = 0  # blobs decrypted and hashed while reading packs
    bytes_read: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


# -- --read-data-subset -------------------------------------------------------------------------

@dataclass(frozen=True)
class Subset:
    """restic's --read-data-subset: ``n/t`` (bucket n of t by the first byte of the pack ID, fixed),
    ``x%`` (that share of the packs, at least one) or a size such as ``500M`` (about that many
    bytes of packs); the last two pick packs at random, as restic does, unless seeded."""

    spec: str
    bucket: int = 0
    buckets: int = 0
    percent: float = 0.0
    size: int = 0

    def select(self, packs: Mapping[bytes, int], rng: random.Random) -> set[bytes]:
        """The packs to read, out of ``packs`` (pack ID -> size as the index implies it)."""
        if self.buckets:
            return {p for p in packs if p[0] % self.buckets == self.bucket - 1}
        percent = self.percent
        if self.size:
            total = sum(packs.values())
            if total == 0:
                return set()
            percent = min(self.size, total) / total * 100.0
        count = int(len(packs) * (percent / 100.0))
        if packs and count < 1:
            count = 1
        # Sorted first: the same seed picks the same packs whatever order the index listed them in.
        return set(rng.sample(sorted(packs), count))


_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_subset(spec: str) -> Subset:
    """Parse a --read-data-subset value; BadInput with restic's rules when it is not valid."""
    s = spec.strip()
    invalid = BadInput(
        f"--read-data-subset {spec!r} is not valid: use n/t (e.g. 1/5), a percentage (e.g. 2.5%) "
        "or a size (e.g. 500M)"
    )
    if "/" in s:
        parts = s.split("/")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise invalid
        n, t = int(parts[0]), int(parts[1])
        if n == 0 or t == 0 or n > t:
            raise BadInput(f"--read-data-subset {spec!r}: n/t must be positive integers with n <= t, e.g. 1/2")
        if t > MAX_BUCKETS:
            raise BadInput(f"--read-data-subset {spec!r}: t must be at most {MAX_BUCKETS}")
        return Subset(s, bucket=n, buckets=t)
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise invalid from None
        if not 0.0 < pct <= 100.0:
            raise BadInput(f"--read-data-subset {spec!r}: the percentage must be above 0% and at most 100%")
        return Subset(s, percent=pct)
    m = re.fullmatch(r"(\d+)([bBkKmMgGtT]?)", s)
    if not m:
        raise invalid
    size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if size <= 0:
        raise BadInput(f"--read-data-subset {spec!r}: the size must be above 0")
    return Subset(s, size=size)


# -- the check ----------------------------------------------------------------------------------

def run_check(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: str | None = None,
    lock: bool = True,
    check_headers: bool = True,
    seed: int | None = None,
) -> CheckResult:
    """Check ``repo`` and return what is wrong; raises only when the check itself cannot run.

    ``subset`` reads part of the packs (see Subset; exclusive with ``read_data``). ``lock`` takes a
    shared lock: enough, because snapshots are listed before the index is loaded (below), and it
    keeps prune out while letting backups run. ``check_headers`` reads each unread pack's header
    (one small ranged request per pack). ``seed`` makes the random subsets reproducible.
    """
    if read_data and subset:
        raise BadInput("--read-data and --read-data-subset cannot be used together")
    chosen = parse_subset(subset) if subset else None
    workers = max(2, repo.backend.connections)
    guard = RepositoryLock(repo, read_only=True) if lock else contextlib.nullcontext()
    with guard, ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        return _Checker(repo, pool, workers).run(read_data, chosen, check_headers, random.Random(seed))


class _Damage(Exception):
    """One problem with a blob or a file, worded for the report."""


@dataclass
class _IndexedPack:
    blobs: list[PackedBlob] = field(default_factory=list)
    index_files: list[str] = field(default_factory=list)

    def expected_size(self) -> int:
        return header_size(self.blobs) + sum(b.length for b in self.blobs)


@dataclass
class _IndexFile:
    name: str
    packs: list[tuple[bytes, list[PackedBlob]]] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)
    old_format: bool = False
    problem: str | None = None


@dataclass
class _PackOutcome:
    errors: list[str] = field(default_factory=list)
    blobs_checked: int = 0
    bytes_read: int = 0
    read: bool = False


class _Checker:
    def __init__(self, repo: Repository, pool: ThreadPoolExecutor, workers: int):
        self.repo = repo
        self.backend = repo.backend
        self.key: Key = repo.key
        self.pool = pool
        self.workers = workers
        self.result = CheckResult()
        self.packs: dict[bytes, _IndexedPack] = {}
        self.data_blobs: set[bytes] = set()
        self.tree_blobs: dict[bytes, tuple[bytes, PackedBlob]] = {}
        self.listed: dict[bytes, int] = {}  # packs in storage -> size

    def run(self, read_data: bool, subset: Subset | None, check_headers: bool, rng: random.Random) -> CheckResult:
        started = time.monotonic()
        # Snapshots are listed before the index is loaded, as restic does: a backup writes its index
        # before its snapshot, so every snapshot listed here finds its blobs in the index loaded next,
        # even while a backup runs alongside (it can only add unreferenced packs: hints).
        snapshot_names = self._list(FileType.SNAPSHOT)
        log.info("load indexes")
        self._load_indexes()
        log.info("check all packs")
        self._check_pack_files()
        log.info("check snapshots, trees and blobs")
        self._check_snapshots(snapshot_names)
        to_read: set[bytes] = set()
        if read_data:
            to_read = set(self.packs)
        elif subset is not None:
            to_read = subset.select({p: ip.expected_size() for p, ip in self.packs.items()}, rng)
        to_read &= set(self.listed)  # a missing pack is already an error
        if to_read or check_headers:
            log.info("read %d packs in full%s", len(to_read), ", the headers of the others" if check_headers else "")
            self._check_packs(to_read, check_headers)
        self.result.elapsed = time.monotonic() - started
        return self.result

    def _error(self, msg: str) -> None:
        self.result.errors.append(msg)

    def _hint(self, msg: str) -> None:
        self.result.hints.append(msg)

    def _list(self, ftype: FileType) -> list[tuple[str, int]]:
        return sorted(self.repo.list_files(ftype))

    # -- index -------------------------------------------------------------------------------

    def _load_indexes(self) -> None:
        files = self._list(FileType.INDEX)
        self.result.index_files = len(files)
        self.result.bytes_read += sum(size for _, size in files)
        # Each worker turns its file into PackedBlobs and drops the JSON: only one decoded index file
        # per worker is in memory at a time, beside the index being built.
        loaded = list(self.pool.map(lambda f: self._load_index_file(f[0]), files))
        # Superseded index files are ignored, as Repository.load_index does (restic 0.14 loads them
        # all and would report their packs as duplicates instead).
        superseded = {old: f.name for f in loaded if not f.problem for old in f.supersedes}
        for f in loaded:
            if f.problem:
                self._error(f"index {f.name}: {f.problem}")
                continue
            if f.old_format:
                # restic's pre-0.8 format: a bare list of packs. Readable; rebuild-index rewrites it.
                self._hint(f"index {f.name}: has the old format (non-critical)")
            if f.name in superseded:
                self._hint(f"index {f.name}: superseded by index {superseded[f.name]} but still present "
                           "(non-critical)")
                continue
            for pack_id, blobs in f.packs:
                ip = self.packs.setdefault(pack_id, _IndexedPack())
                if f.name not in ip.index_files:
                    ip.index_files.append(f.name)
                known = set(ip.blobs) if len(ip.index_files) > 1 else ()
                for b in blobs:
                    if b in known:
                        continue  # the same pack listed again: count each blob once
                    ip.blobs.append(b)
                    if b.type == DATA:
                        self.data_blobs.add(b.id)
                    else:
                        self.tree_blobs.setdefault(b.id, (pack_id, b))
        for pack_id, ip in sorted(self.packs.items()):
            if len(ip.index_files) > 1:
                self._hint(f"pack {pack_id.hex()}: contained in several indexes: {', '.join(ip.index_files)} "
                           "(non-critical)")
            if len({b.type for b in ip.blobs}) > 1:
                self._hint(f"pack {pack_id.hex()}: contains a mix of tree and data blobs (non-critical)")
        self.result.packs = len(self.packs)

    def _load_json(self, ftype: FileType, name: str) -> tuple[object, str | None]:
        """(the decoded file, None) or (None, what is wrong with it)."""
        try:
            return self.repo.load_unpacked(ftype, name), None
        except (RepositoryError, ValueError, zstandard.ZstdError) as e:
            return None, self._why(e)

    def _load_index_file(self, name: str) -> _IndexFile:
        obj, problem = self._load_json(FileType.INDEX, name)
        f = _IndexFile(name, problem=problem)
        if problem:
            return f
        if isinstance(obj, list):
            f.old_format, obj = True, {"packs": obj}
        if not isinstance(obj, dict):
            f.problem = f"is not an index (JSON {type(obj).__name__})"
            return f
        try:
            f.supersedes = [str(x) for x in obj.get("supersedes") or []]
            f.packs = _parse_index_packs(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            f.problem = f"malformed: {e!r}"
        return f

    def _why(self, e: Exception) -> str:
        msg = str(e) or type(e).__name__
        prefix = f"{self.backend.location}: "
        return msg[len(prefix):] if msg.startswith(prefix) else msg

    # -- pack files --------------------------------------------------------------------------

    def _check_pack_files(self) -> None:
        for name, size in self._list(FileType.DATA):
            if not _HEX_ID.match(name):
                self._hint(f"file {Handle(FileType.DATA, name)}: not a pack file name (ignored)")
                continue
            self.listed[bytes.fromhex(name)] = size
        for pack_id, ip in sorted(self.packs.items()):
            size = self.listed.get(pack_id)
            if size is None:
                self._error(f"pack {pack_id.hex()}: does not exist (named by index {', '.join(ip.index_files)})")
            elif size != ip.expected_size():
                self._error(f"pack {pack_id.hex()}: unexpected file size: got {size}, the index implies "
                            f"{ip.expected_size()} (truncated or damaged)")
        for pack_id in sorted(self.listed.keys() - self.packs.keys()):
            self._hint(f"pack {pack_id.hex()}: not referenced in any index (non-critical: left by an "
                       "interrupted backup; prune removes it)")

    # -- snapshots and trees -----------------------------------------------------------------

    def _check_snapshots(self, names: list[tuple[str, int]]) -> None:
        self.result.snapshots = len(names)
        self.result.bytes_read += sum(size for _, size in names)
        roots: dict[bytes, list[str]] = {}
        loaded = chunked_map(self.pool, self.workers, lambda f: self._load_json(FileType.SNAPSHOT, f[0]), names)
        for (name, _), (obj, problem) in zip(names, loaded, strict=True):
            if problem:
                self._error(f"snapshot {name}: {problem}")
                continue
            tree = obj.get("tree") if isinstance(obj, dict) else None
            if not tree:
                self._error(f"snapshot {name}: has no tree")
            elif not isinstance(tree, str) or not _HEX_ID.match(tree):
                self._error(f"snapshot {name}: tree {tree!r} is not a valid ID")
            else:
                roots.setdefault(bytes.fromhex(tree), []).append(name)
        self._walk_trees(roots)

    def _walk_trees(self, roots: dict[bytes, list[str]]) -> None:
        """Load every reachable tree once (1,000 snapshots of the same data share their trees),
        at most 2 * workers at a time; memory holds the IDs seen, not the trees."""
        seen: set[bytes] = set()
        stack: list[bytes] = []
        for tree_id, snaps in sorted(roots.items(), reverse=True):
            seen.add(tree_id)
            if tree_id in self.tree_blobs:
                stack.append(tree_id)
            else:
                self._error(f"{_snapshots_phrase(snaps)}: tree {tree_id.hex()} not found in index")
        inflight: dict[Future, bytes] = {}
        while stack or inflight:
            while stack and len(inflight) < 2 * self.workers:
                tree_id = stack.pop()
                inflight[self.pool.submit(self._load_tree, tree_id)] = tree_id
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: inflight[f]):
                tree_id = inflight.pop(fut)
                self.result.trees += 1
                try:
                    nodes, nbytes = fut.result()
                except _Damage as e:
                    where = f" (root of {_snapshots_phrase(roots[tree_id])})" if tree_id in roots else ""
                    self._error(f"tree {tree_id.hex()}{where}: {e}")
                    continue
                self.result.bytes_read += nbytes
                for sub in self._check_tree(tree_id, nodes):
                    if sub not in seen:
                        seen.add(sub)
                        stack.append(sub)

    def _load_tree(self, tree_id: bytes) -> tuple[list, int]:
        pack_id, b = self.tree_blobs[tree_id]
        try:
            raw = self._load(Handle(FileType.DATA, pack_id.hex()), b.offset, b.length)
            plain = _open_blob(self.key, raw, b)
        except _Damage as e:
            raise _Damage(f"in pack {pack_id.hex()}: {e}") from None
        try:
            nodes = json.loads(plain).get("nodes")
        except (ValueError, AttributeError) as e:
            raise _Damage(f"is not a tree: {e}") from None
        if nodes is not None and not isinstance(nodes, list):
            raise _Damage("is not a tree: nodes is not a list")
        return nodes or [], len(raw)

    def _check_tree(self, tree_id: bytes, nodes: list) -> list[bytes]:
        """restic's checkTree, one line per problem; returns the subtrees to visit."""
        where = f"tree {tree_id.hex()}"
        subtrees: list[bytes] = []
        for node in nodes:
            if not isinstance(node, dict):
                self._error(f"{where}: node {node!r} is not an object")
                continue
            name, kind = node.get("name") or "", node.get("type")
            if kind == "file":
                content = node.get("content")
                if content is None:
                    self._error(f"{where}: file {name!r} has nil blob list")
                for i, blob in enumerate(content or []):
                    if not isinstance(blob, str) or not _HEX_ID.match(blob):
                        self._error(f"{where}: file {name!r} blob {i} has an invalid ID {blob!r}")
                    elif blob == NULL_ID:
                        self._error(f"{where}: file {name!r} blob {i} has null ID")
                    elif bytes.fromhex(blob) not in self.data_blobs:
                        self._error(f"{where}: file {name!r} blob {blob} not found in index")
            elif kind == "dir":
                sub = node.get("subtree")
                if sub is None:
                    self._error(f"{where}: dir node {name!r} has no subtree")
                elif not isinstance(sub, str) or not _HEX_ID.match(sub):
                    self._error(f"{where}: dir node {name!r} subtree {sub!r} is not a valid ID")
                elif sub == NULL_ID:
                    self._error(f"{where}: dir node {name!r} subtree id is null")
                elif bytes.fromhex(sub) not in self.tree_blobs:
                    self._error(f"{where}: dir node {name!r} subtree {sub} not found in index")
                else:
                    subtrees.append(bytes.fromhex(sub))
            elif kind not in _PLAIN_NODE_TYPES:
                self._error(f"{where}: node {name!r} with invalid type {kind!r}")
            if not name:
                self._error(f"{where}: node with empty name")
        return subtrees

    # -- pack contents -----------------------------------------------------------------------

    def _check_packs(self, to_read: set[bytes], check_headers: bool) -> None:
        todo = sorted(p for p in self.packs if p in to_read or (check_headers and p in self.listed))
        # Reading packs is hashing and decrypting as much as waiting for storage: at least a thread per core and
        # two more, so that a core is not idle while a thread waits for its next segment (or for the GIL, which
        # the decryption holds). Each thread holds about a segment and a blob (see SEGMENT).
        workers = max(self.workers, min(READ_WORKERS_MAX, (os.cpu_count() or 1) + 2)) if to_read else self.workers
        pool = ThreadPoolExecutor(workers, thread_name_prefix="check-read") if workers > self.workers else None
        try:
            self._check_some_packs(todo, to_read, pool or self.pool)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _check_some_packs(self, todo: list[bytes], to_read: set[bytes], pool: ThreadPoolExecutor) -> None:
        # map() runs at most as many packs at once as the pool has threads.
        for pack_id, outcome in zip(todo, pool.map(lambda p: self._check_pack(p, p in to_read), todo),
                                    strict=True):
            self.result.errors.extend(outcome.errors)
            self.result.bytes_read += outcome.bytes_read
            self.result.blobs_checked += outcome.blobs_checked
            if outcome.read:
                self.result.packs_checked += 1
            else:
                self.result.headers_checked += 1
            if outcome.errors:
                log.debug("pack %s: %d problems", pack_id.hex(), len(outcome.errors))

    def _check_pack(self, pack_id: bytes, read: bool) -> _PackOutcome:
        name = pack_id.hex()
        h = Handle(FileType.DATA, name)
        size = self.listed[pack_id]
        blobs = sorted(self.packs[pack_id].blobs, key=lambda b: (b.offset, b.length))
        out = _PackOutcome(read=read)
        try:
            if read:
                tail = self._read_pack(h, size, blobs, out)
            else:
                # Exactly the header the index implies, in one request; parse_header asks for more if needed.
                n = min(size, self.packs[pack_id].expected_size() - sum(b.length for b in blobs))
                tail = self._load(h, size - n, n)
                out.bytes_read += n
            out.errors.extend(f"pack {name}: {p}" for p in self._compare_header(h, size, tail, blobs, out))
        except _Damage as e:
            out.errors.append(f"pack {name}: {e}")
        return out

    def _read_pack(self, h: Handle, size: int, blobs: list[PackedBlob], out: _PackOutcome) -> bytes:
        """Stream the pack: hash it all, verify each indexed blob as its bytes arrive; returns the
        last bytes read (where the header is)."""
        if _contiguous(blobs, size):
            return self._read_whole_blobs(h, size, blobs, out)
        name = h.name
        end = 0
        for b in blobs:
            if b.offset != end:
                out.errors.append(f"pack {name}: the index lists gaps or overlapping blobs")
                break
            end = b.offset + b.length
        hasher = hashlib.sha256()
        buf = bytearray()
        buf_start = 0  # the pack offset of buf[0]
        nxt = 0  # the next blob to verify
        pos = 0
        while pos < size:
            data = self._load(h, pos, min(SEGMENT, size - pos))
            hasher.update(data)
            buf += data
            pos += len(data)
            out.bytes_read += len(data)
            del data
            # Blobs are sorted by offset and bytes are dropped only up to the next blob's offset, so
            # every blob that ends in what was read is still wholly in buf.
            with memoryview(buf) as view:
                while nxt < len(blobs) and blobs[nxt].offset + blobs[nxt].length <= pos:
                    b = blobs[nxt]
                    nxt += 1
                    out.blobs_checked += 1
                    with view[b.offset - buf_start : b.offset - buf_start + b.length] as raw:
                        try:
                            _open_blob(self.key, raw, b)
                        except _Damage as e:
                            out.errors.append(f"pack {name}: {b.type} blob {b.id.hex()}: {e}")
            keep = min(blobs[nxt].offset if nxt < len(blobs) else pos, max(0, pos - TAIL_KEEP))
            if keep > buf_start:
                del buf[: keep - buf_start]
                buf_start = keep
        for b in blobs[nxt:]:
            out.errors.append(f"pack {name}: {b.type} blob {b.id.hex()}: beyond the end of the file ({size} bytes)")
        digest = hasher.hexdigest()
        if digest != name:
            out.errors.append(f"pack {name}: contents do not match the name (SHA-256 {digest})")
        return bytes(buf[-TAIL_KEEP:])

    def _read_whole_blobs(self, h: Handle, size: int, blobs: list[PackedBlob], out: _PackOutcome) -> bytes:
        """_read_pack for a pack as restic writes them (blobs one after another from offset 0, then the header):
        each request covers whole blobs (up to SEGMENT bytes, or one larger blob), so the blobs are verified in
        place, without gathering the bytes into a buffer; returns what follows the last blob (the header)."""
        hasher = hashlib.sha256()
        i = 0
        while i < len(blobs):
            start = blobs[i].offset
            j = i + 1
            while j < len(blobs) and blobs[j].offset + blobs[j].length - start <= SEGMENT:
                j += 1
            end = blobs[j - 1].offset + blobs[j - 1].length
            data = self._load(h, start, end - start)
            hasher.update(data)
            out.bytes_read += len(data)
            with memoryview(data) as view:
                for b in blobs[i:j]:
                    out.blobs_checked += 1
                    with view[b.offset - start : b.offset - start + b.length] as raw:
                        try:
                            _open_blob(self.key, raw, b)
                        except _Damage as e:
                            out.errors.append(f"pack {h.name}: {b.type} blob {b.id.hex()}: {e}")
            del data
            i = j
        end = blobs[-1].offset + blobs[-1].length if blobs else 0
        tail = self._load(h, end, size - end) if size > end else b""
        hasher.update(tail)
        out.bytes_read += len(tail)
        digest = hasher.hexdigest()
        if digest != h.name:
            out.errors.append(f"pack {h.name}: contents do not match the name (SHA-256 {digest})")
        return tail

    def _compare_header(self, h: Handle, size: int, tail: bytes, blobs: list[PackedBlob],
                        out: _PackOutcome) -> list[str]:
        try:
            found = parse_header(self.key, tail, size)
            if isinstance(found, int):  # the header is longer than the index implies: fetch it
                if found > size:
                    return [f"header cannot be read: the file has only {size} bytes"]
                tail = self._load(h, size - found, found)
                out.bytes_read += found
                found = parse_header(self.key, tail, size)
            if isinstance(found, int):
                return ["header cannot be read"]
        except IntegrityError as e:
            if "MAC" in str(e):
                return ["header fails its MAC (damaged)"]
            return [f"header: {e}"]
        except struct.error:
            return ["header is malformed (an entry is cut short)"]
        header, index = set(found), set(blobs)
        if header == index:
            return []
        only_header = sorted(header - index, key=lambda b: b.offset)
        only_index = sorted(index - header, key=lambda b: b.offset)
        examples = ", ".join(b.id.hex() for b in (only_index or only_header)[:_EXAMPLES])
        return [f"header does not match the index: {len(only_header)} blob(s) only in the header, "
                f"{len(only_index)} only in the index (e.g. {examples})"]

    def _load(self, h: Handle, offset: int, length: int) -> bytes:
        try:
            return self.backend.load(h, offset, length)
        except NotFoundError:
            raise _Damage("does not exist (removed while checking?)") from None
        except AccessDeniedError as e:
            raise StorageAccessDenied(str(e)) from None  # not damage: the whole check cannot go on
        except BackendError as e:
            raise _Damage(f"cannot be read: {self._why(e)}") from None


def _contiguous(blobs: list[PackedBlob], size: int) -> bool:
    """The blobs (sorted by offset) follow one another from offset 0 and end within the file, less than a
    SEGMENT before its end (the header follows them): how restic writes a pack, and what its index says of it."""
    end = 0
    for b in blobs:
        if b.offset != end:
            return False
        end += b.length
    return bool(blobs) and end <= size and size - end <= SEGMENT


def _parse_index_packs(obj: dict) -> list[tuple[bytes, list[PackedBlob]]]:
    packs = []
    for pack in obj.get("packs") or []:
        pack_id = bytes.fromhex(pack["id"])
        if len(pack_id) != 32:
            raise ValueError(f"pack ID {pack['id']!r} is not 32 bytes")
        blobs = []
        for b in pack.get("blobs") or []:
            if b["type"] not in (DATA, TREE):
                raise ValueError(f"blob {b['id']} has unknown type {b['type']!r}")
            blob = PackedBlob(bytes.fromhex(b["id"]), b["type"], int(b["offset"]), int(b["length"]),
                              int(b.get("uncompressed_length") or 0))
            if len(blob.id) != 32 or blob.offset < 0 or blob.length < 0 or blob.uncompressed_length < 0:
                raise ValueError(f"blob {b['id']!r} has an invalid ID, offset or length")
            blobs.append(blob)
        packs.append((pack_id, blobs))
    return packs


def _open_blob(key: Key, raw: bytes | memoryview, b: PackedBlob) -> bytes:
    """A blob's plaintext, or _Damage saying which of MAC, decompression or hash failed."""
    try:
        plain = key.decrypt(raw)
    except IntegrityError:
        raise _Damage("fails its MAC (damaged)") from None
    if b.uncompressed_length:
        try:
            plain = decompress(plain, b.uncompressed_length)
        except zstandard.ZstdError as e:
            raise _Damage(f"does not decompress: {e}") from None
    if hashlib.sha256(plain).digest() != b.id:
        raise _Damage("does not match its ID (damaged)")
    return plain


def _snapshots_phrase(names: list[str]) -> str:
    """'snapshot X', or 'snapshots X, Y, Z and 997 more' when many share a tree."""
    if len(names) == 1:
        return f"snapshot {names[0]}"
    shown = ", ".join(n[:8] for n in names[:_EXAMPLES])
    more = f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else ""
    return f"snapshots {shown}{more}"


def summarize(result: CheckResult) -> Iterable[str]:
    """The closing lines a CLI prints after the errors and hints."""
    yield (f"{result.snapshots} snapshots, {result.index_files} index files, {result.packs} packs, "
           f"{result.trees} trees; {result.headers_checked} pack headers and {result.packs_checked} packs read "
           f"({result.blobs_checked} blobs verified, {result.bytes_read} bytes) in {result.elapsed:.1f} s")
    yield "no errors were found" if result.ok else f"{len(result.errors)} errors: the repository is damaged"

