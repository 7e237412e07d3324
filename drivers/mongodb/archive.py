"""mongodump's ``--archive`` format, written and read as a stream, with the documents kept as raw BSON.

The layout, as mongo-tools' ``common/archive`` package writes and reads it (spec.md, archive.go, prelude.go,
parser.go, multiplexer.go, demultiplexer.go)::

    magic       0x8199e26d as a little-endian uint32: the bytes 6d e2 99 81
    prelude     a header document {concurrent_collections: int32, version: "0.1", server_version, tool_version},
                one document per collection {db, collection, metadata, size: int32, type}, the terminator
    blocks      a namespace header {db, collection, EOF: false, CRC: int64 0}, documents of that namespace as
                they are (none for an empty collection), the terminator; one namespace's documents may come in
                many blocks, between other namespaces' blocks (mongodump -j dumps collections in parallel)
    EOF blocks  once per namespace, after its documents: {db, collection, EOF: true, CRC: int64}, the terminator;
                CRC is the CRC-64 (Go's hash/crc64, ECMA table) of all the namespace's document bytes in order

The terminator is ffffffff, which no BSON length can be. ``metadata`` is what mongodump writes to
``<coll>.metadata.json`` (canonical Extended JSON: options, indexes, uuid, collectionName, type).
``mongodump --gzip --archive`` gzips the whole stream. The oplog of ``--oplog`` is the namespace with db ""
and collection "oplog", listed in the prelude with empty metadata and type. A time-series collection X is
listed as X with type "timeseries", and its documents are its buckets, in the namespace ``system.buckets.X``.

The dump path never decodes a document: the writer takes each as the bytes the server sent
(``RawBSONDocument.raw``), checks only its framing (length prefix, trailing NUL), and the reader hands back the
same bytes. Memory stays bounded: the writer holds one block, the reader about one read of the stream.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from uuid import UUID

import bson
from bson import json_util
from bson.codec_options import DatetimeConversion
from bson.errors import BSONError
from bson.int64 import Int64
from bson.json_util import CANONICAL_JSON_OPTIONS

from stash_runner.errors import BadInput, IntegrityError

MAGIC = 0x8199E26D
MAGIC_BYTES = struct.pack("<I", MAGIC)
TERMINATOR = b"\xff\xff\xff\xff"
FORMAT_VERSION = "0.1"  # the only version there is (archive.go)
MAX_BSON_SIZE = 16 * 1024 * 1024  # mongorestore's parser refuses a longer document (common/db MaxBSONSize)
OPLOG = ("", "oplog")  # (db, collection) of --oplog's entries
BLOCK_BYTES = 1 << 20  # write_collection's block size: a header per MiB costs nothing, the memory is bounded

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BYTES = 1 << 20
_READ_MIN = 256 << 10
_MIN_BSON = 5  # an empty document: its length and the trailing NUL
_INT32 = struct.Struct("<i")
# mongorestore parses server_version ("7.0.5", "8.0.0-rc1") and refuses an archive whose version it cannot read
_SERVER_VERSION = re.compile(r"\d+\.\d+\.\d+(?:[-+].*)?")
# Extended JSON as mongodump writes it; dates out of datetime's range stay readable (as DatetimeMS)
_EJSON = CANONICAL_JSON_OPTIONS.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


# -- CRC-64 ---------------------------------------------------------------------------------------------
#
# mongo-tools hashes with Go's crc64.New(crc64.MakeTable(crc64.ECMA)): the ECMA-182 polynomial, reflected
# (0xc96c5795d7870f42), the register started and finished inverted; the checksum also known as CRC-64/XZ.
# A byte-at-a-time table loop is the reference, but in CPython it does about 10 MB/s, and the CRC runs over
# every byte of a dump. So long inputs take a second, equal path: CRC is linear over GF(2), and folding a
# block's first half onto its second half is one 64-bit linear map applied to every word of the first half.
# That map is done for all words at once by bytes.translate (table lookups in C) on the block's byte planes,
# and the XORs on big ints (int.from_bytes); halving down to one word takes log2(words) passes at C speed.

_POLY = 0xC96C5795D7870F42
_MASK = (1 << 64) - 1
_FOLD_MIN = 1 << 10  # below this the table loop is as fast (measured)
_FOLD_MAX = 1 << 17  # blocks folded at once: larger ones gain nothing and cost more tables


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def _update(state: int, data: bytes | memoryview) -> int:
    """The table loop, on the raw register (no inversions)."""
    table = _TABLE
    for byte in data:
        state = table[(state ^ byte) & 0xFF] ^ (state >> 8)
    return state


def _apply(columns: tuple[int, ...], x: int) -> int:
    """A 64x64 GF(2) matrix, given by the images of the 64 unit vectors, applied to x."""
    y = 0
    while x:
        low = x & -x
        y ^= columns[low.bit_length() - 1]
        x ^= low
    return y


@functools.cache
def _advance(words: int) -> tuple[int, ...]:
    """The register's change over ``words`` zero words (8 bytes each), as a matrix; words is a power of two."""
    if words == 1:
        return tuple(_update(1 << bit, bytes(8)) for bit in range(64))
    half = _advance(words // 2)
    return tuple(_apply(half, column) for column in half)


@functools.cache
def _fold_tables(words: int) -> tuple[tuple[bytes, ...], ...]:
    """_advance(words) as 64 translate tables: [input byte j][output byte o] -> byte o of the image of byte j."""
    columns = _advance(words)
    tables = []
    for j in range(8):
        image = [0] * 256
        for value in range(1, 256):
            low = value & -value
            image[value] = image[value ^ low] ^ columns[8 * j + low.bit_length() - 1]
        tables.append(tuple(bytes((y >> (8 * o)) & 0xFF for y in image) for o in range(8)))
    return tuple(tables)


def _fold(block: bytes, state: int) -> int:
    """The raw register after ``block`` (a power of two of 8-byte words) from ``state``.

    Processing words w_0..w_{n-1} from state s gives A^n s + sum A^(n-k) w_k (A: one zero word). Folding the
    first half onto the second (w'_i = A^(n/2) w_i + w_(n/2+i)) keeps the sum; it ends as A w'_0.
    """
    n = len(block) >> 3
    total = n
    # byte plane j holds byte j of every word; all eight planes side by side, each n bytes long
    planes = b"".join([block[j::8] for j in range(8)])
    from_bytes = int.from_bytes
    while n > 1:
        half = n >> 1
        tables = _fold_tables(half)
        acc = from_bytes(b"".join([planes[o * n + half:(o + 1) * n] for o in range(8)]), "little")
        for j in range(8):
            head = planes[j * n:j * n + half]
            into = tables[j]
            acc ^= from_bytes(b"".join([head.translate(into[o]) for o in range(8)]), "little")
        planes = acc.to_bytes(8 * half, "little")
        n = half
    return _apply(_advance(1), from_bytes(planes, "little")) ^ _apply(_advance(total), state)


def _liblzma_crc64() -> Callable[[bytes, int, int], int] | None:
    """liblzma's lzma_crc64: the same CRC-64/XZ, in C and outside the GIL (~6 GB/s against ~0.1 GB/s here).
    liblzma is the system library Python's own lzma module is built on; without it, the Python path serves."""
    name = ctypes.util.find_library("lzma")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).lzma_crc64
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64)
    fn.restype = ctypes.c_uint64
    return fn


_LZMA_CRC64 = _liblzma_crc64()


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The CRC-64 mongo-tools puts in an EOF block; ``crc`` continues an earlier one (crc64(b, crc64(a)))."""
    if _LZMA_CRC64 is not None:
        raw = data if isinstance(data, bytes) else bytes(data)
        return _LZMA_CRC64(raw, len(raw), crc)
    return python_crc64(data, crc)


def python_crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """crc64 in Python alone (the fallback, and the reference the C path is tested against)."""
    state = crc ^ _MASK
    if len(data) >= _FOLD_MIN:
        if not isinstance(data, bytes):
            data = bytes(data)
        done, left = 0, len(data)
        while left >= _FOLD_MIN:
            size = _FOLD_MAX
            while size > left:
                size >>= 1
            state = _fold(data[done:done + size], state)
            done += size
            left -= size
        data = data[done:]
    return _update(state, data) ^ _MASK


# -- records ----------------------------------------------------------------------------------------------


class _Namespaced:
    """What every record of a namespace says about it (its dataclass has ``db`` and ``collection``)."""

    db: str
    collection: str

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.collection}"

    @property
    def is_oplog(self) -> bool:
        return (self.db, self.collection) == OPLOG


@dataclass(frozen=True)
class Header:
    """The archive's first document."""

    concurrent_collections: int = 1  # mongorestore restores at least this many collections at once
    version: str = FORMAT_VERSION
    server_version: str = ""  # "X.Y.Z": mongorestore refuses an archive without one it can parse
    tool_version: str = ""


@dataclass(frozen=True)
class Metadata:
    """What a restore needs of a collection: mongodump's metadata JSON, parsed."""

    collection_name: str = ""
    type: str = "collection"  # collection | view | timeseries
    options: dict[str, Any] = field(default_factory=dict)  # for create: capped, validator, viewOn, pipeline, ...
    indexes: list[dict[str, Any]] = field(default_factory=list)  # as listIndexes gave them, _id_ included
    uuid: UUID | None = None

    @property
    def id_index(self) -> dict[str, Any] | None:
        """The _id index (create's idIndex option keeps its version and collation)."""
        return next((_index_spec(ix) for ix in self.indexes if ix.get("name") == "_id_"), None)

    @property
    def secondary_indexes(self) -> list[dict[str, Any]]:
        """The index specs for createIndexes once the collection exists (create builds _id itself)."""
        return [_index_spec(ix) for ix in self.indexes if ix.get("name") != "_id_"]

    def to_json(self) -> str:
        """The metadata text as mongodump writes it (metadata_dump.go: options and uuid only when set)."""
        doc: dict[str, Any] = {}
        if self.options:
            doc["options"] = self.options
        doc["indexes"] = self.indexes
        if self.uuid is not None:
            doc["uuid"] = self.uuid.hex  # 32 hex digits, no dashes
        doc["collectionName"] = self.collection_name
        if self.type:
            doc["type"] = self.type
        return json_util.dumps(doc, json_options=_EJSON, separators=(",", ":"), ensure_ascii=False)


def _index_spec(index: dict[str, Any]) -> dict[str, Any]:
    # listIndexes of servers before 4.4 gives "ns", which createIndexes of later ones refuses
    return {k: v for k, v in index.items() if k != "ns"}


def parse_metadata(text: str) -> Metadata:
    """A collection's metadata JSON parsed; an empty text (mongodump writes none for --viewsAsCollections)
    gives a plain collection."""
    if not text:
        return Metadata()
    try:
        doc = json_util.loads(text, json_options=_EJSON)
        uuid_hex = doc.get("uuid")
        return Metadata(
            collection_name=str(doc.get("collectionName", "")),
            type=str(doc.get("type") or "collection"),  # tools before 100.x wrote no type
            options=dict(doc.get("options") or {}),
            indexes=[dict(ix) for ix in doc.get("indexes") or []],
            uuid=UUID(hex=uuid_hex) if uuid_hex else None,
        )
    except (ValueError, TypeError, AttributeError, BSONError) as e:
        raise IntegrityError(f"mongodump archive: collection metadata is not mongodump's JSON: {e}") from None


@dataclass(frozen=True)
class CollectionMetadata(_Namespaced):
    """One collection of the prelude, fields as in the archive. The oplog's is CollectionMetadata(*OPLOG)."""

    db: str
    collection: str
    metadata: str = ""  # mongodump's metadata JSON, verbatim; parse() reads it
    size: int = 0  # mongodump 100.x writes 0
    type: str = ""  # collection | view | timeseries; "" for the oplog

    def parse(self) -> Metadata:
        return parse_metadata(self.metadata)

    @classmethod
    def from_metadata(cls, db: str, metadata: Metadata, size: int = 0) -> CollectionMetadata:
        return cls(db, metadata.collection_name, metadata.to_json(), size, metadata.type)


@dataclass(frozen=True)
class Documents(_Namespaced):
    """Documents of one namespace, raw BSON in archive order (a batch: a namespace has one or many)."""

    db: str
    collection: str
    documents: list[bytes]


@dataclass(frozen=True)
class End(_Namespaced):
    """A namespace's EOF: its documents are all there and their CRC-64 is the archive's."""

    db: str
    collection: str
    crc: int  # unsigned
    count: int  # documents
    size: int  # their bytes


# -- writing ----------------------------------------------------------------------------------------------


def _encode(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc)  # keys in the order given, ints as int32 where they fit: as the Go structs encode


def _namespace_header(db: str, collection: str, *, eof: bool = False, crc: int = 0) -> bytes:
    signed = crc - (1 << 64) if crc >> 63 else crc  # Go writes int64(hash.Sum64())
    return _encode({"db": db, "collection": collection, "EOF": eof, "CRC": Int64(signed)})


class _WriteState:
    """A namespace being written: its lock keeps its blocks and its CRC in the same order."""

    __slots__ = ("header", "lock", "crc", "count", "size", "blocks", "ended")

    def __init__(self, db: str, collection: str):
        self.header = _namespace_header(db, collection)  # the same for every block
        self.lock = threading.Lock()
        self.crc = 0
        self.count = 0
        self.size = 0
        self.blocks = 0
        self.ended = False


class ArchiveWriter:
    """Writes an archive into a binary stream (a pipe, a file), in the order mongorestore reads it.

    ``write_prelude`` once, then for each namespace ``write_block`` any number of times and ``end`` once
    (``write_collection`` does both from an iterable), then ``close``. Blocks of several namespaces may
    interleave, from several threads (the writes are serialised; each namespace's CRC follows its blocks).
    ``gzip=True`` is ``mongodump --gzip``: the whole stream gzipped. ``close`` does not close the stream.
    """

    def __init__(self, out: BinaryIO, *, gzip: bool = False):
        self._out = out
        # Go's gzip.NewWriter: level 6, no file name, mtime 0; wbits 31 is zlib's gzip container
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._lock = threading.Lock()
        self._namespaces: dict[tuple[str, str], _WriteState] | None = None
        self._required: list[tuple[str, str]] = []
        self._failed = False
        self._closed = False

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:  # after a failure, no EOFs: the archive must not look complete
            self.close()

    def write_prelude(self, header: Header, collections: Iterable[CollectionMetadata]) -> None:
        """The magic, the header and the collections: every namespace the archive will hold."""
        if self._namespaces is not None:
            raise ValueError("mongodump archive: the prelude is written once")
        if not _SERVER_VERSION.fullmatch(header.server_version):
            raise ValueError(f"mongodump archive: server_version {header.server_version!r} is not X.Y.Z, "
                             "which mongorestore needs")
        namespaces: dict[tuple[str, str], _WriteState] = {}
        listed: set[tuple[str, str]] = set()
        pieces = [MAGIC_BYTES, _encode({
            "concurrent_collections": header.concurrent_collections, "version": header.version,
            "server_version": header.server_version, "tool_version": header.tool_version})]
        for c in collections:
            if (c.db, c.collection) in listed:
                raise ValueError(f"mongodump archive: {c.namespace} is in the prelude twice")
            listed.add((c.db, c.collection))
            pieces.append(_encode({"db": c.db, "collection": c.collection, "metadata": c.metadata,
                                   "size": c.size, "type": c.type}))
            namespaces[(c.db, c.collection)] = _WriteState(c.db, c.collection)
            if c.type == "timeseries":
                # its documents are its buckets' (intents.DataCollection); mongorestore expects no EOF for X
                buckets = (c.db, f"system.buckets.{c.collection}")
                namespaces.setdefault(buckets, _WriteState(*buckets))
            else:
                self._required.append((c.db, c.collection))  # demultiplexer.End checks each has its EOF
        pieces.append(TERMINATOR)
        self._emit(*pieces)
        self._namespaces = namespaces

    def write_block(self, db: str, collection: str, documents: Iterable[bytes]) -> None:
        """One block of a namespace's documents, each the raw BSON bytes (never decoded; framing checked)."""
        if not isinstance(documents, list | tuple):
            documents = list(documents)  # it is gone through twice
        if not documents:
            return
        state = self._state(db, collection)
        for i, doc in enumerate(documents):
            if not _framed(doc):
                raise ValueError(f"mongodump archive: {db}.{collection}: item {i} of the block is not one BSON "
                                 "document's bytes")
        data = b"".join(documents)
        with state.lock:
            if state.ended:
                raise ValueError(f"mongodump archive: {db}.{collection}: documents after its end")
            state.crc = crc64(data, state.crc)
            state.count += len(documents)
            state.size += len(data)
            state.blocks += 1
            self._emit(state.header, data, TERMINATOR)

    def end(self, db: str, collection: str) -> End:
        """The namespace's EOF block with its CRC-64; a namespace without documents gets an empty block first,
        as mongodump writes it."""
        state = self._state(db, collection)
        with state.lock:
            if state.ended:
                raise ValueError(f"mongodump archive: {db}.{collection} ended twice")
            pieces = [] if state.blocks else [state.header, TERMINATOR]
            self._emit(*pieces, _namespace_header(db, collection, eof=True, crc=state.crc), TERMINATOR)
            state.ended = True
            return End(db, collection, state.crc, state.count, state.size)

    def write_collection(self, db: str, collection: str, documents: Iterable[bytes],
                         block_bytes: int = BLOCK_BYTES) -> End:
        """All of a namespace's documents, in blocks of about ``block_bytes``, then its end."""
        block: list[bytes] = []
        size = 0
        for doc in documents:
            block.append(doc)
            size += len(doc)
            if size >= block_bytes:
                self.write_block(db, collection, block)
                block, size = [], 0
        self.write_block(db, collection, block)
        return self.end(db, collection)

    def close(self) -> None:
        """Check that every namespace of the prelude has ended, finish the gzip stream, flush."""
        if self._closed:
            return
        if self._namespaces is None:
            raise ValueError("mongodump archive: closed before its prelude was written")
        missing = [f"{db}.{coll}" for db, coll in self._required if not self._namespaces[(db, coll)].ended]
        if missing:
            raise ValueError(f"mongodump archive: namespaces never ended: {', '.join(missing)} "
                             "(mongorestore refuses an archive without their EOF)")
        with self._lock:
            if self._deflate is not None:
                self._out.write(self._deflate.flush())
            flush = getattr(self._out, "flush", None)
            if flush is not None:
                flush()
        self._closed = True

    def _state(self, db: str, collection: str) -> _WriteState:
        if self._namespaces is None:
            raise ValueError("mongodump archive: write_prelude comes first")
        state = self._namespaces.get((db, collection))
        if state is None:
            raise ValueError(f"mongodump archive: {db}.{collection} is not in the prelude")
        return state

    def _emit(self, *pieces: bytes) -> None:
        """Pieces in one go: no other thread's block comes between them."""
        with self._lock:
            if self._failed or self._closed:
                raise ValueError("mongodump archive: written after a failed write or after close")
            try:
                for piece in pieces:
                    if self._deflate is not None:
                        piece = self._deflate.compress(piece)
                    if piece:
                        self._out.write(piece)
            except BaseException:
                self._failed = True  # a block may be cut in two: nothing more may follow it
                raise


def _framed(doc: bytes) -> bool:
    """Framed as one BSON document: its length prefix is its length and it ends with NUL."""
    try:
        size = len(doc)
        return (_MIN_BSON <= size <= MAX_BSON_SIZE and _INT32.unpack_from(doc)[0] == size
                and doc[size - 1] == 0)
    except (TypeError, struct.error):
        return False


# -- reading ----------------------------------------------------------------------------------------------


def _number(doc: dict[str, Any], key: str, offset: int) -> int:
    value = doc.get(key, 0)
    if not isinstance(value, int):  # int, Int64 (and bool, an int to Go's decoder too)
        raise IntegrityError(f"mongodump archive: the document at offset {offset} has a {type(value).__name__} "
                             f"as its {key}")
    return int(value)


class _Source:
    """The archive's bytes from a binary stream, gunzipped when the stream starts with gzip's magic."""

    def __init__(self, stream: BinaryIO):
        # read1 returns what a pipe has instead of waiting for a full read
        self._read = getattr(stream, "read1", None) or stream.read
        head = self._raw()
        self.gzip = head.startswith(_GZIP_MAGIC)
        self._pending = head
        self._inflate = zlib.decompressobj(31) if self.gzip else None
        self._fresh = True  # the current gzip member has had no input yet
        self.cut_short = False  # the stream ended inside a gzip member

    def _raw(self) -> bytes:
        """The stream's next bytes, at least _READ_MIN unless it ends: a pipe gives 64 KiB at a time, and
        the CRC (and the per-batch work) goes faster over larger pieces."""
        parts: list[bytes] = []
        have = 0
        while have < _READ_MIN:
            more = self._read(_READ_BYTES - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        return b"".join(parts)

    def read(self) -> bytes:
        """The next bytes of the archive; b"" at its end."""
        if self._inflate is None:
            data, self._pending = self._pending, b""
            return data or self._raw()
        while True:
            data, self._pending = self._pending, b""
            if not data:
                data = self._raw()
                if not data:
                    self.cut_short = not self._fresh
                    return b""
            try:
                # at most a read's worth out: a small compressed input may stand for a lot
                out = self._inflate.decompress(data, _READ_BYTES)
            except zlib.error as e:
                raise IntegrityError(f"mongodump archive: the gzip stream is damaged ({e})") from None
            self._fresh = False
            self._pending = self._inflate.unconsumed_tail
            if self._inflate.eof:
                # another gzip member may follow (Go's gzip reader reads them all), or the end
                self._pending = self._inflate.unused_data + self._pending
                self._inflate = zlib.decompressobj(31)
                self._fresh = True
            if out:
                return out


class _ReadState:
    __slots__ = ("crc", "count", "size", "ended")

    def __init__(self) -> None:
        self.crc = 0
        self.count = 0
        self.size = 0
        self.ended = False


class ArchiveReader:
    """Reads an archive from a binary stream (plain or gzip, told by its first bytes).

    The prelude is read at once: ``header`` and ``collections``. ``events()`` (or iterating) then gives the
    namespaces' ``Documents`` in archive order and each namespace's ``End`` once its CRC-64 checked out. A
    damaged or cut-short archive raises IntegrityError naming the namespace and offset (in the uncompressed
    archive); a stream that is no archive raises BadInput.
    """

    def __init__(self, stream: BinaryIO):
        self._source = _Source(stream)
        self.gzip = self._source.gzip
        self._buf = b""
        self._pos = 0
        self._base = 0  # archive offset of _buf[0]
        self._started = False
        inner = "a gzip stream whose content is " if self.gzip else ""
        if not self._fill(4):
            raise BadInput(f"not a mongodump archive: {inner}{len(self._buf)} byte(s) long")
        magic = self._buf[:4]
        if magic != MAGIC_BYTES:
            raise BadInput(f"not a mongodump archive: {inner}starting with {magic.hex()}, not the magic "
                           f"{MAGIC_BYTES.hex()}")
        self._pos = 4
        raw = self._document("in the prelude's header")
        if raw is None:
            raise IntegrityError("mongodump archive: its prelude has no header")
        head = self._decode(raw, "the prelude's header", 4)
        self.header = Header(_number(head, "concurrent_collections", 4), str(head.get("version", "")),
                             str(head.get("server_version", "")), str(head.get("tool_version", "")))
        self.collections: list[CollectionMetadata] = []
        while True:
            offset = self._offset()
            raw = self._document("in the prelude")
            if raw is None:
                break
            d = self._decode(raw, "a collection of the prelude", offset)
            self.collections.append(CollectionMetadata(
                str(d.get("db", "")), str(d.get("collection", "")), str(d.get("metadata", "")),
                _number(d, "size", offset), str(d.get("type", ""))))

    def __iter__(self) -> Iterator[Documents | End]:
        return self.events()

    def events(self) -> Iterator[Documents | End]:
        """The namespaces' documents and ends, as the archive has them; once per reader (it is a stream)."""
        if self._started:
            raise ValueError("mongodump archive: events() reads the stream, once")
        self._started = True
        states: dict[tuple[str, str], _ReadState] = {}
        while self._fill(4):
            offset = self._offset()
            raw = self._document("in a namespace header")
            if raw is None:
                raise IntegrityError(f"mongodump archive: a terminator where a namespace header belongs at offset "
                                     f"{offset}")
            head = self._decode(raw, "a namespace header", offset)
            db, coll = str(head.get("db", "")), str(head.get("collection", ""))
            if not coll:
                raise IntegrityError(f"mongodump archive: a namespace header without a collection at offset "
                                     f"{offset}")
            key, ns = (db, coll), f"{db}.{coll}"
            state = states.get(key)
            if state is None:
                state = states[key] = _ReadState()
            elif state.ended:
                raise IntegrityError(f"mongodump archive: namespace {ns} goes on after its EOF, at offset {offset}")
            if not head.get("EOF"):
                yield from self._block(db, coll, state)
                continue
            if not self._fill(4):
                raise self._cut(f"after the EOF of namespace {ns}")
            if self._buf[self._pos:self._pos + 4] != TERMINATOR:
                raise IntegrityError(f"mongodump archive: namespace {ns} has data after its EOF, at offset "
                                     f"{self._offset()}")
            self._pos += 4
            expected = _number(head, "CRC", offset) & _MASK
            if expected != state.crc:
                raise IntegrityError(f"mongodump archive: namespace {ns} fails its CRC-64 check (the archive says "
                                     f"{expected:016x}, its {state.count} documents give {state.crc:016x})")
            state.ended = True
            yield End(db, coll, state.crc, state.count, state.size)
        if self._pos < len(self._buf):
            raise self._cut("between blocks")
        if self._source.cut_short:
            raise self._cut("in the gzip stream")
        unended = [f"{db}.{coll}" for (db, coll), s in states.items() if not s.ended]
        if unended:
            raise IntegrityError(f"mongodump archive: it ends before the EOF of namespace {', '.join(unended)} "
                                 f"(cut short at offset {self._offset()})")
        # as mongorestore's demultiplexer: every collection of the prelude but time-series ones has its EOF
        unseen = [c.namespace for c in self.collections
                  if c.type != "timeseries" and (c.db, c.collection) not in states]
        if unseen:
            raise IntegrityError(f"mongodump archive: it ends without namespace {', '.join(unseen)} of its prelude "
                                 f"(cut short at offset {self._offset()})")

    def _block(self, db: str, collection: str, state: _ReadState) -> Iterator[Documents]:
        """A block's documents, a batch per read of the stream, up to and past its terminator."""
        unpack = _INT32.unpack_from
        while True:
            # documents are sliced out of the buffer as they are: their bytes are hashed, never parsed
            buf, pos = self._buf, self._pos
            end, start, need, terminated = len(buf), pos, 4, False
            docs = []
            while pos + 4 <= end:
                size = unpack(buf, pos)[0]
                if size == -1:
                    terminated = True
                    break
                if size < _MIN_BSON or size > MAX_BSON_SIZE:
                    raise IntegrityError(f"mongodump archive: namespace {db}.{collection}: {size} is no document "
                                         f"length, at offset {self._base + pos}")
                after = pos + size
                if after > end:
                    need = size
                    break
                if buf[after - 1]:
                    raise IntegrityError(f"mongodump archive: namespace {db}.{collection}: a document does not end "
                                         f"with NUL, at offset {self._base + pos}")
                docs.append(buf[pos:after])
                pos = after
            self._pos = pos + 4 if terminated else pos
            if docs:
                state.crc = crc64(buf[start:pos], state.crc)
                state.count += len(docs)
                state.size += pos - start
                yield Documents(db, collection, docs)
            if terminated:
                return
            if not self._fill(need):
                raise self._cut(f"inside namespace {db}.{collection}")

    def _fill(self, n: int) -> bool:
        """At least n bytes in the buffer from _pos on; False if the archive ends first."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos:]] if have else []
        while have < n:
            chunk = self._source.read()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._base += self._pos
        self._buf = b"".join(parts)  # one copy, also when a document spans many reads
        self._pos = 0
        return have >= n

    def _document(self, where: str) -> bytes | None:
        """The BSON document at _pos, or None for a terminator (both consumed)."""
        if not self._fill(4):
            raise self._cut(where)
        size = _INT32.unpack_from(self._buf, self._pos)[0]
        if size == -1:
            self._pos += 4
            return None
        if size < _MIN_BSON or size > MAX_BSON_SIZE:
            raise IntegrityError(f"mongodump archive: {size} is neither a document length nor a terminator, "
                                 f"{where}, at offset {self._offset()}")
        if not self._fill(size):
            raise self._cut(where)
        doc = self._buf[self._pos:self._pos + size]
        if doc[-1]:
            raise IntegrityError(f"mongodump archive: a document does not end with NUL, {where}, at offset "
                                 f"{self._offset()}")
        self._pos += size
        return doc

    @staticmethod
    def _decode(raw: bytes, what: str, offset: int) -> dict[str, Any]:
        try:
            return bson.decode(raw)
        except (BSONError, ValueError, OverflowError) as e:
            raise IntegrityError(f"mongodump archive: {what} at offset {offset} is not BSON: {e}") from None

    def _offset(self) -> int:
        return self._base + self._pos

    def _cut(self, where: str) -> IntegrityError:
        gz = " (the gzip stream ends early)" if self._source.cut_short else ""
        return IntegrityError(f"mongodump archive: cut short {where}, at offset {self._base + len(self._buf)}{gz}")
