"""Which pg_dump, pg_dumpall or psql to run: the one matched to the server's major version.

A pg_dump refuses a server of a newer major ("aborting because of server version mismatch"), and Debian's
``pg_wrapper`` on PATH picks a version by its own rules, so the runner asks the server its version and calls
the chosen client by absolute path. Clients are found in Debian's layout (``<root>/<major>/bin``) and on PATH.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from stash_runner.errors import ToolFailed, one_line

from .process import redact

log = logging.getLogger("stash_runner")

DEFAULT_ROOT = "/usr/lib/postgresql"
TOOLS = ("pg_dump", "pg_dumpall", "psql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# The libpq variables the driver sets for its tools, as psycopg's connection keywords.
_ENV_KEYWORDS = {
    "PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password", "PGDATABASE": "dbname",
    "PGSSLMODE": "sslmode", "PGSSLROOTCERT": "sslrootcert", "PGSSLCERT": "sslcert", "PGSSLKEY": "sslkey",
    "PGCONNECT_TIMEOUT": "connect_timeout", "PGAPPNAME": "application_name",
}


@dataclass(frozen=True)
class Client:
    """One installed PostgreSQL client: its major version, its directory and which of ``TOOLS`` it holds."""

    major: int
    bindir: str
    tools: frozenset[str] = frozenset(TOOLS)

    def path(self, tool: str) -> str:
        return os.path.join(self.bindir, tool)


@dataclass(frozen=True)
class Choice:
    """The client chosen for a tool, and why (for the log line); ``warn``: a choice that may not work."""

    client: Client
    tool: str
    reason: str
    warn: bool = False

    @property
    def path(self) -> str:
        return self.client.path(self.tool)


def major_of(version_num: int) -> int:
    """The major of a ``server_version_num`` (150013 -> 15). Before 10 majors had two parts: 90624 -> 9."""
    return version_num // 10000


def format_version(version_num: int) -> str:
    """``server_version_num`` as people write it: 170002 -> "17.2", 90624 -> "9.6.24"."""
    if version_num >= 100000:
        return f"{version_num // 10000}.{version_num % 10000}"
    return f"{version_num // 10000}.{version_num // 100 % 100}.{version_num % 100}"


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _tools_in(bindir: str) -> frozenset[str]:
    return frozenset(t for t in TOOLS if _executable(os.path.join(bindir, t)))


def _path_client(path: str, known: Sequence[Client]) -> Client | None:
    """The client of the pg_dump on ``path`` when it is not one of ``known`` (nor Debian's version-picking
    pg_wrapper, which would not pin a major)."""
    found = shutil.which("pg_dump", path=path)
    if found is None:
        return None
    real = os.path.realpath(found)
    if os.path.basename(real) == "pg_wrapper" or any(
            real == os.path.realpath(c.path("pg_dump")) for c in known):
        return None
    try:
        r = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("%s --version failed: %s", found, e)
        return None
    m = _VERSION.search(r.stdout)
    if r.returncode != 0 or m is None:
        log.debug("%s --version: no version in %r", found, r.stdout.strip())
        return None
    major = int(m.group(1))
    if major < 10 or any(c.major == major for c in known):
        return None  # pre-10 clients are not supported; the Debian directory of the same major wins
    bindir = os.path.dirname(found)
    return Client(major, bindir, _tools_in(bindir))


def find_clients(root: str = DEFAULT_ROOT, path: str | None = None) -> list[Client]:
    """The installed clients, oldest first: ``<root>/<major>/bin`` holding at least one of ``TOOLS``, and the
    pg_dump found on ``path`` (default: $PATH; "" to skip) when it is another one."""
    clients: list[Client] = []
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue  # "9.6" and other non-major entries
        bindir = os.path.join(root, name, "bin")
        tools = _tools_in(bindir)
        if tools:
            clients.append(Client(int(name), bindir, tools))
    if path is None:
        path = os.environ.get("PATH", "")
    if path:
        extra = _path_client(path, clients)
        if extra is not None:
            clients.append(extra)
    return sorted(clients, key=lambda c: c.major)


def server_version(env: Mapping[str, str]) -> int:
    """The server's ``server_version_num`` (150013), connecting as the tools would with ``env``'s libpq variables
    (the database: PGDATABASE, else postgres). Raises psycopg.Error; its text never holds the password."""
    params = {kw: env[var] for var, kw in _ENV_KEYWORDS.items() if env.get(var)}
    params.setdefault("dbname", "postgres")
    params.setdefault("sslmode", "prefer")  # libpq's default, whatever PGSSLMODE this process has
    try:
        with psycopg.connect(**params) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
    except psycopg.Error as e:
        # libpq does not echo passwords, but the message goes to logs: make sure.
        raise type(e)(redact(one_line(e), [params.get("password")])) from None
    if row is None:
        raise psycopg.DataError("SHOW server_version_num returned nothing")
    return int(row[0])


def _package(major: int) -> str:
    return f"postgresql-client-{major}" if major >= 10 else "a current postgresql-client"


def choose(server_major: int | None, clients: Sequence[Client], tool: str, *, server_version: str = "",
           target: str = "the server") -> Choice:
    """The client to run ``tool`` against a server of ``server_major``: the same major, else the newest newer one;
    else, for psql only, the newest older one (``warn``). ``server_major`` None (the version could not be read):
    the newest, which reads the most server versions. ToolFailed naming both versions when none fits."""
    having = sorted((c for c in clients if tool in c.tools), key=lambda c: c.major)
    shown = server_version or str(server_major)
    need = "a restore needs psql" if tool == "psql" else f"a dump needs a {tool}"
    if not having:
        looked = f"no {tool} is installed here (looked in {DEFAULT_ROOT}/<major>/bin and on PATH)"
        if server_major is None:
            raise ToolFailed(f"{looked} to reach {target}: use an image with a postgresql-client package")
        wanted = "" if tool == "psql" else f" of major {server_major} or newer"
        raise ToolFailed(f"{target} is version {shown} but {looked}: {need}{wanted}; use an image with "
                         f"{_package(server_major)}")
    newest = having[-1]
    if server_major is None:
        return Choice(newest, tool, "the newest here", warn=True)
    same = [c for c in having if c.major == server_major]
    if same:
        return Choice(same[0], tool, "same major")
    if newest.major > server_major:
        return Choice(newest, tool, f"no {tool} {server_major} here; the newest newer major")
    if tool == "psql":
        # psql only sends the dump's SQL to the server, which parses it; what an older psql can miss is a
        # meta-command of a newer pg_dump (\restrict), and ON_ERROR_STOP then stops the restore loudly.
        return Choice(newest, tool, f"no psql {server_major} or newer here; an older psql sends plain SQL "
                                    "to a newer server, but may not know a newer dump's meta-commands", warn=True)
    found = ", ".join(str(c.major) for c in having)
    raise ToolFailed(f"{target} is version {shown} but the newest {tool} here is {newest.major} (from "
                     f"{newest.bindir}; majors found: {found}): {need} of major {server_major} or newer; "
                     f"use an image with {_package(server_major)}")
