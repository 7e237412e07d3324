"""How the MongoDB driver reaches its server, each requirement against the most real peer there is.

- Topology (standalone, service, replica set, sharded) from the AppBinding: pure, plus the pymongo client it
  gives and a real FerretDB speaking as replica set ``rs0``.
- SCRAM (the server picks SHA-1 or SHA-256), authSource, URL-special credentials, a wrong password: FerretDB.
- ``wait_ready`` waiting for a server that starts late, and giving up on one that never comes: FerretDB.
- TLS with the AppBinding's caBundle, a wrong CA, a server that requires a client certificate (client.pem, or
  tls.crt + tls.key), the private temp files: FerretDB's TLS listener, certificates made here.
- X.509 authentication: FerretDB has none, so a MockupDB server behind TLS that requires our client certificate
  checks the conversation as MongoDB does (``$external``, the user equal to the certificate's subject as
  ``openssl x509 -subject -nameopt RFC2253`` prints it).
- SRV (mongodb+srv): a small DNS server on loopback answers ``_mongodb._tcp.<name>``; the target's address
  comes from a getaddrinfo shim (pymongo resolves hosts through the OS, whose resolver the test cannot point).
- Throughout: no password in any error, log record (pymongo's own DEBUG records included) or repr, and no
  child process started by the runner's code.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import mockupdb
import pymongo
import pymongo.synchronous.auth as pymongo_auth
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mockupdb import MockupDB

from drivers.base import DriverOptions, Endpoint
from drivers.mongodb.connection import (
    SELECTION_TIMEOUT_MS,
    Topology,
    certificate_subject,
    deployment_client,
)
from drivers.mongodb.driver import MongoDriver
from stash_runner.errors import BadInput, DatabaseUnreachable
from stash_runner.stash.objects import AppBinding
from stash_runner.stash.resolve import endpoint_for

from .mongoservers import MongoPeer, TlsFiles, start_ferretdb
from .pgcluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "demo"
ATTEMPT_S = SELECTION_TIMEOUT_MS / 1000  # one pymongo server selection inside wait_ready
# URL-special characters, quotes, a backslash, non-ASCII. (A ',' or '=' in the user name, which SCRAM escapes
# as =2C/=3D, FerretDB 1.24 does not unescape: such a user cannot log in to it with any client.)
SPECIAL_PASSWORD = "p@ss:w/rd?#[]&=+ ;,%25\"'\\é{}"
SPECIAL_USER = "stash:backup@ops/x?y#z%25"
SRV_NAME = "cluster.example.test"
SRV_TARGET = "mongo-0.example.test"  # an SRV target must be in the SRV name's parent domain

WIRE = {"minWireVersion": 0, "maxWireVersion": 17, "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000, "helloOk": True}


# -- guards: no secret anywhere, no child process from the runner ----------------------------------------------


@pytest.fixture(autouse=True)
def secrets(caplog) -> Iterator[list[str]]:
    """Every secret a test registers must be in no log record (ours, and pymongo's down to DEBUG)."""
    caplog.set_level(logging.DEBUG)
    registered: list[str] = []
    yield registered
    records = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}"
                        for when in ("setup", "call") for r in caplog.get_records(when))
    for s in registered:
        assert s not in records, "a secret was logged"


def _assert_no_secret(error: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error)
    for s in secrets:
        assert s not in text, "a secret is in the error"


@pytest.fixture(autouse=True)
def no_child_process_from_the_runner(monkeypatch) -> Iterator[None]:
    """Fail if code of the runner (drivers/, stash_runner/, backends/) starts any process: the test's own
    FerretDB and openssl runs are allowed."""
    started: list[Any] = []
    runner_dirs = tuple(os.path.join(ROOT, d) + os.sep for d in ("drivers", "stash_runner", "backends"))

    def from_runner() -> bool:
        return any(f.filename.startswith(runner_dirs) for f in traceback.extract_stack())

    real_popen = subprocess.Popen.__init__

    def popen(self, args, *a, **kw):
        if from_runner():
            started.append(args)
        return real_popen(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    for name in ("system", "posix_spawn", "posix_spawnp", "fork", "execv", "execve"):
        real = getattr(os, name)

        def guarded(*a, _real=real, _name=name, **kw):
            if from_runner():
                started.append((_name, a))
            return _real(*a, **kw)

        monkeypatch.setattr(os, name, guarded)
    yield
    assert started == [], f"the runner started processes: {started}"


def test_the_mongodb_driver_has_no_way_to_start_a_process():
    """Natively through pymongo: nothing of the driver's package imports a process API (no mongodump, no
    mongo shell, hence no argv to hold a password)."""
    pkg = os.path.join(ROOT, "drivers", "mongodb")
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), encoding="utf-8") as f:
                src = f.read()
            for needle in ("import subprocess", "from subprocess", "os.system", "os.exec", "os.spawn",
                           "os.posix_spawn", "os.fork", "os.popen", "from ..process", "drivers.process"):
                assert needle not in src, f"drivers/mongodb/{name}: {needle}"


# -- objects: AppBindings and Secrets as Stash reads them ------------------------------------------------------


class Objects:
    """An in-memory object source (what ``--objects`` files or the API server give)."""

    def __init__(self, *objs: dict):
        self.objs = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}

    def get(self, kind: str, namespace: str, name: str) -> dict:
        try:
            return self.objs[(kind, namespace, name)]
        except KeyError:
            raise BadInput(f"{kind} {namespace}/{name} not found") from None


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def secret(name: str, **data: bytes | str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "data": {k.replace("_", "."): _b64(v) for k, v in data.items()}}


def appbinding(name: str, *, url: str | None = None, service: dict | None = None, ca: bytes | None = None,
               auth: str | None = None, tls: str | None = None, parameters: dict | None = None) -> dict:
    cc: dict[str, Any] = {"url": url} if url else {"service": service}
    if ca:
        cc["caBundle"] = _b64(ca)
    spec: dict[str, Any] = {"type": "kubedb.com/mongodb", "clientConfig": cc}
    if auth:
        spec["secret"] = {"name": auth}
    if tls:
        spec["tlsSecret"] = {"name": tls}
    if parameters is not None:
        spec["parameters"] = {"apiVersion": "config.kubedb.com/v1alpha1", "kind": "MongoConfiguration",
                              **parameters}
    return {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def endpoint(ab: dict, *others: dict) -> Endpoint:
    source = Objects(ab, *others)
    return endpoint_for(source, AppBinding.from_object(ab, NS))


def driver(ab: dict, *others: dict, **options: Any) -> MongoDriver:
    return MongoDriver.from_endpoint(endpoint(ab, *others), DriverOptions(driver="mongodb", **options))


def closing_driver(ab: dict, *others: dict, **options: Any) -> contextlib.closing[MongoDriver]:
    """A driver that is closed (its temp files removed) when the test leaves the ``with``."""
    return contextlib.closing(driver(ab, *others, **options))


# -- 1. topology from the AppBinding ---------------------------------------------------------------------------


def test_url_appbinding_is_a_standalone_server():
    ep = endpoint(appbinding("mg", url="mongodb://mongo.demo.svc:27018/"))
    t = Topology.from_endpoint(ep)
    assert (t.kind, t.host, t.port, t.srv, t.replica_set, t.shards) == ("standalone", "mongo.demo.svc", 27018,
                                                                        False, None, {})
    d = MongoDriver.from_endpoint(ep, DriverOptions())
    assert d.target == "MongoDB mongo.demo.svc:27018 (AppBinding demo/mg)"
    with deployment_client(d.topology, d.creds) as c:  # connect=False: nothing is contacted
        assert c.topology_description.topology_type_name == "Single"  # directConnection
        assert [s.address for s in c.topology_description.server_descriptions().values()] == [
            ("mongo.demo.svc", 27018)]


def test_service_appbinding_is_the_services_dns_name_and_port():
    t = Topology.from_endpoint(endpoint(appbinding("mg", service={"name": "mongo", "port": 27017,
                                                                  "scheme": "mongodb"})))
    assert (t.kind, t.host, t.port) == ("standalone", "mongo.demo.svc", 27017)
    # no port: 27017
    d = driver(appbinding("mg", service={"name": "mongo", "scheme": "mongodb"}))
    with deployment_client(d.topology, d.creds) as c:
        assert list(c.topology_description.server_descriptions()) == [("mongo.demo.svc", 27017)]


def test_one_replica_set_entry_is_a_replica_set_with_its_seeds_and_name():
    ab = appbinding("mg", url="mongodb://mongo.demo.svc:27017",
                    parameters={"replicaSets": {"host-0": "rs0/h1:27017,h2:27017"}})
    d = driver(ab)
    t = d.topology
    assert t.kind == "replicaset"
    assert (t.replica_set.name, t.replica_set.seeds) == ("rs0", ("h1:27017", "h2:27017"))
    assert d.target == "MongoDB replica set rs0 (h1:27017, h2:27017) (AppBinding demo/mg)"
    with deployment_client(t, d.creds) as c:
        assert c.options.replica_set_name == "rs0"
        assert sorted(c.topology_description.server_descriptions()) == [("h1", 27017), ("h2", 27017)]
        assert c.topology_description.topology_type_name == "ReplicaSetNoPrimary"


def test_config_server_and_several_replica_sets_are_a_sharded_cluster_in_host_order():
    shards = {f"host-{i}": f"shard{i}/s{i}a:27017,s{i}b:27017" for i in (10, 2, 0, 1)}
    d = driver(appbinding("mg", url="mongodb://mongos.demo.svc:27017",
                          parameters={"configServer": "cnfRepSet/c0:27017,c1:27017,c2:27017",
                                      "replicaSets": shards}))
    t = d.topology
    assert t.kind == "sharded" and (t.host, t.port) == ("mongos.demo.svc", 27017)
    assert t.config_server.name == "cnfRepSet" and t.config_server.seeds == ("c0:27017", "c1:27017", "c2:27017")
    assert list(t.shards) == ["host-0", "host-1", "host-2", "host-10"]  # numeric order, not Go's map order
    assert t.shards["host-10"].name == "shard10" and t.shards["host-10"].seeds == ("s10a:27017", "s10b:27017")
    assert d.target == "MongoDB sharded cluster at mongos.demo.svc:27017 (AppBinding demo/mg)"


@pytest.mark.parametrize("parameters, field, words", [
    ({"replicaSets": "rs0/h1:27017"}, "spec.parameters.replicaSets", "must be a mapping"),
    ({"replicaSets": ["rs0/h1:27017"]}, "spec.parameters.replicaSets", "must be a mapping"),
    ({"replicaSets": {"host-0": "rs0/"}}, "spec.parameters.replicaSets.host-0", "names no host"),
    ({"replicaSets": {"host-0": ""}}, "spec.parameters.replicaSets.host-0", "rsName/host:port"),
    ({"replicaSets": {"host-0": 27017}}, "spec.parameters.replicaSets.host-0", "rsName/host:port"),
    ({"replicaSets": {"host-0": "rs0/a:1", "host-1": "rs1/b:1"}}, "spec.parameters", "need a configServer"),
    ({"configServer": "cnf/c0:27017"}, "spec.parameters", "configServer is set but replicaSets is empty"),
    ({"configServer": "cnf/", "replicaSets": {"host-0": "rs0/a:1"}}, "spec.parameters.configServer",
     "names no host"),
])
def test_bad_parameters_are_one_line_naming_the_field(parameters, field, words):
    ab = appbinding("mg", url="mongodb://mongo.demo.svc:27017", parameters=parameters)
    with pytest.raises(BadInput) as e:
        driver(ab)
    msg = str(e.value)
    assert msg.startswith(f"AppBinding demo/mg: {field}") and words in msg and "\n" not in msg


def test_replica_set_seeds_and_name_reach_a_real_replica_set(ferretdb_rs, secrets):
    """FerretDB as replica set rs0: the seed list and set name from spec.parameters find its primary; a wrong
    set name finds nothing (pymongo drops a member of another set)."""
    secrets.append(ferretdb_rs.password)
    auth = secret("mg-auth", username=ferretdb_rs.username, password=ferretdb_rs.password)
    seeds = f"127.0.0.1:{ferretdb_rs.port}"
    ab = appbinding("mg-rs", url="mongodb://mongo.demo.svc:27017", auth="mg-auth",
                    parameters={"replicaSets": {"host-0": f"rs0/{seeds}"}})
    with closing_driver(ab, auth) as d:
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            assert c.admin.command("hello")["setName"] == "rs0"
            assert c.topology_description.topology_type_name == "ReplicaSetWithPrimary"
    wrong = appbinding("mg-rs9", url="mongodb://mongo.demo.svc:27017", auth="mg-auth",
                       parameters={"replicaSets": {"host-0": f"rs9/{seeds}"}})
    with closing_driver(wrong, auth) as d, pytest.raises(DatabaseUnreachable) as e:
        d.wait_ready(1)
    assert str(e.value).startswith(f"MongoDB replica set rs9 ({seeds}) (AppBinding demo/mg-rs9): not ready after 1 s")
    _assert_no_secret(e.value, ferretdb_rs.password)


# -- 2. SCRAM on FerretDB --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ferretdb_users(tmp_path_factory) -> Iterator[MongoPeer]:
    """A FerretDB of this module's own (SCRAM) for the tests that create users: the session's ``ferretdb`` is
    left as other modules expect it."""
    peer = start_ferretdb(str(tmp_path_factory.mktemp("ferretdb-users")), username="users-admin",
                          password=f"users-{uuid.uuid4().hex}")
    yield peer
    peer.stop()


def _create_user(peer: MongoPeer, db: str, user: str, password: str, **kw: Any) -> None:
    with peer.client() as c:
        c[db].command("createUser", user, pwd=password, roles=[], **kw)


def _scram(peer: MongoPeer, name: str, username: str, password: str, **ab_kw: Any) -> tuple[dict, dict]:
    auth = secret(f"{name}-auth", username=username, password=password)
    return appbinding(name, url=ab_kw.pop("url", peer.url), auth=f"{name}-auth", **ab_kw), auth


@pytest.fixture
def spy_scram(monkeypatch) -> list[str]:
    """The SCRAM mechanism pymongo runs for each authentication (it asks the server which the user has)."""
    used: list[str] = []
    real = pymongo_auth._authenticate_scram

    def spy(credentials, conn, mechanism):
        used.append(mechanism)
        return real(credentials, conn, mechanism)

    monkeypatch.setattr(pymongo_auth, "_authenticate_scram", spy)
    return used


def test_scram_with_the_appbindings_secret(ferretdb, secrets, caplog):
    secrets.append(ferretdb.password)
    with closing_driver(*_scram(ferretdb, "mg", ferretdb.username, ferretdb.password)) as d:
        assert d.target == f"MongoDB 127.0.0.1:{ferretdb.port} (AppBinding demo/mg)"
        assert ferretdb.password not in repr(d.creds) + repr(d.topology)
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            status = c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"]
            assert status == [{"user": ferretdb.username, "db": "admin"}]
            assert "admin" in c.list_database_names()


def test_url_special_characters_in_user_and_password_need_no_escaping(ferretdb_users, secrets):
    """As Stash puts them into a URI unescaped, '@', ':', '/', '?', '#', '%' ... would break it; here they go to
    pymongo as arguments, never through a URL."""
    secrets.append(SPECIAL_PASSWORD)
    user = f"{SPECIAL_USER}-{uuid.uuid4().hex[:6]}"
    _create_user(ferretdb_users, "admin", user, SPECIAL_PASSWORD)
    with closing_driver(*_scram(ferretdb_users, "mg-special", user, SPECIAL_PASSWORD)) as d:
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            assert c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [
                {"user": user, "db": "admin"}]


def test_auth_source_is_the_authentication_database_flag_else_admin(ferretdb_users, secrets):
    """A user defined in another database authenticates only there: --authentication-database (DriverOptions
    .auth_database) or the URL's authSource; with neither, admin is asked, and refuses it, at once."""
    db, user, password = f"appdb_{uuid.uuid4().hex[:8]}", "app-backup", "app-Secret-1"
    secrets.append(password)
    _create_user(ferretdb_users, db, user, password)
    ab, auth = _scram(ferretdb_users, "mg-app", user, password)
    with closing_driver(ab, auth, auth_database=db) as d:
        assert d.creds.auth_source == db
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            assert c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [
                {"user": user, "db": db}]
    ab_q, auth_q = _scram(ferretdb_users, "mg-app-q", user, password, url=f"{ferretdb_users.url}?authSource={db}")
    with closing_driver(ab_q, auth_q) as d:
        d.wait_ready(20)
    with closing_driver(ab, auth) as d:
        assert d.creds.auth_source == "admin"
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as e:
            d.wait_ready(30)
        assert time.monotonic() - started < 5
    assert "Authentication failed" in str(e.value)
    _assert_no_secret(e.value, password)


def test_wrong_password_fails_fast_naming_the_target_and_no_secret(ferretdb, secrets, caplog):
    wrong = ferretdb.password + "-Wrong!"
    secrets += [wrong, ferretdb.password]
    with closing_driver(*_scram(ferretdb, "mg", ferretdb.username, wrong)) as d:
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as e:
            d.wait_ready(60)
        took = time.monotonic() - started
    assert took < 5, f"took {took:.1f} s of a 60 s wait: a wrong password is not waited for"
    msg = str(e.value)
    assert msg.startswith(f"MongoDB 127.0.0.1:{ferretdb.port} (AppBinding demo/mg): Authentication failed")
    assert "\n" not in msg
    _assert_no_secret(e.value, wrong, ferretdb.password)


def test_the_server_chooses_scram_sha_1_or_sha_256(ferretdb_users, secrets, spy_scram):
    """FerretDB keeps the mechanisms createUser gave a user. The driver forces none (Stash forces SHA-256):
    pymongo asks the server (saslSupportedMechs) and runs what the user has."""
    tag = uuid.uuid4().hex[:6]
    users = {"SCRAM-SHA-1": (f"sha1-{tag}", "sha1-Secret"), "SCRAM-SHA-256": (f"sha256-{tag}", "sha256-Secret")}
    for mech, (user, password) in users.items():
        secrets.append(password)
        _create_user(ferretdb_users, "admin", user, password, mechanisms=[mech])
    for mech, (user, password) in users.items():
        spy_scram.clear()
        with closing_driver(*_scram(ferretdb_users, f"mg-{mech.lower()}", user, password)) as d:
            assert "authMechanism" not in d.creds.client_options()
            d.wait_ready(20)
        assert set(spy_scram) == {mech}, spy_scram
    # What Stash's hard-coded SCRAM-SHA-256 does with the SHA-1 user:
    user, password = users["SCRAM-SHA-1"]
    with pymongo.MongoClient("127.0.0.1", ferretdb_users.port, username=user, password=password, authSource="admin",
                             authMechanism="SCRAM-SHA-256", directConnection=True,
                             serverSelectionTimeoutMS=5000) as c, pytest.raises(pymongo.errors.OperationFailure):
        c.admin.command("ping")


# -- 3. --wait-timeout really waits ----------------------------------------------------------------------------


def _waiting_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stash_runner" and r.levelno == logging.INFO
            and r.getMessage().startswith("waiting for ")]


@pytest.mark.parametrize("delay", [3.0, 7.0])
def test_wait_ready_waits_for_a_server_that_starts_late(tmp_path, caplog, secrets, delay):
    """FerretDB starts ``delay`` s after wait_ready began, on a port reserved for it: wait_ready returns once it
    answers, and says while it waits what it waits for: "waiting for <target> (<N> s left): <why>" (each of its
    attempts lasts at most 2 s, so the first line comes within seconds)."""
    password = f"late-{uuid.uuid4().hex}"
    secrets.append(password)
    port = free_port()
    started: list[MongoPeer] = []
    failed: list[BaseException] = []

    def start_late() -> None:
        time.sleep(delay)
        try:
            started.append(start_ferretdb(str(tmp_path / "late"), username="late", password=password, port=port))
        except BaseException as e:  # reported by the test, not lost in the thread
            failed.append(e)

    ab, auth = appbinding("mg-late", url=f"mongodb://127.0.0.1:{port}", auth="late-auth"), \
        secret("late-auth", username="late", password=password)
    thread = threading.Thread(target=start_late, daemon=True)
    try:
        with closing_driver(ab, auth) as d:
            began = time.monotonic()
            thread.start()
            d.wait_ready(60)
            took = time.monotonic() - began
        assert not failed, failed
        assert took >= delay
        lines = _waiting_lines(caplog)
        assert lines, "nothing logged while waiting"
        target = f"MongoDB 127.0.0.1:{port} (AppBinding demo/mg-late)"
        assert lines[0].startswith(f"waiting for {target} (")
        left = int(lines[0].split(f"waiting for {target} (", 1)[1].split(" s left)")[0])
        assert 60 - 3 <= left <= 60
        assert "Connection refused" in lines[0]
    finally:
        thread.join(30)
        for peer in started:
            peer.stop()


def test_wait_ready_gives_up_on_nothing_after_its_timeout():
    """Nothing listens: DatabaseUnreachable naming the target, that it was not ready, and why, on one line,
    when the time asked for has passed (each attempt is bounded by the time left)."""
    port = free_port()  # nothing listens there
    with closing_driver(appbinding("mg-none", url=f"mongodb://127.0.0.1:{port}")) as d:
        began = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as e:
            d.wait_ready(2)
        took = time.monotonic() - began
    msg = str(e.value)
    assert msg.startswith(f"MongoDB 127.0.0.1:{port} (AppBinding demo/mg-none): not ready after 2 s: ")
    assert "Connection refused" in msg and "\n" not in msg and "Topology Description" not in msg
    assert 2 <= took <= 3


# -- certificates ----------------------------------------------------------------------------------------------

CLIENT_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Backup+Ops"),
    x509.NameAttribute(NameOID.COMMON_NAME, "stash-backup"),
])
# as `openssl x509 -subject -nameopt RFC2253` prints it: the last RDN first, ',' and '+' escaped
CLIENT_USER = "CN=stash-backup,OU=Backup\\+Ops,O=Example\\, Inc.,C=US"
# attributes whose OpenSSL short names (what openssl prints and MongoDB compares) are not RFC 4514's
RICH_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "NY"),
    x509.NameAttribute(NameOID.LOCALITY_NAME, "New York"),
    x509.NameAttribute(NameOID.STREET_ADDRESS, "1 Main St"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Backup"),
    x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"),
    x509.NameAttribute(NameOID.TITLE, "robot"),
    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "backup@example.test"),
    x509.NameAttribute(NameOID.COMMON_NAME, "stash-backup"),
])
RICH_USER = ("CN=stash-backup,emailAddress=backup@example.test,title=robot,serialNumber=42,OU=Backup,O=Example,"
             "street=1 Main St,L=New York,ST=NY,C=US")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, *, traditional: bool = False) -> bytes:
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(_now() - datetime.timedelta(hours=1))
                .not_valid_after(_now() + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)

    def issue(self, subject: x509.Name, *, server: bool = False,
              names: tuple[str, ...] = ()) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(_now() - datetime.timedelta(hours=1))
             .not_valid_after(_now() + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False))
        if names:
            sans: list[x509.GeneralName] = []
            for n in names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256()), key


@dataclass
class Pki:
    dir: str
    ca: CA
    other_ca: CA  # signed nothing the servers present
    server: TlsFiles  # for 127.0.0.1, localhost and the SRV target
    client_cert: bytes
    client_key: bytes
    rich_cert: bytes
    rich_key: bytes

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = str(tmp_path_factory.mktemp("pki"))
    ca, other = CA.make("stash-runner test CA"), CA.make("some other CA")
    server_cert, server_key = ca.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mongo")]), server=True,
                                       names=("127.0.0.1", "localhost", SRV_TARGET))
    client_cert, client_key = ca.issue(CLIENT_SUBJECT)
    rich_cert, rich_key = ca.issue(RICH_SUBJECT)
    p = Pki(d, ca, other, TlsFiles("", ""), _pem(client_cert), _key_pem(client_key), _pem(rich_cert),
            _key_pem(rich_key, traditional=True))
    p.server = TlsFiles(p.write("server.crt", _pem(server_cert)), p.write("server.key", _key_pem(server_key)))
    p.write("ca.crt", ca.pem)
    return p


def _openssl_subject(cert_pem: bytes) -> str:
    """What Stash runs to name the X.509 user: ``openssl x509 -subject -nameopt RFC2253``, 'subject=' trimmed."""
    out = subprocess.run(["openssl", "x509", "-inform", "PEM", "-subject", "-nameopt", "RFC2253", "-noout"],
                         input=cert_pem, capture_output=True, check=True).stdout.decode().strip()
    return out.removeprefix("subject=").strip()


needs_openssl = pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl CLI is not installed")


# -- 4. TLS: the AppBinding's caBundle, client certificates, private files -------------------------------------


@pytest.fixture(scope="module")
def ferretdb_tls(pki, tmp_path_factory) -> Iterator[MongoPeer]:
    """FerretDB with SCRAM and a TLS listener (``.tls_port``) presenting a certificate of ``pki.ca``."""
    peer = start_ferretdb(str(tmp_path_factory.mktemp("ferretdb-tls")), username="tls-admin",
                          password=f"tls-{uuid.uuid4().hex}", tls=pki.server)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def ferretdb_mtls(pki, tmp_path_factory) -> Iterator[MongoPeer]:
    """The same, with --listen-tls-ca-file: FerretDB then requires a client certificate signed by ``pki.ca``."""
    tls = TlsFiles(pki.server.cert_file, pki.server.key_file, ca_file=os.path.join(pki.dir, "ca.crt"))
    peer = start_ferretdb(str(tmp_path_factory.mktemp("ferretdb-mtls")), username="mtls-admin",
                          password=f"mtls-{uuid.uuid4().hex}", tls=tls)
    yield peer
    peer.stop()


def _tls_url(peer: MongoPeer) -> str:
    return f"mongodb://127.0.0.1:{peer.tls_port}"


def test_tls_with_the_appbindings_ca_bundle(ferretdb_tls, pki, secrets):
    peer = ferretdb_tls
    secrets.append(peer.password)
    auth = secret("tls-auth", username=peer.username, password=peer.password)
    with closing_driver(appbinding("mg-tls", url=_tls_url(peer), ca=pki.ca.pem, auth="tls-auth"), auth) as d:
        opts = d.creds.client_options()
        assert opts["tls"] is True and opts["tlsCAFile"] == d.creds.ca_file and "tlsCertificateKeyFile" not in opts
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            assert c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"] == peer.username
    # The TLS port speaks nothing else: a plain client is not answered.
    with pymongo.MongoClient("127.0.0.1", peer.tls_port, directConnection=True, serverSelectionTimeoutMS=1000) as c, \
            pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
        c.admin.command("ping")


def test_tls_with_a_wrong_ca_fails_one_line_naming_no_secret(ferretdb_tls, pki, secrets):
    peer = ferretdb_tls
    secrets.append(peer.password)
    auth = secret("tls-auth", username=peer.username, password=peer.password)
    with closing_driver(appbinding("mg-tls", url=_tls_url(peer), ca=pki.other_ca.pem, auth="tls-auth"), auth) as d, \
            pytest.raises(DatabaseUnreachable) as e:
        d.wait_ready(1)
    msg = str(e.value)
    assert msg.startswith(f"MongoDB 127.0.0.1:{peer.tls_port} (AppBinding demo/mg-tls): not ready after 1 s: ")
    assert "certificate verify failed" in msg and "\n" not in msg
    _assert_no_secret(e.value, peer.password)


def test_tls_true_in_the_url_without_a_ca_bundle_uses_the_system_cas(ferretdb_tls, pki, secrets, monkeypatch):
    """``?tls=true`` (or ``ssl=true``) and no caBundle: TLS, verified against the system's CAs (here: OpenSSL's
    SSL_CERT_FILE pointed at the test CA)."""
    peer = ferretdb_tls
    secrets.append(peer.password)
    monkeypatch.setenv("SSL_CERT_FILE", os.path.join(pki.dir, "ca.crt"))
    auth = secret("tls-auth", username=peer.username, password=peer.password)
    for query in ("tls=true", "ssl=true"):
        with closing_driver(appbinding("mg-tls", url=f"{_tls_url(peer)}/?{query}", auth="tls-auth"), auth) as d:
            assert d.creds.client_options()["tls"] is True and not d.creds.ca_file
            d.wait_ready(20)


def _client_secret(pki: Pki, form: str, *, rich: bool = False) -> dict:
    cert, key = (pki.rich_cert, pki.rich_key) if rich else (pki.client_cert, pki.client_key)
    if form == "client.pem":
        return secret("mg-client-cert", client_pem=cert + key)
    if form == "client.pem key first":
        return secret("mg-client-cert", client_pem=key + cert)
    return secret("mg-client-cert", tls_crt=cert, tls_key=key)


CERT_FORMS = ["client.pem", "client.pem key first", "tls.crt + tls.key"]


@pytest.mark.parametrize("form", CERT_FORMS)
def test_the_client_certificate_is_presented_and_required(ferretdb_mtls, pki, secrets, form):
    """FerretDB with --listen-tls-ca-file refuses a TLS client without a certificate of its CA. With the TLS
    Secret's certificate the handshake passes and the driver goes on to MONGODB-X509, which FerretDB answers
    "no such command: 'authenticate'" (it has no X.509 authentication: see the MockupDB tests below); the very
    files the driver wrote then carry a SCRAM login through the same TLS listener."""
    peer = ferretdb_mtls
    secrets.append(peer.password)
    auth = secret("mtls-auth", username=peer.username, password=peer.password)
    # without a client certificate: refused at the handshake
    with closing_driver(appbinding("mg-nocert", url=_tls_url(peer), ca=pki.ca.pem, auth="mtls-auth"), auth) as d, \
            pytest.raises(DatabaseUnreachable) as e:
        d.wait_ready(1)
    assert "CERTIFICATE_REQUIRED" in str(e.value).upper().replace(" ", "_")
    assert "client didn't provide a certificate" in peer.log_tail(1 << 20)
    # with the TLS Secret's certificate
    ab = appbinding("mg-cert", url=_tls_url(peer), ca=pki.ca.pem, auth="mtls-auth", tls="mg-client-cert")
    with closing_driver(ab, auth, _client_secret(pki, form)) as d:
        assert d.creds.x509 and d.creds.username == CLIENT_USER and not d.creds.password
        with pytest.raises(DatabaseUnreachable) as e:
            d.wait_ready(1)
        assert "no such command: 'authenticate'" in str(e.value)
        _assert_no_secret(e.value, peer.password)
        with pymongo.MongoClient("127.0.0.1", peer.tls_port, tls=True, tlsCAFile=d.creds.ca_file,
                                 tlsCertificateKeyFile=d.creds.cert_file, username=peer.username,
                                 password=peer.password, directConnection=True, serverSelectionTimeoutMS=5000) as c:
            assert c.admin.command("ping")["ok"] == 1


def test_tls_files_are_private_and_removed_by_close(pki, tmp_path):
    ab = appbinding("mg-files", url="mongodb://mongo.demo.svc:27017", ca=pki.ca.pem, tls="mg-client-cert")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for options in ({"scratch_dir": str(scratch)}, {}):
        d = driver(ab, _client_secret(pki, "tls.crt + tls.key"), **options)
        creds = d.creds
        if options:
            assert os.path.dirname(creds.scratch) == str(scratch)
        assert stat.S_IMODE(os.stat(creds.scratch).st_mode) == 0o700
        assert sorted(os.listdir(creds.scratch)) == ["ca.crt", "client.pem"]
        for path, content in ((creds.ca_file, pki.ca.pem), (creds.cert_file, pki.client_cert + pki.client_key)):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with open(path, "rb") as f:
                assert f.read() == content
        d.close()
        assert not os.path.exists(creds.scratch)
        d.close()  # twice is harmless


def test_a_tls_secret_with_half_a_key_pair_is_bad_input(pki):
    ab = appbinding("mg-half", url="mongodb://mongo.demo.svc:27017", ca=pki.ca.pem, tls="mg-client-cert")
    with pytest.raises(BadInput) as e:
        driver(ab, secret("mg-client-cert", tls_crt=pki.client_cert))
    assert str(e.value) == ("Secret demo/mg-client-cert: data.tls.crt and data.tls.key must both be set "
                            "(or data.client.pem)")


# -- 5. X.509 authentication: MockupDB behind TLS, as MongoDB checks it ----------------------------------------


class X509Server:
    """A MockupDB server behind TLS that requires a client certificate of ``pki.ca`` and answers MONGODB-X509 as
    MongoDB does: on ``$external``, the user must equal the presented certificate's subject in OpenSSL's RFC 2253
    form (``expected_user``, computed by the test, not by the code under test)."""

    def __init__(self, pki: Pki, monkeypatch, expected_user: str, client_cert: bytes):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server.cert_file, pki.server.key_file)
        context.load_verify_locations(cadata=pki.ca.pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
        # MockupDB(ssl=True) wraps its listening socket with the module `_ssl`'s wrap_socket and its own
        # certificate: give it ours, with client certificates required (handshakes in the connection threads).
        monkeypatch.setattr(mockupdb, "_ssl", SimpleNamespace(
            wrap_socket=lambda sock, **_: context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)))
        self.expected_user = expected_user
        self.client_der = x509.load_pem_x509_certificate(client_cert).public_bytes(serialization.Encoding.DER)
        self.hellos: list[dict] = []
        self.auths: list[dict] = []
        self.peer_certs: list[bytes | None] = []
        self.db = MockupDB(ssl=True, request_timeout=30)
        self.port = self.db.run()
        self.db.autoresponds(self.handle)

    def handle(self, request: Any) -> bool:
        name = (request.command_name or "").lower()
        if name in ("ismaster", "hello"):
            self.hellos.append(dict(request.doc))
            # no speculativeAuthenticate in the answer: pymongo then sends the authenticate command itself
            return request.replies({"ismaster": True, "isWritablePrimary": True, **WIRE})
        if name == "authenticate":
            doc = dict(request.doc)
            self.auths.append(doc)
            peer = request._client.getpeercert(binary_form=True)  # the certificate the TLS handshake verified
            self.peer_certs.append(peer)
            if (doc.get("mechanism") == "MONGODB-X509" and doc.get("$db") == "$external" and peer == self.client_der
                    and doc.get("user") == self.expected_user):
                return request.replies({"dbname": "$external", "user": doc["user"]})
            return request.command_err(code=18, errmsg="Authentication failed.")
        if name in ("ping", "endsessions", "buildinfo"):
            return request.replies({})
        return request.command_err(code=59, errmsg=f"no such command: '{name}'")

    def stop(self) -> None:
        self.db.stop()


@needs_openssl
@pytest.mark.parametrize("rich", [False, True], ids=["CN-OU-O-C", "email-title-serial-street"])
@pytest.mark.parametrize("form", ["client.pem", "tls.crt + tls.key"])
def test_x509_authenticates_on_external_as_the_certificate_subject(pki, monkeypatch, secrets, rich, form):
    cert = pki.rich_cert if rich else pki.client_cert
    expected = _openssl_subject(cert)  # what Stash runs, what MongoDB compares
    assert expected == (RICH_USER if rich else CLIENT_USER)
    server = X509Server(pki, monkeypatch, expected, cert)
    try:
        ab = appbinding("mg-x509", url=f"mongodb://127.0.0.1:{server.port}", ca=pki.ca.pem, tls="mg-client-cert")
        with closing_driver(ab, _client_secret(pki, form, rich=rich)) as d:
            assert (d.creds.username, d.creds.auth_source, d.creds.password) == (expected, "$external", "")
            d.wait_ready(20)
        assert server.auths, "no authenticate command"
        auth = server.auths[0]
        assert (auth["authenticate"], auth["mechanism"], auth["user"], auth["$db"]) == (
            1, "MONGODB-X509", expected, "$external")
        assert server.peer_certs[0] == server.client_der
        speculative = [h["speculativeAuthenticate"] for h in server.hellos if "speculativeAuthenticate" in h]
        # the handshake's speculative authentication (MongoDB runs an X.509 one on $external implicitly)
        assert speculative and speculative[0] == {"authenticate": 1, "mechanism": "MONGODB-X509", "user": expected}
    finally:
        server.stop()


def test_x509_user_flag_overrides_the_subject_and_a_refusal_is_final(pki, monkeypatch):
    """--user replaces the certificate's subject (the server here refuses any other name, as MongoDB does): the
    refusal is an authentication failure, reported at once."""
    server = X509Server(pki, monkeypatch, CLIENT_USER, pki.client_cert)
    try:
        ab = appbinding("mg-x509", url=f"mongodb://127.0.0.1:{server.port}", ca=pki.ca.pem, tls="mg-client-cert")
        with closing_driver(ab, _client_secret(pki, "client.pem"), user="CN=someone-else") as d:
            began = time.monotonic()
            with pytest.raises(DatabaseUnreachable) as e:
                d.wait_ready(30)
            assert time.monotonic() - began < 5
        assert server.auths[0]["user"] == "CN=someone-else"
        assert str(e.value).startswith(f"MongoDB 127.0.0.1:{server.port} (AppBinding demo/mg-x509): "
                                       "Authentication failed")
    finally:
        server.stop()


def test_certificate_subject_is_rfc2253_as_openssl_prints_it(pki):
    assert certificate_subject(pki.client_cert, "Secret demo/x") == CLIENT_USER
    assert certificate_subject(pki.rich_cert, "Secret demo/x") == RICH_USER
    # the first certificate of a PEM holding a key and a chain, whatever comes first
    assert certificate_subject(pki.client_key + pki.client_cert + pki.ca.pem, "Secret demo/x") == CLIENT_USER
    with pytest.raises(BadInput) as e:
        certificate_subject(pki.client_key, "Secret demo/x")
    assert str(e.value).startswith("Secret demo/x: the client certificate is not a PEM certificate") \
        and "\n" not in str(e.value)


@needs_openssl
def test_certificate_subject_matches_openssl_for_every_name_openssl_knows(pki):
    """Each attribute type with a short name in OpenSSL (and MongoDB's own table), one multi-valued RDN, RFC 2253
    escapes (',', '+', '"', '\\', '<', '>', ';', a leading '#' or space, a trailing space)."""
    oids = ["2.5.4.3", "2.5.4.4", "2.5.4.5", "2.5.4.6", "2.5.4.7", "2.5.4.8", "2.5.4.9", "2.5.4.10", "2.5.4.11",
            "2.5.4.12", "2.5.4.13", "2.5.4.15", "2.5.4.17", "2.5.4.41", "2.5.4.42", "2.5.4.43", "2.5.4.44",
            "2.5.4.46", "2.5.4.65", "2.5.4.72", "2.5.4.97", "0.9.2342.19200300.100.1.1",
            "0.9.2342.19200300.100.1.25", "1.2.840.113549.1.9.1", "1.2.840.113549.1.9.2",
            "1.3.6.1.4.1.311.60.2.1.1", "1.3.6.1.4.1.311.60.2.1.2", "1.3.6.1.4.1.311.60.2.1.3"]
    rdns = []
    for i, oid in enumerate(oids):
        value = "US" if oid in ("2.5.4.6", "1.3.6.1.4.1.311.60.2.1.3") else f"v{i}"
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier(oid), value)]))
    rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "a"),
                                                x509.NameAttribute(NameOID.USER_ID, "b")]))
    rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(
        NameOID.COMMON_NAME, '#lead, "quoted" + <angle> ; back\\slash trailing ')]))
    cert, _ = pki.ca.issue(x509.Name(rdns))
    pem = _pem(cert)
    assert certificate_subject(pem, "Secret demo/x") == _openssl_subject(pem)


# -- 6. SRV: mongodb+srv through a DNS server on loopback ------------------------------------------------------


class TinyDns:
    """A UDP DNS server on 127.0.0.1 answering from ``records`` ({(name., type): [rdata, ...]}); NXDOMAIN for a
    name it does not have, an empty answer for a type a name lacks."""

    def __init__(self, records: dict[tuple[str, str], list[str]]):
        self.records = {(n.lower(), dns.rdatatype.from_text(t)): v for (n, t), v in records.items()}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            q = query.question[0]
            name = q.name.to_text().lower()
            self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
            if (name, q.rdtype) in self.records:
                rdatas = self.records[(name, q.rdtype)]
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", q.rdtype, rdatas))
            elif not any(n == name for n, _ in self.records):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), addr)

    def resolver(self) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        return r

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def srv_dns(ferretdb_tls, monkeypatch) -> Iterator[TinyDns]:
    """``_mongodb._tcp.cluster.example.test`` -> SRV_TARGET:<FerretDB's TLS port>, as dnspython's default resolver
    (the one pymongo asks). pymongo then connects to SRV_TARGET through the OS resolver, which the test cannot
    point anywhere: a getaddrinfo shim maps that one name to 127.0.0.1."""
    server = TinyDns({
        (f"_mongodb._tcp.{SRV_NAME}.", "SRV"): [f"0 5 {ferretdb_tls.tls_port} {SRV_TARGET}."],
        (f"{SRV_NAME}.", "TXT"): ['"authSource=admin"'],
        (f"{SRV_TARGET}.", "A"): ["127.0.0.1"],
    })
    monkeypatch.setattr(dns.resolver, "default_resolver", server.resolver())
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real_getaddrinfo("127.0.0.1" if host == SRV_TARGET else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield server
    server.close()


def test_srv_appbinding_connects_through_the_srv_record(ferretdb_tls, pki, srv_dns, secrets):
    """mongodb+srv: the SRV record names the server (its port is not in the AppBinding), TLS is on (SRV's
    default), the certificate is checked against the SRV target's name, SCRAM as everywhere."""
    peer = ferretdb_tls
    secrets.append(peer.password)
    auth = secret("srv-auth", username=peer.username, password=peer.password)
    ab = appbinding("mg-srv", url=f"mongodb+srv://{SRV_NAME}", ca=pki.ca.pem, auth="srv-auth")
    with closing_driver(ab, auth) as d:
        assert d.topology.srv and d.target == f"MongoDB {SRV_NAME} (AppBinding demo/mg-srv)"
        d.wait_ready(20)
        with deployment_client(d.topology, d.creds) as c:
            assert c.admin.command("ping")["ok"] == 1
            assert list(c.topology_description.server_descriptions()) == [(SRV_TARGET, peer.tls_port)]
            assert c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"] == peer.username
    assert (f"_mongodb._tcp.{SRV_NAME}.", "SRV") in srv_dns.queries


def test_srv_name_that_does_not_resolve_is_waited_for_then_named(pki, srv_dns, secrets):
    """No SRV record: pymongo's lookup fails. The lookup happens inside wait_ready, which tries again until its
    timeout, then names the target and the DNS name it could not resolve, and no credential."""
    password = f"srv-{uuid.uuid4().hex}"
    secrets.append(password)
    auth = secret("srv-auth", username="someone", password=password)
    ab = appbinding("mg-nosrv", url="mongodb+srv://missing.example.test", ca=pki.ca.pem, auth="srv-auth")
    with closing_driver(ab, auth) as d:
        began = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as e:
            d.wait_ready(2)
        took = time.monotonic() - began
    msg = str(e.value)
    assert msg.startswith("MongoDB missing.example.test (AppBinding demo/mg-nosrv): not ready after 2 s: ")
    assert "_mongodb._tcp.missing.example.test" in msg and "\n" not in msg
    assert 2 <= took < 4
    assert srv_dns.queries.count(("_mongodb._tcp.missing.example.test.", "SRV")) >= 2  # tried again
    _assert_no_secret(e.value, password)
