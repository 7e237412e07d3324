"""The in-memory index: which pack holds each blob, read from and written to index files."""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterable

from .pack import PackedBlob

# restic keeps index files below ~8 MiB; 50,000 entries of ~150 bytes of JSON each stay under it.
MAX_BLOBS_PER_INDEX_FILE = 50_000

# Why not a dict of PackedBlob: each entry cost ~300 bytes (a 65-byte bytes key, a frozen dataclass, a tuple,
# the dict slot), ~3 GB for 10 million blobs. restic keeps ~50 bytes a blob; this layout keeps about as many:
#   - every blob id in one bytearray, 32 bytes each, entry e at [32*e, 32*e+32) (entry 0 is a dummy, so that
#     0 can mean "empty" in the hash table);
#   - one record of four uint32 per entry, interleaved in one array at [4*e, 4*e+4): pack number << 2 | type
#     code, offset, length, uncompressed length (restic's own sizes: a pack is < 4 GiB). Interleaved rather
#     than four columns because a lookup of a 10-million-blob index misses the CPU cache on every array it
#     touches: one record is one cache line, four columns were four (random lookup() hits ran ~1.3x slower).
#     The first value that does not fit switches the whole array to uint64 (once);
#   - every pack id in one bytearray, 32 bytes each (one pack number per add_pack call);
#   - an open-addressing hash table (uint32 slots, linear probing, load <= 0.7, doubled when full), keyed by
#     hash(id): a bytes object caches its hash, so the archiver's has() and its own set lookup after it hash
#     once. A table of 2**s slots never holds more than 2**s entries, so an entry number needs s bits of its
#     slot; the other 32 - s bits hold bits of the hash (a tag: 8 bits at 10 million blobs), so that a probe
#     passing a slot of another id almost never reads that id from the id store, which at this size is a
#     cache (and TLB) miss each time: with the tag, misses of a 10-million-blob index ran 2.7x faster. A slot
#     whose tag matches compares the full 32 bytes in place (bytearray.startswith at the entry's offset).
# 32 + 16 = 48 bytes a blob, plus 32 bytes a pack, plus 4/load (5.7-11.4) bytes of table and the growth slack
# of the arrays (array over-allocates by 1/16, bytearray by 1/8): ~55-65 bytes a blob; 58 at 10 million
# (bench/bench_scale.py).
#
# Threads: add_pack runs under a lock; has() and lookup() take no lock. They rely on the GIL making each single
# array/bytearray operation atomic and on the order in which add_pack publishes an entry: its pack id, record
# and id are appended first, and only then is its number stored in the table, so a reader that finds a number
# finds the whole entry. A resize builds the new table apart and publishes it, with its masks, as one tuple in
# one attribute store; a reader reads self._state once and probes that table (old or new, both consistent).
# The records switched to uint64 are replaced the same way, before the entry that needed it is published.

_EMPTY_ID = bytes(32)
_MAX_LOAD = 0.7
_MIN_SLOTS = 1024
_U32 = 1 << 32
_MAX_TYPES = 4  # type codes in the low 2 bits of the record's first value; restic has two ("data", "tree")

def _state(table: array) -> tuple[array, int, int]:
    """A table of 2**s slots with its two masks: the low s bits (slot index, entry number), the high 32 - s (tag)."""
    mask = len(table) - 1
    return table, mask, 0xFFFFFFFF ^ mask


class Index:
    """Maps blob id -> (pack id, PackedBlob) in ~50-65 bytes a blob (see above). First entry for an id wins.

    Thread-safe: add_pack/add_index_json serialize on a lock; has/lookup/len/packs take none. Ids are bytes
    (hashable), as the dict this replaced required."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = bytearray(_EMPTY_ID)  # entry 0: the dummy, so that 0 in the table means "empty"
        self._rec = array("I", bytes(16))  # per entry: pack << 2 | type code, offset, length, uncompressed length
        # (table, mask: the low s bits, the slot index and entry number; tag mask: the high 32 - s bits)
        self._state = _state(array("I", bytes(4 * _MIN_SLOTS)))
        self._limit = int(_MIN_SLOTS * _MAX_LOAD)  # entries (dummy included) above which the table doubles
        self._count = 1  # entries, dummy included
        self._pack_ids = bytearray()  # pack number n -> pack id at [32*n, 32*n+32)
        self._types: list[str] = []  # type code -> blob type
        self._type_codes: dict[str, int] = {}

    def __len__(self) -> int:
        return self._count - 1

    def has(self, blob_id: bytes) -> bool:
        # The hot path of dedup (every chunk of a backup asks): one read of each attribute, hash(), and per probe
        # a tag test; only a slot whose tag matches costs a startswith, which compares in place without slicing
        # a copy out of the id store.
        t, mask, tags = self._state
        h = hash(blob_id)
        i = h & mask
        want = (h >> 32) & tags
        found = self._ids.startswith
        while True:
            v = t[i]
            if not v:
                return False
            if v & tags == want and found(blob_id, (v & mask) << 5):
                return len(blob_id) == 32
            i = (i + 1) & mask

    def lookup(self, blob_id: bytes) -> tuple[bytes, PackedBlob] | None:
        t, mask, tags = self._state
        h = hash(blob_id)
        i = h & mask
        want = (h >> 32) & tags
        found = self._ids.startswith
        while True:
            v = t[i]
            if not v:
                return None
            if v & tags == want and found(blob_id, (v & mask) << 5):
                break
            i = (i + 1) & mask
        if len(blob_id) != 32:
            return None
        e = v & mask
        r = self._rec
        k = e << 2
        pt = r[k]
        p = (pt >> 2) << 5
        return bytes(self._pack_ids[p:p + 32]), PackedBlob(blob_id, self._types[pt & 3], r[k + 1], r[k + 2], r[k + 3])

    def packs(self) -> set[bytes]:
        pids = self._pack_ids
        return {bytes(pids[p:p + 32]) for p in range(0, len(pids), 32)}

    def add_pack(self, pack_id: bytes, blobs: Iterable[PackedBlob]) -> None:
        if len(pack_id) != 32:
            raise ValueError(f"pack id must be 32 bytes, not {len(pack_id)}")
        with self._lock:
            base = (len(self._pack_ids) >> 5) << 2
            self._pack_ids += pack_id  # before any entry that names it is published
            codes = self._type_codes
            ids = self._ids
            t, mask, tags = self._state
            count = self._count
            limit = self._limit
            rec = self._rec
            for b in blobs:
                bid = b.id
                if len(bid) != 32:
                    raise ValueError(f"blob id must be 32 bytes, not {len(bid)}")
                h = hash(bid)
                i = h & mask
                tag = (h >> 32) & tags
                while True:
                    v = t[i]
                    if not v or (v & tags == tag and ids.startswith(bid, (v & mask) << 5)):
                        break
                    i = (i + 1) & mask
                if v:
                    continue  # first entry wins, as restic's index (and dict.setdefault before)
                code = codes.get(b.type)
                if code is None:
                    code = self._add_type(b.type)
                values = (base | code, b.offset, b.length, b.uncompressed_length)
                if not 0 <= (values[0] | values[1] | values[2] | values[3]) < _U32:
                    rec = self._widen(values)
                # Record and id first, then the table slot: a reader that finds the number finds the entry.
                rec.extend(values)
                ids += bid
                t[i] = tag | count
                count += 1
                self._count = count
                if count > limit:
                    self._grow()
                    t, mask, tags = self._state
                    limit = self._limit

    def _add_type(self, blob_type: str) -> int:
        if len(self._types) >= _MAX_TYPES:
            raise ValueError(f"too many blob types for the index: {[*self._types, blob_type]}")
        self._types.append(blob_type)
        self._type_codes[blob_type] = len(self._types) - 1
        return self._type_codes[blob_type]

    def _widen(self, values: tuple[int, int, int, int]) -> array:
        """Switch the records to uint64 the first time a value does not fit uint32; refuse what uint64 cannot
        hold (negative offsets or lengths are corrupt input)."""
        for v in values:
            if not 0 <= v < 1 << 64:
                raise ValueError(f"blob offset/length out of range: {v}")
        if self._rec.typecode == "I":
            self._rec = array("Q", self._rec)  # published before any entry that needs it
        return self._rec

    def _grow(self) -> None:
        """Double the table: rehash every entry into a new one, then publish it with one store."""
        t, mask, tags = _state(array("I", bytes(8 * len(self._state[0]))))
        ids = self._ids
        for e in range(1, self._count):
            o = e << 5
            h = hash(bytes(ids[o:o + 32]))
            i = h & mask
            while t[i]:
                i = (i + 1) & mask
            t[i] = ((h >> 32) & tags) | e
        self._state = (t, mask, tags)
        self._limit = int(len(t) * _MAX_LOAD)

    def add_index_json(self, obj: dict | list) -> None:
        old = is_old_format(obj)
        for pack in index_packs(obj):
            pack_id = bytes.fromhex(pack["id"])
            self.add_pack(
                pack_id,
                (
                    PackedBlob(
                        bytes.fromhex(b["id"]),
                        b["type"],
                        b["offset"],
                        b["length"],
                        # restic's decodeOldIndex: "no compressed length in the old index format"
                        0 if old else b.get("uncompressed_length") or 0,
                    )
                    for b in pack.get("blobs") or []
                ),
            )


def is_old_format(obj: object) -> bool:
    """restic's earliest index files are a bare JSON list of packs, not ``{"supersedes", "packs"}``; restic 0.14
    still reads them (DecodeIndex falls back to decodeOldIndex when the top level is an array)."""
    return isinstance(obj, list)


def index_packs(obj: dict | list) -> list[dict]:
    """The pack entries of a decoded index file, in either format."""
    return obj if isinstance(obj, list) else obj.get("packs") or []


def index_supersedes(obj: dict | list) -> list[str]:
    """The index files this one replaces (an old-format file replaces none)."""
    return [] if isinstance(obj, list) else list(obj.get("supersedes") or [])


def index_json(packs: list[tuple[bytes, list[PackedBlob]]], supersedes: list[str] | None = None) -> dict:
    """One index file's JSON for the given packs, in restic's shape."""
    obj: dict = {}
    if supersedes:
        obj["supersedes"] = supersedes
    obj["packs"] = [
        {"id": pack_id.hex(), "blobs": [_blob_json(b) for b in blobs]} for pack_id, blobs in packs
    ]
    return obj


def _blob_json(b: PackedBlob) -> dict:
    d = {"id": b.id.hex(), "type": b.type, "offset": b.offset, "length": b.length}
    if b.uncompressed_length:
        d["uncompressed_length"] = b.uncompressed_length
    return d


def split_for_files(packs: list[tuple[bytes, list[PackedBlob]]]) -> list[list[tuple[bytes, list[PackedBlob]]]]:
    """Group packs into index files of at most MAX_BLOBS_PER_INDEX_FILE blobs."""
    groups: list[list[tuple[bytes, list[PackedBlob]]]] = [[]]
    count = 0
    for pack in packs:
        if groups[-1] and count + len(pack[1]) > MAX_BLOBS_PER_INDEX_FILE:
            groups.append([])
            count = 0
        groups[-1].append(pack)
        count += len(pack[1])
    return [g for g in groups if g]
