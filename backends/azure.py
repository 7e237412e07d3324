"""A repository in an Azure Blob Storage container, in restic's ``azure:container:/prefix`` layout."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import requests
import urllib3
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from stash_runner.credentials import Credentials
from stash_runner.errors import BadInput

from .base import AccessDeniedError, Backend, BackendError, FileType, Handle, NotFoundError, TransientError
from .spec import BackendSpec

DEFAULT_CONNECTIONS = 5
DEFAULT_ENDPOINT_SUFFIX = "core.windows.net"
# Packs are up to ~16 MiB: one Put Blob per file keeps every save atomic (no uncommitted block list is
# left behind by a crash), and one GET per whole-pack load.
SINGLE_REQUEST_SIZE = 64 * 1024 * 1024
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# A body damaged on the way fails its Content-MD5 check; sending it again cures that.
_TRANSIENT_CODES = {"Md5Mismatch", "ServerBusy", "OperationTimedOut", "InternalError"}
_TRANSIENT_ERRORS = (
    ServiceRequestError,  # could not connect or send (includes connect timeouts)
    ServiceResponseError,  # connection dropped or stalled while waiting for or reading the answer
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
)
# Container names: 3-63 of [a-z0-9-], starting and ending alphanumeric, no "--"; or the two special ones.
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$|^\$root$|^\$web$")
# SDK exception text may carry request URLs with a SAS signature, or a connection string's key.
_SECRET_PARAM = re.compile(r"(?i)\b(sig|signature|accountkey|sharedaccesssignature)=[^&;\s'\"]*")
_QUERY = re.compile(r"\?[^\s'\"()?]*=[^\s'\"()]*")


def redact(text: str) -> str:
    """Strip query strings from URLs and any signature or key parameter left elsewhere."""
    return _SECRET_PARAM.sub(r"\1=REDACTED", _QUERY.sub("", text))


def _lookup(key: str, secret: Credentials, environ: Mapping[str, str]) -> str | None:
    """A setting from the storage Secret, else from the environment (as restic reads it)."""
    value = secret.get(key, required=False)
    if value is None:
        value = (environ.get(key) or "").strip() or None
    return value


class AzureBackend(Backend):
    def __init__(self, service: BlobServiceClient, container: str, prefix: str, connections: int,
                 credential: Any = None):
        self.service = service
        self.container = container
        self.prefix = prefix.strip("/")
        self.connections = connections
        self.location = f"azure:{container}:/{self.prefix}"
        self._container = service.get_container_client(container)
        # Kept only to close it: a DefaultAzureCredential holds its own HTTP sessions.
        self._credential = credential

    def __repr__(self) -> str:
        return f"AzureBackend({self.location})"

    @classmethod
    def from_spec(cls, spec: BackendSpec, secret: Credentials, where: str, *, timeout: float,
                  environ: Mapping[str, str]) -> AzureBackend:
        container = spec.bucket
        if not _CONTAINER.match(container):
            raise BadInput(f"{where}: azure container {container!r} is not a valid container name "
                           "(3-63 lowercase letters, digits and single hyphens)")
        connections = spec.max_connections if spec.max_connections > 0 else DEFAULT_CONNECTIONS
        # A Secret that carries any credential is used on its own; otherwise the environment's.
        kind, value, origin = "", "", ""
        found = _credential(lambda k: secret.get(k, required=False))
        if found:
            kind, value = found
            origin = f"{secret.ref}: data.{kind}"
        else:
            found = _credential(lambda k: (environ.get(k) or "").strip() or None)
            if found:
                kind, value = found
                origin = f"environment variable {kind}"

        if kind == "AZURE_STORAGE_CONNECTION_STRING":
            # It names its own endpoint and credential.
            try:
                service = BlobServiceClient.from_connection_string(
                    value, **_client_options(connections, timeout, insecure_tls=spec.insecure_tls))
            except (ValueError, AzureError):
                # The SDK's message may quote the string; it holds the key.
                raise BadInput(f"{origin} is not a valid storage connection string") from None
            return cls(service, container, spec.prefix, connections)

        account = _lookup("AZURE_ACCOUNT_NAME", secret, environ)
        missing_account = f"{secret.ref}: data.AZURE_ACCOUNT_NAME is missing (nor set in the environment)"
        endpoint = _lookup("AZURE_ENDPOINT", secret, environ) or spec.endpoint.strip()
        if endpoint:
            if "://" not in endpoint:
                endpoint = f"https://{endpoint}"
            endpoint = endpoint.rstrip("/")
        elif account:
            suffix = (_lookup("AZURE_ENDPOINT_SUFFIX", secret, environ) or DEFAULT_ENDPOINT_SUFFIX).strip(".")
            endpoint = f"https://{account}.blob.{suffix}"
        else:
            raise BadInput(missing_account)
        credential: Any
        if kind == "AZURE_ACCOUNT_KEY":
            if not account:
                raise BadInput(missing_account)
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{origin} is not valid base64") from None
            credential = AzureNamedKeyCredential(account, value)
        elif kind == "AZURE_ACCOUNT_SAS":
            credential = AzureSasCredential(value.lstrip("?"))
        else:
            # No key, SAS or connection string: workload or managed identity, as restic does.
            if not account:
                raise BadInput(missing_account)
            if not endpoint.startswith("https://"):
                raise BadInput(f"{where}: Azure token credentials (no key, SAS or connection string is given) "
                               "need an https endpoint")
            from azure.identity import DefaultAzureCredential  # heavy; only this path needs it

            credential = DefaultAzureCredential()
        service = BlobServiceClient(endpoint, credential=credential,
                                    **_client_options(connections, timeout, insecure_tls=spec.insecure_tls))
        owned = credential if hasattr(credential, "close") else None
        return cls(service, container, spec.prefix, connections, owned)

    # -- names and errors ------------------------------------------------------------------------

    def _name(self, h: Handle) -> str:
        return f"{self.prefix}/{h.path()}" if self.prefix else h.path()

    def _dir(self, t: FileType) -> str:
        return f"{self.prefix}/{t.value}/" if self.prefix else f"{t.value}/"

    def _error(self, e: Exception, what: str) -> Exception:
        """One mapping from SDK failures to the Backend contract; never quotes URLs or keys."""
        if isinstance(e, ResourceNotFoundError):
            return NotFoundError(f"{self.location}: {what}: not found ({_code(e)})")
        if isinstance(e, ClientAuthenticationError) and e.response is None:
            # From azure.identity: no token could be had at all.
            first = redact(str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
            return AccessDeniedError(f"{self.location}: {what}: no Azure credentials: set AZURE_ACCOUNT_KEY, "
                                     f"AZURE_ACCOUNT_SAS or AZURE_STORAGE_CONNECTION_STRING in the storage "
                                     f"Secret, or give the pod an identity ({first})")
        if isinstance(e, HttpResponseError):
            status = e.status_code
            if isinstance(e, ClientAuthenticationError) or status in (401, 403):
                return AccessDeniedError(f"{self.location}: {what}: access denied (HTTP {status} {_code(e)}): "
                                         "the credentials were rejected or lack permission")
            if status is None or status in _TRANSIENT_STATUS or _code(e) in _TRANSIENT_CODES:
                # No status: the SDK gave up reading a response body (it wraps IncompleteRead and the like).
                return TransientError(f"{self.location}: {what}: {_describe(e)}")
            return BackendError(f"{self.location}: {what}: {_describe(e)}")
        if isinstance(e, _TRANSIENT_ERRORS):
            return TransientError(f"{self.location}: {what}: {_describe(e)}")
        return BackendError(f"{self.location}: {what}: {_describe(e)}")

    # -- the interface ---------------------------------------------------------------------------

    def create(self) -> None:
        # As restic: look first, create only when absent.
        try:
            self._container.get_container_properties()
            return
        except ResourceNotFoundError:
            pass
        except HttpResponseError as e:
            if _code(e) != "AuthorizationFailure":
                raise self._error(e, f"container {self.container}") from None
            # As restic (restic#4004): a container-scoped SAS may use the container but not read its
            # properties; bad credentials fail on the first real request anyway.
            return
        except Exception as e:
            raise self._error(e, f"container {self.container}") from None
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass  # created concurrently, or by our own attempt that a retry repeats
        except Exception as e:
            err = self._error(e, f"create container {self.container}")
            code = _code(e) if isinstance(e, HttpResponseError) else ""
            if isinstance(err, AccessDeniedError) and code != "AuthenticationFailed":
                raise AccessDeniedError(f"{self.location}: container {self.container} does not exist and these "
                                        f"credentials may not create it ({code})") from None
            raise err from None

    def save(self, h: Handle, data: bytes) -> None:
        blob = self._container.get_blob_client(self._name(h))
        try:
            # validate_content sends Content-MD5: the service rejects a body damaged on the way, and
            # stores the MD5 as the blob's.
            blob.upload_blob(data, overwrite=True, length=len(data), max_concurrency=1, validate_content=True)
        except Exception as e:
            err = self._error(e, f"save {h}")
            if isinstance(err, NotFoundError):  # the container is gone: not a missing file
                raise BackendError(f"{self.location}: save {h}: container {self.container} does not exist") \
                    from None
            raise err from None

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        blob = self._container.get_blob_client(self._name(h))
        try:
            # No range for a whole file: a ranged GET of an empty blob fails with 416.
            if offset or length is not None:
                stream = blob.download_blob(offset=offset, length=length, max_concurrency=1)
            else:
                stream = blob.download_blob(max_concurrency=1)
            data = stream.readall()
        except Exception as e:
            if isinstance(e, HttpResponseError) and _code(e) == "InvalidRange":
                raise BackendError(f"{self.location}: load {h}: the file is shorter than expected") from None
            raise self._error(e, f"load {h}") from None
        # stream.size is what the service said it would send: shorter than asked means a short file
        # (retrying cannot help); a body shorter than announced is a broken transfer.
        if length is not None and stream.size < length:
            raise BackendError(f"{self.location}: load {h}: the file is shorter than expected "
                               f"({offset + stream.size} bytes, wanted {offset + length})")
        if len(data) != stream.size:
            raise TransientError(f"{self.location}: load {h}: got {len(data)} of {stream.size} bytes")
        return data

    def stat(self, h: Handle) -> int:
        try:
            size = self._container.get_blob_client(self._name(h)).get_blob_properties().size
        except Exception as e:
            raise self._error(e, f"stat {h}") from None
        if size is None:  # headers cut short: the connection dropped mid-answer
            raise TransientError(f"{self.location}: stat {h}: the answer lacked the size")
        return int(size)

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        base = self._dir(t)
        try:
            for item in self._container.list_blobs(name_starts_with=base):
                rel = item.name[len(base):]
                parts = rel.split("/")
                # data/xx/<id>, the others <type>/<id>; anything else (a hierarchical-namespace
                # directory entry, a stray nested name) is not a repository file.
                if len(parts) != (2 if t is FileType.DATA else 1) or not parts[-1]:
                    continue
                yield parts[-1], int(item.size)
        except Exception as e:
            err = self._error(e, f"list {t.value}")
            if isinstance(err, NotFoundError):
                return  # no container: nothing in it
            raise err from None

    def remove(self, h: Handle) -> None:
        try:
            self._container.get_blob_client(self._name(h)).delete_blob()
        except ResourceNotFoundError:
            pass  # already gone: a retried remove
        except Exception as e:
            raise self._error(e, f"remove {h}") from None

    def close(self) -> None:
        self.service.close()
        if self._credential is not None:
            self._credential.close()


def _credential(get: Callable[[str], str | None]) -> tuple[str, str] | None:
    """The first credential setting present, in restic's order (then the connection string)."""
    for key in ("AZURE_ACCOUNT_KEY", "AZURE_ACCOUNT_SAS", "AZURE_STORAGE_CONNECTION_STRING"):
        value = get(key)
        if value:
            return key, value
    return None


def _client_options(connections: int, timeout: float, *, insecure_tls: bool) -> dict[str, Any]:
    """SDK settings: no SDK retries (RetryBackend retries), our timeouts, a pool for every worker."""
    session = requests.Session()
    if insecure_tls:
        urllib3.disable_warnings(InsecureRequestWarning)  # one per request otherwise; the user asked for it
    # requests' default pool keeps 10 connections per host; uploads from more threads would queue
    # for a connection, and urllib3 must not retry on its own either.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(connections + 2, 10),
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    transport = RequestsTransport(session=session, session_owner=True, connection_timeout=timeout,
                                  read_timeout=timeout, connection_verify=not insecure_tls)
    return {
        "transport": transport,
        "retry_total": 0,
        "connection_timeout": timeout,
        "read_timeout": timeout,
        "max_single_put_size": SINGLE_REQUEST_SIZE,
        "max_single_get_size": SINGLE_REQUEST_SIZE,
        # Each request is logged at INFO by azure-core; that belongs to --verbose, not to a run's output.
        "http_logging_level": logging.DEBUG,
    }


def _code(e: HttpResponseError) -> str:
    code = getattr(e, "error_code", None)
    code = getattr(code, "value", code)  # a StorageErrorCode enum, or the plain string
    if not code and e.response is not None:
        code = e.response.headers.get("x-ms-error-code")
    return str(code or e.reason or e.status_code or "error")


def _describe(e: Exception) -> str:
    if isinstance(e, HttpResponseError) and e.status_code is not None:
        return f"HTTP {e.status_code} {_code(e)}"
    inner = getattr(e, "inner_exception", None) or e
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {redact(text)[:300]}" if text else type(inner).__name__
