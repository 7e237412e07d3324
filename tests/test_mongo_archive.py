"""mongodump's archive format (drivers/mongodb/archive.py), judged by archives the real mongodump 100.18.0 wrote.

No server is needed: the fixtures (tests/fixtures/mongodump-archives, from the real mongodump) and expected.json hold
what the source databases held.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import os
import pathlib
import random
import struct
import threading
import time
import tracemalloc
from uuid import UUID

import bson
import pytest
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument

from drivers.mongodb import archive
from drivers.mongodb.archive import (
    MAGIC_BYTES,
    MAX_BSON_SIZE,
    OPLOG,
    ArchiveReader,
    ArchiveWriter,
    CollectionMetadata,
    Documents,
    End,
    Header,
    Metadata,
    crc64,
    parse_metadata,
)
from stash_runner.errors import BadInput, IntegrityError

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "mongodump-archives"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
ALL = ["all-dbs.archive", "all-dbs.gz.archive", "app-only.archive", "rs-oplog.archive"]
MONGODUMP_HEADER = Header(concurrent_collections=4, version="0.1", server_version="5.0.0", tool_version="100.18.0")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def read(data: bytes) -> tuple[ArchiveReader, list[Documents | End]]:
    reader = ArchiveReader(io.BytesIO(data))
    return reader, list(reader.events())


def documents(events: list[Documents | End]) -> dict[str, list[bytes]]:
    """Raw documents per namespace, in archive order; a namespace without any is there, empty."""
    out: dict[str, list[bytes]] = {}
    for e in events:
        out.setdefault(e.namespace, [])
        if isinstance(e, Documents):
            out[e.namespace].extend(e.documents)
    return out


def ends(events: list[Documents | End]) -> dict[str, End]:
    return {e.namespace: e for e in events if isinstance(e, End)}


def canonical(value: object) -> str:
    """One JSON text per value, in canonical Extended JSON, keys in their order."""
    return json.dumps(json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)))


def rewrite(reader: ArchiveReader, events: list[Documents | End], *, gzip: bool = False) -> bytes:
    """The same archive written by our writer: the prelude, then the blocks and ends in the order read."""
    out = io.BytesIO()
    with ArchiveWriter(out, gzip=gzip) as writer:
        writer.write_prelude(reader.header, reader.collections)
        for e in events:
            if isinstance(e, Documents):
                writer.write_block(e.db, e.collection, e.documents)
            else:
                writer.end(e.db, e.collection)
    return out.getvalue()


def doc(i: int, pad: int = 0) -> bytes:
    return bson.encode({"_id": i, "pad": "x" * pad})


# -- CRC-64 -------------------------------------------------------------------------------------------------


def test_crc64_is_go_crc64_ecma():
    assert crc64(b"") == 0
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA  # CRC-64/XZ's check value: Go's crc64 with crc64.ECMA


@pytest.mark.parametrize("crc", [crc64, archive.python_crc64], ids=["liblzma", "python"])
@pytest.mark.parametrize("length", [1, 7, 8, 1023, 1024, 1025, 4096 + 3, (1 << 17) - 8, 1 << 17, 300_001])
def test_crc64_agrees_with_the_bitwise_loop(length, crc):
    """Both paths: liblzma's lzma_crc64 (what runs) and the Python folding path (the fallback)."""
    data = os.urandom(length)
    table = 0xFFFFFFFFFFFFFFFF
    for byte in data:  # the textbook reflected loop, bit by bit
        table ^= byte
        for _ in range(8):
            table = (table >> 1) ^ 0xC96C5795D7870F42 if table & 1 else table >> 1
    assert crc(data) == table ^ 0xFFFFFFFFFFFFFFFF
    assert crc(memoryview(data)) == crc(bytearray(data)) == crc(data)
    cut = length // 3
    assert crc(data[cut:], crc(data[:cut])) == crc(data)  # it continues across blocks


# -- the archives mongodump wrote -------------------------------------------------------------------------


@pytest.mark.parametrize("name, dbs", [("all-dbs.archive", {"app", "other"}), ("all-dbs.gz.archive", {"app", "other"}),
                                       ("app-only.archive", {"app"})])
def test_mongodump_archives_hold_the_source_data(name, dbs):
    reader, events = read(fixture(name))
    expected = {ns: v for ns, v in EXPECTED.items() if ns.split(".")[0] in dbs}
    assert reader.gzip == name.endswith(".gz.archive")
    assert reader.header == MONGODUMP_HEADER
    # expected.json has no admin.system.* (users, roles, version): the source had no users, and none is here
    assert {c.namespace for c in reader.collections} == set(expected)
    assert all(c.type == "collection" and c.size == 0 for c in reader.collections)  # mongodump 100.x: size 0
    docs = documents(events)
    assert set(docs) == set(expected)
    for ns, want in expected.items():
        # mongodump gives the natural order, expected.json sorts by _id: the same documents, as multisets
        got = collections.Counter(canonical(bson.decode(raw)) for raw in docs[ns])
        assert got == collections.Counter(json.dumps(d) for d in want["documents"]), ns
    # every EOF checked out (the reader raises otherwise) and names the documents before it
    for ns, end in ends(events).items():
        assert (end.count, end.size, end.crc) == (len(docs[ns]), sum(map(len, docs[ns])), crc64(b"".join(docs[ns])))
    assert ends(events)["app.empty"] == End("app", "empty", 0, 0, 0)


@pytest.mark.parametrize("name", ["all-dbs.archive", "app-only.archive"])
def test_mongodump_metadata_gives_the_indexes_and_options(name):
    reader, _ = read(fixture(name))
    for c in reader.collections:
        meta = c.parse()
        assert (meta.collection_name, meta.type, meta.options, meta.uuid) == (c.collection, "collection", {}, None)
        # listIndexes adds the index version "v", which expected.json leaves out
        got = [canonical({k: v for k, v in ix.items() if k != "v"}) for ix in meta.indexes]
        assert got == [json.dumps(ix) for ix in EXPECTED[c.namespace]["indexes"]], c.namespace
        assert meta.to_json() == c.metadata  # written back as mongodump wrote it, to the byte
    users = next(c for c in reader.collections if c.namespace == "app.users").parse()
    assert users.id_index == {"key": {"_id": 1}, "name": "_id_", "v": 2}
    assert [ix["name"] for ix in users.secondary_indexes] == ["email_unique", "age_name", "ttl", "tags_sparse"]
    ttl = users.secondary_indexes[2]
    assert ttl["expireAfterSeconds"] == 1892160000 and list(ttl["key"].items()) == [("created", 1)]


def test_the_gzip_archive_holds_what_the_plain_one_holds():
    _, plain = read(fixture("all-dbs.archive"))
    _, zipped = read(fixture("all-dbs.gz.archive"))
    assert documents(zipped) == documents(plain)  # byte for byte; only the order of the namespaces differs
    assert ends(zipped) == ends(plain)


def test_the_oplog_of_a_replica_set_dump():
    reader, events = read(fixture("rs-oplog.archive"))
    assert reader.header.server_version == "7.0.42"
    # the prelude lists the oplog as db "" and collection "oplog", with no metadata and no type
    assert [c for c in reader.collections if c.is_oplog] == [CollectionMetadata("", "oplog", "", 0, "")]
    assert reader.collections[-1].is_oplog
    docs = documents(events)
    assert {ns: len(d) for ns, d in docs.items()} == {"app.things": 2, "app.live": 145, "app.big": 3000,
                                                      ".oplog": 142}
    entries = [bson.decode(raw) for raw in docs[".oplog"]]
    assert all({"ts", "op", "ns", "o"} <= e.keys() for e in entries)
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    assert {(e["op"], e["ns"]) for e in entries} == {("i", "app.live")}  # the writes that ran during the dump
    # the oplog is dumped last, once every collection has its EOF
    last = [e for e in events if isinstance(e, End)][-1]
    assert last.is_oplog and (last.db, last.collection) == OPLOG and last.count == 142
    big = reader.collections[0].parse()
    assert (big.collection_name, big.uuid) == ("big", UUID("bbed72ac-c5dd-4ef6-b1a6-c4b43beaf946"))


# -- our writer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_round_trip_through_our_writer(name, gz):
    reader, events = read(fixture(name))
    ours = rewrite(reader, events, gzip=gz)
    assert ours.startswith(b"\x1f\x8b" if gz else MAGIC_BYTES)
    again, events_again = read(ours)
    assert again.gzip is gz
    assert again.header == reader.header
    assert again.collections == reader.collections
    assert [c.parse() for c in again.collections] == [c.parse() for c in reader.collections]
    assert documents(events_again) == documents(events)  # raw BSON, byte for byte, in order
    assert ends(events_again) == ends(events)  # the same CRCs
    # the same blocks in the same order: plain, it is even mongodump's archive to the byte
    assert [(type(e), e.namespace) for e in events_again] == [(type(e), e.namespace) for e in events]
    original = fixture(name)
    plain = gzip.decompress(ours) if gz else ours
    assert plain == (gzip.decompress(original) if original.startswith(b"\x1f\x8b") else original)


def test_one_collection_at_a_time():
    """The simple use: the prelude, then each collection's documents from an iterable."""
    reader, events = read(fixture("all-dbs.archive"))
    docs = documents(events)
    out = io.BytesIO()
    with ArchiveWriter(out) as writer:
        writer.write_prelude(Header(server_version="7.0.5", tool_version="test"), reader.collections)
        for c in reader.collections:
            end = writer.write_collection(c.db, c.collection, iter(docs[c.namespace]), block_bytes=4096)
            assert end == ends(events)[c.namespace]
    again, events_again = read(out.getvalue())
    assert documents(events_again) == docs
    assert max(sum(1 for e in events_again if isinstance(e, Documents) and e.namespace == ns) for ns in docs) > 10


def test_interleaved_namespaces_from_threads():
    """As mongodump -j: several collections dumped at once, their blocks interleaved in one stream."""
    metas = [CollectionMetadata.from_metadata("db", Metadata(collection_name=f"c{i}")) for i in range(4)]
    sent = {m.namespace: [doc(n, pad=n % 300) for n in range(2000)] for m in metas}
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    writer.write_prelude(Header(concurrent_collections=4, server_version="8.0.0-rc1"), metas)
    threads = [threading.Thread(target=writer.write_collection, args=(m.db, m.collection, sent[m.namespace], 2048))
               for m in metas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    _, events = read(out.getvalue())
    assert documents(events) == sent
    headers = [e.namespace for e in events if isinstance(e, Documents)]
    assert sum(a != b for a, b in zip(headers, headers[1:], strict=False)) > 3  # they did interleave
    assert {ns: e.crc for ns, e in ends(events).items()} == {ns: crc64(b"".join(d)) for ns, d in sent.items()}


def test_metadata_json_round_trips():
    text = ('{"options":{"timeseries":{"timeField":"ts","metaField":"meta","granularity":"seconds",'
            '"bucketMaxSpanSeconds":{"$numberInt":"3600"}},"expireAfterSeconds":{"$numberLong":"86400"}},'
            '"indexes":[{"v":{"$numberInt":"2"},"key":{"meta.device":{"$numberInt":"1"},"ts":{"$numberInt":"-1"}},'
            '"name":"meta.device_1_ts_-1","ns":"app.weather"}],"uuid":"3544d572e1c74a4ebf91b013384c3756",'
            '"collectionName":"weather","type":"timeseries"}')
    meta = parse_metadata(text)
    assert meta.type == "timeseries" and meta.uuid == UUID("3544d572-e1c7-4a4e-bf91-b013384c3756")
    assert meta.options["timeseries"]["granularity"] == "seconds"
    assert isinstance(meta.options["expireAfterSeconds"], bson.int64.Int64)  # types kept for create
    assert meta.to_json() == text
    assert meta.secondary_indexes == [{"v": 2, "key": {"meta.device": 1, "ts": -1}, "name": "meta.device_1_ts_-1"}]
    view = Metadata(collection_name="v", type="view", options={"viewOn": "c", "pipeline": [{"$match": {"a": 1}}]})
    assert parse_metadata(view.to_json()) == view
    assert parse_metadata("") == Metadata()  # --viewsAsCollections writes none
    with pytest.raises(IntegrityError, match="not mongodump's JSON"):
        parse_metadata("{not json")


def test_a_timeseries_collection_writes_its_buckets():
    ts = CollectionMetadata.from_metadata("app", Metadata(collection_name="weather", type="timeseries"))
    out = io.BytesIO()
    with ArchiveWriter(out) as writer:
        writer.write_prelude(Header(server_version="7.0.5"), [ts])
        writer.write_collection("app", "system.buckets.weather", [doc(1)])
    reader, events = read(out.getvalue())
    assert [c.type for c in reader.collections] == ["timeseries"]
    assert documents(events) == {"app.system.buckets.weather": [doc(1)]}


# -- damage -----------------------------------------------------------------------------------------------


def test_a_flipped_byte_in_a_document_fails_its_namespace_crc():
    data = bytearray(fixture("all-dbs.archive"))
    data[data.index(b"u500@x.org")] ^= 0x01
    with pytest.raises(IntegrityError, match=r"namespace app\.users fails its CRC-64 check"):
        read(bytes(data))
    # the same under gzip: the damage was there before the compression
    with pytest.raises(IntegrityError, match=r"namespace app\.users fails its CRC-64 check"):
        read(gzip.compress(bytes(data)))


def test_a_flipped_byte_in_the_gzip_stream():
    data = bytearray(fixture("all-dbs.gz.archive"))
    data[len(data) // 2] ^= 0x55
    with pytest.raises(IntegrityError, match="mongodump archive"):
        read(bytes(data))


def test_a_broken_document_length_names_the_namespace():
    data = bytearray(fixture("all-dbs.archive"))
    at = data.index(b"u500@x.org")
    start = data.rindex(b"\x10_id\x00", 0, at) - 4  # users' documents start with their int32 _id
    data[start:start + 4] = struct.pack("<i", 3)
    with pytest.raises(IntegrityError, match=rf"namespace app\.users: 3 is no document length, at offset {start}"):
        read(bytes(data))


def test_every_cut_short_archive_is_an_error():
    data = fixture("all-dbs.archive")
    # every block boundary (after a terminator), and a byte in every kilobyte
    cuts = sorted({i + 4 for i in range(len(data)) if data.startswith(b"\xff\xff\xff\xff", i)} |
                  set(range(5, len(data), 1009)))
    cuts.remove(len(data))
    for cut in cuts:
        with pytest.raises(IntegrityError, match="mongodump archive"):
            read(data[:cut])
    at = data.index(b"u500@x.org")
    with pytest.raises(IntegrityError, match=rf"cut short inside namespace app\.users, at offset {at}$"):
        read(data[:at])
    with pytest.raises(IntegrityError, match="ends before the EOF of namespace app.users"):
        read(data[:data.index(b"\xff\xff\xff\xff", at) + 4])
    with pytest.raises(IntegrityError, match="cut short in the prelude"):
        read(data[:200])
    zipped = fixture("all-dbs.gz.archive")
    with pytest.raises(IntegrityError, match=r"the gzip stream ends early"):
        read(zipped[:len(zipped) // 2])


@pytest.mark.parametrize("data", [b"", b"\x6d\xe2", b"just text, no archive", random.Random(1).randbytes(4096),
                                  doc(1) + doc(2),  # a .bson file: documents but no magic
                                  gzip.compress(b"{}" * 1000)], ids=["empty", "short", "text", "random", "bson",
                                                                      "gzip-of-other"])
def test_what_is_no_archive_is_bad_input(data):
    with pytest.raises(BadInput, match="not a mongodump archive"):
        ArchiveReader(io.BytesIO(data))


# -- the writer's contract: raw BSON in, never decoded ----------------------------------------------------


def test_documents_pass_as_raw_bytes_never_decoded():
    """What the dump path gives is written as it is; a document Python's bson could not even decode (bad UTF-8,
    repeated keys) comes back unchanged: nothing on the way decodes it."""
    raw = RawBSONDocument(doc(7)).raw
    undecodable = b"".join([b"\x02s\x00", struct.pack("<i", 3), b"\xff\xfe\x00"])  # a string of invalid UTF-8
    undecodable = struct.pack("<i", 4 + len(undecodable) + 1) + undecodable + b"\x00"
    with pytest.raises(bson.errors.InvalidBSON):
        bson.decode(undecodable)
    twice = bson.encode({"a": 1})[:-1] + b"\x10a\x00\x02\x00\x00\x00\x00"  # "a" twice (then the length fixed)
    twice = struct.pack("<i", len(twice)) + twice[4:]
    sent = [raw, undecodable, twice, bytearray(doc(8)), memoryview(doc(9))]
    out = io.BytesIO()
    with ArchiveWriter(out) as writer:
        writer.write_prelude(Header(server_version="7.0.5"), [CollectionMetadata("db", "c")])
        writer.write_block("db", "c", (d for d in sent))  # any iterable
        writer.end("db", "c")
    _, events = read(out.getvalue())
    assert documents(events) == {"db.c": [bytes(d) for d in sent]}


@pytest.mark.parametrize("bad", [{"_id": 1}, RawBSONDocument(doc(1)), doc(1)[:-1], doc(1)[:-1] + b"\x01",
                                 b"\x05\x00\x00", struct.pack("<i", 6) + b"\x00"],
                         ids=["dict", "RawBSONDocument", "short", "no-nul", "tiny", "wrong-length"])
def test_the_writer_takes_only_framed_bson_bytes(bad):
    writer = ArchiveWriter(io.BytesIO())
    writer.write_prelude(Header(server_version="7.0.5"), [CollectionMetadata("db", "c")])
    with pytest.raises(ValueError, match=r"db\.c: item 1 of the block is not one BSON document"):
        writer.write_block("db", "c", [doc(1), bad])


def test_the_writer_refuses_what_mongorestore_would():
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    with pytest.raises(ValueError, match="write_prelude comes first"):
        writer.write_block("db", "c", [doc(1)])
    with pytest.raises(ValueError, match="server_version '' is not X.Y.Z"):
        writer.write_prelude(Header(), [])
    big = struct.pack("<i", MAX_BSON_SIZE + 1) + bytes(MAX_BSON_SIZE - 3)  # framed, but past mongorestore's limit
    writer.write_prelude(Header(server_version="6.0.14"), [CollectionMetadata("db", "c"), CollectionMetadata(*OPLOG)])
    with pytest.raises(ValueError, match="once"):
        writer.write_prelude(Header(server_version="6.0.14"), [])
    with pytest.raises(ValueError, match=r"db\.other is not in the prelude"):
        writer.write_block("db", "other", [doc(1)])
    with pytest.raises(ValueError, match="not one BSON document"):
        writer.write_block("db", "c", [big])
    writer.write_collection("db", "c", [doc(1)])
    with pytest.raises(ValueError, match=r"db\.c ended twice"):
        writer.end("db", "c")
    with pytest.raises(ValueError, match=r"db\.c: documents after its end"):
        writer.write_block("db", "c", [doc(2)])
    with pytest.raises(ValueError, match=r"namespaces never ended: \.oplog"):
        writer.close()
    writer.end(*OPLOG)
    writer.close()
    _, events = read(out.getvalue())
    assert ends(events)[".oplog"] == End("", "oplog", 0, 0, 0)


def test_a_failed_dump_does_not_look_complete():
    out = io.BytesIO()
    with pytest.raises(RuntimeError), ArchiveWriter(out) as writer:
        writer.write_prelude(Header(server_version="7.0.5"), [CollectionMetadata("db", "c")])
        writer.write_block("db", "c", [doc(1)])
        raise RuntimeError("the server went away")
    with pytest.raises(IntegrityError, match=r"ends before the EOF of namespace db\.c"):
        read(out.getvalue())


# -- streaming ------------------------------------------------------------------------------------------


def test_200_mb_stream_through_a_pipe_in_bounded_memory():
    """Writer and reader hold a block and a read of the stream, whatever the size of the dump."""
    total = 200 << 20
    template = doc(0, pad=8000)  # about 8 KB each, made on the fly: only the _id changes
    id_at = template.index(b"\x10_id\x00") + 5
    count = total // len(template)

    def generated():
        for i in range(count):
            yield template[:id_at] + struct.pack("<i", i) + template[id_at + 4:]

    seen: dict[str, object] = {}

    def consume(fd: int) -> None:
        try:
            with open(fd, "rb") as f:
                n = size = 0
                for event in ArchiveReader(f):
                    if isinstance(event, Documents):
                        n += len(event.documents)
                        size += sum(map(len, event.documents))
                    else:
                        seen["end"] = event
                seen["docs"], seen["size"] = n, size
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            seen["error"] = e

    r, w = os.pipe()
    reader_thread = threading.Thread(target=consume, args=(r,))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        reader_thread.start()
        with open(w, "wb") as f, ArchiveWriter(f) as writer:
            writer.write_prelude(Header(server_version="7.0.5"), [CollectionMetadata("big", "docs")])
            end = writer.write_collection("big", "docs", generated())
        reader_thread.join()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    assert "error" not in seen, seen.get("error")
    assert seen["docs"] == count and seen["size"] == end.size == count * len(template)
    assert seen["end"] == end
    print(f"\n{end.size / 1e6:.0f} MB through a pipe, written and read (CRC both ways) in {seconds:.1f} s "
          f"under tracemalloc: {end.size / 1e6 / seconds:.0f} MB/s; peak {peak / 1e6:.1f} MB")
    assert peak < 20 << 20


def test_crc64_through_liblzma_equals_the_python_path():
    """The C path (liblzma's lzma_crc64, present wherever Python's lzma module is) and the Python fallback give
    the same CRC for every length and for a CRC continued over pieces."""
    assert archive._LZMA_CRC64 is not None, "liblzma not found: crc64 would run at Python speed"
    data = os.urandom(300_000)
    for n in (0, 1, 7, 8, 1023, 1024, 4097, 131_072, 131_073, 300_000):
        assert archive.crc64(data[:n]) == archive.python_crc64(data[:n]), n
    assert archive.crc64(data[5000:], archive.crc64(data[:5000])) == archive.python_crc64(data)
    assert archive.crc64(memoryview(data)[:999]) == archive.python_crc64(data[:999])
