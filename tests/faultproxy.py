"""A fault-injecting HTTP/1.1 reverse proxy for the storage tests (standard library only).

Point an SDK's endpoint at ``FaultProxy.url``; requests are forwarded to a fixed upstream
(``http://127.0.0.1:PORT``, a storage emulator) and some of them get an injected fault:
a 503, a dropped connection (before forwarding, or half-way through the response body),
or a stall. See ``Faults``.

Behaviour worth knowing when writing fault tests:

- The proxy answers ``Expect: 100-continue`` itself (right away) and reads the whole request
  body before deciding on a fault, so an error or stall on a PUT still costs the full upload.
  ``Expect`` is not forwarded; request bodies are forwarded de-chunked with ``Content-Length``.
- ``Host`` is forwarded as the client sent it (SigV4 signs it).
- A "late" drop forwards the request (so the upstream *did* the operation), then sends the
  response headers with the real ``Content-Length`` and half of the body, then closes. For an
  empty body it closes without answering at all. On a GET the SDK sees this only when reading
  the body (botocore: ``IncompleteReadError``/``ResponseStreamingError``), which SDK retries
  do not cover.
- ``counts["forwarded"]`` counts requests passed upstream without a fault (a late drop counts as a drop only);
  all counts are taken before the client sees any of the answer.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 7.6.1) are per connection and never forwarded; Expect is answered here.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                         "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "expect"})
_BLOCK = 256 * 1024
_SPOOL_IN_MEMORY = 8 * 1024 * 1024  # larger request bodies go to a temp file
_MAX_LINE = 65536
_UPSTREAM_TIMEOUT = 120.0
# S3's throttling error: botocore retries it (and so do the other SDKs, which retry any 503).
_ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
               b"<Message>Please reduce your request rate. (injected by FaultProxy)</Message>"
               b"<RequestId>faultproxy</RequestId></Error>")


@dataclass
class Faults:
    error_rate: float = 0.0  # share answered 503 SlowDown without forwarding
    drop_rate: float = 0.0  # share whose connection is closed: half before forwarding, half mid-response-body
    stall_rate: float = 0.0  # share left unanswered for stall_seconds, then closed
    stall_seconds: float = 30.0
    only_methods: tuple[str, ...] = ()  # if non-empty, faults apply only to these methods
    # if non-empty, faults apply only to requests whose URL-decoded path and query, or the first 4 KiB of
    # whose body, contain it (e.g. "/data/")
    path_contains: str = ""
    seed: int | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request is routine here; don't spray tracebacks


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and lets BaseHTTPRequestHandler answer 100-continue
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.proxy._register(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close_upstream()
            self.server.proxy._unregister(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def abort(self) -> None:
        """Called from FaultProxy.stop(): wake up whatever this thread is blocked on."""
        for sock in (self.connection, self._upstream.sock if self._upstream else None):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    # Every method goes through the same path.
    def do_proxy(self) -> None:
        proxy = self.server.proxy
        # Spooled so that it can be re-sent to a fresh upstream connection.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as body:
            try:
                self._read_body(body)
            except (ValueError, OSError):
                self.close_connection = True
                return
            # The match text: the URL, and the head of the body, where a GCS upload names its object.
            body.seek(0)
            head = body.read(4096).decode("latin-1")
            fault, stall_seconds = proxy._decide(self.command, f"{self.path} {head}")
            if fault == "error":
                self._send_error_reply()
            elif fault == "drop_before":
                self.close_connection = True
            elif fault == "stall":
                proxy._stopping.wait(stall_seconds)
                self.close_connection = True
            else:
                self._forward(body, drop=fault == "drop_after")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_proxy

    def _read_body(self, out: IO[bytes]) -> None:
        """Read the whole request body (de-chunked) into ``out``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._read_chunked(out)
        else:
            self._copy(int(self.headers.get("Content-Length") or 0), out, "body")

    def _copy(self, n: int, out: IO[bytes], what: str) -> None:
        """Exactly ``n`` bytes of the request from the client into ``out``."""
        while n > 0:
            data = self.rfile.read(min(n, _BLOCK))
            if not data:
                raise ValueError(f"client closed mid-{what}")
            out.write(data)
            n -= len(data)

    def _read_chunked(self, out: IO[bytes]) -> None:
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise ValueError("bad chunk size line")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            self._copy(size, out, "chunk")
            if self.rfile.readline(_MAX_LINE).strip():
                raise ValueError("missing CRLF after chunk")
        while self.rfile.readline(_MAX_LINE).strip():
            pass  # trailers: dropped (the body is forwarded with Content-Length)

    def _send_error_reply(self) -> None:
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_ERROR_BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_ERROR_BODY)

    def _target(self) -> str:
        # Tolerate absolute-form targets (forward-proxy style) by sending only path+query upstream.
        if self.path.startswith(("http://", "https://")):
            parts = urlsplit(self.path)
            return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self.path

    def _request_upstream(self, body: IO[bytes]) -> http.client.HTTPResponse:
        proxy = self.server.proxy
        length = body.seek(0, 2)
        connection_tokens = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        for attempt in range(2):
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port,
                                                            timeout=_UPSTREAM_TIMEOUT)
            conn = self._upstream
            try:
                conn.putrequest(self.command, self._target(), skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    low = name.lower()
                    if low in _HOP_BY_HOP or low in connection_tokens or low == "content-length":
                        continue
                    conn.putheader(name, value)
                if length or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                    conn.putheader("Content-Length", str(length))
                conn.endheaders()
                body.seek(0)
                while data := body.read(_BLOCK):
                    conn.send(data)
                return conn.getresponse()
            except (ConnectionError, http.client.BadStatusLine, http.client.CannotSendRequest):
                # A kept-alive upstream connection the emulator has closed in the meantime: retry once, fresh.
                self._close_upstream()
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")

    def _forward(self, body: IO[bytes], drop: bool) -> None:
        try:
            resp = self._request_upstream(body)
        except (OSError, http.client.HTTPException) as e:
            self._close_upstream()
            msg = f"FaultProxy: upstream failed: {e!r}".encode()
            self.send_response_only(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        connection_tokens = {t.strip().lower() for t in (resp.getheader("Connection") or "").split(",")}
        length = resp.getheader("Content-Length")
        # http.client de-chunks; without a length we re-chunk for the client (or close-delimit for HTTP/1.0).
        rechunk = not no_body and length is None and self.request_version >= "HTTP/1.1"
        if not no_body and length is None and not rechunk:
            self.close_connection = True

        if drop and (no_body or length == "0"):
            # Nothing to cut short: the upstream did the work, the client gets no answer at all.
            resp.read()
            self._close_upstream()
            self.close_connection = True
            return

        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            low = name.lower()
            if low in _HOP_BY_HOP or low in connection_tokens:
                continue
            self.send_header(name, value)
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

        if no_body:
            resp.read()
        elif drop:
            # Half of the body, then hang up. With an unknown length: half of the first block and no closing
            # zero chunk, so the client still sees a truncated body (not so for a close-delimited HTTP/1.0 one).
            if length is not None:
                remaining = int(length) // 2
                while remaining > 0 and (data := resp.read(min(remaining, _BLOCK))):
                    self.wfile.write(data)
                    remaining -= len(data)
            else:
                data = resp.read(_BLOCK)
                part = data[: len(data) // 2]
                if part:
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n" if rechunk else part)
            self.wfile.flush()
            self._close_upstream()
            self.close_connection = True
            return
        else:
            while data := resp.read(_BLOCK):
                if rechunk:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)
            if rechunk:
                self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        if resp.will_close:
            self._close_upstream()


class FaultProxy:
    """A reverse proxy to ``upstream`` that injects ``faults``; see the module docstring."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self._upstream_host: str = parts.hostname
        self._upstream_port: int = parts.port or 80
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._counts = {"forwarded": 0, "errors": 0, "drops": 0, "stalls": 0, "drops_before": 0, "drops_after": 0}
        self._handlers: set[_Handler] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            if faults.seed is not None:
                self._rng = random.Random(faults.seed)

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot: forwarded, errors, drops (= drops_before + drops_after), stalls."""
        with self._lock:
            return dict(self._counts)

    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy-{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent, and safe to call from any thread (also concurrently)."""
        with self._stop_lock:
            self._stopping.set()  # ends stalls
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
            with self._lock:
                handlers = list(self._handlers)
            for h in handlers:
                h.abort()
            if self._thread is not None:
                self._thread.join(5)
                self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- used by the handler threads ---

    def _register(self, h: _Handler) -> None:
        with self._lock:
            self._handlers.add(h)
        if self._stopping.is_set():
            h.abort()

    def _unregister(self, h: _Handler) -> None:
        with self._lock:
            self._handlers.discard(h)

    def _decide(self, method: str, path: str = "") -> tuple[str, float]:
        """The fault for one request and the stall length (read together, so a concurrent faults swap is atomic).

        The kind is 'forward', 'error', 'drop_before', 'drop_after' or 'stall'. It is counted here, before
        the client can see any of the answer, so that a test reading ``counts`` afterwards never races.
        """
        with self._lock:
            f = self._faults
            kind = "forward"
            if (not f.only_methods or method.upper() in {m.upper() for m in f.only_methods}) and \
                    (not f.path_contains or f.path_contains in urllib.parse.unquote(path)):
                r = self._rng.random()
                if r < f.error_rate:
                    kind = "error"
                elif r < f.error_rate + f.drop_rate:
                    kind = "drop_before" if self._rng.random() < 0.5 else "drop_after"
                elif r < f.error_rate + f.drop_rate + f.stall_rate:
                    kind = "stall"
            key = {"forward": "forwarded", "error": "errors", "stall": "stalls"}.get(kind, "drops")
            self._counts[key] += 1
            if kind.startswith("drop_"):
                self._counts[kind.replace("drop_", "drops_")] += 1
            return kind, f.stall_seconds if kind == "stall" else 0.0
