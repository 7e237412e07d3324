"""A consistent backup of a sharded cluster or a replica set: the balancer stopped, one secondary per set locked.

``prepared_members`` is used around the per-host dumps. It does what Stash's MongoDB addon does (MongoDB's
documented method for dumping a sharded cluster), with its defects fixed:

1. Sharded only, through the mongos: ``balancerStatus``; unless the balancer is already off, ``balancerStop``
   (with ``maxTimeMS``), then ``balancerStatus`` until ``mode: "off"`` and ``inBalancerRound: false``. The
   whole stop is bounded by ``Timeouts.balancer``. A balancer that was off before the run is left off.
2. For each replica set, config server first, then the shards in host order (host-2 before host-10; Stash
   visits them in Go's random map order): ``replSetGetConfig`` and ``replSetGetStatus`` on the primary; the
   first member, in the set's order, that is SECONDARY (state 2), healthy, and neither hidden, delayed, an
   arbiter nor built without indexes is chosen. A set without one is dumped from its primary, unlocked (as
   Stash does). On the chosen member (a direct connection): ``currentOp``; a ``fsyncLock: true`` left by an
   earlier run that died is undone with ``fsyncUnlock`` (until its ``lockCount`` is 0), loudly. Then
   ``replSetGetStatus`` until its optime reaches the primary's optime as first seen, bounded by
   ``Timeouts.catch_up`` (Stash waits for the moving primary optime, without a bound).
3. Config server only: ``findAndModify`` of ``config.BackupControl`` (``$inc counter``, write concern
   majority, wtimeout 15 s) on the primary, then a ``find`` of it on the chosen secondary with read concern
   majority until the secondary shows that counter, bounded by ``Timeouts.catch_up``.
4. ``{fsync: 1, lock: true}`` on the chosen secondary, remembered for the cleanup.
5. The members are yielded, one per snapshot.
6. Leaving, always (success, an error in any step or in the body, KeyboardInterrupt, ``Interrupted`` and
   ``TimedOut``): ``fsyncUnlock`` on every member this run locked, each attempted even if another fails, then
   ``balancerStart`` if this run stopped the balancer, each with a few bounded attempts. Members are unlocked
   first (Stash restarts the balancer first): chunk migrations then start against writable members, and no
   migration can start while a member is still locked. A failure is logged as one line naming the member;
   after a successful body it fails the backup (``CleanupFailed``); after a failed body the body's error
   stays the one raised.

Errors: ``PreparationFailed`` (a command failed or a bounded wait ran out before anything was dumped) and
``CleanupFailed`` (what the run did could not be undone); both are ``DatabaseUnreachable`` (exit code 5), so
callers that catch that keep working. No credential is ever part of a message: they only reach pymongo.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymongo
from bson.timestamp import Timestamp
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

from stash_runner.errors import DatabaseUnreachable, one_line

from .connection import Credentials, ReplicaSet, Topology, _host_order, client, describe_error, wait_until

CONFIG_HOST = "confighost"  # Stash's snapshot host name for the config server
BACKUP_CONTROL_ID = "BackupControlDocument"
BACKUP_CONTROL_WTIMEOUT_MS = 15000
# fsyncUnlock calls for a lock left over by earlier runs (each run leaves at most one; lockCount counts them)
MAX_LEFTOVER_UNLOCKS = 100
# fsyncUnlock answers IllegalOperation "fsyncUnlock called when not locked"
_ILLEGAL_OPERATION = 20
_MAX_TIME_EXPIRED = 50


class PreparationFailed(DatabaseUnreachable):
    """The cluster could not be prepared for a consistent backup: a command failed, or a bounded wait (balancer,
    catch-up) ran out. Nothing was dumped; what was done so far has been undone."""


class CleanupFailed(DatabaseUnreachable):
    """What the backup did to the cluster could not be undone: a member is still locked against writes, or the
    balancer is still stopped. The backup must not count as a success."""


@dataclass(frozen=True)
class Timeouts:
    balancer: float = 300.0  # s: stopping the balancer and waiting for its round to end
    catch_up: float = 300.0  # s, per replica set: the chosen secondary catching up with its primary
    poll: float = 1.0  # s between two looks at a status
    cleanup_attempts: int = 5  # per fsyncUnlock and balancerStart
    cleanup_interval: float = 2.0  # s between two attempts
    command: float = 300.0  # s: the longest wait for one command's answer (an fsync lock waits for running writes)


@dataclass(frozen=True)
class Member:
    """One snapshot to write: its host name (``confighost``, ``host-N``) and the member to dump it from."""

    hostname: str
    replica_set: str
    address: str  # "host:port": the locked secondary, or the primary when the set has no usable secondary
    locked: bool


@contextlib.contextmanager
def prepared_members(topology: Topology, creds: Credentials, *, log: Callable[[str], None],
                     timeouts: Timeouts = Timeouts(), lock: bool = True) -> Iterator[list[Member]]:
    """Prepare a sharded cluster (or a replica set) for its dumps and yield the members to dump, config server
    first, then host-0, host-1, ... For a replica set: one member, ``host-0``. ``lock=False`` skips the fsync
    locks (the rest is the same). Leaving undoes everything this run did; see the module's documentation."""
    if topology.kind not in ("sharded", "replicaset"):
        raise ValueError(f"prepared_members: a {topology.kind} has no members to prepare")
    run = _Run(topology, creds, log, timeouts, lock)
    try:
        try:
            members = run.prepare()
            yield members
        except BaseException:
            run.undo()  # logs what it could not undo; the error that brought us here stays the one raised
            raise
        failures = run.undo()
        if run.interrupted is not None:
            raise run.interrupted
        if failures:
            raise CleanupFailed("the backup could not undo its changes to the cluster: " + "; ".join(failures))
    finally:
        run.close()


class _NotYet(PyMongoError):
    """A wait's condition does not hold yet (``wait_until`` tries again until its timeout)."""


@dataclass
class _Lock:
    hostname: str
    replica_set: str
    address: str
    conn: pymongo.MongoClient
    confirmed: bool = False  # False while (or if) the fsync lock's answer was not received

    def __str__(self) -> str:
        return f"{self.hostname} (replica set {self.replica_set}, member {self.address})"


class _Run:
    def __init__(self, topology: Topology, creds: Credentials, log: Callable[[str], None], timeouts: Timeouts,
                 lock: bool):
        self.topology = topology
        self.creds = creds
        self.log = log
        self.timeouts = timeouts
        self.lock = lock
        self.clients: list[pymongo.MongoClient] = []
        self.mongos: pymongo.MongoClient | None = None
        self.balancer_stopped = False
        self.locks: list[_Lock] = []
        self.interrupted: BaseException | None = None

    @property
    def mongos_address(self) -> str:
        t = self.topology
        return f"{t.host}:{t.port}" if t.port and not t.srv else t.host

    def _client(self, hosts: list[str] | str, *, wait: float = 0.0, **kwargs: Any) -> pymongo.MongoClient:
        """A client whose commands never wait more than ``Timeouts.command`` (+ ``wait`` s) for their answer."""
        kwargs.setdefault("socketTimeoutMS", max(1, int((self.timeouts.command + wait) * 1000)))
        c = client(self.creds, hosts, **kwargs)
        self.clients.append(c)
        return c

    # -- preparing --

    def prepare(self) -> list[Member]:
        t = self.topology
        if t.kind == "sharded":
            assert t.config_server is not None
            self._stop_balancer()
            shards = sorted(t.shards.items(), key=lambda kv: _host_order(kv[0]))
            sets = [(CONFIG_HOST, t.config_server, True)] + [(host, rs, False) for host, rs in shards]
        else:
            assert t.replica_set is not None
            sets = [("host-0", t.replica_set, False)]
        return [self._prepare_set(hostname, rs, is_config) for hostname, rs, is_config in sets]

    def _stop_balancer(self) -> None:
        t = self.topology
        where = f"the balancer (mongos {self.mongos_address})"
        deadline = time.monotonic() + self.timeouts.balancer
        # balancerStop is answered once the balancer's round ends, within its maxTimeMS
        self.mongos = self._client(t.host, port=t.port, srv=t.srv, wait=self.timeouts.balancer)
        status = _command(self.mongos, where, "balancerStatus")
        if status.get("mode") == "off":
            self.log(f"{where} is already off: it stays off after the backup")
            if not status.get("inBalancerRound"):
                return
        else:
            self.log(f"stopping {where}")
            # Even a balancerStop that fails or times out may have switched the balancer off: restart it anyway.
            self.balancer_stopped = True
            max_ms = max(1, int(self.timeouts.balancer * 1000))
            try:
                self.mongos.admin.command({"balancerStop": 1, "maxTimeMS": max_ms})
            except OperationFailure as e:
                if e.code == _MAX_TIME_EXPIRED:
                    raise PreparationFailed(f"timed out after {self.timeouts.balancer:g} s waiting for {where} to "
                                            f"stop: balancerStop: {_describe(e)}") from e
                raise PreparationFailed(f"{where}: balancerStop: {_describe(e)}") from e
            except PyMongoError as e:
                raise PreparationFailed(f"{where}: balancerStop: {_describe(e)}") from e

        def stopped() -> None:
            s = _poll(self.mongos, where, "balancerStatus")
            if s.get("mode") != "off" or s.get("inBalancerRound"):
                raise _NotYet(f"mode {s.get('mode')!r}, inBalancerRound {s.get('inBalancerRound')}")

        _wait(f"{where} to stop and end its balancing round", stopped, deadline - time.monotonic(), self.log,
              self.timeouts.poll, self.timeouts.balancer)
        self.log(f"{where} is stopped")

    def _prepare_set(self, hostname: str, rs: ReplicaSet, is_config: bool) -> Member:
        label = f"{hostname} (replica set {rs.name or ', '.join(rs.seeds)})"
        conn = self._client(list(rs.seeds), replica_set=rs.name)
        config = _command(conn, label, "replSetGetConfig").get("config") or {}
        status = _command(conn, label, "replSetGetStatus")
        set_name = str(status.get("set") or rs.name)
        label = f"{hostname} (replica set {set_name})"
        members = status.get("members") or []
        primary = next((m for m in members if m.get("state") == 1), None)
        if primary is None:
            raise PreparationFailed(f"{label}: replSetGetStatus shows no PRIMARY")
        settings = {m.get("_id"): m for m in config.get("members") or []}
        if is_config:
            voters = [m for m in settings.values() if not m.get("arbiterOnly")]
            if len(voters) < 3:
                self.log(f"warning: {label} has {len(voters)} data-bearing members: locking a secondary of a "
                         "config server with fewer than 3 can stall sharding commands until it is unlocked")
        chosen = _choose_secondary(members, settings)
        if chosen is None:
            self.log(f"warning: {label} has no healthy secondary: dumping it from its primary {primary.get('name')}"
                     " without a lock (writes go on during its dump)")
            return Member(hostname, set_name, str(primary.get("name")), locked=False)
        address = str(chosen.get("name"))
        self.log(f"{label}: dumping from secondary {address}")
        direct = self._client(address, direct=True, read_preference="secondaryPreferred")
        self._undo_leftover_lock(direct, label, address)
        self._wait_caught_up(conn, label, chosen, primary, status)
        if is_config:
            self._backup_control(conn, direct, label, address)
        if self.lock:
            self._fsync_lock(direct, hostname, set_name, address, label)
        return Member(hostname, set_name, address, locked=self.lock)

    def _undo_leftover_lock(self, direct: pymongo.MongoClient, label: str, address: str) -> None:
        where = f"{label}, member {address}"
        ops = _command(direct, where, {"currentOp": 1, "$ownOps": True})
        if not ops.get("fsyncLock"):
            return
        self.log(f"warning: {where} is still locked against writes (fsyncLock), most likely by an earlier backup "
                 "that did not finish: unlocking it")
        for _ in range(MAX_LEFTOVER_UNLOCKS):
            try:
                reply = direct.admin.command("fsyncUnlock")
            except OperationFailure as e:
                if _not_locked(e):
                    return
                raise PreparationFailed(f"{where}: fsyncUnlock of a lock left by an earlier run: {_describe(e)}") \
                    from e
            except PyMongoError as e:
                raise PreparationFailed(f"{where}: fsyncUnlock of a lock left by an earlier run: {_describe(e)}") \
                    from e
            if not reply.get("lockCount"):  # 0, or absent (a server that keeps no count)
                self.log(f"{where}: unlocked")
                return
        raise PreparationFailed(f"{where}: still locked after {MAX_LEFTOVER_UNLOCKS} fsyncUnlock commands")

    def _wait_caught_up(self, conn: pymongo.MongoClient, label: str, chosen: dict[str, Any],
                        primary: dict[str, Any], status: dict[str, Any]) -> None:
        address = chosen.get("name")
        target = _optime(primary)
        if target is None:
            self.log(f"warning: {label}: replSetGetStatus gives the primary no optime: not waiting for {address}")
            return

        def behind(s: dict[str, Any]) -> str | None:
            me = next((m for m in s.get("members") or [] if m.get("_id") == chosen.get("_id")), None)
            if me is None or me.get("state") != 2 or me.get("health") != 1:
                state = "gone from the set" if me is None else f"{me.get('stateStr', me.get('state'))}, health " \
                                                              f"{me.get('health')}"
                raise PreparationFailed(f"{label}: {address} is no longer a healthy secondary ({state})")
            seen = _optime(me)
            if seen is not None and seen >= target:
                return None
            return f"{address} has applied the oplog up to {_show(seen)}, the primary was at {_show(target)}"

        if behind(status) is None:
            return

        def caught_up() -> None:
            lag = behind(_poll(conn, label, "replSetGetStatus"))
            if lag:
                raise _NotYet(lag)

        _wait(f"secondary {address} of {label} to catch up with its primary", caught_up, self.timeouts.catch_up,
              self.log, self.timeouts.poll, self.timeouts.catch_up)

    def _backup_control(self, conn: pymongo.MongoClient, direct: pymongo.MongoClient, label: str,
                        address: str) -> None:
        """MongoDB's way to make sure a config server secondary has every write made before the backup."""
        majority = WriteConcern(w="majority", wtimeout=BACKUP_CONTROL_WTIMEOUT_MS)
        control = conn.config.get_collection("BackupControl", write_concern=majority)
        try:
            doc = control.find_one_and_update({"_id": BACKUP_CONTROL_ID}, {"$inc": {"counter": 1}}, upsert=True,
                                              return_document=ReturnDocument.AFTER)
        except PyMongoError as e:
            raise PreparationFailed(f"{label}: findAndModify config.BackupControl on the primary: {_describe(e)}") \
                from e
        counter = (doc or {}).get("counter")
        if not isinstance(counter, int):
            raise PreparationFailed(f"{label}: findAndModify config.BackupControl returned no counter")
        replica = direct.config.get_collection("BackupControl", read_concern=ReadConcern("majority"),
                                               read_preference=ReadPreference.SECONDARY_PREFERRED)

        def seen() -> None:
            try:
                found = replica.find_one({"_id": BACKUP_CONTROL_ID})
            except OperationFailure as e:
                raise PreparationFailed(f"{label}: find config.BackupControl on {address}: {_describe(e)}") from e
            have = (found or {}).get("counter")
            if not isinstance(have, int) or have < counter:
                shows = "no BackupControl document" if have is None else f"BackupControl counter {have}"
                raise _NotYet(f"{address} shows {shows}, the primary wrote counter {counter}")

        _wait(f"secondary {address} of {label} to show the BackupControl write", seen, self.timeouts.catch_up,
              self.log, self.timeouts.poll, self.timeouts.catch_up)

    def _fsync_lock(self, direct: pymongo.MongoClient, hostname: str, set_name: str, address: str,
                    label: str) -> None:
        entry = _Lock(hostname, set_name, address, direct)
        self.locks.append(entry)  # before the command: if its answer is lost, the cleanup still unlocks
        try:
            reply = direct.admin.command({"fsync": 1, "lock": True})
        except OperationFailure as e:
            self.locks.remove(entry)  # the member refused: there is no lock to undo
            raise PreparationFailed(f"{label}: fsync lock on {address}: {_describe(e)}") from e
        except PyMongoError as e:
            raise PreparationFailed(f"{label}: fsync lock on {address}: {_describe(e)}") from e
        entry.confirmed = True
        self.log(f"{label}: locked {address} against writes (lockCount {reply.get('lockCount', '?')})")

    # -- undoing --

    def undo(self) -> list[str]:
        """Unlock every member this run locked, then restart the balancer if this run stopped it. Each step is
        attempted whatever happened to the others; returns what could not be undone (each already logged)."""
        failures = []
        for entry in self.locks:
            error = self._attempts(lambda entry=entry: self._unlock(entry))
            if error:
                failures.append(f"{entry} is still locked against writes (fsyncUnlock: {error}): run db.fsyncUnlock() "
                                "on it")
        self.locks = []
        if self.balancer_stopped and self.mongos is not None:
            where = f"the balancer (mongos {self.mongos_address})"
            error = self._attempts(lambda: self._start_balancer(where))
            if error:
                failures.append(f"{where} is still stopped (balancerStart: {error}): run sh.startBalancer()")
            self.balancer_stopped = False
        for failure in failures:
            self.log(f"error: {failure}")
        return failures

    def _attempts(self, action: Callable[[], None]) -> str | None:
        """None once ``action`` succeeds, else its last error, after ``Timeouts.cleanup_attempts`` tries (one once
        the run was interrupted during the cleanup: the remaining steps still get their try)."""
        error = "not attempted"
        attempts = max(1, self.timeouts.cleanup_attempts)
        for attempt in range(attempts):
            if attempt and self.interrupted is not None:
                break
            try:
                if attempt:
                    time.sleep(self.timeouts.cleanup_interval)
                action()
                return None
            except PyMongoError as e:
                error = _describe(e)
            except Exception as e:  # any failure is reported, and the other steps still run
                error = describe_error(e)
            except BaseException as e:  # Interrupted, TimedOut, KeyboardInterrupt during the cleanup
                if self.interrupted is None:
                    self.interrupted = e
                error = f"interrupted: {type(e).__name__}"
        return error

    def _unlock(self, entry: _Lock) -> None:
        try:
            reply = entry.conn.admin.command("fsyncUnlock")
        except OperationFailure as e:
            if not _not_locked(e):
                raise
            if entry.confirmed:
                self.log(f"warning: {entry} was already unlocked by someone else")
            return
        left = reply.get("lockCount")
        if left:
            self.log(f"warning: {entry}: unlocked, but {left} fsync lock(s) taken by someone else remain")
        else:
            self.log(f"{entry}: unlocked")

    def _start_balancer(self, where: str) -> None:
        assert self.mongos is not None
        self.mongos.admin.command({"balancerStart": 1})
        self.log(f"{where}: restarted")

    def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.close()
        self.clients = []


def _command(conn: pymongo.MongoClient, where: str, command: str | dict[str, Any]) -> dict[str, Any]:
    """An admin command that must succeed; any failure is PreparationFailed naming where and what."""
    name = command if isinstance(command, str) else next(iter(command))
    try:
        return conn.admin.command(command)
    except PyMongoError as e:
        raise PreparationFailed(f"{where}: {name}: {_describe(e)}") from e


def _poll(conn: pymongo.MongoClient, where: str, command: str) -> dict[str, Any]:
    """A status command inside a wait: an error answer is final; a lost connection is tried again."""
    try:
        return conn.admin.command(command)
    except ConnectionFailure:
        raise
    except PyMongoError as e:
        raise PreparationFailed(f"{where}: {command}: {_describe(e)}") from e


def _wait(what: str, check: Callable[[], None], timeout: float, log: Callable[[str], None], interval: float,
          bound: float) -> None:
    """``wait_until``, with PreparationFailed naming the wait and its bound (``bound`` s; ``timeout`` of them left)."""
    last: list[str] = []

    def recorded() -> None:
        try:
            check()
        except _NotYet as e:
            last[:] = [str(e)]
            raise

    try:
        wait_until(what, recorded, max(0.0, timeout), log, interval=interval)
    except PreparationFailed:
        raise
    except DatabaseUnreachable as e:
        detail = last[0] if last else str(e)
        raise PreparationFailed(f"timed out after {bound:g} s waiting for {what}: {detail}") from None


def _choose_secondary(members: list[dict[str, Any]], settings: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """The first healthy SECONDARY, in the set's order, whose data is complete and current: not an arbiter, not
    hidden, not delayed, built with its indexes (a dump reads the index definitions from the member)."""
    for m in members:
        if m.get("state") != 2 or m.get("health") != 1:
            continue
        s = settings.get(m.get("_id"), {})
        delayed = s.get("secondaryDelaySecs") or s.get("slaveDelay")
        if s.get("arbiterOnly") or s.get("hidden") or delayed or s.get("buildIndexes") is False:
            continue
        return m
    return None


def _optime(member: dict[str, Any]) -> Timestamp | None:
    """How far a member has applied the oplog: ``optime.ts`` (protocol version 1), else ``optimeDate``."""
    op = member.get("optime")
    if isinstance(op, dict):
        op = op.get("ts")
    if isinstance(op, Timestamp):
        return op
    date = member.get("optimeDate")
    if isinstance(date, datetime):
        return Timestamp(date, 0)
    return None


def _show(ts: Timestamp | None) -> str:
    return "nothing" if ts is None else f"{ts.as_datetime():%Y-%m-%dT%H:%M:%SZ} (+{ts.inc})"


def _not_locked(e: OperationFailure) -> bool:
    return e.code == _ILLEGAL_OPERATION or "not locked" in str((e.details or {}).get("errmsg", ""))


def _describe(e: PyMongoError) -> str:
    """An error as one line: a server's errmsg and code, or pymongo's text without its topology dump."""
    if isinstance(e, OperationFailure) and isinstance(e.details, dict) and e.details.get("errmsg"):
        name = e.details.get("codeName")
        code = f" (code {e.code}{' ' + str(name) if name else ''})" if e.code is not None else ""
        return one_line(e.details["errmsg"]) + code
    return describe_error(e)
