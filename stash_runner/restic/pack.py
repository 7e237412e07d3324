"""Pack files: encrypted blobs, then an encrypted header describing them, then its length."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from stash_runner.errors import IntegrityError

from .crypto import OVERHEAD, Key

# Blob types as the index names them.
DATA = "data"
TREE = "tree"

_ENTRY_PLAIN = struct.Struct("<BI32s")  # type 0/1: type, stored length, id
_ENTRY_COMPRESSED = struct.Struct("<BII32s")  # type 2/3: type, stored length, plain length, id
_TYPE_CODE = {(DATA, False): 0, (TREE, False): 1, (DATA, True): 2, (TREE, True): 3}
_CODE_TYPE = {0: (DATA, False), 1: (TREE, False), 2: (DATA, True), 3: (TREE, True)}

TARGET_PACK_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackedBlob:
    """Where a blob sits inside a pack. ``uncompressed_length`` is 0 for an uncompressed blob."""

    id: bytes
    type: str
    offset: int
    length: int
    uncompressed_length: int = 0


class PackBuilder:
    """Collects encrypted blobs of one type until the pack is full."""

    def __init__(self, blob_type: str):
        self.blob_type = blob_type
        self.blobs: list[PackedBlob] = []
        self._parts: list[bytes] = []
        self.size = 0

    def add(self, blob_id: bytes, encrypted: bytes, uncompressed_length: int = 0) -> None:
        self.blobs.append(PackedBlob(blob_id, self.blob_type, self.size, len(encrypted), uncompressed_length))
        self._parts.append(encrypted)
        self.size += len(encrypted)

    def finish(self, key: Key) -> tuple[bytes, bytes]:
        """Return (pack id, pack bytes)."""
        header = b"".join(_encode_entry(b) for b in self.blobs)
        enc_header = key.encrypt(header)
        self._parts.append(enc_header)
        self._parts.append(struct.pack("<I", len(enc_header)))
        data = b"".join(self._parts)
        self._parts = []
        return hashlib.sha256(data).digest(), data


def _encode_entry(b: PackedBlob) -> bytes:
    compressed = b.uncompressed_length > 0
    code = _TYPE_CODE[(b.type, compressed)]
    if compressed:
        return _ENTRY_COMPRESSED.pack(code, b.length, b.uncompressed_length, b.id)
    return _ENTRY_PLAIN.pack(code, b.length, b.id)


#: bytes around a pack's encrypted header entries: the encryption overhead and the trailing length
HEADER_OVERHEAD = OVERHEAD + 4


def entry_size(b: PackedBlob) -> int:
    """Bytes a blob's entry takes in its pack's header (restic's pack.CalculateEntrySize)."""
    return _ENTRY_COMPRESSED.size if b.uncompressed_length else _ENTRY_PLAIN.size


def header_size(blobs: Iterable[PackedBlob]) -> int:
    """A pack's header as stored, its length field included (restic's pack.CalculateHeaderSize)."""
    return HEADER_OVERHEAD + sum(entry_size(b) for b in blobs)


def header_length_hint() -> int:
    """Bytes to read from a pack's end to get a typical header in one request."""
    return 64 * 1024


def parse_header(key: Key, tail: bytes, pack_size: int) -> list[PackedBlob] | int:
    """Decode a pack header from the last bytes of a pack.

    Returns the blobs, or the number of tail bytes needed when ``tail`` is too short.
    """
    if len(tail) < 4:
        return 4
    (hlen,) = struct.unpack("<I", tail[-4:])
    if hlen + 4 > pack_size or hlen < OVERHEAD:
        raise IntegrityError(f"pack header length {hlen} is invalid for a pack of {pack_size} bytes")
    if len(tail) < hlen + 4:
        return hlen + 4
    header = key.decrypt(tail[-4 - hlen : -4])
    blobs: list[PackedBlob] = []
    pos = 0
    offset = 0
    while pos < len(header):
        code = header[pos]
        if code not in _CODE_TYPE:
            raise IntegrityError(f"pack header has unknown blob type {code}")
        blob_type, compressed = _CODE_TYPE[code]
        if compressed:
            _, length, ulen, bid = _ENTRY_COMPRESSED.unpack_from(header, pos)
            pos += _ENTRY_COMPRESSED.size
        else:
            _, length, bid = _ENTRY_PLAIN.unpack_from(header, pos)
            ulen = 0
            pos += _ENTRY_PLAIN.size
        blobs.append(PackedBlob(bid, blob_type, offset, length, ulen))
        offset += length
    return blobs
