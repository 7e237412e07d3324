"""Google Cloud Storage, in restic's ``gs:`` layout: ``<prefix>/config``, ``<prefix>/data/xx/<id>``, ...

Credentials come from the storage Secret (GOOGLE_PROJECT_ID, GOOGLE_SERVICE_ACCOUNT_JSON_KEY), else
from application default credentials (workload identity). With STORAGE_EMULATOR_HOST (from the
environment handed in, or the Secret) the client talks anonymously to that emulator. Project,
credentials, endpoint and HTTP session are passed to the client explicitly; the process environment
is never changed (only the ADC chain reads it, as it must to find workload identity).

The SDK's own retries are off on every call: ``RetryBackend`` retries with one policy for all.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator, Mapping

import google.auth
import google.auth.credentials
import google.auth.exceptions
import requests
import requests.adapters
import urllib3.exceptions
from google.api_core import exceptions as api
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage import exceptions as media
from google.oauth2 import service_account

from stash_runner.credentials import Credentials
from stash_runner.errors import BadInput

from .base import AccessDeniedError, Backend, BackendError, FileType, Handle, NotFoundError, TransientError
from .spec import BackendSpec

KEY_FIELD = "GOOGLE_SERVICE_ACCOUNT_JSON_KEY"
PROJECT_FIELD = "GOOGLE_PROJECT_ID"
EMULATOR_FIELD = "STORAGE_EMULATOR_HOST"
DEFAULT_CONNECTIONS = 5

_TRANSIENT_API = (api.TooManyRequests, api.InternalServerError, api.BadGateway, api.ServiceUnavailable,
                  api.GatewayTimeout)
_TRANSIENT_NETWORK = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
                      urllib3.exceptions.TimeoutError, http.client.HTTPException, ConnectionError, TimeoutError,
                      google.auth.exceptions.TransportError)
# "GET http://host/storage/v1/b/x/o/y?alt=json: No such object: x/y" -> the part after the URL.
_METHOD_URL = re.compile(r"^[A-Z]+ \S+: ")
# Query strings may carry capabilities (a resumable upload's upload_id): never print them.
_QUERY = re.compile(r"\?[^\s'\")]*")


class GCSBackend(Backend):
    def __init__(self, client: storage.Client, bucket: str, prefix: str = "", *, timeout: float = 60.0,
                 connections: int = DEFAULT_CONNECTIONS, region: str = "", secret_ref: str = ""):
        self.client = client
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.location = f"gs:{bucket}:/{self.prefix}"
        self.connections = connections
        self.region = region
        self._secret_ref = secret_ref
        self._bucket = client.bucket(bucket)
        # (connect, read): a stalled read is a TransientError after this long, not a hang.
        self._timeout = (timeout, timeout)

    @classmethod
    def from_spec(cls, spec: BackendSpec, secret: Credentials, where: str, *, timeout: float,
                  environ: Mapping[str, str]) -> GCSBackend:
        connections = spec.max_connections if spec.max_connections > 0 else DEFAULT_CONNECTIONS
        client = make_client(secret, environ, connections, endpoint=spec.endpoint)
        return cls(client, spec.bucket, spec.prefix, timeout=timeout, connections=connections,
                   region=spec.region, secret_ref=secret.ref)

    # -- names and errors ----------------------------------------------------------------------

    def _name(self, h: Handle) -> str:
        return f"{self.prefix}/{h.path()}" if self.prefix else h.path()

    def _dir(self, t: FileType) -> str:
        return f"{self.prefix}/{t.value}/" if self.prefix else f"{t.value}/"

    def _error(self, e: Exception, what: str) -> Exception:
        return map_error(e, self.location, what)

    # -- the interface -------------------------------------------------------------------------

    def create(self) -> None:
        # As restic's gs backend: look for the bucket; create it only when it is surely missing.
        try:
            found = self.client.lookup_bucket(self.bucket_name, timeout=self._timeout, retry=None)
        except api.Forbidden:
            return  # no storage.buckets.get permission: the bucket may well exist; writes will tell
        except Exception as e:
            raise self._error(e, f"look up bucket {self.bucket_name}") from None
        if found is not None:
            return
        if not self.client.project:
            raise BadInput(f"{self._secret_ref}: data.{PROJECT_FIELD} is missing: bucket {self.bucket_name} "
                           "does not exist and creating it needs a project")
        try:
            self.client.create_bucket(self.bucket_name, location=self.region or None, timeout=self._timeout,
                                      retry=None)
        except api.Conflict:
            return  # created meanwhile (a retried create, another runner), or already ours
        except (api.Forbidden, api.Unauthorized):
            raise AccessDeniedError(f"{self.location}: bucket {self.bucket_name} does not exist and these "
                                    "credentials may not create it") from None
        except Exception as e:
            raise self._error(e, f"create bucket {self.bucket_name}") from None

    def save(self, h: Handle, data: bytes) -> None:
        blob = self._bucket.blob(self._name(h))
        try:
            # Above 8 MiB the SDK makes a resumable upload (one session, one chunk, as chunk_size is
            # unset); a failed attempt leaves no object, and a retry starts a fresh session. The
            # crc32c sent along makes the server (or the client, for resumable) reject corrupt bytes.
            blob.upload_from_string(data, content_type="application/octet-stream", timeout=self._timeout,
                                    checksum="auto", retry=None)
        except api.NotFound:
            raise BackendError(f"{self.location}: cannot write {h}: bucket {self.bucket_name} does not "
                               "exist") from None
        except Exception as e:
            raise self._error(e, f"save {h}") from None

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        ranged = offset > 0 or length is not None
        blob = self._bucket.blob(self._name(h))
        try:
            data = blob.download_as_bytes(
                start=offset if ranged else None,
                end=offset + length - 1 if length is not None else None,  # inclusive
                timeout=self._timeout,
                # The object's hash covers the whole object, useless for a part; restic's MACs check anyway.
                checksum=None if ranged else "auto",
                retry=None,
            )
        except api.NotFound:
            raise NotFoundError(f"{self.location}: {h} not found") from None
        except api.RequestRangeNotSatisfiable:
            raise BackendError(f"{self.location}: load {h}: offset {offset} is past the end") from None
        except Exception as e:
            raise self._error(e, f"load {h}") from None
        if length is not None and len(data) != length:
            raise TransientError(f"{self.location}: load {h}: short read, {len(data)} of {length} bytes")
        return data

    def stat(self, h: Handle) -> int:
        try:
            blob = self._bucket.get_blob(self._name(h), timeout=self._timeout, retry=None)
        except api.NotFound:  # the bucket itself is missing
            raise NotFoundError(f"{self.location}: {h} not found") from None
        except Exception as e:
            raise self._error(e, f"stat {h}") from None
        if blob is None:
            raise NotFoundError(f"{self.location}: {h} not found")
        return int(blob.size or 0)

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        prefix = self._dir(t)
        try:
            # No delimiter: data/xx/<id> is found recursively, as restic's gs backend lists.
            for blob in self.client.list_blobs(self._bucket, prefix=prefix, fields="items(name,size),nextPageToken",
                                               timeout=self._timeout, retry=None):
                rest = blob.name[len(prefix):]
                if rest:
                    yield rest.rsplit("/", 1)[-1], int(blob.size or 0)
        except api.NotFound:
            return  # no bucket yet: nothing in it
        except Exception as e:
            raise self._error(e, f"list {t.value}") from None

    def remove(self, h: Handle) -> None:
        try:
            self._bucket.delete_blob(self._name(h), timeout=self._timeout, retry=None)
        except api.NotFound:
            pass  # already gone: a retried remove
        except Exception as e:
            raise self._error(e, f"remove {h}") from None

    def close(self) -> None:
        self.client.close()


def make_client(secret: Credentials, environ: Mapping[str, str], connections: int,
                endpoint: str = "") -> storage.Client:
    """A storage client with explicit credentials, endpoint and a connection pool for ``connections``."""
    raw_key = secret.get_bytes(KEY_FIELD)
    # Loaded even when an emulator is used: a broken key is a broken Secret either way (no network here).
    key = _service_account_credentials(secret, raw_key) if raw_key else None
    project = secret.get(PROJECT_FIELD, required=False)
    emulator = environ.get(EMULATOR_FIELD) or secret.get(EMULATOR_FIELD, required=False)
    credentials: google.auth.credentials.Credentials
    if emulator:
        credentials = google.auth.credentials.AnonymousCredentials()
        endpoint = emulator if "://" in emulator else f"http://{emulator}"
        project = project or "test"
    elif key is not None:
        credentials = key
        project = project or key.project_id
    else:
        try:
            credentials, adc_project = google.auth.default(scopes=storage.Client.SCOPE)
        except google.auth.exceptions.DefaultCredentialsError:
            raise BadInput(f"{secret.ref}: data.{KEY_FIELD} is missing and no application default "
                           "credentials (workload identity) are available") from None
        project = project or adc_project
    session = AuthorizedSession(credentials)
    # Every upload and read thread holds a connection; more threads than pooled connections would
    # serialize on the pool or churn connections ("connection pool is full"). No urllib3 retries.
    size = 2 * max(2, connections) + 2
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    try:
        return storage.Client(project=project, credentials=credentials, _http=session,
                              client_options={"api_endpoint": endpoint} if endpoint else None)
    except ValueError as e:  # e.g. the key's universe domain is not the endpoint's
        session.close()
        raise BadInput(f"{secret.ref}: the GCS client cannot be set up with these credentials: {_scrub(e)}") from None


def _service_account_credentials(secret: Credentials, raw: bytes) -> service_account.Credentials:
    where = f"{secret.ref}: data.{KEY_FIELD}"
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # JSONDecodeError's message is harmless, but its .doc is the key: neither is kept.
        raise BadInput(f"{where} is not valid JSON (expected a service account key file)") from None
    if not isinstance(info, dict):
        raise BadInput(f"{where} is not a JSON object (expected a service account key file)")
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if info.get("type", "service_account") != "service_account" or missing:
        why = f"lacks {', '.join(missing)}" if missing else f"has type {str(info.get('type'))[:40]!r}"
        raise BadInput(f"{where} is not a service account key: it {why}")
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=storage.Client.SCOPE)
    except (ValueError, TypeError, KeyError, IndexError, google.auth.exceptions.GoogleAuthError) as e:
        # The exception text may quote the key material: only its type is reported.
        raise BadInput(f"{where} is not a usable service account key ({type(e).__name__})") from None


def map_error(e: Exception, location: str, what: str) -> Exception:
    """The Backend error for a failure of the SDK, its transport or the service.

    ``what`` names the operation and object ("load data/ab/ab12..."); the message starts with the
    location and never carries credentials, tokens or query strings.
    """
    prefix = f"{location}: {what}"
    if isinstance(e, api.NotFound):
        return NotFoundError(f"{prefix}: not found")
    if isinstance(e, (api.Unauthorized, api.Forbidden)):
        return AccessDeniedError(f"{prefix}: the credentials were rejected (HTTP {e.code}: {_api_reason(e)})")
    if isinstance(e, _TRANSIENT_API) or (isinstance(e, api.GoogleAPICallError) and _transient_status(e.code)):
        return TransientError(f"{prefix}: HTTP {e.code}: {_api_reason(e)}")
    if isinstance(e, api.GoogleAPICallError):
        return BackendError(f"{prefix}: HTTP {e.code}: {_api_reason(e)}")
    if isinstance(e, media.DataCorruption):
        return TransientError(f"{prefix}: checksum mismatch (data corrupted in transit)")
    if isinstance(e, media.InvalidResponse):
        status = getattr(getattr(e, "response", None), "status_code", None)
        cls = TransientError if _transient_status(status) else BackendError
        return cls(f"{prefix}: unexpected response (HTTP {status})")
    if isinstance(e, google.auth.exceptions.RefreshError):
        if getattr(e, "retryable", False):
            return TransientError(f"{prefix}: could not obtain an access token: {_scrub(e)}")
        return AccessDeniedError(f"{prefix}: the credentials were rejected: {_scrub(e)}")
    if isinstance(e, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return BackendError(f"{prefix}: the server's TLS certificate is not trusted: {_scrub(e)}")
    if isinstance(e, _TRANSIENT_NETWORK):
        return TransientError(f"{prefix}: {type(e).__name__}: {_scrub(e)}")
    return BackendError(f"{prefix}: {type(e).__name__}: {_scrub(e)}")


def _transient_status(status: int | None) -> bool:
    return status is not None and (status in (408, 429) or status >= 500)


def _api_reason(e: api.GoogleAPICallError) -> str:
    return _scrub(_METHOD_URL.sub("", e.message or "") or type(e).__name__)


def _scrub(e: object) -> str:
    text = _QUERY.sub("?...", str(e)).strip()
    line = text.splitlines()[0] if text else ""
    return line[:300]
