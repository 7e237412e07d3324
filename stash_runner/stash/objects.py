"""The Kubernetes objects the runner reads, as typed views, and where they come from.

Sources implement ``get(kind, namespace, name) -> dict``. ``FileSource`` reads YAML/JSON files and
directories (multi-document, ``kind: List``), as ``kubectl get -o yaml`` writes them; the cluster
source (Kubernetes API) plugs in behind the same call.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from backends.spec import PROVIDERS, BackendSpec
from stash_runner.errors import BadInput

#: the largest --objects file read: a namespace's `kubectl get -o yaml` is far below it, and /dev/zero or a
#: mistaken disk image must not be read into memory
MAX_FILE_BYTES = 64 * 1024 * 1024
#: the largest key file of a --secret-dir read (Kubernetes caps a whole Secret at 1 MiB)
MAX_SECRET_BYTES = 1024 * 1024
#: maxConnections / --max-connections: each connection may hold a 16 MiB pack in flight
MAX_CONNECTIONS = 128

# Not libyaml's CSafeLoader, ten times faster as it is: its parser recurses in C, and a file nested 100 000 deep
# crashes the process (SIGSEGV), where Python's parser raises a RecursionError we report.
_LOADER = yaml.SafeLoader
# NUL cannot reach the OS or an HTTP request, and a newline would forge lines in logs and messages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ObjectSource(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict: ...


class FileSource:
    """Objects from YAML or JSON files; a directory means every .yaml/.yml/.json file in it."""

    def __init__(self, paths: list[str]):
        self._objects: dict[tuple[str, str], list[dict]] = {}
        for path in paths:
            for file in _files(path):
                self._load(file)

    def _load(self, file: str) -> None:
        try:
            with open(file, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise BadInput(f"--objects {file}: {e.strerror or e}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise BadInput(f"--objects {file}: larger than {MAX_FILE_BYTES >> 20} MiB")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line, column = _position(raw[:e.start].decode("utf-8", "replace"))
            raise BadInput(f"--objects {file}:{line}:{column}: not UTF-8 text") from None
        try:
            docs = list(yaml.load_all(text, Loader=_LOADER))
        except yaml.YAMLError as e:
            raise BadInput(f"--objects {file}:{_yaml_problem(e, text)}") from None
        except RecursionError:
            raise BadInput(f"--objects {file}: not valid YAML: nested too deeply") from None
        for doc in docs:
            self._add(doc, file)

    def _add(self, doc: Any, file: str) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise BadInput(f"--objects {file}: a document is not a mapping (an object)")
        kind = doc.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise BadInput(f"--objects {file}: an object's kind is not a string")
        if kind == "List" or (kind and kind.endswith("List") and "items" in doc):
            items = doc.get("items")
            if items is not None and not isinstance(items, list):
                raise BadInput(f"--objects {file}: a {kind}'s items is not a list")
            for item in items or []:
                self._add(item, file)
            return
        meta = doc.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadInput(f"--objects {file}: a {kind or 'object'}'s metadata is not a mapping")
        name = (meta or {}).get("name")
        if not kind or not name:
            raise BadInput(f"--objects {file}: an object lacks kind or metadata.name")
        if not isinstance(name, str) or not isinstance(meta.get("namespace") or "", str):
            raise BadInput(f"--objects {file}: a {kind}'s metadata.name or metadata.namespace is not a string")
        self._objects.setdefault((kind, name), []).append(doc)

    def get(self, kind: str, namespace: str, name: str) -> dict:
        candidates = self._objects.get((kind, name), [])
        exact = [o for o in candidates if (o.get("metadata") or {}).get("namespace") == namespace]
        # An object written without a namespace stands for any namespace, as with `kubectl apply -n`.
        loose = [o for o in candidates if not (o.get("metadata") or {}).get("namespace")]
        found = exact or loose
        if not found:
            raise BadInput(f"{kind} {_shown(namespace)}/{_shown(name)}: not found in the --objects files")
        return found[-1]


# Lenient on case (files written by hand), strict on what could escape a URL path or a log line: Kubernetes names
# are DNS subdomains (at most 253 characters of a-z, 0-9, '-' and '.').
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def check_name(value: str, what: str) -> str:
    """``value`` when it can be a Kubernetes object's or namespace's name; else a BadInput naming ``what`` (the flag
    or field)."""
    if not _NAME.fullmatch(value):
        raise BadInput(f"{what}='{_shown(value)}': not a Kubernetes name (at most 253 letters, digits, '-', '.')")
    return value


def check_host(value: str, what: str) -> str:
    """A snapshot's host name (restic allows nearly anything): one line, and not longer than a DNS name."""
    if len(value) > 253 or _CONTROL.search(value):
        raise BadInput(f"{what}='{_shown(value)}': not a host name (at most 253 characters, no control characters)")
    return value


def _position(text: str) -> tuple[int, int]:
    """1-based line and column just after ``text``."""
    return text.count("\n") + 1, len(text) - (text.rfind("\n") + 1) + 1


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """``line:column: not valid YAML: what`` (an editor jumps there), on one line."""
    if isinstance(e, yaml.MarkedYAMLError) and (e.problem_mark or e.context_mark):
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(x) for x in (e.problem, f"({e.context})" if e.context else "") if x)
        return f"{mark.line + 1}:{mark.column + 1}: not valid YAML: {what or type(e).__name__}"
    if isinstance(e, yaml.reader.ReaderError):  # a control character YAML does not allow
        line, column = _position(text[:e.position])
        char = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        return f"{line}:{column}: not valid YAML: character #x{char:04x}: {e.reason}"
    return f" not valid YAML: {' '.join(str(e).split())}"


def _shown(text: object, limit: int = 100) -> str:
    """A value from a flag or a file in a message: one line, and not a megabyte long."""
    text = str(text)
    shown = text.encode("unicode_escape").decode("ascii") if _CONTROL.search(text) else text  # a newline as \n
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def _files(path: str) -> list[str]:
    if not path:
        raise BadInput("--objects: empty path")
    try:
        if os.path.isdir(path):
            return [
                os.path.join(path, f)
                for f in sorted(os.listdir(path))
                if f.endswith((".yaml", ".yml", ".json")) and os.path.isfile(os.path.join(path, f))
            ]
    except OSError as e:  # a directory this UID may not list
        raise BadInput(f"--objects {path}: {e.strerror or e}") from None
    if not os.path.exists(path):
        raise BadInput(f"--objects {path}: no such file or directory")
    return [path]


# -- typed views ------------------------------------------------------------------------------


_KINDS = {str: "a string", dict: "a mapping", list: "a list", int: "an integer", bool: "true or false"}


def typed(value: Any, path: str, ref: str, kind: type) -> Any:
    """``value`` when it is a ``kind`` or None (absent); else a BadInput naming object and field. Strings may
    hold no control characters (a NUL in a path, a newline in a name)."""
    if value is None or kind is object:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(f"{ref}: {path} must be {_KINDS.get(kind, kind.__name__)}")
    if kind is str and _CONTROL.search(value):
        raise BadInput(f"{ref}: {path} contains a control character")
    return value


def field_at(obj: dict, path: str, ref: str, required: bool = True, kind: type = object) -> Any:
    """Follow a dotted field path; a missing required field is a BadInput naming object and path."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or cur.get(part) in (None, ""):
            if required:
                raise BadInput(f"{ref}: {path} is missing")
            return None
        cur = cur[part]
    return typed(cur, path, ref, kind)


def _optional(conf: dict, key: str, path: str, ref: str, kind: type) -> Any:
    return typed(conf.get(key), f"{path}.{key}", ref, kind)


def namespace_and_name(obj: dict, namespace: str) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or namespace, meta["name"]


@dataclass(frozen=True)
class Secret:
    ref: str  # "Secret ns/name" or "secret dir /path", for messages
    data: dict[str, bytes] = field(repr=False)

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> Secret:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"Secret {ns}/{name}"
        data: dict[str, bytes] = {}
        # A value is named by its key only: the value is a credential and never goes into a message.
        for key, value in (typed(obj.get("data"), "data", ref, dict) or {}).items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise BadInput(f"{ref}: data.{_shown(key)} must be a base64 string")
            try:
                data[str(key)] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{ref}: data.{_shown(key)} is not valid base64") from None
        for key, value in (typed(obj.get("stringData"), "stringData", ref, dict) or {}).items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):  # also: str() of a YAML alias bomb would never end
                raise BadInput(f"{ref}: stringData.{_shown(key)} must be a string")
            data[str(key)] = (str(value).lower() if isinstance(value, bool) else str(value)).encode()
        return cls(ref, data)

    @classmethod
    def from_dir(cls, path: str) -> Secret:
        """A Secret mounted as a volume (Stash's --secret-dir): one file per key."""
        if not os.path.isdir(path):
            raise BadInput(f"--secret-dir {path}: not a directory")
        data = {}
        try:
            names = os.listdir(path)
        except OSError as e:  # a volume this UID may not list
            raise BadInput(f"--secret-dir {path}: {e.strerror or e}") from None
        for name in names:
            full = os.path.join(path, name)
            if os.path.isfile(full) and not name.startswith(".."):
                try:
                    with open(full, "rb") as f:
                        value = f.read(MAX_SECRET_BYTES + 1)
                except OSError as e:
                    raise BadInput(f"--secret-dir {path}: cannot read {name}: {e.strerror or e}") from None
                if len(value) > MAX_SECRET_BYTES:
                    raise BadInput(f"--secret-dir {path}: {name} is larger than a Secret may be (1 MiB)")
                data[name] = value
        return cls(f"secret dir {path}", data)

    def get(self, *keys: str, required: bool = True) -> str | None:
        """The first of ``keys`` present (e.g. 'username' then 'POSTGRES_USER')."""
        for key in keys:
            if self.data.get(key):
                try:
                    value = self.data[key].decode().strip("\n")
                except UnicodeDecodeError:
                    raise BadInput(f"{self.ref}: data.{key} is not UTF-8 text") from None
                if "\0" in value:  # no environment variable or command line can carry it
                    raise BadInput(f"{self.ref}: data.{key} contains a NUL character")
                return value
        if required:
            raise BadInput(f"{self.ref}: data.{' or data.'.join(keys)} is missing")
        return None

    def get_bytes(self, key: str) -> bytes | None:
        return self.data.get(key) or None


@dataclass(frozen=True)
class AppBinding:
    namespace: str
    name: str
    type: str
    scheme: str
    host: str
    port: int | None
    path: str
    query: dict[str, str]
    secret_name: str | None
    tls_secret_name: str | None
    ca_bundle: bytes | None = field(repr=False, default=None)
    parameters: dict = field(default_factory=dict)
    insecure_tls: bool = False  # spec.clientConfig.insecureSkipTLSVerify

    @property
    def ref(self) -> str:
        return f"AppBinding {self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> AppBinding:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"AppBinding {ns}/{name}"
        spec = field_at(obj, "spec", ref, kind=dict)
        cc = field_at(obj, "spec.clientConfig", ref, kind=dict)
        url = _optional(cc, "url", "spec.clientConfig", ref, str)
        service = _optional(cc, "service", "spec.clientConfig", ref, dict)
        if url:
            try:
                u = urlsplit(url)
                port = u.port
            except ValueError as e:
                raise BadInput(f"{ref}: spec.clientConfig.url is not a valid URL: {e}") from None
            if not u.hostname:
                raise BadInput(f"{ref}: spec.clientConfig.url has no host")
            scheme, host, path, query = u.scheme, u.hostname, unquote(u.path), dict(parse_qsl(u.query))
        elif service is not None:
            p = "spec.clientConfig.service"
            svc_name = field_at(obj, f"{p}.name", ref, kind=str)
            scheme = _optional(service, "scheme", p, ref, str) or ""
            host = f"{svc_name}.{ns}.svc"
            port = service.get("port")
            if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
                raise BadInput(f"{ref}: {p}.port must be a number")
            path = _optional(service, "path", p, ref, str) or ""
            query = dict(parse_qsl(_optional(service, "query", p, ref, str) or ""))
        else:
            raise BadInput(f"{ref}: spec.clientConfig.url or spec.clientConfig.service is missing")
        if port is not None and not 0 < port < 65536:
            raise BadInput(f"{ref}: spec.clientConfig: port {port} is out of range (1-65535)")
        ca = _optional(cc, "caBundle", "spec.clientConfig", ref, str)
        ca_bytes = None
        if ca:
            try:
                ca_bytes = base64.b64decode(ca, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{ref}: spec.clientConfig.caBundle is not valid base64") from None
        return cls(
            namespace=ns,
            name=name,
            type=_optional(spec, "type", "spec", ref, str) or "",
            scheme=scheme,
            host=host,
            port=port,
            path=path,
            query=query,
            secret_name=_secret_name(spec, "secret", ref),
            tls_secret_name=_secret_name(spec, "tlsSecret", ref),
            ca_bundle=ca_bytes,
            parameters=_optional(spec, "parameters", "spec", ref, dict) or {},
            insecure_tls=cc.get("insecureSkipTLSVerify") is True,
        )


def _secret_name(spec: dict, key: str, ref: str) -> str | None:
    """spec.secret.name / spec.tlsSecret.name: a LocalObjectReference."""
    return _optional(_optional(spec, key, "spec", ref, dict) or {}, "name", f"spec.{key}", ref, str) or None


@dataclass(frozen=True)
class Repository:
    namespace: str
    name: str
    backend: BackendSpec
    storage_secret_name: str

    @property
    def ref(self) -> str:
        return f"Repository {self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: dict, namespace: str) -> Repository:
        ns, name = namespace_and_name(obj, namespace)
        ref = f"Repository {ns}/{name}"
        backend = field_at(obj, "spec.backend", ref, kind=dict)
        secret = field_at(obj, "spec.backend.storageSecretName", ref, kind=str)
        kinds = [str(k) for k in backend if k != "storageSecretName"]
        if len(kinds) != 1:
            raise BadInput(
                f"{ref}: spec.backend must name exactly one provider "
                f"({', '.join(PROVIDERS)}), found {_shown(', '.join(kinds)) or 'none'}"
            )
        provider = kinds[0]
        if provider not in PROVIDERS:
            raise BadInput(f"{ref}: spec.backend.{_shown(provider)}: unknown provider (known: {', '.join(PROVIDERS)})")
        p = f"spec.backend.{provider}"
        conf = typed(backend[provider], p, ref, dict)
        if conf is None:
            raise BadInput(f"{ref}: {p} is missing")

        def text(key: str) -> str:
            return _optional(conf, key, p, ref, str) or ""

        connections = _optional(conf, "maxConnections", p, ref, int) or 0
        if not 0 <= connections <= MAX_CONNECTIONS:
            raise BadInput(f"{ref}: {p}.maxConnections must be from 0 (the default) to {MAX_CONNECTIONS}")
        if provider == "local":
            spec = BackendSpec("local", bucket=field_at(obj, f"{p}.mountPath", ref, kind=str), prefix=text("subPath"))
        elif provider == "s3":
            spec = BackendSpec(
                "s3",
                bucket=field_at(obj, f"{p}.bucket", ref, kind=str),
                prefix=text("prefix"),
                endpoint=text("endpoint"),
                region=text("region"),
                max_connections=connections,
                insecure_tls=bool(_optional(conf, "insecureTLS", p, ref, bool)),
            )
        elif provider == "azure":
            spec = BackendSpec(
                "azure",
                bucket=field_at(obj, f"{p}.container", ref, kind=str),
                prefix=text("prefix"),
                max_connections=connections,
            )
        else:
            spec = BackendSpec(
                provider,
                bucket=text("bucket") or text("container") or text("url"),
                prefix=text("prefix"),
                max_connections=connections,
            )
        return cls(ns, name, spec, secret)
