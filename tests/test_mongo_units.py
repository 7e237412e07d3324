"""The MongoDB driver's parts, one at a time: Stash's ``--mongo-args`` (drivers/mongodb/args.py), mongorestore's
namespace options (namespaces.py), and what writes into a server (apply.py): oplog updates and their replay,
users and roles, collections and indexes.

Servers: mockupdb scripts one to check the exact commands sent (applyOps batches, the fallback, the users and
roles sequence); FerretDB (``ferretdb``, ``ferretdb_rs``) and mongo-java-server (``mongo_java``) are the real ones.
What each real server supports, as these tests find it:

================================  ======================================  ====================================
                                  FerretDB v1.24.2 (SQLite)               mongo-java-server 1.47.0 (memory)
================================  ======================================  ====================================
capped collection                 yes (capped, size, max kept)            no ("not yet implemented")
validator                         no (NotImplemented, 238)                accepted, neither kept nor enforced
collation                         no (NotImplemented, 238)                accepted, not kept
index spec with ``v``/``ns``      refused (BadValue, 2): create_indexes   accepted
                                  strips them
unique, compound, sparse index    yes                                     yes
TTL, partial index                no (NotImplemented, 238)                yes
text index                        no (IndexNotFound, 27)                  yes
applyOps, _mergeAuthzCollections  no (CommandNotFound, 59)                no (CommandNotFound, 59)
writes to admin.system.users      yes: the user logs in with its hashes   no: admin takes no CRUD at all (59)
================================  ======================================  ====================================
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import bson
import pymongo
import pytest
from bson import SON, Binary, ObjectId, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB
from pymongo.errors import OperationFailure

from drivers.mongodb import apply
from drivers.mongodb.args import DumpArgs, RestoreArgs, parse_dump_args, parse_restore_args
from drivers.mongodb.namespaces import Namespaces
from stash_runner.errors import BadInput, ToolFailed

NO_APPLY_OPS = "the server has no applyOps"


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _uuid() -> Binary:
    return Binary.from_uuid(uuid.uuid4())


# -- --mongo-args for a backup (mongodump) -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["--db=app", "--db app", "-d app", "-dapp", "  --db=app  ", "--db='app'"])
def test_dump_db_in_every_spelling(text):
    args = parse_dump_args(text)
    assert args.db == "app" and not args.everything


@pytest.mark.parametrize("text", ["--db=app --collection=users", "--db app --collection users", "-d app -c users",
                                  "--db=app\t-c\nusers"])
def test_dump_collection_in_every_spelling(text):
    args = parse_dump_args(text)
    assert (args.db, args.collection) == ("app", "users")


def test_dump_defaults_are_a_full_dump():
    for text in ("", "   ", None):
        args = parse_dump_args(text)
        assert args == DumpArgs() and args.everything
        assert (args.parallel, args.gzip, args.oplog, args.query) == (4, False, False, None)


def test_dump_repeated_exclusions_keep_their_order():
    args = parse_dump_args("--db=app --excludeCollection=logs --excludeCollection tmp "
                           "--excludeCollectionsWithPrefix=old_ --excludeCollectionsWithPrefix cache_")
    assert args.exclude_collections == ["logs", "tmp"]
    assert args.exclude_prefixes == ["old_", "cache_"]


@pytest.mark.parametrize("text", [
    '--db=app --collection=users --query={"n":{"$gte":3}}',  # Stash's form: no spaces, double quotes kept
    "--db=app --collection=users --query='{\"n\": {\"$gte\": 3}}'",  # single quotes group words with spaces
    '--db=app -c users -q {"n":{"$gte":3}}',
    '--db=app -c users --query {"n":{"$gte":3}}',
])
def test_dump_query_as_extended_json(text):
    assert parse_dump_args(text).query == {"n": {"$gte": 3}}


def test_dump_query_extended_json_types():
    args = parse_dump_args('--db=app -c users --query={"_id":{"$oid":"5f0c8a1e9d3b2a0012345678"}}')
    assert args.query == {"_id": ObjectId("5f0c8a1e9d3b2a0012345678")}
    args = parse_dump_args("--db=app -c users --query='{\"name\": \"a b\", \"n\": {\"$numberLong\": \"7\"}}'")
    assert args.query == {"name": "a b", "n": 7}


@pytest.mark.parametrize("mode", ["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"])
def test_dump_read_preference(mode):
    assert parse_dump_args(f"--readPreference={mode}").read_preference == mode
    assert parse_dump_args(f"--readPreference {mode}").read_preference == mode


@pytest.mark.parametrize("text", ["-j 2", "-j2", "--numParallelCollections=2", "--numParallelCollections 2"])
def test_dump_parallel_collections(text):
    assert parse_dump_args(text).parallel == 2


def test_dump_flags():
    args = parse_dump_args("--gzip --oplog")
    assert args.gzip and args.oplog and args.everything


def test_dump_stash_whitespace_form():
    """Stash passes ``--mongo-args`` as one string it splits on whitespace."""
    args = parse_dump_args("--db=app --collection=users --readPreference=secondary --gzip -j 3")
    assert args == DumpArgs(db="app", collection="users", read_preference="secondary", gzip=True, parallel=3)


# -- --mongo-args for a restore (mongorestore) -------------------------------------------------------------


def test_restore_defaults():
    args = parse_restore_args("")
    assert args == RestoreArgs()
    assert args.oplog_replay is None and not args.filtered and not args.drop
    assert (args.parallel, args.insertion_workers) == (4, 1)


def test_restore_every_option():
    args = parse_restore_args("--drop --nsInclude=app.* --nsInclude 'logs.2024*' --nsExclude=app.tmp* "
                              "--nsFrom=app.* --nsTo=restored.* --nsFrom old.users --nsTo new.people "
                              "--noIndexRestore --gzip -j 2 --numInsertionWorkersPerCollection=3")
    assert args.drop and args.no_index_restore and args.filtered
    assert args.ns_include == ["app.*", "logs.2024*"]
    assert args.ns_exclude == ["app.tmp*"]
    assert list(zip(args.ns_from, args.ns_to, strict=True)) == [("app.*", "restored.*"), ("old.users", "new.people")]
    assert (args.parallel, args.insertion_workers) == (2, 3)
    assert args.oplog_replay is None


@pytest.mark.parametrize("text, include", [
    ("--db=app", ["app.*"]),
    ("-d app", ["app.*"]),
    ("--db=app --collection=users", ["app.users"]),
    ("-d app -c users", ["app.users"]),
    ("--nsInclude=logs.* --db app", ["logs.*", "app.*"]),
])
def test_restore_db_and_collection_are_filters(text, include):
    args = parse_restore_args(text)
    assert args.ns_include == include and args.filtered


def test_restore_oplog_replay_and_gzip():
    args = parse_restore_args("--oplogReplay --gzip")
    assert args.oplog_replay is True and not args.filtered
    assert parse_restore_args("--numParallelCollections=5").parallel == 5


# -- every error: one line, BadInput, the flag and the option named ---------------------------------------


def _bad(parse: Callable[..., object], text: str, flag: str = "--mongo-args") -> str:
    with pytest.raises(BadInput) as e:
        parse(text, flag) if flag != "--mongo-args" else parse(text)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{flag}: "), message
    return message


DUMP_ERRORS = [
    ("--uri=mongodb://h:27017", ["'--uri'", "mongodump", "--db"]),
    ("--host db.example:27017", ["'--host'", "mongodump"]),
    ("--archive=/tmp/x", ["'--archive'"]),
    ("--out /tmp/x", ["'--out'"]),
    ("--db", ["--db needs a value"]),
    ("-d", ["-d needs a value"]),
    ("--db --gzip", ["--db needs a value"]),
    ("--db=app --collection", ["--collection needs a value"]),
    ("--gzip=yes", ["--gzip takes no value"]),
    ("--oplog=true", ["--oplog takes no value"]),
    ("-j 0", ["-j '0'", "at least 1"]),
    ("-j x", ["-j 'x'", "whole number"]),
    ("--numParallelCollections=-1", ["--numParallelCollections '-1'"]),
    ("--collection=users", ["--collection needs --db"]),
    ("-c users", ["--collection needs --db"]),
    ('--db=app --query={"n":1}', ["--query needs --collection"]),
    ("--db=app -c users --excludeCollection=logs", ["--collection cannot be combined", "--excludeCollection"]),
    ("--db=app --oplog", ["--oplog", "--db"]),
    ("--readPreference=fastest", ["--readPreference", "'fastest'", "secondaryPreferred"]),
    ("--readPreference", ["--readPreference needs a value"]),
    ('--db=app -c users --query={"n":', ["--query", "not valid Extended JSON"]),
    ("--db=app -c users --query='{\"n\": {\"$gte\": 3}'", ["--query", "not valid Extended JSON"]),
    ('--db=app -c users --query {"n": {"$gte": 3}}', ["""'{"$gte":' is not an option"""]),  # split on spaces
    ('--db=app -c users --query={"_id":{"$oid":"zz"}}', ["--query", "not valid Extended JSON", "ObjectId"]),
    ('--db=app -c users --query={"d":{"$numberDecimal":"x"}}', ["--query", "not valid Extended JSON"]),
    ('--db=app -c users --query={"t":{"$timestamp":{"t":"x","i":1}}}', ["--query", "not valid Extended JSON"]),
    ("--db=app -c users --query=[1]", ["--query", "must be a JSON document"]),
    ("--db='app", ["quote"]),
    ("app", ["'app' is not an option"]),
]


@pytest.mark.parametrize("text, parts", DUMP_ERRORS, ids=[t for t, _ in DUMP_ERRORS])
def test_dump_errors(text, parts):
    message = _bad(parse_dump_args, text)
    for part in parts:
        assert part in message, message


RESTORE_ERRORS = [
    ("--uri=mongodb://h", ["'--uri'", "mongorestore", "--nsInclude"]),
    ("--archive=/dump.gz", ["'--archive'", "mongorestore"]),
    ("--oplogLimit=1700000000:1", ["'--oplogLimit'"]),
    ("--query={}", ["'--query'", "mongorestore"]),  # a mongodump option only
    ("--drop=true", ["--drop takes no value"]),
    ("--oplogReplay=1", ["--oplogReplay takes no value"]),
    ("--nsInclude", ["--nsInclude needs a value"]),
    ("--nsInclude --drop", ["--nsInclude needs a value"]),
    ("--nsFrom=app.*", ["--nsFrom and --nsTo must come in pairs"]),
    ("--nsFrom=app.* --nsTo=b.* --nsTo=c.*", ["--nsFrom and --nsTo must come in pairs"]),
    ("--oplogReplay --nsInclude=app.*", ["--oplogReplay", "--nsInclude"]),
    ("--oplogReplay --nsExclude=app.tmp", ["--oplogReplay", "--nsExclude"]),
    ("--oplogReplay --db=app", ["--oplogReplay", "--db"]),
    ("--collection=users", ["--collection needs --db"]),
    ("-j 0", ["-j '0'"]),
    ("--numInsertionWorkersPerCollection=0", ["--numInsertionWorkersPerCollection '0'"]),
    ("--numInsertionWorkersPerCollection=many", ["--numInsertionWorkersPerCollection 'many'"]),
    ("--nsInclude='app.*", ["quote"]),
]


@pytest.mark.parametrize("text, parts", RESTORE_ERRORS, ids=[t for t, _ in RESTORE_ERRORS])
def test_restore_errors(text, parts):
    message = _bad(parse_restore_args, text)
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("parse", [parse_dump_args, parse_restore_args])
@pytest.mark.parametrize("text", [
    "--password=hunter2", "--password hunter2", "-p hunter2", "-phunter2", "--db=app -phunter2",
    "-u admin -p hunter2", "--uri=mongodb://admin:hunter2@db:27017", "--uri mongodb://admin:hunter2@db:27017",
    "mongodb://admin:hunter2@db:27017/", "admin:hunter2@db", "--authenticationDatabase=admin --password=hunter2",
])
def test_a_password_never_reaches_the_message(parse, text):
    message = _bad(parse, text)
    assert "hunter2" not in message, message
    assert "is not" in message


def test_errors_name_the_flag_they_came_from():
    assert "--args: '--host'" in _bad(parse_dump_args, "--host=x", "--args")
    assert "--args: --nsFrom and --nsTo" in _bad(parse_restore_args, "--nsFrom=a.b", "--args")


# -- namespaces (--nsInclude, --nsExclude, --nsFrom/--nsTo) -----------------------------------------------


def test_include_and_exclude_wildcards_match_dots_too():
    names = Namespaces.from_args(["app.*", "*.users"], ["app.tmp*", "*.cache.*"], [], [])
    assert names.wanted("app.orders")
    assert names.wanted("app.sub.coll")  # * matches the dots of a collection name
    assert names.wanted("other.users") and names.wanted("a.b.users")
    assert not names.wanted("other.orders")
    assert not names.wanted("apple.orders")  # the dot of the pattern is a dot, nothing else
    assert not names.wanted("app.tmp") and not names.wanted("app.tmp_2024")
    assert not names.wanted("app.x.cache.y")
    assert names.wanted("app.tm")


def test_without_include_everything_not_excluded_is_wanted():
    names = Namespaces.from_args([], ["logs.*"], [], [])
    assert names.wanted("app.users") and not names.wanted("logs.2024")
    assert Namespaces.from_args([], [], [], []).wanted("anything.at.all")


def test_patterns_are_literal_apart_from_the_wildcard():
    names = Namespaces.from_args(["a.b+c", "x.(y)"], [], [], [])
    assert names.wanted("a.b+c") and names.wanted("x.(y)")
    assert not names.wanted("a.bbc") and not names.wanted("a.b+cd") and not names.wanted("x.y")


def test_the_last_matching_rename_wins_as_in_mongorestore():
    """mongo-tools' NewRenamer reverses the --nsFrom/--nsTo pairs "for replacement precedence"."""
    names = Namespaces.from_args([], [], ["app.*", "app.users"], ["restored.*", "people.users"])
    assert names.target("app.users") == "people.users"
    assert names.target("app.orders") == "restored.orders"
    assert names.target("other.users") == "other.users"  # no rename matches: unchanged
    swapped = Namespaces.from_args([], [], ["app.users", "app.*"], ["people.users", "restored.*"])
    assert swapped.target("app.users") == "restored.users"


def test_database_level_rename():
    names = Namespaces.from_args([], [], ["app.*"], ["restored.*"])
    assert names.target("app.users") == "restored.users"
    assert names.target("app.system.views") == "restored.system.views"
    assert names.target("app2.users") == "app2.users"


def test_variables_are_captured_and_put_back_in_any_order():
    names = Namespaces.from_args([], [], ["$db$.$coll$"], ["$coll$.$db$"])
    assert names.target("app.users") == "users.app"
    names = Namespaces.from_args([], [], ["$db$.$prefix$_$name$"], ["$name$_$prefix$.$db$"])
    assert names.target("shop.eu_orders") == "orders_eu.shop"
    names = Namespaces.from_args([], [], ["app.$c$"], ["copy.$c$_$c$"])  # one variable, twice in --nsTo
    assert names.target("app.users") == "copy.users_users"


def test_every_star_is_carried_over_in_its_place():
    names = Namespaces.from_args([], [], ["*.old_*"], ["*_archive.*"])
    assert names.target("app.old_users") == "app_archive.users"
    names = Namespaces.from_args([], [], ["a.*"], ["b.x_*"])
    assert names.target("a.y.z") == "b.x_y.z"


@pytest.mark.parametrize("include, exclude, ns_from, ns_to, part", [
    (["app"], [], [], [], "'app'"),
    ([], ["*"], [], [], "'*'"),
    ([], [], ["app"], ["x.y"], "'app'"),
    ([], [], ["app.*"], ["restored"], "'restored'"),
    ([], [], ["$a$.$a$"], ["x.$a$"], "used twice"),
    ([], [], ["a.$x$"], ["b.$y$"], "$y$ is not captured"),
    ([], [], ["a.users"], ["b.*"], "different numbers of *"),
    ([], [], ["a.*"], ["b.c"], "different numbers of *"),
])
def test_invalid_namespace_patterns(include, exclude, ns_from, ns_to, part):
    with pytest.raises(BadInput) as e:
        Namespaces.from_args(include, exclude, ns_from, ns_to)
    assert part in str(e.value) and "\n" not in str(e.value)


# -- update entries: update_document --------------------------------------------------------------------


def test_update_replacement():
    assert apply.update_document({"_id": 1, "a": 2}) == {"_id": 1, "a": 2}


def test_update_oplog_v1():
    assert apply.update_document({"$v": 1, "$set": {"a": 1, "b.c": 2}, "$unset": {"d": True}}) == {
        "$set": {"a": 1, "b.c": 2}, "$unset": {"d": True}}
    assert apply.update_document({"$set": {"a": 1}}) == {"$set": {"a": 1}}  # before $v existed


def test_update_ferretdb_whole_document_set_is_a_replacement():
    """FerretDB logs every update as ``{"$v": 1, "$set": <the whole document>}``: _id included, which MongoDB
    never logs in a $set. Replayed as a $set it would keep the fields the update removed."""
    assert apply.update_document({"$v": 1, "$set": {"_id": 3, "nick": "c"}}) == {"_id": 3, "nick": "c"}


def test_update_v2_diff_to_dotted_set_and_unset():
    o = {"$v": 2, "diff": {"u": {"a": 1}, "i": {"new": {"k": [1]}}, "d": {"gone": False},
                           "ssub": {"u": {"x": 5}, "d": {"y": False}, "sdeep": {"i": {"z": None}}}}}
    assert apply.update_document(o) == {"$set": {"a": 1, "new": {"k": [1]}, "sub.x": 5, "sub.deep.z": None},
                                        "$unset": {"gone": "", "sub.y": ""}}


def test_update_v2_array_diff():
    o = {"$v": 2, "diff": {"stags": {"a": True, "u1": "B", "u3": "new"},
                           "sitems": {"a": True, "s0": {"u": {"qty": 2}, "d": {"note": False}},
                                      "s2": {"a": True, "u0": 7}}}}
    assert apply.update_document(o) == {
        "$set": {"tags.1": "B", "tags.3": "new", "items.0.qty": 2, "items.2.0": 7},
        "$unset": {"items.0.note": ""}}


def test_update_v2_empty_diff():
    assert apply.update_document({"$v": 2, "diff": {}}) == {"$set": {}}


def test_update_v2_resized_array_is_a_one_line_error():
    with pytest.raises(ToolFailed) as e:
        apply.update_document({"$v": 2, "diff": {"ssub": {"sarr": {"a": True, "l": 2, "u0": 1}}}})
    assert "'sub.arr'" in str(e.value) and "resized" in str(e.value) and "\n" not in str(e.value)


# -- the per-entry replay, against the real FerretDB ------------------------------------------------------


def _ts(i: int) -> Timestamp:
    return Timestamp(1_700_000_000, i)


def _oplog(db: str) -> list[dict]:
    """Oplog entries as a MongoDB replica set writes them, for every form the applier must replay."""
    people, cmd = f"{db}.people", f"{db}.$cmd"
    entries = [
        {"op": "c", "ns": cmd, "o": SON([("create", "people"), ("idIndex", {"v": 2, "key": {"_id": 1},
                                                                            "name": "_id_"})])},
        # the oplog's createIndexes: one index spec beside the collection's name
        {"op": "c", "ns": cmd, "o": SON([("createIndexes", "people"), ("v", 2), ("key", {"email": 1}),
                                         ("name", "email_1"), ("unique", True)])},
        {"op": "i", "ns": people, "o": {"_id": 1, "name": "ann", "email": "a@x", "tags": ["a", "b", "c"],
                                        "sub": {"x": 1, "y": 2}, "gone": True}},
        {"op": "i", "ns": people, "o": {"_id": 2, "name": "bob", "email": "b@x"}},
        {"op": "i", "ns": people, "o": {"_id": 3, "name": "cy"}},
        {"op": "n", "ns": "", "o": {"msg": "periodic noop"}},
        {"op": "u", "ns": people, "o2": {"_id": 2}, "o": {"_id": 2, "name": "bob", "email": "bob@x", "age": 30}},
        {"op": "u", "ns": people, "o2": {"_id": 1},
         "o": {"$v": 1, "$set": {"name": "ann b"}, "$unset": {"gone": True}}},
        {"op": "u", "ns": people, "o2": {"_id": 1},
         "o": {"$v": 2, "diff": {"u": {"email": "ann@x"}, "i": {"n": 5}, "ssub": {"u": {"x": 10}, "d": {"y": False}},
                                 "stags": {"a": True, "u1": "B"}}}},
        # FerretDB's form: the whole document ($unset name, $set nick)
        {"op": "u", "ns": people, "o2": {"_id": 3}, "o": {"$v": 1, "$set": {"_id": 3, "nick": "c"}}},
        {"op": "d", "ns": people, "o": {"_id": 2}},
        {"op": "c", "ns": cmd, "o": {"applyOps": [
            {"op": "i", "ns": people, "o": {"_id": 4, "name": "dee"}},
            {"op": "u", "ns": people, "o2": {"_id": 4}, "o": {"$v": 2, "diff": {"i": {"x": 1}}}},
            {"op": "c", "ns": cmd, "o": {"create": "scratch"}},
        ]}},
        {"op": "c", "ns": cmd, "o": {"create": "scratch2"}},
        {"op": "i", "ns": f"{db}.scratch2", "o": {"_id": 1}},
        {"op": "c", "ns": cmd, "o": {"drop": "scratch2"}},
        # a two-phase index build (MongoDB >= 4.4): the start is skipped, the commit builds
        {"op": "c", "ns": cmd, "o": SON([("startIndexBuild", "people"), ("indexBuildUUID", _uuid()),
                                         ("indexes", [{"v": 2, "key": {"name": 1}, "name": "name_1"}])])},
        {"op": "c", "ns": cmd, "o": SON([("commitIndexBuild", "people"), ("indexBuildUUID", _uuid()),
                                         ("indexes", [{"v": 2, "key": {"name": 1}, "name": "name_1"}])])},
    ]
    for i, e in enumerate(entries):
        e.update(ts=_ts(i + 1), t=1, v=2, ui=_uuid())  # ui: the source collection's UUID, not the target's
    return entries


EXPECTED_PEOPLE = [
    {"_id": 1, "name": "ann b", "email": "ann@x", "tags": ["a", "B", "c"], "sub": {"x": 10}, "n": 5},
    {"_id": 3, "nick": "c"},
    {"_id": 4, "name": "dee", "x": 1},
]


def _state(client: pymongo.MongoClient, db: str) -> dict:
    return {
        "collections": sorted(client[db].list_collection_names()),
        "people": list(client[db].people.find().sort("_id", 1)),
        "indexes": {i["name"]: (dict(i["key"]), bool(i.get("unique"))) for i in client[db].people.list_indexes()},
    }


def test_per_entry_replay_on_ferretdb_is_exact_and_idempotent(ferretdb, caplog):
    db = f"units_replay_{_tag()}"
    entries = _oplog(db)
    with ferretdb.client() as c:
        try:
            states = []
            for _ in range(2):  # replayed twice: the same end state (oplog replay is idempotent)
                caplog.clear()
                applier = apply.OplogApplier(c, batch=3)
                with caplog.at_level(logging.INFO, logger="stash_runner"):
                    for entry in entries:
                        applier.add(entry)
                    applier.flush()
                # FerretDB has no applyOps: the applier fell back to entry by entry, and said so once
                assert [r.getMessage() for r in caplog.records].count(
                    "the server has no applyOps: replaying the oplog entry by entry") == 1
                assert applier.applied == len(entries) - 2  # the no-op and the startIndexBuild are skipped
                states.append(_state(c, db))
            assert states[0] == states[1]
            assert states[0] == {
                "collections": ["people", "scratch"],
                "people": EXPECTED_PEOPLE,
                "indexes": {"_id_": ({"_id": 1}, False), "email_1": ({"email": 1}, True),
                            "name_1": ({"name": 1}, False)},
            }
        finally:
            c.drop_database(db)


def test_ferretdbs_own_oplog_replays_to_the_same_documents(ferretdb_rs):
    """Updates FerretDB logged itself ($set of whole documents, after $unset, $inc, $push, $rename) replayed
    into another database end as the source did."""
    src, dst = f"units_src_{_tag()}", f"units_dst_{_tag()}"
    with ferretdb_rs.client() as c:
        try:
            people = c[src].people
            people.insert_many([{"_id": 1, "name": "ann", "tmp": 1, "tags": ["a"]}, {"_id": 2, "name": "bob"},
                                {"_id": 3, "n": 1}])
            people.update_one({"_id": 1}, {"$unset": {"tmp": ""}, "$push": {"tags": "b"}, "$set": {"sub.x": 1}})
            people.update_one({"_id": 3}, {"$inc": {"n": 4}})
            people.update_one({"_id": 3}, {"$rename": {"n": "m"}})
            people.replace_one({"_id": 2}, {"name": "bob", "age": 30})
            people.delete_one({"_id": 2})
            people.insert_one({"_id": 2, "name": "bob again"})
            logged = list(c.local["oplog.rs"].find({"ns": f"{src}.people"}).sort("ts", 1))
            assert {e["op"] for e in logged} == {"i", "u", "d"}
            assert all("_id" in e["o"]["$set"] for e in logged if e["op"] == "u")  # FerretDB's whole documents
            applier = apply.OplogApplier(c, batch=4)
            for entry in logged:
                applier.add({**entry, "ns": f"{dst}.people"})
            applier.flush()
            assert applier.applied == len(logged)
            assert list(c[dst].people.find().sort("_id", 1)) == list(people.find().sort("_id", 1))
            assert c[dst].people.find_one({"_id": 1}) == {"_id": 1, "name": "ann", "tags": ["a", "b"], "sub": {"x": 1}}
        finally:
            c.drop_database(src)
            c.drop_database(dst)


# -- scripted servers (mockupdb) ------------------------------------------------------------------------

_NOT_SENT = ("$db", "lsid", "$readPreference", "$clusterTime", "txnNumber")


def _ok(request) -> bool:
    name, doc = request.command_name, request.doc
    if name == "insert":
        return request.ok(n=len(doc.get("documents", [])))
    if name in ("update", "delete"):
        return request.ok(n=1, nModified=1)
    if name == "aggregate":
        return request.ok(cursor={"id": 0, "firstBatch": [], "ns": f"{doc['$db']}.{doc['aggregate']}"})
    return request.ok()


class Scripted:
    """A mockupdb server that records every command (database, document) and answers by ``script``: a command's
    name -> a handler of the request; the others are answered ok."""

    def __init__(self, script: dict[str, Callable] | None = None):
        self.script = script or {}
        self.commands: list[tuple[str, dict]] = []
        self.server = MockupDB(auto_ismaster={"ismaster": True, "minWireVersion": 0, "maxWireVersion": 17})
        self.server.autoresponds("hello", isWritablePrimary=True, minWireVersion=0, maxWireVersion=17)
        self.server.autoresponds(self._answer)
        self.server.run()
        self.client = pymongo.MongoClient(f"mongodb://127.0.0.1:{self.server.port}/", directConnection=True,
                                          serverSelectionTimeoutMS=5000)

    def _answer(self, request) -> bool:
        name = request.command_name
        if not name or name.lower() in ("ismaster", "hello", "endsessions"):
            return False
        doc = request.doc
        self.commands.append((doc.get("$db"), {k: v for k, v in doc.items() if k not in _NOT_SENT}))
        return self.script.get(name, _ok)(request)

    def names(self) -> list[tuple[str, str]]:
        return [(db, next(iter(doc))) for db, doc in self.commands]

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(script: dict[str, Callable] | None = None) -> Scripted:
        made.append(Scripted(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _not_found(request) -> bool:
    return request.command_err(59, f"no such command: '{request.command_name}'", codeName="CommandNotFound")


# -- the applyOps path --------------------------------------------------------------------------------


def _crud(db: str = "app") -> list[dict]:
    people = f"{db}.people"
    return [
        {"ts": _ts(1), "op": "i", "ns": people, "o": {"_id": 1, "name": "a"}},
        {"ts": _ts(2), "op": "n", "ns": "", "o": {"msg": "periodic noop"}},
        {"ts": _ts(3), "op": "u", "ns": people, "o2": {"_id": 1}, "o": {"$v": 2, "diff": {"u": {"name": "b"}}}},
        {"ts": _ts(4), "op": "i", "ns": people, "o": {"_id": 2, "name": "c"}},
        {"ts": _ts(5), "op": "d", "ns": people, "o": {"_id": 1}},
        {"ts": _ts(6), "op": "n", "ns": "", "o": {"msg": "periodic noop"}},
        {"ts": _ts(7), "op": "c", "ns": f"{db}.$cmd", "o": {"create": "later"}},
        {"ts": _ts(8), "op": "i", "ns": f"{db}.later", "o": {"_id": 1}},
    ]


def test_apply_ops_in_batches_skipping_no_ops(scripted):
    s = scripted()
    entries = _crud()
    entries[3]["ui"] = _uuid()  # the source's collection UUID: left out, the target finds it by name
    nested_ui = _uuid()
    entries.append({"ts": _ts(9), "op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
        {"op": "i", "ns": "app.people", "o": {"_id": 9}, "ui": nested_ui}]}})
    applier = apply.OplogApplier(s.client, batch=4)
    for entry in entries[:5]:
        applier.add(entry)
    assert len(s.commands) == 1  # the fourth real entry filled the first batch: sent at once
    for entry in entries[5:]:
        applier.add(entry)
    assert len(s.commands) == 1
    applier.flush()
    applier.flush()  # nothing pending: nothing sent
    without_ui = {k: v for k, v in entries[3].items() if k != "ui"}
    assert s.commands == [
        ("admin", {"applyOps": [entries[0], entries[2], without_ui, entries[4]]}),
        ("admin", {"applyOps": [entries[6], entries[7], {**entries[8], "o": {"applyOps": [
            {"op": "i", "ns": "app.people", "o": {"_id": 9}}]}}]}),
    ]
    assert [len(doc["applyOps"]) for _, doc in s.commands] == [4, 3]
    assert applier.applied == 7


def test_apply_ops_leaves_index_builds_to_create_indexes(scripted):
    """As mongorestore: startIndexBuild/abortIndexBuild are skipped, commitIndexBuild and the oplog's
    createIndexes become createIndexes commands (applyOps does not take them on servers >= 4.4), in order."""
    s = scripted()
    cmd = "app.$cmd"
    entries = [
        {"ts": _ts(1), "op": "i", "ns": "app.people", "o": {"_id": 1}},
        {"ts": _ts(2), "op": "c", "ns": cmd, "o": SON([("startIndexBuild", "people"), ("indexes", [])])},
        {"ts": _ts(3), "op": "c", "ns": cmd, "o": SON([("commitIndexBuild", "people"), ("indexBuildUUID", _uuid()),
                                                       ("indexes", [{"v": 2, "key": {"name": 1}, "name": "name_1"}])])},
        {"ts": _ts(4), "op": "c", "ns": cmd, "o": SON([("createIndexes", "people"), ("v", 2), ("key", {"email": 1}),
                                                       ("name", "email_1"), ("unique", True)])},
        {"ts": _ts(5), "op": "c", "ns": cmd, "o": SON([("abortIndexBuild", "people"), ("indexes", [])])},
        {"ts": _ts(6), "op": "i", "ns": "app.people", "o": {"_id": 2}},
    ]
    applier = apply.OplogApplier(s.client, batch=100)
    for entry in entries:
        applier.add(entry)
    applier.flush()
    assert s.commands == [
        ("admin", {"applyOps": [entries[0]]}),
        ("app", {"createIndexes": "people", "indexes": [{"key": {"name": 1}, "name": "name_1"}]}),
        ("app", {"createIndexes": "people", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": True}]}),
        ("admin", {"applyOps": [entries[5]]}),
    ]
    assert applier.applied == 4


def test_command_not_found_falls_back_to_each_entry(scripted, caplog):
    s = scripted({"applyOps": _not_found})
    entries = _crud()
    entries[2:3] = [
        {"ts": _ts(3), "op": "u", "ns": "app.people", "o2": {"_id": 1}, "o": {"$v": 1, "$set": {"name": "b"}}},
        {"ts": _ts(3), "op": "u", "ns": "app.people", "o2": {"_id": 1}, "o": {"_id": 1, "name": "r"}},
    ]
    applier = apply.OplogApplier(s.client, batch=2)
    with caplog.at_level(logging.INFO, logger="stash_runner"):
        for entry in entries:
            applier.add(entry)
        applier.flush()
    assert [r.getMessage() for r in caplog.records].count(NO_APPLY_OPS + ": replaying the oplog entry by entry") == 1
    assert applier.applied == 7
    # applyOps is asked once; then every entry arrives as its own operation, in order
    assert s.names() == [("admin", "applyOps"), ("app", "update"), ("app", "update"), ("app", "update"),
                         ("app", "update"), ("app", "delete"), ("app", "create"), ("app", "update")]
    _, first = s.commands[0]
    assert first == {"applyOps": entries[:1] + entries[2:3]}
    updates = [doc["updates"][0] for _, doc in s.commands if "update" in doc]
    assert updates[0] == {"q": {"_id": 1}, "u": {"_id": 1, "name": "a"}, "upsert": True, "multi": False}  # insert
    assert updates[1] == {"q": {"_id": 1}, "u": {"$set": {"name": "b"}}, "upsert": False, "multi": False}  # $v gone
    assert updates[2] == {"q": {"_id": 1}, "u": {"_id": 1, "name": "r"}, "upsert": False, "multi": False}
    assert updates[3] == {"q": {"_id": 2}, "u": {"_id": 2, "name": "c"}, "upsert": True, "multi": False}
    assert updates[4] == {"q": {"_id": 1}, "u": {"_id": 1}, "upsert": True, "multi": False}  # into app.later
    assert all(doc.get("update") == "people" for _, doc in s.commands[1:5])
    assert s.commands[5] == ("app", {"delete": "people", "ordered": True, "deletes": [{"q": {"_id": 1}, "limit": 1}]})
    assert s.commands[6] == ("app", {"create": "later"})
    assert s.commands[7][1]["update"] == "later"


def test_another_apply_ops_error_propagates(scripted):
    s = scripted({"applyOps": lambda r: r.command_err(2, "bad oplog entry", codeName="BadValue")})
    applier = apply.OplogApplier(s.client, batch=10)
    for entry in _crud():
        applier.add(entry)
    with pytest.raises(OperationFailure) as e:
        applier.flush()
    assert e.value.code == 2
    assert s.names() == [("admin", "applyOps")]  # nothing replayed another way
    assert applier.applied == 0


def test_command_not_found_after_apply_ops_worked_is_not_a_fallback(scripted):
    answers = iter([lambda r: r.ok(), _not_found])
    s = scripted({"applyOps": lambda r: next(answers)(r)})
    applier = apply.OplogApplier(s.client, batch=1)
    applier.add(_crud()[0])
    with pytest.raises(OperationFailure) as e:
        applier.add(_crud()[3])
    assert e.value.code == 59
    assert s.names() == [("admin", "applyOps"), ("admin", "applyOps")]
    assert applier.applied == 1


# -- users and roles ----------------------------------------------------------------------------------


def _raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


USER = {"_id": "app.alice", "userId": Binary.from_uuid(uuid.UUID(int=1)), "user": "alice", "db": "app",
        "credentials": {"SCRAM-SHA-256": {"iterationCount": 15000, "salt": "c2FsdA==", "storedKey": "a2V5",
                                          "serverKey": "c2tleQ=="}},
        "roles": [{"role": "readWrite", "db": "app"}]}
ROLE = {"_id": "app.reader", "role": "reader", "db": "app", "privileges": [], "roles": []}


def _merge_sequence(drop: bool) -> list[tuple[str, dict]]:
    return [
        ("admin", {"drop": "tempusers"}),
        ("admin", {"insert": "tempusers", "ordered": True, "documents": [USER]}),
        ("admin", {"drop": "temproles"}),
        ("admin", {"insert": "temproles", "ordered": True, "documents": [ROLE]}),
        ("admin", {"_mergeAuthzCollections": 1, "tempUsersCollection": "admin.tempusers",
                   "tempRolesCollection": "admin.temproles", "drop": drop, "db": ""}),
        ("admin", {"drop": "tempusers"}),
        ("admin", {"drop": "temproles"}),
    ]


@pytest.mark.parametrize("drop", [False, True])
def test_users_and_roles_go_through_temp_collections_and_merge(scripted, drop):
    s = scripted()
    apply.merge_users_and_roles(s.client, [_raw(USER)], [_raw(ROLE)], drop)
    assert s.commands == _merge_sequence(drop)
    merge = s.commands[4][1]
    assert list(merge) == ["_mergeAuthzCollections", "tempUsersCollection", "tempRolesCollection", "drop", "db"]
    assert s.commands[1][1]["documents"][0]["userId"] == USER["userId"]  # the documents as they were


def test_users_only_fill_no_temproles(scripted):
    s = scripted()
    apply.merge_users_and_roles(s.client, [_raw(USER)], [], False)
    assert s.names() == [("admin", "drop"), ("admin", "insert"), ("admin", "drop"), ("admin", "_mergeAuthzCollections"),
                         ("admin", "drop"), ("admin", "drop")]


def test_a_failed_merge_still_drops_the_temp_collections(scripted):
    s = scripted({"_mergeAuthzCollections": lambda r: r.command_err(13, "not authorized", codeName="Unauthorized")})
    with pytest.raises(OperationFailure) as e:
        apply.merge_users_and_roles(s.client, [_raw(USER)], [_raw(ROLE)], True)
    assert e.value.code == 13
    assert s.commands == _merge_sequence(True)


def test_a_server_refusing_system_users_is_a_one_line_error(scripted):
    def insert(request) -> bool:
        if request.doc["insert"].startswith("system."):
            return request.command_err(13, "not authorized on admin to execute command { insert: \"system.users\" }",
                                       codeName="Unauthorized")
        return _ok(request)

    s = scripted({"_mergeAuthzCollections": _not_found, "insert": insert})
    with pytest.raises(ToolFailed) as e:
        apply.merge_users_and_roles(s.client, [_raw(USER)], [_raw(ROLE)], False)
    message = str(e.value)
    assert "\n" not in message
    assert "admin.system.users" in message and "app.alice" in message and "not authorized" in message
    assert "--nsExclude=admin.system.*" in message
    assert s.names()[-2:] == [("admin", "drop"), ("admin", "drop")]
    assert s.commands[-2:] == [("admin", {"drop": "tempusers"}), ("admin", {"drop": "temproles"})]


def _login(server, user: str, password: str, db: str) -> None:
    with pymongo.MongoClient("127.0.0.1", server.port, username=user, password=password, authSource=db,
                             authMechanism="SCRAM-SHA-256", directConnection=True,
                             serverSelectionTimeoutMS=5000) as c:
        c[db].command("ping")


def test_users_on_ferretdb_are_written_directly_keeping_the_targets(ferretdb, caplog):
    """FerretDB has no _mergeAuthzCollections but takes writes to admin.system.users: a missing user is written
    with its hashes (it logs in with its old password), a user the target has is kept as the target has it."""
    db = f"units_auth_{_tag()}"
    raw = CodecOptions(document_class=RawBSONDocument)
    with ferretdb.client() as c:
        try:
            c[db].command("createUser", "alice", pwd="alice-pw", roles=[])
            c[db].command("createUser", "bob", pwd="bob-old", roles=[])
            users = list(c.admin.get_collection("system.users", codec_options=raw).find({"db": db}).sort("_id", 1))
            roles = [_raw({"_id": f"{db}.reader", "role": "reader", "db": db, "privileges": [], "roles": []})]
            assert [u["_id"] for u in users] == [f"{db}.alice", f"{db}.bob"]
            # the target: alice is missing, bob has another password
            c[db].command("dropUser", "alice")
            c[db].command("updateUser", "bob", pwd="bob-new")
            with caplog.at_level(logging.INFO, logger="stash_runner"):
                apply.merge_users_and_roles(c, users, roles, drop=False)
            _login(ferretdb, "alice", "alice-pw", db)
            _login(ferretdb, "bob", "bob-new", db)
            with pytest.raises(OperationFailure) as e:
                _login(ferretdb, "bob", "bob-old", db)
            assert e.value.code == 18
            assert f"admin.system.users: kept the target's {db}.bob (it exists there)" in caplog.messages
            assert c.admin["system.roles"].find_one({"_id": f"{db}.reader"})["role"] == "reader"
            assert not {"tempusers", "temproles"} & set(c.admin.list_collection_names())
        finally:
            c.admin["system.users"].delete_many({"db": db})
            c.admin["system.roles"].delete_many({"db": db})
            c.drop_database(db)


# -- collections and indexes ------------------------------------------------------------------------------


def _index_specs(ns: str) -> list[dict]:
    """Index specs as mongodump's metadata lists them (``v``, and ``ns`` from servers before 4.4)."""
    return [
        {"v": 2, "key": {"_id": 1}, "name": "_id_", "ns": ns},
        {"v": 2, "key": {"email": 1}, "name": "email_1", "unique": True, "ns": ns},
        {"v": 2, "key": SON([("a", 1), ("b", -1)]), "name": "a_1_b_-1", "ns": ns},
        {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600},
        {"v": 2, "key": {"s": 1}, "name": "s_1", "sparse": True},
        {"v": 2, "key": {"p": 1}, "name": "p_1", "partialFilterExpression": {"p": {"$exists": True}}},
        {"v": 2, "key": {"body": "text"}, "name": "body_text"},
    ]


def _without_server_fields(index) -> dict:
    return {k: v for k, v in index.items() if k not in ("v", "ns")}


def test_indexes_on_mongo_java_server_are_recreated_equal(mongo_java):
    db = f"units_idx_{_tag()}"
    ns = f"{db}.things"
    specs = _index_specs(ns)
    with mongo_java.client() as c:
        try:
            apply.create_collection(c, ns, {"uuid": uuid.uuid4().hex})  # the source's UUID is not sent
            assert apply.create_indexes(c, ns, specs) == 6  # every one but _id's
            listed = {i["name"]: _without_server_fields(i) for i in c[db].things.list_indexes()}
            assert listed == {s["name"]: _without_server_fields(s) for s in specs}
            assert list(listed["a_1_b_-1"]["key"].items()) == [("a", 1), ("b", -1)]  # the order of the keys
            assert apply.create_indexes(c, ns, specs) == 6  # again: the same indexes, no error
            assert len(list(c[db].things.list_indexes())) == 7
            assert apply.create_indexes(c, ns, specs[:1]) == 0 and apply.create_indexes(c, ns, []) == 0
        finally:
            c.drop_database(db)


def test_collections_on_mongo_java_server(mongo_java):
    db = f"units_coll_{_tag()}"
    with mongo_java.client() as c:
        try:
            with pytest.raises(OperationFailure, match="capped collections is not yet implemented"):
                apply.create_collection(c, f"{db}.capped", {"capped": True, "size": 4096, "max": 10})
            # a validator and a collation are taken, but neither kept nor enforced
            apply.create_collection(c, f"{db}.valid", {"validator": {"$jsonSchema": {"required": ["a"]}},
                                                       "validationLevel": "strict", "validationAction": "error"})
            apply.create_collection(c, f"{db}.collated", {"collation": {"locale": "en", "strength": 2}})
            assert c[db].valid.options() == {} and c[db].collated.options() == {}
            c[db].valid.insert_one({"b": 1})
            # an existing collection is left as it is (NamespaceExists)
            apply.create_collection(c, f"{db}.valid", {"validator": {"b": {"$exists": False}}})
            assert c[db].valid.count_documents({}) == 1
            assert sorted(c[db].list_collection_names()) == ["collated", "valid"]
        finally:
            c.drop_database(db)


def test_collections_and_indexes_on_ferretdb(ferretdb):
    db = f"units_coll_{_tag()}"
    ns = f"{db}.things"
    with ferretdb.client() as c:
        try:
            apply.create_collection(c, f"{db}.capped", {"capped": True, "size": 4096, "max": 10,
                                                        "uuid": uuid.uuid4().hex})
            assert c[db].capped.options() == {"capped": True, "size": 4096, "max": 10}
            # an existing collection keeps its options
            apply.create_collection(c, f"{db}.capped", {"capped": True, "size": 1 << 20})
            assert c[db].capped.options() == {"capped": True, "size": 4096, "max": 10}
            for options in ({"validator": {"$jsonSchema": {"required": ["a"]}}},
                            {"collation": {"locale": "en", "strength": 2}}):
                with pytest.raises(OperationFailure) as e:
                    apply.create_collection(c, f"{db}.unsupported", options)
                assert e.value.code == 238  # NotImplemented
            assert "unsupported" not in c[db].list_collection_names()

            specs = _index_specs(ns)
            with pytest.raises(OperationFailure) as e:  # what create_indexes strips is refused as it comes
                c[db].command(SON([("createIndexes", "things"), ("indexes", [specs[1]])]))
            assert e.value.code == 2
            supported = specs[:3] + specs[4:5]  # _id's, unique, compound, sparse
            assert apply.create_indexes(c, ns, supported) == 3
            listed = {i["name"]: _without_server_fields(i) for i in c[db].things.list_indexes()}
            expected = {s["name"]: _without_server_fields(s) for s in supported}
            del expected["s_1"]["sparse"]  # FerretDB takes the sparse option but does not keep it
            assert listed == expected
            assert list(listed["a_1_b_-1"]["key"].items()) == [("a", 1), ("b", -1)]
            for spec, code in ((specs[3], 238), (specs[5], 238), (specs[6], 27)):  # TTL, partial, text
                with pytest.raises(OperationFailure) as e:
                    apply.create_indexes(c, ns, [spec])
                assert e.value.code == code, spec
        finally:
            c.drop_database(db)
