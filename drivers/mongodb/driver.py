"""The MongoDB driver: pymongo reads and writes mongodump's archive format, one file ``dump`` per snapshot.

Standalone servers and replica sets give one snapshot (host ``host-0`` as Stash's, or ``--hostname``); a
sharded cluster gives ``confighost`` and one ``host-N`` per shard, dumped from locked secondaries in parallel.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager

from stash_runner.errors import BadInput

from ..base import Driver, DriverOptions, Endpoint, HostDump
from . import dump, restore
from .args import DumpArgs, RestoreArgs, parse_dump_args, parse_restore_args
from .connection import Credentials, Topology, deployment_client, wait_until

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
        with contextlib.closing(deployment_client(self.topology, self.creds)) as c:
            wait_until(self.target, lambda: c.admin.command("ping"), timeout, log.info)

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

    def restore(self, chunks: Iterator[bytes]) -> None:
        assert self.restore_args is not None, "made for a backup"
        with contextlib.closing(deployment_client(self.topology, self.creds)) as c:
            restore.restore_archive(c, self.restore_args, chunks, self.target)

    def close(self) -> None:
        self.creds.close()
