"""prune against restic 0.14 as the judge: `restic check --read-data` passes and every snapshot left restores
byte-exact after a prune, after a prune that crashed at any write, and on repositories restic made."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from backends.base import Backend, BackendError, FileType, Handle
from backends.local import LocalBackend
from stash_runner.errors import BadInput, IntegrityError, LockedError, RepositoryError
from stash_runner.maintenance.prune import load_index_state, max_unused_limit, parse_size, run_prune
from stash_runner.restic import index as index_module
from stash_runner.restic.archiver import Archiver
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.reader import find_file, iter_content, walk_files
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot

from .helpers import REPO_PASSWORD, restic

MiB = 1 << 20


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def backup(repo: Repository, files: dict[str, bytes], host: str = "host-0") -> str:
    repo.load_index()
    with Archiver(repo) as a:
        for path, data in files.items():
            a.add_stream(path, io.BytesIO(data))
        return a.commit(hostname=host, paths=sorted("/" + p for p in files)).snapshot.id


def forget(root: str, snap_id: str) -> None:
    """What `forget` does: the snapshot file goes, its data stays until prune."""
    LocalBackend(root).remove(Handle(FileType.SNAPSHOT, snap_id))


def open_repo(root: str, backend: Backend | None = None) -> Repository:
    return Repository.open(backend or LocalBackend(root), REPO_PASSWORD)


def packs_on_disk(root: str) -> dict[str, int]:
    return dict(LocalBackend(root).list(FileType.DATA))


def data_size(root: str) -> int:
    return sum(packs_on_disk(root).values())


def file_hashes(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def check(root: str) -> str:
    r = restic(root, "check", "--read-data")
    return r.stdout.decode() + r.stderr.decode()


def assert_restores_with_restic(root: str, expected: dict[str, dict[str, bytes]]) -> None:
    for snap_id, files in expected.items():
        for path, data in files.items():
            assert restic(root, "dump", snap_id, "/" + path).stdout == data, (snap_id, path)


def assert_restores_with_reader(root: str, expected: dict[str, dict[str, bytes]]) -> None:
    repo = open_repo(root)
    repo.load_index()
    for snap_id, files in expected.items():
        snap = repo.find_snapshot(snap_id)
        for path, data in files.items():
            _, node = find_file(repo, snap, "/" + path)
            assert b"".join(iter_content(repo, node)) == data, (snap_id, path)


def assert_index_matches_storage(root: str) -> None:
    """Nothing left over: every pack file is indexed, every indexed pack exists, no superseded index."""
    repo = open_repo(root)
    with ThreadPool() as pool:
        state = load_index_state(repo, pool)
    assert not state.superseded
    assert {p.hex() for p in state.packs} == set(packs_on_disk(root))


class ThreadPool:
    def __enter__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(2)
        return self._pool

    def __exit__(self, *exc):
        self._pool.shutdown()


def classify_packs(root: str, keep_snapshots: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(unused, partly used, used) packs, worked out with the reader: used = root trees + file contents."""
    repo = open_repo(root)
    repo.load_index()
    used: set[bytes] = set()
    for sid in keep_snapshots:
        snap = repo.find_snapshot(sid)
        used.add(bytes.fromhex(snap.tree))
        for _, node in walk_files(repo, snap):
            used.update(bytes.fromhex(x) for x in node.content or [])
    with ThreadPool() as pool:
        state = load_index_state(repo, pool)
    unused, partly, full = set(), set(), set()
    for pack_id, blobs in state.packs.items():
        n = sum(b.id in used for b in blobs)
        (unused if n == 0 else full if n == len(blobs) else partly).add(pack_id.hex())
    return unused, partly, full


# -- 1. our repository, several snapshots sharing data ------------------------------------------

@pytest.fixture
def shared_repo(tmp_path) -> tuple[str, dict[str, dict[str, bytes]], str]:
    """s1 = A; s2 = B + C (one pack holds the end of B and the start of C); s3 = C; s4 = A + D.

    Returns (root, the snapshots to keep with their files, the id of s2 to forget).
    """
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    a, b, c, d = rand(18 * MiB, 1), rand(18 * MiB, 2), rand(18 * MiB, 3), rand(3 * MiB, 4)
    s1 = backup(repo, {"a.sql": a})
    s2 = backup(repo, {"b.sql": b, "c.sql": c})
    s3 = backup(repo, {"c.sql": c})
    s4 = backup(repo, {"a.sql": a, "d.sql": d})
    return root, {s1: {"a.sql": a}, s3: {"c.sql": c}, s4: {"a.sql": a, "d.sql": d}}, s2


def test_prune_removes_unused_then_repacks_partly_used(shared_repo):
    root, keep, s2 = shared_repo
    forget(root, s2)
    unused, partly, full = classify_packs(root, list(keep))
    assert unused and partly, "the fixture must leave unused and partly used packs"

    # unlimited unused space tolerated: only packs without a used blob go
    before = data_size(root)
    lines: list[str] = []
    res = run_prune(open_repo(root), max_unused="unlimited", progress=lines.append)
    assert set(res.removed_packs) == unused and res.repacked_packs == [] and res.packs_written == 0
    on_disk = set(packs_on_disk(root))
    assert not unused & on_disk and partly | full <= on_disk
    assert res.bytes_freed == before - data_size(root) > 0
    assert res.snapshots == 3 and res.packs_partly_used == len(partly) and res.packs_unused == len(unused)
    text = "\n".join(lines)
    for wording in ("total prune:", "remaining:", "unused size after prune:", "this removes:", "to delete:"):
        assert wording in text
    check(root)
    assert_restores_with_restic(root, keep)
    assert_index_matches_storage(root)

    # 0 unused tolerated: the partly used pack is repacked into a new one
    before = data_size(root)
    res = run_prune(open_repo(root), max_unused="0")
    assert set(res.repacked_packs) == partly and res.removed_packs == [] and res.packs_written >= 1
    assert res.blobs_repackrm > 0 and res.size_repackrm > 0
    on_disk = set(packs_on_disk(root))
    assert not partly & on_disk and set(res.new_packs) <= on_disk and full <= on_disk
    assert res.bytes_freed == before - data_size(root) > 0
    assert res.pack_bytes_after == data_size(root) and res.packs_after == len(on_disk)
    out = check(root)
    assert "no errors were found" in out
    assert_restores_with_restic(root, keep)
    assert_index_matches_storage(root)

    # nothing left to do: a third prune changes no file
    files = file_hashes(root)
    res = run_prune(open_repo(root))
    assert (res.packs_remove, res.packs_repack, res.packs_unreferenced, res.bytes_freed) == (0, 0, 0, 0)
    assert res.blobs_unused == 0 and res.index_files_written == 0
    assert file_hashes(root) == files
    # and restic agrees
    out = restic(root, "prune", "--dry-run").stdout.decode()
    assert re.search(r"total prune:\s+0 blobs", out), out


def test_default_max_unused_keeps_packs_within_the_limit(tmp_path):
    """5%: a pack whose unused share is below the limit stays; one above it is repacked (restic's rule)."""
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    big, tail, small_tail = rand(30 * MiB, 10), rand(2 * MiB, 11), rand(1 * MiB, 12)
    s1 = backup(repo, {"big.sql": big})
    s2 = backup(repo, {"big.sql": big, "tail.sql": tail, "other.sql": small_tail})
    s3 = backup(repo, {"big.sql": big, "other.sql": small_tail})
    forget(root, s2)  # tail.sql (2 MiB of the 3 MiB pack s2 wrote) is unused: 2 MiB > 5% of 31 MiB used
    res = run_prune(open_repo(root))
    assert res.packs_repack == 1 and res.size_repackrm >= 2 * MiB
    check(root)
    assert_restores_with_restic(root, {s1: {"big.sql": big}, s3: {"big.sql": big, "other.sql": small_tail}})

    # 1 MiB unused of ~31 MiB used is within 5%: kept
    s4 = backup(repo, {"x.sql": rand(1 * MiB, 13)})
    forget(root, s4)
    res = run_prune(open_repo(root), dry_run=True)
    assert res.packs_repack == 0


# -- 2. repositories restic made ---------------------------------------------------------------

def test_prune_restic_made_repository(tmp_path):
    root = str(tmp_path / "repo")
    restic(root, "init")
    src = tmp_path / "src"
    src.mkdir()
    f1, f2, f3, f4 = rand(6 * MiB, 20), rand(6 * MiB, 21), rand(6 * MiB, 22), rand(6 * MiB, 23)
    ids = []

    def snap(files: dict[str, bytes]) -> None:
        for p in src.iterdir():
            p.unlink()
        for name, data in files.items():
            (src / name).write_bytes(data)
        out = restic(root, "backup", "--json", str(src)).stdout.decode().splitlines()
        ids.append(next(m for m in map(lambda s: re.search(r'"snapshot_id":"(\w+)"', s), out) if m).group(1))

    snap({"f1": f1})
    snap({"f1": f1, "f2": f2, "f4": f4})  # f2 and f4 share a pack
    snap({"f4": f4, "f3": f3})
    restic(root, "forget", ids[1])
    keep = {ids[0]: {"f1": f1}, ids[2]: {"f4": f4, "f3": f3}}

    res = run_prune(open_repo(root), max_unused="0")
    assert res.packs_repack >= 1 and res.blobs_repackrm > 0
    check(root)
    for sid, files in keep.items():
        out = tmp_path / f"out-{sid[:8]}"
        restic(root, "restore", sid, "--target", str(out))
        restored = {p.name: p.read_bytes() for p in (out / src.relative_to("/")).iterdir()}
        assert restored == files
    # restic's own prune finds nothing more to do
    out = restic(root, "prune").stdout.decode()
    assert re.search(r"total prune:\s+0 blobs", out) and re.search(r"to repack:\s+0 blobs", out), out
    check(root)


def test_prune_restic_v1_repository(tmp_path):
    root = str(tmp_path / "repo")
    restic(root, "init", "--repository-version", "1")
    one, two = rand(3 * MiB, 30), rand(3 * MiB, 31)
    restic(root, "backup", "--stdin", "--stdin-filename", "one.sql", input=one)
    restic(root, "backup", "--stdin", "--stdin-filename", "two.sql", input=one + two)
    first = restic(root, "snapshots", "--json").stdout.decode()
    first_id = re.findall(r'"id":"(\w+)"', first)
    restic(root, "forget", first_id[0])
    res = run_prune(open_repo(root), max_unused="0")
    assert res.packs_remove + res.packs_repack >= 1
    check(root)
    assert restic(root, "dump", "latest", "/two.sql").stdout == one + two
    with pytest.raises(BadInput):
        run_prune(open_repo(root), repack_uncompressed=True)


# -- 3. orphan packs ---------------------------------------------------------------------------

def test_unreferenced_packs_are_removed(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    data = rand(4 * MiB, 40)
    sid = backup(repo, {"a.sql": data})
    packs = packs_on_disk(root)
    name = next(n for n, s in packs.items() if s > MiB)
    src = os.path.join(root, Handle(FileType.DATA, name).path())
    orphans = []
    # a copy under another name, and the first half of a pack (as a write cut short would leave it)
    with open(src, "rb") as f:
        whole = f.read()
    for content in (whole, whole[: 2 * MiB]):
        orphan = os.urandom(32).hex()
        LocalBackend(root).save(Handle(FileType.DATA, orphan), content)
        orphans.append(orphan)
    res = run_prune(open_repo(root))
    assert sorted(res.unreferenced_packs) == sorted(orphans)
    assert res.size_unreferenced == res.bytes_freed == os.path.getsize(src) + 2 * MiB
    assert set(packs_on_disk(root)) == set(packs)
    check(root)
    assert_restores_with_restic(root, {sid: {"a.sql": data}})


def test_duplicate_blobs(tmp_path):
    """Blobs stored twice (a backup that did not see the index): one copy stays, the others go."""
    root = str(tmp_path / "repo")
    Repository.init(LocalBackend(root), REPO_PASSWORD)
    a, b = rand(5 * MiB, 70), rand(2 * MiB, 71)
    s1 = backup(open_repo(root), {"a.sql": a})
    repo = open_repo(root)  # no load_index: stores A again
    with Archiver(repo) as arch:
        arch.add_stream("a.sql", io.BytesIO(a))
        arch.add_stream("b.sql", io.BytesIO(b))
        s2 = arch.commit(hostname="host-0", paths=["/a.sql", "/b.sql"]).snapshot.id
    res = run_prune(open_repo(root), max_unused="0")
    assert res.blobs_duplicate >= 2 and res.size_duplicate >= 5 * MiB  # all of A
    assert res.bytes_freed >= 5 * MiB
    check(root)
    assert_restores_with_restic(root, {s1: {"a.sql": a}, s2: {"a.sql": a, "b.sql": b}})
    assert re.search(r"total prune:\s+0 blobs", restic(root, "prune", "--dry-run").stdout.decode())


def test_missing_packs_and_incomplete_index(small_repo, tmp_path):
    pristine, keep = small_repo
    repo = open_repo(pristine)
    with ThreadPool() as pool:
        state = load_index_state(repo, pool)
    unused, partly, full = classify_packs(pristine, list(keep))
    (lost_unused,) = unused

    # a pack nobody needs is gone already: it is dropped from the index (restic's "ignorePacks")
    root = str(tmp_path / "unneeded")
    shutil.copytree(pristine, root)
    LocalBackend(root).remove(Handle(FileType.DATA, lost_unused))
    res = run_prune(open_repo(root))
    assert res.packs_missing == 1
    assert_index_matches_storage(root)
    check(root)

    # a needed pack is gone: prune refuses and changes nothing
    root = str(tmp_path / "needed")
    shutil.copytree(pristine, root)
    sizes = packs_on_disk(root)
    data_pack, tree_pack = max(full, key=sizes.get), min(full, key=sizes.get)
    LocalBackend(root).remove(Handle(FileType.DATA, data_pack))
    before = file_hashes(root)
    with pytest.raises(IntegrityError, match="needed pack files which are missing"):
        run_prune(open_repo(root))
    assert file_hashes(root) == before
    # (a lost tree pack already stops the walk over the snapshots)
    LocalBackend(root).remove(Handle(FileType.DATA, tree_pack))
    before = file_hashes(root)
    with pytest.raises(RepositoryError, match="not found"):
        run_prune(open_repo(root))
    assert file_hashes(root) == before

    # an index file is lost, so used blobs are in no index: nothing is deleted, not even unreferenced packs
    root = str(tmp_path / "noindex")
    shutil.copytree(pristine, root)
    LocalBackend(root).remove(Handle(FileType.INDEX, state.files[0]))
    before = file_hashes(root)
    with pytest.raises(IntegrityError, match="in no index"):
        run_prune(open_repo(root))
    assert file_hashes(root) == before


def test_upgraded_v1_repository_gets_its_trees_compressed(tmp_path):
    """After `restic migrate upgrade_repo_v2` tree packs are uncompressed: restic's prune always repacks them."""
    root = str(tmp_path / "repo")
    restic(root, "init", "--repository-version", "1")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.sql").write_bytes(rand(1 * MiB, 80))
    restic(root, "backup", str(src))
    restic(root, "migrate", "upgrade_repo_v2")
    res = run_prune(open_repo(root))
    assert res.packs_repack >= 1
    check(root)
    repo = open_repo(root)
    with ThreadPool() as pool:
        state = load_index_state(repo, pool)
    trees = [b for blobs in state.packs.values() for b in blobs if b.type == "tree"]
    assert trees and all(b.uncompressed_length for b in trees)
    assert run_prune(open_repo(root)).packs_repack == 0
    out = restic(root, "prune", "--dry-run").stdout.decode()
    assert re.search(r"to repack:\s+0 blobs", out), out
    assert restic(root, "dump", "latest", str(src / "sub" / "x.sql")).stdout == (src / "sub" / "x.sql").read_bytes()


# -- 4. crash safety ---------------------------------------------------------------------------

class CrashingBackend(Backend):
    """A real LocalBackend whose writes (save/remove) stop working at a chosen one.

    ``mode="crash"``: that write and every call after it fail, as if the process had died there.
    ``mode="once"``: only that write fails (a storage error the run sees and must handle).
    """

    def __init__(self, inner: LocalBackend, fail_at: int | None, mode: str = "crash"):
        self.inner = inner
        self.location = inner.location
        self.connections = inner.connections
        self.fail_at = fail_at
        self.mode = mode
        self.writes: list[str] = []
        self.dead = False
        self._lock = threading.Lock()

    def _gate(self, what: str | None) -> None:
        with self._lock:
            if self.dead:
                raise BackendError(f"{self.location}: process is gone")
            if what is None:
                return
            n = len(self.writes)
            self.writes.append(what)
            if self.fail_at is not None and n == self.fail_at:
                if self.mode == "crash":
                    self.dead = True
                raise BackendError(f"{self.location}: injected failure at write {n} ({what})")

    def save(self, h: Handle, data: bytes) -> None:
        self._gate(f"save {h.type.value}")
        self.inner.save(h, data)

    def remove(self, h: Handle) -> None:
        self._gate(f"remove {h.type.value}")
        self.inner.remove(h)

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        self._gate(None)
        return self.inner.load(h, offset, length)

    def stat(self, h: Handle) -> int:
        self._gate(None)
        return self.inner.stat(h)

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        self._gate(None)
        return self.inner.list(t)


@pytest.fixture
def small_repo(tmp_path) -> tuple[str, dict[str, dict[str, bytes]]]:
    """s1 = A, s2 = B + C in one pack, s3 = C; s2 forgotten: one pack partly used, one tree pack unused."""
    root = str(tmp_path / "pristine")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    a, b, c = rand(3 * MiB, 50), rand(3 * MiB, 51), rand(3 * MiB, 52)
    s1 = backup(repo, {"a.sql": a})
    s2 = backup(repo, {"b.sql": b, "c.sql": c})
    s3 = backup(repo, {"c.sql": c})
    forget(root, s2)
    return root, {s1: {"a.sql": a}, s3: {"c.sql": c}}


@pytest.mark.parametrize("mode,index_file_blobs", [("crash", None), ("once", None), ("crash", 2)])
def test_crash_at_every_write_leaves_a_valid_repository(small_repo, tmp_path, monkeypatch, mode, index_file_blobs):
    """``mode``: see CrashingBackend. ``index_file_blobs``: a small limit, so that the new index spans several
    files and a crash can fall between them (only the last one written supersedes the old index)."""
    pristine, keep = small_repo
    if index_file_blobs:
        monkeypatch.setattr(index_module, "MAX_BLOBS_PER_INDEX_FILE", index_file_blobs)
    probe = str(tmp_path / "probe")
    shutil.copytree(pristine, probe)
    counting = CrashingBackend(LocalBackend(probe), None)
    res = run_prune(open_repo(probe, counting), max_unused="0")
    assert res.packs_repack == 1 and res.packs_remove == 1
    writes = counting.writes
    print(f"\nprune makes {len(writes)} writes: {writes}")
    assert writes[0] == "save locks" and writes[-1] == "remove locks"
    # the order that keeps the repository valid: new packs, then the index, then old index, then old packs
    kinds = [w for w in writes if "locks" not in w]
    first = {k: kinds.index(k) for k in set(kinds)}
    last = {k: len(kinds) - 1 - kinds[::-1].index(k) for k in set(kinds)}
    assert last["save data"] < first["save index"] and last["save index"] < first["remove index"]
    assert last["remove index"] < first["remove data"]

    started = time.monotonic()
    for k in range(len(writes)):
        root = str(tmp_path / f"{mode}-{k}")
        shutil.copytree(pristine, root)
        backend = CrashingBackend(LocalBackend(root), k, mode)
        try:
            res = run_prune(open_repo(root, backend), max_unused="0")
        except (RepositoryError, BackendError):
            res = None
        if res is not None:
            # Only a failed lock removal (logged) or pack removal (a warning, as in restic) lets prune
            # finish: the repository is complete, an old pack is merely left over.
            assert writes[k] in ("remove locks", "remove data"), (mode, k, writes[k])
            assert (res.packs_not_removed > 0) == (writes[k] == "remove data")
        # a dead process leaves its lock behind: `restic unlock` would remove it
        for name, _ in LocalBackend(root).list(FileType.LOCK):
            LocalBackend(root).remove(Handle(FileType.LOCK, name))
        out = check(root)
        assert "no errors were found" in out, (mode, k, writes[k], out)
        assert_restores_with_reader(root, keep)
        # a second prune completes the work and leaves nothing behind
        run_prune(open_repo(root), max_unused="0")
        assert_index_matches_storage(root)
        assert_restores_with_reader(root, keep)
        if k in (0, len(writes) // 2, len(writes) - 2):
            check(root)
        shutil.rmtree(root)
    print(f"crash matrix ({mode}): {len(writes)} runs in {time.monotonic() - started:.1f} s")
    assert_restores_with_restic(pristine, keep)


# -- 5. dry run --------------------------------------------------------------------------------

def test_dry_run_changes_nothing(small_repo, tmp_path):
    pristine, _ = small_repo
    before = file_hashes(pristine)
    lines: list[str] = []
    dry = run_prune(open_repo(pristine), dry_run=True, max_unused="0", progress=lines.append)
    assert file_hashes(pristine) == before
    assert dry.dry_run and dry.packs_repack == 1 and dry.packs_remove == 1 and dry.bytes_freed > 0
    assert any(line.startswith("total prune:") for line in lines)
    # the real run does what the dry run said, and frees what it estimated (new pack headers aside)
    size = data_size(pristine)
    real = run_prune(open_repo(pristine), max_unused="0")
    assert (real.removed_packs, real.repacked_packs) == (dry.removed_packs, dry.repacked_packs)
    assert real.bytes_freed == size - data_size(pristine)
    assert abs(real.bytes_freed - dry.bytes_freed) < 1024


# -- 6. exclusive lock -------------------------------------------------------------------------

def test_prune_needs_an_exclusive_lock(small_repo):
    root, _ = small_repo
    before = file_hashes(root)
    holder = open_repo(root)
    with RepositoryLock(holder):  # a backup's shared lock
        with pytest.raises(LockedError, match=rf"shared lock \w+ held by PID {os.getpid()}"):
            run_prune(open_repo(root))
        # a dry run only needs a shared lock
        assert run_prune(open_repo(root), dry_run=True).packs_remove == 1
    lock_files = [n for n in before if n.startswith("locks/")]
    assert not lock_files
    assert {k: v for k, v in file_hashes(root).items()} == before


# -- 7. scale: 1,000 snapshots ------------------------------------------------------------------

def test_thousand_snapshots(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    a, b = rand(2 * MiB, 60), rand(2 * MiB, 61)
    base = backup(repo, {"a.sql": a})
    gone = backup(repo, {"b.sql": b})
    tree = repo.find_snapshot(base).tree
    t0 = time.monotonic()
    ids = []
    for i in range(999):
        snap = Snapshot(time=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.{i:09d}Z", tree=tree, paths=["/a.sql"],
                        hostname=f"host-{i}")
        repo.save_snapshot(snap)
        ids.append(snap.id)
    made = time.monotonic() - t0
    forget(root, gone)
    for sid in ids[10:]:
        forget(root, sid)
    t0 = time.monotonic()
    res = run_prune(open_repo(root))
    took = time.monotonic() - t0
    print(f"\n999 snapshot files written in {made:.1f} s; prune of 11 snapshots (989 forgotten) in {took:.2f} s")
    assert res.snapshots == 11 and res.packs_remove == 2  # b's data pack and its tree pack
    # all 1,000 kept: prune still loads each tree once
    for i in range(989):
        repo.save_snapshot(Snapshot(time=f"2024-02-01T00:00:00.{i:09d}Z", tree=tree, paths=["/a.sql"]))
    t0 = time.monotonic()
    res = run_prune(open_repo(root))
    print(f"prune with 1,000 snapshots sharing one tree: {time.monotonic() - t0:.2f} s")
    assert res.snapshots == 1000 and res.packs_remove == 0 and res.bytes_freed == 0
    check(root)
    assert restic(root, "dump", ids[3], "/a.sql").stdout == a


# -- options -----------------------------------------------------------------------------------

def test_max_unused_and_size_parsing():
    assert max_unused_limit("5%")(95) == 5
    assert max_unused_limit("0")(10**9) == 0
    assert max_unused_limit("unlimited")(1) == float("inf")
    assert max_unused_limit("100M")(1) == 100 * MiB
    assert parse_size("2g") == 2 << 30 and parse_size("17") == 17
    for bad in ("", "100%", "-1%", "abc", "5 %x"):
        with pytest.raises(BadInput):
            max_unused_limit(bad)
