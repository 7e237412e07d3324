"""A sharded MongoDB cluster backed up and restored end to end: real servers, a real repository, restic as judge.

No sharded MongoDB can run here (FerretDB has no sharding, no fsyncLock, no balancer). So the cluster is three
FerretDB servers in replica-set mode, sets ``cfg``, ``shard0`` and ``shard1``: each is the one member (its
primary) a dump of ``confighost``, ``host-0`` and ``host-1`` reads from. A fourth FerretDB, standalone, is the
mongos the AppBinding's clientConfig names: only ``wait_ready``'s ping reaches it, and its data must be in no dump.

The seam. The preparation (``drivers.mongodb.sharded.prepared_members``: balancer stop, secondary choice, fsync
locks, cleanup) is proven against MockupDB in test_mongo_sharded.py; here it alone is replaced by a test double,
with pytest's monkeypatch on the module attribute the driver looks up when a backup starts. The double takes the
topology the driver parsed from the AppBinding and yields for each set the member the real preparation picks for a
set without a secondary (its primary, unlocked), recording when it is entered and left. Everything else is the
production code: ``driver_for`` (AppBinding + Secret -> MongoDriver), the multi-host flows, the dumps (pymongo,
mongodump's archive format, the oplog), the restores, the repository writer, the session executor and the CLI.

The runs are therefore in this process: the flows through the library (``run_backup``/``run_restore``), the
sessions through the CLI's own entry point (``stash_runner.cli.main.main``) against a real kube-apiserver
(tests/kubecluster.py). A subprocess could not see the double, and a switch that would reach one (an environment
variable, a flag) would be a production hook that only tests use.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bson
import pytest

from drivers import DriverOptions
from drivers.mongodb import dump as dump_module
from drivers.mongodb import restore as restore_module
from drivers.mongodb import sharded
from drivers.mongodb.archive import ArchiveReader, Documents
from drivers.mongodb.connection import Topology
from drivers.mongodb.sharded import CONFIG_HOST, Member
from stash_runner.cli.main import main as cli_main
from stash_runner.errors import HostsFailed
from stash_runner.flows.backup import BackupOutcome, BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, RestoreResult, run_restore
from stash_runner.stash.objects import FileSource
from stash_runner.stash.resolve import driver_for, storage_from_repository

from . import mongoservers
from .helpers import b64, objects_yaml, restic
from .kubecluster import Namespace
from .mongoservers import MongoPeer

NS = "demo"
APPBINDING = "mongo"
USER = "stash-admin"
HOSTS = ("confighost", "host-0", "host-1")
SET_NAMES = {"confighost": "cfg", "host-0": "shard0", "host-1": "shard1"}
#: what each member holds: ordinary databases (a config server's ``config`` database is not dumped by default)
COLLECTIONS = {"confighost": [("cfgdb", "meta"), ("cfgdb", "chunks")], "host-0": [("app", "part0")],
               "host-1": [("app", "part1"), ("other", "only1")]}
SIZES = {"confighost": 40, "host-0": 700, "host-1": 450}
NOT_DUMPED = ("admin", "local", "config")
STASH = ("stash.appscode.com", "v1beta1")


# -- the cluster -------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    members: dict[str, MongoPeer]  # hostname -> the replica set's one member
    mongos: MongoPeer
    password: str = field(repr=False)

    def peer(self, hostname: str) -> MongoPeer:
        return self.members[hostname]


def _start(workdir: str, name: str, password: str, replica_set: str | None) -> MongoPeer:
    return mongoservers.start_ferretdb(os.path.join(workdir, name), username=USER, password=password,
                                       replica_set=replica_set)


@pytest.fixture(scope="module")
def cluster(workdir) -> Iterator[Cluster]:
    password = secrets.token_urlsafe(18)  # one root user for the whole cluster, as KubeDB's
    started: list[MongoPeer] = []
    try:
        members = {}
        for host in HOSTS:
            members[host] = _start(workdir, f"sharded-e2e-{SET_NAMES[host]}", password, SET_NAMES[host])
            started.append(members[host])
        mongos = _start(workdir, "sharded-e2e-mongos", password, None)
        started.append(mongos)
        yield Cluster(members, mongos, password)
    finally:
        for p in started:
            p.stop()


def wipe(peer: MongoPeer) -> None:
    with peer.client() as c:
        for db in c.list_database_names():
            if db not in NOT_DUMPED:
                c.drop_database(db)


def fill(cluster: Cluster, generation: int) -> None:
    """Different data on every member (and on the mongos, which no dump may read)."""
    for host, peer in cluster.members.items():
        wipe(peer)
        with peer.client() as c:
            for db, coll in COLLECTIONS[host]:
                c[db][coll].insert_many([{"_id": f"{host}-{i}", "host": host, "ns": f"{db}.{coll}", "gen": generation,
                                          "n": i, "blob": bson.Binary(os.urandom(64)), "tags": [generation, i % 7]}
                                         for i in range(SIZES[host])])
                c[db][coll].create_index([("n", 1)], name="n_1")
    wipe(cluster.mongos)
    with cluster.mongos.client() as c:
        c.via_mongos.leak.insert_many([{"_id": i, "where": "mongos"} for i in range(5)])


def contents(peer: MongoPeer) -> dict[str, dict[str, list[dict]]]:
    """Every dumped database's collections and documents, in _id order."""
    out: dict[str, dict[str, list[dict]]] = {}
    with peer.client() as c:
        for db in sorted(c.list_database_names()):
            if db in NOT_DUMPED:
                continue
            out[db] = {name: list(c[db][name].find({}, sort=[("_id", 1)]))
                       for name in sorted(c[db].list_collection_names()) if not name.startswith("system.")}
    return out


def index_names(peer: MongoPeer, db: str, coll: str) -> set[str]:
    with peer.client() as c:
        return {ix["name"] for ix in c[db][coll].list_indexes()}


def snapshot_of(cluster: Cluster) -> dict[str, dict]:
    return {host: contents(peer) for host, peer in cluster.members.items()}


# -- objects ---------------------------------------------------------------------------------------------

def appbinding(cluster: Cluster, members: dict[str, MongoPeer] | None = None) -> list[dict]:
    """Stash's AppBinding of a sharded KubeDB MongoDB (with its MongoConfiguration) and its auth Secret."""
    m = {**cluster.members, **(members or {})}
    params = {"apiVersion": "config.kubedb.com/v1alpha1", "kind": "MongoConfiguration",
              "configServer": f"cfg/127.0.0.1:{m['confighost'].port}",
              "replicaSets": {"host-0": f"shard0/127.0.0.1:{m['host-0'].port}",
                              "host-1": f"shard1/127.0.0.1:{m['host-1'].port}"}}
    return [
        {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
         "metadata": {"name": APPBINDING, "namespace": NS},
         "spec": {"type": "kubedb.com/mongodb", "version": "6.0.5",
                  "clientConfig": {"url": f"mongodb://127.0.0.1:{cluster.mongos.port}/?authSource=admin"},
                  "secret": {"name": "mongo-auth"}, "parameters": params}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mongo-auth", "namespace": NS},
         "data": {"username": b64(USER), "password": b64(cluster.password)}},
    ]


def write_objects(tmp_path, repo_dir: str, cluster: Cluster, *extra: dict, name: str = "objects.yaml",
                  members: dict[str, MongoPeer] | None = None) -> str:
    return objects_yaml(str(tmp_path / name), repo_dir=repo_dir, namespace=NS,
                        extra=[*appbinding(cluster, members), *extra])


# -- the double and the instruments --------------------------------------------------------------------------

class Recorder:
    """What the run did, in order: the preparation entered and left, each member's dump and restore started and
    ended; how many dumps (and restores) ran at once; optionally a barrier every dump (restore) must pass together,
    which only parallel work can."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []
        self.topologies: list[Topology] = []
        self.active = {"dump": 0, "restore": 0}
        self.most = {"dump": 0, "restore": 0}
        self.barrier: dict[str, threading.Barrier] = {}
        self.broken: list[str] = []

    def note(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def names(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    def gather(self, kind: str, parties: int) -> None:
        self.barrier[kind] = threading.Barrier(parties, timeout=30)

    @contextlib.contextmanager
    def working(self, kind: str, host: str) -> Iterator[None]:
        with self.lock:
            self.active[kind] += 1
            self.most[kind] = max(self.most[kind], self.active[kind])
            self.events.append((f"{kind}-start", host))
        try:
            barrier = self.barrier.get(kind)
            if barrier is not None:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    self.broken.append(host)  # recorded and asserted on; the work still runs, so nothing hangs
            yield
        finally:
            with self.lock:
                self.active[kind] -= 1
                self.events.append((f"{kind}-end", host))


@pytest.fixture
def rec(monkeypatch) -> Recorder:
    """The preparation replaced by the double; the dumps and restores counted (they run unchanged)."""
    r = Recorder()
    real = sharded.prepared_members
    assert list(inspect.signature(real).parameters) == ["topology", "creds", "log", "timeouts", "lock"]

    @contextlib.contextmanager
    def prepared_members(topology: Topology, creds: Any, *, log: Any, timeouts: Any = None,
                         lock: bool = True) -> Iterator[list[Member]]:
        assert topology.kind == "sharded" and topology.config_server is not None
        r.topologies.append(topology)
        sets = [(CONFIG_HOST, topology.config_server), *topology.shards.items()]
        # each set has one member, its primary: the real preparation dumps such a set from it, unlocked
        members = [Member(host, rs.name, rs.seeds[0], locked=False) for host, rs in sets]
        r.note("prepare", [m.hostname for m in members])
        try:
            yield members
        except BaseException as e:
            r.note("cleanup", type(e).__name__)
            raise
        r.note("cleanup", None)

    monkeypatch.setattr(sharded, "prepared_members", prepared_members)

    class WatchedDump(dump_module.MongoDump):
        def _run(self) -> None:
            assert self.member is not None, "a sharded cluster is dumped member by member"
            with r.working("dump", self.member.hostname):
                super()._run()
            r.note("dumped", self.member.hostname, None if self._error is None else str(self._error))

    monkeypatch.setattr(dump_module, "MongoDump", WatchedDump)

    real_restore = restore_module.restore_archive
    by_set = {v: k for k, v in SET_NAMES.items()}

    def restore_archive(client: Any, args: Any, chunks: Any, where: str) -> None:
        host = by_set[where.rpartition("replica set ")[2]]
        with r.working("restore", host):
            real_restore(client, args, chunks, where)

    monkeypatch.setattr(restore_module, "restore_archive", restore_archive)
    return r


# -- the library runs ---------------------------------------------------------------------------------------

def backup(objects: str, **options: Any) -> BackupOutcome:
    source = FileSource([objects])
    drv = driver_for(source, NS, APPBINDING, DriverOptions(**options))
    storage = storage_from_repository(source, NS, "repo")
    try:
        return run_backup(BackupPlan(driver=drv, backend=storage.backend, password=storage.password,
                                     wait_timeout=30, progress_interval=3600))
    finally:
        drv.close()
        storage.close()


def restore(objects: str, choose: Any = None, on_hosts: Any = None, **options: Any) -> list[RestoreResult]:
    source = FileSource([objects])
    drv = driver_for(source, NS, APPBINDING, DriverOptions(purpose="restore", **options))
    storage = storage_from_repository(source, NS, "repo")
    try:
        return run_restore(RestorePlan(driver=drv, backend=storage.backend, password=storage.password,
                                       wait_timeout=30, progress_interval=3600, choose=choose, on_hosts=on_hosts))
    finally:
        drv.close()
        storage.close()


def snapshots(repo_dir: str) -> list[dict]:
    return json.loads(restic(repo_dir, "snapshots", "--json").stdout)


def archive_of(repo_dir: str, snapshot_id: str) -> tuple[ArchiveReader, dict[str, list[dict]]]:
    """The snapshot's /dump as restic reads it back, parsed: the reader (prelude) and the documents by namespace."""
    raw = restic(repo_dir, "dump", snapshot_id, "/dump").stdout
    reader = ArchiveReader(_Bytes(raw))
    docs: dict[str, list[dict]] = {}
    for event in reader.events():  # every namespace's CRC-64 is checked as it ends
        if isinstance(event, Documents):
            docs.setdefault(event.namespace, []).extend(bson.decode(d) for d in event.documents)
    return reader, docs


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return out


def check_archive(repo_dir: str, snap: dict, host: str, generation: int) -> None:
    """The snapshot holds one file, /dump: a mongodump archive of exactly that member's data, with its oplog."""
    files = [json.loads(line) for line in restic(repo_dir, "ls", "--json", snap["id"]).stdout.splitlines()]
    assert [f["path"] for f in files if f.get("struct_type") == "node"] == ["/dump"]
    assert snap["paths"] == ["/dump"]
    reader, docs = archive_of(repo_dir, snap["id"])
    prelude = {(c.db, c.collection) for c in reader.collections}
    wanted = {(db, coll) for db, coll in COLLECTIONS[host]}
    assert wanted | {("", "oplog")} <= prelude, prelude  # a replica set member's dump carries its oplog
    assert {db for db, _ in prelude} - {"", "admin"} == {db for db, _ in wanted}  # nothing of another member
    for db, coll in COLLECTIONS[host]:
        got = docs[f"{db}.{coll}"]
        assert len(got) == SIZES[host] and {d["host"] for d in got} == {host} and {d["gen"] for d in got} == \
            {generation}
        meta = next(c for c in reader.collections if (c.db, c.collection) == (db, coll)).parse()
        assert "n_1" in {ix["name"] for ix in meta.indexes}
    assert docs.get(".oplog"), "the oplog namespace has entries"
    assert all(e["op"] in ("i", "u", "d", "c", "n") for e in docs[".oplog"])
    assert not any(ns.startswith("via_mongos.") for ns in docs)


# -- 1. backup ------------------------------------------------------------------------------------------------

def test_backup_writes_one_snapshot_per_member_inside_the_preparation(cluster, rec, repo_dir, tmp_path):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    rec.gather("dump", 3)  # the default (Stash's --max-concurrency 3) dumps all three at once
    outcome = backup(objects)

    assert [r.snapshot.hostname for r in outcome.results] == list(HOSTS)
    restic(repo_dir, "check", "--read-data")
    snaps = snapshots(repo_dir)
    assert sorted(s["hostname"] for s in snaps) == sorted(HOSTS)
    by_host = {s["hostname"]: s for s in snaps}
    for r in outcome.results:
        assert by_host[r.snapshot.hostname]["id"] == r.snapshot.id
    for host in HOSTS:
        check_archive(repo_dir, by_host[host], host, 1)

    # the double saw the driver's topology: the AppBinding's configServer and replicaSets
    [t] = rec.topologies
    assert (t.config_server.name, t.config_server.seeds) == ("cfg", (f"127.0.0.1:{cluster.peer('confighost').port}",))
    assert {h: (rs.name, rs.seeds) for h, rs in t.shards.items()} == {
        h: (SET_NAMES[h], (f"127.0.0.1:{cluster.peer(h).port}",)) for h in ("host-0", "host-1")}
    # prepared before the first dump started, cleaned up after the last ended, once, without an error
    ev = rec.events
    assert ev[0] == ("prepare", list(HOSTS)) and ev[-1] == ("cleanup", None)
    assert len(rec.names("prepare")) == 1 and len(rec.names("cleanup")) == 1
    assert sorted(e[1] for e in rec.names("dump-start")) == sorted(HOSTS)
    assert sorted(e[1] for e in rec.names("dumped")) == sorted(HOSTS) and all(e[2] is None for e in rec.names("dumped"))
    # the three dumps ran at once (each waited at the barrier for the others)
    assert rec.broken == [] and rec.most["dump"] == 3


def test_backup_with_max_concurrency_one_dumps_one_member_at_a_time(cluster, rec, repo_dir, tmp_path):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    outcome = backup(objects, max_concurrency=1)
    assert [r.snapshot.hostname for r in outcome.results] == list(HOSTS)
    assert rec.most["dump"] == 1
    # strictly one after the other, in host order, inside the preparation
    work = [e[:2] for e in rec.events if e[0] in ("dump-start", "dump-end")]
    assert work == [(kind, h) for h in HOSTS for kind in ("dump-start", "dump-end")]
    assert rec.events[0][0] == "prepare" and rec.events[-1] == ("cleanup", None)
    restic(repo_dir, "check", "--read-data")
    by_host = {s["hostname"]: s for s in snapshots(repo_dir)}
    for host in HOSTS:
        check_archive(repo_dir, by_host[host], host, 1)


# -- 2. a member that fails -------------------------------------------------------------------------------------

@pytest.fixture
def doomed(workdir, cluster, request) -> Iterator[MongoPeer]:
    """A shard1 member of its own (with its data), for the tests that stop it."""
    peer = _start(workdir, f"sharded-e2e-doomed-{request.node.name}", cluster.password, "shard1")
    try:
        with peer.client() as c:
            c.app.part1.insert_many([{"_id": i} for i in range(3)])
        yield peer
    finally:
        peer.stop()


def test_a_member_that_fails_fails_the_backup_and_the_others_are_saved(cluster, rec, repo_dir, tmp_path, doomed):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster, members={"host-1": doomed})
    doomed.stop()  # host-1's member is gone before the backup

    with pytest.raises(HostsFailed) as caught:
        backup(objects)
    e = caught.value
    assert list(e.failures) == ["host-1"] and f"127.0.0.1:{doomed.port}" in str(e) and "host host-1" in str(e)
    assert e.exit_code == 6  # the cause's: the dump failed (ToolFailed)
    assert sorted(r.snapshot.hostname for r in e.results) == ["confighost", "host-0"]

    # the others' snapshots are saved and whole; nothing of host-1 is left in the repository
    restic(repo_dir, "check", "--read-data")
    snaps = snapshots(repo_dir)
    assert sorted(s["hostname"] for s in snaps) == ["confighost", "host-0"]
    for s in snaps:
        check_archive(repo_dir, s, s["hostname"], 1)
    # the preparation was still left (its cleanup ran), after every dump ended, with the failure
    assert rec.events[0][0] == "prepare" and rec.events[-1] == ("cleanup", "HostsFailed")
    assert {e[1]: e[2] is None for e in rec.names("dumped")} == {"confighost": True, "host-0": True, "host-1": False}


# -- 3. restore ---------------------------------------------------------------------------------------------------

def test_restore_puts_each_members_data_back_into_its_own_set_in_parallel(cluster, rec, repo_dir, tmp_path):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    backup(objects)
    original = snapshot_of(cluster)
    for peer in cluster.members.values():
        wipe(peer)
    assert all(contents(p) == {} for p in cluster.members.values())

    prepared = len(rec.names("prepare"))
    rec.gather("restore", 3)  # all three restores at once: each waits for the others
    told: list[list[str]] = []
    results = restore(objects, on_hosts=told.append)
    assert told == [list(HOSTS)]
    assert [r.hostname for r in results] == list(HOSTS)
    assert [r.snapshot.hostname for r in results] == list(HOSTS) and all(r.bytes_restored > 0 for r in results)
    assert rec.broken == [] and rec.most["restore"] == 3
    assert len(rec.names("prepare")) == prepared  # a restore prepares nothing

    # each member got back exactly its own data (documents, indexes), nothing of another member nor of the mongos
    assert snapshot_of(cluster) == original
    for host in HOSTS:
        for db, coll in COLLECTIONS[host]:
            assert "n_1" in index_names(cluster.peer(host), db, coll)


def test_restore_choose_takes_an_older_snapshot_for_one_member(cluster, rec, repo_dir, tmp_path):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    old = {r.snapshot.hostname: r.snapshot for r in backup(objects).results}
    gen1 = snapshot_of(cluster)
    fill(cluster, 2)
    backup(objects)
    gen2 = snapshot_of(cluster)
    assert gen1 != gen2
    for peer in cluster.members.values():
        wipe(peer)

    asked: list[str] = []

    def choose(host: str) -> tuple[str, str]:
        asked.append(host)
        return (old[host].short_id, host) if host == "host-1" else ("latest", host)

    results = restore(objects, choose=choose)
    assert sorted(asked) == sorted(HOSTS)
    assert {r.hostname: r.snapshot.id for r in results}["host-1"] == old["host-1"].id
    assert {r.hostname: r.snapshot.id != old[r.hostname].id for r in results} == \
        {"confighost": True, "host-0": True, "host-1": False}
    assert snapshot_of(cluster) == {"confighost": gen2["confighost"], "host-0": gen2["host-0"],
                                    "host-1": gen1["host-1"]}


# -- 4. sessions -------------------------------------------------------------------------------------------------

def backup_configuration() -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "mongo-backup", "namespace": NS},
            "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                        "name": APPBINDING}},
                     "task": {"name": "mongodb-backup-6.0.5", "params": []}}}


def backup_session(name: str) -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "namespace": NS, "labels": {"stash.appscode.com/invoker-name": "mongo-backup"}},
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration",
                                 "name": "mongo-backup"}}}


def restore_session(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"repository": {"name": "repo"}, "task": {"name": "mongodb-restore-6.0.5"},
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                        "name": APPBINDING}, "rules": rules}}}


def seed(kube: Namespace, tmp_path, repo_dir: str, cluster: Cluster, *objs: dict,
         members: dict[str, MongoPeer] | None = None) -> str:
    kube.load_fixtures(write_objects(tmp_path, repo_dir, cluster, *objs, name="kube-objects.yaml", members=members))
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


def run_cli(*args: str) -> int:
    """The CLI's entry point, in this process (so that the double is the preparation it runs); its logging setup
    and SIGTERM handler are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        return cli_main(list(args))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        logging.getLogger("stash_runner").setLevel(logging.NOTSET)


def status_of(kube: Namespace, plural: str, name: str) -> dict:
    return kube.get(*STASH, plural, name)["status"]


def test_backup_session_reports_three_hosts(cluster, rec, kube, repo_dir, tmp_path):
    fill(cluster, 1)
    kc = seed(kube, tmp_path, repo_dir, cluster, backup_configuration(), backup_session("s1"))
    out = tmp_path / "out"
    assert run_cli("backup", "--backupsession", "s1", "--namespace", kube.name, "--kubeconfig", kc,
                   "--output-dir", str(out)) == 0

    snaps = {s["hostname"]: s for s in snapshots(repo_dir)}
    assert sorted(snaps) == sorted(HOSTS)
    restic(repo_dir, "check", "--read-data")
    st = status_of(kube, "backupsessions", "s1")
    assert st["phase"] == "Succeeded"
    [target] = st["targets"]
    assert target["ref"]["name"] == APPBINDING and target["totalHosts"] == 3 and target["phase"] == "Succeeded"
    stats = {h["hostname"]: h for h in target["stats"]}
    assert sorted(stats) == sorted(HOSTS)
    for host, h in stats.items():
        assert h["phase"] == "Succeeded" and "error" not in h
        [s] = h["snapshots"]
        assert s["name"] == snaps[host]["id"] and s["path"] == "/dump"
    # the last host's write ran the post-backup actions once
    assert target["postBackupActions"] == ["ApplyRetentionPolicy", "VerifyRepositoryIntegrity",
                                           "SendRepositoryMetrics"]
    reasons = sorted(e["reason"] for e in kube.events())
    assert reasons == ["Host Backup Succeeded"] * 3

    doc = json.loads((out / "output.json").read_text())
    assert doc["statusReported"] is True and doc["targetStatus"]["ref"]["name"] == APPBINDING
    assert [(h["hostname"], h["phase"], h["snapshots"][0]["name"]) for h in doc["targetStatus"]["stats"]] == \
        [(host, "Succeeded", snaps[host]["id"]) for host in HOSTS]
    assert rec.events[0][0] == "prepare" and rec.events[-1] == ("cleanup", None)


def test_backup_session_with_a_failing_member_is_failed(cluster, rec, kube, repo_dir, tmp_path, doomed):
    fill(cluster, 1)
    kc = seed(kube, tmp_path, repo_dir, cluster, backup_configuration(), backup_session("s1"),
              members={"host-1": doomed})
    doomed.stop()
    out = tmp_path / "out"
    assert run_cli("backup", "--backupsession", "s1", "--namespace", kube.name, "--kubeconfig", kc,
                   "--output-dir", str(out)) == 6

    st = status_of(kube, "backupsessions", "s1")
    assert st["phase"] == "Failed"
    [target] = st["targets"]
    assert target["totalHosts"] == 3 and target["phase"] == "Failed"
    phases = {h["hostname"]: h["phase"] for h in target["stats"]}
    assert phases == {"confighost": "Succeeded", "host-0": "Succeeded", "host-1": "Failed"}
    failed = next(h for h in target["stats"] if h["hostname"] == "host-1")
    assert f"127.0.0.1:{doomed.port}" in failed["error"] and "snapshots" not in failed
    doc = json.loads((out / "output.json").read_text())
    assert {h["hostname"]: h["phase"] for h in doc["targetStatus"]["stats"]} == phases
    # the two saved snapshots stay, whole
    restic(repo_dir, "check", "--read-data")
    assert sorted(s["hostname"] for s in snapshots(repo_dir)) == ["confighost", "host-0"]
    assert rec.events[-1] == ("cleanup", "HostsFailed")
    reasons = sorted(e["reason"] for e in kube.events())
    assert reasons == ["Host Backup Failed", "Host Backup Succeeded", "Host Backup Succeeded"]


def test_restore_session_restores_every_member_with_its_rule(cluster, rec, kube, repo_dir, tmp_path):
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    old = {r.snapshot.hostname: r.snapshot for r in backup(objects).results}
    gen1 = snapshot_of(cluster)
    fill(cluster, 2)
    backup(objects)
    gen2 = snapshot_of(cluster)
    for peer in cluster.members.values():
        wipe(peer)

    # Stash's shape: a rule naming host-1 with an older snapshot (as "<repository>-<short id>"); the other
    # members have no rule and are restored from their latest snapshot, as Stash's MongoDB addon does.
    rules = [{"targetHosts": ["host-1"], "snapshots": [f"repo-{old['host-1'].short_id}"]}]
    kc = seed(kube, tmp_path, repo_dir, cluster, restore_session("r1", rules))
    out = tmp_path / "out"
    assert run_cli("restore", "--restoresession", "r1", "--namespace", kube.name, "--kubeconfig", kc,
                   "--output-dir", str(out)) == 0

    st = status_of(kube, "restoresessions", "r1")
    assert st["phase"] == "Succeeded" and st["totalHosts"] == 3 and st["sessionDuration"]
    assert sorted((h["hostname"], h["phase"]) for h in st["stats"]) == [(h, "Succeeded") for h in HOSTS]
    doc = json.loads((out / "output.json").read_text())
    assert sorted(h["hostname"] for h in doc["targetStatus"]["stats"]) == sorted(HOSTS)
    assert snapshot_of(cluster) == {"confighost": gen2["confighost"], "host-0": gen2["host-0"],
                                    "host-1": gen1["host-1"]}
    reasons = sorted(e["reason"] for e in kube.events())
    assert reasons == ["Host Restore Succeeded"] * 3


def test_restore_session_with_a_fallback_rule(cluster, rec, kube, repo_dir, tmp_path):
    """A rule naming host-0 gives it an older snapshot (by its full id); a rule without targetHosts is every other
    member's (``latest``: each member's own latest snapshot, its source host being itself)."""
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    old = {r.snapshot.hostname: r.snapshot for r in backup(objects).results}
    gen1 = snapshot_of(cluster)
    fill(cluster, 2)
    backup(objects)
    gen2 = snapshot_of(cluster)
    for peer in cluster.members.values():
        wipe(peer)
    rules = [{"targetHosts": ["host-0"], "snapshots": [old["host-0"].id]}, {"snapshots": ["latest"]}]
    kc = seed(kube, tmp_path, repo_dir, cluster, restore_session("r2", rules))
    assert run_cli("restore", "--restoresession", "r2", "--namespace", kube.name, "--kubeconfig", kc) == 0
    st = status_of(kube, "restoresessions", "r2")
    assert st["phase"] == "Succeeded" and st["totalHosts"] == 3 and len(st["stats"]) == 3
    assert snapshot_of(cluster) == {"confighost": gen2["confighost"], "host-0": gen1["host-0"],
                                    "host-1": gen2["host-1"]}


def test_restic_lists_the_three_hosts_as_stash_writes_them(cluster, rec, repo_dir, tmp_path):
    """restic's own view of a sharded backup: ``restic snapshots --host`` per member, ``restic dump latest dump
    --host H`` (Stash's restore command line) gives that member's archive."""
    fill(cluster, 1)
    objects = write_objects(tmp_path, repo_dir, cluster)
    backup(objects)
    for host in HOSTS:
        [s] = json.loads(restic(repo_dir, "snapshots", "--json", "--host", host).stdout)
        assert s["hostname"] == host
        raw = restic(repo_dir, "dump", "--host", host, "latest", "dump").stdout
        reader = ArchiveReader(_Bytes(raw))
        assert {c.namespace for c in reader.collections if c.db not in ("", "admin")} == \
            {f"{db}.{coll}" for db, coll in COLLECTIONS[host]}
        list(reader.events())
