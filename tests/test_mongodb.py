"""MongoDB end to end: the CLI (backup/restore and Stash's backup-mongo/restore-mongo) against real servers —
FerretDB (SCRAM, replica-set mode with an oplog) and mongo-java-server (every BSON type and index kind) — with
restic judging every repository, and the archives the real mongodump wrote restored by us."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import bson
import pytest
from bson import json_util
from bson.raw_bson import RawBSONDocument

from drivers.mongodb import archive

from .helpers import REPO_PASSWORD, database_objects, restic, runner
from .mongoservers import start_ferretdb

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "mongodump-archives")
NS = ("-n", "demo")
SECRET_PASSWORD = "pa:ss/w@rd%?&=#-Mongo-7"


def mongo_objects(path: str, server, *, repo_dir: str = "", name: str = "mg", parameters: dict | None = None,
                  password: str | None = None) -> str:
    """AppBinding (kubedb.com/mongodb) + its Secret + a local Repository, as `kubectl get -o yaml` writes them."""
    auth = None
    if server.username:
        auth = {"username": server.username, "password": password if password is not None else server.password}
    return database_objects(path, app_type="kubedb.com/mongodb", client_config={"url": server.url}, name=name,
                            auth=auth, parameters=parameters, repo_dir=repo_dir)


def backup(objects: str, *extra: str, check: bool = True):
    return runner("backup", "--objects", objects, *NS, "--appbinding", "mg", "--repository", "repo", *extra,
                  check=check)


def restore(objects: str, *extra: str, check: bool = True):
    return runner("restore", "--objects", objects, *NS, "--appbinding", "mg", "--repository", "repo", *extra,
                  check=check)


def raw_documents(client, ns: str) -> list[bytes]:
    """A collection's documents as raw BSON, by _id: what byte-exact means for a restore."""
    db, coll = ns.split(".", 1)
    c = client[db].get_collection(coll, codec_options=bson.CodecOptions(document_class=RawBSONDocument))
    return sorted((d.raw for d in c.find()), key=lambda raw: bson.encode({"k": bson.decode(raw)["_id"]}))


def index_specs(client, ns: str) -> list[dict]:
    db, coll = ns.split(".", 1)
    return sorted(({k: v for k, v in ix.items() if k not in ("v", "ns")} for ix in client[db][coll].list_indexes()),
                  key=lambda ix: ix["name"])


def drop_all(client) -> None:
    for name in client.list_database_names():
        if name not in ("admin", "local", "config"):
            client.drop_database(name)


def archive_of(repo_dir: str, host: str = "host-0") -> archive.ArchiveReader:
    data = restic(repo_dir, "dump", "--host", host, "latest", "/dump").stdout
    return archive.ArchiveReader(io.BytesIO(data))


def stash_snapshot(repo_dir: str, data: bytes, host: str = "host-0") -> None:
    """A snapshot as Stash's backup-mongo makes it: mongodump --archive | restic backup --stdin."""
    if not os.path.exists(os.path.join(repo_dir, "config")):
        restic(repo_dir, "init")
    restic(repo_dir, "backup", "--stdin", "--stdin-filename", "dump", "--host", host, input=data)


def secret_dir(tmp_path) -> str:
    d = tmp_path / "repo-secret"
    d.mkdir()
    (d / "RESTIC_PASSWORD").write_text(REPO_PASSWORD)
    return str(d)


# -- the real mongodump's archives, restored by us ------------------------------------------------

def _expected() -> dict:
    with open(os.path.join(FIXTURES, "expected.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("fixture", ["all-dbs.archive", "all-dbs.gz.archive", "app-only.archive"])
def test_stash_snapshot_of_a_mongodump_archive_restores_with_restore_mongo(fixture, mongo_java, tmp_path):
    """Stash's snapshot (the real mongodump's archive, stored by restic) restored by our restore-mongo with a
    Stash Function's args: every document and index of expected.json arrives in mongo-java-server."""
    client = mongo_java.client()
    drop_all(client)
    repo_dir = str(tmp_path / "repo")
    with open(os.path.join(FIXTURES, fixture), "rb") as f:
        stash_snapshot(repo_dir, f.read())
    objects = mongo_objects(str(tmp_path / "o.yaml"), mongo_java)
    runner("restore-mongo", "--objects", objects, "--provider=local", f"--path={repo_dir}",
           f"--secret-dir={secret_dir(tmp_path)}", "--namespace=demo", "--appbinding=mg",
           "--appbinding-namespace=demo", "--restoresession=", "--snapshot=", "--hostname=", "--source-hostname=",
           "--mongo-args=", "--max-concurrency=3", "--wait-timeout=30", "--authentication-database=admin",
           "--enable-cache=false", f"--output-dir={tmp_path / 'out'}", check=True)
    expected = _expected()
    if fixture == "app-only.archive":
        expected = {ns: v for ns, v in expected.items() if ns.startswith("app.")}
    for ns, want in expected.items():
        db, coll = ns.split(".", 1)
        got = list(client[db][coll].find())
        got_json = sorted(json_util.dumps(d, json_options=json_util.CANONICAL_JSON_OPTIONS) for d in got)
        canonical = json_util.CANONICAL_JSON_OPTIONS
        want_json = sorted(json_util.dumps(json_util.loads(json.dumps(d)), json_options=canonical)
                           for d in want["documents"])
        assert got_json == want_json, ns
        want_ix = sorted(({k: v for k, v in json_util.loads(json.dumps(ix)).items() if k != "v"}
                          for ix in want["indexes"]), key=lambda ix: ix["name"])
        assert index_specs(client, ns) == want_ix, ns
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert out["targetStatus"]["stats"][0]["phase"] == "Succeeded"


def test_our_archive_for_the_fixture_data_matches_mongodumps(mongo_java, tmp_path):
    """Restore the real mongodump's archive, back it up with us: our archive holds the same namespaces,
    metadata and documents as mongodump's (structurally, not byte for byte)."""
    client = mongo_java.client()
    drop_all(client)
    with open(os.path.join(FIXTURES, "all-dbs.archive"), "rb") as f:
        theirs_bytes = f.read()
    repo_dir = str(tmp_path / "repo")
    stash_snapshot(repo_dir, theirs_bytes)
    objects = mongo_objects(str(tmp_path / "o.yaml"), mongo_java, repo_dir=repo_dir)
    restore(objects)
    backup(objects, "--hostname", "ours")
    restic(repo_dir, "check", "--read-data")

    def content(reader: archive.ArchiveReader) -> dict:
        docs: dict[str, list[bytes]] = {}
        for event in reader.events():
            if isinstance(event, archive.Documents):
                docs.setdefault(event.namespace, []).extend(event.documents)
        meta = {}
        for m in reader.collections:
            parsed = m.parse()
            meta[m.namespace] = (parsed.type, parsed.options,
                                 sorted(json_util.dumps({k: v for k, v in ix.items() if k != "v"})
                                         for ix in parsed.indexes))
        return {"meta": meta, "docs": {ns: sorted(d) for ns, d in docs.items()}}

    theirs = content(archive.ArchiveReader(io.BytesIO(theirs_bytes)))
    ours_reader = archive_of(repo_dir, host="ours")
    assert ours_reader.header.tool_version.startswith("stash-runner")
    ours = content(ours_reader)
    assert ours["meta"] == theirs["meta"]
    assert ours["docs"] == theirs["docs"]


def test_the_oplog_archive_restores_to_its_point_in_time(ferretdb_rs, tmp_path):
    """rs-oplog.archive (mongodump --oplog while writes ran): the collections, then the oplog replayed entry
    by entry (FerretDB has no applyOps): app.live holds what was dumped plus what the oplog inserted."""
    client = ferretdb_rs.client()
    drop_all(client)
    with open(os.path.join(FIXTURES, "rs-oplog.archive"), "rb") as f:
        data = f.read()
    repo_dir = str(tmp_path / "repo")
    stash_snapshot(repo_dir, data)
    dumped, logged = set(), set()
    reader = archive.ArchiveReader(io.BytesIO(data))
    for event in reader.events():
        if isinstance(event, archive.Documents) and event.namespace == "app.live":
            dumped.update(bson.decode(d)["_id"] for d in event.documents)
        if isinstance(event, archive.Documents) and event.is_oplog:
            logged.update(bson.decode(d)["o"]["_id"] for d in event.documents)
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb_rs, repo_dir=repo_dir)
    r = restore(objects, "--mongo-args=--drop")
    assert "replayed 142 oplog entries" in r.stderr.decode()
    assert {d["_id"] for d in client.app.live.find()} == dumped | logged
    assert client.app.big.count_documents({}) == 3000


# -- our backups, restored by us ------------------------------------------------------------------

def _fill(client) -> None:
    client.shop.items.insert_many([{"_id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["a", str(i % 7)],
                                    "nested": {"k": i, "when": bson.datetime_ms.DatetimeMS(1_700_000_000_000 + i)}}
                                   for i in range(3000)])
    client.shop.items.create_index("name", unique=True)
    client.shop.items.create_index([("price", 1), ("name", -1)], name="price_name")
    client.shop.orders.insert_many([{"item": i % 50, "qty": i} for i in range(500)])
    client.shop.create_collection("empty")
    client.crm.people.insert_many([{"_id": f"p{i}", "bin": bson.Binary(os.urandom(64))} for i in range(200)])


def test_backup_mongo_and_restore_mongo_round_trip_byte_exact(ferretdb, tmp_path):
    """Stash's spellings on FerretDB with SCRAM: restic checks the repository, the snapshot is one file
    `dump` of host host-0, and the restore gives back every document byte for byte and every index."""
    client = ferretdb.client()
    drop_all(client)
    _fill(client)
    before = {ns: raw_documents(client, ns) for ns in ("shop.items", "shop.orders", "shop.empty", "crm.people")}
    indexes = index_specs(client, "shop.items")
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb)
    storage = mongo_objects(str(tmp_path / "s.yaml"), ferretdb, repo_dir=repo_dir, name="unused")
    r = runner("-v", "backup-mongo", "--objects", objects, "--objects", storage, "--provider=local", "--bucket=",
               f"--path={repo_dir}", "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo",
               "--scratch-dir=/tmp", "--enable-cache=true", "--max-connections=0", "--hostname=",
               "--mongo-args=", "--max-concurrency=3", "--wait-timeout=30", "--namespace=demo", "--appbinding=mg",
               "--appbinding-namespace=demo", "--backupsession=", "--retention-keep-last=0",
               "--retention-prune=false", "--retention-dry-run=false", f"--output-dir={tmp_path / 'out'}",
               "--license-apiservice=", "--authentication-database=admin", check=True)
    assert ferretdb.password not in r.stderr.decode()
    restic(repo_dir, "check", "--read-data")
    (snap,) = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert snap["hostname"] == "host-0" and snap["paths"] == ["/dump"]
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert out["targetStatus"]["stats"][0]["snapshots"][0]["path"] == "/dump"

    drop_all(client)
    runner("restore-mongo", "--objects", objects, "--provider=local", f"--path={repo_dir}",
           f"--secret-dir={secret_dir(tmp_path)}", "--namespace=demo", "--appbinding=mg", "--restoresession=",
           "--mongo-args=--drop", "--authentication-database=admin", check=True)
    assert {ns: raw_documents(client, ns) for ns in before} == before
    assert index_specs(client, "shop.items") == indexes


def test_every_bson_type_and_index_kind_round_trips(mongo_java, tmp_path):
    """mongo-java-server keeps what FerretDB refuses (Decimal128, MinKey/MaxKey, code, DBRef, nested arrays;
    TTL, sparse, partial and text indexes): backed up and restored byte for byte through our own archive."""
    client = mongo_java.client()
    drop_all(client)
    with open(os.path.join(FIXTURES, "all-dbs.archive"), "rb") as f:
        seed_repo = str(tmp_path / "seed")
        stash_snapshot(seed_repo, f.read())
    restore(mongo_objects(str(tmp_path / "seed.yaml"), mongo_java, repo_dir=seed_repo))
    namespaces = list(_expected())
    before = {ns: raw_documents(client, ns) for ns in namespaces}
    indexes = {ns: index_specs(client, ns) for ns in namespaces}
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), mongo_java, repo_dir=repo_dir)
    backup(objects, "--mongo-args=--gzip -j 2")
    restic(repo_dir, "check", "--read-data")
    assert restic(repo_dir, "dump", "latest", "/dump").stdout[:2] == b"\x1f\x8b"  # --gzip: the whole stream
    drop_all(client)
    restore(objects)
    assert {ns: raw_documents(client, ns) for ns in namespaces} == before
    assert {ns: index_specs(client, ns) for ns in namespaces} == indexes


def test_mongodump_options_select_what_is_dumped(ferretdb, tmp_path):
    client = ferretdb.client()
    drop_all(client)
    _fill(client)
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb, repo_dir=repo_dir)
    backup(objects, "--mongo-args", "--db=shop --excludeCollection=orders --excludeCollectionsWithPrefix=emp")
    assert [m.namespace for m in archive_of(repo_dir).collections] == ["shop.items"]
    backup(objects, "--mongo-args", '--db shop -c items --query {"price":{"$lt":5}}')
    reader = archive_of(repo_dir)
    docs = [bson.decode(d) for e in reader.events() if isinstance(e, archive.Documents) for d in e.documents]
    assert sorted(d["_id"] for d in docs) == [0, 1, 2, 3]
    # restore only one namespace, under another name
    restore(objects, "--mongo-args", "--nsInclude=shop.items --nsFrom=shop.* --nsTo=copy.*")
    assert client.copy.items.count_documents({}) == 4


def test_bad_mongo_args_fail_before_anything_is_written(ferretdb, tmp_path):
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb, repo_dir=repo_dir)
    for args, named in (("--uri=mongodb://u:secret-in-arg@h/", "'--uri'"), ("--oplog --db=x", "--oplog"),
                        ("-j 0", "-j"), ("--query={bad", "--query")):
        r = backup(objects, f"--mongo-args={args}", check=False)
        err = r.stderr.decode()
        assert r.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert named in err and "secret-in-arg" not in err
    assert not os.path.exists(repo_dir)
    r = restore(objects, "--mongo-args=--oplog", check=False)
    assert r.returncode == 2 and "not a mongorestore option" in r.stderr.decode()


def test_wrong_password_fails_fast_and_names_no_secret(ferretdb, tmp_path):
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb, repo_dir=repo_dir, password=SECRET_PASSWORD)
    started = time.monotonic()
    r = backup(objects, "--wait-timeout=60", check=False)
    err = r.stderr.decode()
    assert r.returncode == 5, err
    assert time.monotonic() - started < 30
    assert SECRET_PASSWORD not in err and "Authentication failed" in err
    assert not os.path.exists(repo_dir)


def test_a_dump_that_fails_midway_leaves_no_snapshot(tmp_path):
    """The server goes away while documents stream: the run fails naming the cause, no snapshot is written,
    and the repository stays valid."""
    server = start_ferretdb(str(tmp_path / "f"))
    try:
        client = server.client()
        for batch in range(40):
            client.big.docs.insert_many([{"batch": batch, "i": i, "pad": "x" * 900} for i in range(1000)])
        repo_dir = str(tmp_path / "repo")
        objects = mongo_objects(str(tmp_path / "o.yaml"), server, repo_dir=repo_dir)
        backup(objects, "--mongo-args=--db=big --excludeCollection=docs")  # a first, good snapshot
        # SIGKILL: FerretDB's SIGTERM waits for open cursors to finish
        killer = threading.Timer(0.8, os.kill, (server.pid, signal.SIGKILL))
        killer.start()
        r = backup(objects, check=False)
        killer.join()
    finally:
        server.stop()
    err = r.stderr.decode()
    assert r.returncode in (5, 6), err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 1
    restic(repo_dir, "check", "--read-data")


def test_replica_set_backup_is_consistent_to_one_point_in_time(tmp_path):
    """Writes run during the backup of a replica set: with the oplog replayed, the restored collection is the
    source as of one moment — a gap-free prefix of the sequence that was being written."""
    source = start_ferretdb(str(tmp_path / "src"), replica_set="rs0")
    target = start_ferretdb(str(tmp_path / "dst"), replica_set="rs1")
    stop = threading.Event()
    try:
        client = source.client()
        client.app.bulk.insert_many([{"i": i, "pad": "y" * 800} for i in range(20000)])
        written = [0]

        def writer() -> None:
            with source.client() as c:
                while not stop.is_set():
                    c.app.seq.insert_one({"_id": written[0]})
                    written[0] += 1

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.3)
        repo_dir = str(tmp_path / "repo")
        params = {"replicaSets": {"host-0": f"rs0/127.0.0.1:{source.port}"}}
        backup(mongo_objects(str(tmp_path / "o.yaml"), source, repo_dir=repo_dir, parameters=params))
        stop.set()
        t.join()
        reader = archive_of(repo_dir)
        assert any(m.is_oplog for m in reader.collections)
        params_t = {"replicaSets": {"host-0": f"rs1/127.0.0.1:{target.port}"}}
        r = restore(mongo_objects(str(tmp_path / "t.yaml"), target, repo_dir=repo_dir, parameters=params_t))
        assert "replayed" in r.stderr.decode()
        ids = sorted(d["_id"] for d in target.client().app.seq.find())
        assert ids == list(range(len(ids))) and 0 < len(ids) <= written[0]
        assert target.client().app.bulk.count_documents({}) == 20000
    finally:
        stop.set()
        source.stop()
        target.stop()


def test_a_restore_that_fails_part_way_names_what_was_restored(tmp_path):
    """FerretDB refuses some BSON types (Decimal128, MinKey...): restoring the fixture's app.types fails, and the
    one-line error says which namespaces were restored and which only in part."""
    server = start_ferretdb(str(tmp_path / "f"))  # its own: it may drop connections on what it refuses
    repo_dir = str(tmp_path / "repo")
    with open(os.path.join(FIXTURES, "all-dbs.archive"), "rb") as f:
        stash_snapshot(repo_dir, f.read())
    objects = mongo_objects(str(tmp_path / "o.yaml"), server, repo_dir=repo_dir)
    try:
        r = restore(objects, "--mongo-args=--nsInclude=app.* -j 1", "--output-dir", str(tmp_path / "out"),
                    check=False)
    finally:
        server.stop()
    err = r.stderr.decode().strip().splitlines()[-1]
    assert r.returncode == 6, err
    assert "app.types" in err and "restored:" in err
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert "restored:" in out["targetStatus"]["stats"][0]["error"]


def test_restoring_over_existing_documents_fails_naming_them_unless_drop(ferretdb, tmp_path):
    client = ferretdb.client()
    drop_all(client)
    client.keep.things.insert_many([{"_id": i, "v": i} for i in range(50)])
    repo_dir = str(tmp_path / "repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb, repo_dir=repo_dir)
    backup(objects, "--mongo-args=--db=keep")
    client.keep.things.update_one({"_id": 3}, {"$set": {"v": "changed"}})
    client.keep.things.delete_one({"_id": 7})
    r = restore(objects, check=False)
    err = r.stderr.decode().strip().splitlines()[-1]
    assert r.returncode == 6, err
    assert "keep.things (49)" in err and "--drop" in err
    assert client.keep.things.find_one({"_id": 3})["v"] == "changed"  # not replaced
    assert client.keep.things.find_one({"_id": 7}) is not None  # the missing one came back
    restore(objects, "--mongo-args=--drop")
    assert client.keep.things.find_one({"_id": 3})["v"] == 3


def test_sigterm_during_a_backup_leaves_no_snapshot_and_a_valid_repository(tmp_path):
    server = start_ferretdb(str(tmp_path / "f"))
    try:
        client = server.client()
        for batch in range(60):
            client.big.docs.insert_many([{"batch": batch, "i": i, "pad": os.urandom(400).hex()} for i in range(1000)])
        repo_dir = str(tmp_path / "repo")
        objects = mongo_objects(str(tmp_path / "o.yaml"), server, repo_dir=repo_dir)
        backup(objects, "--mongo-args=--db=nothing-here")  # the repository exists, with one snapshot
        proc = subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--objects", objects, *NS,
                                 "--appbinding", "mg", "--repository", "repo"], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not os.listdir(os.path.join(repo_dir, "locks")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the backup holds its lock: the dump is running
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 143, err.decode()
    assert "terminated by SIGTERM" in err.decode().strip().splitlines()[-1]
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 1
    assert os.listdir(os.path.join(repo_dir, "locks")) == []
    restic(repo_dir, "check", "--read-data")
