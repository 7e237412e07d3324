"""From a backend description and its secret to a Backend."""

from __future__ import annotations

import os
from collections.abc import Mapping

from stash_runner.credentials import Credentials
from stash_runner.errors import BadInput

from .base import Backend
from .local import LocalBackend
from .retry import RetryBackend, RetryPolicy
from .spec import BackendSpec

SUPPORTED = ("local", "s3", "gcs", "azure")


def open_backend(spec: BackendSpec, secret: Credentials, where: str, policy: RetryPolicy | None = None,
                 environ: Mapping[str, str] | None = None) -> Backend:
    """``where`` names the object or flags the spec came from, for error messages.

    Remote providers are wrapped in the retry policy; ``environ`` supplies what a provider may take
    from the environment when the secret lacks it (the standard credential chains, emulator hosts).
    """
    policy = policy or RetryPolicy()
    environ = os.environ if environ is None else environ
    if spec.provider == "local":
        if not spec.bucket:
            raise BadInput(f"{where}: the local mount path is missing")
        root = os.path.join(spec.bucket, spec.prefix.lstrip("/")) if spec.prefix else spec.bucket
        return LocalBackend(root)
    if spec.provider not in SUPPORTED:
        raise BadInput(f"{where}: provider {spec.provider!r} is not supported by this version "
                       f"(supported: {', '.join(SUPPORTED)})")
    if not spec.bucket:
        field = "container" if spec.provider == "azure" else "bucket"
        raise BadInput(f"{where}: the {spec.provider} {field} is missing")
    # Imported here: each SDK is heavy, and a run needs only one of them.
    if spec.provider == "s3":
        from .s3 import S3Backend as provider
    elif spec.provider == "gcs":
        from .gcs import GCSBackend as provider
    else:
        from .azure import AzureBackend as provider
    inner = provider.from_spec(spec, secret, where, timeout=policy.timeout, environ=environ)
    return RetryBackend(inner, policy)
