"""The Kubernetes objects the runner reads, as typed views, and where they come from.

Sources implement ``get(kind, namespace, name) -> dict``. ``FileSource`` reads YAML/JSON files and
directories (multi-document, ``kind: List``), as ``kubectl get -o yaml`` writes them; the cluster
source (Kubernetes API) plugs in behind the same call.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from backends.spec import PROVIDERS, BackendSpec
from stash_runner.errors import BadInput, first_line


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
            with open(file, encoding="utf-8") as f:
                docs = list(yaml.safe_load_all(f))
        except OSError as e:
            raise BadInput(f"--objects {file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise BadInput(f"--objects {file}: not valid YAML: {first_line(e)}") from None
        for doc in docs:
            self._add(doc, file)

    def _add(self, doc: Any, file: str) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise BadInput(f"--objects {file}: a document is not a mapping")
        if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
            for item in doc.get("items") or []:
                self._add(item, file)
            return
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if not kind or not name:
            raise BadInput(f"--objects {file}: an object lacks kind or metadata.name")
        self._objects.setdefault((kind, name), []).append(doc)

    def get(self, kind: str, namespace: str, name: str) -> dict:
        candidates = self._objects.get((kind, name), [])
        exact = [o for o in candidates if (o.get("metadata") or {}).get("namespace") == namespace]
        # An object written without a namespace stands for any namespace, as with `kubectl apply -n`.
        loose = [o for o in candidates if not (o.get("metadata") or {}).get("namespace")]
        found = exact or loose
        if not found:
            raise BadInput(f"{kind} {namespace}/{name}: not found in the --objects files")
        return found[-1]


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [
            os.path.join(path, f)
            for f in sorted(os.listdir(path))
            if f.endswith((".yaml", ".yml", ".json")) and os.path.isfile(os.path.join(path, f))
        ]
    if not os.path.exists(path):
        raise BadInput(f"--objects {path}: no such file or directory")
    return [path]


# -- typed views ------------------------------------------------------------------------------


def field_at(obj: dict, path: str, ref: str, required: bool = True, kind: type = object) -> Any:
    """Follow a dotted field path; a missing required field is a BadInput naming object and path."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or cur.get(part) in (None, ""):
            if required:
                raise BadInput(f"{ref}: {path} is missing")
            return None
        cur = cur[part]
    if kind is not object and not isinstance(cur, kind):
        raise BadInput(f"{ref}: {path} must be a {kind.__name__}")
    return cur


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
        for key, value in (obj.get("data") or {}).items():
            try:
                data[key] = base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{ref}: data.{key} is not valid base64") from None
        for key, value in (obj.get("stringData") or {}).items():
            data[key] = str(value).encode()
        return cls(ref, data)

    @classmethod
    def from_dir(cls, path: str) -> Secret:
        """A Secret mounted as a volume (Stash's --secret-dir): one file per key."""
        if not os.path.isdir(path):
            raise BadInput(f"--secret-dir {path}: not a directory")
        data = {}
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isfile(full) and not name.startswith(".."):
                with open(full, "rb") as f:
                    data[name] = f.read()
        return cls(f"secret dir {path}", data)

    def get(self, *keys: str, required: bool = True) -> str | None:
        """The first of ``keys`` present (e.g. 'username' then 'POSTGRES_USER')."""
        for key in keys:
            if self.data.get(key):
                return self.data[key].decode().strip("\n")
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
        cc = field_at(obj, "spec.clientConfig", ref, kind=dict)
        url = cc.get("url")
        service = cc.get("service")
        if url:
            try:
                u = urlsplit(url)
                port = u.port
            except ValueError as e:
                raise BadInput(f"{ref}: spec.clientConfig.url is not a valid URL: {e}") from None
            if not u.hostname:
                raise BadInput(f"{ref}: spec.clientConfig.url has no host")
            scheme, host, path, query = u.scheme, u.hostname, unquote(u.path), dict(parse_qsl(u.query))
        elif isinstance(service, dict):
            svc_name = field_at(obj, "spec.clientConfig.service.name", ref)
            scheme = service.get("scheme") or ""
            host = f"{svc_name}.{ns}.svc"
            port = service.get("port")
            if port is not None and not isinstance(port, int):
                raise BadInput(f"{ref}: spec.clientConfig.service.port must be a number")
            path = service.get("path") or ""
            query = dict(parse_qsl(service.get("query") or ""))
        else:
            raise BadInput(f"{ref}: spec.clientConfig.url or spec.clientConfig.service is missing")
        ca = cc.get("caBundle")
        ca_bytes = None
        if ca:
            try:
                ca_bytes = base64.b64decode(ca, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{ref}: spec.clientConfig.caBundle is not valid base64") from None
        spec = obj.get("spec") or {}
        return cls(
            namespace=ns,
            name=name,
            type=spec.get("type") or "",
            scheme=scheme,
            host=host,
            port=port,
            path=path,
            query=query,
            secret_name=(spec.get("secret") or {}).get("name"),
            tls_secret_name=(spec.get("tlsSecret") or {}).get("name"),
            ca_bundle=ca_bytes,
            parameters=spec.get("parameters") or {},
            insecure_tls=cc.get("insecureSkipTLSVerify") is True,
        )


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
        kinds = [k for k in backend if k != "storageSecretName"]
        if len(kinds) != 1:
            raise BadInput(
                f"{ref}: spec.backend must name exactly one provider "
                f"({', '.join(PROVIDERS)}), found {', '.join(kinds) or 'none'}"
            )
        provider = kinds[0]
        if provider not in PROVIDERS:
            raise BadInput(f"{ref}: spec.backend.{provider}: unknown provider (known: {', '.join(PROVIDERS)})")
        conf = backend[provider]
        if not isinstance(conf, dict):
            raise BadInput(f"{ref}: spec.backend.{provider} must be a mapping")
        p = f"spec.backend.{provider}"
        if provider == "local":
            spec = BackendSpec(
                "local", bucket=field_at(obj, f"{p}.mountPath", ref, kind=str), prefix=conf.get("subPath") or ""
            )
        elif provider == "s3":
            spec = BackendSpec(
                "s3",
                bucket=field_at(obj, f"{p}.bucket", ref, kind=str),
                prefix=conf.get("prefix") or "",
                endpoint=conf.get("endpoint") or "",
                region=conf.get("region") or "",
                max_connections=int(conf.get("maxConnections") or 0),
                insecure_tls=bool(conf.get("insecureTLS")),
            )
        elif provider == "azure":
            spec = BackendSpec(
                "azure",
                bucket=field_at(obj, f"{p}.container", ref, kind=str),
                prefix=conf.get("prefix") or "",
                max_connections=int(conf.get("maxConnections") or 0),
            )
        else:
            spec = BackendSpec(
                provider,
                bucket=str(conf.get("bucket") or conf.get("container") or conf.get("url") or ""),
                prefix=conf.get("prefix") or "",
                max_connections=int(conf.get("maxConnections") or 0),
            )
        return cls(ns, name, spec, secret)
