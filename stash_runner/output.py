"""Per-host results in the shape of Stash's ``output.json``, which its update-status step reads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .timefmt import go_duration
from .units import stash_bytes, stash_seconds

OUTPUT_FILE = "output.json"
APPBINDING_REF = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding"}


@dataclass
class SnapshotStats:
    name: str
    path: str
    total_size: int
    uploaded: int
    processing_seconds: float
    total_files: int = 1
    new_files: int = 0
    modified_files: int = 0
    unmodified_files: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "totalSize": stash_bytes(self.total_size),
            "uploaded": stash_bytes(self.uploaded),
            "processingTime": stash_seconds(self.processing_seconds),
            "fileStats": {
                "totalFiles": self.total_files,
                "newFiles": self.new_files,
                "modifiedFiles": self.modified_files,
                "unmodifiedFiles": self.unmodified_files,
            },
        }


@dataclass
class HostResult:
    hostname: str
    phase: str  # Succeeded | Failed
    duration_seconds: float
    error: str = ""
    snapshots: list[SnapshotStats] = field(default_factory=list)

    def to_json(self) -> dict:
        d: dict = {"hostname": self.hostname, "phase": self.phase}
        if self.snapshots:
            d["snapshots"] = [s.to_json() for s in self.snapshots]
        d["duration"] = go_duration(self.duration_seconds)
        if self.error:
            d["error"] = self.error
        return d


def write_output(output_dir: str, target_name: str, host: HostResult, repository: dict | None = None) -> str:
    """Write ``output.json`` as Stash does: {"targetStatus": {"ref": ..., "stats": [host]}}, plus
    {"repository": {integrity, size, snapshotCount, snapshotsRemovedOnLastCleanup}} after post-backup actions."""
    doc: dict = {"targetStatus": {"ref": {**APPBINDING_REF, "name": target_name}, "stats": [host.to_json()]}}
    if repository is not None:
        doc["repository"] = repository
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, OUTPUT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    # The update-status step may run as another user (Stash Jobs run as UID 65535).
    os.chmod(tmp, 0o666)
    os.replace(tmp, path)
    return path
