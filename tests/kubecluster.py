"""A real Kubernetes control plane for the cluster tests: etcd and kube-apiserver on loopback ports.

Both are built from the Go module proxy by ``scripts/install-kube-peers.sh`` into a cache outside the clone. One
``ControlPlane`` runs per test session (ready in ~3 s); each test gets a ``Namespace`` of its own. The server is
the real one, so every answer the runner gets — 409s, 403s, the pruning of fields a CRD does not declare — is the
API's own behaviour:

- TLS with a throw-away CA made here (openssl); the runner is given the CA in its kubeconfig, as in a cluster.
- ``--authorization-mode=RBAC`` and static tokens: ``harness`` (this module's own writes, user ``test-harness``)
  and ``admin`` (the runner's default, user ``admin``), both in ``system:masters``. Tests that check RBAC create a
  ServiceAccount, apply Roles and RoleBindings, and get the account a token through the TokenRequest API, as a
  Job's pod would get one.
- The CRDs of ``deploy/crds/`` are applied at start.
- An audit log (level ``Request``, Secrets at ``Metadata``) is the record of what the runner asked: ``requests()``
  reads it, for the tests that count writes or conflicts.

Conflicts and simultaneous readers are made the honest way, by ``Interposer``: a TLS pass-through between the
runner and the server that can hold the server's answers to a GET until several readers have them, or write the
object (through the server) after a read was answered and before the reader gets the answer. Every status code the
runner sees still comes from the server.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import itertools
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from .pgcluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("STASH_RUNNER_CACHE") or os.path.expanduser("~/.cache/stash-runner")
ETCD = os.path.join(CACHE, "etcd-v3.6.16", "etcd")
KUBE_APISERVER = os.path.join(CACHE, "kube-apiserver-v1.37.2", "kube-apiserver")
CRDS = os.path.join(ROOT, "deploy", "crds")

HARNESS_USER = "test-harness"
JSON = dict[str, Any]

# kind -> (group, version, plural, namespaced), for the kinds the tests create.
KINDS: dict[str, tuple[str, str, str, bool]] = {
    "Namespace": ("", "v1", "namespaces", False),
    "Secret": ("", "v1", "secrets", True),
    "ServiceAccount": ("", "v1", "serviceaccounts", True),
    "ConfigMap": ("", "v1", "configmaps", True),
    "Event": ("", "v1", "events", True),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False),
    "CustomResourceDefinition": ("apiextensions.k8s.io", "v1", "customresourcedefinitions", False),
    "AppBinding": ("appcatalog.appscode.com", "v1alpha1", "appbindings", True),
    "Repository": ("stash.appscode.com", "v1alpha1", "repositories", True),
    "BackupConfiguration": ("stash.appscode.com", "v1beta1", "backupconfigurations", True),
    "BackupBatch": ("stash.appscode.com", "v1beta1", "backupbatches", True),
    "BackupSession": ("stash.appscode.com", "v1beta1", "backupsessions", True),
    "RestoreSession": ("stash.appscode.com", "v1beta1", "restoresessions", True),
    "RestoreBatch": ("stash.appscode.com", "v1beta1", "restorebatches", True),
}
_HAS_STATUS = {"Repository", "BackupConfiguration", "BackupBatch", "BackupSession", "RestoreSession", "RestoreBatch"}
_METHODS = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
            "delete": "DELETE", "deletecollection": "DELETE"}

_AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Secrets' bodies stay out of the log.
  - level: Metadata
    resources: [{group: "", resources: ["secrets"]}]
  - level: None
    nonResourceURLs: ["/readyz*", "/livez*", "/healthz*", "/version", "/api", "/apis*", "/openapi*"]
  - level: Request
"""


def path_of(group: str, version: str, plural: str, namespace: str | None, name: str | None = None,
            sub: str = "") -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if sub:
        base += f"/{sub}"
    return base


class ApiStatus(Exception):
    """The server answered an error; ``code`` and the ``Status`` body."""

    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.body = body
        super().__init__(f"{code}: {body.get('message') if isinstance(body, dict) else body}")


@dataclass
class Pki:
    """A throw-away CA, the server's certificate for 127.0.0.1 and the service-account signing key."""

    ca: str
    ca_key: str
    cert: str
    key: str
    sa_key: str
    sa_pub: str

    @classmethod
    def make(cls, d: str) -> Pki:
        def p(name: str) -> str:
            return os.path.join(d, name)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out", p("ca.crt"),
            "-days", "3", "-subj", "/CN=stash-runner test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        with open(p("server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                    "authorityKeyIdentifier=keyid\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("server.key"), "-out", p("server.csr"),
            "-subj", "/CN=kube-apiserver")
        run("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"), "-CAcreateserial",
            "-out", p("server.crt"), "-days", "3", "-extfile", p("server.ext"))
        run("genrsa", "-out", p("sa.key"), "2048")
        run("rsa", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub"))
        return cls(p("ca.crt"), p("ca.key"), p("server.crt"), p("server.key"), p("sa.key"), p("sa.pub"))


@dataclass
class AuditRecord:
    """One request, as the server's audit log recorded it."""

    verb: str
    method: str
    path: str
    query: str
    status: int
    user: str
    namespace: str | None
    resource: str | None
    subresource: str | None
    name: str | None
    body: Any


class ControlPlane:
    """etcd + kube-apiserver, started on free loopback ports and stopped by PID."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="stash-runner-kube-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.harness_token = uuid.uuid4().hex
        self.admin_token = uuid.uuid4().hex
        self.port = 0
        self._procs: list[subprocess.Popen] = []
        self._ctx: ssl.SSLContext | None = None
        self._audit_lock = threading.Lock()
        self._audit_offset = 0
        self._audit: list[AuditRecord] = []
        self._names = itertools.count(1)
        self.pki: Pki | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        for binary in (ETCD, KUBE_APISERVER):
            if not os.access(binary, os.X_OK):
                raise RuntimeError(f"{binary} is missing: run scripts/install-kube-peers.sh (make test does)")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.pki = pki = Pki.make(self.dir)
        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn("etcd", [ETCD, "--name=test", f"--data-dir={self.dir}/etcd", "--unsafe-no-fsync",
                             f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                             f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                             f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                             f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                             f"--initial-cluster=test=http://127.0.0.1:{etcd_peer}", "--log-level=error"])
        tokens = os.path.join(self.dir, "tokens.csv")
        with open(tokens, "w") as f:
            f.write(f'{self.harness_token},{HARNESS_USER},uid-harness,"system:masters"\n'
                    f'{self.admin_token},admin,uid-admin,"system:masters"\n')
        policy = os.path.join(self.dir, "audit-policy.yaml")
        with open(policy, "w") as f:
            f.write(_AUDIT_POLICY)
        self.audit_log = os.path.join(self.dir, "audit.log")
        self.port = free_port()
        self._spawn("kube-apiserver", [
            KUBE_APISERVER, f"--etcd-servers=http://127.0.0.1:{etcd_client}", "--bind-address=127.0.0.1",
            f"--secure-port={self.port}", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.cert}", f"--tls-private-key-file={pki.key}", f"--client-ca-file={pki.ca}",
            f"--token-auth-file={tokens}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}", "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount", f"--cert-dir={self.dir}/certs",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking",
            "--audit-log-format=json", "--v=0"])
        self._wait_ready(60)
        self.apply_crds()

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(os.path.join(self.dir, f"{name}.log"), "wb") as log:
            self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: {self._log_tail()}")
            try:
                code, body = self.request("GET", "/readyz")
                if code == 200:
                    return
                last = f"{code} {body}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready within {timeout:.0f}s ({last}): {self._log_tail()}")

    def _log_tail(self) -> str:
        out = []
        for name in ("etcd", "kube-apiserver"):
            with contextlib.suppress(OSError), open(os.path.join(self.dir, f"{name}.log"), "rb") as f:
                out.append(f"{name}: " + f.read()[-1500:].decode(errors="replace"))
        return "\n".join(out)

    def stop(self) -> None:
        for p in reversed(self._procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- plain REST, as the harness -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        if self._ctx is None:
            assert self.pki is not None
            self._ctx = ssl.create_default_context(cafile=self.pki.ca)
        return self._ctx

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(), timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token or self.harness_token}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        code, parsed = self.request(method, path, body, **kw)
        if code >= 300:
            raise ApiStatus(code, parsed)
        return parsed

    def create(self, obj: JSON, namespace: str | None = None) -> JSON:
        """Create ``obj`` (and write its ``status`` through the status subresource, as a controller would)."""
        kind = obj["kind"]
        group, version, plural, namespaced = KINDS[kind]
        obj = json.loads(json.dumps(obj))
        ns = (obj["metadata"].get("namespace") or namespace) if namespaced else None
        if namespaced:
            obj["metadata"]["namespace"] = ns
        status = obj.pop("status", None) if kind in _HAS_STATUS else None
        created = self.call("POST", path_of(group, version, plural, ns), obj)
        if status:
            created["status"] = status
            created = self.call("PUT", path_of(group, version, plural, ns, created["metadata"]["name"], "status"),
                                created)
        return created

    def apply_crds(self) -> None:
        names = []
        for path in sorted(glob.glob(os.path.join(CRDS, "*.yaml"))):
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    if doc:
                        code, body = self.request("POST", path_of(*KINDS["CustomResourceDefinition"][:3], None), doc)
                        if code not in (201, 409):
                            raise RuntimeError(f"{os.path.basename(path)}: {code} {body}")
                        names.append(doc["metadata"]["name"])
        crd = KINDS["CustomResourceDefinition"]
        deadline = time.monotonic() + 30
        for name in names:
            while True:
                got = self.call("GET", path_of(crd[0], crd[1], crd[2], None, name))
                conds = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
                if conds.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {name} not Established within 30s: {conds}")
                time.sleep(0.1)

    def namespace(self) -> Namespace:
        name = f"t{next(self._names)}-{uuid.uuid4().hex[:6]}"
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return Namespace(self, name)

    # --- the audit log ---------------------------------------------------------------------------------------
    def audit(self) -> list[AuditRecord]:
        """Every request answered so far. A marker request is made and waited for, so that nothing answered
        before this call is missing from the log."""
        marker = f"audit-marker-{uuid.uuid4().hex}"
        self.request("GET", path_of("", "v1", "configmaps", "default", marker))
        deadline = time.monotonic() + 10
        with self._audit_lock:
            while True:
                self._read_audit()
                if any(r.name == marker for r in self._audit[-50:]):
                    return [r for r in self._audit if not (r.name or "").startswith("audit-marker-")]
                if time.monotonic() > deadline:
                    raise RuntimeError("the audit log did not record a request within 10s")
                time.sleep(0.02)

    def _read_audit(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.audit_log, "rb") as f:
            f.seek(self._audit_offset)
            data = f.read()
        if not data:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._audit_offset += end
        for line in data[:end].splitlines():
            ev = json.loads(line)
            ref = ev.get("objectRef") or {}
            uri = ev.get("requestURI", "")
            path, _, query = uri.partition("?")
            self._audit.append(AuditRecord(
                verb=ev.get("verb", ""), method=_METHODS.get(ev.get("verb", ""), ev.get("verb", "").upper()),
                path=path, query=query, status=(ev.get("responseStatus") or {}).get("code", 0),
                user=(ev.get("user") or {}).get("username", ""), namespace=ref.get("namespace"),
                resource=ref.get("resource"), subresource=ref.get("subresource"), name=ref.get("name"),
                body=ev.get("requestObject")))


class Namespace:
    """A test's namespace on the shared control plane, with the helpers the tests use."""

    def __init__(self, plane: ControlPlane, name: str) -> None:
        self.plane = plane
        self.name = name

    @property
    def url(self) -> str:
        return self.plane.url

    def kubeconfig(self, path: str, token: str | None = None, server: str | None = None) -> str:
        """A kubeconfig for this namespace: the CA, the server, and ``token`` (default: the admin's)."""
        assert self.plane.pki is not None
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": {"server": server or self.plane.url,
                                                         "certificate-authority": self.plane.pki.ca}}],
               "users": [{"name": "test", "user": {"token": token or self.plane.admin_token}}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                         "namespace": self.name}}]}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        os.chmod(path, 0o600)
        return path

    # --- objects ---------------------------------------------------------------------------------------------
    def seed(self, *objs: JSON) -> list[JSON]:
        return [self.plane.create(o, self.name) for o in objs]

    def load_fixtures(self, path: str) -> list[JSON]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        items = [i for d in docs for i in (d["items"] if d.get("kind") == "List" else [d])]
        return self.seed(*[self._here(i) for i in items])

    def _here(self, obj: JSON) -> JSON:
        obj = json.loads(json.dumps(obj))
        if KINDS[obj["kind"]][3]:
            obj["metadata"]["namespace"] = self.name
        return obj

    def get(self, group: str, version: str, plural: str, name: str) -> JSON | None:
        code, body = self.plane.request("GET", path_of(group, version, plural, self.name, name))
        if code == 404:
            return None
        if code >= 300:
            raise ApiStatus(code, body)
        return body

    def list_objects(self, group: str, version: str, plural: str) -> list[JSON]:
        return self.plane.call("GET", path_of(group, version, plural, self.name))["items"]

    def put(self, obj: JSON, sub: str = "") -> JSON:
        group, version, plural, _ = KINDS[obj["kind"]]
        return self.plane.call("PUT", path_of(group, version, plural, self.name, obj["metadata"]["name"], sub), obj)

    def touch(self, group: str, version: str, plural: str, name: str) -> JSON:
        """A write by someone else: a new annotation, so the object's resourceVersion moves on."""
        patch = {"metadata": {"annotations": {"test.stash-runner/touched": uuid.uuid4().hex}}}
        return self.plane.call("PATCH", path_of(group, version, plural, self.name, name), patch,
                               content_type="application/merge-patch+json")

    def events(self) -> list[JSON]:
        return self.list_objects("", "v1", "events")

    def requests(self, *, user: str | None = None) -> list[AuditRecord]:
        """What was asked of the server in this namespace, by anyone but the test harness (or by ``user``)."""
        return [r for r in self.plane.audit() if r.namespace == self.name and
                (r.user == user if user else r.user != HARNESS_USER)]

    # --- RBAC --------------------------------------------------------------------------------------------------
    def service_account_token(self, name: str, *rbac: JSON) -> str:
        """Create ServiceAccount ``name`` and the Roles/RoleBindings ``rbac`` (their namespace becomes this one),
        and get the account a token through the TokenRequest API, as the kubelet does for a pod."""
        self.seed({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        for obj in rbac:
            obj = self._here(obj)
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = self.name
            self.plane.create(obj, self.name)
        req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}
        got = self.plane.call("POST", path_of("", "v1", "serviceaccounts", self.name, name, "token"), req)
        return got["status"]["token"]


# --- the interposer --------------------------------------------------------------------------------------------
class _Rule:
    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.count = count


class _Hold(_Rule):
    """Answers to GETs of ``path`` are kept until ``parties`` readers have theirs, ``rounds`` times."""

    def __init__(self, path: str, parties: int, rounds: int, timeout: float) -> None:
        super().__init__(path, parties * rounds)
        self.barrier = threading.Barrier(parties, timeout=timeout)


class _WriteAfterRead(_Rule):
    """After the server answered a GET of ``path`` and before the reader gets the answer, ``write`` runs."""

    def __init__(self, path: str, count: int, write: Callable[[], Any]) -> None:
        super().__init__(path, count)
        self.write = write


class Interposer:
    """A TLS pass-through in front of the control plane (its certificate is from the same CA). Requests and
    answers go through unchanged; only their timing is arranged, by the rules ``hold_gets`` and
    ``write_after_read``."""

    def __init__(self, plane: ControlPlane) -> None:
        assert plane.pki is not None
        self.plane = plane
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.held = 0
        self.writes = 0
        interposer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=plane.ssl_context(), timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection", "keep-alive", "transfer-encoding")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    resp_headers = [(k, v) for k, v in resp.getheaders()
                                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                                         "content-length")]
                finally:
                    conn.close()
                if self.command == "GET":
                    interposer._after_get(self.path.partition("?")[0])
                self.send_response(resp.status)
                for k, v in resp_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(plane.pki.cert, plane.pki.key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def hold_gets(self, path: str, parties: int, rounds: int = 1, timeout: float = 120) -> None:
        self._rules.append(_Hold(path, parties, rounds, timeout))

    def write_after_read(self, path: str, count: int, write: Callable[[], Any]) -> None:
        self._rules.append(_WriteAfterRead(path, count, write))

    def _take(self, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.path == path and rule.count > 0:
                    rule.count -= 1
                    return rule
        return None

    def _after_get(self, path: str) -> None:
        rule = self._take(path)
        if isinstance(rule, _Hold):
            with contextlib.suppress(threading.BrokenBarrierError):
                rule.barrier.wait()
            with self._lock:
                self.held += 1
        elif isinstance(rule, _WriteAfterRead):
            rule.write()
            with self._lock:
                self.writes += 1

    def __enter__(self) -> Interposer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

