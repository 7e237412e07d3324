"""PostgreSQL: pg_dumpall/pg_dump piped out, psql piped in; credentials only in the environment."""

from __future__ import annotations

import array
import collections
import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from stash_runner.errors import (
    BadInput,
    Interrupted,
    RunnerError,
    SnapshotNotFound,
    ToolFailed,
    one_line,
)

from . import pgclient, pgsql
from .base import Driver, DriverOptions, Endpoint, RestoreHost, SnapshotFiles
from .pgclient import Client
from .process import DumpProcess, Tool, redact
from .wait import wait_until

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


def _text(value: str | bytes) -> str:
    """A name as the server sent it. psycopg hands text over as bytes when the server's encoding is SQL_ASCII (a
    cluster initdb'd under the C locale, as in many containers); the dump's names are read as UTF-8 too."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class PostgresDriver(Driver):
    filename = FILENAME

    def __init__(self, conn: Connection, *, backup_cmd: str = "pg_dumpall", pg_args: str = "",
                 scratch_dir: str | None = None, purpose: str = "backup", clients: Sequence[Client] | None = None,
                 clean: bool = False):
        """``clients``: the installed clients to choose from (default: ``pgclient.find_clients()``, on first use).
        ``clean``: a restore drops what the dump creates and the target already has, instead of failing."""
        if backup_cmd not in BACKUP_COMMANDS:
            raise BadInput(f"--backup-cmd {backup_cmd!r}: must be pg_dumpall or pg_dump")
        try:
            self.args = shlex.split(pg_args or "")
        except ValueError as e:
            raise BadInput(f"--pg-args: {e}") from None
        if purpose == "restore" and "--clean" in self.args:
            # psql has no --clean: in a restore's --pg-args (a RestoreSession's args param) it is ours
            self.args = [a for a in self.args if a != "--clean"]
            clean = True
        self.clean = clean
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
                   scratch_dir=options.scratch_dir, purpose=options.purpose, clean=options.clean)

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

    def _params(self, dbname: str | None = None) -> dict[str, str]:
        """psycopg's connection keywords for what the tools get from the environment."""
        params = {kw: self._env[var] for var, kw in pgclient._ENV_KEYWORDS.items() if self._env.get(var)}
        params.setdefault("sslmode", "prefer")  # libpq's default, whatever PGSSLMODE this process has
        params["dbname"] = dbname or params.get("dbname") or "postgres"
        return params

    def _connect(self, dbname: str | None = None) -> psycopg.Connection:
        """A connection as the tools make it; ToolFailed (the tool would fail the same way) when it cannot be
        made."""
        try:
            return psycopg.connect(**self._params(dbname), autocommit=True)
        except psycopg.Error as e:
            raise ToolFailed(f"{self.target}: {self._describe(e)}") from None

    def _describe(self, e: BaseException) -> str:
        return redact(one_line(e), [self.conn.password])

    def wait_ready(self, timeout: float) -> None:
        def check() -> None:
            try:
                self._version = pgclient.server_version(self._env)
            except psycopg.OperationalError as e:
                if pq.PGconn.ping(make_conninfo(**self._params()).encode()) != pq.Ping.OK:
                    raise
                # The server answered and refused us (password, pg_hba.conf, no such database): waiting does not
                # fix that. The newest client then runs and says why, as the tool would.
                log.warning("could not read the server version of %s: %s", self.target, self._describe(e))
            self._version_read = True

        def waitable(e: BaseException) -> str | None:
            return self._describe(e) if isinstance(e, psycopg.OperationalError) else None

        wait_until(f"{self.target} to accept connections", check, timeout, log.info, waitable=waitable,
                   unready=f"{self.target} is not accepting connections")
        # Choose the client now, so that a missing or too old one fails before the repository is touched.
        self._tool_path("psql" if self.purpose == "restore" else self.backup_cmd)

    def _server_version(self) -> int | None:
        """The server's ``server_version_num``, read once; None when it cannot be read."""
        if not self._version_read:
            self._version_read = True
            try:
                self._version = pgclient.server_version(self._env)
            except (psycopg.Error, ValueError) as e:  # the tool then reports a connection problem itself
                log.warning("could not read the server version of %s: %s", self.target, self._describe(e))
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

    # -- restore ---------------------------------------------------------------------------------------------

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        # The whole snapshot, not one pass of its bytes: checking a target that has databases reads the dump twice.
        return [RestoreHost(hostname, restore_files=self.restore_files)]

    def restore_files(self, files: SnapshotFiles) -> None:
        found = files.files("/")
        path = "/" + FILENAME if "/" + FILENAME in found else found[0] if len(found) == 1 else ""
        if not path:
            raise SnapshotNotFound(f"the snapshot holds {len(found)} files and no /{FILENAME}: which is the dump?")
        self._restore(lambda: files.read(path), rereadable=True, scan=lambda: files.scan(path))

    def restore(self, chunks: Iterator[bytes]) -> None:
        """One pass of a dump's bytes: the target is checked as in ``restore_files``, but a target that has
        databases or objects cannot be (the dump would have to be read twice): BadInput."""
        self._restore(lambda: chunks, rereadable=False)

    def _restore(self, open_dump: Callable[[], Iterable[bytes]], rereadable: bool,
                 scan: Callable[[], Iterable[bytes]] | None = None) -> None:
        """``scan``: the dump's bytes for the look before the restore (not counted as restored)."""
        initial = self._env.get("PGDATABASE") or "postgres"
        existing, busy = self._survey(initial)
        plan = pgsql.Plan(keep_roles={"postgres", self.conn.user}, initial_db=initial)
        order: list[str] | None = None
        if busy:
            # Something there could clash with the dump: find what the dump creates before anything is written.
            if not rereadable:
                raise BadInput(f"{self.target} is not empty ({busy}): a one-pass restore cannot check the dump "
                               "against it")
            log.info("%s is not empty (%s): reading the dump once for what it creates", self.target, busy)
            facts = pgsql.scan((scan or open_dump)(), initial)
            order = facts.order
            self._check(facts, existing, initial, plan)
        stream = pgsql.DumpStream(open_dump(), plan)
        argv = [self._tool_path("psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-f", "-", *self.args]
        log.info("restoring into %s with %s", self.target, shlex.join(argv))
        env = dict(self._env, PGDATABASE=initial)

        def where(line: int | None, consumed: int | None) -> str:
            return pgsql.progress_note(stream, line=line, consumed=consumed, order=order, existing=existing)

        feed(argv, env, stream, secrets=[self.conn.password], where=where)

    def _survey(self, initial: str) -> tuple[set[str], str]:
        """The target's databases, and what in it could clash with a dump ("" when nothing can: no database
        but the default ones, and nothing of the user's in the one psql starts in)."""
        with self._connect(initial) as c:
            rows = c.execute("SELECT datname, datistemplate FROM pg_database").fetchall()
            objects = c.execute(f"SELECT EXISTS ({_OBJECTS})").fetchone()
        existing = {_text(r[0]) for r in rows}
        users = sorted(_text(r[0]) for r in rows if not r[1] and _text(r[0]) != "postgres")
        why = []
        if users:
            why.append(f"databases {', '.join(users)}")
        if objects and objects[0]:
            why.append(f"objects in database {initial}")
        return existing, " and ".join(why)

    def _objects(self, dbname: str) -> list[tuple[str, str, str]]:
        """The user's schemas and relations in a database: (kind, schema, name; "" for a schema)."""
        with self._connect(dbname) as c:
            return [(_text(r[0]), _text(r[1]), _text(r[2]))
                    for r in c.execute(_OBJECTS + " ORDER BY 1, 2, 3").fetchall()]

    def _check(self, facts: pgsql.Facts, existing: set[str], initial: str, plan: pgsql.Plan) -> None:
        """Fail (BadInput, nothing written) naming what the dump would create and the target has, unless
        --clean: then ``plan`` drops it first."""
        clashes: list[str] = []
        dbs = [d for d in facts.creates if d in existing]
        if dbs and self.clean:
            plan.clean_databases = set(dbs)
        elif dbs:
            clashes.append(f"database{'s' if len(dbs) > 1 else ''} {', '.join(dbs)}")
        for name, ctx in facts.contexts.items():
            db = name or initial
            if ctx.drops or not (ctx.relations or ctx.schemas) or db not in existing:
                continue  # a --clean dump drops its objects itself; a missing database fails psql's \connect
            found = [o for o in self._objects(db)
                     if (o[1] in ctx.schemas if o[0] == "schema" else (o[1], o[2]) in ctx.relations)]
            if found and self.clean:
                plan.clean_sql[name] = _drop_statements(found)
            elif found:
                found.sort(key=lambda o: (_SHOWN.index(o[0]), o[1], o[2]))
                shown = ", ".join(_object_name(o) for o in found[:5]) + (
                    f" and {len(found) - 5} more" if len(found) > 5 else "")
                clashes.append(f"in database {db}: {shown}")
        if clashes:
            raise BadInput(f"{self.target} already has what the dump creates: {'; '.join(clashes)}: nothing was "
                           "restored; restore with --clean to drop it first, or into an empty cluster")
        for db in sorted(plan.clean_databases):
            log.warning("--clean: database %s of %s is dropped before the dump creates it", db, self.target)
        for name, statements in plan.clean_sql.items():
            log.warning("--clean: in database %s of %s: %s", name or initial, self.target,
                        b" ".join(statements).decode())


# What a database holds of the user's (not the system's, nor an extension's): schemas and relations.
_OBJECTS = """
SELECT 'schema' AS kind, n.nspname AS schema, '' AS name FROM pg_namespace n
 WHERE n.nspname NOT IN ('public', 'information_schema') AND n.nspname !~ '^pg_'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
UNION ALL
SELECT c.relkind::text, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""
_SHOWN = ("schema", "r", "p", "f", "v", "m", "S")  # the order a message names them in
_KINDS = {"schema": "SCHEMA", "v": "VIEW", "m": "MATERIALIZED VIEW", "r": "TABLE", "p": "TABLE",
          "f": "FOREIGN TABLE", "S": "SEQUENCE"}


def _object_name(o: tuple[str, str, str]) -> str:
    kind = _KINDS[o[0]].lower()
    return f"{kind} {o[1]}" if o[0] == "schema" else f"{kind} {o[1]}.{o[2]}"


def _drop_statements(objects: list[tuple[str, str, str]]) -> list[bytes]:
    """--clean in a database the dump restores into: drop what it creates there, with what depends on it (a
    schema with its contents), schemas first; IF EXISTS, as a CASCADE may have taken one already."""
    out = []
    for kind in _KINDS:
        names = [pgsql.quote_ident(o[1]) if kind == "schema" else f"{pgsql.quote_ident(o[1])}.{pgsql.quote_ident(o[2])}"
                 for o in objects if o[0] == kind]
        if names:
            out.append(f"DROP {_KINDS[kind]} IF EXISTS {', '.join(names)} CASCADE;".encode())
    return out


def _filter_globals(chunks: Iterable[bytes], keep_password: set[str]) -> Iterator[bytes]:
    """The dump as a restore with nothing to drop first hands it to psql."""
    return iter(pgsql.DumpStream(chunks, pgsql.Plan(keep_roles=set(keep_password))))


_PSQL_ERROR_LINE = re.compile(r"psql:<stdin>:(\d+): (?:ERROR|FATAL|PANIC|error):")


def _unread(pipe: IO[bytes] | None) -> int | None:
    """The bytes in a pipe its reader has not taken yet (Linux: FIONREAD works on the write end too)."""
    if pipe is None or pipe.closed:
        return None
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(pipe.fileno(), termios.FIONREAD, buf)
    except OSError:
        return None
    return buf[0]


# The rewritten dump waiting for psql in our memory, at most (besides the pipe's own 1 MiB): reading and rewriting
# the dump run ahead of psql by this much, so that psql never waits for a blob to be fetched and checked.
_WRITE_AHEAD = 16 << 20
# One write into psql's pipe, at most: an abandoned restore stops writing within one of these.
_WRITE_PIECE = 256 << 10


class _Writer:
    """Writes the chunks given to it into psql's stdin from a thread of its own (a write into a pipe does not hold
    the GIL), so that the dump is read, checked and rewritten while psql and the server work on what came before.
    ``sent``: the bytes written so far. It writes to a duplicate of ``fd``, closed when it ends: psql sees the end
    of its input once both are closed, and closing ``fd`` never pulls the descriptor from under a write."""

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)
        self.sent = 0
        self.starved = 0.0  # seconds the writer waited for the dump (psql may have waited too, once its pipe ran dry)
        self.broken = False  # psql stopped reading (EPIPE)
        self.error: OSError | None = None  # any other failed write
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False  # no chunk comes any more: write what is queued, then end
        self._abort = False  # stop writing now
        self._thread = threading.Thread(target=self._run, name="psql-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> bool:
        """Queue a chunk (waiting while too much is queued); False once nothing more can be written."""
        with self._cond:
            while self._queued >= _WRITE_AHEAD and self._thread.is_alive():
                self._cond.wait(0.5)
            if not self._thread.is_alive():
                return False
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._cond.notify_all()
        return True

    def finish(self) -> None:
        """Write what is queued; return when it is written (or psql stopped reading)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self, timeout: float = 5.0) -> None:
        """Stop writing, after the write under way (so that ``sent`` counts every byte in the pipe)."""
        with self._cond:
            self._abort = True
            self._chunks.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._chunks and not (self._closed or self._abort):
                        waited = time.monotonic()
                        while not self._chunks and not (self._closed or self._abort):
                            self._cond.wait()
                        if self.sent:  # not the wait for the first chunk
                            self.starved += time.monotonic() - waited
                    if self._abort or not self._chunks:
                        return
                    chunk = self._chunks[0]
                view = memoryview(chunk)
                while view and not self._abort:
                    n = os.write(self.fd, view[:_WRITE_PIECE])
                    self.sent += n
                    view = view[n:]
                view.release()
                with self._cond:
                    if self._chunks and self._chunks[0] is chunk:
                        self._chunks.popleft()
                    self._queued -= len(chunk)
                    self._cond.notify_all()
        except BrokenPipeError:
            self.broken = True  # psql stopped reading: its exit code and stderr say why
        except OSError as e:
            self.error = e
        finally:
            os.close(self.fd)
            with self._cond:
                self._cond.notify_all()


def feed(argv: list[str], env: dict[str, str], stream: Iterable[bytes], *, secrets: Iterable[str | None] = (),
         where: Callable[[int | None, int | None], str]) -> None:
    """Pipe the dump into psql; ToolFailed with its stderr when it fails. Any failure on the way (psql's, the
    repository's, SIGTERM) is told how far the restore got: ``where(line of psql's error, bytes psql read)``.

    The dump is written by a thread of its own (``_Writer``), up to ``_WRITE_AHEAD`` behind the reading."""
    tool = Tool(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, secrets=secrets)
    stdin = tool.proc.stdin
    assert stdin is not None
    writer = _Writer(stdin.fileno())
    unread: int | None = None
    psql_failed = False
    try:
        try:
            for chunk in stream:
                if not writer.put(chunk):
                    break
            writer.finish()
            log.debug("wrote %d bytes into %s; the writer waited %.2f s for the dump", writer.sent, tool.name,
                      writer.starved)
            unread = _unread(stdin)
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
            rc = tool.wait()
            psql_failed = True
            if rc != 0:
                raise tool.failure(rc)
            if writer.broken:
                raise ToolFailed(f"{tool.name} exited before it read the whole dump")
        except (RunnerError, Interrupted, KeyboardInterrupt) as e:
            writer.abort()
            if unread is None:
                unread = _unread(stdin)
            lines = _PSQL_ERROR_LINE.findall(tool.stderr_tail()) if psql_failed else []
            note = where(int(lines[-1]) if lines else None, writer.sent - unread if unread is not None else None)
            # The same exception (its type is its exit code), told which database is partly restored: the message
            # goes to stderr, output.json and the session's status as it is.
            e.args = (f"{e}; {note}" if str(e) else note,)
            raise
    finally:
        writer.abort(timeout=0)
        tool.stop()
