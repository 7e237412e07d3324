"""Reaching an Elasticsearch or OpenSearch cluster: where it is, who connects, and a client that speaks its REST
API through the official Python client of its distribution.

Elasticsearch is spoken to through ``elasticsearch`` (8.x, which talks to 7.17 and 8.x servers), OpenSearch
through ``opensearch-py`` (the Elasticsearch client refuses servers that are not Elasticsearch). Both are used
only for their HTTP transport (connection pools, retries, TLS, auth): every call is a REST path, the same for
the three servers, so that one code path dumps and loads them all.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from stash_runner.errors import BadInput, DatabaseUnreachable, ToolFailed, one_line

from ..base import Endpoint

log = logging.getLogger("stash_runner")

#: the majors this version dumps and loads, by distribution
SUPPORTED = {"elasticsearch": (7, 8), "opensearch": (1, 2)}
REQUEST_TIMEOUT = 120.0
POOL_SIZE = 16  # connections kept per server: more than the slices and bulk loaders that run at once


@dataclass
class Server:
    """Where the cluster is and who connects; built from an AppBinding's clientConfig and Secret."""

    url: str  # scheme://host:port[/path], never with credentials
    ref: str  # "AppBinding demo/es", for messages
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)
    insecure: bool = False  # clientConfig.insecureSkipTLSVerify: asked for, never the default
    auth_ref: str = ""  # the Secret the credentials come from ("Secret demo/es-auth"), for messages

    @classmethod
    def from_endpoint(cls, ep: Endpoint, user: str = "") -> Server:
        scheme = ep.scheme or ("https" if ep.ca_bundle else "http")
        if scheme not in ("http", "https"):
            raise BadInput(f"{ep.ref}: spec.clientConfig scheme {scheme!r}: Elasticsearch is reached over http "
                           "or https")
        port = f":{ep.port}" if ep.port else ""
        url = f"{scheme}://{_host(ep.host)}{port}{ep.path.rstrip('/')}"
        username = password = None
        if ep.auth is not None:
            # Stash's keys first, then the ones KubeDB's Elasticsearch Secrets hold.
            username = ep.auth.get("username", "ADMIN_USERNAME", required=False)
            password = ep.auth.get("password", "ADMIN_PASSWORD", required=False)
            if username and password is None:
                ep.auth.get("password", "ADMIN_PASSWORD")  # BadInput naming the Secret and the keys
        if user:
            username = user
        return cls(url=url, ref=ep.ref, username=username, password=password, ca_pem=ep.ca_bundle,
                   insecure=ep.insecure_tls, auth_ref=ep.auth.ref if ep.auth is not None else "")

    @property
    def https(self) -> bool:
        return self.url.startswith("https:")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The CA from the AppBinding (else the system's), verified unless insecure TLS was asked for."""
        if not self.https:
            return None
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            try:
                ctx.load_verify_locations(cadata=self.ca_pem.decode("ascii", "replace"))
            except ssl.SSLError as e:
                raise BadInput(f"{self.ref}: spec.clientConfig.caBundle is not a PEM certificate: {e}") from None
        return ctx


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SearchError(ToolFailed):
    """A request the cluster refused or failed: its status and reason, one line."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class SearchClient:
    """One cluster, through its distribution's client. ``request`` returns the parsed JSON body; errors come as
    SearchError (the server answered), DatabaseUnreachable (it did not) or BadInput (wrong credentials)."""

    def __init__(self, server: Server, distribution: str, version: str, raw: Any):
        self.server = server
        self.distribution = distribution
        self.version = version
        self.major = int(version.split(".")[0])
        self._raw = raw

    @property
    def name(self) -> str:
        product = "OpenSearch" if self.distribution == "opensearch" else "Elasticsearch"
        return f"{product} {self.version} at {self.server.url}"

    def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                ndjson: bool = False, ignore: tuple[int, ...] = ()) -> Any:
        """One REST call. ``body``: a dict, or bytes (NDJSON when ``ndjson``). A status in ``ignore`` returns
        None instead of raising (a HEAD of a missing index)."""
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/x-ndjson" if ndjson else "application/json"
        try:
            if self.distribution == "opensearch":
                return self._raw.transport.perform_request(method, path, params=params or {}, body=body,
                                                           headers=headers)
            return self._raw.perform_request(method, path, params=params or None, body=body, headers=headers).body
        except Exception as e:  # noqa: BLE001 - each client's own exception types, turned into ours
            status = _status(e)
            if status in ignore:
                return None
            raise classify(e, f"{method} {path} on {self.name}") from None

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001 - closing a pool that failed is not an error of the run
            log.debug("closing the client failed", exc_info=True)


def _status(e: BaseException) -> int:
    for attr in ("status_code", "status"):
        v = getattr(e, attr, None)
        if isinstance(v, int):
            return v
    meta = getattr(e, "meta", None)
    return getattr(meta, "status", 0) or 0


def _reason(e: BaseException) -> str:
    """The server's error type and reason, from either client's exception."""
    body = getattr(e, "body", None) or getattr(e, "info", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            cause = (err.get("root_cause") or [err])[0]
            kind, reason = cause.get("type", ""), cause.get("reason", "")
            return one_line(f"{kind}: {reason}" if kind else reason)
        if isinstance(err, str):
            return one_line(err)
    return one_line(getattr(e, "message", "") or e) or type(e).__name__


def classify(e: BaseException, what: str) -> Exception:
    """Either client's exception as our error: unreachable (waiting may help), refused credentials (it will not),
    or a failed request with the server's reason."""
    status = _status(e)
    name = type(e).__name__
    if status in (401, 403):
        who = "authentication failed" if status == 401 else "permission denied"
        return BadInput(f"{what}: {who} (HTTP {status}): {_reason(e)}")
    if status:
        return SearchError(f"{what}: HTTP {status}: {_reason(e)}", status, _reason(e))
    text = one_line(e)
    if "SSL" in name or "Tls" in name or "CERTIFICATE_VERIFY_FAILED" in text:
        return DatabaseUnreachable(f"{what}: TLS verification failed (give the cluster's CA as "
                                   f"spec.clientConfig.caBundle): {_short(text)}")
    if "Connection" in name or "Timeout" in name or isinstance(e, OSError):
        return DatabaseUnreachable(f"{what}: unreachable: {_short(text)}")
    return SearchError(f"{what}: {_short(text) or name}")


def _short(text: str) -> str:
    """A transport error without the chain of wrapper names urllib3 repeats."""
    for marker in ("Failed to establish a new connection: ", "[SSL: ", "Connection refused", "Read timed out",
                   "timed out"):
        i = text.find(marker)
        if i >= 0:
            found = text[i + (len(marker) if marker.startswith("Failed") else 0):]
            return found.split(" caused by")[0].split(")")[0][:200].rstrip("'\"")
    return text.split(" caused by")[0][:300]


def connect(server: Server) -> SearchClient:
    """A client for the cluster, its distribution and version read from ``GET /``; one line naming the version
    when this runner does not support it."""
    probe = _opensearch(server)  # no product check: it reads any of the three servers' root
    try:
        info = probe.transport.perform_request("GET", "/", headers={"accept": "application/json"})
    except Exception as e:  # noqa: BLE001 - the client's exceptions, turned into ours
        probe.close()
        if _status(e) == 401:
            who = f"user {server.username!r} of {server.auth_ref}" if server.username else \
                "no credentials (the AppBinding has no spec.secret)"
            raise BadInput(f"{server.ref}: {server.url} refused {who}: authentication failed (HTTP 401)") from None
        raise classify(e, f"GET {server.url}/") from None
    version = info.get("version") or {}
    number = str(version.get("number") or "")
    distribution = "opensearch" if version.get("distribution") == "opensearch" else "elasticsearch"
    product = "OpenSearch" if distribution == "opensearch" else "Elasticsearch"
    major = int(number.split(".")[0]) if number.split(".")[0].isdigit() else 0
    lo, hi = SUPPORTED[distribution]
    if not lo <= major <= hi:
        probe.close()
        raise BadInput(f"{server.ref}: {product} {number or '(no version)'} at {server.url} is not supported "
                       f"(supported: {product} {lo}.x to {hi}.x)")
    if distribution == "opensearch":
        return SearchClient(server, distribution, number, probe)
    probe.close()
    return SearchClient(server, distribution, number, _elasticsearch(server))


class StandardParsed(dict):
    """A response the standard library parsed (see ``fast_loads``): its numbers must be written back by it too."""


#: every digit to 0: one search then finds any run of 19 digits
_DIGITS = bytes.maketrans(b"123456789", b"000000000")


def needs_standard_json(raw: bytes) -> bool:
    """Whether orjson would lose a number of this JSON: an integer of 19 digits or more, which orjson reads as
    a float when it exceeds 64 bits. A long digit run inside a string only sends its page the slower way."""
    return b"0" * 19 in raw.translate(_DIGITS)


def fast_loads(data: bytes | str, fallback: Callable[[Any], Any]) -> Any:
    """JSON parsed by orjson (faster than the standard library: a dump parses every document), or by
    ``fallback`` (the standard library) for what orjson would not keep exactly: big integers
    (``needs_standard_json``) and lone surrogates (orjson refuses them). What the standard library parsed comes
    back as StandardParsed, so that the dump writes its documents back with the standard library too."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if not needs_standard_json(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    parsed = fallback(data)
    return StandardParsed(parsed) if isinstance(parsed, dict) else parsed


def _elasticsearch(server: Server) -> Any:
    from elasticsearch import Elasticsearch, ElasticsearchWarning
    from elasticsearch.serializer import JsonSerializer

    class FastJson(JsonSerializer):
        def json_loads(self, data: bytes) -> Any:
            return fast_loads(data, super().json_loads)

    # The server's deprecation notes (a dot-prefixed index name, ...) would be printed by Python's warnings as
    # source lines on stderr: they are not the run's errors.
    warnings.filterwarnings("ignore", category=ElasticsearchWarning)

    kw: dict[str, Any] = {"request_timeout": REQUEST_TIMEOUT, "max_retries": 3, "retry_on_timeout": True,
                          "connections_per_node": POOL_SIZE, "serializer": FastJson()}
    if server.username is not None:
        kw["basic_auth"] = (server.username, server.password or "")
    if server.https:
        kw["ssl_context"] = server.ssl_context()  # it carries the CA and the verification choice
    return Elasticsearch(server.url, **kw)


def _opensearch(server: Server) -> Any:
    import urllib3
    from opensearchpy import OpenSearch
    from opensearchpy.exceptions import OpenSearchWarning
    from opensearchpy.serializer import JSONSerializer

    class FastJson(JSONSerializer):
        def loads(self, s: str) -> Any:
            return fast_loads(s, super().loads)

    warnings.filterwarnings("ignore", category=OpenSearchWarning)  # as for Elasticsearch, above

    # a connection per slice reader or bulk loader (opensearch-py keeps one by default)
    kw: dict[str, Any] = {"timeout": REQUEST_TIMEOUT, "max_retries": 3, "retry_on_timeout": True,
                          "pool_maxsize": POOL_SIZE, "serializer": FastJson()}
    if server.username is not None:
        kw["http_auth"] = (server.username, server.password or "")
    if server.https:
        kw["use_ssl"] = True
        kw["ssl_context"] = server.ssl_context()  # it carries the CA and the verification choice
        if server.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return OpenSearch([server.url], **kw)


def waitable(e: BaseException) -> str | None:
    """For ``drivers.wait.wait_until``: an unreachable or overloaded cluster is waited for; refused credentials
    and an unsupported server are final (waiting fixes neither)."""
    if isinstance(e, DatabaseUnreachable):
        return str(e)
    if isinstance(e, SearchError) and e.status in (429, 502, 503, 504):
        return str(e)
    return None
