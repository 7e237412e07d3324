"""multielasticdump, as the interim mode runs it: finding it, its options (ours and the user's --es-args), the
credentials and CA it reads from files, and the running tool with its output read for errors.

elasticdump's own behaviour drives most of this: it parses the auth file as INI and decodes the user info
twice (``auth_value``); ``--includeType`` turns on every ``ignore*`` option it does not name, ``ignoreChildError``
included, so a failed index would exit 0 (``common_args`` names the types with ``ignore*`` options instead);
and it exits 0 when the cluster refuses settings, mappings or documents, or a dump line is not JSON (``Run``
fails on the "Error Emitted" lines it logs).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable

from stash_runner.errors import BadInput, ToolFailed, one_line

from ..process import redact
from .connection import Server

log = logging.getLogger("stash_runner")

ELASTICDUMP_DIR = "elasticdump-6.125.1"
DEFAULT_LIMIT = 5000  # documents per scroll page and bulk request
OUTPUT_TAIL_LINES = 200
#: options of ours a user's --es-args may not give: the run depends on them (a repeated option would become an
#: array in multielasticdump's parser)
RESERVED = ("direction", "input", "output", "httpAuthFile")


def find_multielasticdump() -> str:
    """``multielasticdump`` from PATH, else the cached npm install."""
    found = shutil.which("multielasticdump")
    if found:
        return found
    cache = os.environ.get("STASH_RUNNER_CACHE") or os.path.expanduser("~/.cache/stash-runner")
    cached = os.path.join(cache, ELASTICDUMP_DIR, "node_modules", ".bin", "multielasticdump")
    if os.access(cached, os.X_OK):
        return cached
    raise ToolFailed(f"multielasticdump is not installed: not on PATH, nor at {cached} "
                     "(npm install elasticdump@6.125.1 there)")


# -- arguments ------------------------------------------------------------------------------------------------


def option(tokens: list[str], name: str) -> str | None:
    """The value of ``--name=value`` / ``--name value`` among a user's tokens ("" for a bare flag), or None."""
    for i, tok in enumerate(tokens):
        if tok == f"--{name}":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            return "" if nxt.startswith("--") else nxt
        if tok.startswith(f"--{name}="):
            return tok.split("=", 1)[1]
    return None


def user_args(es_args: str) -> list[str]:
    try:
        tokens = shlex.split(es_args)
    except ValueError as e:
        raise BadInput(f"--es-args {es_args!r}: {e}") from None
    for name in RESERVED:
        if option(tokens, name) is not None:
            raise BadInput(f"--es-args: --{name} is set by stash-runner (the server, the interim directory and "
                           "the credentials come from the AppBinding and the flags)")
    return tokens


def _fix_include_type(tokens: list[str]) -> list[str]:
    """A user's --includeType with ``childerror`` added: otherwise multielasticdump ignores failed indices."""
    if option(tokens, "ignoreChildError") is not None:
        return tokens  # the user decided
    out = list(tokens)
    for i, tok in enumerate(out):
        if tok.startswith("--includeType="):
            value = tok.split("=", 1)[1]
        elif tok == "--includeType" and i + 1 < len(out):
            i += 1
            value = out[i]
        else:
            continue
        if "childerror" not in value.split(","):
            out[i] = ("--includeType=" if out[i].startswith("--includeType=") else "") + value + ",childerror"
        break
    return out


def own_types(tokens: list[str]) -> bool:
    """Whether we choose the types: the user's --includeType/--ignoreType replace our choice."""
    return option(tokens, "includeType") is None and option(tokens, "ignoreType") is None


def common_args(tokens: list[str], side: str, ca_file: str | None, auth_file: str | None,
                 types: Iterable[tuple[str, str]]) -> list[str]:
    """Our options for either direction, each left out when the user gave it (theirs wins)."""
    args: list[str] = []
    if own_types(tokens):
        args += [f"--{k}={v}" for k, v in types if option(tokens, k) is None]
    if option(tokens, "limit") is None:
        args.append(f"--limit={DEFAULT_LIMIT}")
    if auth_file:
        args.append(f"--httpAuthFile={auth_file}")
    if ca_file:
        if option(tokens, f"{side}-ca") is None:
            args.append(f"--{side}-ca={ca_file}")
        if option(tokens, "tlsAuth") is None:
            args.append("--tlsAuth=true")
    return args + _fix_include_type(tokens)


def match_regex(names: Iterable[str]) -> str:
    """An anchored regular expression matching exactly ``names`` (JavaScript syntax, as ``--match`` takes)."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}/-])", r"\\\1", n) for n in sorted(names)]
    return "^(?:" + "|".join(escaped) + ")$" if escaped else "^(?!)$"


def data_wanted(tokens: list[str]) -> bool:
    """Whether the user's options leave documents in (our count check needs them)."""
    include = option(tokens, "includeType")
    if include is not None:
        return "data" in include.split(",")
    ignore = option(tokens, "ignoreType") or ""
    return "data" not in ignore.split(",") and (option(tokens, "ignoreData") or "false") == "false"


# -- credentials and CA ---------------------------------------------------------------------------------------


def auth_value(value: str) -> str:
    """A user name or password as elasticdump's auth file must hold it to send it unchanged.

    elasticdump parses the file with the ``ini`` package (which trims, drops what follows ``;``/``#``, unquotes
    and turns ``true``/``false``/``null`` into non-strings), sets the values as the URL's userinfo (WHATWG
    URL: ``%XX`` kept as is), and ``request`` then decodes the userinfo twice (``url.parse`` and its own
    unescape): so every byte is written percent-encoded, twice (``a`` -> ``%2561``). The file then holds only
    ``%``, hex digits and ``5``, which no parser step alters."""
    once = "".join(f"%{b:02X}" for b in value.encode("utf-8"))
    return once.replace("%", "%25")


def secrets_of(server: Server) -> list[str]:
    """The password in each form it may appear in elasticdump's output."""
    pw = server.password or ""
    if not pw:
        return []
    encoded = auth_value(pw)
    out = [pw, urllib.parse.quote(pw, safe=""), urllib.parse.quote(pw), encoded, encoded.replace("%25", "%")]
    if server.username:
        out.append(f"{server.username}:{pw}")
    return out


_URL_USERINFO = re.compile(r"(?<=//)[^/\s@]+:[^/\s@]*@")


class AuthFiles:
    """A private temp dir with the auth file and the CA, for one run of the tool."""

    def __init__(self, server: Server, scratch_dir: str | None):
        self.dir: str | None = None
        self.auth_file: str | None = None
        self.ca_file: str | None = None
        if not server.username and not (server.https and server.ca_pem):
            return
        if scratch_dir:
            os.makedirs(scratch_dir, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="stash-runner-es-", dir=scratch_dir)  # 0700
        try:
            if server.username:
                if not server.password:
                    raise BadInput(f"{server.ref}: user {server.username!r} has an empty password: elasticdump's "
                                   "auth file cannot hold one")
                self.auth_file = self._write("auth.txt", (f"user={auth_value(server.username)}\n"
                                                          f"password={auth_value(server.password)}\n").encode())
            if server.https and server.ca_pem:
                self.ca_file = self._write("ca.pem", server.ca_pem)
        except BaseException:
            self.remove()
            raise

    def _write(self, name: str, data: bytes) -> str:
        assert self.dir is not None
        path = os.path.join(self.dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def remove(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def check_url(server: Server) -> None:
    """multielasticdump appends /<index> to the URL and its per-index processes read the last path segments as
    index and type: a cluster under a URL path would be misread."""
    if urllib.parse.urlsplit(server.url).path.strip("/"):
        raise BadInput(f"{server.ref}: {server.url} has a path: multielasticdump (interim mode) reaches only a "
                       "cluster at the root of its URL; use stream mode")


def tool_env(server: Server) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)  # an inherited 0 would silently turn verification off
    if server.insecure:
        env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"  # asked for by the AppBinding (insecureSkipTLSVerify)
    return env


# -- the tool -------------------------------------------------------------------------------------------------


_LOG_PREFIX = re.compile(r"^\w{3}, \d\d \w{3} \d{4} [\d:]+ GMT (\[debug\] )?\| ")
_ERROR_LINE = re.compile(r"error|exception|reason|malformed|does not exist|not a directory|certificate"
                         r"|-> [45]\d\d ", re.IGNORECASE)
_NOT_ERROR = re.compile(r"^(\s+at |options: |fork: |Node\.js v)")
#: elasticdump logs a failure of its input or output stream (a line of a dump file that is not JSON) and goes on
#: to exit 0: any such line fails the run
_EMITTED = "Error Emitted =>"


class Run:
    """multielasticdump, in its own process group (it forks one node process per index and type), its output
    (stdout: its log and errors; stderr: crashes) drained into a short redacted tail."""

    def __init__(self, argv: list[str], env: dict[str, str], secrets: list[str]):
        self.secrets = secrets
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.errors: collections.deque[str] = collections.deque(maxlen=20)  # error lines, however early
        self.emitted = False
        log.debug("running %s", " ".join(shlex.quote(a) for a in argv))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            raise ToolFailed(f"multielasticdump could not be started: {e}") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = self.clean(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.tail.append(line)
                log.debug("multielasticdump: %s", line)
                text = _LOG_PREFIX.sub("", line)
                if _ERROR_LINE.search(text) and not _NOT_ERROR.match(text):
                    self.errors.append(text.strip())
                    self.emitted = self.emitted or _EMITTED in text

    def clean(self, text: str) -> str:
        return redact(_URL_USERINFO.sub("***@", text), self.secrets)

    def wait(self) -> None:
        """Wait for the tool; ToolFailed with its error lines when it fails."""
        rc = self.proc.wait()
        self.stop()  # a failed run leaves its other per-index processes running, orphaned
        if rc != 0:
            how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
            raise ToolFailed(f"multielasticdump failed ({how}): {self.summary()}")
        if self.emitted:
            raise ToolFailed(f"multielasticdump reported errors (exit 0): {self.summary()}")

    def summary(self) -> str:
        """The last few error lines, else the last lines; one line."""
        picked = list(dict.fromkeys(self.errors))[-3:]
        if not picked:
            lines = [_LOG_PREFIX.sub("", line) for line in self.tail]
            picked = [ln for ln in lines if not _NOT_ERROR.match(ln)][-3:]
        text = one_line(" | ".join(picked))[:600] or "no output"
        if "certificate" in text.lower():
            text += " (TLS verification failed: give the cluster's CA as spec.clientConfig.caBundle)"
        elif "-> 401 " in text:
            text += " (authentication failed: check the user and password of the AppBinding's Secret)"
        return text

    def stop(self) -> None:
        """Kill the whole process group, and wait (briefly) for it to be gone."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of group ``pgid`` remains: orphans are reaped by init, not us."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def tool_path(tool: str | None) -> str:
    return tool or find_multielasticdump()
