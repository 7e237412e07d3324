"""What backends and drivers read their credentials through: a named set of keys.

A Kubernetes Secret and a Secret mounted as a directory (``stash.objects.Secret``) are both this; the
backends and drivers below the Stash layer only need the keys and a name for messages.
"""

from __future__ import annotations

from typing import Protocol


class Credentials(Protocol):
    #: names the source in messages ("Secret ns/name", "secret dir /path"), never a value
    ref: str

    def get(self, *keys: str, required: bool = True) -> str | None:
        """The first of ``keys`` present, as text; BadInput naming the source and keys if required and absent."""

    def get_bytes(self, key: str) -> bytes | None:
        """A key's raw bytes (certificates, JSON keys), or None."""
