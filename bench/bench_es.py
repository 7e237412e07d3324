#!/usr/bin/env python3
"""Benchmark Elasticsearch backup and restore: stash-runner's stream mode against its interim mode, Stash's own
flow (``multielasticdump`` then ``restic backup`` of the directory) and the time the server needs to serve the
documents.

Run from the repository root: ``python3 bench/bench_es.py [--size-mb N] [--budget-s S] [--tuning auto|always|never]
[--keep]``. Prints Markdown tables and the targets; writes both (and every raw number as JSON) to
bench/out/bench_es.md and .json; progress goes to stderr. Exit 0 when every row ran and every restore verified
(also when a target is missed: it is reported), non-zero when something broke.

The server: Elasticsearch 8.7.1 (tests/esservers.py start_search_server("es8"), the integ-test zip on the
system's JDK 17..21), single node, heap 1 GiB, **security off: plain HTTP, no user** (the CLI's TLS and
authentication paths are not measured here), on a loopback port, run as ``nobody`` when we are root, its data in a
temporary directory. It is loaded (outside every timed window; the time and rate are reported) with ``--size-mb``
MB (decimal, default 1000) of generated documents, measured as the sum of the compact JSON bytes of their
``_source``, about 1 KB each on average: log lines, products, orders and device metrics with keyword, text
(with a keyword multi-field), long, double, date, boolean, object and nested fields, in four indices of
different sizes: ``logs-2026.05`` (half of the data, 2 shards), ``products`` (a quarter), ``orders`` (15%, a
nested field) and ``metrics`` (10%), one shard each but the first, no replicas, explicit document ids. The
load runs with ``refresh_interval: -1`` (reset to the default afterwards), then a refresh and a flush. Before
the full load a part (``PROBE_MB``) is loaded and read back to measure the server's rates; when the whole
benchmark would not fit ``--budget-s`` (default 1500 s) the largest size that fits is used instead, and the
output says so.

Rows (each its own process, repositories local on disk under the temporary directory):

1. ``stash-runner backup --mode stream``: the CLI (``backup --objects ... --appbinding es``, the driver from the
   AppBinding's ``kubedb.com/elasticsearch``) with its defaults into a fresh repository.
2. ``stash-runner backup --mode stream (unchanged)``: again into the same repository; what it stores is what
   deduplication leaves.
3. ``stash-runner backup-es``: interim mode with a Stash Function's args (tests/test_elasticsearch.py
   ``stash_args``), ``--interim-data-dir`` under the temporary directory, into a fresh repository.
4. Stash's flow, as its image runs it: ``multielasticdump --direction=dump --input=URL --output=DIR
   --ignoreTemplate=true`` (Stash's fork ignores the missing legacy templates, upstream fails on them; otherwise
   Stash's defaults: elasticdump's ``--limit 100``, every index, settings + mappings + documents), then ``restic
   backup DIR --host host-0`` into a fresh restic repository (``restic init`` untimed, ``RESTIC_PASSWORD`` in the
   environment, a cache dir of its own). Both steps are timed, and their sum is the flow's wall time.
   4b. The same with ``--limit=5000`` (what our interim mode passes): elasticdump at its best.
5. ``stash-runner restore --mode stream`` of row 1's snapshot into the emptied cluster (the indices deleted,
   untimed).
6. ``stash-runner restore-es`` (interim mode, Stash's args) of row 3's snapshot into the emptied cluster.
7. Stash's restore flow: ``restic restore latest --host host-0 --target /`` of row 4's snapshot (back into DIR),
   then ``multielasticdump --direction=load --input=DIR --output=URL --ignoreTemplate=true`` (Stash's flags;
   elasticdump's default ``--limit 100`` per bulk request), timed, into the emptied cluster.
8. The floor: a Python process reading every document with the ``elasticsearch`` client (PIT + search_after,
   ``_shard_doc`` order, 4 slices, page 1000), throwing the hits away: how fast the server serves the documents.

After every restore each index's document count must equal the loaded one, and ``SAMPLE_DOCS`` documents per
index (sampled over the whole load) must equal theirs by ``_id`` (parsed JSON compared, so JavaScript's ``3``
for ``3.0`` is equal; no long exceeds 2^53); a restore that does not verify is reported FAILED, not timed.

Tuning rows (``--tuning auto``: when the estimate leaves room in the budget; ``always``; ``never``): the stream
dump of the largest index (``logs-2026.05``, half the data) without the repository (the driver's StreamDump
through the library, its files read and dropped), at 3 slices and page 1000 (the driver's page size), at page
5000, and at 4 slices (the default); and ``stash-runner restore --mode stream`` with ``--max-concurrency 2`` (the
default is 4 bulk requests at a time, of about 8 MiB each). They show what the read costs alone and what page
size, slices and bulk concurrency buy (their MB/s: that index's source bytes over the wall time). Also measured
(always: they take seconds): the single-core cost per GB of each stage of a stream backup on generated pages
of 1000 hits: parsing and _bulk encoding by the driver as it is in the checkout, and by two fixed references
(the json module, orjson), then chunking, SHA-256, zstd and encryption.

Measuring: every row's process is a child of this script, reaped with ``os.wait4``. stash-runner and the Python
rows run under a tiny runpy wrapper that writes, at exit, the process's own RUSAGE_SELF CPU, its VmHWM
(/proc/self/status) and the CPU of each of its threads by name; wait4's rusage (the process plus every descendant
it reaped: the multielasticdump tree of the interim rows) minus that is its tools' CPU (for a process without
descendants it is the interpreter's teardown after the report, counted as its own, thread "(exit)"). Peak RSS is
VmHWM, not ru_maxrss: Linux carries the RSS a child had between fork and exec (this script's own) into its
ru_maxrss, so that every child would show at least this script's size. A sampler thread here looks every 0.2 s at
the size of the step's interim/scratch directories (the sum of the files' sizes), the summed RSS of the measured
process tree (all processes descending from the one started; multielasticdump forks one node process per index and
type) and the VmHWM of the process started: the tree's peak is the peak RSS of a node row and of an interim row's
tools, restic's is its VmHWM. The server's CPU is the sum of utime + stime over every process of its process group
(/proc/PID/stat: the launcher, the CLI JVM and the server JVM); the rest of the machine's (other sessions) is
counted apart. MB/s is always the loaded source bytes over the wall time, so rows compare. Disk used is the
interim disk peak (the step's directories outside the repository) plus the repository's growth. For stream rows
the sampled directories are the step's (empty) TMPDIR and interim dir: stream mode must leave both empty.

Checks: Stash's flow wall (row 4, default limit) >= 3x the stream backup's wall; peak RSS <= 300 MiB on every
stash-runner row; interim disk == 0 on the stream rows. Also verified: ``restic check`` of every repository,
the floor's counts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from bench.cpu import busy_cpu  # noqa: E402
from bench.measured import WRAPPER as _WRAPPER  # noqa: E402
from bench.measured import peak_rss_kib  # noqa: E402
from bench.stages import repository_stages  # noqa: E402
from bench.words import COUNTRIES, STATUSES, vocabulary  # noqa: E402
from tests.esservers import (  # noqa: E402
    ELASTICDUMP_VERSION,
    SERVERS,
    SearchServer,
    elasticdump_bin,
    start_search_server,
)
from tests.helpers import REPO_PASSWORD  # noqa: E402
from tests.test_elasticsearch import es_objects, stash_args  # noqa: E402

MB = 1_000_000  # data sizes and throughput in decimal MB, as --size-mb
MIB = 1 << 20  # memory and repository sizes in MiB

TARGET_SPEEDUP = 3.0  # Stash's flow wall / stream backup wall, at least
TARGET_RSS_MIB = 300  # stash-runner peak RSS, at most
SERVER = "es8"
HEAP_MB = 1024
FLOOR_SLICES = 4
FLOOR_PAGE = 1000
STASH_LIMIT = 100  # elasticdump's default --limit: what Stash's flow runs with
OUR_LIMIT = 5000  # what our interim mode passes (drivers/elasticsearch/interim.py DEFAULT_LIMIT)
FEWER_SLICES = 3  # one slice fewer than the driver's default (4), to show what a slice buys
PROBE_MB = 40  # loaded and read back first, to measure the rates
PROBE_WARM_MB = 10  # of which the first part warms the server up: the load rate is the rest's
SAMPLE_DOCS = 20  # documents per index compared after every restore
SAMPLE_SECONDS = 0.2  # the sampler's period
LOAD_BULK_BYTES = 4 * MB  # per bulk request of the loader
MICRO_BYTES = 24 * MB  # the per-byte cost sample
NAMESPACE = "demo"  # as tests/test_elasticsearch.py's objects

STEP_FLOOR = f"floor: PIT + search_after, {FLOOR_SLICES} slices, page {FLOOR_PAGE}"
STEP_STREAM = "stash-runner backup --mode stream"
STEP_STREAM2 = "stash-runner backup --mode stream (unchanged)"
STEP_INTERIM = "stash-runner backup-es (interim)"
STEP_MED = f"Stash: multielasticdump dump --limit {STASH_LIMIT}"
STEP_RESTIC = "Stash: restic backup DIR"
STEP_STASH = "Stash's flow: dump + restic backup"
STEP_MED5K = f"Stash: multielasticdump dump --limit {OUR_LIMIT}"
STEP_RESTIC5K = "Stash: restic backup DIR (4b)"
STEP_STASH5K = f"Stash's flow, --limit {OUR_LIMIT}: dump + restic backup"
STEP_RESTORE = "stash-runner restore --mode stream"
STEP_RESTORE_INTERIM = "stash-runner restore-es (interim)"
STEP_RRESTORE = "Stash: restic restore --target /"
STEP_MLOAD = f"Stash: multielasticdump load --limit {STASH_LIMIT}"
STEP_STASH_RESTORE = "Stash's restore flow: restic restore + load"
TUNING_INDEX = "logs-2026.05"  # the library dumps read only the largest index: half the data, 2 shards
STEP_LIB = f"tuning: {TUNING_INDEX} stream dump -> /dev/null (library, {FEWER_SLICES} slices, page 1000)"
STEP_LIB_PAGE = f"tuning: {TUNING_INDEX} stream dump -> /dev/null (library, {FEWER_SLICES} slices, page 5000)"
STEP_LIB_SLICES = f"tuning: {TUNING_INDEX} stream dump -> /dev/null (library, 4 slices, page 1000)"
STEP_RESTORE_W2 = "tuning: stash-runner restore --mode stream --max-concurrency 2"

ROWS: dict[str, str] = {  # step -> the row number of the brief
    STEP_STREAM: "1", STEP_STREAM2: "2", STEP_INTERIM: "3", STEP_MED: "4", STEP_RESTIC: "4", STEP_STASH: "4",
    STEP_MED5K: "4b", STEP_RESTIC5K: "4b", STEP_STASH5K: "4b", STEP_RESTORE: "5", STEP_RESTORE_INTERIM: "6",
    STEP_RRESTORE: "7", STEP_MLOAD: "7", STEP_STASH_RESTORE: "7", STEP_FLOOR: "8", STEP_LIB: "T1",
    STEP_LIB_PAGE: "T2", STEP_LIB_SLICES: "T3", STEP_RESTORE_W2: "T4",
}
ORDER = (STEP_STREAM, STEP_STREAM2, STEP_INTERIM, STEP_MED, STEP_RESTIC, STEP_STASH, STEP_MED5K, STEP_RESTIC5K,
         STEP_STASH5K, STEP_RESTORE, STEP_RESTORE_INTERIM, STEP_RRESTORE, STEP_MLOAD, STEP_STASH_RESTORE,
         STEP_FLOOR, STEP_LIB, STEP_LIB_PAGE, STEP_LIB_SLICES, STEP_RESTORE_W2)
RUNNER_STEPS = (STEP_STREAM, STEP_STREAM2, STEP_INTERIM, STEP_RESTORE, STEP_RESTORE_INTERIM, STEP_RESTORE_W2)
STREAM_STEPS = (STEP_STREAM, STEP_STREAM2, STEP_RESTORE)
RESTORE_STEPS = (STEP_RESTORE, STEP_RESTORE_INTERIM, STEP_STASH_RESTORE, STEP_RESTORE_W2)


THREAD_ROLES = {
    "es-dump": "stream dump slices: search requests, the client's JSON parsing of each page (json.loads), the "
               "_bulk-format re-encoding of every _source (drivers/elasticsearch/stream.py _ndjson)",
    "es-load": "stream restore: _bulk requests (sending, waiting for the server, parsing the filtered answer)",
    "blob": "backup: SHA-256, zstd, AES-256-CTR + Poly1305, pack building",
    "upload": "pack files written",
    "read": "restore: pack reads, MAC check, decrypt, decompress",
    "MainThread": "backup: FastCDC chunking of the documents stream, dispatch; restore: cutting the documents "
                  "file into bulk batches; floor/library rows: their loop",
    "floor": "floor: search requests and the client's JSON parsing",
}


def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[bench-es {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the documents ------------------------------------------------------------------------------------------------

_LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "INFO", "WARN", "ERROR")
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_BASE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


_WORDS = vocabulary()
_TAGS = _WORDS[:64]
_CITIES = [w.capitalize() for w in _WORDS[100:400]]
_CATEGORIES = _WORDS[500:620]
_SERVICES = _WORDS[700:730]
_BRANDS = [w.capitalize() for w in _WORDS[800:900]]


class _Gen:
    """Random (id, _source) of one index, reproducible from the seed."""

    def __init__(self, seed: int):
        self.rnd = random.Random(seed)
        self.n = 0

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.rnd.choices(_WORDS, k=self.rnd.randint(lo, hi)))

    def when(self, days: int = 150) -> str:
        r = self.rnd
        t = _BASE + datetime.timedelta(seconds=r.randrange(days * 86400), milliseconds=r.randrange(1000))
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        while True:
            self.n += 1
            yield self.doc(self.n)

    def doc(self, n: int) -> tuple[str, dict]:
        raise NotImplementedError


class _Logs(_Gen):
    def doc(self, n: int) -> tuple[str, dict]:
        r = self.rnd
        status = r.choice((200, 200, 200, 201, 204, 301, 304, 400, 403, 404, 500, 503))
        return f"log-{n:09d}", {
            "@timestamp": self.when(), "level": r.choice(_LEVELS), "service": r.choice(_SERVICES),
            "host": {"name": f"web-{r.randrange(64):03d}", "ip": f"10.{r.randrange(256)}.{r.randrange(256)}."
                     f"{r.randrange(256)}"},
            "logger": "com.example." + ".".join(r.choices(_WORDS, k=2)) + "." + r.choice(_WORDS).capitalize(),
            "trace_id": f"{r.getrandbits(128):032x}", "span_id": f"{r.getrandbits(64):016x}",
            "http": {"method": r.choice(_METHODS), "path": "/api/v2/" + "/".join(r.choices(_WORDS, k=3)),
                     "status": status, "bytes": r.getrandbits(36), "duration_ms": round(r.expovariate(1 / 80), 3)},
            "user_agent": f"Mozilla/5.0 ({r.choice(('X11; Linux x86_64', 'Windows NT 10.0', 'Macintosh'))}) "
                          f"{r.choice(_WORDS).capitalize()}/{r.randint(60, 130)}.0",
            "message": self.text(25, 95), "tags": r.sample(_TAGS, r.randint(0, 4)),
            "labels": {"env": r.choice(("prod", "staging")), "region": r.choice(("eu-1", "us-2", "ap-3"))},
            "pid": r.randrange(1, 65536), "error": status >= 500,
        }


class _Products(_Gen):
    def doc(self, n: int) -> tuple[str, dict]:
        r = self.rnd
        created = self.when(700)
        return f"SKU-{n:08d}", {
            "name": self.text(2, 6).title(), "description": self.text(60, 150), "brand": r.choice(_BRANDS),
            "categories": r.sample(_CATEGORIES, r.randint(1, 4)), "price": round(r.uniform(0.5, 2000), 2),
            "currency": r.choice(("EUR", "USD", "GBP")), "stock": r.randrange(10000),
            "rating": round(r.uniform(1, 5), 1), "reviews": r.randrange(5000), "active": r.random() < 0.9,
            "attributes": {"color": r.choice(_WORDS), "size": r.choice(("XS", "S", "M", "L", "XL")),
                           "weight_kg": round(r.uniform(0.01, 40), 3), "fragile": r.random() < 0.1},
            "created": created, "updated": self.when(),
        }


class _Orders(_Gen):
    def doc(self, n: int) -> tuple[str, dict]:
        r = self.rnd
        items = [{"sku": f"SKU-{r.randrange(1, 10**6):08d}", "name": self.text(2, 5), "qty": r.randint(1, 9),
                  "price": round(r.uniform(0.5, 400), 2)} for _ in range(r.randint(1, 6))]
        return f"ord-{n:09d}", {
            "order_no": 10**12 + n, "status": r.choice(STATUSES), "created": self.when(),
            "customer": {"id": f"cu-{r.randrange(10**6):07d}", "name": self.text(2, 2).title(),
                         "email": f"{r.choice(_WORDS)}.{r.choice(_WORDS)}@{r.choice(_WORDS)}.example",
                         "country": r.choice(COUNTRIES)},
            "items": items, "total": round(sum(i["price"] * i["qty"] for i in items), 2),
            "currency": r.choice(("EUR", "USD")), "paid": r.random() < 0.8,
            "shipping": {"city": r.choice(_CITIES), "zip": f"{r.randrange(100000):05d}",
                         "country": r.choice(COUNTRIES), "eta": self.when()},
            "comment": self.text(0, 40),
        }


class _Metrics(_Gen):
    def doc(self, n: int) -> tuple[str, dict]:
        r = self.rnd
        return f"m-{n:010d}", {
            "@timestamp": self.when(), "device": f"dev-{r.randrange(5000):05d}", "site": r.choice(_CITIES),
            "firmware": f"{r.randint(1, 3)}.{r.randint(0, 9)}.{r.randint(0, 20)}",
            "readings": {"temp": round(r.gauss(21, 4), 3), "humidity": round(r.random(), 4),
                         "pressure": round(r.gauss(1013, 8), 2), "voltage": round(r.uniform(3.1, 4.2), 3),
                         "battery": r.randint(0, 100)},
            "counters": {"rx": r.getrandbits(40), "tx": r.getrandbits(40), "errors": r.randrange(100),
                         "uptime_s": r.getrandbits(28)},
            "status": r.choice(("ok", "ok", "ok", "degraded", "offline")), "alarm": r.random() < 0.03,
            "note": self.text(20, 90),
        }


_KW = {"type": "keyword"}
_TEXT_KW = {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}}


@dataclass(frozen=True)
class IndexSpec:
    name: str
    share: float  # of the data size
    shards: int
    gen: Callable[[int], _Gen]
    properties: dict


INDICES = (
    IndexSpec("logs-2026.05", 0.50, 2, _Logs, {
        "@timestamp": {"type": "date"}, "level": _KW, "service": _KW, "logger": _KW, "trace_id": _KW,
        "span_id": _KW, "host": {"properties": {"name": _KW, "ip": {"type": "ip"}}},
        "http": {"properties": {"method": _KW, "path": _KW, "status": {"type": "long"}, "bytes": {"type": "long"},
                                "duration_ms": {"type": "double"}}},
        "user_agent": _TEXT_KW, "message": {"type": "text"}, "tags": _KW,
        "labels": {"properties": {"env": _KW, "region": _KW}}, "pid": {"type": "long"}, "error": {"type": "boolean"}}),
    IndexSpec("products", 0.25, 1, _Products, {
        "name": _TEXT_KW, "description": {"type": "text"}, "brand": _KW, "categories": _KW,
        "price": {"type": "double"}, "currency": _KW, "stock": {"type": "long"}, "rating": {"type": "double"},
        "reviews": {"type": "long"}, "active": {"type": "boolean"},
        "attributes": {"properties": {"color": _KW, "size": _KW, "weight_kg": {"type": "double"},
                                      "fragile": {"type": "boolean"}}},
        "created": {"type": "date"}, "updated": {"type": "date"}}),
    IndexSpec("orders", 0.15, 1, _Orders, {
        "order_no": {"type": "long"}, "status": _KW, "created": {"type": "date"},
        "customer": {"properties": {"id": _KW, "name": _TEXT_KW, "email": _KW, "country": _KW}},
        "items": {"type": "nested", "properties": {"sku": _KW, "name": {"type": "text"}, "qty": {"type": "long"},
                                                   "price": {"type": "double"}}},
        "total": {"type": "double"}, "currency": _KW, "paid": {"type": "boolean"},
        "shipping": {"properties": {"city": _KW, "zip": _KW, "country": _KW, "eta": {"type": "date"}}},
        "comment": {"type": "text"}}),
    IndexSpec("metrics", 0.10, 1, _Metrics, {
        "@timestamp": {"type": "date"}, "device": _KW, "site": _KW, "firmware": _KW,
        "readings": {"properties": {k: {"type": "double"} for k in ("temp", "humidity", "pressure", "voltage")}
                     | {"battery": {"type": "long"}}},
        "counters": {"properties": {k: {"type": "long"} for k in ("rx", "tx", "errors", "uptime_s")}},
        "status": _KW, "alarm": {"type": "boolean"}, "note": {"type": "text"}}),
)
INDEX_NAMES = tuple(ix.name for ix in INDICES)

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


# -- talking to the server (plain HTTP, independent of the runner's client) ---------------------------------------

class Http:
    """Requests to the server over one keep-alive connection per thread."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        return c

    def request(self, method: str, path: str, body: Any = None, *, ndjson: bool = False, ok: tuple = ()) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/x-ndjson" if ndjson else "application/json"
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if resp.status >= 300 and resp.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None


class Loader:
    """Loads the indices in proportion, a generator per index, resumable (the probe, then the rest)."""

    def __init__(self, es: Http):
        self.es = es
        self.gens = {ix.name: iter(ix.gen(i + 1)) for i, ix in enumerate(INDICES)}
        self.bytes = {ix.name: 0 for ix in INDICES}
        self.docs = {ix.name: 0 for ix in INDICES}
        self.samples: dict[str, list[tuple[str, dict]]] = {ix.name: [] for ix in INDICES}
        self._rnd = random.Random(11)
        self.seconds = 0.0
        self.created = False

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def create(self) -> None:
        for ix in INDICES:
            self.es.request("PUT", f"/{ix.name}", {
                "settings": {"number_of_shards": ix.shards, "number_of_replicas": 0, "refresh_interval": "-1"},
                "mappings": {"properties": ix.properties}})
        self.created = True

    def _sample(self, name: str, doc: tuple[str, dict]) -> None:
        """Reservoir sampling over the documents."""
        kept = self.samples[name]
        if len(kept) < SAMPLE_DOCS:
            kept.append(doc)
        else:
            j = self._rnd.randrange(self.docs[name])
            if j < SAMPLE_DOCS:
                kept[j] = doc

    def load_until(self, total_bytes: int) -> float:
        """Bulk-load until the indices hold ``total_bytes`` of _source; returns the seconds it took."""
        t0 = time.perf_counter()
        if not self.created:
            self.create()
        else:
            self._settings({"index.refresh_interval": "-1"})
        work: queue.Queue = queue.Queue(maxsize=4)
        errors: list[BaseException] = []

        def send() -> None:
            while (item := work.get()) is not None:
                name, body = item
                if errors:
                    continue
                try:
                    r = self.es.request("POST", f"/{name}/_bulk?filter_path=errors,items.*.error", body, ndjson=True)
                    if r.get("errors"):
                        raise RuntimeError(f"bulk into {name}: {str(r.get('items'))[:500]}")
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(e)

        threads = [threading.Thread(target=send, name=f"load-{i}", daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        try:
            for ix in INDICES:
                goal = int(total_bytes * ix.share)
                gen = self.gens[ix.name]
                while self.bytes[ix.name] < goal and not errors:
                    lines, size = [], 0
                    while size < LOAD_BULK_BYTES and self.bytes[ix.name] + size < goal:
                        doc_id, src = next(gen)
                        raw = _compact(src).encode()
                        lines.append(b'{"index":{"_id":"' + doc_id.encode() + b'"}}\n' + raw + b"\n")
                        size += len(raw)
                        self.docs[ix.name] += 1
                        self._sample(ix.name, (doc_id, src))
                    self.bytes[ix.name] += size
                    work.put((ix.name, b"".join(lines)))
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        self._settings({"index.refresh_interval": None})
        self.es.request("POST", "/" + ",".join(INDEX_NAMES) + "/_refresh")
        self.es.request("POST", "/" + ",".join(INDEX_NAMES) + "/_flush")
        took = time.perf_counter() - t0
        self.seconds += took
        return took

    def _settings(self, settings: dict) -> None:
        self.es.request("PUT", "/" + ",".join(INDEX_NAMES) + "/_settings", settings)

    def counts(self) -> dict[str, int]:
        return {n: int(self.es.request("GET", f"/{n}/_count")["count"]) for n in INDEX_NAMES}


def delete_indices(es: Http) -> None:
    """Every index but system and hidden ones (Stash's flow restores whatever its dump held)."""
    names = [r["index"] for r in es.request("GET", "/_cat/indices?format=json&h=index") or []
             if not r["index"].startswith(".")]
    if names:
        es.request("DELETE", "/" + ",".join(names))


def verify_restore(es: Http, loader: Loader) -> dict:
    """Every index's count as loaded, and the sampled documents equal by _id."""
    t0 = time.perf_counter()
    problems = []
    for name in INDEX_NAMES:
        found = es.request("GET", f"/{name}", ok=(404,))
        if not found or "error" in found:
            problems.append(f"{name}: missing")
            continue
        es.request("POST", f"/{name}/_refresh")
        n = int(es.request("GET", f"/{name}/_count")["count"])
        if n != loader.docs[name]:
            problems.append(f"{name}: {n} documents, loaded {loader.docs[name]}")
        for doc_id, src in loader.samples[name]:
            got = es.request("GET", f"/{name}/_doc/{urllib.parse.quote(doc_id)}", ok=(404,))
            if not got or not got.get("found"):
                problems.append(f"{name}: document {doc_id} missing")
                break
            if got["_source"] != src:
                problems.append(f"{name}: document {doc_id} differs")
                break
    return {"ok": not problems, "problems": problems, "sampled": sum(len(v) for v in loader.samples.values()),
            "seconds": time.perf_counter() - t0}


# -- the measured child processes (run through _WRAPPER as scripts) ------------------------------------------------

def child_floor(url: str, slices: int, page: int, out: str) -> None:
    """The floor: every document of every index read with the elasticsearch client, PIT + search_after in
    ``slices`` slices of ``page`` hits, the hits thrown away."""
    from elasticsearch import Elasticsearch

    es = Elasticsearch(url, request_timeout=120, connections_per_node=16)
    names = sorted(r["index"] for r in es.cat.indices(format="json", h="index") if not r["index"].startswith("."))
    counts = {}
    for name in names:
        pit = es.open_point_in_time(index=name, keep_alive="2m")["id"]

        def read(sid: int, pit: str = pit) -> int:
            n, after = 0, None
            while True:
                kw: dict[str, Any] = {"pit": {"id": pit, "keep_alive": "2m"}, "sort": ["_shard_doc"], "size": page,
                                      "track_total_hits": False}
                if slices > 1:
                    kw["slice"] = {"id": sid, "max": slices}
                if after is not None:
                    kw["search_after"] = after
                hits = es.search(**kw)["hits"]["hits"]
                n += len(hits)
                if len(hits) < page:
                    return n
                after = hits[-1]["sort"]

        with ThreadPoolExecutor(slices, thread_name_prefix="floor") as pool:
            counts[name] = sum(pool.map(read, range(slices)))
        es.close_point_in_time(id=pit)
    es.close()
    with open(out, "w") as f:
        json.dump({"counts": counts}, f)


def child_libdump(url: str, slices: int, page: int, indices: str, out: str) -> None:
    """The driver's stream dump alone: StreamDump (slices, search requests, JSON parsing, _bulk encoding) with every
    file read and dropped, no repository."""
    from drivers.elasticsearch.connection import Server, connect
    from drivers.elasticsearch.indices import list_indices, select
    from drivers.elasticsearch.stream import StreamDump

    client = connect(Server(url=url, ref="bench"))
    chosen = select(list_indices(client), indices, False, "bench")
    sizes = {}
    with StreamDump(client, chosen, slices=slices, page_size=page, target="bench") as dump:
        for item in dump.items():
            n = 0
            while chunk := item.stream.read(1 << 20):
                n += len(chunk)
            sizes[item.path] = n
        dump.finish()
        counts = {name: d.documents for name, d in dump.dumped.items()}
    client.close()
    with open(out, "w") as f:
        json.dump({"counts": counts, "bytes": sum(sizes.values())}, f)


def child_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "floor":
        child_floor(argv[1], int(argv[2]), int(argv[3]), argv[4])
    elif kind == "libdump":
        child_libdump(argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5])
    else:
        raise SystemExit(f"unknown child {kind!r}")


# -- measuring ----------------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _procs() -> dict[int, tuple[int, int, int, float]]:
    """pid -> (ppid, pgrp, rss bytes, utime + stime s) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[21]) * _PAGE,
                           (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def group_cpu(pgid: int) -> float:
    """CPU seconds of every live process of a process group (the server: launcher, CLI JVM, server JVM)."""
    return sum(cpu for _, pg, _, cpu in _procs().values() if pg == pgid)


def tree(procs: dict[int, tuple[int, int, int, float]], root: int) -> list[int]:
    """``root`` and every process descending from it."""
    children = collections.defaultdict(list)
    for pid, (ppid, *_rest) in procs.items():
        children[ppid].append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out.append(pid)
            todo += children.get(pid, [])
    return out


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: the size of the step's directories, the summed RSS of the measured process tree (and
    of its part below the root: the tools a stash-runner row runs)."""

    def __init__(self, root: int, dirs: list[str]):
        super().__init__(name="sampler", daemon=True)
        self.root, self.dirs = root, dirs
        self.stop = threading.Event()
        self.disk_peak = self.tree_peak = self.sub_peak = self.root_hwm = 0
        self.samples = 0

    def sample(self) -> None:
        self.disk_peak = max(self.disk_peak, sum(dir_bytes(d) for d in self.dirs if os.path.isdir(d)))
        procs = _procs()
        pids = tree(procs, self.root)
        rss = {p: procs[p][2] for p in pids}
        self.tree_peak = max(self.tree_peak, sum(rss.values()))
        self.sub_peak = max(self.sub_peak, sum(v for p, v in rss.items() if p != self.root))
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{self.root}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    self.root_hwm = max(self.root_hwm, int(line.split()[1]) * 1024)
        self.samples += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_SECONDS)


@dataclass
class Sample:
    step: str
    wall: float = 0.0
    cpu: float = 0.0  # the measured process's own CPU (a Python row: RUSAGE_SELF at exit; else wait4's)
    tools_cpu: float = 0.0  # its reaped descendants' (multielasticdump under an interim row)
    peak_rss_kib: int = 0  # a Python row: its VmHWM at exit; node: the tree's sampled peak; restic: its VmHWM
    tools_rss_kib: int = 0  # the sampled peak of the tree below a Python row (multielasticdump and its forks)
    wait4_maxrss_kib: int = 0  # wait4's: the largest process of the tree, or this script's RSS at the fork
    server_cpu: float = 0.0  # Elasticsearch's process group in the same window
    other_cpu: float = 0.0  # the rest of the machine in that window (other sessions)
    interim_peak: int = 0  # bytes in the step's directories outside the repository, at the peak
    repo_growth: int = 0  # bytes the repository grew by
    threads: dict[str, float] = field(default_factory=dict)
    failed: str | None = None  # why the row does not count
    info: dict = field(default_factory=dict)

    @property
    def disk_used(self) -> int:
        return self.interim_peak + self.repo_growth


def thread_group(name: str) -> str:
    for prefix in ("es-dump", "es-load"):
        if name.startswith(prefix):
            return prefix
    return re.sub(r"[-_]\d+(?: \(.*\))?$", "", name)


class Bench:
    def __init__(self, tmp: str, server: SearchServer):
        self.tmp = tmp
        self.server = server
        self.script = os.path.abspath(__file__)
        self.logs = os.path.join(tmp, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.samples: dict[str, Sample] = {}

    def measure(self, step: str, argv: list[str], *, wrapper: str | None = None, dirs: list[str] = (),
                repo: str | None = None, env: dict | None = None, tag: str) -> Sample:
        """Run ``argv`` (under the wrapper when ``wrapper`` is "runner" or "script"), timed, sampled, with the
        machine's and the server's CPU around it. A non-zero exit raises."""
        report = os.path.join(self.logs, f"{tag}.rusage.json")
        log_path = os.path.join(self.logs, f"{tag}.log")
        if wrapper:
            argv = [sys.executable, "-c", _WRAPPER, report, wrapper, *argv]
        repo0 = dir_bytes(repo) if repo else 0
        with open(log_path, "wb") as log:
            s0, b0 = group_cpu(self.server.pid), busy_cpu()
            t0 = time.perf_counter()
            # cwd: the repository root, so the code measured is this checkout's even without the editable install
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO_ROOT, env=env or os.environ.copy())
            sampler = Sampler(proc.pid, list(dirs))
            sampler.start()
            try:
                _, status, ru = os.wait4(proc.pid, 0)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                raise
            finally:
                sampler.stop.set()
                sampler.join()
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            time.sleep(0.1)
            s1, b1 = group_cpu(self.server.pid), busy_cpu()
        sampler.disk_peak = max(sampler.disk_peak, sum(dir_bytes(d) for d in dirs if os.path.isdir(d)))
        if code != 0:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"{step}: exited with {code}:\n{tail}")
        total_cpu = ru.ru_utime + ru.ru_stime
        s = Sample(step, wall=wall, server_cpu=s1 - s0, wait4_maxrss_kib=ru.ru_maxrss,
                   interim_peak=sampler.disk_peak, repo_growth=(dir_bytes(repo) - repo0) if repo else 0)
        if wrapper:
            with open(report) as f:
                own = json.load(f)
            threads: dict[str, float] = collections.defaultdict(float)
            for name, cpu in own["threads"]:
                threads[thread_group(name)] += cpu
            s.cpu = own["utime"] + own["stime"]
            threads["(unattributed)"] = max(0.0, s.cpu - sum(threads.values()))
            s.threads = dict(threads)
            if sampler.sub_peak:  # it ran tools (multielasticdump): what wait4 adds is theirs
                s.tools_cpu = max(0.0, total_cpu - s.cpu)
            else:  # no descendants: the difference is the interpreter's teardown after the atexit report
                s.threads["(exit)"] = max(0.0, total_cpu - s.cpu)
                s.cpu = total_cpu
            # VmHWM: ru_maxrss would count this script's own RSS, which the child had between fork and exec
            s.peak_rss_kib = peak_rss_kib(own)
            s.info["ru_maxrss_kib"] = own["maxrss_kib"]
            s.tools_rss_kib = sampler.sub_peak // 1024
        else:
            s.cpu = total_cpu
            s.peak_rss_kib = max(sampler.root_hwm, sampler.tree_peak) // 1024
        s.other_cpu = max(0.0, (b1 - b0) - total_cpu - s.server_cpu)
        s.info["rss_samples"] = sampler.samples
        if wrapper == "runner":
            s.info["indices"] = runner_log_facts(log_path)
        s.info["loadavg_1min_at_end"] = os.getloadavg()[0]
        return s


_DUMPED = re.compile(r"dumped index (\S+): (\d+) documents, (\d+) bytes in ([\d.]+) s \([^,]+, (\w[\w-]*), "
                     r"(\d+) slice")
_RESTORED = re.compile(r"restored index (\S+): (\d+) documents in ([\d.]+) s")


def runner_log_facts(log_path: str) -> dict[str, dict]:
    """What the runner logged per index: a stream dump's documents, bytes, seconds, method and slices; a stream
    restore's load seconds."""
    out: dict[str, dict] = {}
    with contextlib.suppress(OSError), open(log_path, errors="replace") as f:
        for line in f:
            if m := _DUMPED.search(line):
                out[m[1]] = {"documents": int(m[2]), "bytes": int(m[3]), "seconds": float(m[4]), "method": m[5],
                             "slices": int(m[6])}
            elif m := _RESTORED.search(line):
                out[m[1]] = {"documents": int(m[2]), "seconds": float(m[3])}
    return out


def combine(step: str, parts: list[Sample]) -> Sample:
    """Two steps run one after the other, as one flow."""
    s = Sample(step, wall=sum(p.wall for p in parts), cpu=sum(p.cpu for p in parts),
               tools_cpu=sum(p.tools_cpu for p in parts), peak_rss_kib=max(p.peak_rss_kib for p in parts),
               wait4_maxrss_kib=max(p.wait4_maxrss_kib for p in parts),
               server_cpu=sum(p.server_cpu for p in parts), other_cpu=sum(p.other_cpu for p in parts),
               interim_peak=max(p.interim_peak for p in parts), repo_growth=sum(p.repo_growth for p in parts))
    s.info["parts"] = [p.step for p in parts]
    return s


def restic_env(repo: str, cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(RESTIC_PASSWORD=REPO_PASSWORD, RESTIC_REPOSITORY=repo, RESTIC_CACHE_DIR=cache)
    return env


def restic(repo: str, cache: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["restic", *args], env=restic_env(repo, cache), capture_output=True, text=True)


def empty(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


# -- the probe and the budget -------------------------------------------------------------------------------------

def read_rate(url: str, loaded: int) -> float:
    """One-stream PIT read of everything in this process: source bytes per second."""
    from elasticsearch import Elasticsearch

    es = Elasticsearch(url, request_timeout=120)
    t0 = time.perf_counter()
    for name in INDEX_NAMES:
        pit = es.open_point_in_time(index=name, keep_alive="2m")["id"]
        after = None
        while True:
            kw: dict[str, Any] = {"pit": {"id": pit, "keep_alive": "2m"}, "sort": ["_shard_doc"], "size": 1000,
                                  "track_total_hits": False}
            if after is not None:
                kw["search_after"] = after
            hits = es.search(**kw)["hits"]["hits"]
            if len(hits) < 1000:
                break
            after = hits[-1]["sort"]
        es.close_point_in_time(id=pit)
    es.close()
    return loaded / (time.perf_counter() - t0)


# Each row's seconds: a fixed part (starting processes: multielasticdump forks a node process per index and type)
# plus a factor times the data size over one of the probe's rates: R = a one-stream read (read_rate), L = our
# load after the warm-up (generation + bulk). Fitted to runs at 100 and 1000 MB on this project's 2-core machine;
# ESTIMATE_MARGIN on top.
_ESTIMATE: dict[str, tuple[str, float, float]] = {
    STEP_FLOOR: ("R", 0.5, 0.5), STEP_STREAM: ("R", 0.9, 1.5), STEP_STREAM2: ("R", 0.9, 1.0),
    STEP_INTERIM: ("R", 0.6, 7.0), STEP_STASH: ("R", 1.2, 6.0), STEP_STASH5K: ("R", 0.65, 5.0),
    STEP_RESTORE: ("L", 0.3, 3.0), STEP_RESTORE_INTERIM: ("L", 0.6, 7.0), STEP_STASH_RESTORE: ("L", 2.1, 7.0),
}
# the library dumps read only the largest index (half the data)
_TUNING = {STEP_LIB: ("R", 0.35, 1.0), STEP_LIB_PAGE: ("R", 0.35, 1.0), STEP_LIB_SLICES: ("R", 0.35, 1.0),
           STEP_RESTORE_W2: ("L", 0.35, 2.0)}
_LOAD = 0.5  # the rest of the load, in L: the probe's rate is a small index's, a large load runs faster
_OVERHEAD = ("L", 0.05, 25.0)  # deleting indices, verifying restores, restic checks, per-byte costs, stopping
ESTIMATE_MARGIN = 1.3


def estimate_seconds(size: int, rates: dict[str, float], loaded: int, tuning: bool) -> float:
    """The rest of the benchmark at ``size`` bytes, after the probe: the rest of the load, the rows, the checks."""
    rows = list(_ESTIMATE.values()) + (list(_TUNING.values()) if tuning else []) + [_OVERHEAD]
    work = sum(fixed + factor * size / rates[unit] for unit, factor, fixed in rows)
    return ESTIMATE_MARGIN * (work + _LOAD * max(0, size - loaded) / rates["L"])


def fit_size(requested: int, budget: float, rates: dict[str, float], loaded: int, tuning: bool) -> int:
    """The largest size (whole MB, at most ``requested``) whose estimate fits ``budget`` seconds."""
    if budget <= 0 or estimate_seconds(requested, rates, loaded, tuning) <= budget:
        return requested
    lo, hi = loaded, requested
    while hi - lo > MB:
        mid = (lo + hi) // 2
        if estimate_seconds(mid, rates, loaded, tuning) <= budget:
            lo = mid
        else:
            hi = mid
    return max(loaded, lo // MB * MB)


# -- per-byte costs of the stream dump's own work -----------------------------------------------------------------

def micro_costs(loader: Loader, level: int) -> list[dict]:
    """Single-core cost of each per-byte stage of a stream backup, on pages of 1000 hits built from about
    MICRO_BYTES of documents generated as the loaded ones (the same generators, fresh seeds)."""
    import orjson

    from drivers.elasticsearch import stream

    pages: list[bytes] = []
    source = 0
    for i, ix in enumerate(INDICES):
        gen = iter(ix.gen(100 + i))
        want = MICRO_BYTES * ix.share
        got, n = 0, 0
        while got < want:
            hits = []
            for _ in range(1000):
                doc_id, src = next(gen)
                n += 1
                raw = _compact(src)
                got += len(raw.encode())
                hits.append(f'{{"_index":"{ix.name}","_id":"{doc_id}","_score":null,"_source":{raw},'
                            f'"sort":[{n}]}}')
            pages.append(('{"pit_id":"x","hits":{"hits":[' + ",".join(hits) + "]}}").encode())
        source += got
    rows: list[dict] = []

    def row(key: str, stage: str, nbytes: int, fn: Callable[[], object], what: str) -> None:
        c0 = time.thread_time()
        fn()
        cpu = time.thread_time() - c0
        rows.append({"key": key, "stage": stage, "bytes": nbytes, "cpu_s": cpu,
                     "mb_per_cpu_s": nbytes / MB / cpu if cpu else None, "cpu_s_per_gb": cpu / (source / 1e9),
                     "what": what})

    from drivers.elasticsearch import connection

    # The driver's own parser and encoder as they are in this checkout, beside two fixed references (the json
    # module: one compact encoding per _source and one UTF-8 encoding per page; orjson), so that the figures
    # stay comparable while the driver changes.
    driver_loads = getattr(connection, "fast_loads", None)
    loads = (lambda raw: driver_loads(raw, json.loads)) if driver_loads else json.loads
    loads_name = "connection.fast_loads" if driver_loads else "json.loads (the client's default serializer)"

    def parse(fn: Callable[[bytes], Any]) -> None:
        for p in pages:  # each page dropped once parsed, as the dump drops it once encoded
            fn(p)

    row("json", "parse the pages: json.loads", source, lambda: parse(json.loads),
        "reference: the elasticsearch client's default JsonSerializer")
    row("orjson", "parse the pages: orjson.loads", source, lambda: parse(orjson.loads),
        f"reference: orjson {orjson.__version__}")
    row("loads_driver", "parse the pages: the driver's", source, lambda: parse(loads),
        f"what this checkout's client parses with: {loads_name}")

    def encode_json(parsed: list[dict]) -> None:
        for p in parsed:
            "".join([f'{{"index":{{"_id":{_compact(h["_id"])}}}}}\n{_compact(h["_source"])}\n'
                     for h in p["hits"]["hits"]]).encode()

    def encode_orjson(parsed: list[dict]) -> None:
        for p in parsed:
            b"".join([b'{"index":{"_id":' + orjson.dumps(h["_id"]) + b"}}\n" + orjson.dumps(h["_source"]) + b"\n"
                      for h in p["hits"]["hits"]])

    out: list[bytes] = []

    def encode_driver(parsed: list[dict]) -> None:
        out.extend(stream._ndjson(p["hits"]["hits"], "x") for p in parsed)

    def encoding(key: str, stage: str, parse_with: Callable[[bytes], Any], encode: Callable[[list], None],
                 what: str) -> None:
        parsed = [parse_with(p) for p in pages]  # untimed; freed before the next
        row(key, stage, source, lambda: encode(parsed), what)

    encoding("ndjson_json", "_bulk encoding: json module", json.loads, encode_json,
             "reference: one compact json.JSONEncoder encoding per _source, one UTF-8 encode per page")
    encoding("ndjson_orjson", "_bulk encoding: orjson.dumps", orjson.loads, encode_orjson,
             "reference: orjson per _id and _source, bytes joined")
    encoding("ndjson", "_bulk encoding: the driver's (stream._ndjson)", loads, encode_driver,
             "what this checkout's dump does with each page it parsed")
    data = b"".join(out)
    ratio = repository_stages(data, level, row).ratio
    for r in rows:
        r["compression_ratio"] = ratio
        r["ndjson_over_source"] = len(data) / source
    return rows


# -- reporting ----------------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def row_dict(s: Sample, source_bytes: int) -> dict:
    return {
        "row": ROWS.get(s.step, ""), "step": s.step, "failed": s.failed, "wall_s": s.wall,
        "mb_per_s": s.info.get("source_bytes", source_bytes) / MB / s.wall if s.wall and not s.failed else None,
        "cpu_s": s.cpu,
        "tools_cpu_s": s.tools_cpu, "peak_rss_mib": s.peak_rss_kib / 1024, "tools_rss_mib": s.tools_rss_kib / 1024,
        "server_cpu_s": s.server_cpu, "other_cpu_s": s.other_cpu, "interim_peak_mib": s.interim_peak / MIB,
        "repo_growth_mib": s.repo_growth / MIB, "disk_used_mib": s.disk_used / MIB, "threads_cpu_s": s.threads,
        "info": s.info,
    }


def checks(rows: dict[str, dict]) -> list[dict]:
    out = []

    def ok(step: str) -> bool:
        return step in rows and not rows[step]["failed"]

    if ok(STEP_STREAM) and ok(STEP_STASH):
        out.append({"check": "Stash's flow wall (row 4) / stream backup wall (row 1)",
                    "value": rows[STEP_STASH]["wall_s"] / rows[STEP_STREAM]["wall_s"], "op": ">=",
                    "target": TARGET_SPEEDUP})
    for step in RUNNER_STEPS:
        if step in rows and rows[step]["peak_rss_mib"]:
            out.append({"check": f"{step}: peak RSS MiB", "value": rows[step]["peak_rss_mib"], "op": "<=",
                        "target": TARGET_RSS_MIB})
    for step in STREAM_STEPS:
        if step in rows:
            out.append({"check": f"{step}: interim disk MiB", "value": rows[step]["interim_peak_mib"], "op": "==",
                        "target": 0})
    for c in out:
        v, t = c["value"], c["target"]
        c["pass"] = v >= t if c["op"] == ">=" else v <= t if c["op"] == "<=" else v == t
    info = []  # not targets, for reading the figures
    pairs = ((STEP_STASH5K, STEP_STREAM), (STEP_INTERIM, STEP_STREAM), (STEP_STREAM, STEP_FLOOR),
             (STEP_STASH_RESTORE, STEP_RESTORE), (STEP_RESTORE_INTERIM, STEP_RESTORE))
    for a, b in pairs:
        if ok(a) and ok(b):
            info.append({"check": f"{a} / {b} (wall)", "value": rows[a]["wall_s"] / rows[b]["wall_s"], "op": None,
                         "target": None, "pass": None})
    return out + info


def markdown(meta: dict, rows: dict[str, dict], result_checks: list[dict], micro: list[dict], verify: dict,
             analysis: list[str]) -> str:
    d = meta["data"]
    per = ", ".join(f"`{n}` {v['bytes'] / MB:.0f} MB / {v['documents']} docs / {v['shards']} shard"
                    f"{'s' if v['shards'] > 1 else ''}" for n, v in d["per_index"].items())
    lines = [f"Data: {d['source_bytes'] / MB:.1f} MB of _source JSON in {d['documents']} documents (avg "
             f"{d['source_bytes'] / max(1, d['documents']):.0f} B): {per}; loaded (outside every timed window) in "
             f"{d['load_seconds']:.0f} s ({d['source_bytes'] / MB / d['load_seconds']:.1f} MB/s, generation "
             "included)."]
    if d.get("size_note"):
        lines.append(f"**Size:** {d['size_note']}")
    if d.get("tuning_note"):
        lines.append(d["tuning_note"])
    m = meta["machine"]
    lines.append(f"Elasticsearch {m['server']} single node, heap {HEAP_MB} MiB, **security off (plain HTTP, no "
                 f"user)**; elasticdump {ELASTICDUMP_VERSION} on node {m['node']}; {m['restic']}; Python "
                 f"{m['python']}, elasticsearch-py {m['elasticsearch_py']}; {m['cpus']} CPUs; load average "
                 f"{' / '.join(f'{x:.2f}' for x in meta['loadavg_before'])} (1/5/15 min) before starting, "
                 f"{' / '.join(f'{x:.2f}' for x in meta['loadavg_after'])} at the end.")
    code = meta["code"]
    lines.append(f"Code measured: checkout {code['git_head'] or '?'} (digest {code['code_sha256']})"
                 + (" — **the code changed while the benchmark ran**" if code["changed_during_run"] else "") + ".")
    lines += ["", "| # | step | wall s | MB/s | peak RSS MiB | CPU s | server CPU s | interim disk peak MiB | "
                  "repo growth MiB | disk used MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for step in ORDER:
        if step not in rows:
            continue
        r = rows[step]
        name = f"**{step}**" if step in (STEP_STASH, STEP_STASH5K, STEP_STASH_RESTORE) else f"`{step}`"
        if r["failed"]:
            lines.append(f"| {r['row']} | {name} | FAILED | – | – | – | – | – | – | – |")
            continue
        rss = f"{r['peak_rss_mib']:.0f}"
        if r["tools_rss_mib"]:
            rss += f" (+ node {r['tools_rss_mib']:.0f})"
        cpu = f"{r['cpu_s']:.1f}" + (f" (+ node {r['tools_cpu_s']:.1f})" if r["tools_cpu_s"] >= 0.05 else "")
        lines.append(f"| {r['row']} | {name} | {r['wall_s']:.1f} | {r['mb_per_s']:.1f} | {rss} | {cpu} | "
                     f"{r['server_cpu_s']:.1f} | {r['interim_peak_mib']:.0f} | {r['repo_growth_mib']:.1f} | "
                     f"{r['disk_used_mib']:.0f} |")
    failed = [f"`{s}`: {rows[s]['failed']}" for s in ORDER if s in rows and rows[s]["failed"]]
    if failed:
        lines += ["", "**FAILED:** " + "; ".join(failed)]
    lines += ["", "Peak RSS: a stash-runner or Python row's own (VmHWM at exit), with its multielasticdump tree's "
              "sampled peak in brackets; a node row: its process tree's summed RSS, sampled every 0.2 s; restic: "
              "its VmHWM, sampled every 0.2 s. CPU: the measured process (+ its reaped multielasticdump tree). "
              "Server CPU: Elasticsearch's process group in the step's window. Disk used = interim disk peak + "
              "repository growth. MB/s = source bytes / wall.", "",
              "CPU in each step's window (s): cores busy near 2 means the machine was CPU-bound; other = the rest of "
              "the machine (other sessions), which should be ~0.", "",
              "| # | step | ours | server | other | cores busy |", "|---|---|---:|---:|---:|---:|"]
    for step in ORDER:
        if step not in rows or rows[step]["failed"]:
            continue
        r = rows[step]
        ours = r["cpu_s"] + r["tools_cpu_s"]
        busy = (ours + r["server_cpu_s"] + r["other_cpu_s"]) / r["wall_s"]
        lines.append(f"| {r['row']} | `{step}` | {ours:.1f} | {r['server_cpu_s']:.1f} | {r['other_cpu_s']:.1f} | "
                     f"{busy:.2f} |")
    seen = [r["info"]["loadavg_1min_at_end"] for r in rows.values() if "loadavg_1min_at_end" in r["info"]]
    if seen:
        lines += ["", f"1-min load average at the end of the steps: {min(seen):.2f} to {max(seen):.2f}."]
    timed = [rows[s] for s in ORDER if s in rows and not rows[s]["failed"] and rows[s]["row"] != "" and s not in
             (STEP_STASH, STEP_STASH5K, STEP_STASH_RESTORE)]
    other = sum(r["other_cpu_s"] for r in timed) / max(1e-9, sum(r["wall_s"] for r in timed))
    if other > 0.15:
        lines += ["", f"**Note:** other processes (other sessions on this machine) used {other:.2f} of its "
                  f"{meta['machine']['cpus']} cores on average during the timed steps: every row competed for what "
                  "was left, so walls are longer than on an idle machine (ratios between rows less so)."]
    lines += ["", "Own CPU by thread (s; `name_N` threads summed):", ""]
    for step in ORDER:
        if step in rows and rows[step]["threads_cpu_s"] and not rows[step]["failed"]:
            parts = ", ".join(f"{g} {v:.1f}" for g, v in sorted(rows[step]["threads_cpu_s"].items(),
                                                               key=lambda kv: -kv[1]) if v >= 0.05)
            lines.append(f"- `{step}`: {parts}")
    lines += ["", "| check | value | target | result |", "|---|---:|---:|---|"]
    for c in result_checks:
        digits = 0 if "MiB" in c["check"] else 2
        if c["target"] is None:
            lines.append(f"| {c['check']} | {c['value']:.{digits}f} | – | (info) |")
        else:
            op = {">=": "≥", "<=": "≤", "==": "="}[c["op"]]
            lines.append(f"| {c['check']} | {c['value']:.{digits}f} | {op} {c['target']:g} | "
                         f"{'PASS' if c['pass'] else 'FAIL'} |")
    if micro:
        lines += ["", f"Per-byte cost of the stream backup's own stages, one core, on {micro[0]['bytes'] / MB:.0f} MB "
                  f"of documents in pages of 1000 hits (per GB of _source; the _bulk file is "
                  f"{micro[0]['ndjson_over_source']:.3f}x the source, zstd ratio {micro[0]['compression_ratio']:.2f}):",
                  "", "| stage | MB/s per core | CPU s per GB of source | what |", "|---|---:|---:|---|"]
        for r in micro:
            lines.append(f"| {r['stage']} | {_fmt(r['mb_per_cpu_s'], 0)} | {r['cpu_s_per_gb']:.2f} | {r['what']} |")
    if analysis:
        lines += ["", "Where stream mode spends its time:", ""] + [f"- {a}" for a in analysis]
    checks_txt = ", ".join(f"{k} {v}" for k, v in verify.get("restic_check", {}).items())
    restores = "; ".join(f"{s}: {'OK' if v['ok'] else 'FAILED ' + '; '.join(v['problems'])}"
                         for s, v in verify.get("restores", {}).items())
    lines += ["", f"Verification: restic check: {checks_txt}; floor counts {verify.get('floor_counts')}; restores "
              f"(every index's count + {SAMPLE_DOCS} documents per index by _id): {restores}."]
    return "\n".join(lines) + "\n"


def analyse(rows: dict[str, dict], micro: list[dict], source: int) -> list[str]:
    """Where the stream backup's time goes, from the rows' figures (nothing here is assumed)."""
    out: list[str] = []
    gb = source / 1e9
    cores = os.cpu_count() or 1

    def ok(step: str) -> bool:
        return step in rows and not rows[step]["failed"]

    if not ok(STEP_STREAM):
        return out
    b = rows[STEP_STREAM]
    t = b["threads_cpu_s"]
    busy = (b["cpu_s"] + b["server_cpu_s"] + b["other_cpu_s"]) / b["wall_s"]
    repo_side = sum(v for g, v in t.items() if g in ("blob", "upload", "MainThread"))
    out.append(f"Stream backup: {b['wall_s']:.1f} s. stash-runner used {b['cpu_s']:.1f} s CPU "
               f"({b['cpu_s'] / b['wall_s']:.2f} of one core; {b['cpu_s'] / gb:.1f} s per GB): the dump's slice "
               f"threads (es-dump: requests, the client's JSON parsing, _bulk encoding) {t.get('es-dump', 0):.1f} s, "
               f"the repository side (MainThread chunking + blob + upload) {repo_side:.1f} s. Elasticsearch used "
               f"{b['server_cpu_s']:.1f} s ({b['server_cpu_s'] / gb:.1f} s per GB), other sessions "
               f"{b['other_cpu_s']:.1f} s: {busy:.2f} of {cores} cores busy. Python threads share one interpreter "
               "lock, so one core is the ceiling of the parsing and encoding however many slices run.")
    per = b["info"].get("indices") or {}
    if per:
        out.append("Per index (the driver's log): " + "; ".join(
            f"{n} {v['slices']} slice{'s' if v['slices'] > 1 else ''}, {v['seconds']:.1f} s, "
            f"{v['bytes'] / MB / max(v['seconds'], 1e-3):.1f} MB/s of _bulk file" for n, v in per.items()) + ".")
    if ok(STEP_FLOOR):
        f = rows[STEP_FLOOR]
        out.append(f"Floor: {f['wall_s']:.1f} s (the stream backup takes {b['wall_s'] / f['wall_s']:.2f}x): "
                   f"Elasticsearch {f['server_cpu_s']:.1f} s CPU, the reader {f['cpu_s']:.1f} s "
                   f"({f['cpu_s'] / f['wall_s']:.2f} of one core: its client's JSON parsing), "
                   f"{(f['cpu_s'] + f['server_cpu_s'] + f['other_cpu_s']) / f['wall_s']:.2f} cores busy"
                   + (": the floor is its Python reader's, not the server's." if f["cpu_s"] > f["server_cpu_s"]
                      else "."))
    if ok(STEP_STASH):
        goal = rows[STEP_STASH]["wall_s"] / TARGET_SPEEDUP
        need = b["cpu_s"] + b["server_cpu_s"]
        out.append(f"The {TARGET_SPEEDUP:g}x target means a stream backup of {goal:.1f} s here (Stash's flow: "
                   f"{rows[STEP_STASH]['wall_s']:.1f} s). Its CPU (stash-runner + Elasticsearch) was {need:.1f} s: "
                   f"{need / cores:.1f} s on {cores} cores even with perfect overlap"
                   + (f"; the floor alone takes {rows[STEP_FLOOR]['wall_s']:.1f} s" if ok(STEP_FLOOR) else "") + ".")
    if ok(STEP_INTERIM):
        i = rows[STEP_INTERIM]
        out.append(f"Interim mode (backup-es): {i['wall_s']:.1f} s ({i['wall_s'] / b['wall_s']:.2f}x the stream "
                   f"backup): multielasticdump's node processes (separate processes, two indices at a time, "
                   f"--limit {OUR_LIMIT}) used {i['tools_cpu_s']:.1f} s CPU beside stash-runner's "
                   f"{i['cpu_s']:.1f} s, at the price of {i['interim_peak_mib']:.0f} MiB of interim disk.")
    base = rows.get(STEP_LIB) if ok(STEP_LIB) else None
    for step in (STEP_LIB, STEP_LIB_PAGE, STEP_LIB_SLICES):
        if ok(step):
            r = rows[step]
            vs = f" ({r['mb_per_s'] / base['mb_per_s'] - 1:+.0%} against T1)" if base and step != STEP_LIB else ""
            out.append(f"{step.removeprefix('tuning: ')}: {r['mb_per_s']:.1f} MB/s{vs} ({r['wall_s']:.1f} s), "
                       f"{r['cpu_s']:.1f} s CPU (es-dump {r['threads_cpu_s'].get('es-dump', 0):.1f} s), server "
                       f"{r['server_cpu_s']:.1f} s.")
    if micro:
        by = {r["key"]: r for r in micro}
        if all(k in by for k in ("json", "orjson", "ndjson_json", "ndjson_orjson")):
            saved = (by["ndjson_json"]["cpu_s_per_gb"] - by["ndjson_orjson"]["cpu_s_per_gb"]) * gb
            line = (f"Per GB of source on one core: parsing the pages costs {by['json']['cpu_s_per_gb']:.1f} CPU-s "
                    f"with json.loads, {by['orjson']['cpu_s_per_gb']:.1f} with orjson.loads; the _bulk encoding "
                    f"{by['ndjson_json']['cpu_s_per_gb']:.1f} CPU-s with the json module, "
                    f"{by['ndjson_orjson']['cpu_s_per_gb']:.1f} with orjson.dumps: {saved:.1f} s of this "
                    f"backup's {b['cpu_s']:.1f} s of CPU")
            if "ndjson" in by and "loads_driver" in by:
                line += (f". The measured checkout's driver: parsing {by['loads_driver']['cpu_s_per_gb']:.1f}, "
                         f"encoding {by['ndjson']['cpu_s_per_gb']:.1f} CPU-s per GB")
            out.append(line + ".")
        rest = [by[k] for k in ("chunk", "sha", "zstd", "encrypt") if k in by]
        if rest:
            total = sum(r["cpu_s_per_gb"] for r in rest)
            out.append(f"Chunk + hash + compress + encrypt: {total:.1f} CPU-s per GB of source ({total * gb:.1f} s "
                       "here), split between MainThread and the blob workers.")
    if ok(STEP_STREAM2) and b["repo_growth_mib"]:
        b2 = rows[STEP_STREAM2]
        line = (f"Unchanged data: {b2['wall_s']:.1f} s, stored {b2['repo_growth_mib']:.1f} MiB new against "
                f"{b['repo_growth_mib']:.1f} MiB the first time ({b2['repo_growth_mib'] / b['repo_growth_mib']:.0%}).")
        sliced = [n for n, v in per.items() if v.get("slices", 1) > 1]
        if sliced and b2["repo_growth_mib"] > 0.25 * b["repo_growth_mib"]:
            line += (f" {', '.join(sliced)} were read in slices, whose blocks go into the documents file in the "
                     "order the slices deliver them: that order differs from one backup to the next, and so do the "
                     "chunks.")
        out.append(line)
    if ok(STEP_RESTORE):
        r = rows[STEP_RESTORE]
        tr = r["threads_cpu_s"]
        per = r["info"].get("indices") or {}
        if per:
            out.append("Stream restore per index (the driver's log, the bulk load alone): " + "; ".join(
                f"{n} {v['seconds']:.1f} s ({v['documents'] / max(v['seconds'], 1e-3):.0f} docs/s)"
                for n, v in per.items()) + ".")
        out.append(f"Stream restore: {r['wall_s']:.1f} s; stash-runner {r['cpu_s']:.1f} s CPU (bulk senders es-load "
                   f"{tr.get('es-load', 0):.1f} s, pack reads {tr.get('read', 0):.1f} s, MainThread "
                   f"{tr.get('MainThread', 0):.1f} s); Elasticsearch {r['server_cpu_s']:.1f} s "
                   f"({r['server_cpu_s'] / gb:.1f} s per GB indexed, {r['server_cpu_s'] / r['wall_s']:.2f} cores).")
        if ok(STEP_RESTORE_W2):
            w = rows[STEP_RESTORE_W2]
            out.append(f"With 2 bulk requests at a time instead of the default 4: {w['wall_s']:.1f} s "
                       f"({w['wall_s'] / r['wall_s']:.2f}x).")
    return out


# -- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000, help="_source JSON to load, in MB (default 1000)")
    ap.add_argument("--budget-s", type=float, default=1500,
                    help="use a smaller size when the estimate at --size-mb exceeds this many seconds (0: never; "
                         "default 1500)")
    ap.add_argument("--tuning", choices=("auto", "always", "never"), default="auto",
                    help="the tuning rows: when they fit the budget (auto), always or never")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (server data, repositories)")
    args = ap.parse_args(argv)
    if args.size_mb < 1:
        ap.error("--size-mb must be at least 1")
    return args


def machine_info(server: SearchServer) -> dict:
    import elasticsearch

    restic_v = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "elasticsearch_py": ".".join(map(str, elasticsearch.__versionstr__.split(".")[:3])),
            "server": f"{server.kind} {server.version}", "node": node, "restic": " ".join(restic_v.split()[:2])}


def code_facts() -> dict:
    return {"git_head": git_head(), "code_sha256": code_digest()}


def git_head() -> str:
    """The checkout's commit, read from .git (no git process); "" when it cannot be read."""
    git = os.path.join(REPO_ROOT, ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head[:9]
        ref = head[5:]
        with contextlib.suppress(FileNotFoundError), open(os.path.join(git, ref)) as f:
            return f.read().strip()[:9]
        with open(os.path.join(git, "packed-refs")) as f:
            for line in f:
                if line.rstrip().endswith(" " + ref):
                    return line.split()[0][:9]
    except OSError:
        pass
    return ""


def code_digest() -> str:
    """Of every Python file the runner runs: a change while the benchmark runs shows as a different digest."""
    h = hashlib.sha256()
    for top in ("drivers", "stash_runner", "backends"):
        for root, dirs, files in os.walk(os.path.join(REPO_ROOT, top)):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, REPO_ROOT).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def run(args: argparse.Namespace, tmp: str, started: float) -> int:
    kind, version = SERVERS[SERVER]
    say(f"starting {kind} {version} (heap {HEAP_MB} MiB, security off) under {tmp}")
    server = start_search_server(SERVER, os.path.join(tmp, "server"), heap_mb=HEAP_MB)
    try:
        return _run(args, tmp, started, server)
    finally:
        say("stopping the server")
        server.stop()


def _run(args: argparse.Namespace, tmp: str, started: float, server: SearchServer) -> int:
    facts = code_facts()
    es = Http(server.url)
    loader = Loader(es)
    requested = args.size_mb * MB
    mdump = elasticdump_bin("multielasticdump")
    bench = Bench(tmp, server)
    # the probe: load a little, read it back, dump it with multielasticdump
    probe = min(requested, PROBE_MB * MB)
    say(f"probe: loading {probe / MB:.0f} MB")
    loader.load_until(min(probe, PROBE_WARM_MB * MB))  # the JVM's warm-up: not the rate of a longer load
    warm = loader.total
    probe_load = loader.load_until(probe)
    rates = {"L": (loader.total - warm) / probe_load if loader.total > warm else warm / loader.seconds,
             "R": read_rate(server.url, loader.total)}
    say(f"probe: {loader.total / MB:.1f} MB, loaded at {rates['L'] / MB:.1f} MB/s after the warm-up, read back at "
        f"{rates['R'] / MB:.1f} MB/s")
    tuning_possible = args.tuning != "never"
    left = args.budget_s - (time.perf_counter() - started) if args.budget_s > 0 else 0
    size = fit_size(requested, left, rates, loader.total, args.tuning == "always")
    note = ""
    if size < requested:
        full = estimate_seconds(requested, rates, loader.total, args.tuning == "always")
        note = (f"{size / MB:.0f} MB instead of the requested {args.size_mb} MB: at the rates the probe measured "
                f"here (load {rates['L'] / MB:.1f} MB/s, one-stream read {rates['R'] / MB:.1f} MB/s) the full size "
                f"would take about {full / 60:.0f} min, over what is left of --budget-s {args.budget_s:.0f} s.")
        say(note)
    tuning = args.tuning == "always" or (
        tuning_possible and (args.budget_s <= 0 or estimate_seconds(size, rates, loader.total, True) <= left))
    est = estimate_seconds(size, rates, loader.total, tuning)
    with_tuning = estimate_seconds(size, rates, loader.total, True)
    tuning_note = "" if tuning or args.tuning == "never" else (
        f"The tuning rows were left out: with them the estimate ({with_tuning:.0f} s) exceeds what is left of "
        f"--budget-s ({left:.0f} s); --tuning always runs them.")
    say(f"loading to {size / MB:.0f} MB; whole benchmark estimated at {est / 60:.1f} min"
        f"{' with' if tuning else ' without'} the tuning rows")
    loader.load_until(size)
    load_s = loader.seconds
    counts = loader.counts()
    if counts != loader.docs:
        raise RuntimeError(f"after the load the indices count {counts}, loaded {loader.docs}")
    source = loader.total
    say(f"loaded {source / MB:.1f} MB, {sum(loader.docs.values())} documents in {load_s:.0f} s "
        f"({source / MB / load_s:.1f} MB/s)")
    others = [r["index"] for r in es.request("GET", "/_cat/indices?format=json&h=index&expand_wildcards=all")
              if r["index"] not in INDEX_NAMES]
    if others:
        say(f"the cluster also holds {others} (multielasticdump's default dumps every index it lists)")

    samples: dict[str, Sample] = {}
    verify: dict = {"restores": {}, "restic_check": {}}
    broken: list[str] = []
    tmp_env = os.path.join(tmp, "scratch")

    def record(s: Sample) -> Sample:
        samples[s.step] = s
        if s.failed:
            say(f"{s.step}: FAILED: {s.failed}")
        else:
            say(f"{s.step}: {s.wall:.1f} s, {s.info.get('source_bytes', source) / MB / s.wall:.1f} MB/s, CPU "
                f"{s.cpu:.1f} s"
                f"{f' (+ node {s.tools_cpu:.1f} s)' if s.tools_cpu >= 0.05 else ''}, peak RSS "
                f"{s.peak_rss_kib / 1024:.0f} MiB{f' (+ node {s.tools_rss_kib / 1024:.0f})' if s.tools_rss_kib else ''}"
                f", server {s.server_cpu:.1f} s, interim peak {s.interim_peak / MIB:.0f} MiB, repo +"
                f"{s.repo_growth / MIB:.1f} MiB")
        return s

    def attempt(step: str, fn: Callable[[], Sample | None]) -> Sample | None:
        """A row that raises is recorded FAILED; the benchmark goes on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported, and the exit code says so
            broken.append(step)
            return record(Sample(step, failed=str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)))

    def runner_env() -> dict[str, str]:
        empty(tmp_env)
        return {**os.environ, "TMPDIR": tmp_env}

    def repo_paths(name: str) -> tuple[str, str]:
        return os.path.join(tmp, name), os.path.join(tmp, f"{name}.yaml")

    # row 8: the floor
    def floor() -> Sample:
        out = os.path.join(tmp, "floor.json")
        s = bench.measure(STEP_FLOOR, [bench.script, "--child", "floor", server.url, str(FLOOR_SLICES),
                                       str(FLOOR_PAGE), out], wrapper="script", tag="floor")
        with open(out) as f:
            got = json.load(f)["counts"]
        verify["floor_counts"] = "as loaded" if got == loader.docs else f"NOT as loaded: {got}"
        if got != loader.docs:
            broken.append(STEP_FLOOR)
        return record(s)

    attempt(STEP_FLOOR, floor)

    # rows 1 and 2: stream backups
    repo_stream, objects_stream = repo_paths("repo-stream")
    es_objects(objects_stream, server, repo_dir=repo_stream)
    interim_unused = os.path.join(tmp, "interim-unused")
    cli = ["--objects", objects_stream, "-n", NAMESPACE, "--appbinding", "es", "--repository", "repo"]
    for step, tag in ((STEP_STREAM, "stream1"), (STEP_STREAM2, "stream2")):
        attempt(step, lambda step=step, tag=tag: record(bench.measure(
            step, ["backup", *cli, "--mode", "stream"], wrapper="runner", dirs=[tmp_env, interim_unused],
            repo=repo_stream, env=runner_env(), tag=tag)))

    # row 3: backup-es (interim)
    repo_interim, objects_interim = repo_paths("repo-interim")
    es_objects(objects_interim, server, repo_dir=repo_interim)
    interim_dir = os.path.join(tmp, "interim-runner", "stash-interim-volume", "data")
    os.makedirs(interim_dir)

    def addon(command: str, out: str) -> list[str]:
        argv = stash_args(command, objects_interim, repo_interim, interim_dir, out)
        return [a if a != "--scratch-dir=/tmp" else f"--scratch-dir={tmp_env}" for a in argv]

    attempt(STEP_INTERIM, lambda: record(bench.measure(
        STEP_INTERIM, addon("backup-es", os.path.join(tmp, "out-backup-es")), wrapper="runner",
        dirs=[interim_dir, tmp_env], repo=repo_interim, env=runner_env(), tag="interim")))

    # rows 4 and 4b: Stash's flow
    def stash_flow(limit: int, name: str, steps: tuple[str, str, str]) -> Sample:
        repo, cache = os.path.join(tmp, name), os.path.join(tmp, f"{name}-cache")
        dump_dir = os.path.join(tmp, f"interim-{name}", "stash-interim-volume", "data")
        empty(dump_dir)
        init = restic(repo, cache, "init")
        if init.returncode:
            raise RuntimeError(f"restic init: {init.stderr.strip()}")
        argv = [mdump, "--direction=dump", f"--input={server.url}", f"--output={dump_dir}", "--ignoreTemplate=true"]
        if limit != STASH_LIMIT:
            argv.append(f"--limit={limit}")
        d = record(bench.measure(steps[0], argv, dirs=[dump_dir], tag=f"{name}-dump"))
        d.info["files"] = sorted(os.listdir(dump_dir))
        b = record(bench.measure(steps[1], ["restic", "backup", dump_dir, "--host", "host-0"], dirs=[dump_dir],
                                 repo=repo, env=restic_env(repo, cache), tag=f"{name}-backup"))
        flow = record(combine(steps[2], [d, b]))
        flow.info["dump_dir"] = dump_dir
        return flow

    stash = attempt(STEP_STASH, lambda: stash_flow(STASH_LIMIT, "repo-stash", (STEP_MED, STEP_RESTIC, STEP_STASH)))
    stash_dir = stash.info.get("dump_dir") if stash else None
    if stash_dir:
        empty(stash_dir)  # as a fresh pod's interim volume for the restore
    five = attempt(STEP_STASH5K, lambda: stash_flow(OUR_LIMIT, "repo-stash5k",
                                                    (STEP_MED5K, STEP_RESTIC5K, STEP_STASH5K)))
    if five and five.info.get("dump_dir"):
        shutil.rmtree(five.info["dump_dir"], ignore_errors=True)

    # tuning: the dump alone
    if tuning:
        for step, slices, page, tag in ((STEP_LIB, FEWER_SLICES, 1000, "lib"),
                                        (STEP_LIB_PAGE, FEWER_SLICES, 5000, "lib5k"),
                                        (STEP_LIB_SLICES, 4, 1000, "lib4")):
            def lib(step: str = step, slices: int = slices, page: int = page, tag: str = tag) -> Sample:
                out = os.path.join(tmp, f"{tag}.json")
                s = bench.measure(step, [bench.script, "--child", "libdump", server.url, str(slices), str(page),
                                         TUNING_INDEX, out], wrapper="script", tag=tag)
                with open(out) as f:
                    got = json.load(f)
                if got["counts"] != {TUNING_INDEX: loader.docs[TUNING_INDEX]}:
                    raise RuntimeError(f"{step}: dumped {got['counts']}, loaded {loader.docs[TUNING_INDEX]}")
                s.info["bytes"] = got["bytes"]
                s.info["source_bytes"] = loader.bytes[TUNING_INDEX]
                return record(s)

            attempt(step, lib)

    # restores, each into the emptied cluster, each verified
    def restore_row(step: str, fn: Callable[[], Sample]) -> None:
        delete_indices(es)
        s = attempt(step, fn)
        if s is None or s.failed:
            verify["restores"][step] = {"ok": False, "problems": [s.failed if s else "did not run"]}
            return
        v = verify_restore(es, loader)
        verify["restores"][step] = v
        say(f"{step}: verified in {v['seconds']:.1f} s: {'OK' if v['ok'] else v['problems']}")
        if not v["ok"]:
            s.failed = "verification: " + "; ".join(v["problems"])
            for part in s.info.get("parts", []):  # a flow's steps are not timed either
                samples[part].failed = s.failed
            broken.append(step)

    restore_cli = ["--objects", objects_stream, "-n", NAMESPACE, "--appbinding", "es", "--repository", "repo"]
    restore_row(STEP_RESTORE, lambda: record(bench.measure(
        STEP_RESTORE, ["restore", *restore_cli, "--mode", "stream"], wrapper="runner", dirs=[tmp_env, interim_unused],
        repo=repo_stream, env=runner_env(), tag="restore-stream")))
    restore_row(STEP_RESTORE_INTERIM, lambda: record(bench.measure(
        STEP_RESTORE_INTERIM, addon("restore-es", os.path.join(tmp, "out-restore-es")), wrapper="runner",
        dirs=[interim_dir, tmp_env], repo=repo_interim, env=runner_env(), tag="restore-interim")))

    def stash_restore() -> Sample:
        if not stash_dir:
            raise RuntimeError("row 4 did not run: nothing to restore")
        repo, cache = os.path.join(tmp, "repo-stash"), os.path.join(tmp, "repo-stash-cache")
        r = record(bench.measure(STEP_RRESTORE, ["restic", "restore", "latest", "--host", "host-0", "--target", "/"],
                                 dirs=[stash_dir], repo=repo, env=restic_env(repo, cache), tag="stash-restic-restore"))
        load = record(bench.measure(STEP_MLOAD, [mdump, "--direction=load", f"--input={stash_dir}",
                                                 f"--output={server.url}", "--ignoreTemplate=true"],
                                    dirs=[stash_dir], tag="stash-load"))
        flow = record(combine(STEP_STASH_RESTORE, [r, load]))
        return flow

    restore_row(STEP_STASH_RESTORE, stash_restore)
    if stash_dir:
        shutil.rmtree(stash_dir, ignore_errors=True)
    if tuning:
        restore_row(STEP_RESTORE_W2, lambda: record(bench.measure(
            STEP_RESTORE_W2, ["restore", *restore_cli, "--mode", "stream", "--max-concurrency", "2"],
            wrapper="runner", dirs=[tmp_env], repo=repo_stream, env=runner_env(), tag="restore-stream-w2")))

    say("restic check of every repository")
    for name in ("repo-stream", "repo-interim", "repo-stash", "repo-stash5k"):
        repo = os.path.join(tmp, name)
        if os.path.isdir(repo):
            c = restic(repo, os.path.join(tmp, f"{name}-cache"), "check")
            verify["restic_check"][name] = "OK" if c.returncode == 0 else "FAIL"
            if c.returncode:
                broken.append(f"restic check {name}")
                say(f"restic check {name}: {(c.stdout + c.stderr)[-1000:]}")

    say("per-byte costs of the stream dump's stages")
    from stash_runner.restic import compression
    try:
        micro = micro_costs(loader, compression.DEFAULT_LEVEL)
    except Exception as e:  # noqa: BLE001 - an aid to reading, not a row
        say(f"per-byte costs failed: {e!r}")
        micro = []

    rows = {s: row_dict(samples[s], source) for s in ORDER if s in samples}
    result_checks = checks(rows)
    analysis = analyse(rows, micro, source)
    meta = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "args": vars(args),
            "machine": machine_info(server), "loadavg_before": args.loadavg_before, "loadavg_after": os.getloadavg(),
            "code": {**facts, "changed_during_run": code_digest() != facts["code_sha256"]},
            "data": {"requested_bytes": requested, "source_bytes": source, "documents": sum(loader.docs.values()),
                     "per_index": {ix.name: {"documents": loader.docs[ix.name], "bytes": loader.bytes[ix.name],
                                             "shards": ix.shards} for ix in INDICES},
                     "load_seconds": load_s, "size_note": note, "tuning_note": tuning_note, "other_indices": others,
                     "probe": {"bytes_mb": min(requested, PROBE_MB * MB) / MB,
                               **{f"{k}_mb_s": v / MB for k, v in rates.items()}},
                     "estimated_seconds": est, "tuning": tuning}}
    table = markdown(meta, rows, result_checks, micro, verify, analysis)
    total = time.perf_counter() - started
    table += f"\nTotal benchmark time: {total:.0f} s (estimated {est:.0f} s after the probe).\n"
    print(table, end="")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "bench_es.md"), "w") as f:
        f.write(table)
    with open(os.path.join(OUT_DIR, "bench_es.json"), "w") as f:
        json.dump({**meta, "total_seconds": total, "rows": rows, "checks": result_checks, "micro_costs": micro,
                   "analysis": analysis, "verify": verify, "thread_roles": THREAD_ROLES, "broken": broken,
                   "samples": {s: asdict(x) for s, x in samples.items()}}, f, indent=2)
    say(f"wrote {os.path.relpath(OUT_DIR, REPO_ROOT)}/bench_es.md and .json")
    if broken:
        say(f"broken: {', '.join(broken)}")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return 0
    args = parse_args(argv)
    started = time.perf_counter()
    for tool in ("restic", "node"):
        if not shutil.which(tool):
            print(f"{tool} missing: run `make deps`", file=sys.stderr)
            return 2
    try:
        elasticdump_bin("multielasticdump")
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    args.loadavg_before = os.getloadavg()
    if args.loadavg_before[0] > 0.5:
        # Anything else running on the machine competes for the cores and skews every number.
        say(f"warning: load average is {args.loadavg_before[0]:.2f} before starting; results will be noisy")
    tmp = tempfile.mkdtemp(prefix="bench-es-", dir="/tmp")
    os.chmod(tmp, 0o755)  # the server runs as nobody: its run dir goes under here only if it can traverse
    try:
        return run(args, tmp, started)
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
