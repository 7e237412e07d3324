#!/usr/bin/env python3
"""Benchmark MongoDB backup and restore on FerretDB: stash-runner against the time pymongo alone needs.

Run from the repository root: ``python3 bench/bench_mongo.py [--size-mb N] [--runs N] [--keep] [--budget-s S]
[--profile auto|always|never]``. Prints Markdown tables and the targets; writes both (and every raw number as
JSON) to bench/out/bench_mongo.md and .json. Exit 0 when everything ran (also when a target is missed: it is
reported), non-zero when something broke.

The server: FerretDB 1.24 (SQLite backend; tests/mongoservers.py start_ferretdb), standalone, with SCRAM
authentication as a real deployment has, on a loopback port, its files in a temporary directory. It is loaded
(outside every timed window; the load time is reported) with ``--size-mb`` MB (decimal; default 1024) of
generated documents of mixed BSON types (ObjectId, strings, int32, int64, doubles, booleans, dates, nulls,
binary UUIDs, timestamps, nested documents, arrays of documents), about 1 KB each on average, in five
collections of two databases, each with one or two secondary indexes (a unique one among them). FerretDB 1.x has
no Decimal128, so there is none. Before the full load a small part is loaded and read back to measure the
server's insert and read rates; when the whole benchmark would not finish within ``--budget-s`` (default 720 s)
at the requested size, the largest size that fits is used instead, and the output says so.

Rows, measured side by side in each run (``--runs``, default 1; the median is reported):

* ``floor: read, sequential`` / ``floor: read, -j 4``: a Python process reading every document of every
  collection (every database but local and config, no system collections) with pymongo, as RawBSONDocument,
  ``batch_size=1000`` as the driver, one collection after the other, and four collections at a time (the driver's
  ``--numParallelCollections`` default). The floor of the target is the faster of the two.
* ``stash-runner backup``: the CLI (``backup --driver mongodb``) into a fresh local repository.
* ``stash-runner backup (unchanged)``: again, into the same repository, nothing changed in between.
* ``driver dump -> /dev/null`` (profiling, see below): the driver's MongoDump through the library, its stream
  read and thrown away: pymongo reads + the mongodump archive writer, without chunking, hashing, compressing,
  encrypting and writing packs.
* ``stash-runner restore --drop``: the CLI (``restore --driver mongodb --mongo-args=--drop``) of the latest
  snapshot into the emptied server (the benchmark's databases dropped just before, untimed).
* ``floor: insert_many -j 4 + indexes``: a Python process inserting the same documents (raw BSON kept from the
  load) into the emptied server with ``insert_many(ordered=False)`` in batches of about 1 MiB, four collections
  at a time, then building the same indexes: what a restore cannot avoid doing.
* ``stash-runner dump -> /dev/null``: the snapshot's ``/dump`` file read back from the repository.

MB/s is always the archive's bytes (the size of ``/dump`` in the snapshot, which is the documents plus a little
framing) over the wall time, so the rows compare. CPU is each Python process's own (RUSAGE_SELF, written at exit
by a tiny runpy wrapper, as bench_backup.py does; no process here has children), split by thread: Python threads
are counted when they finish (``time.thread_time()``) or, still running at exit, from /proc; the threads' names
say what they do (``mongo_N``: the dump's collection readers, ``blob_N``: hash/compress/encrypt, ``MainThread``:
chunking, or the restore's archive parsing). FerretDB's CPU (its /proc/PID/stat, every thread) and the rest of
the machine's are counted apart. Peak RSS is the process's own VmHWM (bench/measured.py).

Profiling (``--profile auto``: when the backup misses its target; ``always``; ``never``): the library dump row
above, and the single-core per-byte cost of each stage measured on a sample of the generated documents: the
archive writer (framing, join, CRC-64), CRC-64 alone, FastCDC chunking, SHA-256, zstd at the runner's level,
AES-256-CTR + Poly1305, and the archive reader. They are always cheap enough to run, so they always are.

Checks: backup wall / floor wall <= 1.15 (both backups), peak RSS <= 300 MiB (every stash-runner row). Also
verified: the snapshot's size against the archive, ``restic check``, the floors' document counts against the
load, and after the restore every collection's count, its index names and a sample of documents.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import hashlib
import io
import itertools
import json
import os
import platform
import queue
import random
import re
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

import bson  # noqa: E402
import pymongo  # noqa: E402
from bson import Binary, Int64, ObjectId, Timestamp  # noqa: E402
from bson.codec_options import CodecOptions  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402

from bench.cpu import busy_cpu, children_cpu, process_cpu  # noqa: E402
from bench.measured import WRAPPER as _WRAPPER  # noqa: E402
from bench.measured import peak_rss_kib  # noqa: E402
from bench.stages import repository_stages  # noqa: E402
from bench.words import COUNTRIES, STATUSES, vocabulary  # noqa: E402
from tests.helpers import REPO_PASSWORD, b64, objects_yaml  # noqa: E402
from tests.mongoservers import FERRETDB_VERSION, MongoPeer, start_ferretdb  # noqa: E402

MB = 1_000_000  # data sizes and throughput in decimal MB, as --size-mb
MIB = 1 << 20  # memory and repository sizes in MiB

TARGET_WALL_VS_FLOOR = 1.15  # stash-runner backup wall / pymongo read floor wall, at most
TARGET_RSS_MIB = 300  # stash-runner peak RSS, at most
PARALLEL = 4  # the driver's --numParallelCollections default (drivers/mongodb/args.py DumpArgs.parallel)
BATCH_SIZE = 1000  # the driver's find() batch_size (drivers/mongodb/dump.py)
INSERT_BATCH_BYTES = 1 << 20  # the restore inserts what one read of the archive gives: about 1 MiB
NAMESPACE = "bench"
APPBINDING = "mongo"
USERNAME = "bench-admin"
PASSWORD_ENV = "BENCH_MONGO_PASSWORD"
PROBE_MB = 48  # loaded and read back first, to measure the server's rates
SAMPLE_DOCS = 6  # documents per collection compared after the restore (FerretDB scans for each find by _id)
MICRO_BYTES = 48 * MB  # the per-byte cost sample

STEP_FLOOR_SEQ = "floor: pymongo read, sequential"
STEP_FLOOR_PAR = f"floor: pymongo read, -j {PARALLEL}"
STEP_BACKUP = "stash-runner backup"
STEP_BACKUP2 = "stash-runner backup (unchanged)"
STEP_LIBDUMP = "driver dump -> /dev/null (library)"
STEP_RESTORE = "stash-runner restore --drop"
STEP_INSERT = f"floor: insert_many -j {PARALLEL} + indexes"
STEP_DUMP = "stash-runner dump -> /dev/null"
STEPS = (STEP_FLOOR_SEQ, STEP_FLOOR_PAR, STEP_BACKUP, STEP_BACKUP2, STEP_LIBDUMP, STEP_RESTORE, STEP_INSERT,
         STEP_DUMP)
RUNNER_STEPS = (STEP_BACKUP, STEP_BACKUP2, STEP_RESTORE, STEP_DUMP)


# What each thread group of a measured process does.
THREAD_ROLES = {
    "mongo": "dump: find/getMore batches as RawBSON, archive blocks (framing check, join, CRC-64), pipe writes",
    "mongodump": "dump: listing, prelude, EOF blocks",
    "blob": "backup: SHA-256, zstd, AES-256-CTR + Poly1305, pack building",
    "upload": "pack files written",
    "read": "restore/dump: pack reads, MAC check, decrypt, decompress",
    "mongorestore": "restore: insert_many (BSON framing to the wire, waiting for the server)",
    "MainThread": "backup: FastCDC chunking of the pipe, copies, dispatch; restore: archive parsing + CRC-64, "
                  "batching; dump: writing stdout; floors: the read/insert loop",
    "floor": "floor: find/getMore batches as RawBSON (read) or insert_many (insert)",
    "pymongo": "pymongo's monitor threads",
}


def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[bench-mongo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the documents ------------------------------------------------------------------------------------------------

_KINDS = ("heartbeat", "login", "logout", "reading", "alarm", "config", "update", "error")
_BASE = datetime.datetime(2023, 1, 1)


_WORDS = vocabulary()
_TAGS = _WORDS[:64]
_CITIES = [w.capitalize() for w in _WORDS[100:400]]
_CATEGORIES = _WORDS[500:620]


def _oid(prefix: bytes, n: int) -> ObjectId:
    return ObjectId(prefix + n.to_bytes(12 - len(prefix), "big"))


class _Gen:
    """Random documents of one collection, reproducible from the seed."""

    def __init__(self, seed: int):
        self.rnd = random.Random(seed)
        self.n = 0

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.rnd.choices(_WORDS, k=self.rnd.randint(lo, hi)))

    def when(self, days: int = 900) -> datetime.datetime:
        r = self.rnd
        return _BASE + datetime.timedelta(seconds=r.randrange(days * 86400), milliseconds=r.randrange(1000))

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.n += 1
            yield bson.encode(self.doc(self.n))

    def doc(self, n: int) -> dict:
        raise NotImplementedError


class _Customers(_Gen):
    def doc(self, n: int) -> dict:
        r = self.rnd
        first, last = r.choice(_WORDS).capitalize(), r.choice(_WORDS).capitalize()
        created = self.when()
        return {
            "_id": _oid(b"cu", n), "customer_no": n, "email": f"{first}.{last}.{n}@{r.choice(_WORDS)}.example",
            "name": {"first": first, "last": last}, "phone": f"+{r.randint(1, 99)} {r.randrange(10**9):09d}",
            "created": created, "updated": created + datetime.timedelta(days=r.randrange(300)),
            "active": r.random() < 0.9, "score": r.random() * 100, "loyalty_points": Int64(r.getrandbits(40)),
            "tags": r.sample(_TAGS, r.randint(0, 6)),
            "address": {"street": f"{self.text(1, 3).title()} {r.randint(1, 300)}", "city": r.choice(_CITIES),
                        "zip": f"{r.randrange(100000):05d}", "country": r.choice(COUNTRIES)},
            "prefs": {"newsletter": r.random() < 0.3, "lang": r.choice(("de", "en", "fr", "es")),
                      "currency": r.choice(("EUR", "USD", "GBP"))},
            "notes": self.text(40, 130), "avatar": Binary(r.randbytes(16), 4),
            "referrer": _oid(b"cu", r.randint(1, n)) if r.random() < 0.2 else None,
        }


class _Orders(_Gen):
    def doc(self, n: int) -> dict:
        r = self.rnd
        items = [{"sku": f"SKU-{r.randrange(200000):07d}", "name": self.text(2, 5), "qty": r.randint(1, 9),
                  "price": round(r.uniform(0.5, 400), 2), "gift": r.random() < 0.05}
                 for _ in range(r.randint(1, 8))]
        created = self.when()
        return {
            "_id": ObjectId(), "order_no": Int64(10**9 + n), "customer_id": _oid(b"cu", r.randint(1, 10**6)),
            "status": r.choice(STATUSES), "created": created, "items": items,
            "total": round(sum(i["price"] * i["qty"] for i in items), 2), "currency": r.choice(("EUR", "USD")),
            "paid": r.random() < 0.8, "coupon": f"C{r.randrange(10**6)}" if r.random() < 0.1 else None,
            "shipping": {"name": self.text(2, 2).title(), "street": f"{self.text(1, 3).title()} {r.randint(1, 300)}",
                         "city": r.choice(_CITIES), "country": r.choice(COUNTRIES),
                         "eta": created + datetime.timedelta(days=r.randint(1, 14))},
            "comment": self.text(0, 60) if r.random() < 0.6 else "",
        }


class _Events(_Gen):
    def doc(self, n: int) -> dict:
        r = self.rnd
        return {
            "_id": ObjectId(), "device": Binary(uuid.UUID(int=r.randrange(5000)).bytes, 4), "ts": self.when(),
            "seq": Int64(n), "kind": r.choice(_KINDS), "server_ts": Timestamp(1_700_000_000 + n // 100, n % 100 + 1),
            "payload": {"temp": r.gauss(21, 4), "humidity": r.random(), "battery": r.randint(0, 100),
                        "ok": r.random() < 0.97, "fw": f"{r.randint(1, 3)}.{r.randint(0, 9)}.{r.randint(0, 20)}"},
            "path": "/api/v1/" + "/".join(r.choices(_WORDS, k=3)),
            "ip": f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)}",
            "agent": f"fw-agent/{r.randint(1, 5)}.{r.randint(0, 30)}", "msg": self.text(10, 55),
        }


class _Products(_Gen):
    def doc(self, n: int) -> dict:
        r = self.rnd
        return {
            "_id": f"SKU-{n:07d}", "name": self.text(2, 6).title(), "description": self.text(120, 330),
            "price": round(r.uniform(0.5, 2000), 2), "stock": r.randrange(10000),
            "attributes": {"color": r.choice(_WORDS), "size": r.choice(("XS", "S", "M", "L", "XL")),
                           "weight_kg": round(r.uniform(0.01, 40), 3), "fragile": r.random() < 0.1},
            "categories": r.sample(_CATEGORIES, r.randint(1, 4)),
            "images": [Binary(r.randbytes(16), 4) for _ in range(r.randint(0, 4))],
            "updated": self.when(), "rating": round(r.uniform(1, 5), 1), "reviews": r.randrange(5000),
        }


class _Reviews(_Gen):
    def doc(self, n: int) -> dict:
        r = self.rnd
        return {
            "_id": ObjectId(), "product_id": f"SKU-{r.randrange(1, 200000):07d}",
            "customer_id": _oid(b"cu", r.randint(1, 10**6)), "rating": r.randint(1, 5), "title": self.text(2, 8),
            "body": self.text(25, 160), "created": self.when(), "helpful": r.randrange(200),
            "verified": r.random() < 0.7, "language": r.choice(("de", "en", "fr")),
        }


@dataclass(frozen=True)
class CollSpec:
    db: str
    name: str
    share: float  # of the data size
    gen: Callable[[int], _Gen]
    indexes: tuple[dict, ...]  # {"keys": [[field, 1|-1], ...], "name": ..., "unique": bool}

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.name}"


def _ix(name: str, *keys: tuple[str, int], unique: bool = False) -> dict:
    return {"keys": [list(k) for k in keys], "name": name, "unique": unique}


COLLECTIONS = (
    CollSpec("shop", "customers", 0.15, _Customers,
             (_ix("email_1", ("email", 1), unique=True),
              _ix("country_created", ("address.country", 1), ("created", -1)))),
    CollSpec("shop", "orders", 0.35, _Orders,
             (_ix("customer_id_1", ("customer_id", 1)), _ix("status_created", ("status", 1), ("created", -1)))),
    CollSpec("shop", "products", 0.10, _Products,
             (_ix("categories_1", ("categories", 1)), _ix("price_1", ("price", 1)))),
    CollSpec("shop", "reviews", 0.15, _Reviews, (_ix("product_id_1", ("product_id", 1)),)),
    CollSpec("telemetry", "events", 0.25, _Events,
             (_ix("device_ts", ("device", 1), ("ts", -1)), _ix("ts_1", ("ts", 1)))),
)
DATABASES = sorted({c.db for c in COLLECTIONS})


def index_models(spec_indexes: list[dict] | tuple[dict, ...]) -> list[pymongo.IndexModel]:
    return [pymongo.IndexModel([tuple(k) for k in ix["keys"]], name=ix["name"], unique=ix["unique"])
            for ix in spec_indexes]


class Loader:
    """Loads the collections in proportion, a generator per collection, resumable (the probe, then the rest).

    Each collection's documents are also appended to ``<dir>/<ns>.bson``: the insert floor reads them back.
    """

    def __init__(self, client: pymongo.MongoClient, directory: str):
        self.client = client
        self.dir = directory
        self.gens = {c.ns: iter(c.gen(i + 1)) for i, c in enumerate(COLLECTIONS)}
        self.bytes = {c.ns: 0 for c in COLLECTIONS}
        self.docs = {c.ns: 0 for c in COLLECTIONS}
        self.samples: dict[str, list[bytes]] = {c.ns: [] for c in COLLECTIONS}
        self._seen = {c.ns: 0 for c in COLLECTIONS}
        self._rnd = random.Random(11)
        self.seconds = 0.0

    def _sample(self, ns: str, raw: bytes) -> None:
        """Reservoir sampling over the batches: SAMPLE_DOCS documents spread over the whole collection."""
        self._seen[ns] += 1
        kept = self.samples[ns]
        if len(kept) < SAMPLE_DOCS:
            kept.append(raw)
        else:
            j = self._rnd.randrange(self._seen[ns])
            if j < SAMPLE_DOCS:
                kept[j] = raw

    def path(self, ns: str) -> str:
        return os.path.join(self.dir, f"{ns}.bson")

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def load_until(self, total_bytes: int) -> float:
        """Insert until the data holds ``total_bytes`` of documents; returns the seconds it took."""
        t0 = time.perf_counter()
        work: queue.Queue = queue.Queue(maxsize=8)
        errors: list[BaseException] = []

        def insert() -> None:
            while (item := work.get()) is not None:
                ns, docs = item
                if errors:
                    continue
                db, coll = ns.split(".", 1)
                try:
                    self.client[db][coll].insert_many(docs, ordered=False)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(e)

        threads = [threading.Thread(target=insert, name=f"load-{i}", daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        try:
            for c in COLLECTIONS:
                goal = int(total_bytes * c.share)
                gen = self.gens[c.ns]
                with open(self.path(c.ns), "ab") as f:
                    while self.bytes[c.ns] < goal and not errors:
                        batch, size = [], 0
                        while size < INSERT_BATCH_BYTES and self.bytes[c.ns] + size < goal:
                            raw = next(gen)
                            batch.append(raw)
                            size += len(raw)
                        f.write(b"".join(batch))
                        self._sample(c.ns, batch[len(batch) // 2])
                        self.bytes[c.ns] += size
                        self.docs[c.ns] += len(batch)
                        work.put((c.ns, [RawBSONDocument(b) for b in batch]))
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        took = time.perf_counter() - t0
        self.seconds += took
        return took

    def create_indexes(self) -> float:
        t0 = time.perf_counter()
        for c in COLLECTIONS:
            self.client[c.db][c.name].create_indexes(index_models(c.indexes))
        took = time.perf_counter() - t0
        self.seconds += took
        return took


def read_all(client: pymongo.MongoClient) -> tuple[int, int]:
    """(documents, bytes) of every collection, read sequentially in this process (the probe)."""
    docs = size = 0
    for ns in list_namespaces(client):
        db, coll = ns.split(".", 1)
        c = client[db].get_collection(coll, codec_options=CodecOptions(document_class=RawBSONDocument))
        for d in c.find({}, batch_size=BATCH_SIZE):
            docs += 1
            size += len(d.raw)
    return docs, size


def list_namespaces(client: pymongo.MongoClient) -> list[str]:
    """What the driver dumps, without admin's users (a few hundred bytes): every collection of every database
    but local, config and admin, no system collections."""
    out = []
    for db in sorted(client.list_database_names()):
        if db in ("local", "config", "admin"):
            continue
        for name in sorted(client[db].list_collection_names()):
            if not name.startswith("system."):
                out.append(f"{db}.{name}")
    return out


# -- the measured child processes (run through _WRAPPER as scripts) ------------------------------------------------

def _child_client(port: int) -> pymongo.MongoClient:
    return pymongo.MongoClient("127.0.0.1", port, username=USERNAME, password=os.environ[PASSWORD_ENV],
                               authSource="admin", directConnection=True, serverSelectionTimeoutMS=10_000)


def child_read(port: int, parallel: int, out: str) -> None:
    """The read floor: every document as RawBSONDocument, batch_size as the driver, ``parallel`` collections at once."""
    client = _child_client(port)
    raw = CodecOptions(document_class=RawBSONDocument)

    def read(ns: str) -> tuple[str, int, int]:
        db, coll = ns.split(".", 1)
        docs = size = 0
        for d in client[db].get_collection(coll, codec_options=raw).find({}, batch_size=BATCH_SIZE):
            docs += 1
            size += len(d.raw)
        return ns, docs, size

    names = list_namespaces(client)
    if parallel == 1:
        results = [read(ns) for ns in names]
    else:
        with ThreadPoolExecutor(parallel, thread_name_prefix="floor") as pool:
            results = list(pool.map(read, names))
    client.close()
    with open(out, "w") as f:
        json.dump({ns: [docs, size] for ns, docs, size in results}, f)


def _raw_docs(path: str) -> Iterator[list[RawBSONDocument]]:
    """Batches of about INSERT_BATCH_BYTES of the documents in a file of concatenated BSON."""
    unpack = struct.Struct("<i").unpack_from
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(INSERT_BATCH_BYTES):
            buf = rest + chunk
            pos, batch = 0, []
            while pos + 4 <= len(buf):
                size = unpack(buf, pos)[0]
                if pos + size > len(buf):
                    break
                batch.append(RawBSONDocument(buf[pos:pos + size]))
                pos += size
            rest = buf[pos:]
            if batch:
                yield batch
        if rest:
            raise ValueError(f"{path}: {len(rest)} trailing bytes")


def child_insert(port: int, conf_path: str, out: str) -> None:
    """The restore floor: insert_many of the loaded documents, ``PARALLEL`` collections at once, then the indexes."""
    with open(conf_path) as f:
        conf = json.load(f)
    client = _child_client(port)

    def load(entry: dict) -> tuple[str, int]:
        db, coll = entry["ns"].split(".", 1)
        c = client[db][coll]
        n = 0
        for batch in _raw_docs(entry["file"]):
            c.insert_many(batch, ordered=False)
            n += len(batch)
        return entry["ns"], n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="floor") as pool:
        counts = dict(pool.map(load, conf))
    t1 = time.perf_counter()
    for entry in conf:
        db, coll = entry["ns"].split(".", 1)
        client[db][coll].create_indexes(index_models(entry["indexes"]))
    t2 = time.perf_counter()
    client.close()
    with open(out, "w") as f:
        json.dump({"counts": counts, "insert_s": t1 - t0, "index_s": t2 - t1}, f)


def child_libdump(port: int, out: str) -> None:
    """The driver's dump alone: MongoDump (pymongo reads + archive writer) into its pipe, the pipe read and dropped."""
    from drivers.mongodb.args import parse_dump_args
    from drivers.mongodb.connection import Credentials, Topology
    from drivers.mongodb.dump import MongoDump

    topology = Topology("standalone", "127.0.0.1", port)
    creds = Credentials(username=USERNAME, password=os.environ[PASSWORD_ENV], auth_source="admin")
    total = 0
    with MongoDump(topology, creds, parse_dump_args(""), "FerretDB (bench)") as dump:
        stream = dump.items()[0].stream
        while chunk := stream.read(1 << 20):
            total += len(chunk)
        dump.finish()
    with open(out, "w") as f:
        json.dump({"archive_bytes": total}, f)


def child_main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "read":
        child_read(port, int(argv[2]), argv[3])
    elif kind == "insert":
        child_insert(port, argv[2], argv[3])
    elif kind == "libdump":
        child_libdump(port, argv[2])
    else:
        raise SystemExit(f"unknown child {kind!r}")


# -- measuring ----------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    step: str
    wall: float
    cpu: float  # the process's own CPU (RUSAGE_SELF at exit): user + system
    peak_rss_kib: int  # its own VmHWM
    threads: dict[str, float]  # CPU s by thread group (names without their _N)
    server_cpu: float = 0.0  # FerretDB in the same window
    other_cpu: float = 0.0  # the rest of the machine in that window: ~0 on an idle box
    wait4_cpu: float = 0.0  # cross-check of `cpu`: wait4's rusage (the process and its children: none)
    wait4_maxrss_kib: int = 0
    info: dict = field(default_factory=dict)  # step-specific: stored bytes, counts, ...






def thread_group(name: str) -> str:
    if name.startswith("pymongo"):
        return "pymongo"
    return re.sub(r"[-_]\d+(?: \(.*\))?$", "", name)


class Bench:
    def __init__(self, tmp: str, peer: MongoPeer, password: str):
        self.tmp = tmp
        self.peer = peer
        self.password = password
        self.script = os.path.abspath(__file__)

    def env(self) -> dict[str, str]:
        return {**os.environ, PASSWORD_ENV: self.password}

    def measure(self, step: str, mode: str, args: list[str], run_dir: str, tag: str, *,
                stdout_null: bool = False) -> Sample:
        """Run ``args`` under the wrapper (``mode`` runner or script), timed, with the machine's CPU around it."""
        report = os.path.join(run_dir, f"{tag}.rusage.json")
        log_path = os.path.join(run_dir, f"{tag}.log")
        argv = [sys.executable, "-c", _WRAPPER, report, mode, *args]
        with open(log_path, "wb") as log, open(os.devnull, "wb") as null:
            c0, s0, b0 = children_cpu(), process_cpu(self.peer.pid), busy_cpu()
            t0 = time.perf_counter()
            # cwd: the repository root, so the code measured is this checkout's even without the editable install
            proc = subprocess.Popen(argv, stdout=null if stdout_null else log, stderr=log if stdout_null else
                                    subprocess.STDOUT, cwd=REPO_ROOT, env=self.env())
            try:
                _, status, ru = os.wait4(proc.pid, 0)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                raise
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            time.sleep(0.1)
            c1, s1, b1 = children_cpu(), process_cpu(self.peer.pid), busy_cpu()
        if code != 0:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"{step}: exited with {code}:\n{tail}")
        with open(report) as f:
            own = json.load(f)
        threads: dict[str, float] = collections.defaultdict(float)
        for name, cpu in own["threads"]:
            threads[thread_group(name)] += cpu
        cpu = own["utime"] + own["stime"]
        threads["(unattributed)"] = max(0.0, cpu - sum(threads.values()))
        ours, server = c1 - c0, s1 - s0
        return Sample(step, wall, cpu, peak_rss_kib(own), dict(threads), server_cpu=server,
                      other_cpu=max(0.0, (b1 - b0) - ours - server), wait4_cpu=ru.ru_utime + ru.ru_stime,
                      wait4_maxrss_kib=ru.ru_maxrss)

    def script_args(self, *args: str) -> list[str]:
        return [self.script, "--child", *args]

    # -- the rows --

    def floor_read(self, run_dir: str, parallel: int) -> Sample:
        out = os.path.join(run_dir, f"floor-read-{parallel}.json")
        step = STEP_FLOOR_SEQ if parallel == 1 else STEP_FLOOR_PAR
        s = self.measure(step, "script", self.script_args("read", str(self.peer.port), str(parallel), out), run_dir,
                         f"floor-read-{parallel}")
        with open(out) as f:
            s.info["read"] = json.load(f)
        return s

    def runner(self, step: str, args: list[str], run_dir: str, tag: str, *, stdout_null: bool = False) -> Sample:
        return self.measure(step, "runner", args, run_dir, tag, stdout_null=stdout_null)

    def libdump(self, run_dir: str) -> Sample:
        out = os.path.join(run_dir, "libdump.json")
        s = self.measure(STEP_LIBDUMP, "script", self.script_args("libdump", str(self.peer.port), out), run_dir,
                         "libdump")
        with open(out) as f:
            s.info.update(json.load(f))
        return s

    def insert_floor(self, run_dir: str, loader: Loader) -> Sample:
        conf = os.path.join(run_dir, "insert-floor-conf.json")
        with open(conf, "w") as f:
            json.dump([{"ns": c.ns, "file": loader.path(c.ns), "indexes": list(c.indexes)} for c in COLLECTIONS], f)
        out = os.path.join(run_dir, "insert-floor.json")
        s = self.measure(STEP_INSERT, "script", self.script_args("insert", str(self.peer.port), conf, out), run_dir,
                         "insert-floor")
        with open(out) as f:
            s.info.update(json.load(f))
        return s


def objects_for(path: str, peer: MongoPeer, password: str, repo_dir: str) -> str:
    """The objects the CLI reads: AppBinding (kubedb.com/mongodb) + its Secret, the Repository + its Secret."""
    extra = [
        {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
         "metadata": {"name": APPBINDING, "namespace": NAMESPACE},
         "spec": {"type": "kubedb.com/mongodb", "clientConfig": {"url": peer.url},
                  "secret": {"name": f"{APPBINDING}-auth"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{APPBINDING}-auth", "namespace": NAMESPACE},
         "data": {"username": b64(USERNAME), "password": b64(password)}},
    ]
    return objects_yaml(path, repo_dir=repo_dir, namespace=NAMESPACE, extra=extra)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def restic(repo: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD"] = REPO_PASSWORD
    return subprocess.run(["restic", "--no-cache", "-r", repo, *args], env=env, capture_output=True, text=True)


def snapshot_file_size(repo: str, path: str = "/dump") -> int | None:
    ls = restic(repo, "ls", "--json", "latest", path)
    for line in ls.stdout.splitlines():
        node = json.loads(line)
        if node.get("struct_type") == "node" and node.get("path") == path:
            return node.get("size")
    return None


def drop_databases(client: pymongo.MongoClient) -> None:
    t0 = time.perf_counter()
    for db in DATABASES:
        client.drop_database(db)
    say(f"dropped {', '.join(DATABASES)} in {time.perf_counter() - t0:.1f} s")


def verify_restore(client: pymongo.MongoClient, loader: Loader) -> dict:
    """Every collection's count and index names as loaded, and the sampled documents equal.

    The count is collStats' (FerretDB's SQLite backend counts rows there; count_documents and even
    estimated_document_count read every document, as long as a full read)."""
    t0 = time.perf_counter()
    problems = []
    for c in COLLECTIONS:
        coll = client[c.db][c.name]
        n = client[c.db].command("collStats", c.name)["count"]
        if n != loader.docs[c.ns]:
            problems.append(f"{c.ns}: {n} documents, loaded {loader.docs[c.ns]}")
        names = {ix["name"] for ix in coll.list_indexes()}
        want = {"_id_", *(ix["name"] for ix in c.indexes)}
        if names != want:
            problems.append(f"{c.ns}: indexes {sorted(names)}, expected {sorted(want)}")
        for raw in loader.samples[c.ns]:
            doc = bson.decode(raw)
            got = coll.find_one({"_id": doc["_id"]})
            if got != doc:
                problems.append(f"{c.ns}: document {doc['_id']!r} differs after the restore")
                break
    return {"ok": not problems, "problems": problems, "sampled": sum(len(v) for v in loader.samples.values()),
            "seconds": time.perf_counter() - t0}


# -- per-byte costs -----------------------------------------------------------------------------------------------

def micro_costs(loader: Loader, level: int) -> list[dict]:
    """Single-core cost of each per-byte stage, on about MICRO_BYTES of the loaded documents (all collections)."""

    from drivers.mongodb import archive
    from stash_runner.restic import compression

    facts = driver_facts()
    block_bytes, crc_path = facts["block_bytes"], facts["crc64"]
    per = MICRO_BYTES // len(COLLECTIONS)
    by_ns: list[list[tuple[str, str, list[bytes]]]] = []  # blocks of documents as the dump writes them
    for c in COLLECTIONS:
        taken, mine, raws, size = 0, [], [], 0
        for batch in _raw_docs(loader.path(c.ns)):
            for d in batch:
                raws.append(d.raw)
                size += len(d.raw)
                if size >= block_bytes:
                    mine.append((c.db, c.name, raws))
                    taken += size
                    raws, size = [], 0
            if taken >= per:
                break
        if raws and taken < per:
            mine.append((c.db, c.name, raws))
        by_ns.append(mine)
    # interleaved round-robin, as the dump's parallel collections interleave their blocks
    blocks = [b for group in itertools.zip_longest(*by_ns) for b in group if b is not None]
    docs_bytes = sum(len(d) for _, _, raws in blocks for d in raws)

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        return time.perf_counter() - t0, time.thread_time() - c0

    rows = []

    def row(key: str, stage: str, nbytes: int, fn: Callable[[], object], what: str) -> None:
        wall, cpu = timed(fn)
        rows.append({"key": key, "stage": stage, "bytes": nbytes, "cpu_s": cpu, "wall_s": wall,
                     "mb_per_cpu_s": nbytes / MB / cpu if cpu else None,
                     "cpu_s_per_gb": cpu / (nbytes / 1e9), "what": what})

    sink = io.BytesIO()

    def write_archive() -> None:
        w = archive.ArchiveWriter(sink)
        metas = [archive.CollectionMetadata(c.db, c.name, archive.Metadata(collection_name=c.name).to_json(), 0,
                                            "collection") for c in COLLECTIONS]
        w.write_prelude(archive.Header(PARALLEL, archive.FORMAT_VERSION, "7.0.0", "bench"), metas)
        for db, coll, raws in blocks:
            w.write_block(db, coll, raws)
        for c in COLLECTIONS:
            w.end(c.db, c.name)
        w.close()

    row("writer", "archive writer (framing, join, CRC-64, write)", docs_bytes, write_archive,
        f"drivers/mongodb/archive.py ArchiveWriter.write_block, blocks of {block_bytes / MIB:g} MiB (dump.BLOCK_BYTES)")
    data = sink.getvalue()
    joined = [b"".join(raws) for _, _, raws in blocks]
    row("crc", "  of which CRC-64 alone", docs_bytes, lambda: [archive.crc64(j) for j in joined],
        f"archive.crc64 on each block, as the driver computes it here: {crc_path}")
    python_crc64 = getattr(archive, "python_crc64", None)
    lzma = archive._LZMA_CRC64  # the driver's own liblzma binding (None without liblzma)
    lzma_crc64 = (lambda data, crc: lzma(data, len(data), crc)) if lzma is not None else None
    if crc_path.startswith("liblzma") and python_crc64 is not None:
        row("crc_other", "  (CRC-64 in pure Python, for comparison)", docs_bytes,
            lambda: [python_crc64(j) for j in joined], "archive.python_crc64: the fallback without liblzma")
    elif not crc_path.startswith("liblzma") and lzma_crc64 is not None:
        if lzma_crc64(joined[0], 0) != archive.crc64(joined[0]):
            raise RuntimeError("liblzma's lzma_crc64 disagrees with archive.crc64")
        row("crc_other", "  (CRC-64 through liblzma, for comparison)", docs_bytes,
            lambda: [lzma_crc64(j, 0) for j in joined],
            "not used by the driver: lzma_crc64 (CRC-64/XZ = Go's crc64.ECMA) via ctypes, which releases the GIL")
    row("framing", "  of which framing check + join", docs_bytes,
        lambda: [(all(archive._framed(d) for d in raws), b"".join(raws)) for _, _, raws in blocks],
        "archive._framed per document, b''.join per block")
    staged = repository_stages(data, level, row)
    chunks, packed, sealed, key, ratio = staged.chunks, staged.packed, staged.sealed, staged.key, staged.ratio
    row("decrypt", "decrypt + MAC check", sum(map(len, packed)), lambda: [key.decrypt(s) for s in sealed],
        "restore/dump path")
    row("unzstd", "zstd decompress", len(data),
        lambda: [compression.decompress(p, len(c)) for p, c in zip(packed, chunks, strict=True)], "restore/dump path")

    def read_archive() -> None:
        for _ in archive.ArchiveReader(io.BytesIO(data)):
            pass

    row("reader", "archive reader (parse, CRC-64)", len(data), read_archive, "restore: archive.ArchiveReader")
    for r in rows:
        r["compression_ratio"] = ratio
    return rows


@functools.cache
def driver_facts() -> dict:
    """What the measured code does per byte: the driver's CRC-64 path and block size, and which code it is."""
    from drivers.mongodb import archive
    from drivers.mongodb import dump as mongo_dump

    fast = getattr(archive, "_LZMA_CRC64", None) is not None
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    changed = subprocess.run(["git", "status", "--porcelain", "--", "drivers", "stash_runner", "backends"],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    return {"crc64": "liblzma lzma_crc64 via ctypes" if fast else "pure Python",
            "block_bytes": getattr(mongo_dump, "BLOCK_BYTES", archive.BLOCK_BYTES),
            "git_head": head.stdout.strip(), "uncommitted": changed.stdout.splitlines(),
            "code_sha256": code_digest()}


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



# -- estimating the time ------------------------------------------------------------------------------------------

# Seconds per run of each row, in units of the probe's single-stream read time (R) and insert time (I) of the data
# size, as measured at 685-711 MB on the 2-core machine (floor 0.94-1.02 R, -j 4 0.78-0.82 R, backups 0.78-0.94 R,
# library dump 0.90 R, restore 1.25-1.29 I, insert floor 1.09-1.29 I, dump 0.01 R; verifying the restore and the
# drops 0.21 R), a little generous.
_ESTIMATE = {STEP_FLOOR_SEQ: ("R", 1.05), STEP_FLOOR_PAR: ("R", 0.85), STEP_BACKUP: ("R", 0.95),
             STEP_BACKUP2: ("R", 0.95), STEP_LIBDUMP: ("R", 0.95), STEP_RESTORE: ("I", 1.35), STEP_INSERT: ("I", 1.3),
             STEP_DUMP: ("R", 0.02)}


def estimate_seconds(size: int, read_rate: float, insert_rate: float, runs: int, profile: bool,
                     loaded: int) -> float:
    """The whole benchmark at ``size`` bytes: the rest of the load, the runs, the checks and the micro costs."""
    r, i = size / read_rate, size / insert_rate
    per_run = sum(f * (r if unit == "R" else i) for step, (unit, f) in _ESTIMATE.items()
                  if profile or step != STEP_LIBDUMP) + 0.22 * r  # + verifying the restore, dropping
    load = max(0, size - loaded) / insert_rate * 1.1
    return load + runs * per_run + 0.05 * r + 20  # restic check, micro costs, start-up


def fit_size(requested: int, budget: float, read_rate: float, insert_rate: float, runs: int, profile: bool,
             loaded: int) -> int:
    """The largest size (whole MB, at most ``requested``) whose estimate fits ``budget`` seconds."""
    if budget <= 0 or estimate_seconds(requested, read_rate, insert_rate, runs, profile, loaded) <= budget:
        return requested
    lo, hi = loaded, requested
    while hi - lo > MB:
        mid = (lo + hi) // 2
        if estimate_seconds(mid, read_rate, insert_rate, runs, profile, loaded) <= budget:
            lo = mid
        else:
            hi = mid
    return max(loaded, lo // MB * MB)


# -- reporting ----------------------------------------------------------------------------------------------------

def _median(samples: list[Sample], attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[Sample]], archive_bytes: int) -> dict[str, dict]:
    out = {}
    for step, samples in runs.items():
        if not samples:
            continue
        wall = _median(samples, "wall")
        groups = sorted({g for s in samples for g in s.threads})
        out[step] = {
            "wall_s": wall, "mb_per_s": archive_bytes / MB / wall, "cpu_s": _median(samples, "cpu"),
            "peak_rss_mib": _median(samples, "peak_rss_kib") / 1024, "server_cpu_s": _median(samples, "server_cpu"),
            "other_cpu_s": _median(samples, "other_cpu"),
            "threads_cpu_s": {g: statistics.median(s.threads.get(g, 0.0) for s in samples) for g in groups},
        }
        stored = [s.info["stored_bytes"] for s in samples if "stored_bytes" in s.info]
        if stored:
            out[step]["stored_mib"] = statistics.median(stored) / MIB
    return out


def checks(med: dict[str, dict]) -> list[dict]:
    rows = []
    floors = [med[s]["wall_s"] for s in (STEP_FLOOR_SEQ, STEP_FLOOR_PAR) if s in med]
    floor = min(floors) if floors else None
    for step in (STEP_BACKUP, STEP_BACKUP2):
        if step in med and floor:
            rows.append((f"{step} wall / read floor wall", med[step]["wall_s"] / floor, "<=", TARGET_WALL_VS_FLOOR))
    for step in RUNNER_STEPS:
        if step in med:
            rows.append((f"{step} peak RSS MiB", med[step]["peak_rss_mib"], "<=", TARGET_RSS_MIB))
    out = [{"check": n, "value": v, "op": op, "target": t, "pass": v <= t} for n, v, op, t in rows]
    # not targets, for reading the figures
    info = []
    if STEP_BACKUP in med:
        for fl in (STEP_FLOOR_SEQ, STEP_FLOOR_PAR):
            if fl in med:
                info.append((f"{STEP_BACKUP} / {fl}", med[STEP_BACKUP]["wall_s"] / med[fl]["wall_s"]))
        if STEP_LIBDUMP in med:
            info.append((f"{STEP_BACKUP} / {STEP_LIBDUMP}", med[STEP_BACKUP]["wall_s"] / med[STEP_LIBDUMP]["wall_s"]))
    if STEP_RESTORE in med and STEP_INSERT in med:
        info.append((f"{STEP_RESTORE} / {STEP_INSERT}", med[STEP_RESTORE]["wall_s"] / med[STEP_INSERT]["wall_s"]))
    out += [{"check": n, "value": v, "op": None, "target": None, "pass": None} for n, v in info]
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, med: dict[str, dict], result_checks: list[dict], micro: list[dict], verify: dict,
             analysis: list[str]) -> str:
    data = meta["data"]
    lines = [
        f"Data: {data['archive_bytes'] / MB:.1f} MB mongodump archive ({data['document_bytes'] / MB:.1f} MB of "
        f"{data['documents']} documents, {len(COLLECTIONS)} collections in {len(DATABASES)} databases, "
        f"avg {data['document_bytes'] / max(1, data['documents']):.0f} B); loaded in {data['load_seconds']:.0f} s "
        f"({data['document_bytes'] / MB / data['load_seconds']:.1f} MB/s, indexes {data['index_seconds']:.1f} s).",
    ]
    if data.get("size_note"):
        lines.append(f"**Size:** {data['size_note']}")
    code = meta["code"]
    lines.append(f"Code measured: checkout {code['git_head']}"
                 f"{' with uncommitted changes' if code['uncommitted'] else ''} (digest {code['code_sha256']}); the "
                 f"driver's CRC-64: {code['crc64']}; dump blocks of {code['block_bytes'] / MIB:g} MiB.")
    if code["changed_during_run"]:
        lines.append("**Warning:** the code changed while the benchmark ran: rows may have measured different code.")
    lines += [
        f"FerretDB {FERRETDB_VERSION} (SQLite), standalone, SCRAM; pymongo {pymongo.version}; median of "
        f"{meta['args']['runs']} run(s); {meta['machine']['cpus']} CPUs, Python {meta['machine']['python']}; "
        f"1-min load average {meta['loadavg_before'][0]:.2f} before starting.",
        "",
        "| step | wall s | MB/s | CPU s (own) | peak RSS MiB | stored MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    steps = [s for s in STEPS if s in med]
    for step in steps:
        m = med[step]
        lines.append(f"| `{step}` | {m['wall_s']:.2f} | {m['mb_per_s']:.1f} | {m['cpu_s']:.1f} | "
                     f"{m['peak_rss_mib']:.0f} | {_fmt(m.get('stored_mib'), 1)} |")
    lines += ["", "CPU in each step's window (median s): own = the measured process; FerretDB = the server; other = "
              "the rest of the machine (should be ~0). Cores busy near 2 means the machine was CPU-bound.", "",
              "| step | own | FerretDB | other | cores busy |", "|---|---:|---:|---:|---:|"]
    for step in steps:
        m = med[step]
        busy = (m["cpu_s"] + m["server_cpu_s"] + m["other_cpu_s"]) / m["wall_s"]
        lines.append(f"| `{step}` | {m['cpu_s']:.1f} | {m['server_cpu_s']:.1f} | {m['other_cpu_s']:.1f} | "
                     f"{busy:.2f} |")
    disturbed = [s for s in steps if med[s]["other_cpu_s"] > 0.1 * med[s]["wall_s"]]
    if disturbed:
        lines += ["", f"**Warning:** other processes used more than 0.1 core during {', '.join(disturbed)}: "
                  "the machine was not idle, so these numbers are disturbed."]
    lines += ["", "Own CPU by thread (median s; `name_N` threads summed):", ""]
    for step in steps:
        parts = ", ".join(f"{g} {v:.1f}" for g, v in sorted(med[step]["threads_cpu_s"].items(), key=lambda kv: -kv[1])
                          if v >= 0.05)
        lines.append(f"- `{step}`: {parts}")
    lines += ["", "| check | value | target | result |", "|---|---:|---:|---|"]
    for c in result_checks:
        digits = 0 if "MiB" in c["check"] else 2
        if c["target"] is None:
            lines.append(f"| {c['check']} | {c['value']:.{digits}f} | – | (info) |")
        else:
            lines.append(f"| {c['check']} | {c['value']:.{digits}f} | ≤ {c['target']:g} | "
                         f"{'PASS' if c['pass'] else 'FAIL'} |")
    if micro:
        lines += ["", f"Per-byte cost of each stage, one core, on {micro[0]['bytes'] / MB:.0f} MB of the documents "
                  f"(zstd ratio {micro[0]['compression_ratio']:.2f}):", "",
                  "| stage | MB/s per core | CPU s per GB | what |", "|---|---:|---:|---|"]
        for r in micro:
            lines.append(f"| {r['stage']} | {_fmt(r['mb_per_cpu_s'], 0)} | {r['cpu_s_per_gb']:.2f} | {r['what']} |")
    if analysis:
        lines += ["", "Where the backup's time goes:", ""] + [f"- {a}" for a in analysis]
    same = {True: " (as many as the library dump's archive)", False: " (NOT as many as the library dump's archive)",
            None: ""}[verify.get("size_matches")]
    lines += ["", f"Verification: restic check of the repository: {verify.get('restic_check')}; /dump in the snapshot "
              f"{verify.get('snapshot_bytes')} bytes{same}; floors read {verify.get('floor_counts')}; restore: "
              f"{'OK' if verify.get('restore', {}).get('ok') else verify.get('restore')} (counts, index names, "
              f"{verify.get('restore', {}).get('sampled', 0)} sampled documents)."]
    return "\n".join(lines) + "\n"


def analyse(med: dict[str, dict], micro: list[dict], archive_bytes: int) -> list[str]:
    """The backup's time split into what the read costs and what the repository side adds."""
    out: list[str] = []
    b = med.get(STEP_BACKUP)
    if not b:
        return out
    floor_step = min((s for s in (STEP_FLOOR_SEQ, STEP_FLOOR_PAR) if s in med), key=lambda s: med[s]["wall_s"])
    fl = med[floor_step]
    gb = archive_bytes / 1e9
    out.append(f"Read floor ({floor_step}): {fl['wall_s']:.1f} s; FerretDB used {fl['server_cpu_s']:.1f} s CPU and "
               f"the reader {fl['cpu_s']:.1f} s: {(fl['server_cpu_s'] + fl['cpu_s']) / fl['wall_s']:.2f} of 2 cores "
               f"busy. FerretDB's own CPU is {fl['server_cpu_s'] / gb:.0f} s per GB.")
    t = b["threads_cpu_s"]
    repo_side = sum(v for g, v in t.items() if g in ("blob", "upload", "MainThread"))
    out.append(f"Backup: {b['wall_s']:.1f} s; the runner {b['cpu_s']:.1f} s CPU ({b['cpu_s'] / gb:.1f} s per GB): "
               f"dump threads (mongo*) {t.get('mongo', 0) + t.get('mongodump', 0):.1f} s, repository side "
               f"(MainThread chunking + blob + upload) {repo_side:.1f} s; FerretDB {b['server_cpu_s']:.1f} s; "
               f"{(b['cpu_s'] + b['server_cpu_s'] + b['other_cpu_s']) / b['wall_s']:.2f} cores busy.")
    if STEP_LIBDUMP in med:
        d = med[STEP_LIBDUMP]
        out.append(f"The driver's dump alone (no repository): {d['wall_s']:.1f} s, {d['cpu_s']:.1f} s CPU "
                   f"({d['wall_s'] / fl['wall_s']:.2f}x the floor): the dump itself costs "
                   f"{d['cpu_s'] - fl['cpu_s']:+.1f} s CPU over the floor's reader; the repository side adds "
                   f"{b['wall_s'] - d['wall_s']:+.1f} s wall and {b['cpu_s'] - d['cpu_s']:+.1f} s CPU.")
    if micro:
        by = {r["key"]: r for r in micro}
        crc, other = by.get("crc"), by.get("crc_other")
        facts = driver_facts()
        if crc:
            out.append(f"CRC-64 as the driver computes it ({facts['crc64']}): {crc['cpu_s_per_gb']:.2f} s per GB, "
                       f"{crc['cpu_s_per_gb'] * gb:.1f} s of this backup's CPU, in the dump threads"
                       + (f"; the other path ({other['stage'].strip(' ()')}) {other['cpu_s_per_gb']:.2f} s per GB."
                          if other else "."))
        rest = [by[k] for k in ("chunk", "sha", "zstd", "encrypt") if k in by]
        if rest:
            total = sum(r["cpu_s_per_gb"] for r in rest)
            out.append(f"Chunk + hash + compress + encrypt: {total:.1f} s per GB on one core "
                       f"({total * gb:.1f} s here), shared between MainThread and the blob workers.")
    b2 = med.get(STEP_BACKUP2)
    if b2 and b.get("stored_mib") and b2.get("stored_mib") is not None:
        share = b2["stored_mib"] / b["stored_mib"]
        line = (f"Backup of unchanged data: {b2['wall_s']:.1f} s, stored {b2['stored_mib']:.1f} MiB new against "
                f"{b['stored_mib']:.1f} MiB the first time ({share:.0%}).")
        if share > 0.25:
            line += (f" The dump threads write the collections' ~{driver_facts()['block_bytes'] / MIB:g} MiB blocks "
                     "in whatever order they get them, so the "
                     "archive's bytes differ from one dump to the next and the chunks around each change are new.")
        out.append(line)
    r, fl_ins = med.get(STEP_RESTORE), med.get(STEP_INSERT)
    if r and fl_ins:
        t = r["threads_cpu_s"]
        out.append(f"Restore: {r['wall_s']:.1f} s against the insert floor's {fl_ins['wall_s']:.1f} s "
                   f"({r['wall_s'] / fl_ins['wall_s']:.2f}x); the runner {r['cpu_s']:.1f} s CPU: MainThread "
                   f"(archive parsing + CRC-64, batching) {t.get('MainThread', 0):.1f} s, pack reads "
                   f"{t.get('read', 0):.1f} s, inserts (mongorestore*) {t.get('mongorestore', 0):.1f} s; FerretDB "
                   f"{r['server_cpu_s']:.1f} s (floor: {fl_ins['server_cpu_s']:.1f} s).")
    return out


# -- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="documents to load, in MB (default 1024)")
    ap.add_argument("--runs", type=int, default=1, help="timed runs of each row; the median is reported (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (FerretDB's data, repositories)")
    ap.add_argument("--budget-s", type=float, default=720,
                    help="use a smaller size when the estimate at --size-mb exceeds this many seconds (0: never; "
                         "default 720)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="the library dump row: when the backup misses its target (auto), always or never")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        ap.error("--size-mb and --runs must be at least 1")
    return args


def machine_info() -> dict:
    restic_v = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "pymongo": pymongo.version, "ferretdb": FERRETDB_VERSION, "restic": " ".join(restic_v.split()[:2])}


def run(args: argparse.Namespace, tmp: str, started: float) -> int:
    password = secrets.token_urlsafe(18)
    say(f"starting FerretDB {FERRETDB_VERSION} (SQLite, SCRAM) in {tmp}")
    peer = start_ferretdb(os.path.join(tmp, "ferretdb"), username=USERNAME, password=password)
    try:
        with peer.client() as client:
            return _run(args, tmp, started, peer, password, client)
    finally:
        peer.stop()


def _run(args: argparse.Namespace, tmp: str, started: float, peer: MongoPeer, password: str,
         client: pymongo.MongoClient) -> int:
    bench = Bench(tmp, peer, password)
    facts = driver_facts()  # the code measured: read before the first measured process starts
    say(f"driver: CRC-64 {facts['crc64']}, dump blocks of {facts['block_bytes'] / MIB:g} MiB; checkout "
        f"{facts['git_head']}{' with uncommitted changes' if facts['uncommitted'] else ''}")
    data_dir = os.path.join(tmp, "documents")
    os.makedirs(data_dir)
    loader = Loader(client, data_dir)
    requested = args.size_mb * MB
    # The library dump row is budgeted only when it is sure to run: with auto it runs (and adds about one
    # backup's time) only when the backup misses its target.
    profile_possible = args.profile == "always"

    # The probe: load a little, read it back, extrapolate.
    probe = min(requested, PROBE_MB * MB)
    say(f"probe: loading {probe / MB:.0f} MB")
    probe_load = loader.load_until(probe)
    t0 = time.perf_counter()
    probe_docs, probe_bytes = read_all(client)
    probe_read = time.perf_counter() - t0
    insert_rate, read_rate = loader.total / probe_load, probe_bytes / probe_read
    say(f"probe: {loader.total / MB:.1f} MB loaded at {insert_rate / MB:.1f} MB/s (with generation), read back at "
        f"{read_rate / MB:.1f} MB/s ({probe_docs} documents)")
    size = fit_size(requested, args.budget_s - (time.perf_counter() - started), read_rate, insert_rate, args.runs,
                    profile_possible, loader.total)
    est = estimate_seconds(size, read_rate, insert_rate, args.runs, profile_possible, loader.total)
    note = ""
    if size < requested:
        full = estimate_seconds(requested, read_rate, insert_rate, args.runs, profile_possible, loader.total)
        note = (f"{size / MB:.0f} MB instead of the requested {args.size_mb} MB: at FerretDB's measured rates here "
                f"(insert {insert_rate / MB:.1f} MB/s, one-stream read {read_rate / MB:.1f} MB/s) the full size "
                f"would take about {full / 60:.0f} min, over the --budget-s {args.budget_s:.0f} s.")
        say(note)
    say(f"loading to {size / MB:.0f} MB; whole benchmark estimated at {est / 60:.1f} min")
    loader.load_until(size)
    index_s = loader.create_indexes()
    load_s = loader.seconds
    say(f"loaded {loader.total / MB:.1f} MB, {sum(loader.docs.values())} documents in {load_s:.0f} s "
        f"(indexes {index_s:.1f} s)")
    expected_counts = {c.ns: loader.docs[c.ns] for c in COLLECTIONS}

    runs: dict[str, list[Sample]] = {s: [] for s in STEPS}
    verify: dict = {}
    archive_bytes = 0
    profile = args.profile == "always"
    floor_ok = True
    for i in range(1, args.runs + 1):
        run_dir = os.path.join(tmp, f"run-{i}")
        os.makedirs(run_dir)
        repo = os.path.join(run_dir, "repo")
        objects = objects_for(os.path.join(run_dir, "objects.yaml"), peer, password, repo)
        common = ["--objects", objects, "-n", NAMESPACE, "--repository", "repo"]

        def record(sample: Sample, i: int = i) -> Sample:
            runs[sample.step].append(sample)
            say(f"run {i}/{args.runs} {sample.step}: {sample.wall:.2f} s wall, {sample.cpu:.1f} s CPU, peak RSS "
                f"{sample.peak_rss_kib / 1024:.0f} MiB; FerretDB {sample.server_cpu:.1f} s CPU")
            return sample

        for parallel in (1, PARALLEL):
            s = record(bench.floor_read(run_dir, parallel))
            counts = {ns: v[0] for ns, v in s.info["read"].items()}
            if counts != expected_counts:
                floor_ok = False
                say(f"floor read {counts}, loaded {expected_counts}")
        s = record(bench.runner(STEP_BACKUP, ["backup", *common, "--appbinding", APPBINDING, "--driver", "mongodb"],
                                run_dir, "backup"))
        s.info["stored_bytes"] = dir_bytes(repo)
        first = s.info["stored_bytes"]
        s = record(bench.runner(STEP_BACKUP2, ["backup", *common, "--appbinding", APPBINDING, "--driver", "mongodb"],
                                run_dir, "backup2"))
        s.info["stored_bytes"] = dir_bytes(repo) - first
        size_now = snapshot_file_size(repo)
        if size_now is None:
            raise RuntimeError(f"no /dump in the latest snapshot of {repo}")
        archive_bytes = size_now
        if args.profile == "auto" and not profile:
            floor = min(runs[STEP_FLOOR_SEQ][-1].wall, runs[STEP_FLOOR_PAR][-1].wall)
            profile = runs[STEP_BACKUP][-1].wall / floor > TARGET_WALL_VS_FLOOR
            if profile:
                say("the backup misses its target: profiling (the driver's dump alone)")
        if profile:
            s = record(bench.libdump(run_dir))
            verify["libdump_archive_bytes"] = s.info["archive_bytes"]
        drop_databases(client)
        record(bench.runner(STEP_RESTORE, ["restore", *common, "--appbinding", APPBINDING, "--driver", "mongodb",
                                           "--mongo-args=--drop"], run_dir, "restore"))
        verify["restore"] = verify_restore(client, loader)
        say(f"restore verified in {verify['restore']['seconds']:.1f} s")
        if not verify["restore"]["ok"]:
            say(f"restore verification failed: {verify['restore']['problems']}")
        drop_databases(client)
        s = record(bench.insert_floor(run_dir, loader))
        if s.info["counts"] != expected_counts:
            floor_ok = False
            say(f"insert floor inserted {s.info['counts']}, loaded {expected_counts}")
        record(bench.runner(STEP_DUMP, ["dump", *common, "latest", "/dump"], run_dir, "dump", stdout_null=True))
        if i == args.runs:
            say("restic check of the repository")
            check = restic(repo, "check")
            verify["restic_check"] = "OK" if check.returncode == 0 else "FAIL"
            verify["restic_check_output"] = (check.stdout + check.stderr)[-2000:]
            verify["snapshot_bytes"] = archive_bytes
            lib = verify.get("libdump_archive_bytes")
            # the dumps of -j 4 interleave differently each time, but their size is the same
            verify["size_matches"] = lib == archive_bytes if lib is not None else None
    verify["floor_counts"] = "as loaded" if floor_ok else "NOT as loaded"

    say("per-byte costs of the stages")
    from stash_runner.restic import compression
    micro = micro_costs(loader, compression.DEFAULT_LEVEL)
    doc_bytes = loader.total
    med = summarize(runs, archive_bytes)
    result_checks = checks(med)
    analysis = analyse(med, micro, archive_bytes)
    meta = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "args": vars(args),
            "machine": machine_info(), "loadavg_before": args.loadavg_before,
            "code": {**facts, "changed_during_run": code_digest() != facts["code_sha256"]},
            "data": {"requested_bytes": requested, "document_bytes": doc_bytes, "archive_bytes": archive_bytes,
                     "documents": sum(loader.docs.values()), "per_collection": {
                         ns: {"documents": loader.docs[ns], "bytes": loader.bytes[ns]} for ns in loader.docs},
                     "load_seconds": load_s, "index_seconds": index_s, "size_note": note,
                     "probe": {"bytes": probe_bytes, "load_s": probe_load, "read_s": probe_read,
                               "insert_rate_mb_s": insert_rate / MB, "read_rate_mb_s": read_rate / MB},
                     "estimated_seconds": est}}
    table = markdown(meta, med, result_checks, micro, verify, analysis)
    total = time.perf_counter() - started
    table += f"\nTotal benchmark time: {total:.0f} s (estimated {est:.0f} s).\n"
    print(table, end="")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "bench_mongo.md"), "w") as f:
        f.write(table)
    with open(os.path.join(OUT_DIR, "bench_mongo.json"), "w") as f:
        json.dump({**meta, "total_seconds": total, "medians": med, "checks": result_checks, "micro_costs": micro,
                   "analysis": analysis, "verify": verify, "thread_roles": THREAD_ROLES,
                   "runs": {s: [asdict(x) for x in samples] for s, samples in runs.items() if samples}}, f, indent=2)
    say(f"wrote {os.path.relpath(OUT_DIR, REPO_ROOT)}/bench_mongo.md and .json")
    broken = (verify.get("restic_check") != "OK" or not verify.get("restore", {}).get("ok") or not floor_ok
              or verify.get("size_matches") is False)
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return 0
    args = parse_args(argv)
    started = time.perf_counter()
    if not shutil.which("restic"):
        print("restic missing: run `make deps`", file=sys.stderr)
        return 2
    args.loadavg_before = os.getloadavg()
    if args.loadavg_before[0] > 0.5:
        # Anything else running on the machine competes for the 2 cores and skews every number.
        say(f"warning: load average is {args.loadavg_before[0]:.2f} before starting; results will be noisy")
    tmp = tempfile.mkdtemp(prefix="bench-mongo-", dir="/tmp")
    try:
        return run(args, tmp, started)
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
