"""The compact in-memory Index (stash_runner/restic/index.py): correctness of its hash table and columns."""

from __future__ import annotations

import os
import random
import threading

import pytest

from stash_runner.restic.index import Index, index_json
from stash_runner.restic.pack import DATA, TREE, PackedBlob


def _blobs(n: int, rng: random.Random, start: int = 0) -> list[PackedBlob]:
    return [
        PackedBlob(rng.randbytes(32), rng.choice((DATA, TREE)), start + 1000 * i, 1000 + i, rng.choice((0, 5000 + i)))
        for i in range(n)
    ]


def test_random_ids_round_trip_across_resizes() -> None:
    rng = random.Random(1)
    idx = Index()
    expected: dict[bytes, tuple[bytes, PackedBlob]] = {}
    for _ in range(400):  # 20,000 blobs: the table (1,024 slots at first) doubles several times
        pack_id = rng.randbytes(32)
        blobs = _blobs(50, rng)
        idx.add_pack(pack_id, blobs)
        for b in blobs:
            expected[b.id] = (pack_id, b)
        assert len(idx) == len(expected)
    for blob_id, want in expected.items():
        assert idx.has(blob_id)
        got = idx.lookup(blob_id)
        assert got == want
        assert type(got[1]) is PackedBlob and hash(got[1]) == hash(want[1])
    assert idx.packs() == {p for p, _ in expected.values()}


def test_absent_ids() -> None:
    rng = random.Random(2)
    idx = Index()
    assert len(idx) == 0 and not idx.has(bytes(32)) and idx.lookup(bytes(32)) is None
    blobs = _blobs(3000, rng)
    idx.add_pack(b"p" * 32, blobs)
    for _ in range(3000):
        blob_id = rng.randbytes(32)
        assert not idx.has(blob_id)
        assert idx.lookup(blob_id) is None
    # same first 8 bytes (same slot chain), different id
    for b in blobs[:100]:
        other = b.id[:8] + bytes(24)
        assert not idx.has(other) and idx.lookup(other) is None
    assert not idx.has(b"") and not idx.has(blobs[0].id[:31])
    assert idx.lookup(bytes(32)) is None  # the dummy entry 0 never answers


def test_colliding_prefixes() -> None:
    """Ids sharing their first 8 bytes land on one probe chain; the full 32 bytes tell them apart."""
    idx = Index()
    blobs = [PackedBlob(b"\x07" * 8 + os.urandom(24), DATA, i, 10, 0) for i in range(2000)]
    idx.add_pack(b"a" * 32, blobs)
    for b in blobs:
        assert idx.lookup(b.id) == (b"a" * 32, b)


def test_duplicates_first_wins() -> None:
    rng = random.Random(3)
    idx = Index()
    first = _blobs(10, rng)
    idx.add_pack(b"1" * 32, first)
    again = [PackedBlob(b.id, b.type, b.offset + 7, b.length, 0) for b in first]
    idx.add_pack(b"2" * 32, again + [first[0]])
    idx.add_pack(b"3" * 32, [first[1], first[1]])
    assert len(idx) == 10
    for b in first:
        assert idx.lookup(b.id) == (b"1" * 32, b)
    assert idx.packs() == {b"1" * 32, b"2" * 32, b"3" * 32}
    # a pack added twice is still one pack
    idx.add_pack(b"1" * 32, _blobs(2, rng))
    assert idx.packs() == {b"1" * 32, b"2" * 32, b"3" * 32} and len(idx) == 12


def test_large_offsets_and_lengths() -> None:
    idx = Index()
    small = PackedBlob(os.urandom(32), DATA, 5, 6, 7)
    idx.add_pack(b"s" * 32, [small])
    big = [
        PackedBlob(os.urandom(32), DATA, (1 << 32) + 5, 10, 0),
        PackedBlob(os.urandom(32), TREE, 3, (1 << 33), 0),
        PackedBlob(os.urandom(32), DATA, 1 << 40, 1 << 36, (1 << 63) + 1),
        PackedBlob(os.urandom(32), DATA, (1 << 32) - 1, (1 << 32) - 1, (1 << 32) - 1),
    ]
    idx.add_pack(b"b" * 32, big)
    assert idx.lookup(small.id) == (b"s" * 32, small)
    for b in big:
        assert idx.lookup(b.id) == (b"b" * 32, b)
    with pytest.raises(ValueError):
        idx.add_pack(b"n" * 32, [PackedBlob(os.urandom(32), DATA, -1, 1, 0)])
    assert len(idx) == 5


def test_empty_pack_and_generator() -> None:
    idx = Index()
    idx.add_pack(b"e" * 32, [])
    assert idx.packs() == {b"e" * 32} and len(idx) == 0
    b = PackedBlob(os.urandom(32), TREE, 0, 1, 0)
    idx.add_pack(b"g" * 32, (x for x in [b]))
    assert idx.lookup(b.id) == (b"g" * 32, b)


def test_add_index_json_new_and_old_format() -> None:
    rng = random.Random(4)
    p1, p2 = rng.randbytes(32), rng.randbytes(32)
    b1, b2 = _blobs(5, rng), _blobs(5, rng)
    new = Index()
    new.add_index_json(index_json([(p1, b1), (p2, b2)]))
    for b in b1:
        assert new.lookup(b.id) == (p1, b)
    for b in b2:
        assert new.lookup(b.id) == (p2, b)
    assert new.packs() == {p1, p2}
    # the earliest format: a bare list of packs, no uncompressed_length (restic's decodeOldIndex sets 0)
    old_obj = [
        {"id": p1.hex(), "blobs": [{"id": b.id.hex(), "type": b.type, "offset": b.offset, "length": b.length,
                                    "uncompressed_length": 99} for b in b1]},
        {"id": p2.hex(), "blobs": None},
    ]
    old = Index()
    old.add_index_json(old_obj)
    for b in b1:
        assert old.lookup(b.id) == (p1, PackedBlob(b.id, b.type, b.offset, b.length, 0))
    assert old.packs() == {p1, p2} and len(old) == 5


def test_concurrent_add_and_lookup() -> None:
    """Writers add under the lock while readers look up without one: a reader never sees a half entry."""
    rng = random.Random(5)
    packs = [(rng.randbytes(32), _blobs(40, rng)) for _ in range(500)]  # 20,000 blobs: several resizes
    idx = Index()
    errors: list[BaseException] = []
    done = threading.Event()

    def write(part: list[tuple[bytes, list[PackedBlob]]]) -> None:
        try:
            for pack_id, blobs in part:
                idx.add_pack(pack_id, blobs)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    def read() -> None:
        r = random.Random(threading.get_ident())
        try:
            while not done.is_set():
                pack_id, blobs = packs[r.randrange(len(packs))]
                b = blobs[r.randrange(len(blobs))]
                got = idx.lookup(b.id)
                if got is not None and got != (pack_id, b):
                    errors.append(AssertionError(f"{b} -> {got}"))
                if idx.has(b.id) and idx.lookup(b.id) != (pack_id, b):
                    errors.append(AssertionError(f"{b} present but wrong"))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    writers = [threading.Thread(target=write, args=(packs[i::2],)) for i in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert len(idx) == 20_000
    for pack_id, blobs in packs:
        for b in blobs:
            assert idx.lookup(b.id) == (pack_id, b)
