"""Dumping MongoDB into mongodump's archive format, through pymongo, into a pipe the backup reads.

What is dumped follows mongodump: every database but ``local`` and ``config`` (or what ``--db``/``--collection``
select), each collection's options, indexes, UUID and type in the prelude, documents as raw BSON (never
decoded), views as metadata only, time-series collections as their buckets, ``admin``'s users, roles and
version when everything is dumped, and with ``--oplog`` the oplog entries written while the dump ran, so that
a restore replays them to one point in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from stash_runner import __version__
from stash_runner.errors import BadInput, DatabaseUnreachable, RunnerError, ToolFailed

from ..base import Item
from . import archive
from .args import DumpArgs
from .connection import Credentials, Topology, deployment_client, describe_error, member_client

if TYPE_CHECKING:
    from .sharded import Member

log = logging.getLogger("stash_runner")

PATH = "/dump"
RAW = CodecOptions(document_class=RawBSONDocument)
# Documents are written in blocks of about this size. Parallel collections interleave their blocks in the order
# they come, which differs from one dump to the next: the chunks that span a block's edges are new every time,
# so large blocks keep an unchanged database's second backup small (mongodump buffers up to 16 MiB too).
BLOCK_BYTES = 8 << 20
_PIPE_SIZE = 1 << 20
OPLOG_NS = ("", "oplog")
COMMAND_NOT_FOUND = 59


@dataclass
class Intent:
    """One collection to dump (mongodump's word): its database and its metadata."""

    db: str
    meta: archive.Metadata

    @property
    def name(self) -> str:
        return self.meta.collection_name

    @property
    def source(self) -> str | None:
        """The collection its documents come from, and the namespace they go under in the archive: none for a
        view, the buckets of a time-series collection (as mongodump writes them)."""
        if self.meta.type == "view":
            return None
        return f"system.buckets.{self.name}" if self.meta.type == "timeseries" else self.name


def skip_system(db: str, name: str) -> bool:
    """mongodump's reserved namespaces: never dumped (``admin``'s users, roles and version are)."""
    if db == "admin":
        return name == "system.keys"
    if db == "config":
        return name in ("transactions", "system.sessions", "transaction_coordinators", "system.indexBuilds",
                        "image_collection", "mongos", "system.preimages") or name.startswith("cache.")
    if name == "system.js":
        return False
    return name.startswith("system.") or ("$" in name and ".oplog.$" not in name)


class MongoDump:
    """A dump written by a thread into a pipe; the pipe's read end is the snapshot's one file, ``/dump``."""

    def __init__(self, topology: Topology, creds: Credentials, args: DumpArgs, target: str,
                 member: Member | None = None):
        self.topology = topology
        self.creds = creds
        self.args = args
        self.member = member
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self.stream = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed in __exit__
        self._out = open(write_fd, "wb", buffering=0)  # noqa: SIM115 - closed by the dump thread
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.where = target if member is None else f"{member.hostname} ({member.address})"
        self._thread = threading.Thread(target=self._run, name="mongodump", daemon=True)
        self._thread.start()

    def items(self) -> list[Item]:
        return [Item(PATH, self.stream)]

    def finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> MongoDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.stream.close()  # a writer blocked on the full pipe gets EPIPE and stops
        self._thread.join()

    def _client(self) -> MongoClient:
        if self.member is not None:
            return member_client(self.creds, self.member.address)
        if self.topology.kind == "replicaset":
            return _chosen_member_client(self.topology, self.creds)
        return deployment_client(self.topology, self.creds, read_preference=self.args.read_preference or "primary")

    def _run(self) -> None:
        out = self._out
        try:
            with contextlib.closing(self._client()) as client:
                _Dumper(client, self.args, out, self._stop, oplog=self._wants_oplog(), where=self.where).run()
        except BrokenPipeError:
            if not self._stop.is_set():
                self._error = ToolFailed(f"dump of {self.where}: the backup stopped reading")
        except RunnerError as e:
            self._error = e
        except PyMongoError as e:
            self._error = ToolFailed(f"dump of {self.where} failed: {describe_error(e)}")
        except BaseException as e:  # noqa: BLE001 - reported by finish() in the main thread
            self._error = e
        finally:
            with contextlib.suppress(OSError):
                out.close()

    def _wants_oplog(self) -> bool:
        """As Stash: the oplog for every replica set member unless the dump is of selected databases."""
        if self.args.oplog:
            return True
        return self.topology.kind != "standalone" and self.args.everything


def _chosen_member_client(topology: Topology, creds: Credentials) -> MongoClient:
    """A replica set is dumped from one member, so that its data and its oplog agree: a healthy secondary
    that has caught up, else the primary. A server without replSetGetConfig (FerretDB) is asked through the
    topology pymongo discovers: its first secondary, else its primary."""
    from .sharded import PreparationFailed, prepared_members

    try:
        with prepared_members(topology, creds, log=log.info, lock=False) as members:
            address = members[0].address
    except PreparationFailed as e:
        cause = e.__cause__
        if not (isinstance(cause, OperationFailure) and cause.code == COMMAND_NOT_FOUND):
            raise
        with contextlib.closing(deployment_client(topology, creds)) as c:
            c.admin.command("ping")
            members_seen = sorted(f"{h}:{p}" for h, p in c.secondaries) or [f"{h}:{p}" for h, p in [c.primary]]
        address = members_seen[0]
    log.info("dumping replica set %s from %s", topology.replica_set.name if topology.replica_set else "?", address)
    return member_client(creds, address)


class _Dumper:
    def __init__(self, client: MongoClient, args: DumpArgs, out: Any, stop: threading.Event, *, oplog: bool,
                 where: str):
        self.client = client
        self.args = args
        self.stop = stop
        self.oplog = oplog
        self.where = where
        self.out = out

    def run(self) -> None:
        start = self._oplog_start() if self.oplog else None
        intents = self._intents()
        info = self.client.admin.command("buildInfo")
        writer = archive.ArchiveWriter(self.out, gzip=self.args.gzip)
        header = archive.Header(concurrent_collections=self.args.parallel, version=archive.FORMAT_VERSION,
                                server_version=_version(info.get("version")),
                                tool_version=f"stash-runner {__version__}")
        metas = [archive.CollectionMetadata.from_metadata(i.db, i.meta) for i in intents]
        if start is not None:
            metas.append(archive.CollectionMetadata(*archive.OPLOG))
        writer.write_prelude(header, metas)
        data = [i for i in intents if i.source is not None]
        with ThreadPoolExecutor(max(1, min(self.args.parallel, len(data) or 1)), thread_name_prefix="mongo") as pool:
            for future in [pool.submit(self._collection, writer, i) for i in data]:
                future.result()
        for i in intents:
            if i.source is None:
                writer.end(i.db, i.name)  # a view: an empty namespace, which is what makes mongorestore create it
        if start is not None:
            self._oplog(writer, start)
        writer.close()
        log.info("dumped %d collection(s) of %s%s", len(intents), self.where,
                 " with the oplog" if start is not None else "")

    # -- what to dump --------------------------------------------------------------------------

    def _intents(self) -> list[Intent]:
        args = self.args
        # local and config only when named, as mongodump
        names = [args.db] if args.db else [n for n in self.client.list_database_names() if n not in ("local", "config")]
        intents = []
        for db in sorted(names):
            for info in self.client[db].list_collections():
                name = info["name"]
                if args.collection and name != args.collection:
                    continue
                if not args.collection and skip_system(db, name):
                    continue
                if name in args.exclude_collections or any(name.startswith(p) for p in args.exclude_prefixes):
                    continue
                kind = info.get("type") or "collection"
                indexes = [] if kind == "view" else [dict(ix) for ix in self.client[db][name].list_indexes()]
                intents.append(Intent(db, archive.Metadata(
                    collection_name=name, type=kind, options=dict(info.get("options") or {}), indexes=indexes,
                    uuid=_uuid((info.get("info") or {}).get("uuid")))))
        if args.db and args.collection and not intents:
            raise BadInput(f"--mongo-args: collection {args.db}.{args.collection} does not exist")
        return intents

    # -- documents -----------------------------------------------------------------------------

    def _collection(self, writer: archive.ArchiveWriter, intent: Intent) -> None:
        assert intent.source is not None
        coll = self.client[intent.db].get_collection(intent.source, codec_options=RAW)
        query = self.args.query or {}
        for block in _blocks(coll.find(query, batch_size=1000), self.stop):
            writer.write_block(intent.db, intent.source, block)
        writer.end(intent.db, intent.source)

    # -- the oplog -----------------------------------------------------------------------------

    def _oplog_coll(self):  # noqa: ANN202 - a pymongo Collection
        return self.client.local.get_collection("oplog.rs", codec_options=RAW)

    def _oplog_start(self) -> Timestamp:
        """Where the oplog of this dump starts: the oldest open transaction, else the newest entry."""
        hello = self.client.admin.command("hello")
        if "setName" not in hello:
            raise BadInput(f"{self.where}: --oplog needs a replica set member (this server is standalone)")
        with contextlib.suppress(PyMongoError):
            open_txn = self.client.config.transactions.find_one(
                {"state": {"$in": ["prepared", "inProgress"]}}, sort=[("startOpTime", 1)])
            if open_txn is not None:
                return open_txn["startOpTime"]["ts"]
        newest = self.client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])
        if newest is None:
            raise ToolFailed(f"{self.where}: the oplog (local.oplog.rs) is empty")
        return newest["ts"]

    def _oplog(self, writer: archive.ArchiveWriter, start: Timestamp) -> None:
        newest = self.client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])
        end = newest["ts"] if newest else start
        oldest = self.client.local["oplog.rs"].find_one({}, sort=[("$natural", 1)])
        if oldest is not None and oldest["ts"] > start:
            raise ToolFailed(f"{self.where}: the oplog rolled over during the dump (its oldest entry is newer "
                             "than the dump's start); make the oplog larger or the dump faster")
        cursor = self._oplog_coll().find({"$and": [{"ts": {"$gte": start}}, {"ts": {"$lte": end}}]}, batch_size=1000)
        for block in _blocks(cursor, self.stop, check=_oplog_entry_ok):
            writer.write_block(*OPLOG_NS, block)
        writer.end(*OPLOG_NS)


def _uuid(value: Any) -> uuid.UUID | None:
    """A collection's UUID (pymongo gives a UUID or a subtype-4 Binary)."""
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(bytes=bytes(value))


def _version(value: Any) -> str:
    """The server's version as X.Y.Z, the form mongorestore parses (a server may say "7.0.42-ferretdb")."""
    m = re.match(r"\d+\.\d+\.\d+", str(value or ""))
    return m.group(0) if m else "0.0.0"


def _oplog_entry_ok(doc: RawBSONDocument) -> None:
    """mongodump's refusals: what a replay could not reproduce."""
    if doc.get("ns") == "admin.system.version":
        raise ToolFailed("cannot dump with the oplog while admin.system.version changes")
    o = doc.get("o")
    if o is not None and "renameCollection" in o:
        raise ToolFailed("cannot dump with the oplog while collections are renamed")


def _blocks(cursor: Iterator[RawBSONDocument], stop: threading.Event, check=None) -> Iterator[list[bytes]]:  # noqa: ANN001
    block: list[bytes] = []
    size = 0
    for doc in cursor:
        if check is not None:
            check(doc)
        raw = doc.raw
        block.append(raw)
        size += len(raw)
        if size >= BLOCK_BYTES:
            if stop.is_set():
                raise DatabaseUnreachable("dump stopped")
            yield block
            block, size = [], 0
    if block:
        yield block
