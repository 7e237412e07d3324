"""Stash's ``--mongo-args``: the mongodump and mongorestore options people pass, understood by us.

Every option is checked before anything is read or written; one that we do not implement is an error naming
it, never silently ignored. Values come as ``--opt=value``, ``--opt value`` or ``-o value``. Words are split
on whitespace as Stash splits them, so double quotes stay part of a value (``--query={"n":1}`` is JSON);
single quotes group words that hold spaces (``--query='{"name": "a b"}'``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bson import json_util
from bson.errors import BSONError

from stash_runner.errors import BadInput, one_line

READ_PREFERENCES = ("primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest")


@dataclass
class DumpArgs:
    """What mongodump would dump."""

    db: str = ""
    collection: str = ""
    exclude_collections: list[str] = field(default_factory=list)
    exclude_prefixes: list[str] = field(default_factory=list)
    query: dict[str, Any] | None = None
    read_preference: str = ""
    gzip: bool = False
    oplog: bool = False
    #: collections dumped at once (mongodump's -j, default 4)
    parallel: int = 4

    @property
    def everything(self) -> bool:
        """A full dump: every database, with users and roles, and the oplog where there is one."""
        return not self.db


@dataclass
class RestoreArgs:
    """What mongorestore would restore, and how."""

    drop: bool = False
    ns_include: list[str] = field(default_factory=list)
    ns_exclude: list[str] = field(default_factory=list)
    ns_from: list[str] = field(default_factory=list)
    ns_to: list[str] = field(default_factory=list)
    no_index_restore: bool = False
    #: None: replay when the archive carries an oplog and no namespace filter is given (as Stash decides)
    oplog_replay: bool | None = None
    #: collections restored at once (mongorestore's -j, default 4)
    parallel: int = 4
    #: insert workers per collection (mongorestore's --numInsertionWorkersPerCollection, default 1)
    insertion_workers: int = 1

    @property
    def filtered(self) -> bool:
        """Namespaces are selected or renamed: the oplog, which names the original ones, is not replayed."""
        return bool(self.ns_include or self.ns_exclude or self.ns_from)


@dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...]
    field: str
    takes_value: bool = True


_DUMP = (
    _Spec(("--db", "-d"), "db"),
    _Spec(("--collection", "-c"), "collection"),
    _Spec(("--excludeCollection",), "exclude_collections"),
    _Spec(("--excludeCollectionsWithPrefix",), "exclude_prefixes"),
    _Spec(("--query", "-q"), "query"),
    _Spec(("--readPreference",), "read_preference"),
    _Spec(("--gzip",), "gzip", takes_value=False),
    _Spec(("--oplog",), "oplog", takes_value=False),
    _Spec(("--numParallelCollections", "-j"), "parallel"),
)

_RESTORE = (
    _Spec(("--drop",), "drop", takes_value=False),
    _Spec(("--nsInclude",), "ns_include"),
    _Spec(("--nsExclude",), "ns_exclude"),
    _Spec(("--nsFrom",), "ns_from"),
    _Spec(("--nsTo",), "ns_to"),
    _Spec(("--noIndexRestore",), "no_index_restore", takes_value=False),
    _Spec(("--oplogReplay",), "oplog_replay", takes_value=False),
    _Spec(("--gzip",), "gzip", takes_value=False),  # the archive's gzip is detected; accepted for Stash's args
    _Spec(("--db", "-d"), "db"),  # as mongorestore: a filter, --nsInclude=<db>.* (or <db>.<collection>)
    _Spec(("--collection", "-c"), "collection"),
    _Spec(("--numParallelCollections", "-j"), "parallel"),
    _Spec(("--numInsertionWorkersPerCollection",), "insertion_workers"),
)


def _options(text: str, flag: str, specs: tuple[_Spec, ...], tool: str) -> list[tuple[_Spec, str, str]]:
    """(spec, name as written, value) for each option, in order."""
    words = _split(text or "", flag)
    by_name = {name: spec for spec in specs for name in spec.names}
    known = ", ".join(spec.names[0] for spec in specs)
    out = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        spec = by_name.get(name)
        if spec is None and not eq and _is_option(word) and not word.startswith("--"):
            # a short option with its value attached (-j2, -dapp), as mongodump's parser takes it
            name, eq, value = word[:2], "=", word[2:]
            spec = by_name.get(name)
        if spec is None:
            if not _is_option(word):  # a stray word: maybe a connection string, whose password stays out
                raise BadInput(f"{flag}: {_redact(word)!r} is not an option ({tool}'s options start with -)")
            raise BadInput(f"{flag}: {name!r} is not a {tool} option stash-runner implements (it understands: {known})")
        if spec.takes_value and not eq:
            if i + 1 >= len(words) or _is_option(words[i + 1]):
                raise BadInput(f"{flag}: {name} needs a value")
            i += 1
            value = words[i]
        elif not spec.takes_value and eq:
            raise BadInput(f"{flag}: {name} takes no value")
        out.append((spec, name, value))
        i += 1
    return out


def _is_option(word: str) -> bool:
    """``--name`` or ``-n``, not a negative number (a value)."""
    return word.startswith("--") or (word.startswith("-") and word[1:2].isalpha())


def _redact(word: str) -> str:
    """A word without the credentials it may hold (``mongodb://user:password@host``: ``mongodb://***@host``)."""
    return re.sub(r"[^/@]*@", "***@", word, count=1)


def _split(text: str, flag: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    quoted = started = False
    for ch in text:
        if quoted:
            if ch == "'":
                quoted = False
            else:
                word.append(ch)
        elif ch == "'":
            quoted = started = True
        elif ch.isspace():
            if word or started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(ch)
    if quoted:
        raise BadInput(f"{flag}: a single quote is not closed")
    if word or started:
        words.append("".join(word))
    return words


def _count(name: str, value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise BadInput(f"{flag}: {name} {value!r}: must be a whole number of at least 1")
    return n


def parse_dump_args(text: str, flag: str = "--mongo-args") -> DumpArgs:
    args = DumpArgs()
    for spec, name, value in _options(text, flag, _DUMP, "mongodump"):
        if spec.field in ("exclude_collections", "exclude_prefixes"):
            getattr(args, spec.field).append(value)
        elif spec.field == "query":
            try:
                query = json_util.loads(value)
            except (ValueError, TypeError, ArithmeticError, BSONError) as e:  # bad $oid, $numberDecimal, ...
                raise BadInput(f"{flag}: {name}: not valid Extended JSON: {one_line(e)}") from None
            if not isinstance(query, dict):
                raise BadInput(f"{flag}: {name}: must be a JSON document")
            args.query = query
        elif spec.field == "read_preference":
            if value not in READ_PREFERENCES:
                raise BadInput(f"{flag}: {name} {value!r}: must be one of {', '.join(READ_PREFERENCES)}")
            args.read_preference = value
        elif spec.field == "parallel":
            args.parallel = _count(name, value, flag)
        elif not spec.takes_value:
            setattr(args, spec.field, True)
        else:
            setattr(args, spec.field, value)
    # mongodump's own rules, so that what it would refuse we refuse too
    if args.collection and not args.db:
        raise BadInput(f"{flag}: --collection needs --db")
    if args.query is not None and not args.collection:
        raise BadInput(f"{flag}: --query needs --collection")
    if args.collection and (args.exclude_collections or args.exclude_prefixes):
        raise BadInput(f"{flag}: --collection cannot be combined with --excludeCollection*")
    if args.oplog and args.db:
        raise BadInput(f"{flag}: --oplog works only for a full dump (not with --db)")
    return args


def parse_restore_args(text: str, flag: str = "--mongo-args") -> RestoreArgs:
    args = RestoreArgs()
    db = collection = ""
    for spec, name, value in _options(text, flag, _RESTORE, "mongorestore"):
        if spec.field in ("ns_include", "ns_exclude", "ns_from", "ns_to"):
            getattr(args, spec.field).append(value)
        elif spec.field == "parallel":
            args.parallel = _count(name, value, flag)
        elif spec.field == "insertion_workers":
            args.insertion_workers = _count(name, value, flag)
        elif spec.field == "db":
            db = value
        elif spec.field == "collection":
            collection = value
        elif spec.field == "gzip":
            pass
        else:
            setattr(args, spec.field, True)
    if collection and not db:
        raise BadInput(f"{flag}: --collection needs --db")
    if db:
        args.ns_include.append(f"{db}.{collection or '*'}")
    if len(args.ns_from) != len(args.ns_to):
        raise BadInput(f"{flag}: --nsFrom and --nsTo must come in pairs")
    if args.oplog_replay and args.filtered:
        raise BadInput(f"{flag}: --oplogReplay cannot be combined with --nsInclude/--nsExclude/--db")
    return args
