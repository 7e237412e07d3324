"""Storage backends: each provider is one module behind the small interface in ``base``."""

from .base import Backend, FileType, Handle, NotFoundError
from .factory import open_backend

__all__ = ["Backend", "FileType", "Handle", "NotFoundError", "open_backend"]
