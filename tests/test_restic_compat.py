"""Repositories restic 0.14 reads, read by us too: the early index format (a bare list of packs), the s3legacy
layout (on S3 and on disk), and `stats` as restic's — hard links once, a damaged repository an error, not a figure.
Every repository here is written by restic itself (then, for the old index format, rewritten as early restic
wrote it), and restic is the judge of what we add."""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import pytest

from backends.base import DEFAULT_LAYOUT, S3_LEGACY_LAYOUT, FileType, Handle, detect_layout
from backends.local import LocalBackend
from stash_runner.restic.index import Index
from stash_runner.restic.repository import Repository, sha256_hex

from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .test_postgres import backup, restore
from .test_s3 import keys, s3_objects

NS = ["-n", "demo"]


def cli(command: str, objects: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return runner(command, "--objects", objects, *NS, "--repository", "repo", *extra, check=check)


def restic_stdin_backup(repo: str, data: bytes, env: dict | None = None) -> None:
    restic(repo, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "host-0", input=data, env=env)


def snapshot_ids(repo: str, env: dict | None = None) -> list[str]:
    return sorted(s["id"] for s in json.loads(restic(repo, "snapshots", "--json", env=env).stdout))


def our_snapshot_ids(objects: str) -> list[str]:
    return sorted(s["id"] for s in json.loads(cli("snapshots", objects, "--json", check=True).stdout))


def stats_as_restic(repo: str, env: dict | None = None) -> dict:
    """restic 0.14's figures for the modes our stats computes, named as ours."""
    size = json.loads(restic(repo, "stats", "--json", env=env).stdout)
    raw = json.loads(restic(repo, "stats", "--mode", "raw-data", "--json", env=env).stdout)
    return {"snapshots": size["snapshots_count"], "restore_size": size["total_size"],
            "restore_files": size["total_file_count"], "raw_data": raw["total_size"],
            "referenced_blobs": raw["total_blob_count"]}


def our_stats(objects: str) -> dict:
    st = json.loads(cli("stats", objects, "--json", check=True).stdout)
    return {k: st[k] for k in ("snapshots", "restore_size", "restore_files", "raw_data", "referenced_blobs")}


# -- 1. restic's early index format ------------------------------------------------------------------------------


def rewrite_index_in_old_format(repo_dir: str) -> list[str]:
    """Each index file again as restic before 0.8 wrote it: a bare JSON list of packs (no "supersedes"), plain JSON
    (format 1), encrypted with the master key and stored under the SHA-256 of the new bytes. Returns the new names."""
    repo = Repository.open(LocalBackend(repo_dir), REPO_PASSWORD)
    assert repo.config.version == 1  # the old index format predates compression
    new_names = []
    for name, _ in repo.list_files(FileType.INDEX):
        obj = repo.load_unpacked(FileType.INDEX, name)
        assert not obj.get("supersedes")
        data = repo.key.encrypt(json.dumps(obj["packs"]).encode())
        new_names.append(sha256_hex(data))
        repo.backend.save(Handle(FileType.INDEX, new_names[-1]), data)
        repo.backend.remove(Handle(FileType.INDEX, name))
    return new_names


def test_old_index_format_is_read_as_restic_reads_it(source_pg, fresh_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    restic(repo_dir, "init", "--repository-version", "1")
    dump = source_pg.pg_dumpall()
    restic_stdin_backup(repo_dir, dump)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "small").write_bytes(b"small\n")
    (src / "big").write_bytes(os.urandom(3 << 20))
    restic(repo_dir, "backup", str(src), "--host", "files")
    old = rewrite_index_in_old_format(repo_dir)
    assert len(old) == 2

    # The judge: restic 0.14 reads it, calling the format old but not an error.
    r = restic(repo_dir, "check", "--read-data")
    assert r.stdout.decode().count("has old format") == 2, r.stdout
    for name in old:  # really in the old format: a JSON list
        assert restic(repo_dir, "cat", "index", name).stdout.lstrip().startswith(b"[")

    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    assert our_snapshot_ids(objects) == snapshot_ids(repo_dir)
    assert cli("dump", objects, "latest", "/dumpfile.sql", "--host", "host-0", check=True).stdout == dump
    files = json.loads(restic(repo_dir, "snapshots", "--json", "--host", "files").stdout)[0]["id"]
    assert cli("dump", objects, files, f"{src}/big", check=True).stdout == (src / "big").read_bytes()
    r = cli("check", objects, "--read-data", check=True)
    assert b"no errors were found" in r.stdout
    assert r.stdout.decode().count("has the old format") == 2, r.stdout
    assert our_stats(objects) == stats_as_restic(repo_dir)
    target = fresh_pg()
    restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir))
    assert target.contents() == source_pg.contents()

    # Our next backup adds an index file in the current format next to the old ones; restic reads both.
    backup(objects_yaml(str(tmp_path / "b.yaml"), cluster=source_pg, repo_dir=repo_dir))
    restic(repo_dir, "check", "--read-data")
    assert len(snapshot_ids(repo_dir)) == 3
    assert normalize_dump(restic(repo_dir, "dump", "latest", "/dumpfile.sql", "--host", "host-0").stdout) == \
        normalize_dump(dump)

    # forget + prune read the old index files too, and replace them with one in the current format
    cli("forget", objects, "--host", "host-0", "--keep-last", "1", "--prune", "--max-unused", "0", check=True)
    restic(repo_dir, "check", "--read-data")
    assert len(snapshot_ids(repo_dir)) == 2
    assert b"has old format" not in restic(repo_dir, "check").stdout


def test_old_index_entries_have_no_compressed_length():
    # restic's decodeOldIndex ignores uncompressed_length: the format predates compression.
    blob = {"id": "ab" * 32, "type": "data", "offset": 0, "length": 40, "uncompressed_length": 99}
    idx = Index()
    idx.add_index_json([{"id": "cd" * 32, "blobs": [blob]}])
    pack, b = idx.lookup(bytes.fromhex("ab" * 32))
    assert pack == bytes.fromhex("cd" * 32) and (b.length, b.uncompressed_length) == (40, 0)


# -- 2. restic's s3legacy layout ---------------------------------------------------------------------------------


def test_layout_detection_follows_restic(tmp_path):
    key = "0" * 64

    def backend_with(*dirs: str) -> LocalBackend:
        root = tmp_path / "-".join(dirs or ("none",))
        for d in dirs:
            (root / d).mkdir(parents=True)
            (root / d / key).write_text("{}")
        return LocalBackend(str(root))

    assert detect_layout(backend_with("key")) is S3_LEGACY_LAYOUT
    assert detect_layout(backend_with("keys")) is DEFAULT_LAYOUT
    assert detect_layout(backend_with("keys", "key")) is DEFAULT_LAYOUT  # restic: ambiguous -> the default
    assert detect_layout(backend_with()) is DEFAULT_LAYOUT
    assert S3_LEGACY_LAYOUT.path(Handle(FileType.DATA, key)) == f"data/{key}"
    assert S3_LEGACY_LAYOUT.path(Handle(FileType.SNAPSHOT, key)) == f"snapshot/{key}"


def _only_legacy_names(names: list[str]) -> None:
    """Nothing of the default layout appeared: no keys/, snapshots/, locks/, and packs flat in data/."""
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"config", "key", "snapshot", "index", "lock", "data"}, tops
    assert all(n.count("/") == 1 for n in names if n.startswith("data/")), names


def test_s3legacy_layout_on_s3(moto_server, source_pg, fresh_pg, tmp_path):
    env = moto_server.env
    boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="legacy")
    repo = f"s3:{moto_server.url}/legacy/db"
    restic(repo, "-o", "s3.layout=s3legacy", "init", env=env)
    dump = source_pg.pg_dumpall()
    restic_stdin_backup(repo, dump, env)
    before = [k[len("db/"):] for k in keys(moto_server, "legacy")]
    assert any(k.startswith("key/") for k in before)
    _only_legacy_names(before)

    objects = s3_objects(tmp_path / "o.yaml", moto_server, "legacy", "db")
    assert our_snapshot_ids(objects) == snapshot_ids(repo, env)
    assert cli("dump", objects, "latest", "/dumpfile.sql", check=True).stdout == dump
    assert our_stats(objects) == stats_as_restic(repo, env)
    target = fresh_pg()
    restore(s3_objects(tmp_path / "t.yaml", moto_server, "legacy", "db", cluster=target))
    assert target.contents() == source_pg.contents()

    # We write in the layout we found, and restic (detecting it again) accepts what we added.
    backup(s3_objects(tmp_path / "b.yaml", moto_server, "legacy", "db", cluster=source_pg))
    after = [k[len("db/"):] for k in keys(moto_server, "legacy")]
    _only_legacy_names(after)
    assert len(after) > len(before)
    restic(repo, "check", "--read-data", env=env)
    assert len(snapshot_ids(repo, env)) == 2
    ours = restic(repo, "dump", "latest", "/dumpfile.sql", env=env).stdout
    assert normalize_dump(ours) == normalize_dump(source_pg.pg_dumpall())
    assert b"no errors were found" in cli("check", objects, "--read-data", check=True).stdout


def test_s3legacy_layout_on_disk(source_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    restic(repo_dir, "-o", "local.layout=s3legacy", "init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(os.urandom(1 << 20))
    restic(repo_dir, "backup", str(src))
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    assert our_snapshot_ids(objects) == snapshot_ids(repo_dir)
    assert cli("dump", objects, "latest", f"{src}/file", check=True).stdout == (src / "file").read_bytes()
    backup(objects)

    names = [os.path.relpath(os.path.join(d, f), repo_dir) for d, _, fs in os.walk(repo_dir) for f in fs]
    _only_legacy_names(names)
    assert not os.path.exists(os.path.join(repo_dir, "keys"))
    restic(repo_dir, "check", "--read-data")
    assert len(snapshot_ids(repo_dir)) == 2
    assert our_stats(objects) == stats_as_restic(repo_dir)


# -- 3. stats: hard links once -----------------------------------------------------------------------------------


def test_stats_counts_hard_links_once_as_restic(tmp_path):
    repo_dir = str(tmp_path / "repo")
    restic(repo_dir, "init")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "other").mkdir()
    content = os.urandom(700_000)
    (src / "a").write_bytes(content)
    os.link(src / "a", src / "sub" / "b")  # three names, one inode
    os.link(src / "a", src / "other" / "c")
    (src / "copy").write_bytes(content)  # same bytes, its own inode: counted again
    (src / "pair").write_bytes(b"x" * 5000)
    os.link(src / "pair", src / "pair2")
    (src / "empty").write_bytes(b"")
    os.symlink("a", src / "link")
    restic(repo_dir, "backup", str(src))
    (src / "later").write_bytes(b"later\n")  # a second snapshot: each one counts its hard links once
    restic(repo_dir, "backup", str(src))
    restic_stdin_backup(repo_dir, b"a dump\n")

    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    theirs = stats_as_restic(repo_dir)
    assert our_stats(objects) == theirs
    # Not merely equal to a wrong figure: each of the two directory snapshots restores a, copy, pair and later.
    assert theirs["restore_size"] == 2 * (2 * 700_000 + 5000) + 6 + len(b"a dump\n")


# -- 4. stats on a damaged repository ----------------------------------------------------------------------------


@pytest.fixture
def restic_repo(tmp_path):
    """A repository restic wrote: one snapshot of a directory (a data pack and a tree pack)."""
    repo_dir = str(tmp_path / "repo")
    restic(repo_dir, "init")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(1 << 20))
    restic(repo_dir, "backup", str(src))
    repo = Repository.open(LocalBackend(repo_dir), REPO_PASSWORD)
    repo.load_index()
    snap = repo.list_snapshots()[0]
    tree_pack = repo.index.lookup(bytes.fromhex(snap.tree))[0].hex()
    data_packs = repo.index.packs() - {bytes.fromhex(tree_pack)}
    return repo_dir, tree_pack, [p.hex() for p in data_packs], snap.tree


def _fails_naming(objects: str, *what: str) -> str:
    for extra in ((), ("--json",)):
        r = cli("stats", objects, *extra)
        err = r.stderr.decode()
        assert r.returncode == 4, (r.returncode, err)
        assert r.stdout == b"", r.stdout  # never a figure
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in what), err
    return err


def test_stats_of_a_repository_without_a_data_pack_fails(restic_repo, tmp_path):
    repo_dir, _, data_packs, _ = restic_repo
    os.remove(os.path.join(repo_dir, "data", data_packs[0][:2], data_packs[0]))
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    _fails_naming(objects, f"pack {data_packs[0]} does not exist", "data blob")
    # restic 0.14's stats reads only the trees and the index, so it still prints figures here; check tells.
    assert json.loads(restic(repo_dir, "stats", "--json").stdout)["total_size"] == 1 << 20
    assert restic(repo_dir, "check", check=False).returncode != 0


def test_stats_of_a_repository_without_a_tree_pack_fails(restic_repo, tmp_path):
    repo_dir, tree_pack, _, tree = restic_repo
    os.remove(os.path.join(repo_dir, "data", tree_pack[:2], tree_pack))
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    _fails_naming(objects, tree_pack, f"tree {tree}", "not found")
    r = restic(repo_dir, "stats", "--json", check=False)
    assert r.returncode != 0 and tree_pack[:10] in r.stderr.decode()


def test_stats_of_a_repository_without_its_index_fails(restic_repo, tmp_path):
    repo_dir, _, _, tree = restic_repo
    for name in os.listdir(os.path.join(repo_dir, "index")):
        os.remove(os.path.join(repo_dir, "index", name))
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    _fails_naming(objects, f"tree {tree}", "in no index")
    r = restic(repo_dir, "stats", "--json", check=False)
    assert r.returncode != 0 and f"{tree} not found" in r.stderr.decode()
