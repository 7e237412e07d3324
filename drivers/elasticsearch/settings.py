"""Which of a dumped index's settings a restore can give the new index, and which wait until its documents are in.

``GET /<index>/_settings`` returns what the cluster made as well as what the user chose: the index's UUID, its
creation date and version, the source of a shrink or split. Those are refused (or meaningless) when creating an
index, so they are dropped. Settings that would slow the load or refuse it (replicas, refresh, ingest pipelines,
write blocks) are set for loading and given their dumped values once the documents are in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: set by the cluster, never by whoever creates an index (exact keys, flat form)
DROPPED = frozenset({
    "index.uuid",
    "index.creation_date",
    "index.creation_date_string",
    "index.provided_name",
    "index.history.uuid",
    "index.verified_before_close",
    # set by the disk watermark when a disk fills up, and lifted by it: not the index's own
    "index.blocks.read_only_allow_delete",
})
#: prefixes of the same
DROPPED_PREFIXES = (
    "index.version.",
    "index.resize.",
    "index.shrink.",
    "index.routing.allocation.initial_recovery.",
)
#: applied last: a write or read block would refuse the load, the aliases or the final count
BLOCKS_PREFIX = "index.blocks."
#: what the index has while its documents are loaded; each gets its dumped value (or its default) afterwards.
#: No replicas and no refreshes make the load about twice as fast; the pipelines already ran on these documents.
LOADING: dict[str, Any] = {
    "index.number_of_replicas": "0",
    "index.auto_expand_replicas": "false",
    "index.refresh_interval": "-1",
    "index.default_pipeline": "_none",
    "index.final_pipeline": "_none",
}


@dataclass
class RestoreSettings:
    """A dumped index's settings, split by when a restore applies them (all in flat form)."""

    create: dict[str, Any] = field(default_factory=dict)  # with the index, LOADING included
    after_load: dict[str, Any] = field(default_factory=dict)  # LOADING's keys back to their dumped value or None
    blocks: dict[str, Any] = field(default_factory=dict)  # the dumped index.blocks.*, last


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (as ``GET _settings`` returns them) in flat form: ``{"index.number_of_shards": "2"}``.
    Lists (an analyzer's filters) are values, not levels."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def dropped(key: str) -> bool:
    """Whether a flat setting is the cluster's own, which an index cannot be created with."""
    return key in DROPPED or key.startswith(DROPPED_PREFIXES)


def restore_settings(settings: Mapping[str, Any]) -> RestoreSettings:
    """Split a dumped index's settings (nested or flat) into what goes with ``PUT /<index>``, what is set after
    the load and the blocks."""
    flat = flatten(settings)
    out = RestoreSettings()
    for key, value in flat.items():
        if dropped(key):
            continue
        if key.startswith(BLOCKS_PREFIX):
            out.blocks[key] = value
        elif key not in LOADING:
            out.create[key] = value
    out.create.update(LOADING)
    # None resets a setting the dumped index did not have to the cluster's default.
    out.after_load = {key: flat.get(key) for key in LOADING}
    return out
