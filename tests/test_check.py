"""``check``: good repositories (ours and restic's, v1 and v2) pass, damaged copies fail naming the damage,
and restic 0.14's own check agrees on each verdict."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import tracemalloc
from dataclasses import dataclass

import pytest

from backends.base import FileType, Handle
from backends.local import LocalBackend
from backends.s3 import S3Backend
from backends.spec import BackendSpec
from stash_runner.errors import BadInput, LockedError
from stash_runner.maintenance.check import CheckResult, Subset, parse_subset, run_check
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.pack import DATA, PackBuilder
from stash_runner.restic.reader import find_file
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot
from stash_runner.restic.timefmt import format_time, now
from stash_runner.stash.objects import Secret

from .helpers import REPO_PASSWORD, restic
from .test_engine import backup_bytes as backup

MB = 1024 * 1024


def stream(n: int, seed: int) -> bytes:
    """Random stretches (stored as is) and hex text (compressed): both kinds of pack entry."""
    rnd = random.Random(seed)
    parts, size = [], 0
    while size < n:
        k = rnd.randint(200_000, 2_000_000)
        parts.append(rnd.randbytes(k) if rnd.random() < 0.5 else rnd.randbytes(k // 2).hex().encode())
        size += k
    return b"".join(parts)[:n]




def open_repo(root: str) -> Repository:
    return Repository.open(LocalBackend(root), REPO_PASSWORD)


def check(root: str, **kw) -> CheckResult:
    return run_check(open_repo(root), **kw)


@dataclass
class Indexed:
    """The index as the test sees it: pack -> (index file, its blobs)."""

    packs: dict[str, tuple[str, list[dict]]]

    def pack_of(self, blob_id: str) -> str:
        return next(p for p, (_, blobs) in self.packs.items() if any(b["id"] == blob_id for b in blobs))

    def data_packs(self) -> list[str]:
        return sorted(p for p, (_, blobs) in self.packs.items() if blobs[0]["type"] == DATA)


def indexed(root: str) -> Indexed:
    repo = open_repo(root)
    packs = {}
    for name, _ in repo.list_files(FileType.INDEX):
        for p in repo.load_unpacked(FileType.INDEX, name)["packs"]:
            packs[p["id"]] = (name, p["blobs"])
    return Indexed(packs)


def pack_path(root: str, pack: str) -> str:
    return os.path.join(root, Handle(FileType.DATA, pack).path())


def file_content(root: str, snap_id: str) -> list[str]:
    """The blob IDs of the snapshot's dumpfile.sql."""
    repo = open_repo(root)
    repo.load_index()
    _, node = find_file(repo, repo.find_snapshot(snap_id), "/dumpfile.sql")
    return list(node.content)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def restic_check(root: str, *args: str) -> bool:
    return restic(root, "check", *args, check=False).returncode == 0


# -- a good repository of ours, shared (read-only) by the tests that copy it ----------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("good") / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    snaps = [backup(repo, stream(20 * MB, seed), host=f"host-{seed}") for seed in (1, 2, 3)]
    snaps.append(backup(repo, stream(20 * MB, 1), host="host-1"))  # dedup: a new tree, no new data
    return root, snaps


@pytest.fixture
def damaged(good, tmp_path):
    root, snaps = good
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    return copy, snaps


def test_our_repository_is_good(good):
    root, snaps = good
    quick = check(root)
    assert quick.ok and quick.hints == [], quick
    assert quick.snapshots == 4 and quick.trees == 4 and quick.index_files == 4
    assert quick.headers_checked == quick.packs >= 5 and quick.packs_checked == 0
    full = check(root, read_data=True)
    assert full.ok and full.hints == [], full
    assert full.packs_checked == full.packs and full.headers_checked == 0
    assert full.blobs_checked == sum(len(b) for _, b in indexed(root).packs.values())
    assert full.bytes_read >= sum(os.path.getsize(pack_path(root, p)) for p in indexed(root).packs)
    assert restic_check(root, "--read-data")
    # the check leaves no lock behind, and a prune's exclusive lock keeps it out
    repo = open_repo(root)
    assert repo.list_files(FileType.LOCK) == []
    with RepositoryLock(repo, exclusive=True), pytest.raises(LockedError):
        run_check(open_repo(root))
    assert run_check(open_repo(root), lock=False).ok  # --no-lock, e.g. on a read-only volume


def test_read_data_memory_is_bounded_by_workers_not_packs(good):
    root, _ = good
    tracemalloc.start()
    try:
        r = check(root, read_data=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sizes = [os.path.getsize(pack_path(root, p)) for p in indexed(root).packs]
    workers = max(2, LocalBackend(root).connections)
    print(f"read-data: {sum(sizes) / MB:.0f} MiB in {len(sizes)} packs (largest {max(sizes) / MB:.1f} MiB), "
          f"{workers} workers, peak {peak / MB:.1f} MiB traced")
    assert r.ok
    # Packs are streamed in segments: less than one whole pack per worker is ever held.
    assert peak < workers * max(sizes)


@pytest.mark.parametrize("version", ["1", "2"])
def test_restic_repository_is_good(tmp_path, version):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(stream(6 * MB, 11))
    (src / "sub" / "text.sql").write_bytes(stream(2 * MB, 12))
    (src / "sub" / "deeper" / "empty").write_bytes(b"")
    (src / "link").symlink_to("big.bin")
    root = str(tmp_path / "repo")
    restic(root, "init", "--repository-version", version)
    restic(root, "backup", str(src))
    (src / "sub" / "text.sql").write_bytes(stream(2 * MB, 13))
    restic(root, "backup", str(src))
    restic(root, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", input=stream(3 * MB, 14))
    r = check(root, read_data=True)
    assert r.ok and r.hints == [], r
    assert r.snapshots == 3 and r.packs_checked == r.packs >= 2 and r.trees > 5


# -- damaged copies --------------------------------------------------------------------------

def test_flipped_byte_in_a_blob(damaged):
    root, snaps = damaged
    idx = indexed(root)
    blob_id = file_content(root, snaps[1])[3]
    pack = idx.pack_of(blob_id)
    blob = next(b for b in idx.packs[pack][1] if b["id"] == blob_id)
    flip(pack_path(root, pack), blob["offset"] + 100)
    assert check(root).ok  # the structure is intact: only reading the data finds it
    r = check(root, read_data=True)
    assert any(pack in e and blob_id in e and "MAC" in e for e in r.errors), r.errors
    assert any(pack in e and "do not match the name" in e for e in r.errors), r.errors
    assert len(r.errors) == 2, r.errors
    assert restic_check(root) and not restic_check(root, "--read-data")


def test_truncated_pack_is_found_without_read_data(damaged):
    root, _ = damaged
    pack = indexed(root).data_packs()[0]
    path = pack_path(root, pack)
    os.truncate(path, os.path.getsize(path) - 5000)
    r = check(root)
    assert any(e.startswith(f"pack {pack}: unexpected file size") for e in r.errors), r.errors
    assert any(e.startswith(f"pack {pack}: header") for e in r.errors), r.errors
    assert all(pack in e for e in r.errors), r.errors
    full = check(root, read_data=True)
    assert any(pack in e and "beyond the end" in e for e in full.errors), full.errors
    assert not restic_check(root)


def test_missing_pack(damaged):
    root, _ = damaged
    idx = indexed(root)
    pack = idx.data_packs()[1]
    os.remove(pack_path(root, pack))
    for r in (check(root), check(root, read_data=True)):
        assert r.errors == [f"pack {pack}: does not exist (named by index {idx.packs[pack][0]})"]
    assert not restic_check(root)


def test_missing_index_file(damaged):
    root, snaps = damaged
    idx = indexed(root)
    index_file = idx.packs[idx.pack_of(file_content(root, snaps[2])[0])][0]
    lost = sorted(p for p, (f, _) in idx.packs.items() if f == index_file)
    os.remove(os.path.join(root, "index", index_file))
    r = check(root)
    assert sorted(h.split()[1].rstrip(":") for h in r.hints) == lost
    assert all("not referenced in any index" in h for h in r.hints)
    # the index file held the third backup's packs, its tree among them
    assert r.errors and all("not found in index" in e for e in r.errors), r.errors
    assert any(snaps[2] in e for e in r.errors), r.errors
    assert not restic_check(root)


def test_index_without_a_data_pack(damaged):
    """A pack dropped from its index: the blobs files need are unindexed; the pack is unreferenced."""
    root, snaps = damaged
    content = file_content(root, snaps[0])
    idx = indexed(root)
    pack = idx.pack_of(content[0])
    index_file = idx.packs[pack][0]
    repo = open_repo(root)
    obj = repo.load_unpacked(FileType.INDEX, index_file)
    obj["packs"] = [p for p in obj["packs"] if p["id"] != pack]
    repo.save_unpacked(FileType.INDEX, obj)
    os.remove(os.path.join(root, "index", index_file))
    r = check(root)
    assert r.hints == [f"pack {pack}: not referenced in any index (non-critical: left by an interrupted backup; "
                       "prune removes it)"]
    lost = {b["id"] for b in idx.packs[pack][1]}
    assert r.errors and all("not found in index" in e and e.split()[-5] in lost for e in r.errors), r.errors
    assert any(f"blob {content[0]} not found in index" in e for e in r.errors)
    assert not restic_check(root)


def test_damaged_index_file(damaged):
    root, _ = damaged
    name = sorted(os.listdir(os.path.join(root, "index")))[0]
    flip(os.path.join(root, "index", name), 50)
    r = check(root)
    assert any(e.startswith(f"index {name}:") and "does not match its name" in e for e in r.errors), r.errors
    assert r.hints  # its packs are unreferenced now
    assert not restic_check(root)


def test_pack_in_two_index_files_and_a_superseded_index_are_hints(damaged):
    root, _ = damaged
    repo = open_repo(root)
    first, second = sorted(os.listdir(os.path.join(root, "index")))[:2]
    copy, _ = repo.save_unpacked(FileType.INDEX, repo.load_unpacked(FileType.INDEX, first))
    newer, _ = repo.save_unpacked(FileType.INDEX, {"supersedes": [second],
                                                   **repo.load_unpacked(FileType.INDEX, second)})
    r = check(root, read_data=True)
    assert r.ok, r.errors
    dup = [h for h in r.hints if "contained in several indexes" in h]
    assert dup and all(first in h and copy in h for h in dup)
    assert f"index {second}: superseded by index {newer} but still present (non-critical)" in r.hints
    assert len(r.hints) == len(dup) + 1
    assert restic_check(root)  # restic: duplicates are non-critical too


def test_snapshot_tree_missing(damaged):
    root, _ = damaged
    repo = open_repo(root)
    tree = os.urandom(32).hex()
    snap = Snapshot(time=format_time(now()), tree=tree, paths=["/dumpfile.sql"], hostname="ghost")
    repo.save_snapshot(snap)
    r = check(root)
    assert r.errors == [f"snapshot {snap.id}: tree {tree} not found in index"]
    assert not restic_check(root)


def test_damaged_pack_header_is_found_without_read_data(damaged):
    root, _ = damaged
    pack = indexed(root).data_packs()[0]
    path = pack_path(root, pack)
    flip(path, os.path.getsize(path) - 10)  # inside the encrypted header (its MAC)
    r = check(root)
    assert r.errors == [f"pack {pack}: header fails its MAC (damaged)"]
    assert restic_check(root)  # restic reads headers only with --read-data
    assert not restic_check(root, "--read-data")


def test_unreferenced_pack_is_a_hint(damaged):
    root, _ = damaged
    repo = open_repo(root)
    builder = PackBuilder(DATA)
    data = os.urandom(1000)
    builder.add(hashlib.sha256(data).digest(), repo.key.encrypt(data))
    pack_id, raw = builder.finish(repo.key)
    repo.save_pack(pack_id, raw)
    for r in (check(root), check(root, read_data=True)):
        assert r.ok, r.errors
        assert r.hints == [f"pack {pack_id.hex()}: not referenced in any index (non-critical: left by an "
                           "interrupted backup; prune removes it)"]
    assert restic_check(root, "--read-data")


# -- --read-data-subset ------------------------------------------------------------------------

def test_read_data_subset(good):
    root, _ = good
    packs = sorted(bytes.fromhex(p) for p in indexed(root).packs)
    first = check(root, subset="1/2")
    second = check(root, subset="2/2")
    even = sum(1 for p in packs if p[0] % 2 == 0)
    assert first.ok and second.ok
    assert (first.packs_checked, second.packs_checked) == (even, len(packs) - even)
    assert first.headers_checked == len(packs) - even  # the unread packs still have their headers checked
    assert first.blobs_checked + second.blobs_checked == check(root, read_data=True).blobs_checked
    half = check(root, subset="50%")
    assert half.ok and half.packs_checked == len(packs) // 2
    assert check(root, subset="0.1%").packs_checked == 1  # at least one pack
    assert check(root, subset="1K").packs_checked == 1
    assert check(root, subset="100%").packs_checked == len(packs)
    # x% picks at random as restic does; a seed makes it repeatable
    sizes = dict.fromkeys(packs, 1)
    assert Subset("50%", percent=50).select(sizes, random.Random(7)) == \
        Subset("50%", percent=50).select(dict(reversed(sizes.items())), random.Random(7))
    assert parse_subset("3/4") == Subset("3/4", bucket=3, buckets=4)
    assert parse_subset("2.5%").percent == 2.5 and parse_subset("2G").size == 2 << 30


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1/300", "1/2/3", "0%", "101%", "x%", "abc", "-1", "0"])
def test_invalid_subset(spec):
    with pytest.raises(BadInput):
        parse_subset(spec)


def test_read_data_and_subset_exclude_each_other(good):
    with pytest.raises(BadInput):
        check(good[0], read_data=True, subset="1/2")


# -- scale and remote storage ---------------------------------------------------------------------

def test_thousand_snapshots(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    first = repo.find_snapshot(backup(repo, stream(2 * MB, 21)))
    for i in range(999):
        repo.save_snapshot(Snapshot(time=format_time(now()), tree=first.tree, paths=first.paths,
                                    hostname=f"host-{i % 10}", tags=[f"n{i}"]))
    t = time.monotonic()
    tracemalloc.start()
    try:
        r = check(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.monotonic() - t
    print(f"check of 1,000 snapshots: {took:.2f} s (traced), peak {peak / MB:.1f} MiB; {r.bytes_read} bytes read")
    assert r.ok and r.snapshots == 1000
    assert r.trees == 1  # every snapshot shares one tree: loaded once
    assert peak < 32 * MB
    t = time.monotonic()
    assert restic_check(root)
    print(f"restic check of the same: {time.monotonic() - t:.2f} s")


def s3_backend(server, bucket: str, prefix: str) -> S3Backend:
    data = {k: v.encode() for k, v in server.env.items()}
    spec = BackendSpec("s3", bucket=bucket, prefix=prefix, endpoint=server.url)
    return S3Backend.from_spec(spec, Secret("Secret demo/s3", data), "Repository demo/repo", timeout=10, environ={})


def test_check_on_s3(moto_server):
    backend = s3_backend(moto_server, "check-bucket", "stash/check")
    repo = Repository.init(backend, REPO_PASSWORD)
    backup(repo, stream(6 * MB, 31))
    backup(repo, stream(3 * MB, 32))
    r = run_check(Repository.open(backend, REPO_PASSWORD), read_data=True)
    assert r.ok and r.hints == [], r
    assert r.packs_checked == r.packs >= 3 and r.snapshots == 2
    url = f"s3:{moto_server.url}/check-bucket/stash/check"
    restic(url, "check", "--read-data", env=moto_server.env)
    # and it finds damage there too
    pack = max(backend.list(FileType.DATA), key=lambda f: f[1])[0]  # a data pack: the largest
    backend.remove(Handle(FileType.DATA, pack))
    r = run_check(Repository.open(backend, REPO_PASSWORD), read_data=True)
    assert len(r.errors) == 1 and r.errors[0].startswith(f"pack {pack}: does not exist"), r.errors
    assert restic(url, "check", env=moto_server.env, check=False).returncode != 0
