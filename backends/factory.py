"""From a backend description and its secret to a Backend."""

from __future__ import annotations

import os

from stash_runner.errors import BadInput
from stash_runner.objects import BackendSpec, Secret

from .base import Backend
from .local import LocalBackend


def open_backend(spec: BackendSpec, secret: Secret, where: str) -> Backend:
    """``where`` names the object or flags the spec came from, for error messages."""
    if spec.provider == "local":
        if not spec.bucket:
            raise BadInput(f"{where}: the local mount path is missing")
        root = os.path.join(spec.bucket, spec.prefix.lstrip("/")) if spec.prefix else spec.bucket
        return LocalBackend(root)
    raise BadInput(f"{where}: provider {spec.provider!r} is not supported by this version (supported: local)")
