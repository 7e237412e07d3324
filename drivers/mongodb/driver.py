"""The MongoDB driver: pymongo reads and writes mongodump's archive format, one file ``dump`` per snapshot.

Standalone servers and replica sets give one snapshot (host ``host-0`` as Stash's, or ``--hostname``); a
sharded cluster gives ``confighost`` and one ``host-N`` per shard, dumped from locked secondaries in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pymongo

from stash_runner.errors import BadInput

from ..base import Driver, DriverOptions, Endpoint, HostDump, RestoreHost
from . import dump, restore
from .args import DumpArgs, RestoreArgs, parse_dump_args, parse_restore_args
from .connection import Credentials, ReplicaSet, Topology, client, deployment_client, wait_until

log = logging.getLogger("stash_runner")

FILENAME = "dump"
DEFAULT_CONCURRENCY = 3  # Stash's --max-concurrency default


class MongoDriver(Driver):
    filename = FILENAME

    def __init__(self, endpoint: Endpoint, options: DriverOptions):
        self.topology = Topology.from_endpoint(endpoint)
        # Options are checked before anything connects, for the direction this driver is made for.
        self.dump_args: DumpArgs | None = None
        self.restore_args: RestoreArgs | None = None
        if options.purpose == "restore":
            self.restore_args = parse_restore_args(options.args)
        else:
            self.dump_args = parse_dump_args(options.args)
        self.max_parallel_hosts = options.max_concurrency or DEFAULT_CONCURRENCY
        self.creds = Credentials.from_endpoint(endpoint, user=options.user, auth_database=options.auth_database,
                                               scratch_dir=options.scratch_dir)
        t = self.topology
        if t.kind == "replicaset":
            assert t.replica_set is not None
            where = f"replica set {t.replica_set.name or '?'} ({', '.join(t.replica_set.seeds)})"
        else:
            where = f"{t.host}" if t.srv or t.port is None else f"{t.host}:{t.port}"
            if t.kind == "sharded":
                where = f"sharded cluster at {where}"
        self.target = f"MongoDB {where} ({endpoint.ref})"

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> MongoDriver:
        return cls(endpoint, options)

    # -- connections -------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with contextlib.closing(deployment_client(self.topology, self.creds)) as c:

            def ping() -> None:
                # each attempt ends by the deadline, and soon enough that the wait is reported while it lasts
                with pymongo.timeout(max(0.1, min(2.0, deadline - time.monotonic()))):
                    c.admin.command("ping")

            wait_until(self.target, ping, timeout, log.info)

    # -- backup ------------------------------------------------------------------------------

    def dump(self) -> AbstractContextManager[dump.MongoDump]:
        assert self.dump_args is not None, "made for a restore"
        return dump.MongoDump(self.topology, self.creds, self.dump_args, self.target)

    def backup_hosts(self, hostname: str) -> AbstractContextManager[list[HostDump]]:
        if self.dump_args is None:
            raise BadInput("the MongoDB driver was made for a restore")
        if self.topology.kind == "sharded":
            return self._sharded_hosts()
        return contextlib.nullcontext([HostDump(hostname, self.dump)])

    @contextlib.contextmanager
    def _sharded_hosts(self) -> Iterator[list[HostDump]]:
        from .sharded import prepared_members

        assert self.dump_args is not None
        args = self.dump_args
        with prepared_members(self.topology, self.creds, log=log.info) as members:
            yield [HostDump(m.hostname, lambda m=m: dump.MongoDump(self.topology, self.creds, args, self.target,
                                                                    member=m)) for m in members]

    # -- restore -----------------------------------------------------------------------------

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        """A sharded cluster's snapshots go back member by member, each into its replica set's primary (as
        Stash restores them: not through the mongos); anything else is one host."""
        t = self.topology
        if t.kind != "sharded":
            return super().restore_hosts(hostname)
        assert t.config_server is not None
        sets = {"confighost": t.config_server, **t.shards}
        return [RestoreHost(name, lambda chunks, rs=rs: self._restore_into(rs, chunks)) for name, rs in sets.items()]

    def _restore_into(self, rs: ReplicaSet, chunks: Iterator[bytes]) -> None:
        assert self.restore_args is not None, "made for a backup"
        with contextlib.closing(client(self.creds, list(rs.seeds), replica_set=rs.name)) as c:
            restore.restore_archive(c, self.restore_args, chunks, f"{self.target}, replica set {rs.name}")

    def restore(self, chunks: Iterator[bytes]) -> None:
        assert self.restore_args is not None, "made for a backup"
        with contextlib.closing(deployment_client(self.topology, self.creds)) as c:
            restore.restore_archive(c, self.restore_args, chunks, self.target)

    def close(self) -> None:
        self.creds.close()
