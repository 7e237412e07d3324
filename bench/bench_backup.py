#!/usr/bin/env python3
"""Benchmark a ~1 GB pg_dumpall backup: the dump alone, piped into restic, and through stash-runner.

Run from the repository root: ``python3 bench/bench_backup.py [--size-mb N] [--runs N] [--keep] [--no-s3 |
--only-s3] [--s3-connections N]``.
Prints a Markdown table and the target ratios; writes both (and every raw number as JSON) to bench/out/.

Rows: the dump alone; ``pg_dumpall | restic backup --stdin`` and ``stash-runner backup`` into a local
repository; and the same two into an S3 repository on moto's S3 server (tests/servers.py start_moto)
on a loopback port. Every run uses a fresh directory, or a fresh bucket, for every repository, so
nothing deduplicates across runs. ``--no-s3`` skips the S3 rows, ``--only-s3`` runs only them (quick
checks). ``--s3-connections N`` sets the S3 Repository's maxConnections and restic's
``-o s3.connections`` alike (default: both tools' default, 5).

About the S3 rows: moto is a Python (werkzeug) server that keeps objects under 5 MB in memory and
spools larger ones to temporary files; it runs on the same 2 cores as everything else, so it is not
a model of real S3 throughput but a local stand-in that both uploaders share equally. Every S3 step
gets a moto process of its own, started before it and stopped after it: deleting a bucket's objects
does give moto's objects back, but not its RSS (freed Python arenas stay mapped: one long-lived moto
grew to 630 MiB over two runs at 1 GB), so with one server each step would start on a bigger moto
than the one before. The step's bucket is emptied and deleted after it is measured all the same (the
stored size is the sum of the object sizes under the prefix, from list_objects_v2). moto's CPU
during a step is reported apart (column "S3 server"), not as "other"; its peak RSS is VmHWM from
/proc/PID/status after the step, the high-water mark having been reset (``echo 5 >
/proc/PID/clear_refs``) when the step starts, so ``restic init`` and moto's start-up do not count.
``restic init`` for the S3 row is, as for the local one, outside the timed window; stash-runner
creates its bucket and repository inside its run, as it does with the local directory.

How CPU and memory are measured (Linux): every measured process is a direct child of this script,
started with Popen and reaped with ``os.wait4``. On Linux the rusage that wait4 returns is the
child's *own* usage plus that of all descendants it waited for (the kernel fills it with
RUSAGE_BOTH), and its ru_maxrss is the largest of those processes. So:

* CPU: the sum of ru_utime + ru_stime over the wait4 results of the step's direct children. That
  covers pg_dumpall and the pg_dump it runs per database (pg_dumpall waits for them), restic, and
  stash-runner with its pg_isready/pg_dumpall/pg_dump children (it waits for them), but never the
  PostgreSQL server, which is not our descendant. As a cross-check, the delta of this script's
  own RUSAGE_CHILDREN over the step is recorded in the JSON too; it must agree.
* Peak RSS of restic: its wait4 ru_maxrss (restic has no children).
* Peak RSS of stash-runner: wait4 would give max(python, pg_dump), so instead the CLI runs under a
  tiny wrapper (exactly ``python3 -m stash_runner ...`` via runpy) whose atexit hook writes the
  python process's own peak RSS (VmHWM: bench/measured.py) to a file. The wait4 value is kept in the JSON too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

import boto3  # noqa: E402
import botocore.config  # noqa: E402

from bench.cpu import busy_cpu, children_cpu, process_cpu  # noqa: E402
from bench.measured import WRAPPER, peak_rss_kib  # noqa: E402
from tests.helpers import REPO_PASSWORD, objects_yaml  # noqa: E402
from tests.pgcluster import PgCluster, load_bulk  # noqa: E402
from tests.servers import Server, start_moto  # noqa: E402

MB = 1_000_000  # dump sizes and throughput in decimal MB, as --size-mb
MIB = 1 << 20  # memory and repository sizes in MiB

TARGET_WALL_VS_DUMP = 1.10  # stash-runner wall / pg_dumpall wall, at most (local repository)
TARGET_WALL_VS_DUMP_S3 = 1.25  # the same with the repository on the S3 emulator
TARGET_AGAIN_VS_DUMP = 1.05  # a second backup of the unchanged database (everything deduplicates)
TARGET_CPU_PER_GB = 4.5  # the runner's own process (not pg_dump's), CPU s per GB of dump
TARGET_RESTIC_VS_RUNNER = 1.5  # restic wall / stash-runner wall, at least
TARGET_RSS_MIB = 300  # stash-runner peak RSS, at most
SIZE_TOLERANCE = 0.25  # re-load the data when load_bulk misses the dump size by more than this

STEP_DUMP = "pg_dumpall > /dev/null"
STEP_RESTIC = "pg_dumpall | restic backup --stdin"
STEP_RUNNER = "stash-runner backup"
STEP_AGAIN = "stash-runner backup, unchanged database"
STEP_RESTIC_S3 = "pg_dumpall | restic backup --stdin (S3)"
STEP_RUNNER_S3 = "stash-runner backup (S3)"
LOCAL_STEPS = (STEP_DUMP, STEP_RESTIC, STEP_RUNNER, STEP_AGAIN)
S3_STEPS = (STEP_RESTIC_S3, STEP_RUNNER_S3)
STEPS = LOCAL_STEPS + S3_STEPS
S3_PREFIX = "stash/pg"



def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class ProcUsage:
    utime: float
    stime: float
    maxrss_kib: int
    exit_code: int


@dataclass
class Sample:
    step: str
    wall: float
    cpu: float
    peak_rss_kib: int | None  # the uploader's (restic / stash-runner python); None for the dump alone
    stored_bytes: int | None
    procs: dict[str, ProcUsage] = field(default_factory=dict)
    cpu_children_delta: float = 0.0  # cross-check of `cpu` from RUSAGE_CHILDREN of this script
    server_cpu: float = 0.0  # the PostgreSQL server (postmaster and its reaped backends), same window
    other_cpu: float = 0.0  # everything else on the machine in that window: should be ~0 on an idle box
    s3_server_cpu: float | None = None  # moto, same window (S3 steps only)
    s3_server_peak_rss_kib: int | None = None  # moto's VmHWM over the step (reset just before it)
    s3_server_rss_before_kib: int | None = None  # moto's VmRSS when the step started
    own_cpu: float | None = None  # stash-runner's python process alone (not pg_dump), from its atexit report
    threads: dict[str, float] = field(default_factory=dict)  # stash-runner's CPU by thread kind
    pipeline: dict[str, float] = field(default_factory=dict)  # the archiver's waits (its -v log line)


# -- processes ---------------------------------------------------------------------------------

def _reap(p: subprocess.Popen) -> ProcUsage:
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it again
    return ProcUsage(ru.ru_utime, ru.ru_stime, ru.ru_maxrss, p.returncode)


@contextlib.contextmanager
def _killed_on_error(procs: list[subprocess.Popen]) -> Iterator[None]:
    """If a step fails half-way, stop (by PID) and reap whatever it started, then re-raise."""
    try:
        yield
    except BaseException:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(ChildProcessError):
                    _reap(p)
        raise






@dataclass
class Window:
    """CPU accounting around one timed step: ours (RUSAGE_CHILDREN), the server's, the machine's."""

    postmaster: int
    s3: S3Server | None = None  # the S3 server the step writes to: its CPU is counted apart from "other"
    ours: float = 0.0
    server: float = 0.0
    other: float = 0.0
    s3_cpu: float | None = None
    s3_peak_kib: int | None = None
    s3_before_kib: int | None = None

    def __enter__(self) -> Window:
        if self.s3:
            self.s3.reset_peak()
            self.s3_before_kib = self.s3.memory()["VmRSS"]
        s3_cpu = process_cpu(self.s3.pid) if self.s3 else 0.0
        self._start = (children_cpu(), process_cpu(self.postmaster), busy_cpu(), s3_cpu)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # let the postmaster reap the dump's backend before reading its cutime
        ours, server, busy = children_cpu(), process_cpu(self.postmaster), busy_cpu()
        self.ours, self.server = ours - self._start[0], server - self._start[1]
        s3_cpu = 0.0
        if self.s3:
            s3_cpu = process_cpu(self.s3.pid) - self._start[3]
            self.s3_cpu, self.s3_peak_kib = s3_cpu, self.s3.memory()["VmHWM"]
        self.other = max(0.0, (busy - self._start[2]) - self.ours - self.server - s3_cpu)

    def fill(self, sample: Sample) -> Sample:
        sample.cpu_children_delta, sample.server_cpu, sample.other_cpu = self.ours, self.server, self.other
        sample.s3_server_cpu, sample.s3_server_peak_rss_kib = self.s3_cpu, self.s3_peak_kib
        sample.s3_server_rss_before_kib = self.s3_before_kib
        return sample


def _check(usage: dict[str, ProcUsage], logs: dict[str, str]) -> None:
    for name, u in usage.items():
        if u.exit_code != 0:
            tail = ""
            if name in logs and os.path.exists(logs[name]):
                with open(logs[name], errors="replace") as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(f"{name} exited with {u.exit_code}:\n{tail}")


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def restic_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD"] = REPO_PASSWORD
    env.update(extra or {})
    return env


def restic(repo: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``env``: extra variables, e.g. an S3 repository's credentials."""
    return subprocess.run(["restic", "--no-cache", "-r", repo, *args], env=restic_env(env), capture_output=True,
                          text=True)


class S3Server:
    """moto's S3 server for the S3 rows: a fresh bucket per repository, its size, its removal, moto's memory."""

    def __init__(self, workdir: str, connections: int = 0):
        self.server: Server = start_moto(workdir)
        self.connections = connections  # 0: each tool's default
        self.pid = self.server.proc.pid  # the pyenv shim, if any, execs: the same PID ends up as moto
        with open(f"/proc/{self.pid}/cmdline", "rb") as f:
            self.cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        self.peak_resettable = True
        self.client = boto3.client(
            "s3", endpoint_url=self.server.url, region_name="us-east-1", **self.env_kw(),
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}))

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def env_kw(self) -> dict[str, str]:
        return {"aws_access_key_id": self.env["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": self.env["AWS_SECRET_ACCESS_KEY"]}

    @staticmethod
    def fresh_bucket(kind: str, run: int) -> str:
        return f"bench-{kind}-{run}-{uuid.uuid4().hex[:10]}"

    def restic_url(self, bucket: str) -> str:
        return f"s3:{self.server.url}/{bucket}/{S3_PREFIX}"

    def backend(self, bucket: str) -> dict:
        conf = {"endpoint": self.server.url, "bucket": bucket, "prefix": S3_PREFIX}
        if self.connections:
            conf["maxConnections"] = self.connections
        return {"s3": conf}

    def restic_options(self) -> list[str]:
        return ["-o", f"s3.connections={self.connections}"] if self.connections else []

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM of moto, in KiB."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
        return out

    def reset_peak(self) -> None:
        """Set VmHWM back to the current RSS (Linux >= 4.0), so the next reading is the step's own peak."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.peak_resettable = False  # then VmHWM is moto's lifetime peak

    def _objects(self, bucket: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{S3_PREFIX}/"):
            yield from page.get("Contents", [])

    def stored_bytes(self, bucket: str) -> int:
        return sum(int(o["Size"]) for o in self._objects(bucket))

    def drop(self, bucket: str) -> None:
        """Empty and delete the bucket, so moto frees what it holds."""
        keys = [{"Key": o["Key"]} for o in self._objects(bucket)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
        self.client.delete_bucket(Bucket=bucket)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.server.stop()


# -- the three measurements --------------------------------------------------------------------

def measure_dump(cluster: PgCluster, run_dir: str) -> Sample:
    err = os.path.join(run_dir, "pg_dumpall.err")
    procs: list[subprocess.Popen] = []
    with Window(cluster.pid) as win, open(os.devnull, "wb") as null, open(err, "wb") as errf, \
            _killed_on_error(procs):
        t0 = time.perf_counter()
        procs.append(subprocess.Popen(["pg_dumpall"], stdout=null, stderr=errf, env=cluster.env()))
        usage = {"pg_dumpall": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, {"pg_dumpall": err})
    u = usage["pg_dumpall"]
    return win.fill(Sample(STEP_DUMP, wall, u.utime + u.stime, None, None, usage))


def measure_restic(cluster: PgCluster, run_dir: str, s3: S3Server | None = None,
                   bucket: str = "") -> tuple[Sample, str]:
    """Into ``run_dir``/restic-repo, or with ``s3`` into ``bucket`` on it. Returns the sample and the repository."""
    if s3:
        repo, env, tag, step, opts = s3.restic_url(bucket), s3.env, "-s3", STEP_RESTIC_S3, s3.restic_options()
    else:
        repo, env, tag, step, opts = os.path.join(run_dir, "restic-repo"), {}, "", STEP_RESTIC, []
    # Not timed: the runner creates its repository inside its run, but that is cheap. On S3 this makes the bucket.
    r = restic(repo, *opts, "init", env=env)
    if r.returncode != 0:
        raise RuntimeError(f"restic init failed: {r.stderr}")
    logs = {"pg_dumpall": os.path.join(run_dir, f"pg_dumpall{tag}.err"),
            "restic": os.path.join(run_dir, f"restic{tag}.log")}
    procs: list[subprocess.Popen] = []
    with Window(cluster.pid, s3) as win, open(logs["pg_dumpall"], "wb") as derr, \
            open(logs["restic"], "wb") as rlog, _killed_on_error(procs):
        t0 = time.perf_counter()
        dump = subprocess.Popen(["pg_dumpall"], stdout=subprocess.PIPE, stderr=derr, env=cluster.env())
        procs.append(dump)
        try:
            procs.append(subprocess.Popen(
                ["restic", "--no-cache", "-r", repo, *opts, "backup", "--stdin", "--stdin-filename", "dumpfile.sql",
                 "--host", "host-0"],
                stdin=dump.stdout, stdout=rlog, stderr=subprocess.STDOUT, env=restic_env(env)))
        finally:
            dump.stdout.close()  # only restic holds the read end: pg_dumpall sees EPIPE if restic dies
        usage = {"pg_dumpall": _reap(procs[0]), "restic": _reap(procs[1])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    cpu = sum(u.utime + u.stime for u in usage.values())
    stored = s3.stored_bytes(bucket) if s3 else dir_bytes(repo)
    return win.fill(Sample(step, wall, cpu, usage["restic"].maxrss_kib, stored, usage)), repo


def measure_runner(cluster: PgCluster, run_dir: str, s3: S3Server | None = None,
                   bucket: str = "", again: bool = False) -> tuple[Sample, str]:
    """Into ``run_dir``/runner-repo, or with ``s3`` into ``bucket`` on it (which the runner creates). ``again``:
    a second backup into the local repository the first one made."""
    tag = "-s3" if s3 else "-again" if again else ""
    if s3:
        repo = s3.restic_url(bucket)
        objects = objects_yaml(os.path.join(run_dir, "objects-s3.yaml"), cluster=cluster, backend=s3.backend(bucket),
                               storage_secret=s3.env)
    else:
        repo = os.path.join(run_dir, "runner-repo")
        objects = objects_yaml(os.path.join(run_dir, "objects.yaml"), cluster=cluster, repo_dir=repo)
    rss_file = os.path.join(run_dir, f"runner-rusage{tag}.json")
    logs = {"stash-runner": os.path.join(run_dir, f"stash-runner{tag}.log")}
    argv = [sys.executable, "-c", WRAPPER, rss_file, "runner", "-v",
            "backup", "--objects", objects, "-n", "demo", "--appbinding", "pg", "--repository", "repo"]
    procs: list[subprocess.Popen] = []
    with Window(cluster.pid, s3) as win, open(logs["stash-runner"], "wb") as log, _killed_on_error(procs):
        t0 = time.perf_counter()
        # cwd: the repository root, so the code measured is this checkout's even without the editable install
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT))
        usage = {"stash-runner": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    with open(rss_file) as f:
        own = json.load(f)
    u = usage["stash-runner"]
    # The python process alone, from its atexit report; wait4's value is in `procs` for comparison.
    usage["stash-runner (python only)"] = ProcUsage(own["utime"], own["stime"], peak_rss_kib(own), 0)
    stored = s3.stored_bytes(bucket) if s3 else dir_bytes(repo)
    step = STEP_RUNNER_S3 if s3 else STEP_AGAIN if again else STEP_RUNNER
    sample = win.fill(Sample(step, wall, u.utime + u.stime, peak_rss_kib(own), stored, usage))
    sample.own_cpu = own["utime"] + own["stime"]
    sample.threads = thread_kinds(own["threads"])
    with open(logs["stash-runner"], errors="replace") as f:
        sample.pipeline = pipeline_waits(f.read())
    return sample, repo


def thread_kinds(threads: list[tuple[str, float]]) -> dict[str, float]:
    """CPU s by kind of thread: blob_0 and blob_1 are "blob" (the workers), upload_3 is "upload" and so on."""
    kinds: dict[str, float] = {}
    for name, cpu in threads:
        kind = re.sub(r"[_-]?\d+$", "", name.split(" ")[0]) or name
        kinds[kind] = kinds.get(kind, 0.0) + cpu
    return kinds


_PIPELINE = re.compile(r"the reader waited ([\d.]+) s for the dump tool and ([\d.]+) s for (\d+) workers, which "
                       r"were busy ([\d.]+) s of ([\d.]+) s")


def pipeline_waits(log: str) -> dict[str, float]:
    """The archiver's account of where the reader's and the workers' time went (logged with -v)."""
    m = _PIPELINE.search(log)
    if not m:
        return {}
    read_wait, worker_wait, workers, busy, capacity = m.groups()
    return {"read_wait_s": float(read_wait), "worker_wait_s": float(worker_wait), "workers": int(workers),
            "workers_busy_s": float(busy), "workers_capacity_s": float(capacity)}


# -- data --------------------------------------------------------------------------------------

def dump_size(cluster: PgCluster) -> tuple[int, float]:
    """Bytes of one pg_dumpall, counted through a pipe; also warms the page cache for the timed runs."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["pg_dumpall"], stdout=subprocess.PIPE, env=cluster.env())
    total = 0
    with p.stdout:
        while chunk := p.stdout.read(1 << 20):
            total += len(chunk)
    if p.wait() != 0:
        raise RuntimeError(f"pg_dumpall exited with {p.returncode}")
    return total, time.perf_counter() - t0


def load_rows(cluster: PgCluster, rows: int, dbname: str = "bulk") -> None:
    """load_bulk's table with an explicit row count, for when its estimate is far off."""
    cluster.execute(f"DROP DATABASE IF EXISTS {dbname}")
    cluster.execute(f"CREATE DATABASE {dbname}")
    cluster.execute(
        "CREATE TABLE payload (id bigint, a text, b text, c int);"
        f"INSERT INTO payload SELECT g, md5(g::text), md5((g * 31)::text) || md5((g * 17)::text), g % 1000 "
        f"FROM generate_series(1, {rows}) g;", dbname=dbname)


def prepare_data(cluster: PgCluster, size_mb: int) -> dict:
    target = size_mb * MB
    t0 = time.perf_counter()
    # No autovacuum: its workers would compete for the 2 cores during timed steps (and not in the dump).
    cluster.execute("ALTER SYSTEM SET autovacuum = off")
    cluster.execute("SELECT pg_reload_conf()")
    load_bulk(cluster, size_mb)
    rows = size_mb * MB // 110  # load_bulk's own estimate
    nbytes, dump_s = dump_size(cluster)
    say(f"load_bulk({size_mb}): {rows} rows, pg_dumpall output {nbytes / MB:.1f} MB "
        f"({(nbytes - target) / target:+.1%} vs target)")
    adjusted = False
    if abs(nbytes - target) / target > SIZE_TOLERANCE:
        rows = int(rows * target / nbytes)
        say(f"more than {SIZE_TOLERANCE:.0%} off: reloading with {rows} rows")
        load_rows(cluster, rows)
        nbytes, dump_s = dump_size(cluster)
        adjusted = True
        say(f"pg_dumpall output now {nbytes / MB:.1f} MB")
    # Set hint bits and flush dirty pages now, not during the timed dumps.
    cluster.execute("VACUUM ANALYZE", dbname="bulk")
    cluster.execute("CHECKPOINT")
    time.sleep(1)  # let those connections' backends exit before the first CPU window opens
    return {"target_bytes": target, "dump_bytes": nbytes, "rows": rows, "rows_adjusted": adjusted,
            "load_seconds": time.perf_counter() - t0, "untimed_dump_seconds": dump_s}


# -- reporting ---------------------------------------------------------------------------------

def median_of(samples: list[Sample], attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[Sample]], dump_bytes: int) -> dict[str, dict]:
    out = {}
    for step, samples in runs.items():
        wall = median_of(samples, "wall")
        rss = median_of(samples, "peak_rss_kib")
        stored = median_of(samples, "stored_bytes")
        out[step] = {
            "wall_s": wall,
            "mb_per_s": dump_bytes / MB / wall,
            "cpu_s": median_of(samples, "cpu"),
            "peak_rss_mib": rss / 1024 if rss is not None else None,
            "stored_mib": stored / MIB if stored is not None else None,
            "server_cpu_s": median_of(samples, "server_cpu"),
            "other_cpu_s": median_of(samples, "other_cpu"),
        }
        own = median_of(samples, "own_cpu")
        if own is not None:
            out[step]["own_cpu_s"] = own
            out[step]["own_cpu_s_per_gb"] = own / (dump_bytes / 1e9)
            kinds = sorted({k for s in samples for k in s.threads})
            out[step]["threads_cpu_s"] = {k: statistics.median(s.threads.get(k, 0.0) for s in samples) for k in kinds}
            keys = sorted({k for s in samples for k in s.pipeline})
            out[step]["pipeline"] = {k: statistics.median(s.pipeline[k] for s in samples if k in s.pipeline)
                                     for k in keys}
        if step in S3_STEPS:
            moto_rss = median_of(samples, "s3_server_peak_rss_kib")
            out[step]["s3_server_cpu_s"] = median_of(samples, "s3_server_cpu")
            out[step]["s3_server_peak_rss_mib"] = moto_rss / 1024 if moto_rss is not None else None
            out[step]["s3_server_peak_rss_mib_max"] = max(s.s3_server_peak_rss_kib or 0 for s in samples) / 1024
    return out


def ratios(med: dict[str, dict]) -> list[dict]:
    checks = []
    if STEP_DUMP in med:
        dump, rest, runner = med[STEP_DUMP], med[STEP_RESTIC], med[STEP_RUNNER]
        checks += [
            ("stash-runner wall / pg_dumpall wall", runner["wall_s"] / dump["wall_s"], "<=", TARGET_WALL_VS_DUMP),
            ("stash-runner CPU s per GB (its own process)", runner["own_cpu_s_per_gb"], "<=", TARGET_CPU_PER_GB),
            ("restic wall / stash-runner wall", rest["wall_s"] / runner["wall_s"], ">=", TARGET_RESTIC_VS_RUNNER),
            ("stash-runner peak RSS MiB", runner["peak_rss_mib"], "<=", TARGET_RSS_MIB),
        ]
        if STEP_AGAIN in med:
            checks.append(("second backup wall / pg_dumpall wall", med[STEP_AGAIN]["wall_s"] / dump["wall_s"], "<=",
                           TARGET_AGAIN_VS_DUMP))
    if STEP_RUNNER_S3 in med:
        rest, runner = med[STEP_RESTIC_S3], med[STEP_RUNNER_S3]
        if STEP_DUMP in med:
            checks.append(("stash-runner-S3 wall / pg_dumpall wall", runner["wall_s"] / med[STEP_DUMP]["wall_s"],
                           "<=", TARGET_WALL_VS_DUMP_S3))
        checks += [
            ("restic-S3 wall / stash-runner-S3 wall", rest["wall_s"] / runner["wall_s"], ">=",
             TARGET_RESTIC_VS_RUNNER),
            ("stash-runner-S3 peak RSS MiB", runner["peak_rss_mib"], "<=", TARGET_RSS_MIB),
        ]
    return [{"check": name, "value": value, "op": op, "target": target,
             "pass": value <= target if op == "<=" else value >= target}
            for name, value, op, target in checks]


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, med: dict[str, dict], checks: list[dict], verify: dict) -> str:
    steps = [s for s in STEPS if s in med]
    lines = [
        f"Dump: {meta['data']['dump_bytes'] / MB:.1f} MB from pg_dumpall ({meta['data']['rows']} rows), "
        f"median of {meta['args']['runs']} run(s); {meta['machine']['cpus']} CPUs, "
        f"{meta['machine']['restic']}, PostgreSQL {meta['machine']['postgres']}; 1-min load average "
        f"{meta['loadavg_before'][0]:.2f} before starting.",
        "",
        "| step | wall s | MB/s | CPU s | peak RSS MiB | stored MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step in steps:
        m = med[step]
        lines.append(f"| `{step}` | {_fmt(m['wall_s'], 2)} | {_fmt(m['mb_per_s'], 1)} | {_fmt(m['cpu_s'], 1)} "
                     f"| {_fmt(m['peak_rss_mib'], 0)} | {_fmt(m['stored_mib'], 1)} |")
    # Not a target, but says where the time goes: with 2 cores, "cores busy" near 2 means CPU-bound.
    s3 = any(s in med for s in S3_STEPS)
    lines += ["", "CPU breakdown (median s): ours = the CPU s column; server = PostgreSQL backends; "
              + ("S3 server = moto; " if s3 else "") + "other = rest of the machine (should be ~0).", "",
              "| step | ours | server |" + (" S3 server |" if s3 else "") + " other | cores busy |",
              "|---|---:|---:|" + ("---:|" if s3 else "") + "---:|---:|"]
    for step in steps:
        m = med[step]
        moto = m.get("s3_server_cpu_s")
        busy = (m["cpu_s"] + m["server_cpu_s"] + (moto or 0) + m["other_cpu_s"]) / m["wall_s"]
        lines.append(f"| `{step}` | {m['cpu_s']:.1f} | {m['server_cpu_s']:.1f} | "
                     + (f"{_fmt(moto, 1)} | " if s3 else "") + f"{m['other_cpu_s']:.1f} | {busy:.2f} |")
    if s3:
        info = meta["s3"]
        peak_how = "VmHWM reset before each step" if info["peak_resettable"] else "VmHWM over moto's lifetime"
        lines += ["", f"S3 server: moto {info['moto_version']} on loopback, a fresh process per S3 step "
                  f"({peak_how}); "
                  f"maxConnections / s3.connections: {info['connections'] or 'default (5)'}.", "",
                  "| step | moto CPU s | moto peak RSS MiB (median / max) | moto RSS at step start MiB |",
                  "|---|---:|---:|---:|"]
        for step in (s for s in S3_STEPS if s in med):
            m = med[step]
            before = median_of(meta["_runs"][step], "s3_server_rss_before_kib")
            lines.append(f"| `{step}` | {_fmt(m['s3_server_cpu_s'], 1)} | {_fmt(m['s3_server_peak_rss_mib'], 0)} / "
                         f"{_fmt(m['s3_server_peak_rss_mib_max'], 0)} | {_fmt(before and before / 1024, 0)} |")
    lines += profile_lines(med, meta["machine"]["cpus"])
    disturbed = [s for s in steps if med[s]["other_cpu_s"] > 0.1 * med[s]["wall_s"]]
    if disturbed:
        lines += ["", f"**Warning:** other processes used more than 0.1 core during {', '.join(disturbed)}: "
                  "the machine was not idle, so these numbers are disturbed."]
    lines += ["", "| ratio | value | target | result |", "|---|---:|---:|---|"]
    for c in checks:
        op = "≤" if c["op"] == "<=" else "≥"
        digits = 0 if "MiB" in c["check"] else 2
        lines.append(f"| {c['check']} | {c['value']:.{digits}f} | {op} {c['target']:g} | "
                     f"{'PASS' if c['pass'] else 'MISS'} |")
    lines.append("")
    for kind, v in verify.items():
        lines += [
            f"`restic check` of the last stash-runner {kind} repository: {v['restic_check']}; "
            f"/dumpfile.sql in its snapshot: {v['snapshot_file_bytes']} bytes "
            f"({'same as' if v['size_matches'] else 'DIFFERENT from'} the measured dump).",
            f"Repository versions ({kind}): restic {v['restic_repo_version']}, "
            f"stash-runner {v['runner_repo_version']}.",
        ]
    return "\n".join(lines) + "\n"


def profile_lines(med: dict[str, dict], cpus: int) -> list[str]:
    """Where stash-runner's time goes: CPU by thread, the reader's and workers' waits, and the floor that the
    machine's cores set: (every process's CPU in the step) / cores is the shortest wall the step could have."""
    runner_steps = [s for s in (STEP_RUNNER, STEP_AGAIN, STEP_RUNNER_S3) if s in med and "threads_cpu_s" in med[s]]
    if not runner_steps:
        return []
    kinds = sorted({k for s in runner_steps for k in med[s]["threads_cpu_s"]},
                   key=lambda k: -max(med[s]["threads_cpu_s"].get(k, 0.0) for s in runner_steps))
    kinds = [k for k in kinds if max(med[s]["threads_cpu_s"].get(k, 0.0) for s in runner_steps) >= 0.01]
    lines = ["", "stash-runner's own process (median): CPU s by thread (MainThread reads and chunks the dump, blob = "
             "the workers: hash, compress, encrypt, fill packs; upload = the backend's writes), then the reader's "
             "waits and the workers' busy time (wall s) from its -v log.", "",
             "| step | own CPU s | CPU s/GB | " + " | ".join(kinds) + " | reader waits for dump s | reader waits for "
             "workers s | workers busy / capacity s |",
             "|---|---:|---:|" + "---:|" * len(kinds) + "---:|---:|---:|"]
    for step in runner_steps:
        m = med[step]
        p = m.get("pipeline") or {}
        busy = (f"{p['workers_busy_s']:.1f} / {p['workers_capacity_s']:.1f}" if "workers_busy_s" in p else "–")
        lines.append(f"| `{step}` | {m['own_cpu_s']:.2f} | {m['own_cpu_s_per_gb']:.2f} | "
                     + " | ".join(f"{m['threads_cpu_s'].get(k, 0.0):.2f}" for k in kinds)
                     + f" | {_fmt(p.get('read_wait_s'), 2)} | {_fmt(p.get('worker_wait_s'), 2)} | {busy} |")
    if STEP_DUMP in med:
        dump = med[STEP_DUMP]
        lines += ["", f"The floor {cpus} cores set: all CPU of the step (ours with pg_dump, the server"
                  + (", moto" if STEP_RUNNER_S3 in runner_steps else "") + ") / cores, against pg_dumpall's wall.",
                  "", "| step | CPU s, all | floor s | floor / pg_dumpall wall | wall / floor |",
                  "|---|---:|---:|---:|---:|"]
        for step in [STEP_DUMP, *runner_steps]:
            m = med[step]
            total = m["cpu_s"] + m["server_cpu_s"] + (m.get("s3_server_cpu_s") or 0.0)
            floor = total / cpus
            lines.append(f"| `{step}` | {total:.2f} | {floor:.2f} | {floor / dump['wall_s']:.2f} | "
                         f"{m['wall_s'] / floor:.2f} |")
    return lines


def repo_version(repo: str, env: dict[str, str] | None = None) -> int | None:
    r = restic(repo, "cat", "config", env=env)
    return json.loads(r.stdout).get("version") if r.returncode == 0 else None


def verify_runner_repo(repo: str, dump_bytes: int, env: dict[str, str] | None = None) -> dict:
    check = restic(repo, "check", env=env)
    ls = restic(repo, "ls", "--json", "latest", "/dumpfile.sql", env=env)
    size = None
    for line in ls.stdout.splitlines():
        node = json.loads(line)
        if node.get("struct_type") == "node" and node.get("path") == "/dumpfile.sql":
            size = node.get("size")
    return {
        "restic_check": "OK" if check.returncode == 0 else "FAIL",
        "restic_check_output": (check.stdout + check.stderr)[-2000:],
        # pg_dump's \restrict keys are random but of fixed length, so the size must match exactly
        "snapshot_file_bytes": size,
        "size_matches": size == dump_bytes,
    }


def machine_info(cluster: PgCluster) -> dict:
    restic_v = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "restic": " ".join(restic_v.split()[:2]), "postgres": os.path.basename(os.path.dirname(cluster.bindir))}


# -- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000, help="target pg_dumpall output size in MB (default 1000)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each step; the median is reported (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (cluster data, repositories)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) rows")
    which.add_argument("--only-s3", action="store_true", help="only the S3 (moto) rows, for quick checks")
    ap.add_argument("--s3-connections", type=int, default=0, metavar="N",
                    help="S3 Repository maxConnections and restic -o s3.connections (default: their default, 5)")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        ap.error("--size-mb and --runs must be at least 1")
    if args.s3_connections < 0:
        ap.error("--s3-connections must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    missing = [t for t in ("restic", "pg_dumpall", "pg_isready", "runuser") if not shutil.which(t)]
    if missing:
        print(f"missing tools {missing}: run `make deps`", file=sys.stderr)
        return 2
    # Under /tmp and world-traversable: the postgres OS user runs the cluster inside it.
    tmp = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    os.chmod(tmp, 0o755)
    cluster = PgCluster(os.path.join(tmp, "pg"))
    s3: S3Server | None = None
    steps = (S3_STEPS if args.only_s3 else LOCAL_STEPS if args.no_s3 else STEPS)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        # Anything else running on the machine competes for the 2 cores and skews every number.
        say(f"warning: load average is {load_before[0]:.2f} before starting; results will be noisy")
    try:
        say(f"starting PostgreSQL in {tmp}")
        cluster.start()
        say(f"loading ~{args.size_mb} MB of data")
        data = prepare_data(cluster, args.size_mb)
        runs: dict[str, list[Sample]] = {s: [] for s in steps}
        verify: dict[str, dict] = {}
        restic_s3_version = None
        runner_repo = ""
        restic_repo = ""
        # Round-robin, so drift (page cache, thermal, other load) spreads over all the steps.
        for i in range(1, args.runs + 1):
            run_dir = os.path.join(tmp, f"run-{i}")
            os.makedirs(run_dir)
            last = i == args.runs
            for step in steps:
                if step == STEP_DUMP:
                    sample = measure_dump(cluster, run_dir)
                elif step == STEP_RESTIC:
                    sample, restic_repo = measure_restic(cluster, run_dir)
                elif step == STEP_RUNNER:
                    sample, runner_repo = measure_runner(cluster, run_dir)
                elif step == STEP_AGAIN:
                    sample, _ = measure_runner(cluster, run_dir, again=True)
                else:
                    kind = "restic" if step == STEP_RESTIC_S3 else "runner"
                    s3 = S3Server(os.path.join(tmp, f"moto-{i}-{kind}"), args.s3_connections)
                    say(f"moto's S3 server on {s3.server.url} (pid {s3.pid}: {s3.cmdline})")
                    measure = measure_restic if step == STEP_RESTIC_S3 else measure_runner
                    bucket = s3.fresh_bucket(kind, i)
                    sample, repo = measure(cluster, run_dir, s3, bucket)
                    if last:  # checked now: the bucket is emptied right after
                        if step == STEP_RESTIC_S3:
                            restic_s3_version = repo_version(repo, s3.env)
                        else:
                            say("verifying the last stash-runner S3 repository with restic check")
                            verify["S3"] = verify_runner_repo(repo, data["dump_bytes"], s3.env)
                            verify["S3"]["restic_repo_version"] = restic_s3_version
                            verify["S3"]["runner_repo_version"] = repo_version(repo, s3.env)
                    s3.drop(bucket)
                    s3.stop()
                runs[step].append(sample)
                rss = f", peak RSS {sample.peak_rss_kib / 1024:.0f} MiB" if sample.peak_rss_kib else ""
                moto = "" if sample.s3_server_cpu is None else \
                    f"; moto {sample.s3_server_cpu:.1f} s CPU, peak RSS {sample.s3_server_peak_rss_kib / 1024:.0f} MiB"
                say(f"run {i}/{args.runs} {step}: {sample.wall:.2f} s wall, {sample.cpu:.1f} s CPU{rss}{moto}")
        if runner_repo:
            say("verifying the last stash-runner repository with restic check")
            local = verify_runner_repo(runner_repo, data["dump_bytes"])
            local["restic_repo_version"] = repo_version(restic_repo)
            local["runner_repo_version"] = repo_version(runner_repo)
            verify = {"local": local, **verify}
        med = summarize(runs, data["dump_bytes"])
        checks = ratios(med)
        meta = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "args": vars(args),
                "machine": machine_info(cluster), "data": data,
                "loadavg_before": load_before}
        if s3:
            meta["s3"] = {"moto_version": importlib.metadata.version("moto"), "cmdline": s3.cmdline,
                          "connections": args.s3_connections, "peak_resettable": s3.peak_resettable,
                          "process": "a fresh moto per S3 step, on a free loopback port"}
        table = markdown({**meta, "_runs": runs}, med, checks, verify)
        total = time.perf_counter() - started
        table += f"\nTotal benchmark time: {total:.0f} s.\n"
        print(table, end="")
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "bench_backup.md"), "w") as f:
            f.write(table)
        with open(os.path.join(OUT_DIR, "bench_backup.json"), "w") as f:
            json.dump({**meta, "total_seconds": total, "medians": med, "ratios": checks, "verify": verify,
                       "runs": {s: [asdict(x) for x in samples] for s, samples in runs.items()}}, f, indent=2)
        say(f"wrote {os.path.relpath(OUT_DIR, REPO_ROOT)}/bench_backup.md and .json")
        return 0 if all(v["restic_check"] == "OK" for v in verify.values()) else 1
    finally:
        if s3:
            s3.stop()
        if args.keep:
            cluster.stop()
            say(f"kept {tmp}")
        else:
            cluster.destroy()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
