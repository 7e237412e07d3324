"""A small Kubernetes API server for tests: real HTTP, real REST semantics, no cluster needed.

The official ``kubernetes`` Python client talks to it like to a kube-apiserver (plain ``http://``, or ``https://``
with ``KubeAPIServer(tls=(cert_file, key_file))``, as in-cluster config needs)::

    with KubeAPIServer() as server:
        server.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "demo"}})
        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url)))
        api.read_namespaced_secret("s", "demo")

or, for code that loads a kubeconfig, ``server.kubeconfig(path, token=...)``. As a subprocess:
``python -m tests.kubeapi --port 0 --fixtures objs.yaml [--auth auth.yaml] [--kubeconfig PATH]`` prints
``listening on URL`` and serves until SIGTERM.

What is served is data-driven (``RESOURCES``, or ``KubeAPIServer(resources=...)``). Semantics follow kube-apiserver:

- resourceVersion is one global counter (etcd's revision) bumped by every write, delete included; lists carry it in
  ``metadata.resourceVersion``. A write that changes nothing is not stored and keeps the resourceVersion (etcd3
  store's no-op short-circuit).
- POST: 201; 409 AlreadyExists; uid, creationTimestamp, resourceVersion assigned; ``generateName`` honoured; a
  resourceVersion in the body is a 500 "resourceVersion should not be set on objects to be created".
- PUT: ``metadata.resourceVersion`` must equal the stored one, else 409 Conflict. Without it, built-in resources are
  updated unconditionally; custom resources (``AllowUnconditionalUpdate() == false`` in the CR strategy) get 422
  "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update". A differing ``metadata.uid`` is a
  409 precondition failure. PUT of a missing object is 404 (except core events: ``AllowCreateOnUpdate``).
- PATCH: ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json`` (RFC 6902; any failing op,
  a failed ``test`` included, is 422 Invalid "the server rejected our request due to an error in our request", as
  ``applyJSPatch`` does), ``application/strategic-merge-patch+json`` on built-in resources only (applied as a merge
  patch: no list merge keys or ``$patch`` directives), 415 UnsupportedMediaType for it on custom resources, and
  for anything else (server-side apply included). The patched object goes through the same checks as a PUT, so a
  patch carrying a stale ``metadata.resourceVersion`` is a 409.
- Custom resources (``custom=True``): ``metadata.generation`` is 1 on create and bumped when anything outside
  ``metadata`` changes; with a status subresource, create drops ``.status``, writes to the object keep the stored
  ``.status``, and writes to ``/status`` change only ``.status`` (the rest, metadata included, is kept). DELETE
  returns the object; for built-in resources a ``Status``.
- DELETE honours ``preconditions`` (uid, resourceVersion) and ``metadata.finalizers`` (sets deletionTimestamp; the
  update that empties the finalizers deletes the object).
- LIST: ``labelSelector`` (=, ==, !=, in, notin, exists, !exists), ``fieldSelector`` (metadata.name,
  metadata.namespace and per-resource fields; others 400), ``limit``/``continue``; lists across namespaces when
  the path has none. Items of built-in lists carry no apiVersion/kind, as typed lists are served.
- Errors are ``Status`` objects with the apiserver's messages, reasons and details (NotFound, AlreadyExists,
  Conflict, Invalid, Forbidden, Unauthorized, UnsupportedMediaType, MethodNotAllowed, BadRequest).
- Authorization: with tokens configured (``add_token``), each bearer token maps to a user and a set of allowed
  (verb, resource) pairs in RBAC terms (``"patch", "backupsessions/status"``; ``*`` wildcards; a resource may be
  group-qualified, ``events.events.k8s.io``). No token: user ``system:anonymous``; an unknown token: 401. Without
  tokens everything is allowed. Discovery (``/api``, ``/apis``, ``/version``) is always allowed.
- ``events.k8s.io/v1`` events share storage with core ``v1`` events, with the field renames of the real
  conversion (regarding/involvedObject, note/message, ...).

Not implemented: watch (405), server-side apply (415), managedFields, namespace existence checks, admission,
schema validation, ``dryRun`` other than "All" (which skips storing), list snapshots (``continue`` reads the
current state).

Test helpers: ``seed``, ``get``, ``list_objects``, ``mutate`` (a concurrent writer), ``remove``, ``requests`` (log),
``conflict_next`` and ``fail_next`` (fault injection), ``hold_gets`` (forces concurrent readers to collide),
``kubeconfig``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Resource:
    """One served resource. ``custom`` selects the CustomResourceDefinition strategy (see module docstring)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False
    custom: bool = True
    create_on_update: bool = False  # PUT of a missing object creates it
    fields: tuple[str, ...] = ()  # fieldSelector fields besides metadata.name / metadata.namespace
    storage: tuple[str, str] | None = None  # (group, plural) whose stored objects this one serves
    renames: tuple[tuple[str, str], ...] = ()  # (field here, field in storage) at the top level

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """GroupResource.String(): how the apiserver names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> tuple[str, str]:
        return self.storage or (self.group, self.plural)


_CORE_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                      "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                      "reason", "reportingComponent", "source", "type")
# pkg/apis/events/v1 conversion: events.k8s.io/v1 field -> core/v1 field; the others have the same names.
_EVENTS_V1_RENAMES = (("regarding", "involvedObject"), ("note", "message"),
                      ("reportingController", "reportingComponent"), ("deprecatedSource", "source"),
                      ("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp"),
                      ("deprecatedCount", "count"))

RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "secrets", "Secret", custom=False, fields=("type",)),
    Resource("", "v1", "events", "Event", custom=False, create_on_update=True, fields=_CORE_EVENT_FIELDS),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True, custom=False,
             fields=("status.phase",)),
    Resource("events.k8s.io", "v1", "events", "Event", custom=False, create_on_update=True,
             fields=_CORE_EVENT_FIELDS, storage=("", "events"), renames=_EVENTS_V1_RENAMES),
    Resource("stash.appscode.com", "v1alpha1", "repositories", "Repository", has_status=True),
    Resource("stash.appscode.com", "v1beta1", "backupsessions", "BackupSession", has_status=True),
    Resource("stash.appscode.com", "v1beta1", "backupconfigurations", "BackupConfiguration", has_status=True),
    Resource("stash.appscode.com", "v1beta1", "restoresessions", "RestoreSession", has_status=True),
    Resource("stash.appscode.com", "v1beta1", "backupbatches", "BackupBatch", has_status=True),
    Resource("appcatalog.appscode.com", "v1alpha1", "appbindings", "AppBinding"),
)


class ApiError(Exception):
    """A failed request, carried to the handler as the Status object the apiserver would send."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers or {}
        self.body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message}
        if reason:
            self.body["reason"] = reason
        if details is not None:
            self.body["details"] = {k: v for k, v in details.items() if v}  # Go's omitempty
        self.body["code"] = code


def _details(rt: Resource, name: str | None) -> JSON:
    return {"name": name or "", "group": rt.group, "kind": rt.plural}


def not_found(rt: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def path_not_found() -> ApiError:
    # What the apiserver answers for a path no installed API serves.
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def conflict(rt: Resource, name: str, why: str = "the object has been modified; please apply your changes to the "
                                                   "latest version and try again") -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
                    _details(rt, name))


def invalid(rt: Resource, name: str, fld: str, detail: str, value: str | None = None,
            cause_type: str = "FieldValueInvalid") -> ApiError:
    # NewInvalid(GroupKind{rt.group, rt.plural}, ...) as the generic registry builds it.
    kind = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    what = f"Invalid value: {value}: {detail}" if cause_type == "FieldValueInvalid" else f"Required value: {detail}"
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {fld}: {what}',
                    {"name": name, "group": rt.group, "kind": rt.plural,
                     "causes": [{"reason": cause_type, "message": what, "field": fld}]})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(rt: Resource, action: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f'{action} is not supported on resources of kind "{rt.qualified}"',
                    {"group": rt.group, "kind": rt.plural})


def unsupported_media_type(accepted: Iterable[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media "
                                                 "types include: " + ", ".join(accepted))


def patch_failed() -> ApiError:
    # NewGenericServerResponse(422, "", GroupResource{}, "", err, 0, false): the jsonpatch error text is not kept.
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})


_GENERIC = {500: ("InternalError", "Internal error occurred: injected by the test server"),
            503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
            429: ("TooManyRequests", "Too many requests: injected by the test server"),
            504: ("Timeout", "Timeout: injected by the test server")}


# --- JSON documents: RFC 7386 merge patch, RFC 6902 JSON patch, selectors ---------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class PatchError(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]] if path else []


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if token == "-" and adding:
        return len(container)
    if not re.fullmatch(r"-?\d+", token):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    if i < 0:  # evanphx/json-patch (v4, used by the apiserver) accepts negative indices
        i += len(container)
    if i < 0 or i > len(container) or (i == len(container) and not adding):
        raise PatchError(f"array index {token} out of range")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for t in tokens[:-1]:
        if isinstance(node, dict) and t in node:
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(node, t, adding=False)]
        else:
            raise PatchError(f"doc is missing path: {t!r}")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, adding=False)]
    raise PatchError(f"doc is missing key: {last!r}")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, adding=True), value)
    else:
        raise PatchError("add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, adding=False))
    raise PatchError(f"doc is missing key: {last!r}")


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 on a copy of ``doc``; raises PatchError on any failing operation (atomic: doc is untouched)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed operation {op!r}")
        kind, path = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind} without a value")
        value = copy.deepcopy(op.get("value"))
        if kind == "add":
            doc = _add(doc, path, value)
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _replace(doc, path, value) if path else value
        elif kind == "test":
            if not json_equal(_get(doc, path), value):
                raise PatchError(f"testing value {op['path']} failed")
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from"))
            if kind == "move" and path[:len(src)] == src and len(path) > len(src):
                raise PatchError("cannot move a value into one of its children")
            if kind == "move":
                doc, moved = _remove(doc, src)
            else:
                moved = copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, moved)
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc


def _replace(doc: Any, tokens: list[str], value: Any) -> Any:
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, list):
        parent[_index(parent, last, adding=False)] = value
    else:
        parent[last] = value
    return doc


# [!]key, key (=|==|!=) value, key (in|notin) (v1,v2)
_SELECTOR_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*"
                            r"(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s(in|notin)\s*\((.*)\))?\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t for t in terms if t.strip()]


def label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """A labelSelector (equality- and set-based) as a predicate on a labels dict; ValueError if malformed."""
    reqs: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    for term in _split_terms(selector):
        m = _SELECTOR_TERM.match(term)
        if not m or (m.group(1) and (m.group(3) or m.group(5))):
            raise ValueError(f"unable to parse requirement: {term.strip()!r}")
        neg, key, op, val, setop, members = m.groups()
        if op:
            reqs.append((key, "!=" if op == "!=" else "=", frozenset([val])))
        elif setop:
            reqs.append((key, setop, frozenset(v.strip() for v in members.split(",") if v.strip())))
        else:
            reqs.append((key, "!exists" if neg else "exists", frozenset()))

    def match(labels: dict[str, str]) -> bool:
        for key, op, vals in reqs:
            v = labels.get(key)
            # as in k8s.io/apimachinery/pkg/labels: "!=" and "notin" also match objects without the key
            ok = {"exists": key in labels, "!exists": key not in labels, "=": v in vals, "in": v in vals,
                  "!=": v not in vals, "notin": v not in vals}[op]
            if not ok:
                return False
        return True

    return match


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


# --- the server ------------------------------------------------------------------------------------------------

@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    status: int = 0
    user: str = ""
    body: Any = None  # the parsed JSON request body, if any


@dataclass
class _Grant:
    user: str
    allow: set[tuple[str, str]] = field(default_factory=set)


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # names.SimpleNameGenerator's alphabet
_SYSTEM_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds",
                "resourceVersion")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class KubeAPIServer:
    def __init__(self, resources: Iterable[Resource] = RESOURCES, *, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS; the certificate must cover ``host`` (see
        ``tests.servers.self_signed_cert``)."""
        self.resources: dict[tuple[str, str, str], Resource] = {}
        for rt in resources:
            self.resources[(rt.group, rt.version, rt.plural)] = rt
        self.requests: list[RequestRecord] = []
        self._lock = threading.RLock()
        self._store: dict[tuple[str, str, str, str], JSON] = {}  # (group, plural, namespace, name) -> object
        self._rv = 0
        self._grants: dict[str, _Grant] = {}
        self._conflicts: dict[tuple[str, str, str, str], int] = {}
        self._failures: list[list[Any]] = []  # [remaining, code, method, path_contains]
        self._holds: dict[tuple[str, str, str, str], list[Any]] = {}  # key -> [remaining GETs, barrier]
        self._host, self._port = host, port
        self.tls = tls
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> KubeAPIServer:
        self._httpd = _HTTPServer((self._host, self._port), _Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self._httpd.ssl_context = ctx
        self._httpd.api = self
        # a short poll interval: stop() waits for it, and tests start one server each
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()  # idle keep-alive connections would otherwise outlive the server
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def kubeconfig(self, path: str, token: str | None = None, namespace: str = "default") -> str:
        """Write a kubeconfig pointing at this server (JSON, which is YAML); returns ``path``."""
        user: JSON = {"token": token} if token else {"username": "admin"}
        cluster: JSON = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = self.tls[0]  # self-signed: the certificate is its own CA
        cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": "kubeapi", "cluster": cluster}],
               "users": [{"name": "kubeapi-user", "user": user}],
               "contexts": [{"name": "kubeapi", "context": {"cluster": "kubeapi", "user": "kubeapi-user",
                                                            "namespace": namespace}}],
               "current-context": "kubeapi"}
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    # authorization and fault injection

    def add_token(self, token: str, user: str, allow: Iterable[tuple[str, str]] = ()) -> None:
        """Turn authorization on. ``allow``: (verb, resource) pairs, e.g. ("patch", "backupsessions/status"),
        ("get", "secrets"), ("*", "events.events.k8s.io"), ("list", "*")."""
        with self._lock:
            self._grants[token] = _Grant(user, set(allow))

    def allow(self, token: str, *rules: tuple[str, str]) -> None:
        with self._lock:
            self._grants[token].allow.update(rules)

    def conflict_next(self, group: str, plural: str, namespace: str | None, name: str, n: int = 1) -> None:
        """The next ``n`` writes to this object answer 409 Conflict whatever their resourceVersion."""
        with self._lock:
            self._conflicts[(group, plural, namespace or "", name)] = n

    def fail_next(self, n: int = 1, code: int = 500, *, method: str | None = None, path_contains: str = "") -> None:
        """The next ``n`` API requests matching ``method``/``path_contains`` fail with ``code`` (500, 503, 429, 504)."""
        with self._lock:
            self._failures.append([n, code, method, path_contains])

    def hold_gets(self, group: str, plural: str, namespace: str | None, name: str, parties: int, rounds: int = 1,
                  timeout: float = 120.0) -> None:
        """The next ``parties * rounds`` GETs of this object are answered in rounds of ``parties``: each GET reads
        the object, then waits until ``parties`` GETs have read it. Nobody can write between those reads (a writer
        reads first), so all of a round see one resourceVersion, and their writes must conflict: concurrency made
        certain instead of left to timing. A round that does not fill within ``timeout`` lets its GETs go."""
        with self._lock:
            self._holds[(group, plural, namespace or "", name)] = [parties * rounds,
                                                                    threading.Barrier(parties, timeout=timeout)]

    # direct access to the store (no authorization, no subresource rules)

    def resource(self, group: str, version: str, plural: str) -> Resource:
        return self.resources[(group, version, plural)]

    def _resource_for(self, obj: JSON) -> Resource:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for rt in self.resources.values():
            if (rt.group, rt.version, rt.kind) == (group, version, kind):
                return rt
        raise KeyError(f"no resource serves {api_version} {kind}")

    def seed(self, *objs: JSON) -> list[JSON]:
        """Store objects as given (status included), filling in uid, creationTimestamp, resourceVersion (always new)
        and, for custom resources, generation. Overwrites. A namespaced object without namespace goes to
        "default". Returns what is stored, as served."""
        out = []
        with self._lock:
            for obj in objs:
                rt = self._resource_for(obj)
                obj = copy.deepcopy(obj)
                meta = obj.setdefault("metadata", {})
                if rt.namespaced:
                    meta.setdefault("namespace", "default")
                else:
                    meta.pop("namespace", None)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                if rt.custom:
                    meta.setdefault("generation", 1)
                self._normalize(rt, obj)
                out.append(self._commit(rt, obj))
        return out

    def load_fixtures(self, path: str) -> list[JSON]:
        import yaml  # only needed for fixture files

        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        objs: list[JSON] = []
        for d in docs:
            objs.extend(d.get("items", []) if d.get("kind", "").endswith("List") and "items" in d else [d])
        return self.seed(*objs)

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of the stored object as ``group/version`` serves it, or None."""
        rt = self.resource(group, version, plural)
        with self._lock:
            stored = self._store.get(self._key(rt, namespace, name))
            return self._served(rt, stored) if stored is not None else None

    def list_objects(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[JSON]:
        rt = self.resource(group, version, plural)
        with self._lock:
            return [self._served(rt, o) for o in self._select(rt, namespace)]

    def mutate(self, group: str, version: str, plural: str, namespace: str | None, name: str,
               fn: Callable[[JSON], JSON | None]) -> JSON:
        """A concurrent writer: ``fn`` edits (or returns) a copy of the object, which is stored with a new
        resourceVersion, status and all. Returns the stored object."""
        rt = self.resource(group, version, plural)
        with self._lock:
            key = self._key(rt, namespace, name)
            if key not in self._store:
                raise KeyError(key)
            obj = self._served(rt, self._store[key])
            new = fn(obj)
            return self._commit(rt, obj if new is None else new)

    def remove(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> None:
        rt = self.resource(group, version, plural)
        with self._lock:
            del self._store[self._key(rt, namespace, name)]
            self._rv += 1

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # storage internals (callers hold the lock)

    def _held(self, key: tuple[str, str, str, str]) -> threading.Barrier | None:
        hold = self._holds.get(key)
        if hold is None:
            return None
        hold[0] -= 1
        if hold[0] <= 0:
            del self._holds[key]
        return hold[1]

    def _key(self, rt: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        group, plural = rt.storage_key
        return group, plural, (namespace or "") if rt.namespaced else "", name

    def _served(self, rt: Resource, stored: JSON) -> JSON:
        obj = copy.deepcopy(stored)
        for here, there in rt.renames:
            if there in obj:
                obj[here] = obj.pop(there)
        return {"apiVersion": rt.api_version, "kind": rt.kind, **{k: v for k, v in obj.items()
                                                                   if k not in ("apiVersion", "kind")}}

    def _to_storage(self, rt: Resource, obj: JSON) -> JSON:
        obj = copy.deepcopy(obj)
        for here, there in rt.renames:
            if here in obj:
                obj[there] = obj.pop(here)
        if rt.storage:
            home = next((r for r in self.resources.values() if (r.group, r.plural) == rt.storage), rt)
            obj["apiVersion"], obj["kind"] = home.api_version, home.kind
        return obj

    def _commit(self, rt: Resource, obj: JSON) -> JSON:
        """Store ``obj`` (as served by ``rt``) with the next resourceVersion; returns it as served."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        self._store[self._key(rt, meta.get("namespace"), meta["name"])] = self._to_storage(rt, obj)
        return copy.deepcopy(obj)

    def _select(self, rt: Resource, namespace: str | None) -> list[JSON]:
        group, plural = rt.storage_key
        keys = sorted(k for k in self._store if k[:2] == (group, plural) and (namespace is None or k[2] == namespace))
        return [self._store[k] for k in keys]

    @staticmethod
    def _normalize(rt: Resource, obj: JSON) -> None:
        """Defaulting and conversion the real types do on every write."""
        if (rt.group, rt.plural) == ("", "secrets"):
            # Secret.stringData is write-only: merged into data (base64) by the v1 conversion.
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {})
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
            obj.setdefault("type", "Opaque")

    # --- HTTP request handling -----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        record = RequestRecord(method, parts.path, query, ctype)
        if body:
            with contextlib.suppress(ValueError):
                record.body = json.loads(body)
        with self._lock:
            self.requests.append(record)
        try:
            code, out, extra = self._dispatch(method, parts.path, query, headers, ctype, body, record)
        except ApiError as e:
            code, out, extra = e.code, e.body, e.headers
        record.status = code
        return code, out, extra

    def _authenticate(self, headers: dict[str, str]) -> _Grant | None:
        """None means authorization is off; raises 401 for an unknown token."""
        if not self._grants:
            return None
        auth = headers.get("authorization", "")
        if not auth:
            return _Grant("system:anonymous")
        scheme, _, token = auth.partition(" ")
        grant = self._grants.get(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return grant

    @staticmethod
    def _allowed(grant: _Grant, verb: str, rt: Resource, sub: str) -> bool:
        names = {"*", rt.plural} | ({f"{rt.plural}.{rt.group}"} if rt.group else set())
        for v, res in grant.allow:
            if v not in ("*", verb):
                continue
            if res == "*":
                return True
            base, _, rule_sub = res.partition("/")
            if base in names and (rule_sub == sub or (rule_sub == "*" and bool(sub))):
                return True
        return False

    def _forbid(self, grant: _Grant, verb: str, rt: Resource, sub: str, namespace: str | None,
                name: str | None) -> ApiError:
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        why = f'User "{grant.user}" cannot {verb} resource "{resource}" in API group "{rt.group}" {scope}'
        message = f'{rt.qualified} "{name}" is forbidden: {why}' if name else f"{rt.qualified} is forbidden: {why}"
        return ApiError(403, "Forbidden", message, _details(rt, name))

    def _injected_failure(self, method: str, path: str) -> ApiError | None:
        for f in self._failures:
            remaining, code, only_method, contains = f
            if remaining > 0 and (only_method is None or only_method == method) and contains in path:
                f[0] -= 1
                self._failures = [x for x in self._failures if x[0] > 0]
                reason, message = _GENERIC.get(code, ("", f"injected failure {code}"))
                headers = {"Retry-After": "1"} if code in (429, 503) else {}
                return ApiError(code, reason, message, None, headers)
        return None

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], ctype: str,
                  body: bytes, record: RequestRecord) -> tuple[int, Any, dict[str, str]]:
        grant = self._authenticate(headers)
        record.user = grant.user if grant else ""
        segs = [s for s in path.split("/") if s]
        if method == "GET" and (discovery := self._discovery(segs)) is not None:
            return 200, discovery, {}
        if not segs or segs[0] not in ("api", "apis"):
            raise path_not_found()
        if segs[0] == "api":
            group, rest = "", segs[1:]
        else:
            group, rest = (segs[1] if len(segs) > 1 else ""), segs[2:]
        if not rest:
            raise path_not_found()
        version, rest = rest[0], rest[1:]
        namespace: str | None = None
        # namespaces/{ns}/{resource}..., but namespaces/{name}/status is the namespace's own subresource
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise path_not_found()
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else "")
        rt = self.resources.get((group, version, plural))
        if rt is None or (namespace is not None and not rt.namespaced):
            raise path_not_found()
        if sub and (sub != "status" or not rt.has_status):
            raise path_not_found()
        if rt.namespaced and namespace is None and name is not None:
            raise path_not_found()

        watch = query.get("watch", [""])[0] in ("true", "1")
        verb = {("GET", True): "get", ("GET", False): "watch" if watch else "list", ("POST", False): "create",
                ("PUT", True): "update", ("PATCH", True): "patch", ("DELETE", True): "delete",
                ("DELETE", False): "deletecollection"}.get((method, name is not None))
        if verb is None or (sub and verb not in ("get", "update", "patch")):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource",
                           {})
        if rt.namespaced and namespace is None and verb not in ("list", "watch"):
            raise path_not_found()
        if grant is not None and not self._allowed(grant, verb, rt, sub):
            raise self._forbid(grant, verb, rt, sub, namespace, name)
        if verb == "watch":
            raise method_not_allowed(rt, "watch")

        payload: Any = None
        if body and verb in ("create", "update", "patch", "delete", "deletecollection"):
            if ctype == APPLY_PATCH:
                pass  # rejected below with the media types that are accepted
            else:
                try:
                    payload = json.loads(body)
                except ValueError as e:
                    raise bad_request(f"error decoding request body: {e}") from None
        dry_run = "All" in query.get("dryRun", [])

        with self._lock:
            if (failure := self._injected_failure(method, path)) is not None:
                raise failure
            if verb == "get":
                key = self._key(rt, namespace, name or "")
                stored = self._store.get(key)
                if stored is None:
                    raise not_found(rt, name or "")
                served = self._served(rt, stored)
                barrier = self._held(key)
        if verb == "get":
            if barrier is not None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()  # outside the lock: the other readers of this round must get in
            return 200, served, {}
        with self._lock:
            if verb == "list":
                return 200, self._list(rt, namespace, query), {}
            if verb == "create":
                return 201, self._create(rt, namespace, payload, dry_run), {}
            assert name is not None or verb == "deletecollection"
            if verb == "deletecollection":
                return 200, self._delete_collection(rt, namespace, query, payload, dry_run), {}
            assert name is not None
            if verb == "delete":
                return 200, self._delete(rt, namespace, name, payload, dry_run), {}
            if verb == "update":
                return self._put(rt, namespace, name, sub, payload, dry_run)
            return 200, self._patch(rt, namespace, name, sub, ctype, payload, dry_run), {}

    # verbs (the lock is held)

    def _list(self, rt: Resource, namespace: str | None, query: dict[str, list[str]]) -> JSON:
        items = [self._served(rt, o) for o in self._select(rt, namespace)]
        if sel := query.get("labelSelector", [""])[0]:
            try:
                match = label_matcher(sel)
            except ValueError as e:
                raise bad_request(str(e)) from None
            items = [o for o in items if match(o["metadata"].get("labels") or {})]
        if sel := query.get("fieldSelector", [""])[0]:
            items = [o for o in items if self._field_match(rt, sel, self._to_storage(rt, o))]
        start = ""
        if token := query.get("continue", [""])[0]:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None
            items = [o for o in items if self._list_key(o) > start]
        meta: JSON = {"resourceVersion": str(self._rv)}
        limit = int(query.get("limit", ["0"])[0] or 0)
        if 0 < limit < len(items):
            rest = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": self._rv, "start": self._list_key(items[-1])}).encode()).decode()
            meta["remainingItemCount"] = rest
        if not rt.custom:
            # typed lists serialize their items without TypeMeta
            items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    @staticmethod
    def _list_key(obj: JSON) -> str:
        return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"

    @staticmethod
    def _field_match(rt: Resource, selector: str, stored: JSON) -> bool:
        allowed = {"metadata.name", "metadata.namespace", *rt.fields}
        for term in _split_terms(selector):
            m = re.fullmatch(r"\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*", term)
            if not m:
                raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
            fld, op, want = m.groups()
            if fld not in allowed:
                raise bad_request(f'field label not supported: {fld}')
            have = _dig(stored, fld)
            have = "" if have is None else str(have)
            if (have == want) != (op != "!="):
                return False
        return True

    def _check_body(self, rt: Resource, obj: Any, namespace: str | None) -> JSON:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request must be a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API version "
                              f"({rt.api_version})")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _create(self, rt: Resource, namespace: str | None, payload: Any, dry_run: bool) -> JSON:
        obj = self._check_body(rt, payload, namespace)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(rt, "", "metadata.name", "name or generateName is required",
                              cause_type="FieldValueRequired")
            for _ in range(100):
                meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_SUFFIX_CHARS, k=5))
                if self._key(rt, namespace, meta["name"]) not in self._store:
                    break
        name = meta["name"]
        if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise invalid(rt, str(name), "metadata.name", "a lowercase RFC 1123 subdomain must consist of lower case "
                          "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                          value=json.dumps(name))
        if self._key(rt, namespace, name) in self._store:
            raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))
        for k in _SYSTEM_META:
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if rt.custom:
            meta["generation"] = 1
            if rt.has_status:
                obj.pop("status", None)  # create cannot set status
        self._normalize(rt, obj)
        if dry_run:
            return obj
        return self._commit(rt, obj)

    def _take_conflict(self, rt: Resource, namespace: str | None, name: str) -> None:
        key = self._key(rt, namespace, name)
        if self._conflicts.get(key, 0) > 0:
            self._conflicts[key] -= 1
            raise conflict(rt, name)

    def _current(self, rt: Resource, namespace: str | None, name: str) -> JSON | None:
        stored = self._store.get(self._key(rt, namespace, name))
        return self._served(rt, stored) if stored is not None else None

    def _put(self, rt: Resource, namespace: str | None, name: str, sub: str, payload: Any,
             dry_run: bool) -> tuple[int, JSON, dict[str, str]]:
        new = self._check_body(rt, payload, namespace)
        if new["metadata"].get("name") != name:
            raise bad_request(f"the name of the object ({new['metadata'].get('name')}) does not match the name on "
                              f"the URL ({name})")
        cur = self._current(rt, namespace, name)
        if cur is None:
            if rt.create_on_update and not sub:
                new["metadata"].pop("resourceVersion", None)
                return 201, self._create(rt, namespace, new, dry_run), {}
            raise not_found(rt, name)
        self._take_conflict(rt, namespace, name)
        return 200, self._update(rt, cur, new, sub, dry_run), {}

    def _patch(self, rt: Resource, namespace: str | None, name: str, sub: str, ctype: str, payload: Any,
               dry_run: bool) -> JSON:
        accepted = [JSON_PATCH, MERGE_PATCH] + ([] if rt.custom else [STRATEGIC_MERGE_PATCH]) + [APPLY_PATCH]
        if ctype not in accepted or ctype == APPLY_PATCH:
            raise unsupported_media_type(accepted)
        cur = self._current(rt, namespace, name)
        if cur is None:
            raise not_found(rt, name)
        self._take_conflict(rt, namespace, name)
        if ctype == JSON_PATCH:
            if not isinstance(payload, list):
                raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                new = json_patch(cur, payload)
            except PatchError:
                raise patch_failed() from None
        else:
            if not isinstance(payload, dict):
                raise bad_request("Invalid JSON Patch")
            new = merge_patch(cur, payload)
        if not isinstance(new, dict):
            raise patch_failed()
        meta = new.get("metadata") if isinstance(new.get("metadata"), dict) else {}
        if meta.get("name") != name or (rt.namespaced and meta.get("namespace") != namespace):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                              f"({name})")
        return self._update(rt, cur, self._check_body(rt, new, namespace), sub, dry_run)

    def _update(self, rt: Resource, cur: JSON, new: JSON, sub: str, dry_run: bool) -> JSON:
        """Store.Update: preconditions, then the strategy's PrepareForUpdate, then the no-op check."""
        name, cur_meta, new_meta = cur["metadata"]["name"], cur["metadata"], new["metadata"]
        rv = new_meta.get("resourceVersion")
        if not rv:
            if rt.custom:  # AllowUnconditionalUpdate() is false for custom resources
                raise invalid(rt, name, "metadata.resourceVersion", "must be specified for an update", value="0x0")
        elif rv != cur_meta["resourceVersion"]:
            raise conflict(rt, name)
        if new_meta.get("uid") and new_meta["uid"] != cur_meta["uid"]:
            raise conflict(rt, name, f"Precondition failed: UID in precondition: {new_meta['uid']}, UID in object "
                                     f"meta: {cur_meta['uid']}")
        if sub == "status":
            obj = copy.deepcopy(cur)  # the status strategy keeps everything but .status
            if "status" in new:
                obj["status"] = new["status"]
            else:
                obj.pop("status", None)
        else:
            obj = new
            if rt.has_status:  # and the main resource's strategy keeps the stored .status
                if "status" in cur:
                    obj["status"] = copy.deepcopy(cur["status"])
                else:
                    obj.pop("status", None)
            for k in _SYSTEM_META:
                if k in cur_meta:
                    obj["metadata"][k] = cur_meta[k]
                else:
                    obj["metadata"].pop(k, None)
            self._normalize(rt, obj)
            if rt.custom and {k: v for k, v in obj.items() if k != "metadata"} != \
                    {k: v for k, v in cur.items() if k != "metadata"}:
                obj["metadata"]["generation"] = cur_meta.get("generation", 0) + 1
        obj["metadata"]["resourceVersion"] = cur_meta["resourceVersion"]
        if obj == cur:
            return cur  # a no-op update is not written and keeps its resourceVersion
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            # the last finalizer is gone: the update completes the deletion
            if dry_run:
                return obj
            self._rv += 1
            del self._store[self._key(rt, obj["metadata"].get("namespace"), name)]
            obj["metadata"]["resourceVersion"] = str(self._rv)
            return obj
        if dry_run:
            return obj
        return self._commit(rt, obj)

    def _delete(self, rt: Resource, namespace: str | None, name: str, options: Any, dry_run: bool) -> JSON:
        cur = self._current(rt, namespace, name)
        if cur is None:
            raise not_found(rt, name)
        self._take_conflict(rt, namespace, name)
        pre = options.get("preconditions") if isinstance(options, dict) else None
        if isinstance(pre, dict):
            if pre.get("uid") and pre["uid"] != cur["metadata"]["uid"]:
                raise conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                         f"meta: {cur['metadata']['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]:
                raise conflict(rt, name, f"Precondition failed: ResourceVersion in precondition: "
                                         f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                         f"{cur['metadata']['resourceVersion']}")
        if cur["metadata"].get("finalizers"):
            # graceful: mark for deletion; the object goes when its finalizers are removed
            if cur["metadata"].get("deletionTimestamp") or dry_run:
                return cur
            cur["metadata"]["deletionTimestamp"] = _now()
            cur["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rt, cur)
        if not dry_run:
            self._rv += 1
            del self._store[self._key(rt, namespace, name)]
            cur["metadata"]["resourceVersion"] = str(self._rv)
        if rt.custom:  # ReturnDeletedObject
            return cur
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {k: v for k, v in _details(rt, name).items() if v} | {"uid": cur["metadata"]["uid"]}}

    def _delete_collection(self, rt: Resource, namespace: str | None, query: dict[str, list[str]], options: Any,
                           dry_run: bool) -> JSON:
        listed = self._list(rt, namespace, {k: v for k, v in query.items() if k not in ("limit", "continue")})
        for item in listed["items"]:
            meta = item["metadata"]
            self._delete(rt, meta.get("namespace"), meta["name"], options, dry_run)
        return listed

    def _discovery(self, segs: list[str]) -> JSON | None:
        """/version, /api, /api/v1, /apis, /apis/{group}, /apis/{group}/{version}; None if not a discovery path."""
        if segs == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-kubeapi-test", "platform": "linux/amd64"}
        if segs == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}
        groups: dict[str, list[str]] = {}
        for rt in self.resources.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)

        def group_doc(g: str) -> JSON:
            versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
            return {"name": g, "versions": versions, "preferredVersion": versions[-1]}

        if segs == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups]}
        if len(segs) == 2 and segs[0] == "apis" and segs[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(segs[1])}
        if segs == ["api", "v1"]:
            gv = ("", "v1")
        elif len(segs) == 3 and segs[0] == "apis":
            gv = (segs[1], segs[2])
        else:
            return None
        rts = [rt for rt in self.resources.values() if (rt.group, rt.version) == gv]
        if not rts:
            return None
        resources: list[JSON] = []
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update"]
        for rt in rts:
            resources.append({"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": verbs})
            if rt.has_status:
                resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "/".join(p for p in gv if p),
                "resources": resources}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    api: KubeAPIServer
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake waits for the connection's own thread (finish_request): a client that connects and
            # never speaks TLS must not stall the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(10)
            request.do_handshake()  # a failed handshake (a client that distrusts the CA) ends here: handle_error
            request.settimeout(None)
        super().finish_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up is routine here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's urllib3 pool expects
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            code, out, extra = self.server.api.handle(self.command, self.path, headers, body)
        except Exception as e:  # a bug here should reach the test as a 500, not a hung connection
            code, out, extra = 500, ApiError(500, "InternalError", f"Internal error occurred: {e!r}").body, {}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# --- subprocess entry point --------------------------------------------------------------------------------------

def _load_auth(server: KubeAPIServer, path: str) -> None:
    """``tokens: {TOKEN: {user: NAME, allow: ["get secrets", "patch backupsessions/status", ...]}}``"""
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    for token, spec in (doc.get("tokens") or {}).items():
        rules = [tuple(r.split(None, 1)) for r in spec.get("allow", [])]
        server.add_token(str(token), spec["user"], [(v, r) for v, r in rules])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.kubeapi", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fixtures", action="append", default=[], help="YAML file of objects to seed (repeatable)")
    p.add_argument("--auth", help="YAML file of tokens and their allowed (verb resource) rules")
    p.add_argument("--kubeconfig", help="write a kubeconfig pointing at the server here")
    p.add_argument("--token", help="token to put in the kubeconfig")
    args = p.parse_args(argv)

    server = KubeAPIServer(host=args.host, port=args.port)
    for path in args.fixtures:
        server.load_fixtures(path)
    if args.auth:
        _load_auth(server, args.auth)
    server.start()
    if args.kubeconfig:
        server.kubeconfig(args.kubeconfig, token=args.token)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on {server.url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

