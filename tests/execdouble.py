"""A small test double of the API server's pods/exec websocket, for the exec streaming a real kube-apiserver cannot
show here (no kubelet runs, so it answers every exec with 400 "does not have a host assigned").

What it imitates, and how:

- ``GET /api/v1/namespaces/NS/{endpoints,pods}/NAME``: the objects given to ``seed``, as JSON; 404 with a NotFound
  Status otherwise. A bearer token is required when one is given (401 Status, as the apiserver answers).
- ``GET /api/v1/namespaces/NS/pods/NAME/exec?command=..&container=..&stdout=true&stderr=true``: the RFC 6455
  handshake (Sec-WebSocket-Accept from the key), choosing the first of the client's subprotocols it speaks, which
  is only ``v4.channel.k8s.io``. Then, as the kubelet does: an empty frame on channel 1 (its "streams are ready"
  notice), the command's stdout and stderr as binary frames on channels 1 and 2 as they come, and at the end a
  metav1.Status on channel 3 (``Success``; ``NonZeroExitCode`` with an ``ExitCode`` cause, 128+N for a signal;
  ``InternalError`` when the command cannot start), then a close frame. The command is a real local process, so
  exit codes, output and timing are real.
- The refusals before an upgrade, as the apiserver words them: ``forbid_exec = "get"`` or ``"create"`` answers 403
  with the Status the apiserver sends when RBAC refuses that verb on pods/exec (for create its message ends after
  "is forbidden: "); an unknown pod 404; a container the pod does not declare 400; no websocket upgrade 400.
- TLS with a given certificate (tests.kubecluster.Pki), or plain HTTP.

What it does not: authorization beyond one token; any other path or verb; stdin, tty and resize (channels 0 and 4);
v5's close signal and base64 subprotocols; the apiserver's proxying to a kubelet (an upgrade is answered right
here); message texts beyond the shapes above (the kubelet's own wording of exit errors differs). And one thing it
does differently on purpose: when the client goes away, the command is killed — a real kubelet leaves a non-tty
exec's process running.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import ssl
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed key suffix
PROTOCOL = "v4.channel.k8s.io"
_BINARY, _CLOSE, _PING, _PONG = 0x2, 0x8, 0x9, 0xA


def status(code: int, reason: str, message: str, **details: Any) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, **({"details": details} if details else {}), "code": code}


class ExecDouble:
    """``with ExecDouble(cert=..., key=..., token=...) as d:`` — ``d.url``; ``d.seed(obj)``; ``d.requests`` lists
    (path, query) of every request; ``d.forbid_exec = "get"`` (or "create") makes exec answer 403."""

    def __init__(self, *, cert: str | None = None, key: str | None = None, token: str | None = None,
                 user: str = "system:serviceaccount:default:stash-runner") -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.forbid_exec = ""  # "get" or "create": RBAC refuses that verb on pods/exec
        self.token = token
        self.user = user
        self.procs: list[subprocess.Popen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def seed(self, *objs: dict) -> None:
        for obj in objs:
            plural = {"Endpoints": "endpoints", "Pod": "pods"}[obj["kind"]]
            meta = obj["metadata"]
            self.objects[(plural, meta["namespace"], meta["name"])] = obj

    def __enter__(self) -> ExecDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        for p in self.procs:
            _kill(p)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the command's own children too (it leads its session)
    proc.wait()


def _handler(double: ExecDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            double.requests.append((url.path, query))
            if double.token and self.headers.get("Authorization") != f"Bearer {double.token}":
                return self._json(401, status(401, "Unauthorized", "Unauthorized"))
            parts = url.path.strip("/").split("/")
            if len(parts) not in (6, 7) or parts[:3] != ["api", "v1", "namespaces"]:
                return self._json(404, status(404, "NotFound", "the server could not find the requested resource"))
            ns, plural, name, sub = parts[3], parts[4], parts[5], (parts[6] if len(parts) == 7 else "")
            if sub == "exec" and double.forbid_exec:
                # The apiserver checks get (its filter, which words the refusal) and then create (the exec handler,
                # which passes on RBAC's empty reason).
                why = f'User "{double.user}" cannot get resource "pods/exec" in API group "" in the namespace ' \
                      f'"{ns}"' if double.forbid_exec == "get" else ""
                return self._json(403, status(403, "Forbidden", f'pods "{name}" is forbidden: {why}', name=name,
                                              kind="pods"))
            obj = double.objects.get((plural, ns, name))
            if obj is None or sub not in ("", "exec") or (sub and plural != "pods"):
                return self._json(404, status(404, "NotFound", f'{plural} "{name}" not found', name=name,
                                              kind=plural))
            if not sub:
                return self._json(200, obj)
            container = (query.get("container") or [""])[0]
            if container not in [c["name"] for c in obj["spec"]["containers"]]:
                return self._json(400, status(400, "BadRequest", f"container {container} is not valid for pod {name}"))
            offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
            key = self.headers.get("Sec-WebSocket-Key")
            if (self.headers.get("Upgrade") or "").lower() != "websocket" or not key or PROTOCOL not in offered:
                return self._json(400, status(400, "BadRequest", "Upgrade request required"))
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept",
                             base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode())
            self.send_header("Sec-WebSocket-Protocol", PROTOCOL)
            self.end_headers()
            self.close_connection = True
            self._exec(query.get("command") or [])

        # --- the websocket side: every read and write of the connection happens in this one thread ----------
        def _send(self, opcode: int, payload: bytes) -> None:
            n = len(payload)
            head = bytes([0x80 | opcode])  # FIN; a server's frames are not masked
            if n < 126:
                head += bytes([n])
            elif n < 1 << 16:
                head += bytes([126]) + struct.pack("!H", n)
            else:
                head += bytes([127]) + struct.pack("!Q", n)
            self.wfile.write(head + payload)

        def _recv(self) -> tuple[int, bytes] | None:
            """One client frame (unmasked), or None at EOF."""
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = self.rfile.read(n)
            return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

        def _status(self, body: dict) -> None:
            self._send(_BINARY, b"\x03" + json.dumps(body).encode())

        def _exec(self, command: list[str]) -> None:
            try:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
            except OSError as e:
                self._status({"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                              "message": f"Internal error occurred: error executing command in container: "
                                         f'exec: "{command[0] if command else ""}": {e.strerror}'})
                return self._close()
            double.procs.append(proc)
            self._send(_BINARY, b"\x01")  # the kubelet's "ready" notice: empty, on the lowest output channel
            pipes = {proc.stdout: b"\x01", proc.stderr: b"\x02"}
            sock = self.connection
            while pipes:
                ready, _, _ = select.select([*pipes, sock], [], [], 1.0)
                if sock in ready:
                    frame = self._recv()
                    if frame is None or frame[0] == _CLOSE:
                        _kill(proc)  # the client went away (see the module's docstring)
                        if frame is not None:
                            self._send(_CLOSE, frame[1][:2])
                        return
                    if frame[0] == _PING:
                        self._send(_PONG, frame[1])
                for pipe in [p for p in ready if p in pipes]:
                    data = os.read(pipe.fileno(), 65536)
                    if data:
                        self._send(_BINARY, pipes[pipe] + data)
                    else:
                        del pipes[pipe]
            code = proc.wait()
            code = 128 - code if code < 0 else code  # killed by a signal: the runtime's 128+N, not Python's -N
            if code == 0:
                self._status({"metadata": {}, "status": "Success"})
            else:
                self._status({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                              "message": f"command terminated with non-zero exit code: error executing command "
                                         f"{command}, exit code {code}",
                              "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}})
            self._close()

        def _close(self) -> None:
            self._send(_CLOSE, struct.pack("!H", 1000))
            self.connection.settimeout(2)
            try:
                while (frame := self._recv()) is not None and frame[0] != _CLOSE:
                    pass  # until the client's close answers ours
            except OSError:
                pass

    return Handler
