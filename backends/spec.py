"""Where a repository lives: the provider and its place, as a Repository's spec.backend or Stash's flags say."""

from __future__ import annotations

import os
from dataclasses import dataclass

PROVIDERS = ("local", "s3", "gcs", "azure", "b2", "swift", "rest")


@dataclass(frozen=True)
class BackendSpec:
    """Where a repository lives. For ``local``, bucket is the mount path and prefix the sub-path."""

    provider: str
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    max_connections: int = 0
    insecure_tls: bool = False

    def describe(self) -> str:
        if self.provider == "local":
            return f"local:{os.path.join(self.bucket, self.prefix) if self.prefix else self.bucket}"
        where = "/".join(x for x in (self.bucket, self.prefix.strip("/")) if x)
        return f"{self.provider}:{where}"
