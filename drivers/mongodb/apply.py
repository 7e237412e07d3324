"""Writing what an archive holds into a server: collections with their options, indexes, views, users and
roles, and oplog entries (``applyOps`` where the server has it, else each entry as the matching operation)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from bson import SON
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from stash_runner.errors import ToolFailed

log = logging.getLogger("stash_runner")

COMMAND_NOT_FOUND = 59
NAMESPACE_EXISTS = 48
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
# Oplog commands a replay skips, as mongorestore does: the index build's start and abort (its commit builds it)
SKIPPED_COMMANDS = ("startIndexBuild", "abortIndexBuild", "setMultikeyMetadata")
# Oplog commands that build indexes: run as createIndexes commands (applyOps does not take them on servers >= 4.4)
INDEX_BUILDS = ("createIndexes", "commitIndexBuild")
# A replay ignores the errors that say a command's work is done already, as the server's oplog application does
_ALREADY_DONE = {"create": (NAMESPACE_EXISTS,), "drop": (NAMESPACE_NOT_FOUND,),
                 "dropIndexes": (NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND),
                 "deleteIndexes": (NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND)}
# Index options a server fills in itself: sending them back is refused by some servers (FerretDB) and changes
# nothing on the others.
_SERVER_INDEX_FIELDS = ("ns", "v")
USERS_NS, ROLES_NS, VERSION_NS = "admin.system.users", "admin.system.roles", "admin.system.version"
TEMP_USERS, TEMP_ROLES = "tempusers", "temproles"


def split_ns(ns: str) -> tuple[str, str]:
    db, _, coll = ns.partition(".")
    return db, coll


def create_collection(client: MongoClient, ns: str, options: Mapping[str, Any]) -> None:
    """Create a collection (or view, or time-series collection) with the options its metadata lists."""
    db, coll = split_ns(ns)
    cmd = SON([("create", coll)])
    cmd.update({k: v for k, v in options.items() if k != "uuid"})
    try:
        client[db].command(cmd)
    except OperationFailure as e:
        if e.code == NAMESPACE_EXISTS:
            return  # restored into an existing collection: its options stay as they are
        raise


def create_indexes(client: MongoClient, ns: str, indexes: Iterable[Mapping[str, Any]]) -> int:
    """Build the indexes listed in the metadata (not _id's, which every collection has); returns how many."""
    db, coll = split_ns(ns)
    specs = []
    for index in indexes:
        if index.get("name") == "_id_":
            continue
        spec = SON((k, v) for k, v in index.items() if k not in _SERVER_INDEX_FIELDS)
        specs.append(spec)
    if specs:
        client[db].command(SON([("createIndexes", coll), ("indexes", specs)]))
    return len(specs)


def merge_users_and_roles(client: MongoClient, users: list[RawBSONDocument], roles: list[RawBSONDocument],
                          drop: bool) -> None:
    """Users and roles as mongorestore restores them: into temporary collections of ``admin``, then merged by the
    server (``_mergeAuthzCollections``), so that their credentials arrive as they were (hashes, not passwords).
    A server without that command (FerretDB) gets them written directly, keeping users it already has."""
    admin = client.admin
    try:
        for name, docs in ((TEMP_USERS, users), (TEMP_ROLES, roles)):
            admin.drop_collection(name)
            if docs:
                admin[name].insert_many(docs, ordered=True)
        cmd = SON([("_mergeAuthzCollections", 1), ("tempUsersCollection", f"admin.{TEMP_USERS}"),
                   ("tempRolesCollection", f"admin.{TEMP_ROLES}"), ("drop", drop), ("db", "")])
        try:
            admin.command(cmd)
        except OperationFailure as e:
            if e.code != COMMAND_NOT_FOUND:
                raise
            _write_directly(client, USERS_NS, users)
            _write_directly(client, ROLES_NS, roles)
    finally:
        for name in (TEMP_USERS, TEMP_ROLES):
            admin.drop_collection(name)


def _write_directly(client: MongoClient, ns: str, docs: list[RawBSONDocument]) -> None:
    db, coll = split_ns(ns)
    target = client[db][coll]
    missing = [d for d in docs if target.count_documents({"_id": d["_id"]}, limit=1) == 0]
    for d in docs:
        if d not in missing:
            log.info("%s: kept the target's %s (it exists there)", ns, d["_id"])
    if not missing:
        return
    try:
        target.insert_many(missing, ordered=True)
    except OperationFailure as e:
        names = ", ".join(str(d["_id"]) for d in missing)
        raise ToolFailed(f"this server cannot restore {ns} (no _mergeAuthzCollections, and it refuses direct "
                         f"writes: {e.details.get('errmsg') if e.details else e}): not restored: {names}; leave "
                         "them out with --mongo-args='--nsExclude=admin.system.*'") from None


class OplogApplier:
    """Replays oplog entries: in ``applyOps`` batches where the server has the command, else one by one."""

    def __init__(self, client: MongoClient, batch: int = 500):
        self.client = client
        self.batch_size = batch
        self._pending: list[Mapping[str, Any]] = []
        self._apply_ops: bool | None = None  # unknown until the first batch
        self.applied = 0

    def add(self, entry: Mapping[str, Any]) -> None:
        op = entry.get("op")
        if op == "n" or (op == "c" and _command_name(entry) in SKIPPED_COMMANDS):
            return  # a no-op: nothing to replay
        entry = _without_uuids(entry)
        if op == "c" and _command_name(entry) in INDEX_BUILDS:
            self.flush()  # in order: what came before first
            apply_entry(self.client, entry)
            self.applied += 1
            return
        self._pending.append(entry)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        entries, self._pending = self._pending, []
        if not entries:
            return
        if self._apply_ops is not False:
            try:
                self.client.admin.command(SON([("applyOps", entries)]))
                self._apply_ops = True
                self.applied += len(entries)
                return
            except OperationFailure as e:
                if e.code != COMMAND_NOT_FOUND or self._apply_ops:
                    raise
                self._apply_ops = False
                log.info("the server has no applyOps: replaying the oplog entry by entry")
        for entry in entries:
            apply_entry(self.client, entry)
            self.applied += 1


def _command_name(entry: Mapping[str, Any]) -> str:
    return next(iter(entry.get("o") or {}), "")


def _without_uuids(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry without its collection's UUID (``ui``), nested applyOps' too: the target's collections have
    other UUIDs, and applyOps would look them up by it (mongorestore's filterUUIDs)."""
    out = {k: v for k, v in entry.items() if k != "ui"}
    o = out.get("o")
    if out.get("op") == "c" and isinstance(o, Mapping) and "applyOps" in o:
        out["o"] = SON((k, [_without_uuids(e) for e in v] if k == "applyOps" else v) for k, v in o.items())
    return out


def apply_entry(client: MongoClient, entry: Mapping[str, Any]) -> None:
    """One oplog entry as the operation it records; idempotent, as oplog replay must be."""
    op, ns, o = entry.get("op"), str(entry.get("ns") or ""), entry.get("o") or {}
    db, coll = split_ns(ns)
    if op == "i":
        client[db][coll].replace_one({"_id": o["_id"]}, o, upsert=True)
    elif op == "u":
        target = entry.get("o2") or {}
        update = update_document(o)
        if any(k.startswith("$") for k in update):
            client[db][coll].update_one(target, update)
        else:
            client[db][coll].replace_one(target, update)
    elif op == "d":
        client[db][coll].delete_one(o)
    elif op == "c":
        _command(client, db, o)
    elif op != "n":
        raise ToolFailed(f"oplog entry for {ns}: unknown operation {op!r}")


def _command(client: MongoClient, db: str, o: Mapping[str, Any]) -> None:
    name = next(iter(o), "")
    if name == "applyOps":
        for inner in o["applyOps"]:
            apply_entry(client, inner)
    elif name in INDEX_BUILDS:
        # the oplog's createIndexes holds one index spec beside the collection's name; commitIndexBuild a list
        specs = o.get("indexes") or [SON((k, v) for k, v in o.items() if k != name)]
        create_indexes(client, f"{db}.{o[name]}", specs)
    elif name not in SKIPPED_COMMANDS:
        try:
            client[db].command(SON(o))
        except OperationFailure as e:
            if e.code not in _ALREADY_DONE.get(name, ()):
                raise


def update_document(o: Mapping[str, Any]) -> dict[str, Any]:
    """An update entry's ``o`` as an update document: a replacement, $set/$unset (oplog v1), or the v2 diff
    format turned into $set/$unset on dotted paths."""
    if o.get("$v") == 2 and "diff" in o:
        sets: dict[str, Any] = {}
        unsets: dict[str, Any] = {}
        _diff(o["diff"], "", sets, unsets)
        out: dict[str, Any] = {}
        if sets:
            out["$set"] = sets
        if unsets:
            out["$unset"] = unsets
        return out or {"$set": {}}
    update = {k: v for k, v in o.items() if k != "$v"}
    if list(update) == ["$set"] and "_id" in update["$set"]:
        # FerretDB logs every update as a $set of the whole document, _id included (MongoDB never logs _id in a
        # $set): the document as the update left it, so a replacement (a $set would keep fields it removed)
        return dict(update["$set"])
    return update


def _diff(diff: Mapping[str, Any], prefix: str, sets: dict[str, Any], unsets: dict[str, Any]) -> None:
    if diff.get("a") is True:
        _array_diff(diff, prefix, sets, unsets)
        return
    for key, value in diff.items():
        if key in ("u", "i"):
            for field, v in value.items():
                sets[prefix + field] = v
        elif key == "d":
            for field in value:
                unsets[prefix + field] = ""
        elif key.startswith("s"):
            _diff(value, f"{prefix}{key[1:]}.", sets, unsets)


def _array_diff(diff: Mapping[str, Any], prefix: str, sets: dict[str, Any], unsets: dict[str, Any]) -> None:
    if "l" in diff:
        # a shortened array cannot be expressed as $set on elements: the entry's document is re-read instead
        raise ToolFailed(f"oplog update of array {prefix.rstrip('.')!r} (resized): not replayable here")
    for key, value in diff.items():
        if key.startswith("u"):
            sets[prefix + key[1:]] = value
        elif key.startswith("s"):
            _diff(value, f"{prefix}{key[1:]}.", sets, unsets)
