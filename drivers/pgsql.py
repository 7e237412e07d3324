"""The SQL stream of a pg_dumpall/pg_dump plain dump on its way into psql: read once, line by line, in bounded memory.

``DumpStream`` passes the dump through with a few rewrites (so that Stash-made dumps restore over an existing
cluster and into a fresh one with ``ON_ERROR_STOP``) and records where each database starts and ends in the bytes
it hands to psql, so that a failed restore can say which database is partly restored. ``scan`` reads a dump
without restoring it: which databases it creates and drops, and what it creates in databases it does not create.

Only statement starts outside quoted text are looked at: a small lexer follows psql's quoting (strings, quoted
identifiers, dollar quotes, comments), and ``COPY ... FROM stdin`` data is skipped to its ``\\.`` line without being
split into lines, so table data is never rewritten and costs one search per chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_CREATE_ROLE = re.compile(rb"^CREATE ROLE (" + _IDENT + rb");$")
_ALTER_ROLE_PASSWORD = re.compile(rb"^ALTER ROLE (" + _IDENT + rb") WITH .* PASSWORD ")
_DROP = re.compile(rb"^DROP (DATABASE|ROLE|TABLESPACE) (IF EXISTS )?(" + _IDENT + rb");$")
_CREATE_DATABASE = re.compile(rb"^CREATE DATABASE (" + _IDENT + rb")[ ;]")
_CREATE_RELATION = re.compile(rb"^CREATE (?:(?:UNLOGGED |FOREIGN )?TABLE|VIEW|MATERIALIZED VIEW|SEQUENCE) ("
                              + _IDENT + rb")\.(" + _IDENT + rb")[ (;\n]?")
_CREATE_SCHEMA = re.compile(rb"^CREATE SCHEMA (" + _IDENT + rb")[ ;]")
_COPY_FROM_STDIN = re.compile(rb"^COPY .* FROM stdin;$")
_CONNECT = re.compile(rb"^\\c(?:onnect)?[ \t]+(.*)$")
_RESTRICT = re.compile(rb"^\\(un)?restrict[ \t]+(\S+)")
# The roles come first in a pg_dumpall dump; the first of these lines ends that section, so a statement that
# looks like a role statement further on (say, in a function body) is never touched.
_END_OF_GLOBALS = (b"\\connect ", b"COPY ", b"CREATE DATABASE ", b"CREATE TABLE ", b"CREATE SCHEMA ")
# Statements that only set up the session or the database itself: not yet the restore of a database's contents.
_PREAMBLE = (b"SET ", b"SELECT pg_catalog.set_config(", b"CREATE DATABASE ", b"DROP DATABASE ", b"ALTER DATABASE ",
             b"UPDATE pg_catalog.pg_database ", b"COMMENT ON DATABASE ")
_CLUSTER_HEADER = b"--\n-- PostgreSQL database cluster dump\n"
_DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
_COPY_END = b"\n\\.\n"
# psql reads its stdin through a stdio buffer: bytes it has taken from the pipe may not have been acted on yet.
PSQL_READ_AHEAD = 16384
# A quote, a comment or a dollar quote starts here (E'' strings take backslash escapes). A "$" inside an
# identifier (a$b$) or a parameter ($1) starts none, as in psql's lexer.
_TOKEN = re.compile(rb"--|/\*|(?<![A-Za-z0-9_$\x80-\xff])[Ee]'|'|\"|"
                    rb"(?<![A-Za-z0-9_$\x80-\xff])\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_E_STRING_STOP = re.compile(rb"[\\']")
# A line whose quotes all close on it and that holds no E'' string, no tagged dollar quote and no backslash
# outside a string (most lines of a dump): one match instead of the token loop. Group 1: a trailing -- comment.
_BALANCED = re.compile(rb"""(?:[^'"$/\\\-Ee\n]++|[Ee](?!')|-(?!-)|/(?!\*)|'[^']*+'|"[^"]*+"|"""
                       rb"""\$\$(?:[^$]|\$(?!\$))*+\$\$)*+(--.*)?""")  # possessive: no backtracking
_COMMENT_STOP = re.compile(rb"/\*|\*/")


def unquote(ident: bytes) -> str:
    """An SQL identifier as the server names it: the quotes of a quoted one removed, doubled quotes undoubled."""
    s = ident.decode("utf-8", "replace")
    return s[1:-1].replace('""', '"') if s.startswith('"') else s


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect_target(arg: bytes) -> str:
    """The database a ``\\connect`` line names: ``shop``, ``"UPPER"``, or pg_dumpall's form for other names,
    ``-reuse-previous=on "dbname='it\\'s'"`` (a psql-quoted connection string)."""
    arg = arg.strip()
    if arg.startswith(b"-reuse-previous="):
        arg = arg.partition(b" ")[2].lstrip()
    if arg.startswith(b'"'):  # psql's quoting of a meta-command argument: "" is one "
        i, out = 1, bytearray()
        while i < len(arg):
            if arg[i:i + 1] == b'"':
                if arg[i + 1:i + 2] != b'"':
                    break
                i += 1
            out += arg[i:i + 1]
            i += 1
        value = bytes(out)
    else:
        value = arg.split()[0] if arg.split() else b""
    text = value.decode("utf-8", "replace")
    if not text.startswith("dbname="):
        return text
    text = text[len("dbname="):]
    if not text.startswith("'"):
        return text.split()[0] if text.split() else ""
    name, i = [], 1  # a connection string's quoting: \' and \\
    while i < len(text) and text[i] != "'":
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        name.append(text[i])
        i += 1
    return "".join(name)


class _Lexer:
    """Where a line of SQL leaves psql's lexer: inside a quote or comment, and whether the last statement ended."""

    def __init__(self) -> None:
        self.quote: bytes | None = None  # b"'", b"E'", b'"', b"/*" or a dollar tag such as b"$_$"
        self.depth = 0  # nesting of /* */ comments
        self.ended = True  # the last statement ended with ";" (or none began)

    @property
    def at_start(self) -> bool:
        return self.quote is None and self.ended

    def advance(self, buf: bytes, pos: int, stop: int) -> None:
        """Read the line ``buf[pos:stop]`` (without its newline)."""
        if self.quote is None:
            m = _BALANCED.fullmatch(buf, pos, stop)
            if m:  # the common line: its quotes close on it (one regex, no loop)
                self._ended(buf, pos, m.start(1) if m.group(1) else stop)
                return
        while pos < stop:
            q = self.quote
            if q is None:
                m = _TOKEN.search(buf, pos, stop)
                self._ended(buf, pos, m.start() if m else stop)
                if m is None or m.group() == b"--":
                    return
                tok, pos = m.group(), m.end()
                if tok == b"/*":
                    self.quote, self.depth = tok, 1
                    continue
                self.ended = False
                self.quote = b"E'" if tok in (b"E'", b"e'") else tok
            elif q in (b"'", b'"'):
                i = buf.find(q, pos, stop)
                if i < 0:
                    return
                if buf[i + 1:i + 2] == q and i + 1 < stop:  # a doubled quote is part of the text
                    pos = i + 2
                    continue
                self.quote, pos = None, i + 1
            elif q == b"E'":
                m = _E_STRING_STOP.search(buf, pos, stop)
                if m is None:
                    return
                if m.group() == b"\\" or (buf[m.end():m.end() + 1] == b"'" and m.end() < stop):
                    pos = m.end() + 1
                    continue
                self.quote, pos = None, m.end()
            elif q == b"/*":
                m = _COMMENT_STOP.search(buf, pos, stop)
                if m is None:
                    return
                self.depth += 1 if m.group() == b"/*" else -1
                pos = m.end()
                if self.depth == 0:
                    self.quote = None
            else:
                i = buf.find(q, pos, stop)
                if i < 0:
                    return
                self.quote, pos = None, i + len(q)

    def _ended(self, buf: bytes, pos: int, stop: int) -> None:
        """Whether the code in ``buf[pos:stop]`` (outside quotes) ends a statement; blank code says nothing."""
        tail = buf[max(pos, stop - 64):stop].rstrip()
        if not tail and stop - pos > 64:
            tail = buf[pos:stop].rstrip()
        if tail:
            self.ended = tail.endswith(b";")


@dataclass(frozen=True)
class Event:
    """A database's restore begins (``start``: CREATE DATABASE or ``\\connect``), ends (``done``: pg_dump's
    "dump complete" line) or it is dropped (``drop``); ``line`` is its line in the stream psql reads (1-based),
    ``end`` the offset just after it."""

    kind: str
    db: str
    line: int
    end: int


@dataclass
class Context:
    """What a dump does in one database it connects to without creating it (or, for a single-database dump
    without --create, the database psql starts in)."""

    relations: set[tuple[str, str]] = field(default_factory=set)  # (schema, name) of the tables, views, sequences
    schemas: set[str] = field(default_factory=set)
    drops: bool = False  # it drops objects first (pg_dump --clean)


@dataclass
class Facts:
    """What a whole dump does, from ``scan``."""

    cluster: bool = False  # a pg_dumpall dump
    order: list[str] = field(default_factory=list)  # the databases it restores, in order
    #: the databases it creates (CREATE DATABASE) without dropping them first
    creates: list[str] = field(default_factory=list)
    #: the databases it restores into without creating them, by name ("" for the database psql starts in)
    contexts: dict[str, Context] = field(default_factory=dict)


@dataclass
class Plan:
    """How a restore rewrites the dump.

    ``keep_roles``: roles the dump may not drop and whose password it may not set (the connecting user, postgres);
    ``initial_db``: the database psql starts in; ``clean_databases``: existing databases to drop before the dump
    creates them (--clean); ``clean_sql``: statements to run when the stream first enters a database ("" for the
    initial one), to drop what the dump creates there (--clean)."""

    keep_roles: set[str] = field(default_factory=set)
    initial_db: str = "postgres"
    clean_databases: set[str] = field(default_factory=set)
    clean_sql: dict[str, list[bytes]] = field(default_factory=dict)


class DumpStream:
    """A dump's bytes, rewritten for psql (iterate it), with the events of its databases in the bytes given out.
    ``emit=False`` only reads (``scan``).

    Lines are matched where they lie in the buffer; what passes unchanged goes out as whole spans of it."""

    def __init__(self, chunks: Iterable[bytes], plan: Plan, *, emit: bool = True) -> None:
        self._chunks = chunks
        self.plan = plan
        self._emit = emit
        self.events: list[Event] = []
        self.order: list[str] = []  # the databases seen so far, in order
        self.finished = False  # the whole dump went through
        self.cluster: bool | None = None  # a pg_dumpall dump (known once its first line is read)
        self.facts = Facts()
        self.offset = 0  # bytes given out
        self.lines = 0  # newlines given out
        self._buf = b""
        self._span = 0  # where in the buffer the bytes not given out yet begin
        self._out: list[bytes] = []
        self._lexer = _Lexer()
        self._copy = False
        # The last bytes of the COPY data given out so far (at most 3), where a terminator may begin; b"\n" when
        # none is (the data starts a line, so its terminator may be its first line).
        self._copy_prev = b"\n"
        self._globals = True
        self._current = plan.initial_db  # the database psql is connected to
        self._restrict: bytes | None = None  # the key of the \restrict in force
        self._context: Context | None = None  # what is recorded for the current database (scan)
        self._initial_started = False
        self._created: set[str] = set()
        self._dropped: set[str] = set()
        self._entered: set[str] = set()

    # -- the byte loop --------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        for chunk in self._chunks:
            out, tail = self._process(tail + chunk if tail else bytes(chunk), final=False)
            if out:
                yield out
        out, _ = self._process(tail, final=True)
        self.finished = True
        if out:
            yield out

    def _process(self, buf: bytes, final: bool) -> tuple[bytes, bytes]:
        self._buf, self._span, self._out = buf, 0, []
        pos, n = 0, len(buf)
        if self.cluster is None:
            if n < len(_CLUSTER_HEADER) and not final:
                return b"", buf
            self.cluster = buf.startswith(_CLUSTER_HEADER)
            self.facts.cluster = self.cluster
            if not self.cluster:
                self._context = self.facts.contexts.setdefault("", Context())
                if self.plan.clean_sql.get(""):
                    # --clean of the database psql starts in: before the dump's first line
                    self._initial_started = True
                    self._event("start", self.plan.initial_db)
                    self._insert(self.plan.clean_sql[""])
        while pos < n:
            if self._copy:
                # A terminator that begins in the COPY data already given out (or right at its start: the
                # virtual newline) and ends here; then one in this buffer.
                probe = self._copy_prev + buf[pos:pos + len(_COPY_END) - 1]
                i = probe.find(_COPY_END)
                if i >= 0:
                    end = pos + i + len(_COPY_END) - len(self._copy_prev)
                else:
                    i = buf.find(_COPY_END, pos)
                    end = i + len(_COPY_END) if i >= 0 else -1
                if end >= 0:
                    pos, self._copy = end, False
                    continue
                # All of it is table data: give it out whole (no copy of the buffer), keeping its last bytes, where
                # a terminator may begin.
                keep = len(_COPY_END) - 1
                self._copy_prev = buf[n - keep:n] if n - pos >= keep else (self._copy_prev + buf[pos:n])[-keep:]
                pos = n
                break
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if not final:
                    break
                nl = n
            self._line(pos, nl, min(nl + 1, n))
            pos = nl + 1
        pos = min(pos, n)
        self._flush(pos)
        out = b"".join(self._out)
        self._buf, self._out = b"", []
        return out, buf[pos:]

    def _flush(self, upto: int) -> None:
        """Give out the unchanged bytes up to ``upto``."""
        if upto > self._span:
            data = self._buf[self._span:upto]
            if self._emit:
                self._out.append(data)
            self.offset += len(data)
            self.lines += data.count(b"\n")
            self._span = upto

    def _insert(self, lines: Iterable[bytes]) -> None:
        """Give out lines of our own here (after what is flushed)."""
        for line in lines:
            if self._emit:
                self._out.append(line + b"\n")
            self.offset += len(line) + 1
            self.lines += 1

    def _replace(self, pos: int, end: int, lines: list[bytes]) -> None:
        """The line at ``buf[pos:end]`` goes out as ``lines`` instead."""
        self._flush(pos)
        newline = self._buf[end - 1:end] == b"\n"
        self._insert(lines[:-1])
        last = lines[-1] + (b"\n" if newline else b"")
        if self._emit:
            self._out.append(last)
        self.offset += len(last)
        self.lines += newline
        self._span = end

    def _event(self, kind: str, db: str, length: int = 0) -> None:
        """An event at the next line given out (``length``: its bytes with the newline); flushed up to it."""
        self.events.append(Event(kind, db, self.lines + 1, self.offset + length))
        if db not in self.order and kind != "drop":
            self.order.append(db)

    # -- one line outside COPY data -------------------------------------------------------------------------

    def _line(self, pos: int, stop: int, end: int) -> None:
        """The line ``buf[pos:stop]``, its newline ending at ``end``."""
        buf = self._buf
        if not self._lexer.at_start:
            self._lexer.advance(buf, pos, stop)
            return
        first = buf[pos:pos + 1]
        if first == b"\\":
            self._meta(pos, stop, end)
            return
        self._lexer.advance(buf, pos, stop)
        if first == b"-":
            if buf.startswith(_DUMP_COMPLETE, pos):
                self._done(pos, end)
            return
        if pos == stop or first in b" \t\r":
            return
        self._statement(pos, stop, end)

    def _meta(self, pos: int, stop: int, end: int) -> None:
        buf = self._buf
        line = buf[pos:stop]
        m = _RESTRICT.match(line)
        if m:
            self._restrict = None if m.group(1) else m.group(2)
            return
        m = _CONNECT.match(line)
        if not m:
            return
        self._globals = False
        db = connect_target(m.group(1))
        self._current = db
        first = db not in self._entered
        self._entered.add(db)
        self._flush(pos)
        self._event("start", db, end - pos)
        if db in self._created:
            self._context = None  # a database the dump created: nothing of the target's is in it
            return
        self._context = self.facts.contexts.setdefault(db, Context())
        if first and self.plan.clean_sql.get(db):
            self._flush(end)
            self._insert(self.plan.clean_sql[db])

    def _done(self, pos: int, end: int) -> None:
        started = [e.db for e in self.events if e.kind == "start"]
        db = started[-1] if started else None if self.cluster else self.plan.initial_db
        if db is not None:
            self._flush(pos)
            self._event("done", db, end - pos)

    def _statement(self, pos: int, stop: int, end: int) -> None:
        buf = self._buf
        first = buf[pos:pos + 1]
        if self._globals and buf.startswith(_END_OF_GLOBALS, pos):
            self._globals = False
        if not self.cluster and not self._initial_started and not self._entered \
                and not buf.startswith(_PREAMBLE, pos):
            # a single-database dump's contents begin in the database psql starts in
            self._initial_started = True
            self._flush(pos)
            self._event("start", self.plan.initial_db, end - pos)
        if first not in b"ACD":  # only ALTER ROLE, COPY, CREATE and DROP lines are looked into
            return
        line = buf[pos:stop]
        if self._context is not None and not self._emit:  # what a database gets is only asked of a scan
            self._record(line)
        if first == b"C" and _COPY_FROM_STDIN.match(line):
            self._copy, self._copy_prev = True, b"\n"
            return
        m = _DROP.match(line) if first == b"D" else None
        if m:
            self._drop(pos, end, m.group(1), m.group(3))
            return
        m = _CREATE_DATABASE.match(line) if first == b"C" else None
        if m:
            db = unquote(m.group(1))
            if db not in self._dropped and db not in self._created:
                self.facts.creates.append(db)
            self._flush(pos)
            if db in self.plan.clean_databases:
                self._drop_database(m.group(1))
            self._created.add(db)
            self._event("start", db, end - pos)
        elif self._globals:
            new = _rewrite_global(line, self.plan.keep_roles)
            if new is not line:
                self._replace(pos, end, [new])

    def _record(self, line: bytes) -> None:
        assert self._context is not None
        m = _CREATE_RELATION.match(line)
        if m:
            self._context.relations.add((unquote(m.group(1)), unquote(m.group(2))))
            return
        m = _CREATE_SCHEMA.match(line)
        if m:
            self._context.schemas.add(unquote(m.group(1)))
        elif line.startswith(b"DROP "):
            self._context.drops = True

    def _drop(self, pos: int, end: int, kind: bytes, ident: bytes) -> None:
        name = unquote(ident)
        self._flush(pos)
        if kind == b"DATABASE":
            # DROP DATABASE cannot run in a transaction (no DO block): IF EXISTS for a cluster that lacks it, and
            # off the database first when psql is connected to it
            self._drop_database(ident)
            self._span = end
            return
        if kind == b"TABLESPACE":
            new = b"DROP TABLESPACE IF EXISTS " + ident + b";"
        elif name in self.plan.keep_roles:
            # the connecting user cannot drop itself, nor the bootstrap superuser; CREATE ROLE keeps them too
            new = b"-- stash-runner: kept role " + ident
        else:
            # a role that still owns objects (in a database the dump drops later) stays; the dump's CREATE ROLE is
            # "create if missing" and its ALTER ROLE then sets its attributes
            new = (b"DO $stash_runner$ BEGIN DROP ROLE IF EXISTS " + ident + b"; EXCEPTION WHEN "
                   b"dependent_objects_still_exist THEN RAISE NOTICE 'stash-runner: %', SQLERRM; END $stash_runner$;")
        self._replace(pos, end, [new])

    def _drop_database(self, ident: bytes) -> None:
        """``DROP DATABASE IF EXISTS`` given out here (flushed up to here), off the database first if psql is
        connected to it."""
        name = unquote(ident)
        if name == self._current:
            self._hop("template1" if name == "postgres" else "postgres")
        statement = b"DROP DATABASE IF EXISTS " + ident + b";"
        self._event("drop", name, len(statement) + 1)
        self._dropped.add(name)
        self._created.discard(name)
        self._insert([statement])

    def _hop(self, db: str) -> None:
        """Move psql to another database (it cannot drop the one it is connected to); inside a \\restrict block,
        which allows no other meta-command, by lifting it around the \\connect with the dump's own key."""
        lines = [b"\\connect " + quote_ident(db).encode()]
        if self._restrict is not None:
            lines = [b"\\unrestrict " + self._restrict, *lines, b"\\restrict " + self._restrict]
        self._insert(lines)
        self._current = db


def _rewrite_global(line: bytes, keep_password: set[str]) -> bytes:
    m = _CREATE_ROLE.match(line)
    if m:
        # pg_dumpall writes CREATE ROLE for roles the target already has (at least the one we
        # connect as): create only if missing, so ON_ERROR_STOP still stops on every real error.
        return (b"DO $stash_runner$ BEGIN CREATE ROLE " + m.group(1)
                + b"; EXCEPTION WHEN duplicate_object THEN NULL; END $stash_runner$;")
    m = _ALTER_ROLE_PASSWORD.match(line)
    if m and unquote(m.group(1)) in keep_password:
        # As Stash does: keep the target's superuser password, or the operator would lose access.
        return b"-- stash-runner: kept the target's password for role " + m.group(1)
    return line


def scan(chunks: Iterable[bytes], initial_db: str) -> Facts:
    """Read a whole dump: the databases it creates, and what it creates in those it restores into."""
    stream = DumpStream(chunks, Plan(initial_db=initial_db), emit=False)
    for _ in stream:
        pass
    stream.facts.order = list(stream.order)
    return stream.facts


# -- how far a failed restore got --------------------------------------------------------------------------------


@dataclass
class _State:
    started: list[str] = field(default_factory=list)  # in order; a database may also be done
    done: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)  # dropped (and it existed) and not restored again


def _state(events: Iterable[Event], existing: set[str]) -> _State:
    st = _State()
    for e in events:
        if e.kind == "start":
            if e.db not in st.started:
                st.started.append(e.db)
            st.done.discard(e.db)  # entered again: written to again
            if e.db in st.dropped:
                st.dropped.remove(e.db)
        elif e.kind == "done":
            st.done.add(e.db)
        elif e.db in existing or e.db in st.started:
            if e.db in st.started:
                st.started.remove(e.db)
            st.done.discard(e.db)
            if e.db not in st.dropped:
                st.dropped.append(e.db)
    return st


def _names(dbs: Iterable[str]) -> str:
    return ", ".join(dbs)


def progress_note(stream: DumpStream, *, line: int | None = None, consumed: int | None = None,
                  order: list[str] | None = None, existing: Iterable[str] = ()) -> str:
    """Which database a restore that stopped part-way left partly restored, for its error message.

    Where psql stopped: ``line``, the line of its error (events before it happened), else ``consumed``, the bytes it
    took from the pipe (events up to there may have happened; those before its read-ahead did), else everything
    given out. ``order``: the dump's databases from a scan; without it, those seen so far (and the later ones are
    named as such unless the whole dump went through). ``existing``: the target's databases before the restore."""
    had = set(existing)
    if line is not None:
        low = high = _state((e for e in stream.events if e.line < line), had)
    elif consumed is not None:
        if consumed <= 0:
            return "nothing was restored"
        low = _state((e for e in stream.events if e.end <= consumed - PSQL_READ_AHEAD), had)
        high = _state((e for e in stream.events if e.end <= consumed), had)
    else:
        low = high = _state(stream.events, had)
    dbs = list(order) if order is not None else list(stream.order)
    complete_list = order is not None or stream.finished
    touched = set(high.started) | high.done
    complete = [d for d in dbs if d in low.done and d in low.started]
    partly = [d for d in dbs if d in touched and d not in complete]
    not_started = [d for d in dbs if d not in touched and d not in high.dropped]
    if partly:
        head = "database " + " or ".join(f'"{d}"' for d in partly) + " is partly restored"
    elif stream.cluster and not touched:
        head = "only the globals (roles, tablespaces) may be partly restored"
    else:
        head = "no database is partly restored"
    lists = []
    if complete:
        lists.append("restored completely: " + _names(complete))
    if not complete_list:
        later = "the dump's later databases"
        lists.append("not started: " + (_names(not_started) + ", and " + later if not_started else later))
    elif not_started:
        lists.append("not started: " + _names(not_started))
    if high.dropped:
        lists.append("dropped and not restored yet: " + _names(high.dropped))
    return head + (f" ({'; '.join(lists)})" if lists else "")
