"""Database drivers: one module per dump tool, behind ``base.Driver``."""

from .base import Driver

__all__ = ["Driver"]
