"""The MongoDB test peers answer pymongo as the MongoDB tests will need them to."""

from __future__ import annotations

import datetime
import re
import uuid

import pymongo
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, Regex, Timestamp
from mockupdb import MockupDB
from pymongo.errors import OperationFailure


def _insert_find(client: pymongo.MongoClient, db: str) -> None:
    col = client[db]["things"]
    col.insert_one({"_id": "a", "n": 1, "tags": ["x", "y"], "sub": {"s": "t"}})
    assert col.find_one({"_id": "a"}) == {"_id": "a", "n": 1, "tags": ["x", "y"], "sub": {"s": "t"}}
    assert [d["_id"] for d in col.find({"n": {"$gte": 1}})] == ["a"]


def test_ferretdb_scram(ferretdb):
    assert ferretdb.url == f"mongodb://127.0.0.1:{ferretdb.port}/"
    with ferretdb.client() as c:
        assert c.admin.command("ping")["ok"] == 1
        _insert_find(c, "peer_test")
    # An explicit SCRAM-SHA-256 URL works; a wrong password and no credentials are refused.
    url = f"mongodb://{ferretdb.username}:{ferretdb.password}@127.0.0.1:{ferretdb.port}/?authSource=admin"
    with pymongo.MongoClient(url, authMechanism="SCRAM-SHA-256", directConnection=True,
                             serverSelectionTimeoutMS=5000) as c:
        assert c.peer_test.things.count_documents({}) == 1
    with ferretdb.client(password=ferretdb.password + "-wrong") as c, pytest.raises(OperationFailure) as e:
        c.admin.command("ping")
    assert e.value.code == 18  # AuthenticationFailed
    with ferretdb.client(auth=False) as c, pytest.raises(OperationFailure) as e:
        c.peer_test.things.find_one()
    assert e.value.code == 13  # Unauthorized
    # The password never reached FerretDB's argv nor its log.
    with open(f"/proc/{ferretdb.pid}/cmdline", "rb") as f:
        assert ferretdb.password.encode() not in f.read()
    assert ferretdb.password not in ferretdb.log_tail(1 << 20)


def test_ferretdb_replica_set_keeps_an_oplog(ferretdb_rs):
    with ferretdb_rs.client() as c:
        hello = c.admin.command("hello")
        assert hello["setName"] == "rs0" and hello["isWritablePrimary"]
        assert "oplog.rs" in c.local.list_collection_names()
        marker = uuid.uuid4().hex
        c.peer_test.events.insert_one({"marker": marker})
        entries = list(c.local["oplog.rs"].find({"ns": "peer_test.events", "op": "i", "o.marker": marker}))
        assert len(entries) == 1
        assert isinstance(entries[0]["ts"], Timestamp)
    # Replica-set discovery works too (the member reports itself as 127.0.0.1:PORT).
    with pymongo.MongoClient(ferretdb_rs.url, replicaSet="rs0", username=ferretdb_rs.username,
                             password=ferretdb_rs.password, serverSelectionTimeoutMS=5000) as c:
        assert c.peer_test.events.count_documents({"marker": marker}) == 1


def test_mongo_java_server_bson_types_and_indexes(mongo_java):
    with mongo_java.client() as c:
        assert c.admin.command("ping")["ok"] == 1
        assert c.admin.command("isMaster")["maxWireVersion"] == 8
        _insert_find(c, "peer_test")
        doc = {
            "_id": 1,
            "dec": Decimal128("1234.5678"),
            "i64": Int64(2**40 + 1),
            "uuid": Binary(uuid.uuid4().bytes, 4),
            "re": Regex("^a.*b$", re.IGNORECASE),
            "ts": Timestamp(1_700_000_000, 7),
            "min": MinKey(),
            "max": MaxKey(),
            "code": Code("function () { return 1; }"),
            "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
            "nested": [[1, 2], [3]],
        }
        types = c.peer_test.types
        types.insert_one(doc)
        got = types.find_one({"_id": 1})
        assert got == doc
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in doc.items()}
        assert got["uuid"].subtype == 4

        ix = c.peer_test.indexed
        ix.create_index("email", unique=True, name="email_unique")
        ix.create_index([("a", 1), ("b", -1)], name="a_b")
        ix.create_index("created", expireAfterSeconds=3600, name="ttl")
        ix.create_index("s", sparse=True, name="sparse")
        ix.create_index("p", partialFilterExpression={"p": {"$exists": True}}, name="partial")
        ix.create_index([("body", "text")], name="text")
        listed = {i["name"]: i for i in ix.list_indexes()}
        assert set(listed) == {"_id_", "email_unique", "a_b", "ttl", "sparse", "partial", "text"}
        assert listed["email_unique"]["unique"] is True
        assert list(listed["a_b"]["key"].items()) == [("a", 1), ("b", -1)]
        assert listed["ttl"]["expireAfterSeconds"] == 3600
        assert listed["sparse"]["sparse"] is True
        assert listed["partial"]["partialFilterExpression"] == {"p": {"$exists": True}}
        assert dict(listed["text"]["key"]) == {"body": "text"}


def test_mockupdb_smoke():
    server = MockupDB(auto_ismaster={"ismaster": True, "minWireVersion": 0, "maxWireVersion": 17})
    server.autoresponds("hello", isWritablePrimary=True, minWireVersion=0, maxWireVersion=17)
    server.autoresponds("ping", ok=1)
    server.run()
    try:
        assert server.host in ("localhost", "127.0.0.1")
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{server.port}/", directConnection=True,
                                 serverSelectionTimeoutMS=5000) as c:
            assert c.admin.command("ping")["ok"] == 1
    finally:
        server.stop()
