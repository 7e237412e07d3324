"""How to reach MongoDB from an Endpoint: the topology Stash's AppBinding describes, and pymongo clients.

Credentials go to pymongo as arguments, never into a URL, so they need no escaping and appear in no argv,
log or error. TLS files (the AppBinding's caBundle and the client certificate) are written to a private
directory (0700, files 0600) and removed by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pymongo
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from stash_runner.errors import BadInput, DatabaseUnreachable, describe

from .. import wait
from ..base import Endpoint

DEFAULT_PORT = 27017
DEFAULT_AUTH_DATABASE = "admin"
# Each attempt to reach a server waits this long; wait_ready() repeats attempts up to its own timeout.
SELECTION_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ReplicaSet:
    """A replica set as Stash's MongoConfiguration writes it: ``rsName/h0:27017,h1:27017``."""

    name: str
    seeds: tuple[str, ...]

    @classmethod
    def parse(cls, value: Any, where: str) -> ReplicaSet:
        if not isinstance(value, str) or not value.strip():
            raise BadInput(f"{where}: must be a replica set as rsName/host:port,...")
        name, slash, hosts = value.strip().partition("/")
        if not slash:
            name, hosts = "", name
        seeds = tuple(h.strip() for h in hosts.split(",") if h.strip())
        if not seeds:
            raise BadInput(f"{where}: {value!r} names no host")
        return cls(name, seeds)


@dataclass(frozen=True)
class Topology:
    """standalone (or mongos, backed up as one), a replica set, or a sharded cluster (config server + shards)."""

    kind: str  # "standalone" | "replicaset" | "sharded"
    host: str  # the AppBinding's host (the mongos of a sharded cluster)
    port: int | None
    srv: bool = False
    replica_set: ReplicaSet | None = None
    config_server: ReplicaSet | None = None
    #: Stash's host names ("host-0", ...) -> the shard's replica set, in host order
    shards: dict[str, ReplicaSet] = field(default_factory=dict)

    @classmethod
    def from_endpoint(cls, ep: Endpoint) -> Topology:
        params = ep.parameters or {}
        srv = ep.scheme == "mongodb+srv"
        where = f"{ep.ref}: spec.parameters"
        raw_sets = params.get("replicaSets") or {}
        if not isinstance(raw_sets, Mapping):
            raise BadInput(f"{where}.replicaSets must be a mapping of host-N to rsName/host:port,...")
        sets = {str(k): ReplicaSet.parse(v, f"{where}.replicaSets.{k}") for k, v in raw_sets.items()}
        ordered = dict(sorted(sets.items(), key=lambda kv: _host_order(kv[0])))
        config = params.get("configServer")
        if config:
            if not ordered:
                raise BadInput(f"{where}: configServer is set but replicaSets is empty")
            config_set = ReplicaSet.parse(config, f"{where}.configServer")
            return cls("sharded", ep.host, ep.port, srv, config_server=config_set, shards=ordered)
        if len(ordered) > 1:
            raise BadInput(f"{where}: several replicaSets need a configServer (a sharded cluster)")
        if ordered:
            return cls("replicaset", ep.host, ep.port, srv, replica_set=next(iter(ordered.values())))
        return cls("standalone", ep.host, ep.port, srv)


def _host_order(name: str) -> tuple[int, str]:
    """host-2 before host-10: Stash's map keys, in a fixed order (Stash visits them in Go's random map order)."""
    prefix, _, number = name.rpartition("-")
    return (int(number), prefix) if number.isdigit() else (1 << 30, name)


@dataclass
class Credentials:
    """Who connects, and the TLS material; built once per driver."""

    username: str = ""
    password: str = field(default="", repr=False)
    auth_source: str = DEFAULT_AUTH_DATABASE
    x509: bool = False
    tls: bool = False  # also without files: the URL's tls=true/ssl=true, verified against the system's CAs
    ca_file: str = ""
    cert_file: str = ""
    insecure_tls: bool = False
    scratch: str = ""

    @classmethod
    def from_endpoint(cls, ep: Endpoint, *, user: str = "", auth_database: str = "",
                      scratch_dir: str | None = None) -> Credentials:
        creds = cls(auth_source=auth_database or ep.query.get("authSource") or DEFAULT_AUTH_DATABASE)
        tls_on = bool(ep.ca_bundle) or ep.query.get("tls") == "true" or ep.query.get("ssl") == "true"
        client_pem = _client_pem(ep)
        creds.tls = bool(tls_on or client_pem)
        if tls_on or client_pem:
            creds.scratch = tempfile.mkdtemp(prefix="mongo-", dir=scratch_dir if scratch_dir and
                                             os.path.isdir(scratch_dir) else None)
            if ep.ca_bundle:
                creds.ca_file = _write_private(creds.scratch, "ca.crt", ep.ca_bundle)
            if client_pem:
                creds.cert_file = _write_private(creds.scratch, "client.pem", client_pem)
        if client_pem:
            # As Stash: with a client certificate the user is the certificate's subject (MONGODB-X509).
            creds.x509 = True
            creds.username = user or certificate_subject(client_pem, ep.ref)
            creds.auth_source = "$external"
            return creds
        if ep.auth is None:
            return creds  # no spec.secret: a server without authentication
        creds.username = user or ep.auth.get("username", "MONGO_INITDB_ROOT_USERNAME") or ""
        creds.password = ep.auth.get("password", "MONGO_INITDB_ROOT_PASSWORD") or ""
        return creds

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"appname": "stash-runner", "serverSelectionTimeoutMS": SELECTION_TIMEOUT_MS,
                                "connectTimeoutMS": SELECTION_TIMEOUT_MS}
        if self.x509:
            opts.update(authMechanism="MONGODB-X509", authSource="$external", username=self.username)
        elif self.username:
            # SCRAM-SHA-1 or -256: pymongo asks the server which the user has (Stash forces SHA-256)
            opts.update(username=self.username, password=self.password, authSource=self.auth_source)
        if self.tls or self.ca_file or self.cert_file:
            opts["tls"] = True
            if self.ca_file:
                opts["tlsCAFile"] = self.ca_file
            if self.cert_file:
                opts["tlsCertificateKeyFile"] = self.cert_file
            if self.insecure_tls:
                opts["tlsAllowInvalidCertificates"] = True
        return opts

    def close(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _client_pem(ep: Endpoint) -> bytes | None:
    """The client certificate and key as one PEM: the TLS Secret's client.pem, else tls.crt + tls.key."""
    if ep.tls is None:
        return None
    pem = ep.tls.get_bytes("client.pem")
    if pem:
        return pem
    crt, key = ep.tls.get_bytes("tls.crt"), ep.tls.get_bytes("tls.key")
    if crt and key:
        return crt.rstrip(b"\n") + b"\n" + key
    if crt or key:
        raise BadInput(f"{ep.tls.ref}: data.tls.crt and data.tls.key must both be set (or data.client.pem)")
    return None


def certificate_subject(pem: bytes, ref: str) -> str:
    """The subject as MongoDB names an X.509 user (RFC 2253 order, as ``openssl x509 -nameopt RFC2253``)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise BadInput(f"{ref}: the client certificate is not a PEM certificate: {e}") from None
    # As OpenSSL prints it and MongoDB compares it: every attribute in reverse order (also inside a multi-valued
    # RDN), OpenSSL's short names where RFC 4514 has other names or none.
    names = {x509.ObjectIdentifier(oid): name for oid, name in _OPENSSL_NAMES.items()}
    return ",".join("+".join(a.rfc4514_string(names) for a in reversed(list(rdn)))
                    for rdn in reversed(cert.subject.rdns))


_OPENSSL_NAMES = {
    "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.9": "street", "2.5.4.12": "title", "2.5.4.13": "description",
    "2.5.4.15": "businessCategory", "2.5.4.17": "postalCode", "2.5.4.41": "name", "2.5.4.42": "GN",
    "2.5.4.43": "initials", "2.5.4.44": "generationQualifier", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym",
    "2.5.4.72": "role", "2.5.4.97": "organizationIdentifier", "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName", "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST", "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}


def _write_private(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def client(creds: Credentials, hosts: list[str] | str, *, port: int | None = None, replica_set: str = "",
           direct: bool = False, srv: bool = False, read_preference: str = "primary",
           **extra: Any) -> pymongo.MongoClient:
    """A pymongo client; nothing is connected until the first command."""
    opts = creds.client_options()
    opts["connect"] = False  # not even SRV's DNS lookup before the first command: wait_ready waits for that too
    opts.update(extra)
    if replica_set:
        opts["replicaSet"] = replica_set
    opts["directConnection"] = direct
    opts["readPreference"] = read_preference
    opts["document_class"] = dict
    try:
        if srv:
            host = hosts if isinstance(hosts, str) else hosts[0]
            return pymongo.MongoClient(f"mongodb+srv://{host}/", **opts)
        return pymongo.MongoClient(hosts, port or DEFAULT_PORT, **opts)
    except ConfigurationError as e:
        raise BadInput(f"MongoDB connection settings: {e}") from None


def deployment_client(topology: Topology, creds: Credentials, **kw: Any) -> pymongo.MongoClient:
    """A client for the whole deployment: the server, the replica set (its primary), or the mongos."""
    if topology.kind == "replicaset":
        assert topology.replica_set is not None
        return client(creds, list(topology.replica_set.seeds), replica_set=topology.replica_set.name, **kw)
    return client(creds, topology.host, port=topology.port, srv=topology.srv, direct=not topology.srv, **kw)


def member_client(creds: Credentials, address: str, **kw: Any) -> pymongo.MongoClient:
    """A direct connection to one member ("host:port"); reading from a secondary is allowed."""
    host, _, port = address.rpartition(":")
    kw.setdefault("read_preference", "secondaryPreferred")
    return client(creds, host or address, port=int(port) if port.isdigit() else None, direct=True, **kw)


def wait_until(what: str, check: Callable[[], None], timeout: float, log: Callable[[str], None],
               interval: float = 2.0) -> None:
    """Call ``check`` until it stops raising; every wait is logged with what it waits for and the time left.

    An authentication failure is final at once: waiting does not fix a wrong password.
    """

    def waitable(e: BaseException) -> str | None:
        if isinstance(e, OperationFailure) and e.code in (18, 13):  # AuthenticationFailed, Unauthorized
            raise DatabaseUnreachable(f"{what}: {describe_error(e)}") from None
        return describe_error(e) if isinstance(e, PyMongoError) else None

    wait.wait_until(what, check, timeout, log, waitable=waitable, interval=interval)


def describe_error(error: BaseException) -> str:
    """``errors.describe`` without the topology description pymongo appends to server selection timeouts."""
    head, _, _ = describe(error).partition(", Timeout:")
    return head[:500]
