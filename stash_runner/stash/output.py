"""Per-host results in the shape of Stash's ``output.json``, which its update-status step reads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stash_runner.errors import BadInput
from stash_runner.restic.timefmt import go_duration, parse_go_duration
from stash_runner.units import parse_stash_bytes, parse_stash_seconds, stash_bytes, stash_seconds

if TYPE_CHECKING:
    from stash_runner.restic.archiver import BackupResult

OUTPUT_FILE = "output.json"
#: output.json's marker for "this step already did what an update-status step would": it reported its hosts
#: (session status in a cluster; metrics in both modes) and ran the post-backup actions that fell to it
REPORTED = "statusReported"
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

    @classmethod
    def from_result(cls, result: BackupResult) -> SnapshotStats:
        """A snapshot's figures as Stash reports them: its files are all new, or (data already stored) all
        modified, since a dump has no unchanged files to skip."""
        st = result.stats
        new = st.blobs_known == 0
        return cls(
            name=result.snapshot.id, path=result.snapshot.paths[0], total_size=st.bytes_read,
            uploaded=st.bytes_stored, processing_seconds=st.elapsed, total_files=st.files,
            new_files=st.files if new else 0, modified_files=0 if new else st.files,
        )

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

    @classmethod
    def from_json(cls, d: dict) -> SnapshotStats:
        fs = d.get("fileStats") or {}
        return cls(name=str(d.get("name") or ""), path=str(d.get("path") or ""),
                   total_size=parse_stash_bytes(d.get("totalSize") or "0 B"),
                   uploaded=parse_stash_bytes(d.get("uploaded") or "0 B"),
                   processing_seconds=parse_stash_seconds(d.get("processingTime") or "0:00"),
                   total_files=int(fs.get("totalFiles") or 0), new_files=int(fs.get("newFiles") or 0),
                   modified_files=int(fs.get("modifiedFiles") or 0),
                   unmodified_files=int(fs.get("unmodifiedFiles") or 0))


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

    @classmethod
    def from_json(cls, d: dict) -> HostResult:
        return cls(hostname=str(d.get("hostname") or ""), phase=str(d.get("phase") or "Failed"),
                   duration_seconds=parse_go_duration(str(d.get("duration") or "0s")),
                   error=str(d.get("error") or ""),
                   snapshots=[SnapshotStats.from_json(s) for s in d.get("snapshots") or []])


def write_output(output_dir: str, target_name: str, host: HostResult | list[HostResult],
                 repository: dict | None = None, *, reported: bool = False, ref: dict | None = None) -> str:
    """Write ``output.json`` as Stash does: {"targetStatus": {"ref": ..., "stats": [host]}}, plus
    {"repository": {integrity, size, snapshotCount, snapshotsRemovedOnLastCleanup}} after post-backup actions.

    ``reported``: this run already reported its hosts and ran the post-backup actions that fell to it (in a
    cluster and offline alike), so an update-status step after it has nothing left to do; false while any of
    that is still owed (Stash ignores the extra field).
    """
    hosts = host if isinstance(host, list) else [host]
    doc: dict = {"targetStatus": {"ref": ref or {**APPBINDING_REF, "name": target_name},
                                  "stats": [h.to_json() for h in hosts]}}
    if repository is not None:
        doc["repository"] = repository
    if reported:
        doc[REPORTED] = True
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, OUTPUT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    # The update-status step may run as another user (Stash Jobs run as UID 65535).
    os.chmod(tmp, 0o666)
    os.replace(tmp, path)
    return path


def read_output(output_dir: str) -> dict:
    """``output.json`` of a backup or restore step (ours or Stash's image's)."""
    path = os.path.join(output_dir, OUTPUT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BadInput(f"--output-dir {output_dir}: no {OUTPUT_FILE} (did the backup/restore step run?)") from None
    except (OSError, ValueError) as e:
        raise BadInput(f"--output-dir {output_dir}: {OUTPUT_FILE} cannot be read: {e}") from None
    stats = (doc.get("targetStatus") or {}).get("stats") if isinstance(doc, dict) else None
    if not isinstance(stats, list):
        raise BadInput(f"--output-dir {output_dir}: {OUTPUT_FILE}: targetStatus.stats is missing")
    return doc
