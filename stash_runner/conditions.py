"""A condition as Stash's objects carry them (kmodules' Condition: type, status, reason, message); shared by the
session status and the hooks, which word their own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    type: str
    ok: bool
    reason: str
    message: str
