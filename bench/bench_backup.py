#!/usr/bin/env python3
"""Benchmark a ~1 GB pg_dumpall backup: the dump alone, piped into restic, and through stash-runner.

Run from the repository root: ``python3 bench/bench_backup.py [--size-mb N] [--runs N] [--keep]``.
Prints a Markdown table and the target ratios; writes both (and every raw number as JSON) to bench/out/.

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
  python process's own RUSAGE_SELF ru_maxrss to a file. The wait4 value is kept in the JSON too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from tests.helpers import REPO_PASSWORD, objects_yaml  # noqa: E402
from tests.pgcluster import PgCluster, load_bulk  # noqa: E402

MB = 1_000_000  # dump sizes and throughput in decimal MB, as --size-mb
MIB = 1 << 20  # memory and repository sizes in MiB

TARGET_WALL_VS_DUMP = 1.15  # stash-runner wall / pg_dumpall wall, at most
TARGET_RESTIC_VS_RUNNER = 1.5  # restic wall / stash-runner wall, at least
TARGET_RSS_MIB = 300  # stash-runner peak RSS, at most
SIZE_TOLERANCE = 0.25  # re-load the data when load_bulk misses the dump size by more than this

STEP_DUMP = "pg_dumpall > /dev/null"
STEP_RESTIC = "pg_dumpall | restic backup --stdin"
STEP_RUNNER = "stash-runner backup"
STEPS = (STEP_DUMP, STEP_RESTIC, STEP_RUNNER)

# Runs the CLI exactly as `python3 -m stash_runner ARGS` does, and records the interpreter's own
# peak RSS at exit (argv[1] is the report file), which wait4 cannot separate from its children's.
_RSS_WRAPPER = """\
import atexit, json, resource, runpy, sys
_report = sys.argv[1]
def _write():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(_report, "w") as f:
        json.dump({"maxrss_kib": r.ru_maxrss, "utime": r.ru_utime, "stime": r.ru_stime}, f)
atexit.register(_write)
sys.argv = ["stash_runner", *sys.argv[2:]]
runpy.run_module("stash_runner", run_name="__main__", alter_sys=True)
"""


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


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _busy_cpu() -> float:
    """CPU seconds the whole machine spent busy since boot (all of /proc/stat's cpu line but idle, iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def _server_cpu(pid: int) -> float:
    """The postmaster's CPU plus its reaped children's: every backend that has exited counts."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / _TICK  # utime, stime, cutime, cstime


@dataclass
class Window:
    """CPU accounting around one timed step: ours (RUSAGE_CHILDREN), the server's, the machine's."""

    postmaster: int
    ours: float = 0.0
    server: float = 0.0
    other: float = 0.0

    def __enter__(self) -> Window:
        self._start = (_children_cpu(), _server_cpu(self.postmaster), _busy_cpu())
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # let the postmaster reap the dump's backend before reading its cutime
        ours, server, busy = _children_cpu(), _server_cpu(self.postmaster), _busy_cpu()
        self.ours, self.server = ours - self._start[0], server - self._start[1]
        self.other = max(0.0, (busy - self._start[2]) - self.ours - self.server)

    def fill(self, sample: Sample) -> Sample:
        sample.cpu_children_delta, sample.server_cpu, sample.other_cpu = self.ours, self.server, self.other
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


def restic_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD"] = REPO_PASSWORD
    return env


def restic(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["restic", "--no-cache", "-r", repo, *args], env=restic_env(), capture_output=True,
                          text=True)


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


def measure_restic(cluster: PgCluster, run_dir: str) -> Sample:
    repo = os.path.join(run_dir, "restic-repo")
    r = restic(repo, "init")  # not timed: the runner creates its repository inside its run, but that is cheap
    if r.returncode != 0:
        raise RuntimeError(f"restic init failed: {r.stderr}")
    logs = {"pg_dumpall": os.path.join(run_dir, "pg_dumpall.err"), "restic": os.path.join(run_dir, "restic.log")}
    procs: list[subprocess.Popen] = []
    with Window(cluster.pid) as win, open(logs["pg_dumpall"], "wb") as derr, open(logs["restic"], "wb") as rlog, \
            _killed_on_error(procs):
        t0 = time.perf_counter()
        dump = subprocess.Popen(["pg_dumpall"], stdout=subprocess.PIPE, stderr=derr, env=cluster.env())
        procs.append(dump)
        try:
            procs.append(subprocess.Popen(
                ["restic", "--no-cache", "-r", repo, "backup", "--stdin", "--stdin-filename", "dumpfile.sql",
                 "--host", "host-0"],
                stdin=dump.stdout, stdout=rlog, stderr=subprocess.STDOUT, env=restic_env()))
        finally:
            dump.stdout.close()  # only restic holds the read end: pg_dumpall sees EPIPE if restic dies
        usage = {"pg_dumpall": _reap(procs[0]), "restic": _reap(procs[1])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    cpu = sum(u.utime + u.stime for u in usage.values())
    return win.fill(Sample(STEP_RESTIC, wall, cpu, usage["restic"].maxrss_kib, dir_bytes(repo), usage))


def measure_runner(cluster: PgCluster, run_dir: str) -> tuple[Sample, str]:
    repo = os.path.join(run_dir, "runner-repo")
    objects = objects_yaml(os.path.join(run_dir, "objects.yaml"), cluster=cluster, repo_dir=repo)
    rss_file = os.path.join(run_dir, "runner-rusage.json")
    logs = {"stash-runner": os.path.join(run_dir, "stash-runner.log")}
    argv = [sys.executable, "-c", _RSS_WRAPPER, rss_file,
            "backup", "--objects", objects, "-n", "demo", "--appbinding", "pg", "--repository", "repo"]
    procs: list[subprocess.Popen] = []
    with Window(cluster.pid) as win, open(logs["stash-runner"], "wb") as log, _killed_on_error(procs):
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
    usage["stash-runner (python only)"] = ProcUsage(own["utime"], own["stime"], own["maxrss_kib"], 0)
    return win.fill(Sample(STEP_RUNNER, wall, u.utime + u.stime, own["maxrss_kib"], dir_bytes(repo), usage)), repo


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
    return out


def ratios(med: dict[str, dict]) -> list[dict]:
    dump, rest, runner = med[STEP_DUMP], med[STEP_RESTIC], med[STEP_RUNNER]
    checks = [
        ("stash-runner wall / pg_dumpall wall", runner["wall_s"] / dump["wall_s"], "<=", TARGET_WALL_VS_DUMP),
        ("restic wall / stash-runner wall", rest["wall_s"] / runner["wall_s"], ">=", TARGET_RESTIC_VS_RUNNER),
        ("stash-runner peak RSS MiB", runner["peak_rss_mib"], "<=", TARGET_RSS_MIB),
    ]
    return [{"check": name, "value": value, "op": op, "target": target,
             "pass": value <= target if op == "<=" else value >= target}
            for name, value, op, target in checks]


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, med: dict[str, dict], checks: list[dict], verify: dict) -> str:
    lines = [
        f"Dump: {meta['data']['dump_bytes'] / MB:.1f} MB from pg_dumpall ({meta['data']['rows']} rows), "
        f"median of {meta['args']['runs']} run(s); {meta['machine']['cpus']} CPUs, "
        f"{meta['machine']['restic']}, PostgreSQL {meta['machine']['postgres']}; 1-min load average "
        f"{meta['loadavg_before'][0]:.2f} before starting.",
        "",
        "| step | wall s | MB/s | CPU s | peak RSS MiB | stored MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step in STEPS:
        m = med[step]
        lines.append(f"| `{step}` | {_fmt(m['wall_s'], 2)} | {_fmt(m['mb_per_s'], 1)} | {_fmt(m['cpu_s'], 1)} "
                     f"| {_fmt(m['peak_rss_mib'], 0)} | {_fmt(m['stored_mib'], 1)} |")
    # Not a target, but says where the time goes: with 2 cores, "cores busy" near 2 means CPU-bound.
    lines += ["", "CPU breakdown (median s): ours = the CPU s column; server = PostgreSQL backends; "
              "other = rest of the machine (should be ~0).", "",
              "| step | ours | server | other | cores busy |", "|---|---:|---:|---:|---:|"]
    for step in STEPS:
        m = med[step]
        busy = (m["cpu_s"] + m["server_cpu_s"] + m["other_cpu_s"]) / m["wall_s"]
        lines.append(f"| `{step}` | {m['cpu_s']:.1f} | {m['server_cpu_s']:.1f} | {m['other_cpu_s']:.1f} "
                     f"| {busy:.2f} |")
    disturbed = [s for s in STEPS if med[s]["other_cpu_s"] > 0.1 * med[s]["wall_s"]]
    if disturbed:
        lines += ["", f"**Warning:** other processes used more than 0.1 core during {', '.join(disturbed)}: "
                  "the machine was not idle, so these numbers are disturbed."]
    lines += ["", "| ratio | value | target | result |", "|---|---:|---:|---|"]
    for c in checks:
        op = "≤" if c["op"] == "<=" else "≥"
        digits = 0 if "MiB" in c["check"] else 2
        lines.append(f"| {c['check']} | {c['value']:.{digits}f} | {op} {c['target']:g} | "
                     f"{'PASS' if c['pass'] else 'MISS'} |")
    lines += [
        "",
        f"`restic check` of the last stash-runner repository: {verify['restic_check']}; "
        f"/dumpfile.sql in its snapshot: {verify['snapshot_file_bytes']} bytes "
        f"({'same as' if verify['size_matches'] else 'DIFFERENT from'} the measured dump).",
        f"Repository versions: restic {verify['restic_repo_version']}, "
        f"stash-runner {verify['runner_repo_version']}.",
    ]
    return "\n".join(lines) + "\n"


def repo_version(repo: str) -> int | None:
    r = restic(repo, "cat", "config")
    return json.loads(r.stdout).get("version") if r.returncode == 0 else None


def verify_runner_repo(repo: str, dump_bytes: int) -> dict:
    check = restic(repo, "check")
    ls = restic(repo, "ls", "--json", "latest", "/dumpfile.sql")
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
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        ap.error("--size-mb and --runs must be at least 1")
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
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        # Anything else running on the machine competes for the 2 cores and skews every number.
        say(f"warning: load average is {load_before[0]:.2f} before starting; results will be noisy")
    try:
        say(f"starting PostgreSQL in {tmp}")
        cluster.start()
        say(f"loading ~{args.size_mb} MB of data")
        data = prepare_data(cluster, args.size_mb)
        runs: dict[str, list[Sample]] = {s: [] for s in STEPS}
        runner_repo = ""
        restic_repo = ""
        # Round-robin, so drift (page cache, thermal, other load) spreads over all three steps.
        for i in range(1, args.runs + 1):
            run_dir = os.path.join(tmp, f"run-{i}")
            os.makedirs(run_dir)
            for step in STEPS:
                if step == STEP_DUMP:
                    sample = measure_dump(cluster, run_dir)
                elif step == STEP_RESTIC:
                    sample = measure_restic(cluster, run_dir)
                    restic_repo = os.path.join(run_dir, "restic-repo")
                else:
                    sample, runner_repo = measure_runner(cluster, run_dir)
                runs[step].append(sample)
                rss = f", peak RSS {sample.peak_rss_kib / 1024:.0f} MiB" if sample.peak_rss_kib else ""
                say(f"run {i}/{args.runs} {step}: {sample.wall:.2f} s wall, {sample.cpu:.1f} s CPU{rss}")
        say("verifying the last stash-runner repository with restic check")
        verify = verify_runner_repo(runner_repo, data["dump_bytes"])
        verify["restic_repo_version"] = repo_version(restic_repo)
        verify["runner_repo_version"] = repo_version(runner_repo)
        med = summarize(runs, data["dump_bytes"])
        checks = ratios(med)
        meta = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "args": vars(args),
                "machine": machine_info(cluster), "data": data,
                "loadavg_before": load_before}
        table = markdown(meta, med, checks, verify)
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
        return 0 if verify["restic_check"] == "OK" else 1
    finally:
        if args.keep:
            cluster.stop()
            say(f"kept {tmp}")
        else:
            cluster.destroy()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
