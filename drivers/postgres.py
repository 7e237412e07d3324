"""PostgreSQL: pg_dumpall/pg_dump piped out, psql piped in; credentials only in the environment."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import psycopg

from stash_runner.errors import BadInput, DatabaseUnreachable

from . import pgclient
from .base import Driver, DriverOptions, Endpoint
from .pgclient import Client
from .process import DumpProcess, feed, redact

log = logging.getLogger("stash_runner")

FILENAME = "dumpfile.sql"
BACKUP_COMMANDS = ("pg_dumpall", "pg_dump")
DEFAULT_PORT = 5432


@dataclass(frozen=True)
class Connection:
    """How to reach the server. ``ref`` names the AppBinding for messages."""

    ref: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str = ""
    sslmode: str = ""
    ca_cert: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_endpoint(cls, ep: Endpoint, user: str = "") -> Connection:
        if ep.auth is None:
            raise BadInput(f"{ep.ref}: spec.secret.name is missing")
        return cls(
            ref=ep.ref,
            host=ep.host,
            port=ep.port or DEFAULT_PORT,
            user=user or ep.auth.get("username", "POSTGRES_USER") or "",
            password=ep.auth.get("password", "POSTGRES_PASSWORD") or "",
            dbname=ep.path.strip("/"),
            sslmode=ep.query.get("sslmode", ""),
            ca_cert=ep.ca_bundle or (ep.tls.get_bytes("ca.crt") if ep.tls else None),
            client_cert=ep.tls.get_bytes("tls.crt") if ep.tls else None,
            client_key=ep.tls.get_bytes("tls.key") if ep.tls else None,
        )


class PostgresDriver(Driver):
    filename = FILENAME

    def __init__(self, conn: Connection, *, backup_cmd: str = "pg_dumpall", pg_args: str = "",
                 scratch_dir: str | None = None, purpose: str = "backup", clients: Sequence[Client] | None = None):
        """``clients``: the installed clients to choose from (default: ``pgclient.find_clients()``, on first use)."""
        if backup_cmd not in BACKUP_COMMANDS:
            raise BadInput(f"--backup-cmd {backup_cmd!r}: must be pg_dumpall or pg_dump")
        try:
            self.args = shlex.split(pg_args or "")
        except ValueError as e:
            raise BadInput(f"--pg-args: {e}") from None
        self.conn = conn
        self.backup_cmd = backup_cmd
        self.purpose = purpose
        self._clients = list(clients) if clients is not None else None
        self._version: int | None = None
        self._version_read = False
        self._chosen: dict[str, str] = {}
        self.target = f"PostgreSQL at {conn.host}:{conn.port} ({conn.ref})"
        self._tmp = tempfile.mkdtemp(prefix="pg-", dir=scratch_dir if scratch_dir and os.path.isdir(scratch_dir)
                                     else None)
        self._env = self._build_env()

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> PostgresDriver:
        conn = Connection.from_endpoint(endpoint, user=options.user)
        return cls(conn, backup_cmd=options.backup_cmd or "pg_dumpall", pg_args=options.args,
                   scratch_dir=options.scratch_dir, purpose=options.purpose)

    def _write_private(self, name: str, data: bytes) -> str:
        path = os.path.join(self._tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def _build_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        c = self.conn
        env.update(PGHOST=c.host, PGPORT=str(c.port), PGUSER=c.user, PGCONNECT_TIMEOUT="10",
                   PGAPPNAME="stash-runner")
        if c.password:
            env["PGPASSWORD"] = c.password
        if c.dbname:
            env["PGDATABASE"] = c.dbname
        if c.sslmode:
            env["PGSSLMODE"] = c.sslmode
        if c.ca_cert:
            env["PGSSLROOTCERT"] = self._write_private("ca.crt", c.ca_cert)
        if c.client_cert and c.client_key:
            env["PGSSLCERT"] = self._write_private("tls.crt", c.client_cert)
            env["PGSSLKEY"] = self._write_private("tls.key", c.client_key)
        return env

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                r = subprocess.run(["pg_isready", "-t", "5"], env=self._env, capture_output=True, text=True,
                                   timeout=30)
            except FileNotFoundError:
                raise DatabaseUnreachable("pg_isready is not installed (not found on PATH)") from None
            if r.returncode == 0:
                # Choose the client now, so that a missing or too old one fails before the repository is touched.
                self._tool_path("psql" if self.purpose == "restore" else self.backup_cmd)
                return
            last = (r.stdout + r.stderr).strip().replace("\n", " ")
            if time.monotonic() >= deadline:
                raise DatabaseUnreachable(
                    f"{self.target} is not accepting connections after {timeout:g} s: {last}"
                )
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _server_version(self) -> int | None:
        """The server's ``server_version_num``, read once; None when it cannot be read."""
        if not self._version_read:
            self._version_read = True
            try:
                self._version = pgclient.server_version(self._env)
            except (psycopg.Error, ValueError) as e:  # the tool then reports a connection problem itself
                log.warning("could not read the server version of %s: %s", self.target,
                            redact(str(e), [self.conn.password]))
        return self._version

    def _tool_path(self, tool: str) -> str:
        """The absolute path of ``tool`` from the client matched to the server (pgclient.choose); ToolFailed when
        none fits."""
        if tool not in self._chosen:
            if self._clients is None:
                self._clients = pgclient.find_clients()
            version = self._server_version()
            major = pgclient.major_of(version) if version is not None else None
            shown = pgclient.format_version(version) if version is not None else ""
            choice = pgclient.choose(major, self._clients, tool, server_version=shown, target=self.target)
            server = f"PostgreSQL {shown}" if shown else "version unknown"
            (log.warning if choice.warn else log.info)(
                "server %s; using %s %d from %s (%s)", server, tool, choice.client.major, choice.client.bindir,
                choice.reason)
            self._chosen[tool] = choice.path
        return self._chosen[tool]

    def dump(self) -> AbstractContextManager[DumpProcess]:
        argv = [self._tool_path(self.backup_cmd), *self.args]
        log.info("dumping %s with %s", self.target, shlex.join(argv))
        return DumpProcess(
            argv, self._env, "/" + FILENAME, secrets=[self.conn.password],
            complete_marker=b"dump complete", plain_prefix=b"--\n-- PostgreSQL database",
        )

    def restore(self, chunks: Iterator[bytes]) -> None:
        env = dict(self._env)
        env.setdefault("PGDATABASE", "postgres")
        argv = [self._tool_path("psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", *self.args]
        log.info("restoring into %s with %s", self.target, shlex.join(argv))
        keep_password = {"postgres", self.conn.user}
        feed(argv, env, _filter_globals(chunks, keep_password), secrets=[self.conn.password])


# -- the globals section of a pg_dumpall dump ---------------------------------------------------

_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rb"^CREATE ROLE (" + _IDENT + rb");$")
_ALTER_ROLE_PASSWORD = re.compile(rb"^ALTER ROLE (" + _IDENT + rb") WITH .* PASSWORD ")
# The roles come first in a pg_dumpall dump; the first of these lines ends that section, so table
# data that happens to look like a role statement is never touched.
_END_OF_GLOBALS = (b"\\connect ", b"COPY ", b"CREATE DATABASE ", b"CREATE TABLE ", b"CREATE SCHEMA ")


def _unquote(ident: bytes) -> str:
    s = ident.decode("utf-8", "replace")
    return s[1:-1].replace('""', '"') if s.startswith('"') else s


def _rewrite_global(line: bytes, keep_password: set[str]) -> bytes:
    m = _CREATE_ROLE.match(line)
    if m:
        # pg_dumpall writes CREATE ROLE for roles the target already has (at least the one we
        # connect as): create only if missing, so ON_ERROR_STOP still stops on every real error.
        return (b"DO $stash_runner$ BEGIN CREATE ROLE " + m.group(1)
                + b"; EXCEPTION WHEN duplicate_object THEN NULL; END $stash_runner$;")
    m = _ALTER_ROLE_PASSWORD.match(line)
    if m and _unquote(m.group(1)) in keep_password:
        # As Stash does: keep the target's superuser password, or the operator would lose access.
        return b"-- stash-runner: kept the target's password for role " + m.group(1)
    return line


def _filter_globals(chunks: Iterator[bytes], keep_password: set[str]) -> Iterator[bytes]:
    pending = b""
    chunks = iter(chunks)
    for chunk in chunks:
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = []
        for i, line in enumerate(lines):
            if line.startswith(_END_OF_GLOBALS):
                out.extend(lines[i:])
                yield b"\n".join(out) + b"\n" + pending
                yield from chunks
                return
            out.append(_rewrite_global(line, keep_password))
        if out:
            yield b"\n".join(out) + b"\n"
    if pending:
        yield _rewrite_global(pending, keep_password)
