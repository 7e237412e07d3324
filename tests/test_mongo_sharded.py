"""drivers/mongodb/sharded.py against MockupDB servers playing a mongos and replica sets, member by member.

Each server answers pymongo's handshakes and heartbeats (hello/isMaster) itself and records every other command
it receives; the tests assert on those, per server and in the order the whole cluster saw them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from bson.int64 import Int64
from bson.timestamp import Timestamp
from mockupdb import MockupDB

from drivers.mongodb.connection import Credentials, ReplicaSet, Topology
from drivers.mongodb.sharded import CleanupFailed, Member, PreparationFailed, Timeouts, prepared_members
from stash_runner.errors import DatabaseUnreachable, Interrupted

FAST = Timeouts(balancer=0.4, catch_up=0.4, poll=0.01, cleanup_attempts=3, cleanup_interval=0.01)
NOISE = {"ismaster", "hello", "ping", "endsessions", "buildinfo", "getlasterror"}
DRIVER_FIELDS = {"$db", "$readPreference", "$clusterTime", "lsid", "txnNumber"}  # left out of recorded commands
HANGUP = object()  # an override's answer: close the connection instead of answering


class CommandError(Exception):
    def __init__(self, code: int, errmsg: str):
        super().__init__(errmsg)
        self.code, self.errmsg = code, errmsg


def failing(code: int = 2, errmsg: str = "injected failure", times: int = 1 << 30, after: int = 0):
    """An override failing ``times`` times once ``after`` calls went through (those get the normal answer)."""
    calls = {"n": 0}

    def answer(server: Server, doc: dict[str, Any]) -> Any:
        calls["n"] += 1
        if after < calls["n"] <= after + times:
            raise CommandError(code, errmsg)
        return None  # the normal answer

    return answer


class Cluster:
    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.log: list[tuple[str, str]] = []  # (server label, command name), in the order the cluster saw them
        self.lock = threading.Lock()

    def server(self, label: str, role: Role) -> Server:
        s = Server(self, label, role)
        self.servers.append(s)
        return s

    def mongos(self) -> Server:
        return self.server("mongos", Mongos())

    def replica_set(self, name: str, size: int = 2, **member_settings: dict[str, Any]) -> FakeSet:
        rs = FakeSet(name)
        for i in range(size):
            rs.members.append(self.server(f"{name}/{i}", RSMember(rs, i, **member_settings.get(f"m{i}", {}))))
        return rs

    def stop(self) -> list[threading.Thread]:
        """Stop the servers in the background: each takes up to a second (its accept loop's poll)."""
        threads = [threading.Thread(target=s.db.stop, daemon=True) for s in self.servers]
        for t in threads:
            t.start()
        return threads

    def commands(self, *, without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        with self.lock:
            return [(label, name) for label, name in self.log if name not in without]


class Server:
    def __init__(self, cluster: Cluster, label: str, role: Role):
        self.cluster, self.label, self.role = cluster, label, role
        self.docs: list[dict[str, Any]] = []
        self.overrides: dict[str, Callable[[Server, dict[str, Any]], Any]] = {}
        self.db = MockupDB(request_timeout=30)
        self.address = f"127.0.0.1:{self.db.run()}"
        self.db.autoresponds(self.handle)

    @property
    def names(self) -> list[str]:
        return [next(iter(d)) for d in self.docs]

    def doc(self, name: str, index: int = 0) -> dict[str, Any]:
        return [d for d in self.docs if next(iter(d)) == name][index]

    def handle(self, request: Any) -> bool:
        name = request.command_name or ""
        if name.lower() in ("ismaster", "hello"):
            return request.replies(self.role.hello(self))
        if name.lower() in NOISE:
            return request.replies({})
        doc = {k: v for k, v in request.doc.items() if k not in DRIVER_FIELDS}
        with self.cluster.lock:
            self.docs.append(doc)
            self.cluster.log.append((self.label, name))
        try:
            reply = None
            if name in self.overrides:
                reply = self.overrides[name](self, doc)
            if reply is HANGUP:
                return request.hangup()
            if reply is None:
                reply = self.role.answer(self, name, doc)
        except CommandError as e:
            return request.command_err(code=e.code, errmsg=e.errmsg)
        except Exception as e:  # a bug in the test server: answer it rather than kill the connection's thread
            return request.command_err(code=1, errmsg=f"test server error: {e!r}")
        return request.replies(reply)


class Role:
    def hello(self, server: Server) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, server: Server, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(59, f"no such command: '{name}'")


WIRE = {"minWireVersion": 0, "maxWireVersion": 17, "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000, "helloOk": True}


class Mongos(Role):
    def __init__(self) -> None:
        self.mode = "full"
        self.rounds = 1  # balancerStatus answers after balancerStop that still show a balancing round

    def hello(self, server: Server) -> dict[str, Any]:
        return {"ismaster": True, "isWritablePrimary": True, "msg": "isdbgrid", **WIRE}

    def answer(self, server: Server, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        if name == "balancerStatus":
            in_round = self.mode == "full" or self.rounds > 0
            if self.mode == "off" and self.rounds > 0:
                self.rounds -= 1
            return {"mode": self.mode, "inBalancerRound": in_round, "numBalancerRounds": Int64(42)}
        if name == "balancerStop":
            self.mode = "off"
            return {}
        if name == "balancerStart":
            self.mode = "full"
            return {}
        return super().answer(server, name, doc)


class FakeSet:
    def __init__(self, name: str):
        self.name = name
        self.members: list[Server] = []
        self.counter = 0  # config.BackupControl's counter on the primary
        self.optime = Timestamp(1_700_000_000, 5)

    @property
    def primary(self) -> Server:
        return self.members[0]

    @property
    def seeds(self) -> ReplicaSet:
        return ReplicaSet(self.name, tuple(m.address for m in self.members))

    def role(self, i: int) -> RSMember:
        role = self.members[i].role
        assert isinstance(role, RSMember)
        return role


class RSMember(Role):
    """Member 0 is the primary. A secondary is behind while it is locked or for ``lag`` more status answers, and
    shows the BackupControl counter ``control_lag`` reads late."""

    def __init__(self, rs: FakeSet, index: int, *, state: int | None = None, health: int = 1, hidden: bool = False,
                 lag: int = 0, control_lag: int = 0, lock_count: int = 0):
        self.rs, self.index = rs, index
        self.state = state if state is not None else (1 if index == 0 else 2)
        self.health, self.hidden = health, hidden
        self.lag, self.control_lag, self.lock_count = lag, control_lag, lock_count

    def hello(self, server: Server) -> dict[str, Any]:
        primary = self.index == 0
        return {"ismaster": primary, "isWritablePrimary": primary, "secondary": not primary,
                "setName": self.rs.name, "hosts": [m.address for m in self.rs.members if not m.role.hidden],
                "primary": self.rs.primary.address, "me": server.address, **WIRE}

    def status_entry(self, server: Server) -> dict[str, Any]:
        ts = self.rs.optime
        if self.index and (self.lag > 0 or self.lock_count > 0):
            ts = Timestamp(ts.time - 10, 1)
        names = {1: "PRIMARY", 2: "SECONDARY", 8: "(not reachable/healthy)"}
        return {"_id": self.index, "name": server.address, "health": float(self.health), "state": self.state,
                "stateStr": names.get(self.state, str(self.state)), "optime": {"ts": ts, "t": Int64(1)},
                "optimeDate": ts.as_datetime().replace(tzinfo=None)}

    def answer(self, server: Server, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        rs = self.rs
        if name == "replSetGetConfig":
            members = [{"_id": i, "host": m.address, "arbiterOnly": False, "buildIndexes": True,
                        "hidden": m.role.hidden, "priority": 0 if m.role.hidden else 1, "secondaryDelaySecs": Int64(0),
                        "votes": 1} for i, m in enumerate(rs.members)]
            return {"config": {"_id": rs.name, "version": 1, "members": members}}
        if name == "replSetGetStatus":
            entries = [m.role.status_entry(m) for m in rs.members]
            for m in rs.members:
                if m.role.index and m.role.lag > 0:
                    m.role.lag -= 1
            return {"set": rs.name, "myState": self.state, "members": entries}
        if name == "findAndModify":
            assert doc["findAndModify"] == "BackupControl"
            rs.counter += 1
            return {"lastErrorObject": {"n": 1, "updatedExisting": rs.counter > 1},
                    "value": {"_id": "BackupControlDocument", "counter": rs.counter}}
        if name == "find":
            seen = rs.counter - 1 if self.control_lag > 0 else rs.counter
            self.control_lag -= 1
            batch = [{"_id": "BackupControlDocument", "counter": seen}] if seen > 0 else []
            return {"cursor": {"id": Int64(0), "ns": "config.BackupControl", "firstBatch": batch}}
        if name == "currentOp":
            extra = {"fsyncLock": True, "info": "use db.fsyncUnlock() to terminate the fsync write/snapshot lock"}
            return {"inprog": [], **(extra if self.lock_count else {})}
        if name == "fsync":
            assert doc.get("lock") is True
            self.lock_count += 1
            return {"info": "now locked against writes, use db.fsyncUnlock() to unlock",
                    "lockCount": Int64(self.lock_count)}
        if name == "fsyncUnlock":
            if not self.lock_count:
                raise CommandError(20, "fsyncUnlock called when not locked")
            self.lock_count -= 1
            return {"info": "fsyncUnlock completed", "lockCount": Int64(self.lock_count)}
        return super().answer(server, name, doc)


@pytest.fixture(scope="module")
def stopping():
    threads: list[threading.Thread] = []
    yield threads
    for t in threads:
        t.join(15)


@pytest.fixture
def cluster(stopping):
    c = Cluster()
    yield c
    stopping.extend(c.stop())


def sharded(cluster: Cluster, shard_keys: tuple[str, ...] = ("host-0", "host-1"), **settings: dict[str, Any]):
    """A mongos, a config server (3 members) and one 2-member shard per key; ``settings[key]`` go to its members."""
    mongos = cluster.mongos()
    cfg = cluster.replica_set("cfg", 3, **settings.get("confighost", {}))
    shards = {key: cluster.replica_set(f"shard{key.rpartition('-')[2]}", 2, **settings.get(key, {}))
              for key in shard_keys}
    host, _, port = mongos.address.rpartition(":")
    topology = Topology("sharded", host, int(port), config_server=cfg.seeds,
                        shards={key: rs.seeds for key, rs in shards.items()})
    return topology, mongos, cfg, shards


def replicaset(cluster: Cluster, size: int = 2, **member_settings: dict[str, Any]):
    rs = cluster.replica_set("rs0", size, **member_settings)
    return Topology("replicaset", "127.0.0.1", 1, replica_set=rs.seeds), rs


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def locks(*sets: FakeSet) -> list[int]:
    return [m.role.lock_count for rs in sets for m in rs.members]


# -- the whole procedure --


def test_sharded_cluster_command_sequence(cluster):
    topology, mongos, cfg, shards = sharded(cluster)
    s0, s1 = shards["host-0"], shards["host-1"]
    s1.role(1).lag = 1  # host-1's secondary is behind at the first look, caught up at the second
    cfg.role(1).control_lag = 1  # the config secondary shows the BackupControl write at the second read
    log = Log()
    with prepared_members(topology, Credentials(), log=log, timeouts=FAST) as members:
        assert members == [
            Member("confighost", "cfg", cfg.members[1].address, True),
            Member("host-0", "shard0", s0.members[1].address, True),
            Member("host-1", "shard1", s1.members[1].address, True),
        ]
        assert locks(cfg, s0, s1) == [0, 1, 0, 0, 1, 0, 1]
        assert mongos.role.mode == "off"
        during = cluster.commands()
    assert locks(cfg, s0, s1) == [0] * 7
    assert mongos.role.mode == "full"

    expected = [
        ("mongos", "balancerStatus"), ("mongos", "balancerStop"),
        ("mongos", "balancerStatus"), ("mongos", "balancerStatus"),  # a round still ran, then none
        ("cfg/0", "replSetGetConfig"), ("cfg/0", "replSetGetStatus"),
        ("cfg/1", "currentOp"), ("cfg/0", "findAndModify"), ("cfg/1", "find"), ("cfg/1", "find"),
        ("cfg/1", "fsync"),
        ("shard0/0", "replSetGetConfig"), ("shard0/0", "replSetGetStatus"), ("shard0/1", "currentOp"),
        ("shard0/1", "fsync"),
        ("shard1/0", "replSetGetConfig"), ("shard1/0", "replSetGetStatus"), ("shard1/1", "currentOp"),
        ("shard1/0", "replSetGetStatus"), ("shard1/1", "fsync"),
    ]
    assert during == expected
    assert cluster.commands() == expected + [
        ("cfg/1", "fsyncUnlock"), ("shard0/1", "fsyncUnlock"), ("shard1/1", "fsyncUnlock"),
        ("mongos", "balancerStart"),
    ]
    assert cfg.members[2].docs == []

    # the command documents, as sent
    assert mongos.doc("balancerStatus") == {"balancerStatus": 1}
    assert mongos.doc("balancerStop") == {"balancerStop": 1, "maxTimeMS": 400}
    assert mongos.doc("balancerStart") == {"balancerStart": 1}
    assert cfg.primary.doc("replSetGetStatus") == {"replSetGetStatus": 1}
    assert cfg.members[1].doc("currentOp") == {"currentOp": 1, "$ownOps": True}
    fam = cfg.primary.doc("findAndModify")
    assert fam["query"] == {"_id": "BackupControlDocument"} and fam["update"] == {"$inc": {"counter": 1}}
    assert fam["upsert"] is True and fam["new"] is True
    assert fam["writeConcern"] == {"w": "majority", "wtimeout": 15000}
    find = cfg.members[1].doc("find")
    assert find["find"] == "BackupControl" and find["filter"] == {"_id": "BackupControlDocument"}
    assert find["readConcern"] == {"level": "majority"}
    assert s0.members[1].doc("fsync") == {"fsync": 1, "lock": True}
    assert s0.members[1].doc("fsyncUnlock") == {"fsyncUnlock": 1}

    text = "\n".join(log)
    assert "stopping the balancer" in text and "restarted" in text
    assert f"locked {s1.members[1].address} against writes" in text


def test_members_in_host_order_whatever_the_map_order(cluster):
    topology, _, cfg, shards = sharded(cluster, ("host-10", "host-2", "host-0"))
    with prepared_members(topology, Credentials(), log=Log(), timeouts=FAST) as members:
        assert [m.hostname for m in members] == ["confighost", "host-0", "host-2", "host-10"]
        assert [m.address for m in members] == [cfg.members[1].address] + [
            shards[k].members[1].address for k in ("host-0", "host-2", "host-10")]
    assert locks(cfg, *shards.values()) == [0] * 9


def test_balancer_already_off_is_left_off(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",))
    mongos.role.mode = "off"
    mongos.role.rounds = 0
    with prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert mongos.names == ["balancerStatus"]
    assert mongos.role.mode == "off"


# -- replica sets --


def test_replica_set_secondary_locked(cluster):
    topology, rs = replicaset(cluster, 3)
    with prepared_members(topology, Credentials(), log=Log(), timeouts=FAST) as members:
        assert members == [Member("host-0", "rs0", rs.members[1].address, True)]
        assert locks(rs) == [0, 1, 0]
    assert locks(rs) == [0, 0, 0]
    assert rs.primary.names == ["replSetGetConfig", "replSetGetStatus"]
    assert rs.members[1].names == ["currentOp", "fsync", "fsyncUnlock"]
    assert rs.members[2].names == []


def test_replica_set_without_healthy_secondary_uses_the_primary_unlocked(cluster):
    # member 1 is down, member 2 recovering, member 3 a healthy but hidden secondary
    topology, rs = replicaset(cluster, 4, m1={"state": 8, "health": 0}, m2={"state": 3}, m3={"hidden": True})
    log = Log()
    with prepared_members(topology, Credentials(), log=log, timeouts=FAST) as members:
        assert members == [Member("host-0", "rs0", rs.primary.address, False)]
    assert rs.primary.names == ["replSetGetConfig", "replSetGetStatus"]
    assert [m.docs for m in rs.members[1:]] == [[], [], []]
    assert any("no healthy secondary" in line and rs.primary.address in line for line in log)


def test_replica_set_without_lock(cluster):
    topology, rs = replicaset(cluster)
    with prepared_members(topology, Credentials(), log=Log(), timeouts=FAST, lock=False) as members:
        assert members == [Member("host-0", "rs0", rs.members[1].address, False)]
    assert rs.members[1].names == ["currentOp"]


def test_leftover_fsync_lock_is_undone_first(cluster):
    # two earlier runs died holding their lock; the secondary is behind until it is unlocked
    topology, rs = replicaset(cluster, m1={"lock_count": 2})
    log = Log()
    with prepared_members(topology, Credentials(), log=log, timeouts=FAST) as members:
        assert members[0].locked and locks(rs) == [0, 1]
    assert locks(rs) == [0, 0]
    assert rs.members[1].names == ["currentOp", "fsyncUnlock", "fsyncUnlock", "fsync", "fsyncUnlock"]
    assert rs.primary.names == ["replSetGetConfig", "replSetGetStatus", "replSetGetStatus"]
    assert any("still locked against writes" in line and rs.members[1].address in line for line in log)


# -- failures: every lock taken so far is undone, the balancer restarted, the first error surfaces --


def test_balancer_stop_fails(cluster):
    topology, mongos, cfg, shards = sharded(cluster)
    mongos.overrides["balancerStop"] = failing(errmsg="not allowed right now")
    with pytest.raises(PreparationFailed, match=r"balancer .*balancerStop: not allowed right now \(code 2\)"), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pytest.fail("the body must not run")
    assert mongos.names == ["balancerStatus", "balancerStop", "balancerStart"]
    assert all(not m.docs for rs in [cfg, *shards.values()] for m in rs.members)


def test_balancer_status_fails_while_waiting(cluster):
    topology, mongos, _, _ = sharded(cluster)
    mongos.overrides["balancerStatus"] = failing(errmsg="status broke", after=1)
    with pytest.raises(PreparationFailed, match="balancerStatus: status broke"), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert mongos.names == ["balancerStatus", "balancerStop", "balancerStatus", "balancerStart"]


def test_shard_status_fails_after_earlier_locks(cluster):
    topology, mongos, cfg, shards = sharded(cluster)
    s0, s1 = shards["host-0"], shards["host-1"]
    s1.primary.overrides["replSetGetStatus"] = failing(errmsg="status broke")
    with pytest.raises(PreparationFailed, match=r"host-1 \(replica set shard1\): replSetGetStatus: status broke"), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert locks(cfg, s0, s1) == [0] * 7
    assert cluster.commands()[-3:] == [("cfg/1", "fsyncUnlock"), ("shard0/1", "fsyncUnlock"),
                                       ("mongos", "balancerStart")]
    assert s1.members[1].docs == []


def test_fsync_lock_of_second_shard_fails(cluster):
    topology, mongos, cfg, shards = sharded(cluster)
    s0, s1 = shards["host-0"], shards["host-1"]
    s1.members[1].overrides["fsync"] = failing(errmsg="cannot lock")
    with pytest.raises(PreparationFailed, match=rf"host-1 .*fsync lock on {s1.members[1].address}: cannot lock"), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert locks(cfg, s0, s1) == [0] * 7
    # the member that refused the lock is not unlocked: there is nothing of ours to undo
    assert s1.members[1].names == ["currentOp", "fsync"]
    assert cluster.commands()[-3:] == [("cfg/1", "fsyncUnlock"), ("shard0/1", "fsyncUnlock"),
                                       ("mongos", "balancerStart")]


def test_fsync_lock_answer_lost_is_still_undone(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",))
    s0 = shards["host-0"]

    def lock_then_hang_up(server: Server, doc: dict[str, Any]) -> Any:
        server.role.lock_count += 1
        return HANGUP

    s0.members[1].overrides["fsync"] = lock_then_hang_up
    with pytest.raises(PreparationFailed, match=rf"fsync lock on {s0.members[1].address}"), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert locks(cfg, s0) == [0] * 5
    assert s0.members[1].names == ["currentOp", "fsync", "fsyncUnlock"]
    assert mongos.names[-1] == "balancerStart"


class BodyError(Exception):
    pass


@pytest.mark.parametrize("error", [BodyError("the dump failed"), Interrupted("SIGTERM"), KeyboardInterrupt()])
def test_body_fails(cluster, error):
    topology, mongos, cfg, shards = sharded(cluster)
    with pytest.raises(type(error)) as raised, prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        raise error
    assert raised.value is error
    assert locks(cfg, *shards.values()) == [0] * 7
    assert cluster.commands()[-4:] == [("cfg/1", "fsyncUnlock"), ("shard0/1", "fsyncUnlock"),
                                       ("shard1/1", "fsyncUnlock"), ("mongos", "balancerStart")]


# -- the cleanup itself fails --


def test_unlock_failure_after_a_good_body_fails_naming_the_member(cluster):
    topology, mongos, cfg, shards = sharded(cluster)
    s0, s1 = shards["host-0"], shards["host-1"]
    s0.members[1].overrides["fsyncUnlock"] = failing(errmsg="unlock broke")
    log = Log()
    with pytest.raises(CleanupFailed) as raised, prepared_members(topology, Credentials(), log=log, timeouts=FAST):
        pass
    message = str(raised.value)
    assert "\n" not in message
    assert f"host-0 (replica set shard0, member {s0.members[1].address}) is still locked" in message
    assert "unlock broke" in message
    assert isinstance(raised.value, DatabaseUnreachable)
    # the others are undone all the same, after 3 attempts on the broken one
    assert s0.members[1].names.count("fsyncUnlock") == FAST.cleanup_attempts
    assert locks(cfg, s1) == [0] * 5 and s0.role(1).lock_count == 1
    assert mongos.names[-1] == "balancerStart" and mongos.role.mode == "full"
    assert any(line.startswith("error: host-0") for line in log)


def test_unlock_that_recovers_on_retry(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",))
    s0 = shards["host-0"]
    s0.members[1].overrides["fsyncUnlock"] = failing(errmsg="busy", times=2)
    with prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert s0.members[1].names.count("fsyncUnlock") == 3 and s0.role(1).lock_count == 0


def test_balancer_restart_failure_after_a_good_body(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",))
    mongos.overrides["balancerStart"] = failing(errmsg="cannot start")
    pattern = r"the balancer \(mongos .*\) is still stopped \(balancerStart: cannot start"
    with pytest.raises(CleanupFailed, match=pattern), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert locks(cfg, shards["host-0"]) == [0] * 5


def test_cleanup_failure_after_a_failed_body_keeps_the_body_error(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",))
    shards["host-0"].members[1].overrides["fsyncUnlock"] = failing(errmsg="unlock broke")
    log = Log()
    with pytest.raises(BodyError), prepared_members(topology, Credentials(), log=log, timeouts=FAST):
        raise BodyError("the dump failed")
    assert any(line.startswith("error: host-0") and "unlock broke" in line for line in log)
    assert mongos.role.mode == "full"


def test_signal_during_the_cleanup_still_lets_every_step_have_its_try(cluster):
    """A second SIGTERM while unlocking: the member being unlocked is reported, the others are still unlocked,
    the balancer restarted, and the run ends as interrupted."""
    topology, mongos, cfg, shards = sharded(cluster)
    s0, s1 = shards["host-0"], shards["host-1"]
    main = threading.main_thread().ident

    def interrupt(signum, frame):
        raise Interrupted("SIGTERM")

    def signal_then_fail(server: Server, doc: dict[str, Any]) -> Any:
        signal.pthread_kill(main, signal.SIGUSR1)  # arrives while the runner waits for this answer
        time.sleep(0.05)
        raise CommandError(2, "too late")

    s0.members[1].overrides["fsyncUnlock"] = signal_then_fail
    log = Log()
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(Interrupted), prepared_members(topology, Credentials(), log=log, timeouts=FAST):
            pass
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert s0.members[1].names.count("fsyncUnlock") == 1  # no retry once interrupted
    assert locks(cfg, s1) == [0] * 5 and s0.role(1).lock_count == 1
    assert mongos.names[-1] == "balancerStart" and mongos.role.mode == "full"
    assert any(line.startswith("error: host-0") and "interrupted" in line for line in log)


# -- bounded waits --


def test_balancer_that_never_stops(cluster):
    topology, mongos, cfg, _ = sharded(cluster)
    mongos.role.rounds = 1 << 30
    started = time.monotonic()
    log = Log()
    pattern = (r"^timed out after 0\.4 s waiting for the balancer \(mongos .*\) to stop and end its balancing round: "
               r"mode 'off', inBalancerRound True$")
    with pytest.raises(PreparationFailed, match=pattern), \
            prepared_members(topology, Credentials(), log=log, timeouts=FAST):
        pass
    assert time.monotonic() - started < 5
    assert mongos.names[-1] == "balancerStart"
    assert all(not m.docs for m in cfg.members)
    assert any(line.startswith("waiting for the balancer") and "s left" in line for line in log)


def test_secondary_that_never_catches_up(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0", "host-1"), **{"host-1": {"m1": {"lag": 1 << 30}}})
    s1 = shards["host-1"]
    secondary = s1.members[1].address
    pattern = (rf"^timed out after 0\.4 s waiting for secondary {secondary} of host-1 \(replica set shard1\) to "
               rf"catch up with its primary: {secondary} has applied the oplog up to 2023-11-14T22:13:10Z \(\+1\), "
               r"the primary was at 2023-11-14T22:13:20Z \(\+5\)$")
    with pytest.raises(PreparationFailed, match=pattern), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert "fsync" not in s1.members[1].names
    assert locks(cfg, *shards.values()) == [0] * 7
    assert cluster.commands()[-3:] == [("cfg/1", "fsyncUnlock"), ("shard0/1", "fsyncUnlock"),
                                       ("mongos", "balancerStart")]


def test_config_secondary_that_never_shows_the_backup_control_write(cluster):
    topology, mongos, cfg, shards = sharded(cluster, ("host-0",), confighost={"m1": {"control_lag": 1 << 30}})
    secondary = cfg.members[1].address
    pattern = (rf"^timed out after 0\.4 s waiting for secondary {secondary} of confighost \(replica set cfg\) to "
               rf"show the BackupControl write: {secondary} shows no BackupControl document, the primary wrote "
               r"counter 1$")
    with pytest.raises(PreparationFailed, match=pattern), \
            prepared_members(topology, Credentials(), log=Log(), timeouts=FAST):
        pass
    assert "fsync" not in cfg.members[1].names
    assert mongos.names[-1] == "balancerStart"


# -- secrets --


def test_no_password_in_errors_or_logs(cluster):
    topology, mongos, _, _ = sharded(cluster, ("host-0",))
    mongos.overrides["saslStart"] = failing(code=18, errmsg="Authentication failed.")
    creds = Credentials(username="backup", password="s3cr3t-pw")
    log = Log()
    with pytest.raises(PreparationFailed) as raised, prepared_members(topology, creds, log=log, timeouts=FAST):
        pass
    assert "Authentication failed" in str(raised.value)
    assert "s3cr3t" not in str(raised.value) and not any("s3cr3t" in line for line in log)
    assert "balancerStart" not in mongos.names  # the balancer was never touched


def test_standalone_is_refused():
    with pytest.raises(ValueError), prepared_members(Topology("standalone", "h", 1), Credentials(), log=Log()):
        pass

