"""Run a hook's handler as Stash's prober does (kmodules.xyz/prober v0.25, vendored by stashed/stash:
``probe/prober.go``, ``probe/http/{common,http_post}.go``, ``probe/tcp/tcp.go``, ``probe/exec/exec.go``).

* Every set action runs, in the order exec -> httpGet -> httpPost -> tcpSocket, and the first failure stops the
  rest (``executeProbe``). Templates are rendered first (``renderHookTemplate`` runs before ``RunProbe``), so a
  bad template runs nothing.
* exec: through the pod's exec API in ``containerName`` (empty: the pod's first container); exit code 0 succeeds.
* HTTP: ``scheme://host:port/path``, ``host`` empty -> the executor pod's IP; status 200-399 succeeds (a 3xx that
  is not followed counts: the prober's "Warning" result is a success); redirects are followed only to the same
  host name, at most 10; TLS is not verified; no proxy; at most 10 KiB of the answer is read.
* httpPost: ``form`` -> ``application/x-www-form-urlencoded`` (keys sorted, as Go's ``url.Values.Encode``), else
  a non-empty ``body`` with the Content-Type ``github.com/gabriel-vasile/mimetype`` (v1.4.1) detects, which
  replaces a Content-Type header the user gave (``headers.Set``). That library, not Go's
  ``http.DetectContentType``, is what Stash uses: a JSON object is ``application/json``, not ``text/plain``.
* tcpSocket: a connection within the timeout succeeds.

Messages are one line, start like Stash's (``failed to execute "httpGet" probe``), name the URL without its query
and never a header value; output (exec) is quoted only as its last lines, capped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Protocol
from urllib.parse import quote, urlencode, urljoin, urlsplit

from stash_runner.errors import HookFailed, describe, one_line

from .spec import Handler, HTTPAction, Summary, TCPAction
from .template import render

#: the prober reads at most this much of an answer or a command's output
MAX_OUTPUT = 10 * 1024
#: a hook failure's message is cut to this (it goes into a condition message and an Event)
MAX_MESSAGE = 500
#: the prober's User-Agent unless the hook sets one
USER_AGENT = "kmodules.xyz/client-go/release-11.0"
#: mimetype sniffs at most this many bytes (its default read limit)
SNIFF_LIMIT = 3072
_MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
#: an action still running after this many seconds is said, and again every SAY_EVERY s, with the time left
SAY_AFTER = 5.0
SAY_EVERY = 15.0
#: the running hook as wait messages name it ("preBackup hook"); ``run.run`` sets it around its handler
hook_name: ContextVar[str] = ContextVar("hook_name", default="hook")

log = logging.getLogger("stash_runner")


class PodExec(Protocol):
    """Runs a command in a container of the pod behind the hook's target (pods/exec)."""

    def run(self, command: Sequence[str], container: str, timeout: float) -> tuple[int, str]:
        """(exit code, stdout and stderr combined, capped at 10 KiB); ``container`` "" = the pod's first."""
        ...


def run_handler(handler: Handler, summary: Summary, *, pod_exec: PodExec | None, default_host: str,
                timeout: float) -> str:
    """Run every action ``handler`` sets, in Stash's order, and say briefly what ran; raises ``HookFailed`` at the
    first failing action (later ones do not run) and ``BadInput`` for a template that cannot be rendered."""
    command = [render(part, summary) for part in handler.exec_command]  # render() keeps parts without "{{"
    body = render(handler.http_post.body, summary) if handler.http_post else ""
    done = []
    if command:
        done.append(_exec(command, handler.container, pod_exec, timeout))
    if handler.http_get:
        done.append(_http("httpGet", "GET", handler.http_get, None, default_host, timeout))
    if handler.http_post:
        done.append(_http("httpPost", "POST", handler.http_post, body, default_host, timeout))
    if handler.tcp_socket:
        done.append(_tcp(handler.tcp_socket, default_host, timeout))
    return "; ".join(done)


@contextlib.contextmanager
def _said_while_waiting(what: str, timeout: float) -> Iterator[None]:
    """Say what the hook waits for, and how long it may still take, while an action runs longer than a few seconds:
    a hook may take minutes (Stash's prober allows 5) with nothing else in the log."""
    name, started, done = hook_name.get(), time.monotonic(), threading.Event()

    def say() -> None:
        delay = SAY_AFTER
        while not done.wait(delay):
            left = max(0.0, timeout - (time.monotonic() - started))
            log.info("%s: waiting for %s (%.0f s left)", name, what, left)
            delay = SAY_EVERY

    watcher = threading.Thread(target=say, name="hook-wait", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _failed(probe: str, detail: str) -> HookFailed:
    message = one_line(f'failed to execute "{probe}" probe: {detail}')
    return HookFailed(message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…")


def _tail(output: str, lines: int = 3, chars: int = 300) -> str:
    """The last non-empty lines of (at most 10 KiB of) ``output``, on one line."""
    kept = [line.strip() for line in output[-MAX_OUTPUT:].splitlines() if line.strip()][-lines:]
    text = " | ".join(kept)
    return text if len(text) <= chars else "…" + text[-(chars - 1):]


# --- exec ---------------------------------------------------------------------------------------------------------

def _exec(command: list[str], container: str, pod_exec: PodExec | None, timeout: float) -> str:
    # only the program is named: the rest of a command line may hold a password
    what = f'"{command[0]}" in ' + (f'container "{container}"' if container else "the pod's first container")
    if pod_exec is None:
        raise _failed("exec", f"exec hooks need the pod behind the target (pods/exec): none is known for this "
                              f"hook, so {what} was not run")
    try:
        with _said_while_waiting(f"{what} to exit", timeout):
            code, output = pod_exec.run(command, container, timeout)
    except Exception as e:  # an API or stream error is this hook's failure, as in Stash
        raise _failed("exec", f"{what}: {describe(e)}") from e
    if code != 0:
        tail = _tail(output)
        raise _failed("exec", f"{what} exited with code {code}" + (f": {tail}" if tail else " (no output)"))
    return f"exec {what}: exit code 0"


# --- HTTP ---------------------------------------------------------------------------------------------------------

def _port(probe: str, port: int | str) -> int:
    if isinstance(port, str):
        if not port.isdigit():
            # Stash looks a name up in the executor pod's container ports; we have no pod spec to read
            raise _failed(probe, f'named port "{port}" cannot be resolved outside the pod: give the port number')
        port = int(port)
    if not 0 < port < 65536:
        raise _failed(probe, f"invalid port number: {port}")
    return port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # as Go's net.JoinHostPort


def _insecure_tls() -> ssl.SSLContext:
    # Stash's prober sets InsecureSkipVerify: hook endpoints (pod IPs, self-signed certs) are not verified
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http(probe: str, method: str, action: HTTPAction, body: str | None, default_host: str, timeout: float) -> str:
    host = action.host or default_host
    if not host:
        raise _failed(probe, "no host: the hook names none and the executor pod's IP is not known")
    port = _port(probe, action.port)
    # Go's formatURL: the path is parsed as a URL (so it may carry a query), a missing leading "/" is added
    path, _, query = (action.path or "/").partition("#")[0].partition("?")
    path = quote(path if path.startswith("/") else "/" + path, safe="/%:@!$&'()*+,;=-._~")
    url = f"{action.scheme.lower()}://{_host_port(host, port)}{path}" + (f"?{query}" if query else "")

    headers = [(h.name, h.value) for h in action.headers]
    for name, value in headers:
        if not name or any(c in name for c in " :\r\n\t") or any(c in value for c in "\r\n\0"):
            raise _failed(probe, f'header "{one_line(name)[:40]}" has an invalid name or value')
    data = None
    if method == "POST":
        if action.form:
            values = dict(action.form)  # a repeated key: the last entry wins, as Stash's toValues
            data = urlencode([(k, v) for k in sorted(values) for v in values[k]]).encode()
            content_type = "application/x-www-form-urlencoded"
        elif body:
            data = body.encode()
            content_type = sniff_content_type(body)
        if data is not None:
            # headers.Set: replaces the user's Content-Type
            headers = [(n, v) for n, v in headers if n.lower() != "content-type"] + [("Content-Type", content_type)]
    if not any(n.lower() == "user-agent" for n, _ in headers):
        headers.append(("User-Agent", USER_AGENT))

    with _said_while_waiting(f"{method} {_shown(url)} to answer", timeout):
        return _exchange(probe, method, url, headers, data, timeout)


def _exchange(probe: str, method: str, url: str, headers: list[tuple[str, str]], data: bytes | None,
              timeout: float) -> str:
    """The request, and the redirects it is answered with, within ``timeout`` s in all."""
    deadline = time.monotonic() + timeout
    first_host = urlsplit(url).hostname
    for hop in range(_MAX_REDIRECTS):
        shown = _shown(url)
        status, reason, location = _request(probe, method, url, headers, data, deadline, timeout)
        if status in _REDIRECTS and location:
            target = urljoin(url, location)
            if urlsplit(target).hostname != first_host:
                # not followed: the prober returns this answer, a success ("Warning")
                return f"{probe} {shown}: {status} {reason} (redirect to another host not followed)"
            if hop == _MAX_REDIRECTS - 1:  # Go: the 10th redirect is refused (len(via) >= 10)
                raise _failed(probe, f"{method} {shown}: stopped after {_MAX_REDIRECTS} redirects")
            if status in (301, 302, 303) and method not in ("GET", "HEAD"):
                # as Go's client: the request becomes a GET without a body
                method, data = "GET", None
                headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
            url = target
            continue
        if 200 <= status < 400:
            return f"{probe} {shown}: {status} {reason}"
        raise _failed(probe, f"{method} {shown} answered {status} {reason}")
    raise AssertionError("unreachable")


def _shown(url: str) -> str:
    """``url`` as a message may show it: without user info, query or fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _request(probe: str, method: str, url: str, headers: list[tuple[str, str]], data: bytes | None,
             deadline: float, timeout: float) -> tuple[int, str, str]:
    """One exchange: (status, reason, Location); the answer's body is read up to 10 KiB and dropped."""
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _failed(probe, f"{method} {_shown(url)}: no answer within {timeout:g} s")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=remaining, context=_insecure_tls())
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=remaining)
    else:
        raise _failed(probe, f"unsupported scheme {parts.scheme!r}")
    try:
        conn.putrequest(method, target, skip_host=any(n.lower() == "host" for n, _ in headers),
                        skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if data is not None or method == "POST":
            conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders(data)
        response = conn.getresponse()
        response.read(MAX_OUTPUT)
        return response.status, response.reason, response.getheader("Location", "")
    except TimeoutError as e:
        raise _failed(probe, f"{method} {_shown(url)}: no answer within {timeout:g} s") from e
    except ssl.SSLError as e:
        raise _failed(probe, f"{method} {_shown(url)}: TLS failed: {e.reason or describe(e)}") from e
    except ConnectionRefusedError as e:
        raise _failed(probe, f"{method} {_shown(url)}: connection refused") from e
    except (ValueError, http.client.InvalidURL) as e:
        # http.client quotes the offending URL (query and all) or header value in its text: name the type only
        raise _failed(probe, f"{method} {_shown(url)}: invalid request ({type(e).__name__})") from e
    except (OSError, http.client.HTTPException) as e:
        raise _failed(probe, f"{method} {_shown(url)}: {describe(e)}") from e
    finally:
        conn.close()


# --- Content-Type sniffing (the mimetype library's answers for text) -----------------------------------------------

_HTML_TAGS = (b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV", b"<FONT", b"<TABLE",
              b"<A", b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P")
_WS = b"\t\n\x0c\r "


def sniff_content_type(body: str) -> str:
    """The Content-Type Stash's prober sends with a POST ``body``: ``mimetype.Detect`` for the kinds a hook body
    is (JSON, NDJSON, HTML, XML, plain text). Not reproduced: its rarer text kinds (SVG, PHP, shebang scripts,
    RTF, CSV/TSV, vCard, iCalendar, GeoJSON), which come out as text/plain here."""
    raw = body.encode()
    head = raw[:SNIFF_LIMIT]
    if any(b <= 0x08 or b == 0x0B or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F for b in head):
        return "application/octet-stream"
    lead = head.lstrip(_WS)
    if _markup(lead, _HTML_TAGS):
        return "text/html; charset=utf-8"
    if _markup(lead, (b"<?XML",)):
        return "text/xml; charset=utf-8"
    # only an object or array counts as JSON; a longer body is judged by its first SNIFF_LIMIT bytes there, here
    # by the whole body (the same answer for valid JSON)
    if lead[:1] in (b"{", b"[") and len(lead) >= 2 and _json(body):
        return "application/json"
    if _ndjson(head if len(raw) <= SNIFF_LIMIT else head.rpartition(b"\n")[0]):
        return "application/x-ndjson"
    return "text/plain; charset=utf-8"


def _markup(raw: bytes, tags: tuple[bytes, ...]) -> bool:
    # a tag, case-insensitively, followed by a space or ">"
    upper = raw[:20].upper()
    return any(upper.startswith(tag) and raw[len(tag):len(tag) + 1] in (b" ", b">") for tag in tags)


def _json(text: str | bytes) -> bool:
    def reject(constant: str) -> None:
        raise ValueError(constant)  # NaN and Infinity are not JSON

    try:
        json.loads(text, parse_constant=reject)
    except ValueError:
        return False
    return True


def _ndjson(raw: bytes) -> bool:
    lines = [line.strip(_WS) for line in raw.split(b"\n")]
    lines = [line for line in lines if line]
    return len(lines) > 1 and all(_json(line) for line in lines) and any(line[:1] in (b"{", b"[") for line in lines)


# --- TCP ----------------------------------------------------------------------------------------------------------

def _tcp(action: TCPAction, default_host: str, timeout: float) -> str:
    host = action.host or default_host
    if not host:
        raise _failed("tcp", "no host: the hook names none and the executor pod's IP is not known")
    port = _port("tcp", action.port)
    where = _host_port(host, port)
    try:
        with _said_while_waiting(f"a connection to {where}", timeout):
            socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError as e:
        raise _failed("tcp", f"tcpSocket {where}: no connection within {timeout:g} s") from e
    except ConnectionRefusedError as e:
        raise _failed("tcp", f"tcpSocket {where}: connection refused") from e
    except OSError as e:
        raise _failed("tcp", f"tcpSocket {where}: {describe(e)}") from e
    return f"tcpSocket {where}: connected"
