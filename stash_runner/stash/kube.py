"""The cluster side of the runner: objects read from the Kubernetes API, status writes and Events.

Stash starts the runner in a Job whose service account may read the AppBinding, Repository and Secrets and
write the status of the BackupSession/RestoreSession; ``Cluster`` is the ``ObjectSource`` for that case (the
files of ``FileSource`` being the other). It is built on the official ``kubernetes`` client, but with a
``Configuration`` and an ``ApiClient`` of its own (never the client's global default), so that two Clusters, or
a Cluster and tests, cannot leak settings into each other.

Every failure becomes one line naming the object and, where it helps, the API server, and never carrying a
token or Secret data: error bodies are reduced to the ``message`` of the apiserver's ``Status``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from stash_runner.errors import BadInput, ClusterAccessDenied, ClusterError, RunnerError, first_line, one_line

log = logging.getLogger("stash_runner")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN_FILE = f"{SA_DIR}/token"
SA_CA_FILE = f"{SA_DIR}/ca.crt"

# Server errors and throttling worth another try of the same request; 409 is handled by update_status.
_RETRY_STATUS = (429, 500, 502, 503, 504)
_REQUEST_ATTEMPTS = 3
_MAX_EVENT_MESSAGE = 1024  # events.k8s.io's note limit; core/v1 has none, but Events are for people to read


@dataclass(frozen=True)
class _Kind:
    group: str  # "" for the core API
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: dict[str, _Kind] = {
    "Secret": _Kind("", "v1", "secrets"),
    "AppBinding": _Kind("appcatalog.appscode.com", "v1alpha1", "appbindings"),
    "Repository": _Kind("stash.appscode.com", "v1alpha1", "repositories"),
    "BackupSession": _Kind("stash.appscode.com", "v1beta1", "backupsessions"),
    "BackupConfiguration": _Kind("stash.appscode.com", "v1beta1", "backupconfigurations"),
    "BackupBatch": _Kind("stash.appscode.com", "v1beta1", "backupbatches"),
    "RestoreSession": _Kind("stash.appscode.com", "v1beta1", "restoresessions"),
    "RestoreBatch": _Kind("stash.appscode.com", "v1beta1", "restorebatches"),
}


def _kind(kind: str) -> _Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"stash_runner.stash.kube: no API resource known for kind {kind!r}") from None


class Cluster:
    """Objects from the Kubernetes API (an ObjectSource), status writes and Events."""

    def __init__(self, configuration: kubernetes.client.Configuration, *, timeout: float = 30,
                 hostname: str | None = None) -> None:
        """``configuration`` is owned by this Cluster from now on (its retries are set here). ``hostname`` names
        this runner in Events (default: $HOSTNAME, else the host name)."""
        # Few, fast urllib3 retries: enough for a dropped keep-alive connection or a blip, while an unreachable
        # server fails within a second or so instead of the client's default of minutes. read=1 lets an
        # idempotent request survive a connection the server closed under it; status codes are retried here.
        configuration.retries = urllib3.Retry(total=2, connect=2, read=1, status=0, other=0, backoff_factor=0.25,
                                              raise_on_status=False)
        # update_status may run from several threads at once; a pool smaller than that only warns and reconnects.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 16)
        self._config = configuration
        self._api = kubernetes.client.ApiClient(configuration)
        self._custom = kubernetes.client.CustomObjectsApi(self._api)
        # (connect, read): connecting to an API server that takes longer than 10 s is as good as unreachable.
        self._timeout = (float(min(timeout, 10)), float(timeout))
        self._hostname = hostname or os.environ.get("HOSTNAME") or socket.gethostname()
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, kubeconfig: str = "", *, environ: Mapping[str, str] | None = None,
                token_file: str = SA_TOKEN_FILE, ca_file: str = SA_CA_FILE, timeout: float = 30) -> Cluster:
        """The API server of ``kubeconfig``; else, inside a pod, of the service account; else of $KUBECONFIG or
        ~/.kube/config. Nothing is requested yet: a server that is down fails the first call."""
        env = os.environ if environ is None else environ
        cfg = kubernetes.client.Configuration()
        if kubeconfig:
            if not os.path.isfile(kubeconfig):
                raise BadInput(f"--kubeconfig {kubeconfig}: " + ("not a file" if os.path.exists(kubeconfig)
                                                                 else "no such file"))
            _load_kubeconfig(kubeconfig, cfg, f"--kubeconfig {kubeconfig}")
        elif env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT") and os.path.isfile(token_file):
            try:
                kubernetes.config.incluster_config.InClusterConfigLoader(
                    token_filename=token_file, cert_filename=ca_file, environ=env).load_and_set(cfg)
            except (ConfigException, OSError) as e:
                raise BadInput(f"in-cluster Kubernetes config ({token_file}, {ca_file}): {first_line(e)}") from None
        elif env.get("KUBECONFIG"):
            # Like kubectl, every existing file of the list is merged (the first one wins per entry), which the
            # client's KubeConfigMerger does; files that do not exist are skipped.
            paths = env["KUBECONFIG"]
            existing = [p for p in paths.split(os.pathsep) if p and os.path.isfile(os.path.expanduser(p))]
            if not existing:
                raise BadInput(f"KUBECONFIG {paths}: no such file")
            _load_kubeconfig(paths, cfg, f"KUBECONFIG {paths}")
        else:
            home = env.get("HOME") or os.path.expanduser("~")
            default = os.path.join(home, ".kube", "config")
            if not os.path.isfile(default):
                raise BadInput("no objects: give --objects FILE|DIR, or run in a cluster, "
                               "or give --kubeconfig or KUBECONFIG")
            _load_kubeconfig(default, cfg, default)
        return cls(cfg, timeout=timeout, hostname=env.get("HOSTNAME") or socket.gethostname())

    @property
    def server(self) -> str:
        """The API server URL, for messages."""
        return str(self._config.host)

    # -- reading ---------------------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict:
        """The object exactly as the server serves it (a Secret's ``data`` stays base64)."""
        k = _kind(kind)
        if not k.group:
            def call() -> Any:
                return self._core_call("GET", f"/api/v1/namespaces/{{namespace}}/{k.plural}/{{name}}",
                                       {"namespace": namespace, "name": name})
        else:
            def call() -> Any:
                return self._custom.get_namespaced_custom_object(k.group, k.version, namespace, k.plural, name,
                                                                 _preload_content=False,
                                                                 _request_timeout=self._timeout)
        ref = f"{kind} {namespace}/{name}"
        return self._json(self._request(call, "get", ref), ref)

    def get_core(self, kind: str, plural: str, namespace: str, name: str) -> dict:
        """A core/v1 object of a kind outside KINDS (the exec hooks' Endpoints and Pods), read as ``get`` reads."""
        ref = f"{kind} {namespace}/{name}"

        def call() -> Any:
            return self._core_call("GET", f"/api/v1/namespaces/{{namespace}}/{plural}/{{name}}",
                                   {"namespace": namespace, "name": name})
        return self._json(self._request(call, "get", ref), ref)

    def open_websocket(self, path: str, query: Sequence[tuple[str, str]], *, ref: str, verb: str,
                       protocols: Sequence[str], timeout: float) -> Any:
        """A ``websocket.WebSocket`` (websocket-client) to ``path`` (pods/exec), with this Cluster's credentials,
        TLS settings and proxy. ``timeout`` bounds the connection and the handshake and stays the socket's
        timeout. An answer other than 101 becomes the error ``get`` would raise (403: ClusterAccessDenied with the
        server's message). One attempt: an upgrade that did reach the kubelet may have started the command."""
        import websocket  # imported here: only exec hooks need it
        from kubernetes.client.rest import should_bypass_proxies

        cfg = self._config
        # param_serialize: the same URL (host prefix, quoting) and Authorization (refreshed token) as every call
        _, url, headers, _, _ = self._api.param_serialize("GET", path, query_params=list(query), header_params={},
                                                          auth_settings=["BearerToken"])
        url = "ws" + url[4:] if url.startswith("http") else url
        opts: dict[str, Any] = {"http_no_proxy": ["*"]}  # the Configuration has decided on proxies, not the env
        try:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert, cadata=cfg.ca_cert_data)
            if not cfg.verify_ssl or cfg.assert_hostname is False:
                ctx.check_hostname = False
            if not cfg.verify_ssl:
                ctx.verify_mode = ssl.CERT_NONE
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            if cfg.proxy and not should_bypass_proxies(cfg.host, cfg.no_proxy or ""):
                proxy = urllib3.util.parse_url(cfg.proxy)
                opts = {"http_proxy_host": proxy.host, "http_proxy_port": proxy.port or 80,
                        "proxy_type": proxy.scheme if (proxy.scheme or "").startswith("socks") else "http",
                        "http_proxy_auth": tuple(proxy.auth.split(":", 1)) if proxy.auth else None}
            sslopt = {"context": ctx, **({"server_hostname": cfg.tls_server_name} if cfg.tls_server_name else {})}
            ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
            ws.connect(url, header={k: v for k, v in headers.items() if k.lower() in ("authorization", "user-agent")},
                       subprotocols=list(protocols), timeout=timeout, suppress_origin=True, **opts)
        except websocket.WebSocketBadStatusException as e:
            body = e.resp_body.decode("utf-8", "replace") if e.resp_body else None
            raise self._api_error(ApiException(status=e.status_code, reason=e.status_message, body=body),
                                  verb, ref) from None
        except (websocket.WebSocketTimeoutException, OSError) as e:
            cause = "timed out" if isinstance(e, websocket.WebSocketTimeoutException) else _transport_cause(e)
            raise ClusterError(f"Kubernetes API at {self.server} unreachable: {cause}") from None
        except websocket.WebSocketException as e:  # an answer that is no websocket upgrade
            raise ClusterError(f"{ref}: {verb} failed: {first_line(e)} ({self.server})") from None
        return ws

    # -- writing ---------------------------------------------------------------------------------------------

    def update_status(self, kind: str, namespace: str, name: str, change: Callable[[dict], dict | None], *,
                      attempts: int = 30) -> dict:
        """Write ``change(obj)`` as the object's ``.status`` through the status subresource, with optimistic
        concurrency: the write carries the resourceVersion read, and on a conflict the object is read again and
        ``change`` called again on the fresh object (so it may run several times). ``change`` returning None
        writes nothing. Returns the object as stored (as read, when nothing was written)."""
        k = _kind(kind)
        if not k.group:
            raise ValueError(f"stash_runner.stash.kube: {kind} has no status subresource to update")
        ref = f"{kind} {namespace}/{name}"
        for attempt in range(1, attempts + 1):
            obj = self.get(kind, namespace, name)
            body = copy.deepcopy(obj)  # what is written does not depend on what change() does to its argument
            status = change(obj)
            if status is None:
                return body
            body["status"] = status
            # The whole object goes back with the resourceVersion it was read at (body.metadata): the server
            # rejects it with 409 if anyone wrote in between, and keeps everything but .status as stored.

            def put(body: dict = body) -> Any:
                return self._custom.replace_namespaced_custom_object_status(
                    k.group, k.version, namespace, k.plural, name, body, _preload_content=False,
                    _request_timeout=self._timeout)

            try:
                resp = self._request(put, "update status", ref, conflict_ok=True)
            except _Conflict:
                if attempt == attempts:
                    break
                # Jittered so that writers that collided do not collide again in lockstep; growing a little.
                time.sleep(random.uniform(0.01, 0.1) * (1 + min(attempt, 10) / 5))
                continue
            return self._json(resp, ref)
        raise ClusterError(f"{ref}: status update still conflicting after {attempts} attempts ({self.server})")

    def event(self, obj: dict, *, reason: str, message: str, type: str = "Normal",
              component: str = "stash-runner") -> bool:
        """Record a core/v1 Event about ``obj`` (the object as read). Never raises for the API's sake: an Event
        that cannot be written is one warning in the log, and False."""
        meta = obj.get("metadata") or {}
        kind, name, namespace = obj.get("kind", ""), meta.get("name", ""), meta.get("namespace") or "default"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        involved = {"apiVersion": obj.get("apiVersion"), "kind": kind, "name": name, "namespace": namespace,
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        body = {
            "apiVersion": "v1", "kind": "Event",
            # generateName: the server picks a unique suffix (and shortens a long name), so no name can collide
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason, "message": message[:_MAX_EVENT_MESSAGE], "type": type,
            "source": {"component": component, "host": self._hostname},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": component, "reportingInstance": self._hostname[:128],
        }

        def call() -> Any:
            return self._core_call("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, body)

        try:
            # One attempt: a retried POST whose first try did land would record the Event twice.
            resp = self._request(call, "create", "", retry=False)
            resp.drain_conn()  # read to the end, or the pooled connection would carry the rest into the next call
            resp.release_conn()
        except RunnerError as e:
            log.warning("could not record Event %s about %s %s/%s: %s", reason, kind, namespace, name, e)
            return False
        except Exception as e:  # the client validating the body, say: still never the backup's failure
            log.warning("could not record Event %s about %s %s/%s: %s: %s", reason, kind, namespace, name,
                        type(e).__name__, first_line(e))
            return False
        return True

    def close(self) -> None:
        """Close the client's connections (and thread pool, if it made one). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._api.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _core_call(self, method: str, path: str, path_params: dict[str, str], body: dict | None = None) -> Any:
        """A raw call to the core API group, as CoreV1Api would make it. CoreV1Api itself is not used: its
        module (pydantic models of the whole core API) takes ~2 s to build, on every run, for two calls."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._api.param_serialize(method=method, resource_path=path, path_params=path_params,
                                            header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(*request, _request_timeout=self._timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response  # the urllib3 response, as the generated APIs give with _preload_content=False

    def _request(self, call: Callable[[], Any], verb: str, ref: str, *, retry: bool = True,
                 conflict_ok: bool = False) -> Any:
        """Run one client call about ``ref`` ("Kind ns/name", or "" to leave it to the caller); API and transport
        errors become RunnerErrors (``from None``: the client's exception text carries response headers and
        bodies, which must not reach a traceback either)."""
        for attempt in range(1, _REQUEST_ATTEMPTS + 1):
            try:
                return call()
            except ApiException as e:
                if e.status == 409 and conflict_ok:
                    raise _Conflict() from None
                if retry and e.status in _RETRY_STATUS and attempt < _REQUEST_ATTEMPTS:
                    time.sleep(_retry_delay(e, attempt))
                    continue
                raise self._api_error(e, verb, ref) from None
            except (urllib3.exceptions.HTTPError, OSError) as e:
                # urllib3 has already retried (configuration.retries): the server is not there.
                raise ClusterError(f"Kubernetes API at {self.server} unreachable: {_transport_cause(e)}") from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _api_error(self, e: ApiException, verb: str, ref: str) -> RunnerError:
        prefix = f"{ref}: " if ref else ""
        status = e.status or 0
        if status == 0:
            # The client reports some transport failures (TLS) as an ApiException without a status.
            return ClusterError(f"Kubernetes API at {self.server} unreachable: {_reason_line(e.reason)}")
        message = _status_message(e)
        if status == 404:
            return BadInput(f"{prefix}not found in the cluster ({self.server})")
        if status == 401:
            return ClusterAccessDenied(f"Kubernetes API at {self.server}: the credentials were refused "
                                       f"(401 Unauthorized)")
        if status == 403:
            return ClusterAccessDenied(f"{prefix}forbidden: {message}")
        return ClusterError(f"{prefix}{verb} failed: {status} {message}")

    def _json(self, resp: Any, ref: str) -> dict:
        try:
            raw = resp.data
        finally:
            resp.release_conn()
        try:
            obj = json.loads(raw)
        except ValueError:
            raise ClusterError(f"{ref}: the API server ({self.server}) answered with "
                               f"something that is not JSON") from None
        if not isinstance(obj, dict):
            raise ClusterError(f"{ref}: the API server ({self.server}) answered with "
                               f"JSON that is not an object")
        return obj


class _Conflict(Exception):
    """409 on a status write: update_status reads again."""


def _load_kubeconfig(path: str, cfg: kubernetes.client.Configuration, label: str) -> None:
    try:
        # client_configuration given: the loader fills ours and leaves the client's global default alone;
        # persist_config=False: a refreshed token is never written back into the user's file.
        kubernetes.config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
    except yaml.YAMLError as e:
        raise BadInput(f"{label}: not valid YAML: {first_line(e)}") from None
    except (ConfigException, OSError, ValueError) as e:
        raise BadInput(f"{label}: {first_line(e)}") from None
    except (TypeError, KeyError, AttributeError) as e:
        # The loader indexes into the parsed document: a wrong shape shows up as one of these.
        raise BadInput(f"{label}: not a kubeconfig ({first_line(e)})") from None


def _status_message(e: ApiException) -> str:
    """The ``message`` of the Status the apiserver sent; never the body itself (it could be anything, and for
    a Secret a proxy could echo data). Falls back to the HTTP reason phrase."""
    try:
        body = json.loads(e.body) if e.body else None
    except (ValueError, TypeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status" and isinstance(body.get("message"), str):
        return one_line(body["message"])
    return one_line(str(e.reason or "")) or "(no message)"


def _retry_delay(e: ApiException, attempt: int) -> float:
    try:
        after = float((e.headers or {}).get("Retry-After", 0))
    except (TypeError, ValueError):
        after = 0.0
    # Honour the server's Retry-After, up to a few seconds: the runner's own deadline matters more.
    return min(max(after, 0.2 * attempt), 3.0)


def _transport_cause(e: BaseException) -> str:
    """A short cause for a failed connection, from the urllib3 exception and what it wraps."""
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for x in chain:
        for arg in (x, *getattr(x, "args", ())):  # urllib3's SSLError carries the ssl error as its argument
            if isinstance(arg, ssl.SSLCertVerificationError):
                return f"TLS certificate verification failed: {arg.verify_message or arg.reason}"
            if isinstance(arg, ssl.SSLError):
                return f"TLS error: {arg.reason or first_line(arg)}"
    for x in chain:
        if isinstance(x, socket.gaierror):
            return f"cannot resolve the host name ({x.strerror or x})"
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, urllib3.exceptions.NewConnectionError):
            continue  # its own text names a connection object; what it wraps is more telling
        if isinstance(x, (urllib3.exceptions.TimeoutError, TimeoutError)):
            return "timed out"
        if isinstance(x, OSError) and x.strerror:
            return x.strerror.lower() if x.strerror[:1].isupper() and x.strerror[1:2].islower() else x.strerror
    return _reason_line(str(e)) or type(e).__name__


def _reason_line(text: Any) -> str:
    # "<urllib3.connection.HTTPSConnection object at 0x7f..>: Failed to ..." -> "Failed to ..."
    lines = [ln for ln in str(text or "").splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", line).strip()


