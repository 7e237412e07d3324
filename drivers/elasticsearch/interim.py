"""Stash's interim-volume flow: ``multielasticdump`` writes the indices into a directory that is backed up as a
directory snapshot, and loads them back from it. Stash's ``backup-es``/``restore-es`` do the same, with defects
this version fixes:

- TLS is verified (Stash sets ``NODE_TLS_REJECT_UNAUTHORIZED=0`` always and passes the CA as ``--ca-input``,
  an option elasticdump does not know): the CA goes in as ``--input-ca``/``--output-ca`` with ``--tlsAuth=true``,
  and verification is off only when the AppBinding asks for insecure TLS.
- The auth file is written so that elasticdump reads back the exact credentials (see
  ``elasticdump.auth_value``), and only when there are credentials; it and the CA live in a private temp dir
  removed afterwards.
- Only the selected indices are dumped (Stash dumps every index, system ones included), with analyzers and
  aliases, in pages of 5000 documents (elasticdump's default is 100); a restore leaves out the system and hidden
  indices a dump of Stash's holds, unless the user's ``--match`` names them.
- ``--includeType`` makes multielasticdump ignore the failures of its per-index processes (it turns every
  ``ignore*`` option it does not name on, ``ignoreChildError`` included): a failed index would leave no data
  file and exit 0. We say which types we want with the ``ignore*`` options instead, and a user's
  ``--includeType`` gets ``childerror`` added to it, which turns that option back off.
- elasticdump exits 0 when the cluster refuses an index's settings or mapping, when it rejects documents and
  when a line of a dump file is not JSON. A run that logged "Error Emitted" fails, and every loaded index is
  compared with its dump: document count, shard count, analysis settings, field types, aliases.
- The interim volume's free space is checked before it is emptied; the load refuses existing indices unless
  overwriting (upstream fails half-way on them, elasticsearch-dump#765).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from types import TracebackType

from stash_runner.errors import BadInput, SnapshotNotFound, ToolFailed

from ..base import Item, SnapshotFiles
from . import elasticdump
from .connection import SearchClient, Server
from .indices import IndexInfo

log = logging.getLogger("stash_runner")

META_FILE = "meta.txt"  # Stash's apis.ESMetaFile: the interim volume's size
#: per-index file suffixes multielasticdump writes, besides ``<idx>.json`` for the documents
TYPE_SUFFIXES = ("settings", "mapping", "analyzer", "alias", "template", "index")
#: the types we dump: what Stash's defaults take (settings, mappings, documents) with analyzers and aliases,
#: without legacy templates (cluster-wide, and a dump fails on a cluster without any)
DUMP_TYPES = (("ignoreTemplate", "true"), ("ignoreAnalyzer", "false"), ("ignoreAlias", "false"))


def empty_dir(path: str) -> None:
    """Remove everything inside ``path``, creating it if missing. The directory itself stays: it may be a
    volume's mount point."""
    if os.path.abspath(path) == "/":
        raise BadInput("the interim directory cannot be /: it is emptied before and after every run")
    os.makedirs(path, exist_ok=True)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def check_space(directory: str, needed: int) -> None:
    """BadInput when ``directory``'s filesystem cannot hold ``needed`` bytes. What the directory already holds
    counts as free: it is emptied before the dump."""
    probe = directory
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    if os.path.isdir(directory):
        free += _disk_usage(directory)
    if needed > free:
        raise BadInput(f"interim volume {directory} has {_human(free)} free, the indices to dump hold "
                       f"{_human(needed)}: give a larger interim volume")


def _disk_usage(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# -- backup ---------------------------------------------------------------------------------------------------


class InterimDump:
    """A dump of ``indices`` into ``interim_dir`` by multielasticdump, stored as that directory (one item)."""

    def __init__(self, server: Server, indices: list[IndexInfo], *, interim_dir: str, scratch_dir: str | None,
                 es_args: str = "", meta: str = "", target: str, tool: str | None = None):
        self.server = server
        self.indices = list(indices)
        self.interim_dir = os.path.abspath(interim_dir)
        self.scratch_dir = scratch_dir
        self.es_args = es_args
        self.meta = meta
        self.target = target
        self.tool = tool
        self._run: elasticdump.Run | None = None
        self._secrets: elasticdump.AuthFiles | None = None
        self._error: BaseException | None = None
        self._done = False

    def __enter__(self) -> InterimDump:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._run is not None:
                self._run.stop()
        finally:
            try:
                empty_dir(self.interim_dir)  # the data is in the repository by then, or the backup failed
            finally:
                if self._secrets is not None:
                    self._secrets.remove()

    def items(self) -> Iterator[Item]:
        """Run the dump to its end, then give the directory (the backup reads it after)."""
        try:
            self._dump()
        except Exception as e:  # noqa: BLE001 - kept for finish(), which the flow calls next
            self._error = e
            return
        self._done = True
        yield Item(path=self.interim_dir, directory=self.interim_dir)

    def finish(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._done:
            raise ToolFailed(f"the dump of {self.target} did not run")

    def _dump(self) -> None:
        tokens = elasticdump.user_args(self.es_args)
        elasticdump.check_url(self.server)
        check_space(self.interim_dir, sum(i.store_bytes for i in self.indices))
        empty_dir(self.interim_dir)
        names = [i.name for i in self.indices]
        if names:
            self._secrets = elasticdump.AuthFiles(self.server, self.scratch_dir)
            argv = [elasticdump.tool_path(self.tool), "--direction=dump", f"--input={self.server.url}",
                    f"--output={self.interim_dir}"]
            if elasticdump.option(tokens, "match") is None:
                argv.append(f"--match={elasticdump.match_regex(names)}")
            argv += elasticdump.common_args(tokens, "input", self._secrets.ca_file, self._secrets.auth_file, DUMP_TYPES)
            log.info("dumping %d indices of %s into %s with multielasticdump", len(names), self.target,
                     self.interim_dir)
            started = time.monotonic()
            self._run = elasticdump.Run(argv, elasticdump.tool_env(self.server), elasticdump.secrets_of(self.server))
            self._run.wait()
            self._secrets.remove()
            self._check_files(tokens, names)
            log.info("multielasticdump wrote %s in %.1f s", _human(_disk_usage(self.interim_dir)),
                     time.monotonic() - started)
        else:
            log.warning("no index of %s to back up: the snapshot holds an empty directory", self.target)
        if self.meta:
            with open(os.path.join(self.interim_dir, META_FILE), "w") as f:
                f.write(self.meta)  # exactly the text, as Stash writes it

    def _check_files(self, tokens: list[str], names: list[str]) -> None:
        """With our type options, every selected index has its settings, mapping and data files: a dump that
        exits 0 without them is not a backup."""
        if not elasticdump.own_types(tokens) or elasticdump.option(tokens, "match") is not None:
            return
        present = set(os.listdir(self.interim_dir))
        missing = [f"{n}{suffix}" for n in names for suffix in (".json", ".mapping.json", ".settings.json")
                   if f"{n}{suffix}" not in present and f"{n}{suffix}.gz" not in present]  # gz: --fsCompress
        if missing:
            raise ToolFailed(f"multielasticdump exited 0 but did not write {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


# -- restore --------------------------------------------------------------------------------------------------


def dump_indices(directory: str) -> dict[str, str | None]:
    """The indices of a multielasticdump directory, each with its data file (None without one). Names may hold
    dots: ``logs.2024.mapping.json`` is index ``logs.2024``."""
    found: dict[str, str | None] = {}
    for name in sorted(os.listdir(directory)):
        base = name[:-3] if name.endswith(".gz") else name
        if not base.endswith(".json") or not os.path.isfile(os.path.join(directory, name)):
            continue
        stem = base[: -len(".json")]
        kind, _, rest = stem.rpartition(".")
        if kind and rest in TYPE_SUFFIXES:
            found.setdefault(kind, None)
        elif stem:
            found[stem] = os.path.join(directory, name)
    return found


def _type_file(directory: str, index: str, kind: str) -> str | None:
    for name in (f"{index}.{kind}.json", f"{index}.{kind}.json.gz"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def _hidden(directory: str, index: str) -> bool:
    """A system or hidden index: a dot name, or ``index.hidden`` in its dumped settings."""
    if index.startswith("."):
        return True
    try:
        settings = (_read_dumped(directory, index, "settings").get("settings") or {}).get("index") or {}
    except (OSError, ValueError, AttributeError):
        return False  # the load reports a broken file
    return str(settings.get("hidden", "")).lower() == "true"


def _load_types(directory: str, indices: Iterable[str]) -> list[tuple[str, str]]:
    """The types we load; ToolFailed when the dump lacks an index's settings, mapping or data file.

    Legacy templates (cluster-wide) are not loaded. Nor is the analyzer type: the settings file holds the same
    ``index.analysis``, applied when the index is created, and loading it again closes and reopens every index.
    Aliases when the dump has them (Stash's dumps do not): an index without an alias file then gets an empty one,
    as multielasticdump writes for an index without aliases (it fails on a missing file)."""
    names = sorted(indices)
    missing = [f"{n}.{kind}.json" for n in names for kind in ("settings", "mapping")
               if _type_file(directory, n, kind) is None]
    missing += [f"{n}.json" for n in names if not any(os.path.isfile(os.path.join(directory, f"{n}.{ext}"))
                                                      for ext in ("json", "json.gz"))]
    if missing:
        raise ToolFailed(f"the dump is incomplete: no {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    with_alias = [n for n in names if _type_file(directory, n, "alias") is not None]
    if with_alias:
        for n in names:
            if n not in with_alias:
                with open(os.path.join(directory, f"{n}.alias.json"), "w") as f:
                    f.write('"{}"\n')
    return [("ignoreTemplate", "true"), ("ignoreAnalyzer", "true"), ("ignoreAlias", "false" if with_alias else "true")]


def _count_lines(path: str) -> int:
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


def _dump_root(files: SnapshotFiles, interim_dir: str) -> str:
    """The snapshot's directory holding the dump: the interim dir, or the one path a snapshot was taken at
    (Stash's /stash-tmp/stash-interim-volume/data restores into any interim dir)."""
    if files.files(interim_dir):
        return interim_dir
    if len(files.paths) == 1 and files.files(files.paths[0]):
        return files.paths[0]
    raise SnapshotNotFound(f"the snapshot holds no multielasticdump directory at {interim_dir} (its paths: "
                           f"{', '.join(files.paths) or 'none'})")


def _path(name: str) -> str:
    return "/" + urllib.parse.quote(name, safe="")


def _choose(directory: str, tokens: list[str], root: str) -> dict[str, str | None]:
    """The dump's indices to load: the user's --match picks them, else every one but system and hidden ones
    (Stash's dumps hold those too; loading them into a running cluster breaks it)."""
    indices = dump_indices(directory)
    user_match = elasticdump.option(tokens, "match")
    if user_match:
        try:
            pattern = re.compile(user_match, re.IGNORECASE)
        except re.error:
            return indices  # a JavaScript-only pattern: multielasticdump applies it, we check every index
        return {k: v for k, v in indices.items() if pattern.search(k)}
    hidden = sorted(n for n in indices if _hidden(directory, n))
    if hidden:
        log.warning("the dump holds system or hidden indices, not restored: %s (name them with --es-args "
                    "--match to restore them)", ", ".join(hidden))
    chosen = {k: v for k, v in indices.items() if k not in hidden}
    if not chosen:
        raise SnapshotNotFound(f"the snapshot's {root} holds no index to restore"
                               + (f" (only hidden ones: {', '.join(hidden)})" if hidden else ""))
    return chosen


def restore_interim(server: Server, client: SearchClient, files: SnapshotFiles, *, interim_dir: str,
                    scratch_dir: str | None, es_args: str = "", overwrite: bool = False, target: str,
                    tool: str | None = None) -> dict[str, int]:
    """Extract the snapshot's dump into ``interim_dir`` and load it with multielasticdump; every index's count
    is checked against its data file. Returns {index: documents}."""
    interim_dir = os.path.abspath(interim_dir)
    tokens = elasticdump.user_args(es_args)
    elasticdump.check_url(server)
    secrets: elasticdump.AuthFiles | None = None
    run: elasticdump.Run | None = None
    try:
        empty_dir(interim_dir)
        root = _dump_root(files, interim_dir)
        files.extract(root, interim_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(interim_dir, META_FILE))
        indices = _choose(interim_dir, tokens, root)
        types = _load_types(interim_dir, indices) if elasticdump.own_types(tokens) else []
        _clear_existing(client, sorted(indices), overwrite, target)

        secrets = elasticdump.AuthFiles(server, scratch_dir)
        argv = [elasticdump.tool_path(tool), "--direction=load", f"--input={interim_dir}", f"--output={server.url}"]
        if elasticdump.option(tokens, "match") is None:
            argv.append(f"--match={elasticdump.match_regex(indices)}")
        argv += elasticdump.common_args(tokens, "output", secrets.ca_file, secrets.auth_file, types)
        log.info("loading %d indices into %s with multielasticdump", len(indices), target)
        started = time.monotonic()
        run = elasticdump.Run(argv, elasticdump.tool_env(server), elasticdump.secrets_of(server))
        run.wait()
        log.info("multielasticdump loaded %d indices in %.1f s", len(indices), time.monotonic() - started)
        return _verify(client, interim_dir, indices, tokens, run)
    finally:
        try:
            if run is not None:
                run.stop()
        finally:
            try:
                empty_dir(interim_dir)
            finally:
                if secrets is not None:
                    secrets.remove()


def _clear_existing(client: SearchClient, names: list[str], overwrite: bool, target: str) -> None:
    """Existing indices: BadInput (nothing loaded) unless overwriting, then they are deleted (multielasticdump's
    load fails on them). A name that is an alias of the cluster is refused either way."""
    existing, aliases = [], []
    for name in names:
        found = client.request("GET", _path(name), params={"expand_wildcards": "all"}, ignore=(404,))
        if found is None:
            continue
        (existing if name in found else aliases).append(name)
    if aliases:
        raise BadInput(f"{target} has aliases named as indices of the dump: {', '.join(aliases)}")
    if existing and not overwrite:
        raise BadInput(f"{target} already has indices of the dump: {', '.join(existing)} (nothing was loaded; "
                       "restore with overwrite to replace them)")
    for name in existing:
        log.info("deleting index %s of %s (overwrite)", name, target)
        client.request("DELETE", _path(name))


def _verify(client: SearchClient, directory: str, indices: dict[str, str | None], tokens: list[str],
            run: elasticdump.Run) -> dict[str, int]:
    """Check what multielasticdump loaded: it exits 0 when the cluster refuses an index's settings or mapping
    (the index is then created by the documents, with defaults and dynamic fields) and when it rejects documents
    (elasticdump's ``ignore-es-write-errors`` defaults to true, and multielasticdump cannot pass it on). So every
    index must hold as many documents as its data file and, when we chose the types, its dumped shard count,
    analysis settings, field types and aliases."""
    out: dict[str, int] = {}
    why = f" (multielasticdump: {run.summary()})" if run.errors else ""
    for name, data_file in sorted(indices.items()):
        client.request("POST", _path(name) + "/_refresh")
        count = int(client.request("GET", _path(name) + "/_count")["count"])
        if elasticdump.data_wanted(tokens):
            expected = _count_lines(data_file) if data_file else 0
            if count != expected:
                raise ToolFailed(f"index {name}: {count} documents after the load, its dump holds {expected}{why}")
        if elasticdump.own_types(tokens):
            problem = _compare(client, directory, name)
            if problem:
                raise ToolFailed(f"index {name}: {problem}: multielasticdump did not load it{why}")
        out[name] = count
    return out


def _read_dumped(directory: str, index: str, kind: str) -> dict:
    """A dumped settings/mapping/alias object (settings and aliases are written as a JSON string of JSON)."""
    path = _type_file(directory, index, kind)
    if path is None:
        return {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        value = json.loads(f.readline() or "{}")
    if isinstance(value, str):
        value = json.loads(value)
    return value.get(index, {}) if isinstance(value, dict) else {}


def _field_types(mappings: dict, prefix: str = "") -> dict[str, str]:
    """{field path: type} of a mapping, multi-fields included (``title.raw``)."""
    props = mappings.get("properties")
    if props is None and len(mappings) == 1:  # a mapping type (a dump of Elasticsearch 6)
        inner = next(iter(mappings.values()))
        props = inner.get("properties") if isinstance(inner, dict) else None
    out: dict[str, str] = {}
    for field, spec in (props or {}).items():
        if not isinstance(spec, dict):
            continue
        path = prefix + field
        out[path] = spec.get("type", "object")
        out.update(_field_types(spec, path + "."))
        for sub, sub_spec in (spec.get("fields") or {}).items():
            out[f"{path}.{sub}"] = sub_spec.get("type", "object")
    return out


def _compare(client: SearchClient, directory: str, name: str) -> str:
    """What of an index's dumped settings, mapping and aliases the cluster lacks ("" when nothing)."""
    dumped = (_read_dumped(directory, name, "settings").get("settings") or {}).get("index") or {}
    live = (client.request("GET", _path(name) + "/_settings")[name]["settings"]).get("index") or {}
    for key in ("number_of_shards", "analysis"):
        if key in dumped and dumped[key] != live.get(key):
            return f"its settings' {key} is {json.dumps(live.get(key))}, the dump has {json.dumps(dumped[key])}"
    want = _field_types(_read_dumped(directory, name, "mapping").get("mappings") or {})
    have = _field_types(client.request("GET", _path(name) + "/_mapping")[name].get("mappings") or {})
    for path, kind in sorted(want.items()):
        if have.get(path) != kind:
            return f"field {path} is {have.get(path) or 'missing'}, the dump maps it as {kind}"
    aliases = _read_dumped(directory, name, "alias").get("aliases") or {}
    if aliases:
        live_aliases = client.request("GET", _path(name) + "/_alias")[name].get("aliases") or {}
        missing = sorted(set(aliases) - set(live_aliases))
        if missing:
            return f"aliases {', '.join(missing)} are missing"
    return ""
