"""The streaming mode: indices read through the REST API straight into the snapshot, and loaded back from it with
``_bulk``, without an interim copy on disk.

A snapshot holds, per index, its settings, mappings and aliases as returned by the cluster, and its documents in
``_bulk`` format (an action line and the ``_source``, two lines per document), then a manifest with each index's
document count. Documents are read from one point in time (Elasticsearch's PIT sorted on ``_shard_doc``; a scroll
where there is no PIT with a total sort, as on OpenSearch), large indices in parallel slices merged into the one
file. The count written is checked against the count of the same point in time, and after a restore against the
restored index's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import orjson

from stash_runner.errors import BadInput, RunnerError, SnapshotNotFound, ToolFailed, one_line

from ..base import Item, SnapshotFiles
from .connection import SearchClient, SearchError, StandardParsed
from .indices import IndexInfo
from .settings import restore_settings

log = logging.getLogger("stash_runner")

# -- the snapshot's layout ---------------------------------------------------------------------

ROOT = "/elasticsearch"
INDICES_DIR = f"{ROOT}/indices"
SETTINGS_FILE = "settings.json"
MAPPINGS_FILE = "mappings.json"
ALIASES_FILE = "aliases.json"
DOCUMENTS_FILE = "documents.ndjson"
INDEX_FILES = (SETTINGS_FILE, MAPPINGS_FILE, ALIASES_FILE, DOCUMENTS_FILE)
MANIFEST = f"{ROOT}/manifest.json"
FORMAT = 1

# -- dumping -----------------------------------------------------------------------------------

#: how long the cluster keeps a PIT or scroll between two pages
KEEP_ALIVE = "2m"
#: an index this large is read in parallel slices
SLICE_MIN_DOCUMENTS = 50_000
SLICE_MIN_BYTES = 64 << 20
DEFAULT_SLICES = 4
#: documents go to the backup in blocks of about this size, at most QUEUED_BLOCKS waiting per slice (plus one
#: being filled): what a dump holds in memory, whatever the index's size
BLOCK_BYTES = 1 << 20
QUEUED_BLOCKS = 2
#: the only parts of a search response a dump needs: the client parses nothing else
SEARCH_FILTER = "pit_id,_scroll_id,hits.total,hits.hits._id,hits.hits._routing,hits.hits._source,hits.hits.sort"
PIT, OPENSEARCH_PIT, SCROLL = "pit", "opensearch-pit", "scroll"
#: how long __exit__ waits for a slice thread (one request at most, which the client times out)
JOIN_SECONDS = 150.0

# -- restoring ---------------------------------------------------------------------------------

DEFAULT_WORKERS = 4
#: how long a batch is retried while the cluster answers 429 (too many requests)
RETRY_SECONDS = 120.0
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 20.0
#: every item keeps its status, so that the items stay in the order of the batch's documents
BULK_FILTER = "errors,items.*.status,items.*.error"

_oj = orjson.dumps
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_ascii = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def index_file(index: str, name: str) -> str:
    """The path of one of an index's files in the snapshot."""
    return f"{INDICES_DIR}/{index}/{name}"


def _url(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class _Stopped(Exception):
    """The dump is stopping (a failure elsewhere, or __exit__): a slice thread ends without an error of its own."""


def _named(e: RunnerError, what: str) -> RunnerError:
    """The same error, its message starting with what was being done (which index)."""
    message = one_line(f"{what}: {e}")
    if isinstance(e, SearchError):
        return SearchError(message, e.status, e.reason)
    try:
        return type(e)(message)
    except TypeError:
        return ToolFailed(message)


class _Feed(io.RawIOBase):
    """One index's documents file: blocks put by its slice threads, read by the backup. The slices' blocks are
    taken in turn (a block of slice 0, of slice 1, ..., again of slice 0), so that an unchanged index gives the
    same bytes on every backup and its chunks deduplicate; arrival order would differ from one run to the next.
    Bounded: a slice waits while QUEUED_BLOCKS of its blocks wait for the reader."""

    def __init__(self, producers: int, stop: threading.Event, on_abandon: Any):
        super().__init__()
        self._queues: list[queue.Queue[bytes | None]] = [queue.Queue(QUEUED_BLOCKS) for _ in range(producers)]
        self._open = list(range(producers))  # slices that have not ended yet, in turn order
        self._turn = 0  # index into _open of the slice whose block comes next
        self._stop = stop
        self._on_abandon = on_abandon
        self._block = memoryview(b"")
        self._pos = 0
        self.eof = False  # every slice ended and everything was read
        self.size = 0  # bytes read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = len(b)
        filled = 0
        while filled < want:
            left = len(self._block) - self._pos
            if left == 0:
                if not self._next():
                    break
                continue
            n = min(left, want - filled)
            b[filled:filled + n] = self._block[self._pos:self._pos + n]
            self._pos += n
            filled += n
        self.size += filled
        return filled

    def _next(self) -> bool:
        """The next block into place; False at the end (or when the dump stops: the file is then truncated and
        finish() raises)."""
        while self._open:
            sid = self._open[self._turn]
            try:
                block = self._queues[sid].get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return False
                continue
            if block is None:
                del self._open[self._turn]  # the next slice in turn moves into its place
                if self._open:
                    self._turn %= len(self._open)
                continue
            self._turn = (self._turn + 1) % len(self._open)
            self._block, self._pos = memoryview(block), 0
            return True
        self.eof = True
        return False

    def put(self, sid: int, block: bytes | None) -> None:
        """A block of whole documents of slice ``sid``, or None when it ends; raises _Stopped when the dump
        stops."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queues[sid].put(block, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        if not self.closed and not self.eof:
            self._on_abandon()
        super().close()


@dataclass
class DumpedIndex:
    """What a dump did with one index: for logs and tests."""

    documents: int
    slices: int
    method: str  # PIT, OPENSEARCH_PIT or SCROLL
    seconds: float
    bytes: int  # the size of its documents file


@dataclass
class _Job:
    """One index's documents being read."""

    index: IndexInfo
    method: str
    slices: int
    feed: _Feed
    pit: str = ""
    contexts: set[str] = field(default_factory=set)  # its PIT and scroll ids
    counts: list[int] = field(default_factory=list)  # documents written, per slice
    totals: list[int] = field(default_factory=list)  # the index's documents at the point in time, per slice
    threads: list[threading.Thread] = field(default_factory=list)


class StreamDump:
    """The indices' settings, mappings, aliases and documents as the snapshot's files, read from the cluster while
    the backup stores them. A context manager: leaving it stops the slice threads and closes PITs and scrolls."""

    def __init__(self, client: SearchClient, indices: list[IndexInfo], *, slices: int = 0, page_size: int = 1000,
                 target: str):
        if page_size < 1 or slices < 0:
            raise BadInput(f"dump of {target}: page size {page_size} and slices {slices}: both must be positive")
        self.client = client
        self.indices = list(indices)
        self.slices = slices
        self.page_size = page_size
        self.target = target
        self.dumped: dict[str, DumpedIndex] = {}  # per index, once its documents are all written
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._complete = False
        self._method = ""
        self._jobs: list[_Job] = []
        self._contexts: dict[str, str] = {}  # open PIT and scroll ids -> their kind, closed on the way out

    def __enter__(self) -> StreamDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for job in self._jobs:
            job.feed.close()
            for t in job.threads:
                t.join(JOIN_SECONDS)
        self._close_contexts(list(self._contexts))

    # -- the Dump protocol ---------------------------------------------------------------------

    def items(self) -> Iterator[Item]:
        try:
            for info in self.indices:
                yield from self._index_items(info)
            manifest = {"format": FORMAT, "distribution": self.client.distribution, "version": self.client.version,
                        "indices": {name: {"documents": d.documents} for name, d in self.dumped.items()}}
            yield Item(MANIFEST, io.BytesIO(_json_file(manifest)))
            self._complete = True
        except _Stopped:
            pass  # finish() raises the first error
        except RunnerError as e:
            self._fail(e)

    def finish(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._complete:
            raise ToolFailed(f"dump of {self.target}: the backup stopped before the dump's end")

    # -- one index -----------------------------------------------------------------------------

    def _index_items(self, info: IndexInfo) -> Iterator[Item]:
        name = info.name
        what = f"dump of index {name} of {self.target}"
        try:
            settings = self._get(f"/{_url(name)}/_settings", name, "settings")
            mappings = self._get(f"/{_url(name)}/_mapping", name, "mappings")
            aliases = self._get(f"/{_url(name)}/_alias", name, "aliases")
        except RunnerError as e:
            raise _named(e, what) from None
        yield Item(index_file(name, SETTINGS_FILE), io.BytesIO(_json_file(settings)))
        yield Item(index_file(name, MAPPINGS_FILE), io.BytesIO(_json_file(mappings)))
        yield Item(index_file(name, ALIASES_FILE), io.BytesIO(_json_file(aliases)))
        started = time.monotonic()
        job = self._start(info)
        yield Item(index_file(name, DOCUMENTS_FILE), job.feed)
        self._end(job, started)

    def _get(self, path: str, index: str, key: str) -> Any:
        body = self.client.request("GET", path) or {}
        entry = body.get(index) or next(iter(body.values()), {})
        return entry.get(key) or {}

    def _start(self, info: IndexInfo) -> _Job:
        name = info.name
        slices = 1
        if info.documents > SLICE_MIN_DOCUMENTS or info.store_bytes > SLICE_MIN_BYTES:
            slices = self.slices or DEFAULT_SLICES
        feed = _Feed(slices, self._stop, lambda: self._fail(ToolFailed(
            f"dump of index {name} of {self.target}: the backup stopped reading its documents")))
        try:
            if not self._method:
                self._method = self._choose_method(name)
            job = _Job(info, self._method, slices, feed, counts=[0] * slices, totals=[0] * slices)
            self._jobs.append(job)
            if job.method != SCROLL:
                job.pit = self._open_pit(name, job.method)
                job.contexts.add(job.pit)
        except RunnerError as e:
            raise _named(e, f"dump of index {name} of {self.target}: opening a point in time") from None
        for i in range(slices):
            t = threading.Thread(target=self._slice, args=(job, i), name=f"es-dump-{name}-{i}", daemon=True)
            job.threads.append(t)
            t.start()
        return job

    def _end(self, job: _Job, started: float) -> None:
        """After the backup read the documents: every slice ended well, the count agrees; the PIT is closed."""
        name = job.index.name
        if not job.feed.eof:
            self._fail(ToolFailed(f"dump of index {name} of {self.target}: the backup did not read its documents "
                                  "to the end"))
        for t in job.threads:
            t.join()
        self._close_contexts(sorted(job.contexts))
        if self._error is not None:
            raise _Stopped  # the first error is what finish() reports
        written, total = sum(job.counts), sum(job.totals)
        if written != total:
            raise ToolFailed(f"dump of index {name} of {self.target}: {written} documents written, but the index "
                             f"had {total} at the dump's point in time")
        elapsed = max(time.monotonic() - started, 1e-6)
        self.dumped[name] = DumpedIndex(written, job.slices, job.method, elapsed, job.feed.size)
        log.info("dumped index %s: %d documents, %d bytes in %.1f s (%.0f docs/s, %s, %d slice(s))", name, written,
                 job.feed.size, elapsed, written / elapsed, job.method, job.slices)

    # -- reading documents ---------------------------------------------------------------------

    def _choose_method(self, first_index: str) -> str:
        """Elasticsearch 7.12+: PIT sorted on _shard_doc. OpenSearch: its PIT if it sorts on _shard_doc (a total
        order, which search_after needs), else a scroll; so does anything older."""
        c = self.client
        if c.distribution == "elasticsearch":
            major, minor = (int(p) if p.isdigit() else 0 for p in (c.version.split(".") + ["0"])[:2])
            return PIT if (major, minor) >= (7, 12) else SCROLL
        try:
            pit = self._open_pit(first_index, OPENSEARCH_PIT)
        except SearchError as e:
            if not 400 <= e.status < 500:
                raise
            log.debug("no point in time on %s (%s): reading by scroll", c.name, e)
            return SCROLL
        try:
            c.request("POST", "/_search", body={"pit": {"id": pit, "keep_alive": KEEP_ALIVE}, "size": 0,
                                                "sort": ["_shard_doc"], "track_total_hits": False})
            return OPENSEARCH_PIT
        except SearchError as e:
            if not 400 <= e.status < 500:
                raise
            log.debug("%s has no _shard_doc sort (%s): reading by scroll", c.name, e.reason)
            return SCROLL
        finally:
            self._close_contexts([pit])

    def _open_pit(self, index: str, method: str) -> str:
        if method == PIT:
            pit = self.client.request("POST", f"/{_url(index)}/_pit", params={"keep_alive": KEEP_ALIVE})["id"]
        else:
            pit = self.client.request("POST", f"/{_url(index)}/_search/point_in_time",
                                      params={"keep_alive": KEEP_ALIVE})["pit_id"]
        self._track(pit, method)
        return pit

    def _track(self, context: str | None, kind: str, job: _Job | None = None) -> None:
        if context:
            with self._lock:
                self._contexts[context] = kind
                if job is not None:
                    job.contexts.add(context)

    def _close_contexts(self, ids: list[str]) -> None:
        """Free PITs and scrolls on the cluster (they would otherwise hold segments for KEEP_ALIVE); best effort."""
        with self._lock:
            kinds = {i: self._contexts.pop(i, None) for i in ids}
        for kind in (PIT, OPENSEARCH_PIT, SCROLL):
            chosen = [i for i, k in kinds.items() if k == kind]
            if not chosen:
                continue
            try:
                if kind == PIT:
                    for i in chosen:
                        self.client.request("DELETE", "/_pit", body={"id": i}, ignore=(404,))
                elif kind == OPENSEARCH_PIT:
                    self.client.request("DELETE", "/_search/point_in_time", body={"pit_id": chosen}, ignore=(404,))
                else:
                    self.client.request("DELETE", "/_search/scroll", body={"scroll_id": chosen}, ignore=(404,))
            except RunnerError as e:
                log.warning("could not free %d %s context(s) on %s: %s", len(chosen), kind, self.target, e)

    def _slice(self, job: _Job, sid: int) -> None:
        try:
            self._read(job, sid)
            job.feed.put(sid, None)
        except _Stopped:
            pass
        except RunnerError as e:
            self._fail(_named(e, f"dump of index {job.index.name} of {self.target}"))
        except BaseException as e:  # noqa: BLE001 - reported by finish() in the backup's thread
            self._fail(ToolFailed(one_line(f"dump of index {job.index.name} of {self.target}: "
                                           f"{type(e).__name__}: {e}")))

    def _read(self, job: _Job, sid: int) -> None:
        """One slice's pages, in blocks into the feed; its count and its point in time's count into the job."""
        index, size = job.index.name, self.page_size
        request = self.client.request
        params = {"filter_path": SEARCH_FILTER}
        body: dict[str, Any] = {"size": size, "track_total_hits": True}
        if job.slices > 1:
            body["slice"] = {"id": sid, "max": job.slices}
        scroll_id = pit = None
        if job.method == SCROLL:
            body["sort"] = ["_doc"]
            resp = request("POST", f"/{_url(index)}/_search", params={**params, "scroll": KEEP_ALIVE}, body=body)
        else:
            pit = job.pit
            body["sort"] = ["_shard_doc"]
            body["pit"] = {"id": pit, "keep_alive": KEEP_ALIVE}
            resp = request("POST", "/_search", params=params, body=body)
        job.totals[sid] = _total(resp, index)
        body["track_total_hits"] = False
        pending: list[bytes] = []
        pending_bytes = count = 0
        try:
            while True:
                hits = (resp.get("hits") or {}).get("hits") or ()
                if scroll_id != resp.get("_scroll_id"):
                    scroll_id = resp.get("_scroll_id")
                    self._track(scroll_id, SCROLL, job)
                if pit is not None and resp.get("pit_id") and resp["pit_id"] != pit:
                    pit = resp["pit_id"]  # the cluster may give a new id: the next page must use it
                    self._track(pit, job.method, job)
                    body["pit"] = {"id": pit, "keep_alive": KEEP_ALIVE}
                if hits:
                    block = _ndjson(hits, index, fast=not isinstance(resp, StandardParsed))
                    count += len(hits)
                    pending.append(block)
                    pending_bytes += len(block)
                    if pending_bytes >= BLOCK_BYTES:
                        job.feed.put(sid, b"".join(pending))
                        pending, pending_bytes = [], 0
                if len(hits) < size:
                    break
                if self._stop.is_set():
                    raise _Stopped
                if job.method == SCROLL:
                    resp = request("POST", "/_search/scroll", params=params,
                                   body={"scroll": KEEP_ALIVE, "scroll_id": scroll_id})
                else:
                    body["search_after"] = hits[-1]["sort"]
                    resp = request("POST", "/_search", params=params, body=body)
            if pending:
                job.feed.put(sid, b"".join(pending))
        finally:
            if scroll_id:
                self._close_contexts([scroll_id])
        job.counts[sid] = count

    def _fail(self, error: BaseException) -> None:
        """The first failure is the dump's; every slice stops."""
        with self._lock:
            if self._error is None:
                self._error = error
        self._stop.set()


def _total(resp: dict, index: str) -> int:
    total = (resp.get("hits") or {}).get("total")
    if isinstance(total, int):
        return total
    if not isinstance(total, dict) or total.get("relation", "eq") != "eq":
        raise ToolFailed(f"index {index}: the cluster gave no exact document count ({total!r})")
    return int(total["value"])


def _ndjson(hits: Iterable[dict], index: str, fast: bool = True) -> bytes:
    """One page of hits in _bulk format. The hot path (``fast``: orjson parsed the page, which then holds no big
    integer: ``connection.needs_standard_json``) writes with orjson: compact, UTF-8, 3-4x faster than the
    standard library. Every number keeps its value and its plain spelling (3.0 stays 3.0); a float in exponent
    notation is written in orjson's spelling (1.5e+300 as 1.5e300, 1e-07 as 1e-7). Otherwise the standard
    library, with lone surrogates escaped."""
    try:
        if fast:
            with contextlib.suppress(orjson.JSONEncodeError):
                return b"".join([
                    b'{"index":{"_id":' + _oj(h["_id"]) + b"}}\n" + _oj(h["_source"]) + b"\n"
                    if h.get("_routing") is None else
                    b'{"index":{"_id":' + _oj(h["_id"]) + b',"routing":' + _oj(h["_routing"]) + b"}}\n"
                    + _oj(h["_source"]) + b"\n"
                    for h in hits])
        text = "".join([
            f'{{"index":{{"_id":{_compact(h["_id"])}}}}}\n{_compact(h["_source"])}\n' if h.get("_routing") is None
            else f'{{"index":{{"_id":{_compact(h["_id"])},"routing":{_compact(h["_routing"])}}}}}\n'
                 f'{_compact(h["_source"])}\n'
            for h in hits])
    except KeyError:
        raise ToolFailed(f"index {index}: its documents have no _source (the mapping disables it): they cannot "
                         "be dumped through the REST API; back it up with --mode interim") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (a broken \ud800 the cluster accepted) has no UTF-8 form: escaped, it has.
        return "".join([f'{{"index":{_ascii(_action(h))}}}\n{_ascii(h["_source"])}\n' for h in hits]).encode()


def _action(hit: dict) -> dict:
    routing = hit.get("_routing")
    return {"_id": hit["_id"]} if routing is None else {"_id": hit["_id"], "routing": routing}


def _json_file(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode()


# -- restoring ---------------------------------------------------------------------------------


@dataclass
class _IndexSnapshot:
    name: str
    documents: int
    settings: dict
    mappings: dict
    aliases: dict


def restore_stream(client: SearchClient, files: SnapshotFiles, *, overwrite: bool = False, workers: int = 0,
                   batch_bytes: int = 8 << 20, target: str) -> dict[str, int]:
    """Load a stream-mode snapshot into the cluster: each index created with its mappings and settings, its
    documents bulk-loaded by ``workers`` threads in batches of about ``batch_bytes``, then its replicas, refresh
    interval, aliases and blocks; its count checked. Indices or aliases of the same names are refused (BadInput,
    before anything is written) unless ``overwrite``, which deletes them first. Returns {index: documents}."""
    if workers < 0 or batch_bytes < 1:
        raise BadInput(f"restore into {target}: workers {workers} and batch size {batch_bytes}: both must be "
                       "positive")
    workers = workers or DEFAULT_WORKERS
    indices = _read_snapshot(files)
    _clear_names(client, indices, overwrite, target)
    restored: dict[str, int] = {}
    for ix in indices:
        restored[ix.name] = _restore_index(client, files, ix, workers, batch_bytes, target)
    return restored


def _read_json(files: SnapshotFiles, path: str) -> Any:
    data = b"".join(files.read(path))
    try:
        return json.loads(data)
    except ValueError as e:
        raise ToolFailed(f"{path} in the snapshot is not JSON: {e}") from None


def _read_snapshot(files: SnapshotFiles) -> list[_IndexSnapshot]:
    """The manifest and every index's small files, checked before anything is written."""
    try:
        manifest = _read_json(files, MANIFEST)
    except SnapshotNotFound:
        raise SnapshotNotFound(f"the snapshot has no {MANIFEST}: it is not a stream-mode Elasticsearch snapshot "
                               "(restore it with --mode interim)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"{MANIFEST}: format {manifest.get('format') if isinstance(manifest, dict) else '?'!r} "
                       f"(this runner reads format {FORMAT})")
    present = set(files.files(ROOT))
    out = []
    for name, entry in (manifest.get("indices") or {}).items():
        missing = [index_file(name, f) for f in INDEX_FILES if index_file(name, f) not in present]
        if missing:
            raise SnapshotNotFound(f"the snapshot's manifest lists index {name}, but has no {', '.join(missing)}")
        out.append(_IndexSnapshot(name, int(entry.get("documents") or 0),
                                  _read_json(files, index_file(name, SETTINGS_FILE)),
                                  _read_json(files, index_file(name, MAPPINGS_FILE)),
                                  _read_json(files, index_file(name, ALIASES_FILE))))
    return out


def _clear_names(client: SearchClient, indices: list[_IndexSnapshot], overwrite: bool, target: str) -> None:
    """Refuse (or with ``overwrite`` remove) what holds the names the restore creates: an index, alias or data
    stream named as a restored index; an index or data stream named as a restored alias (an alias cannot be
    added under an index's name). An existing alias of a restored alias's name is kept: the index joins it."""
    state = client.request("GET", "/_resolve/index/*", params={"expand_wildcards": "all"}) or {}
    existing_indices = {i["name"] for i in state.get("indices") or ()}
    existing_aliases = {a["name"]: list(a.get("indices") or ()) for a in state.get("aliases") or ()}
    existing_streams = {d["name"] for d in state.get("data_streams") or ()}
    names = [ix.name for ix in indices]
    alias_names = sorted({a for ix in indices for a in ix.aliases})
    clash = [n for n in names if n in existing_indices or n in existing_aliases or n in existing_streams]
    clash += [a for a in alias_names if (a in existing_indices or a in existing_streams) and a not in clash]
    if not clash:
        return
    if not overwrite:
        raise BadInput(f"{'an index or alias' if len(clash) == 1 else 'indices or aliases'} of the snapshot "
                       f"already exist{'s' if len(clash) == 1 else ''} in {target}: {', '.join(clash)}; give "
                       "--overwrite to replace them")
    for n in clash:
        if n in existing_streams:
            client.request("DELETE", f"/_data_stream/{_url(n)}")
            log.info("deleted data stream %s of %s (--overwrite)", n, target)
        elif n in existing_indices:
            client.request("DELETE", f"/{_url(n)}", params={"expand_wildcards": "all"})
            log.info("deleted index %s of %s (--overwrite)", n, target)
        elif n in existing_aliases:
            # The alias goes, not the indices behind it: only the name is replaced.
            client.request("POST", "/_aliases", body={"actions": [
                {"remove": {"index": i, "alias": n}} for i in existing_aliases[n]]})
            log.info("removed alias %s of %s (--overwrite)", n, target)


def _restore_index(client: SearchClient, files: SnapshotFiles, ix: _IndexSnapshot, workers: int,
                   batch_bytes: int, target: str) -> int:
    what = f"restore of index {ix.name} into {target}"
    path = f"/{_url(ix.name)}"
    split = restore_settings(ix.settings)
    started = time.monotonic()
    try:
        client.request("PUT", path, body={"settings": split.create, "mappings": ix.mappings})
        sent = _load(client, ix.name, files.read(index_file(ix.name, DOCUMENTS_FILE)), workers, batch_bytes, what)
        loaded = time.monotonic()
        client.request("PUT", f"{path}/_settings", body=split.after_load)
        if ix.aliases:
            client.request("POST", "/_aliases", body={"actions": [
                {"add": {**props, "index": ix.name, "alias": alias}} for alias, props in ix.aliases.items()]})
        client.request("POST", f"{path}/_refresh")
        count = int(client.request("GET", f"{path}/_count")["count"])
        if count != ix.documents:
            raise ToolFailed(f"{what}: the index has {count} documents after the load, the snapshot {ix.documents} "
                             f"({sent} sent)")
        if split.blocks:
            client.request("PUT", f"{path}/_settings", body=split.blocks)
    except RunnerError as e:
        if str(e).startswith(what):
            raise
        raise _named(e, what) from None
    took = max(loaded - started, 1e-6)
    log.info("restored index %s: %d documents in %.1f s (%.0f docs/s)", ix.name, count, took, count / took)
    return count


def _batches(chunks: Iterable[bytes], batch_bytes: int, what: str) -> Iterator[tuple[bytes, int]]:
    """The documents file in batches of about ``batch_bytes`` (one document larger than that is a batch of its
    own), cut between documents, as they are: (bytes, documents)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= batch_bytes:
            end, lines = _cut(buf, batch_bytes)
            if not end:
                break  # a document larger than a batch, not read to its end yet
            with memoryview(buf) as view, view[:end] as part:
                batch = bytes(part)
            del buf[:end]
            yield batch, lines // 2
    if buf:
        if not buf.endswith(b"\n"):
            buf += b"\n"
        lines = buf.count(b"\n")
        if lines % 2:
            raise ToolFailed(f"{what}: {DOCUMENTS_FILE} ends inside a document (the snapshot is damaged)")
        yield bytes(buf), lines // 2


def _cut(buf: bytearray, limit: int) -> tuple[int, int]:
    """Where a batch ends: after the last whole document that fits in ``limit``, else after the first document
    (0 while it is incomplete); and how many lines it has. Every document is two lines."""
    end = buf.rfind(b"\n", 0, limit) + 1
    lines = buf.count(b"\n", 0, end) if end else 0
    if lines % 2:
        end = buf.rfind(b"\n", 0, end - 1) + 1
        lines -= 1
    if end:
        return end, lines
    first = buf.find(b"\n")
    second = buf.find(b"\n", first + 1) if first >= 0 else -1
    return (second + 1, 2) if second >= 0 else (0, 0)


def _load(client: SearchClient, index: str, chunks: Iterable[bytes], workers: int, batch_bytes: int,
          what: str) -> int:
    """Bulk-load the documents file, ``workers`` batches at a time; the first failure stops the others."""
    stop = threading.Event()
    sent = 0
    inflight: set[Future] = set()
    with ThreadPoolExecutor(workers, thread_name_prefix=f"es-load-{index}") as pool:
        try:
            for batch, docs in _batches(chunks, batch_bytes, what):
                while len(inflight) >= workers:
                    done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                inflight.add(pool.submit(_bulk, client, index, batch, stop, what))
                sent += docs
            for f in inflight:
                f.result()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sent


def _bulk(client: SearchClient, index: str, body: bytes, stop: threading.Event, what: str) -> None:
    """One batch, sent as it is; documents refused with 429 are sent again (only they), with a growing delay."""
    path = f"/{_url(index)}/_bulk"
    deadline = 0.0
    delay = RETRY_FIRST_DELAY
    while True:
        if stop.is_set():
            return
        try:
            resp = client.request("POST", path, params={"filter_path": BULK_FILTER}, body=body, ndjson=True)
        except SearchError as e:
            if e.status != 429:
                raise
            resp, retry = None, body
        if resp is not None:
            if not resp.get("errors"):
                return
            retry = _refused(resp.get("items") or [], body, what)
            if not retry:
                return
        now = time.monotonic()
        deadline = deadline or now + RETRY_SECONDS
        if now + delay > deadline:
            raise ToolFailed(f"{what}: the cluster still refuses documents as too many requests (HTTP 429) after "
                             f"{RETRY_SECONDS:.0f} s of retries")
        log.info("%s: the cluster refuses %d documents as too many requests (HTTP 429): waiting %.1f s to send "
                 "them again (%.0f s left)", what, retry.count(b"\n") // 2, delay, deadline - now)
        stop.wait(delay)
        delay = min(delay * 2, RETRY_MAX_DELAY)
        body = retry


def _refused(items: list[dict], body: bytes, what: str) -> bytes:
    """The documents to send again (those refused with 429); ToolFailed naming the first document refused for
    another reason."""
    lines = body.split(b"\n")
    retry: list[bytes] = []
    for i, item in enumerate(items):
        result = next(iter(item.values()), {}) if item else {}
        status = int(result.get("status") or 0)
        if status < 300:
            continue
        if status == 429:
            retry += [lines[2 * i], lines[2 * i + 1]]
            continue
        try:
            doc_id = json.loads(lines[2 * i])["index"]["_id"]
        except (ValueError, KeyError, IndexError, TypeError):
            doc_id = "?"
        raise ToolFailed(f"{what}: document {doc_id!r} refused (HTTP {status}): {_item_reason(result.get('error'))}")
    if len(items) * 2 > len(lines):
        raise ToolFailed(f"{what}: the cluster answered for {len(items)} documents, more than were sent")
    return b"\n".join(retry) + b"\n" if retry else b""


def _item_reason(error: Any) -> str:
    """A bulk item's error: its type and reason, without the document's values that reasons may quote (the
    "Preview of field's value", the parser's "[Source: ...]"); of its causes, only their types, which quote
    values more often than not ("For input string: ...")."""
    if not isinstance(error, dict):
        return one_line(error or "unknown error")[:300]
    reason = str(error.get("reason") or "")
    for marker in ("Preview of field's value", " at [Source:"):
        reason = reason.split(marker, 1)[0]
    text = f"{error.get('type', 'error')}: {one_line(reason).rstrip(' .')}"
    causes = []
    cause = error.get("caused_by")
    while isinstance(cause, dict) and len(causes) < 3:
        causes.append(str(cause.get("type") or "?"))
        cause = cause.get("caused_by")
    if causes:
        text += f" (caused by {', '.join(causes)})"
    return text[:500]
