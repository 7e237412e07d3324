"""MongoDB test peers: started on free loopback ports, waited for, stopped by PID.

- FerretDB v1.24.2 (SQLite backend): a real MongoDB wire-protocol server; SCRAM users, and with
  ``--repl-set-name`` a one-member replica set that keeps ``local.oplog.rs``.
- mongo-java-server 1.47.0 (in-memory backend): every BSON type and index kind round-trips; no auth,
  ``isMaster`` only (wire version 8, so pymongo <= 4.17), no oplog.

Both are built by scripts/install-mongo-peers.sh into ``$STASH_RUNNER_CACHE`` (default
``~/.cache/stash-runner``), outside the clone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

import bson
import pymongo
from bson.errors import BSONError
from pymongo.errors import CollectionInvalid

from .pgcluster import free_port
from .servers import Server

FERRETDB_VERSION = "v1.24.2"
MONGO_JAVA_SERVER_VERSION = "1.47.0"
OPLOG_SIZE = 64 * 1024 * 1024
INSTALL_HINT = "run `make deps` (scripts/install-mongo-peers.sh)"


def cache_dir() -> str:
    return os.environ.get("STASH_RUNNER_CACHE") or os.path.expanduser("~/.cache/stash-runner")


def ferretdb_binary() -> str:
    return os.path.join(cache_dir(), f"ferretdb-{FERRETDB_VERSION}", "ferretdb")


def mongo_java_server_dir() -> str:
    return os.path.join(cache_dir(), f"mongo-java-server-{MONGO_JAVA_SERVER_VERSION}")


@dataclass
class MongoPeer(Server):
    host: str = "127.0.0.1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    replica_set: str | None = None
    tls_port: int | None = None  # FerretDB's TLS listener (start_ferretdb(tls=...)), next to the plain one

    @property
    def url(self) -> str:
        """``mongodb://127.0.0.1:PORT/``: no credentials (they are in ``.username``/``.password``)."""
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, *, auth: bool = True, **kw) -> pymongo.MongoClient:
        """A pymongo client straight to this server, authenticated (SCRAM-SHA-256) when it has a user."""
        opts: dict = {"directConnection": True, "serverSelectionTimeoutMS": 10_000}
        if auth and self.username:
            opts.update(username=self.username, password=self.password, authSource="admin",
                        authMechanism="SCRAM-SHA-256")
        return pymongo.MongoClient(self.host, self.port, **{**opts, **kw})


def _start(name: str, argv: list[str], workdir: str, port: int, *, env: dict[str, str] | None = None,
           timeout: float = 60, **fields) -> MongoPeer:
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True, env={**os.environ, **(env or {})})
    peer = MongoPeer(name, port, proc, log_path, **fields)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before answering:\n{peer.log_tail()}")
        try:
            reply = ping(port)
            if reply.get("ok") == 1:
                return peer
            last = RuntimeError(f"reply {reply}")
        except (OSError, ValueError, BSONError) as e:
            last = e
        time.sleep(0.1)
    peer.stop()
    raise RuntimeError(f"{name} did not answer a MongoDB `ping` (OP_MSG) on 127.0.0.1:{port} within {timeout} s "
                       f"(last: {last!r}):\n{peer.log_tail()}")


def ping(port: int, timeout: float = 1.0) -> dict:
    """One ``{ping: 1}`` OP_MSG on a socket of our own (no auth needed on either server).

    Not a pymongo client: a closed client's monitor socket can stay open a while, and FerretDB then waits
    3 s for it when it is stopped.
    """
    body = struct.pack("<I", 0) + b"\x00" + bson.encode({"ping": 1, "$db": "admin"})  # flagBits, section 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body)  # 2013: OP_MSG
        length, _, _, opcode = struct.unpack("<iiii", _recv_exactly(s, 16))
        payload = _recv_exactly(s, length - 16)
    if opcode != 2013 or payload[4] != 0:
        raise ValueError(f"unexpected reply: opcode {opcode}")
    return bson.decode(payload[5:])


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


@dataclass(frozen=True)
class TlsFiles:
    """What FerretDB's TLS listener presents (``--listen-tls-cert-file``, ``--listen-tls-key-file``), and the CA
    (``--listen-tls-ca-file``) whose certificate it then requires from every client: without it, FerretDB
    asks for no client certificate."""

    cert_file: str
    key_file: str
    ca_file: str | None = None


def start_ferretdb(workdir: str, *, username: str | None = None, password: str | None = None,
                   replica_set: str | None = None, tls: TlsFiles | None = None,
                   port: int | None = None) -> MongoPeer:
    """FerretDB on SQLite files under ``workdir``.

    With ``username``/``password``: SCRAM authentication (``--test-enable-new-auth``), the user created in
    ``admin`` at start; the credentials go to FerretDB through its environment, not its argv.
    With ``replica_set``: ``hello`` reports that set (always primary), and the capped ``local.oplog.rs``
    is created, so that FerretDB records every write there.
    With ``tls``: a TLS listener as well, on ``.tls_port`` (the plain one stays, for the readiness ping and
    setup). ``port``: the plain listener's port, when the caller reserved one.
    """
    binary = ferretdb_binary()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"FerretDB missing at {binary}: {INSTALL_HINT}")
    if (username is None) != (password is None):
        raise ValueError("give both username and password, or neither")
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)  # FerretDB wants the SQLite directory to exist
    port, debug_port = port or free_port(), free_port()
    argv = [binary, "--handler=sqlite", f"--sqlite-url=file:{data}/", f"--state-dir={workdir}",
            f"--listen-addr=127.0.0.1:{port}", f"--debug-addr=127.0.0.1:{debug_port}",
            "--telemetry=disable", "--log-level=warn"]
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        argv += [f"--listen-tls=127.0.0.1:{tls_port}", f"--listen-tls-cert-file={tls.cert_file}",
                 f"--listen-tls-key-file={tls.key_file}"]
        if tls.ca_file:
            argv.append(f"--listen-tls-ca-file={tls.ca_file}")
    env: dict[str, str] = {}
    if username is not None:
        argv.append("--test-enable-new-auth")
        env = {"FERRETDB_SETUP_USERNAME": username, "FERRETDB_SETUP_PASSWORD": password,
               "FERRETDB_SETUP_DATABASE": "admin"}
    if replica_set:
        argv.append(f"--repl-set-name={replica_set}")
    peer = _start("ferretdb", argv, workdir, port, env=env, username=username, password=password,
                  replica_set=replica_set, tls_port=tls_port)
    if tls_port is not None:
        try:
            _wait_for_tcp(tls_port)
        except BaseException:
            peer.stop()
            raise
    if replica_set:
        try:
            # FerretDB keeps an oplog only once this capped collection exists (already there: a reused dir).
            with peer.client() as c, contextlib.suppress(CollectionInvalid):
                c.local.create_collection("oplog.rs", capped=True, size=OPLOG_SIZE)
        except BaseException:
            peer.stop()
            raise
    return peer


def _wait_for_tcp(port: int, timeout: float = 10) -> None:
    """Until 127.0.0.1:port accepts a TCP connection (FerretDB opens its listeners one after the other)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_mongo_java_server(workdir: str) -> MongoPeer:
    """mongo-java-server's in-memory backend, through tests/peers/MongoJavaServerMain.java."""
    home = mongo_java_server_dir()
    if not os.path.isfile(os.path.join(home, "classes", "MongoJavaServerMain.class")):
        raise RuntimeError(f"mongo-java-server missing under {home}: {INSTALL_HINT}")
    java = shutil.which("java")
    if not java:
        raise RuntimeError("java missing (a JDK 17 is expected on this machine)")
    port = free_port()
    classpath = os.pathsep.join([os.path.join(home, "classes"), os.path.join(home, "lib", "*")])
    argv = [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", classpath,
            "MongoJavaServerMain", str(port)]
    return _start("mongo-java-server", argv, workdir, port)

