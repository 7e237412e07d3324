"""Tree blobs: JSON lists of nodes, serialised exactly as restic does (field order and all)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# Go's os.FileMode for a directory with 0755 permissions.
DIR_MODE = 0x80000000 | 0o755
FILE_MODE = 0o644


@dataclass
class Node:
    name: str
    type: str  # "file" | "dir" | others restic knows (symlink, dev, ...)
    mode: int = 0
    mtime: str = ""
    atime: str = ""
    ctime: str = ""
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: list[str] | None = None
    subtree: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d: dict = {"name": self.name, "type": self.type}
        if self.mode:
            d["mode"] = self.mode
        for k in ("mtime", "atime", "ctime"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        d["uid"] = self.uid
        d["gid"] = self.gid
        d.update({k: v for k, v in self.extra.items() if k in _BEFORE_SIZE})
        if self.size:
            d["size"] = self.size
        d.update({k: v for k, v in self.extra.items() if k not in _BEFORE_SIZE})
        if self.type == "file":
            d["content"] = list(self.content or [])  # restic's check rejects a null file content
        else:
            d["content"] = self.content
        if self.subtree is not None:
            d["subtree"] = self.subtree
        return d

    @classmethod
    def from_json(cls, d: dict) -> Node:
        known = {"name", "type", "mode", "mtime", "atime", "ctime", "uid", "gid", "size", "content", "subtree"}
        return cls(
            name=d["name"],
            type=d["type"],
            mode=d.get("mode", 0),
            mtime=d.get("mtime", ""),
            atime=d.get("atime", ""),
            ctime=d.get("ctime", ""),
            uid=d.get("uid", 0),
            gid=d.get("gid", 0),
            size=d.get("size", 0),
            content=d.get("content"),
            subtree=d.get("subtree"),
            extra={k: v for k, v in d.items() if k not in known},
        )


_BEFORE_SIZE = ("user", "group", "inode", "device_id")


def encode_tree(nodes: list[Node]) -> bytes:
    """The exact bytes of a tree blob: nodes sorted by name, compact JSON, newline."""
    nodes = sorted(nodes, key=lambda n: n.name.encode())
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError("tree has duplicate node names")
    body = json.dumps({"nodes": [n.to_json() for n in nodes]}, separators=(",", ":"), ensure_ascii=False)
    return body.encode() + b"\n"


def decode_tree(data: bytes) -> list[Node]:
    return [Node.from_json(n) for n in json.loads(data).get("nodes") or []]
