"""Which indices a backup takes: the cluster's indices, and the user's patterns over them.

By default every open index but system and hidden ones (a name starting with ``.``, or ``index.hidden: true``):
those belong to the cluster (security, Kibana, tasks, data stream backing indices) and restoring them into
another cluster breaks it. ``--indices`` takes comma-separated patterns (``*`` and ``?``, ``-pattern``
excludes); a name given without a wildcard is taken even when hidden, as Elasticsearch's own APIs do.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from stash_runner.errors import BadInput

from .connection import SearchClient

log = logging.getLogger("stash_runner")


@dataclass
class IndexInfo:
    name: str
    hidden: bool = False  # a system (dot) or hidden index
    open: bool = True
    documents: int = 0
    store_bytes: int = 0  # the primaries' store size: what a dump of it needs on disk, roughly


def list_indices(client: SearchClient) -> list[IndexInfo]:
    """Every index of the cluster, hidden ones included, sorted by name."""
    rows = client.request("GET", "/_cat/indices", params={
        "format": "json", "bytes": "b", "h": "index,status,docs.count,pri.store.size", "expand_wildcards": "all"})
    hidden = client.request("GET", "/_all/_settings/index.hidden", params={
        "expand_wildcards": "all", "flat_settings": "true"}) or {}
    out = []
    for row in rows or []:
        name = row["index"]
        flag = ((hidden.get(name) or {}).get("settings") or {}).get("index.hidden") in ("true", True)
        out.append(IndexInfo(name=name, hidden=flag or name.startswith("."), open=row.get("status") != "close",
                             documents=int(row.get("docs.count") or 0),
                             store_bytes=int(row.get("pri.store.size") or 0)))
    return sorted(out, key=lambda i: i.name)


def select(indices: list[IndexInfo], patterns: str, include_hidden: bool, where: str) -> list[IndexInfo]:
    """The indices ``patterns`` picks (all when empty), without hidden ones unless ``include_hidden`` or named
    exactly; closed indices are left out with a warning (they cannot be read). BadInput when a name given
    exactly is not in the cluster."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    include = [p for p in wanted if not p.startswith("-")] or ["*"]
    exclude = [p[1:] for p in wanted if p.startswith("-")]
    by_name = {i.name: i for i in indices}
    for p in include:
        if not _wildcard(p) and p not in by_name:
            raise BadInput(f"--indices: {where} has no index {p!r}")
    chosen = []
    for info in indices:
        exact = info.name in include
        if not exact and not any(fnmatch.fnmatchcase(info.name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(info.name, p) for p in exclude):
            continue
        if info.hidden and not (include_hidden or exact):
            continue
        if not info.open:
            log.warning("index %s is closed: it is not backed up (open it to include it)", info.name)
            continue
        chosen.append(info)
    if wanted and not chosen:
        raise BadInput(f"--indices {patterns!r}: no open index of {where} matches")
    return chosen


def _wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
