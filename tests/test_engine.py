"""The repository engine against restic itself: what we write restic reads, and the reverse."""

from __future__ import annotations

import io
import json
import os
import random

import pytest

from backends.base import FileType, Handle
from backends.local import LocalBackend
from stash_runner.errors import IntegrityError, RepositoryNotFound, SnapshotNotFound, WrongPassword
from stash_runner.restic import crypto
from stash_runner.restic.archiver import Archiver
from stash_runner.restic.chunker_polynomial import is_irreducible, random_polynomial
from stash_runner.restic.reader import find_file, iter_content, walk_files
from stash_runner.restic.repository import Repository

from .helpers import REPO_PASSWORD, restic


def sample_bytes(n: int, seed: int = 1) -> bytes:
    """Compressible SQL-like text with random stretches, so both blob kinds occur."""
    rnd = random.Random(seed)
    parts, size = [], 0
    while size < n:
        if rnd.random() < 0.1:
            p = rnd.randbytes(rnd.randint(1000, 200_000))
        else:
            p = b"".join(b"%d\tname %d\t%s\n" % (i, rnd.randint(0, 10**6), b"x" * rnd.randint(0, 40))
                         for i in range(rnd.randint(100, 5000)))
        parts.append(p)
        size += len(p)
    return b"".join(parts)[:n]


def backup_bytes(repo: Repository, data: bytes, host: str = "host-0") -> str:
    repo.load_index()
    with Archiver(repo) as a:
        a.add_stream("dumpfile.sql", io.BytesIO(data))
        return a.commit(hostname=host, paths=["/dumpfile.sql"]).snapshot.id


def test_encrypt_decrypt_and_mac():
    k = crypto.Key.random()
    blob = k.encrypt(b"hello")
    assert len(blob) == 5 + crypto.OVERHEAD
    assert k.decrypt(blob) == b"hello"
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(IntegrityError):
        k.decrypt(bytes(tampered))


def test_chunker_polynomial_is_irreducible_of_degree_53():
    p = random_polynomial()
    assert p.bit_length() - 1 == 53 and is_irreducible(p)
    assert is_irreducible(0x3DA3358B4DC173)  # restic's test polynomial
    assert not is_irreducible((1 << 53) | 1)  # divisible by x + 1


def test_our_repository_passes_restic_check_and_dump(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    data = sample_bytes(40 * 1024 * 1024)
    snap_id = backup_bytes(repo, data)
    restic(root, "check", "--read-data")
    assert restic(root, "dump", snap_id, "/dumpfile.sql").stdout == data
    snaps = json.loads(restic(root, "snapshots", "--json").stdout)
    assert [s["id"] for s in snaps] == [snap_id]
    assert snaps[0]["paths"] == ["/dumpfile.sql"] and snaps[0]["hostname"] == "host-0"


def test_empty_stream(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    backup_bytes(repo, b"")
    restic(root, "check", "--read-data")
    assert restic(root, "dump", "latest", "/dumpfile.sql").stdout == b""


def test_restic_v2_repository_roundtrip(tmp_path):
    """We write into a repository restic made, and read what restic wrote there."""
    root = str(tmp_path / "repo")
    restic(root, "init")
    theirs = sample_bytes(12 * 1024 * 1024, seed=2)
    restic(root, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "restic-host", input=theirs)
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    assert repo.config.version == 2
    ours = sample_bytes(9 * 1024 * 1024, seed=3)
    backup_bytes(repo, ours)
    restic(root, "check", "--read-data")
    assert restic(root, "dump", "--host", "host-0", "latest", "/dumpfile.sql").stdout == ours
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    repo.load_index()
    snap = repo.find_snapshot("latest", hostname="restic-host", path="/dumpfile.sql")
    _, node = find_file(repo, snap, "/dumpfile.sql")
    assert b"".join(iter_content(repo, node)) == theirs


def test_restic_v1_repository_stays_v1(tmp_path):
    root = str(tmp_path / "repo")
    restic(root, "init", "--repository-version", "1")
    theirs = sample_bytes(3 * 1024 * 1024, seed=4)
    restic(root, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", input=theirs)
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    assert repo.config.version == 1 and not repo.compressed
    ours = sample_bytes(5 * 1024 * 1024, seed=5)
    backup_bytes(repo, ours)
    restic(root, "check", "--read-data")
    assert restic(root, "dump", "latest", "/dumpfile.sql").stdout == ours
    # no compressed blob and no compressed file: restic < 0.14 can still read it
    for name, _ in LocalBackend(root).list(FileType.INDEX):
        plain = repo.key.decrypt(LocalBackend(root).load(Handle(FileType.INDEX, name)))
        assert plain[:1] == b"{"
        assert b"uncompressed_length" not in plain
    cfg = json.loads(restic(root, "cat", "config").stdout)
    assert cfg["version"] == 1


def test_dedup_of_unchanged_stream(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    data = sample_bytes(30 * 1024 * 1024, seed=6)
    backup_bytes(repo, data)
    before = dir_size(root)
    backup_bytes(repo, data)
    added = dir_size(root) - before  # a tree, an index and a snapshot file: no data
    assert added < 0.01 * before, (added, before)
    # a change in the middle re-stores only the chunks around it (chunks are ~1 MiB)
    backup_bytes(repo, data[: 15 << 20] + b"changed" + data[15 << 20 :])
    assert dir_size(root) - before - added < 3 * 1024 * 1024
    restic(root, "check", "--read-data")


def test_directory_snapshot(tmp_path):
    src = tmp_path / "src"
    (src / "idx" / "sub").mkdir(parents=True)
    (src / "a.json").write_bytes(sample_bytes(2_000_000, seed=7))
    (src / "idx" / "b.mapping").write_bytes(b'{"mappings": {}}')
    (src / "idx" / "sub" / "empty").write_bytes(b"")
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    with Archiver(repo) as a:
        a.add_directory(str(src), prefix="data")
        snap = a.commit(hostname="host-0", paths=["/data"]).snapshot
    restic(root, "check", "--read-data")
    out = tmp_path / "out"
    restic(root, "restore", snap.id, "--target", str(out))
    for rel in ("a.json", "idx/b.mapping", "idx/sub/empty"):
        assert (out / "data" / rel).read_bytes() == (src / rel).read_bytes()
    assert sorted(p for p, _ in walk_files(repo, snap)) == ["/data/a.json", "/data/idx/b.mapping",
                                                          "/data/idx/sub/empty"]


def test_wrong_password_and_missing_repository(tmp_path):
    root = str(tmp_path / "repo")
    Repository.init(LocalBackend(root), REPO_PASSWORD)
    with pytest.raises(WrongPassword):
        Repository.open(LocalBackend(root), "not the password")
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalBackend(str(tmp_path / "nothing")), REPO_PASSWORD)


def test_a_snapshot_is_found_by_stashs_name_for_it(tmp_path):
    """Stash names a snapshot "<repository>-<short id>" (kubectl get snapshots; a RestoreSession rule holds that
    name, and the operator passes it to restore Functions as --snapshot): it finds the snapshot as its ID does."""
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), REPO_PASSWORD)
    snap_id = backup_bytes(repo, b"x" * 1000)
    for name in (snap_id[:8], f"repo-{snap_id[:8]}", f"my-pg-repo-{snap_id[:8]}", f"r-{snap_id}"):
        assert repo.find_snapshot(name).id == snap_id, name
    for wrong in (f"repo-{'0' * 8}", "repo-", f"{snap_id[:8]}-x"):
        with pytest.raises(SnapshotNotFound):
            repo.find_snapshot(wrong)


def test_damaged_pack_is_detected_on_read(tmp_path):
    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root), REPO_PASSWORD)
    backup_bytes(repo, sample_bytes(3 * 1024 * 1024, seed=8))
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    repo.load_index()
    snap = repo.find_snapshot("latest")
    _, node = find_file(repo, snap, None)
    pack_id, blob = repo.index.lookup(bytes.fromhex(node.content[0]))
    path = os.path.join(root, Handle(FileType.DATA, pack_id.hex()).path())
    with open(path, "r+b") as f:
        f.seek(blob.offset + 40)
        byte = f.read(1)
        f.seek(blob.offset + 40)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="fails its MAC"):
        b"".join(iter_content(repo, node))


def dir_size(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
