"""Child processes of dump and restore tools: piped, their stderr kept for the error message."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator

from stash_runner.errors import ToolFailed

from .base import Item

log = logging.getLogger("stash_runner")

STDERR_TAIL_LINES = 20
_PIPE_SIZE = 1 << 20  # let the dump tool run ahead of us by up to 1 MiB
_BATCH_BYTES = 256 << 10
_BATCH_WAIT = 0.002
_PASSWORD_LITERAL = re.compile(r"(PASSWORD\s+)'[^']*'", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Remove secret values and SQL password literals from text meant for people."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return _PASSWORD_LITERAL.sub(r"\1'***'", text)


class _TailReader:
    """Wraps a pipe: remembers the first and last bytes read, for a completeness check."""

    def __init__(self, raw, keep: int = 4096):
        self._raw = raw
        self.head = b""
        self.tail = b""
        self._keep = keep
        self.total = 0

    def readinto(self, b) -> int:
        buf = memoryview(b).cast("B")
        n = self._raw.readinto(buf) or 0
        # Dump tools write(2) a few KiB at a time; reading each as it comes costs a wake-up and a
        # Python call per 4 KiB (155,000 reads for a 1 GB pg_dumpall). After a short read, let the
        # writer fill the pipe for a moment: it holds 1 MiB, more than a dump writes in that time.
        if 0 < n < _BATCH_BYTES and len(buf) > n:
            time.sleep(_BATCH_WAIT)
            n += self._raw.readinto(buf[n:]) or 0
        if n:
            view = buf[:n]
            if len(self.head) < self._keep:
                self.head += bytes(view[: self._keep - len(self.head)])
            self.tail = (self.tail + bytes(view[-self._keep :]))[-self._keep :]
            self.total += n
        return n or 0


class Tool:
    """A running child process with its stderr drained into a short tail."""

    def __init__(self, argv: list[str], env: dict[str, str], *, stdin=None, stdout=None,
                 secrets: Iterable[str | None] = ()):
        self.name = os.path.basename(argv[0])
        self.secrets = list(secrets)
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, bufsize=0,
                start_new_session=True,  # a Ctrl-C reaches us, and we stop the tool in order
            )
        except FileNotFoundError:
            raise ToolFailed(f"{self.name} is not installed (not found on PATH)") from None
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = redact(raw.decode("utf-8", "replace").rstrip(), self.secrets)
            if line:
                self._stderr.append(line)
                log.debug("%s: %s", self.name, line)

    def stderr_tail(self) -> str:
        self._drain.join(timeout=5)
        return " | ".join(self._stderr)

    def wait(self) -> int:
        rc = self.proc.wait()
        self._drain.join(timeout=5)
        return rc

    def failure(self, rc: int, what: str = "") -> ToolFailed:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        detail = self.stderr_tail() or "no error output"
        return ToolFailed(f"{self.name} {how}{what}: {detail}")

    def stop(self) -> None:
        """Terminate the tool if it still runs (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class DumpProcess:
    """A dump tool's stdout as one stream, stored at ``path``; ``finish()`` checks its exit code and completeness."""

    def __init__(self, argv: list[str], env: dict[str, str], path: str, secrets: Iterable[str | None] = (),
                 complete_marker: bytes | None = None, plain_prefix: bytes | None = None):
        self.tool = Tool(argv, env, stdout=subprocess.PIPE, secrets=secrets)
        self.stream = _TailReader(self.tool.proc.stdout)
        self.path = path
        self._marker = complete_marker
        self._prefix = plain_prefix

    def items(self) -> list[Item]:
        return [Item(self.path, self.stream)]

    def finish(self) -> None:
        rc = self.tool.wait()
        if rc != 0:
            raise self.tool.failure(rc)
        if self.stream.total == 0:
            raise ToolFailed(f"{self.tool.name} exited 0 but wrote nothing")
        # A plain SQL dump ends with a "dump complete" comment: without it the output is truncated.
        if (self._marker and self._prefix and self.stream.head.startswith(self._prefix)
                and self._marker not in self.stream.tail):
            raise ToolFailed(f"{self.tool.name} output is truncated (no end-of-dump marker)")

    def __enter__(self) -> DumpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tool.stop()


def feed(argv: list[str], env: dict[str, str], chunks: Iterator[bytes],
         secrets: Iterable[str | None] = ()) -> None:
    """Pipe chunks into a tool's stdin; ToolFailed with its stderr when it fails."""
    tool = Tool(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, secrets=secrets)
    try:
        for chunk in chunks:
            try:
                _write_all(tool.proc.stdin, chunk)
            except BrokenPipeError:
                break  # the tool stopped reading: its exit code and stderr say why
        with contextlib.suppress(BrokenPipeError):
            tool.proc.stdin.close()
        rc = tool.wait()
        if rc != 0:
            raise tool.failure(rc)
    finally:
        tool.stop()


def _write_all(pipe, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = pipe.write(view)
        view = view[n:]
