"""A repository in an S3 bucket (AWS or compatible: MinIO, Ceph, moto), in restic's ``s3:`` layout."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from stash_runner.credentials import Credentials
from stash_runner.errors import BadInput

from .base import AccessDeniedError, Backend, BackendError, FileType, Handle, NotFoundError, TransientError
from .spec import BackendSpec

DEFAULT_CONNECTIONS = 5
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {"401", "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled", "AccountProblem"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "BadDigest", "IncompleteBody"}
_TRANSIENT_ERRORS = (
    botocore.exceptions.ConnectionError,  # endpoint unreachable, connection closed, timeouts
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,  # a body cut short while being read
    ConnectionError,
    TimeoutError,
)


def endpoint_url(endpoint: str, insecure_tls: bool = False) -> str | None:
    """Stash and restic accept an endpoint with or without a scheme; without one it is https."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        return None
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    return endpoint


def _is_aws(url: str | None) -> bool:
    return url is None or url.split("://", 1)[-1].split("/", 1)[0].endswith("amazonaws.com")


class S3Backend(Backend):
    detects_layout = True

    def __init__(self, client, bucket: str, prefix: str, location: str, connections: int, region: str = "",
                 ca_file: str | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = location
        self.connections = connections
        self.region = region
        self._ca_file = ca_file
        # Over plain HTTP botocore signs every body's SHA-256, which the server checks; a Content-MD5 on top would
        # only hash each pack a second time. Over HTTPS the body is not signed and the MD5 is the body's check.
        self._md5 = str(client.meta.endpoint_url).startswith("https:")

    @classmethod
    def from_spec(cls, spec: BackendSpec, secret: Credentials, where: str, *, timeout: float,
                  environ: Mapping[str, str]) -> S3Backend:
        url = endpoint_url(spec.endpoint)
        connections = spec.max_connections if spec.max_connections > 0 else DEFAULT_CONNECTIONS
        region = spec.region or secret.get("AWS_DEFAULT_REGION", "AWS_REGION", required=False) or ""
        if not region and not _is_aws(url):
            region = "us-east-1"  # compatible stores ignore it, but SigV4 needs one
        key_id = secret.get("AWS_ACCESS_KEY_ID", required=False)
        key = secret.get("AWS_SECRET_ACCESS_KEY", required=False)
        if bool(key_id) != bool(key):
            present, absent = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key_id else \
                ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            raise BadInput(f"{secret.ref}: data.{present} is set but data.{absent} is missing")
        if key_id:
            session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=key,
                                            aws_session_token=secret.get("AWS_SESSION_TOKEN", required=False))
        else:
            # The standard chain: environment, web identity (IRSA), instance profile.
            session = boto3.session.Session()
        verify: bool | str = True
        ca_file = None
        ca = secret.get_bytes("CA_CERT_DATA")
        if spec.insecure_tls:
            verify = False
        elif ca:
            # botocore wants a file; it is private to this run and removed on close.
            fd, ca_file = tempfile.mkstemp(prefix="stash-runner-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as f:
                f.write(ca)
            verify = ca_file
        config = botocore.config.Config(
            region_name=region or None,
            # Path-style for anything that is not AWS: MinIO and most compatible stores need it.
            s3={"addressing_style": "auto" if _is_aws(url) else "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},  # RetryBackend retries
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=connections + 4,
            # Newer botocore sends CRC trailers that many S3-compatible stores reject; we send Content-MD5.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        if spec.insecure_tls:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        client = session.client("s3", endpoint_url=url, verify=verify, config=config)
        host = url or "s3.amazonaws.com"
        where_path = "/".join(x for x in (spec.bucket, spec.prefix.strip("/")) if x)
        return cls(client, spec.bucket, spec.prefix, f"s3:{host}/{where_path}", connections, region, ca_file)

    # -- names -------------------------------------------------------------------------------------

    def _key(self, h: Handle) -> str:
        path = self.layout.path(h)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _dir(self, t: FileType) -> str:
        return f"{self.prefix}/{self.layout.dir(t)}/" if self.prefix else f"{self.layout.dir(t)}/"

    def _error(self, e: Exception, what: str) -> Exception:
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            desc = f"{code or status}" + (f" ({err['Message']})" if err.get("Message") else "")
            if code in _NOT_FOUND:
                return NotFoundError(f"{self.location}: {what}: not found")
            if code in _DENIED or status in (401, 403):
                return AccessDeniedError(f"{self.location}: {what}: access denied ({code or status}): "
                                         "the credentials were rejected or lack permission")
            if code in _TRANSIENT or status in (408, 429) or status >= 500:
                return TransientError(f"{self.location}: {what}: {desc}")
            return BackendError(f"{self.location}: {what}: {desc}")
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return AccessDeniedError(f"{self.location}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY in the storage Secret, or give the pod an identity")
        if isinstance(e, botocore.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
            # An untrusted certificate will not heal by retrying; any other TLS failure (an alert in
            # the handshake, a connection cut mid-way) may, and falls through to the retried errors.
            return BackendError(f"{self.location}: {what}: TLS failed ({e}); for a private CA put it in the "
                                "storage Secret's CA_CERT_DATA (or use insecureTLS / --insecure-tls)")
        if isinstance(e, _TRANSIENT_ERRORS):
            return TransientError(f"{self.location}: {what}: {type(e).__name__}: {e}")
        return BackendError(f"{self.location}: {what}: {type(e).__name__}: {e}")

    # -- the interface -----------------------------------------------------------------------------

    def save(self, h: Handle, data: bytes) -> None:
        kw = {"ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode()} if self._md5 else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(h), Body=data, ContentLength=len(data),
                                   ContentType="application/octet-stream", **kw)
        except Exception as e:
            raise self._error(e, f"save {h}") from None

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        kw = {}
        if length is not None:
            if length == 0:
                return b""
            kw["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kw["Range"] = f"bytes={offset}-"
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(h), **kw)
            with contextlib.closing(resp["Body"]) as body:
                data = body.read()
        except Exception as e:
            if isinstance(e, botocore.exceptions.ClientError) and \
                    e.response.get("Error", {}).get("Code") == "InvalidRange":
                raise BackendError(f"{self.location}: load {h}: the file is shorter than expected") from None
            raise self._error(e, f"load {h}") from None
        if length is not None and len(data) != length:
            raise TransientError(f"{self.location}: load {h}: got {len(data)} of {length} bytes")
        return data

    def stat(self, h: Handle) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(h))["ContentLength"])
        except Exception as e:
            raise self._error(e, f"stat {h}") from None

    def list(self, t: FileType) -> Iterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._dir(t)):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if name:
                        yield name, int(obj["Size"])
        except Exception as e:
            err = self._error(e, f"list {t.value}")
            if isinstance(err, NotFoundError):
                return  # no bucket: nothing in it
            raise err from None

    def remove(self, h: Handle) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(h))
        except Exception as e:
            err = self._error(e, f"remove {h}")
            if not isinstance(err, NotFoundError):
                raise err from None

    def create(self) -> None:
        """Make the bucket when it is missing and the credentials may."""
        try:
            # Not HeadBucket: listing needs only s3:ListBucket, which a repository needs anyway.
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            return
        except Exception as e:
            err = self._error(e, f"bucket {self.bucket}")
            if not isinstance(err, NotFoundError):
                raise err from None
        kw = {}
        if self.region and self.region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kw)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "BucketAlreadyOwnedByYou":
                return  # made concurrently by another run
            if code == "BucketAlreadyExists":
                raise BackendError(f"{self.location}: bucket name {self.bucket} is taken by another account") \
                    from None
            err = self._error(e, f"create bucket {self.bucket}")
            if isinstance(err, AccessDeniedError):
                raise AccessDeniedError(f"{self.location}: bucket {self.bucket} does not exist and these "
                                        "credentials may not create it") from None
            raise err from None
        except Exception as e:
            raise self._error(e, f"create bucket {self.bucket}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self._ca_file:
            with contextlib.suppress(OSError):
                os.unlink(self._ca_file)
            self._ca_file = None
