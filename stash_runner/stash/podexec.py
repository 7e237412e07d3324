"""Exec hooks in a pod, as Stash runs them: the pods/exec subresource over a websocket.

For an AppBinding target Stash runs the hook's ``exec.command`` in the first pod behind the AppBinding's
``spec.clientConfig.service.name``: the Service's core/v1 Endpoints, subset by subset, the ready addresses and then
the not-ready ones, the first whose ``targetRef.kind`` is Pod (``pod_for_appbinding``). The container is the hook's
``containerName``, else the pod's first container.

``KubePodExec`` speaks the channel protocol of the API server (``v5.channel.k8s.io`` or ``v4.channel.k8s.io``,
binary frames whose first byte is the channel): stdout on 1, stderr on 2, and on 3 a metav1.Status at the end —
``Success``, or ``Failure`` with an ``ExitCode`` cause for a non-zero exit, or a failure to start the command. The
reads need ``get`` on endpoints and pods, the exec ``get`` and ``create`` on pods/exec, as Stash's job RBAC gives.

A command cut off by the timeout is only disconnected: a kubelet does not stop a non-tty exec's process when its
client goes away, so it may go on running in the container.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import websocket  # websocket-client, the kubernetes client's own dependency

from stash_runner.errors import BadInput, ClusterAccessDenied, ClusterError, HookFailed, one_line

from .kube import Cluster
from .objects import AppBinding

OUTPUT_CAP = 10 * 1024  # Stash's prober keeps 10 KiB of an exec's output
_LINE_CAP = 300  # the last output line, as it goes into a condition's message
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # v5 only adds a close signal for stdin, which we never open
_STDOUT, _STDERR, _STATUS = 1, 2, 3


def pod_for_appbinding(cluster: Cluster, namespace: str, appbinding: dict | AppBinding) -> tuple[str, str]:
    """The pod the exec hooks of an AppBinding target run in, and its first container (the default one).

    ``appbinding`` is the object as read, or an ``objects.AppBinding``; the latter keeps no service name, only the
    host ``<service>.<namespace>.svc`` made of it, so a URL AppBinding whose URL has that form counts as that
    service's (Stash, reading the object, would find no pod)."""
    service, ref = _service_of(appbinding, namespace)
    if not service:
        raise HookFailed(f"no pod found for {ref}: it names no service (spec.clientConfig.url)")
    try:
        endpoints = cluster.get_core("Endpoints", "endpoints", namespace, service)
    except BadInput as e:  # 404: the service has no Endpoints object, so no pod either
        raise HookFailed(f"no pod found for {ref}: {e}") from None
    pod = _first_pod(endpoints)
    if not pod:
        raise HookFailed(f"no pod found for {ref}: Endpoints {namespace}/{service} lists no pod")
    return pod, first_container(cluster, namespace, pod)


def first_container(cluster: Cluster, namespace: str, pod: str) -> str:
    """The name of the pod's first container: where an exec hook without containerName runs."""
    obj = cluster.get_core("Pod", "pods", namespace, pod)
    containers = (obj.get("spec") or {}).get("containers") or []
    if not containers or not isinstance(containers[0], dict) or not containers[0].get("name"):
        raise ClusterError(f"Pod {namespace}/{pod}: spec.containers is empty")
    return str(containers[0]["name"])


def _service_of(appbinding: dict | AppBinding, namespace: str) -> tuple[str, str]:
    if isinstance(appbinding, AppBinding):
        suffix = f".{appbinding.namespace}.svc"
        name = appbinding.host[:-len(suffix)] if appbinding.host.endswith(suffix) else ""
        return ("" if "." in name else name), appbinding.ref
    meta = appbinding.get("metadata") or {}
    ref = f"AppBinding {meta.get('namespace') or namespace}/{meta.get('name', '')}"
    service = ((appbinding.get("spec") or {}).get("clientConfig") or {}).get("service")
    return (str(service.get("name") or "") if isinstance(service, dict) else ""), ref


def _first_pod(endpoints: dict) -> str:
    # Stash's order: per subset, ready addresses before not-ready ones.
    for subset in endpoints.get("subsets") or []:
        for key in ("addresses", "notReadyAddresses"):
            for address in subset.get(key) or []:
                target = address.get("targetRef") or {}
                if target.get("kind") == "Pod" and target.get("name"):
                    return str(target["name"])
    return ""


class KubePodExec:
    """``PodExec`` for one pod: runs a command in one of its containers through the API server."""

    def __init__(self, cluster: Cluster, namespace: str, pod: str, default_container: str = "") -> None:
        """``default_container`` is used when a hook names none; empty: the pod's first, read when needed."""
        self.cluster = cluster
        self.namespace = namespace
        self.pod = pod
        self.default_container = default_container

    @classmethod
    def for_appbinding(cls, cluster: Cluster, namespace: str, appbinding: dict | AppBinding) -> KubePodExec:
        pod, container = pod_for_appbinding(cluster, namespace, appbinding)
        return cls(cluster, namespace, pod, container)

    def run(self, command: Sequence[str], container: str, timeout: float) -> tuple[int, str]:
        """Run ``command`` to its end: its exit code and its stdout and stderr as they came, the last 10 KiB.

        A command that cannot start (no such executable) or does not end within ``timeout`` seconds is a
        HookFailed; API and connection problems are ClusterErrors (403: ClusterAccessDenied)."""
        if not command:
            raise BadInput("exec hook: the command is empty")
        deadline = time.monotonic() + timeout
        container = container or self._default()
        where = self._where(container)
        query = [("command", c) for c in command] + [("container", container), ("stdout", "true"),
                                                     ("stderr", "true")]
        try:
            ws = self.cluster.open_websocket(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}/exec", query,
                                             ref=f"Pod {self.namespace}/{self.pod}", verb="exec",
                                             protocols=PROTOCOLS, timeout=max(deadline - time.monotonic(), 0.001))
        except ClusterAccessDenied as e:
            # A websocket exec is authorized for get and then for create on pods/exec; the server words a refused
            # create as 'pods "x" is forbidden: ' and nothing more, so the line says what is missing.
            if "forbidden" in str(e) and "pods/exec" not in str(e):
                raise ClusterAccessDenied(f"{str(e).rstrip(': ')}: an exec needs get and create on pods/exec") \
                    from None
            raise
        try:
            output, status = self._read(ws, deadline, where, timeout)
        finally:
            ws.close(timeout=0.5)
        text = _decode_tail(output)
        return _exit_code(status, where, text), text

    def check(self, command: Sequence[str], container: str, timeout: float) -> str:
        """``run``, with a non-zero exit as HookFailed naming the exit code and the output's last line."""
        code, output = self.run(command, container, timeout)
        if code:
            raise HookFailed(failure_message(self._where(container or self._default()), code, output))
        return output

    def _default(self) -> str:
        if not self.default_container:
            self.default_container = first_container(self.cluster, self.namespace, self.pod)
        return self.default_container

    def _where(self, container: str) -> str:
        # The command itself stays out of messages: its arguments may carry credentials.
        return f"exec in pod {self.namespace}/{self.pod}, container {container}"

    def _read(self, ws: Any, deadline: float, where: str, timeout: float) -> tuple[bytearray, bytes | None]:
        """Frames until the server closes: output (kept to the last OUTPUT_CAP bytes) and the Status bytes."""
        output = bytearray()
        status: bytearray | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HookFailed(f"{where}: did not finish within the timeout of {timeout:g}s")
            ws.settimeout(left)
            try:
                opcode, frame = ws.recv_data_frame(True)
            except (TimeoutError, websocket.WebSocketTimeoutException):
                continue  # the deadline check above reports it
            except websocket.WebSocketConnectionClosedException:
                break  # closed without a close frame: the Status decides whether that is an error
            except (websocket.WebSocketException, OSError) as e:
                raise ClusterError(f"{where}: the exec stream failed: {one_line(e) or type(e).__name__}") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) or not frame.data:
                continue  # pings are answered by the library; an empty frame carries no channel
            data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
            channel, payload = data[0], data[1:]
            if channel in (_STDOUT, _STDERR):
                output += payload
                if len(output) > 2 * OUTPUT_CAP:  # trimmed now and then, not per frame
                    del output[:-OUTPUT_CAP]
            elif channel == _STATUS:
                status = (status or bytearray()) + payload
            # 0 (stdin) is never sent to us, 255 (v5 close) only concerns stdin: both ignored
        return output, (bytes(status) if status is not None else None)


def _exit_code(status: bytes | None, where: str, output: str) -> int:
    if status is None:
        raise ClusterError(f"{where}: the stream ended without the command's exit status")
    try:
        st = json.loads(status)
    except ValueError:
        raise ClusterError(f"{where}: the exit status is not JSON") from None
    if not isinstance(st, dict):
        raise ClusterError(f"{where}: the exit status is not a Status object")
    if st.get("status") == "Success":
        return 0
    for cause in ((st.get("details") or {}).get("causes") or []):
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                break
    # The command did not run (no such executable, container gone): the hook failed, with the server's words.
    message = one_line(st.get("message") or st.get("reason") or "unknown failure")
    raise HookFailed(f"{where}: {message}" + (f": {_last_line(output)}" if output.strip() else ""))


def _decode_tail(output: bytearray) -> str:
    tail = bytes(output[-OUTPUT_CAP:])
    if len(output) > OUTPUT_CAP:
        # A cut inside a UTF-8 sequence would start the text with replacement characters: drop the stray bytes.
        n = 0
        while n < 3 and n < len(tail) and 0x80 <= tail[n] < 0xC0:
            n += 1
        tail = tail[n:]
    return tail.decode("utf-8", "replace")


def _last_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    line = one_line(lines[-1]) if lines else ""
    return line if len(line) <= _LINE_CAP else "..." + line[-_LINE_CAP:]


def failure_message(where: str, code: int, output: str) -> str:
    """One line for a command that exited with ``code``: the code and the last line of its output."""
    last = _last_line(output)
    return f"{where}: exit code {code}" + (f": {last}" if last else " (no output)")
