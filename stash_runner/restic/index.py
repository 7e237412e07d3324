"""The in-memory index: which pack holds each blob, read from and written to index files."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .pack import PackedBlob

# restic keeps index files below ~8 MiB; 50,000 entries of ~150 bytes of JSON each stay under it.
MAX_BLOBS_PER_INDEX_FILE = 50_000


class Index:
    """Maps blob id -> (pack id, PackedBlob). Thread-safe for concurrent add and lookup."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, tuple[bytes, PackedBlob]] = {}
        self._packs: set[bytes] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def lookup(self, blob_id: bytes) -> tuple[bytes, PackedBlob] | None:
        return self._blobs.get(blob_id)

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def add_pack(self, pack_id: bytes, blobs: Iterable[PackedBlob]) -> None:
        with self._lock:
            self._packs.add(pack_id)
            for b in blobs:
                self._blobs.setdefault(b.id, (pack_id, b))

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
