"""Snapshot files and how to pick one (by ID prefix, or the latest for a host and path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .timefmt import parse_time


@dataclass
class Snapshot:
    time: str
    tree: str
    paths: list[str]
    hostname: str = ""
    username: str = ""
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    uid: int = 0
    gid: int = 0
    excludes: list[str] = field(default_factory=list)
    original: str | None = None
    program_version: str = ""
    id: str = ""  # the file name; not part of the JSON

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def datetime(self) -> datetime:
        return parse_time(self.time)

    def to_json(self) -> dict:
        # Field order and omitempty rules as restic's Go struct has them.
        d: dict = {"time": self.time}
        if self.parent:
            d["parent"] = self.parent
        d["tree"] = self.tree
        d["paths"] = self.paths
        if self.hostname:
            d["hostname"] = self.hostname
        if self.username:
            d["username"] = self.username
        if self.uid:
            d["uid"] = self.uid
        if self.gid:
            d["gid"] = self.gid
        if self.excludes:
            d["excludes"] = self.excludes
        if self.tags:
            d["tags"] = self.tags
        if self.original:
            d["original"] = self.original
        if self.program_version:
            d["program_version"] = self.program_version
        return d

    @classmethod
    def from_json(cls, d: dict, snapshot_id: str) -> Snapshot:
        return cls(
            time=d["time"],
            tree=d["tree"],
            paths=list(d.get("paths") or []),
            hostname=d.get("hostname", ""),
            username=d.get("username", ""),
            tags=list(d.get("tags") or []),
            parent=d.get("parent"),
            uid=d.get("uid", 0),
            gid=d.get("gid", 0),
            excludes=list(d.get("excludes") or []),
            original=d.get("original"),
            program_version=d.get("program_version", ""),
            id=snapshot_id,
        )

    def summary_json(self) -> dict:
        """What ``snapshots --json`` prints: restic's JSON plus id and short_id."""
        return {**self.to_json(), "id": self.id, "short_id": self.short_id}
