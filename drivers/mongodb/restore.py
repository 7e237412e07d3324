"""Restoring a mongodump archive through pymongo, as mongorestore does.

Collections are created with their options first (``--drop`` drops them before), documents are inserted as
raw BSON in parallel batches while the archive streams in, indexes are built once a collection's documents
are in, then views, users and roles, and last the oplog entries (replayed to the dump's point in time). A
restore that fails part-way says which namespaces were restored completely and which only in part.
"""

from __future__ import annotations

import collections
import io
import logging
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, PyMongoError

from stash_runner.errors import BadInput, RunnerError, ToolFailed

from . import apply, archive
from .args import RestoreArgs
from .connection import describe_error
from .namespaces import Namespaces

log = logging.getLogger("stash_runner")

DUPLICATE_KEY = 11000
BUCKETS = "system.buckets."
MAX_WORKERS = 16
# Oplog entries arrive last; they are kept here (in memory up to this size, then in a temporary file) until
# every collection is restored.
OPLOG_SPOOL_BYTES = 64 << 20


class ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (a snapshot's file as the reader gives it)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


@dataclass
class _Target:
    """A namespace of the archive and where it goes."""

    source: str
    ns: str  # the namespace it is restored as
    type: str
    options: dict[str, Any]
    indexes: list[Any]
    inserted: int = 0
    duplicates: int = 0
    ended: bool = False
    pending: list[Future] = field(default_factory=list)

    @property
    def data_ns(self) -> str:
        """Where its documents go: a time-series collection's documents are its buckets."""
        if self.type != "timeseries":
            return self.ns
        db, coll = apply.split_ns(self.ns)
        return f"{db}.{BUCKETS}{coll}"


def restore_archive(client: MongoClient, args: RestoreArgs, chunks: Iterator[bytes], where: str) -> None:
    """Restore an archive (a snapshot's ``dump`` file, as chunks) into the server ``client`` reaches."""
    names = Namespaces.from_args(args.ns_include, args.ns_exclude, args.ns_from, args.ns_to)
    reader = archive.ArchiveReader(ChunkStream(chunks))
    _Restore(client, args, names, reader, where).run()


class _Restore:
    def __init__(self, client: MongoClient, args: RestoreArgs, names: Namespaces, reader: archive.ArchiveReader,
                 where: str):
        self.client = client
        self.args = args
        self.names = names
        self.reader = reader
        self.where = where
        self.targets: dict[tuple[str, str], _Target] = {}
        self.users: list[RawBSONDocument] = []
        self.roles: list[RawBSONDocument] = []
        self.has_oplog = False
        self.oplog = tempfile.SpooledTemporaryFile(max_size=OPLOG_SPOOL_BYTES)  # noqa: SIM115 - closed in run()
        self.oplog_entries = 0

    # -- the plan, before anything is written ----------------------------------------------------

    def _plan(self) -> None:
        for meta in self.reader.collections:
            if (meta.db, meta.collection) == ("", "oplog"):
                self.has_oplog = True
                continue
            source = f"{meta.db}.{meta.collection}"
            if source == apply.VERSION_NS or not self.names.wanted(source):
                continue
            parsed = archive.parse_metadata(meta.metadata)
            self.targets[(meta.db, meta.collection)] = _Target(
                source, self.names.target(source), parsed.type or meta.type or "collection",
                dict(parsed.options or {}), list(parsed.indexes or []))
        if self.args.oplog_replay and not self.has_oplog:
            raise BadInput("--mongo-args: --oplogReplay, but the archive carries no oplog (dumped without --oplog)")

    @property
    def replay(self) -> bool:
        if self.args.oplog_replay is not None:
            return self.args.oplog_replay
        return self.has_oplog and not self.args.filtered

    def _collections(self) -> list[_Target]:
        return [t for t in self.targets.values() if t.source not in (apply.USERS_NS, apply.ROLES_NS)]

    def _prepare(self) -> None:
        """--drop drops, then every collection is created with its options (views come last)."""
        for t in self._collections():
            db, coll = apply.split_ns(t.ns)
            if self.args.drop:
                self.client[db].drop_collection(coll)
            if t.type != "view":
                apply.create_collection(self.client, t.ns, t.options)

    # -- the documents ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._plan()  # bad options fail here, before anything is written
        except BaseException:
            self.oplog.close()
            raise
        try:
            self._prepare()
            workers = max(1, min(MAX_WORKERS, self.args.parallel * self.args.insertion_workers))
            with ThreadPoolExecutor(workers, thread_name_prefix="mongorestore") as pool:
                self._stream(pool, inflight_limit=workers * 2)
            self._finish()
        except (RunnerError, PyMongoError, BulkWriteError) as e:
            raise self._failure(e) from None
        finally:
            self.oplog.close()

    def _stream(self, pool: ThreadPoolExecutor, inflight_limit: int) -> None:
        inflight: collections.deque[Future] = collections.deque()
        for event in self.reader.events():
            key = (event.db, event.collection)
            if isinstance(event, archive.End):
                target = self._target_for(key)
                if target is not None:
                    target.ended = True
                continue
            if key == ("", "oplog"):
                for raw in event.documents:
                    self.oplog.write(raw)
                    self.oplog_entries += 1
                continue
            target = self._target_for(key)
            if target is None:
                continue
            if target.source == apply.USERS_NS:
                self.users.extend(RawBSONDocument(raw) for raw in event.documents)
                continue
            if target.source == apply.ROLES_NS:
                self.roles.extend(RawBSONDocument(raw) for raw in event.documents)
                continue
            while len(inflight) >= inflight_limit:
                inflight.popleft().result()
            future = pool.submit(self._insert, target, [RawBSONDocument(raw) for raw in event.documents])
            target.pending.append(future)
            inflight.append(future)
        for future in inflight:
            future.result()

    def _target_for(self, key: tuple[str, str]) -> _Target | None:
        """The target a namespace block belongs to: a time-series collection's documents come as its buckets."""
        target = self.targets.get(key)
        db, coll = key
        if target is None and coll.startswith(BUCKETS):
            target = self.targets.get((db, coll[len(BUCKETS):]))
            if target is not None and target.type != "timeseries":
                target = None
        return target

    def _insert(self, target: _Target, docs: list[RawBSONDocument]) -> None:
        db, coll = apply.split_ns(target.data_ns)
        try:
            self.client[db][coll].insert_many(docs, ordered=False)
            target.inserted += len(docs)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors") or []
            other = [w for w in errors if w.get("code") != DUPLICATE_KEY]
            target.duplicates += len(errors) - len(other)
            target.inserted += e.details.get("nInserted", 0)
            if other:
                raise ToolFailed(f"{target.ns}: {other[0].get('errmsg', 'insert failed')}") from None
        except PyMongoError as e:
            raise ToolFailed(f"{target.ns}: {describe_error(e)}") from None

    # -- after the documents ---------------------------------------------------------------------

    def _finish(self) -> None:
        if not self.args.no_index_restore:
            for t in self._collections():
                if t.type == "collection":
                    built = apply.create_indexes(self.client, t.ns, t.indexes)
                    log.debug("%s: %d index(es) built", t.ns, built)
        for t in self._collections():
            if t.type == "view":
                apply.create_collection(self.client, t.ns, t.options)
        if self.users or self.roles:
            apply.merge_users_and_roles(self.client, self.users, self.roles, self.args.drop)
        if self.replay and self.oplog_entries:
            self._replay()
        duplicates = [t for t in self.targets.values() if t.duplicates]
        restored = sum(t.inserted for t in self.targets.values())
        log.info("restored %d document(s) in %d namespace(s) into %s%s", restored, len(self._collections()),
                 self.where, f", replayed {self.oplog_entries} oplog entries" if self.replay and self.oplog_entries
                 else "")
        if duplicates:
            which = ", ".join(f"{t.ns} ({t.duplicates})" for t in duplicates)
            raise ToolFailed(f"documents already present were not replaced: {which}; "
                             "restore with --mongo-args=--drop to replace the collections")

    def _replay(self) -> None:
        self.oplog.seek(0)
        applier = apply.OplogApplier(self.client)
        for entry in bson.decode_file_iter(self.oplog):
            applier.add(entry)
        applier.flush()
        log.info("replayed %d oplog entries", applier.applied)

    def _failure(self, error: BaseException) -> ToolFailed:
        done = [t.ns for t in self._collections() if t.ended and t.inserted and all(f.done() for f in t.pending)]
        partly = [t.ns for t in self._collections() if t.inserted and t.ns not in done]
        parts = [f"restore into {self.where} failed: {describe_error(error)}"]
        parts.append("restored: " + (", ".join(done) or "nothing"))
        if partly:
            parts.append("partly restored: " + ", ".join(partly))
        return ToolFailed("; ".join(parts))

