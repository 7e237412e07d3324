#!/usr/bin/env python3
"""Benchmark restoring a ~1 GB pg_dumpall dump: psql alone, ``restic dump | psql`` and ``stash-runner restore``;
and ``dump`` of the snapshot to /dev/null, by stash-runner and by restic.

Run from the repository root: ``python3 bench/bench_restore.py [--size-mb N] [--runs N] [--keep] [--steps S,...]``.
Prints a Markdown table and the target ratios; writes both (and every raw number as JSON) to bench/out/.

Setup (not timed): a PostgreSQL cluster loaded as bench_backup.py loads it (tests/pgcluster.py load_bulk, the
same ~1 GB), one ``stash-runner backup`` of it into a local repository, and its ``/dumpfile.sql`` written out
of that snapshot with ``restic dump`` so every row restores the very same bytes. The source cluster is stopped
before the timed steps, so only the target's server runs during them.

Rows, each restore into a FRESH cluster (initdb and start are outside the timed window; the cluster is destroyed
after the step):

* ``psql -f dumpfile.sql``: psql alone, with the flags stash-runner's restore runs it with (drivers/postgres.py:
  ``--no-psqlrc --quiet -v ON_ERROR_STOP=1``), reading a file holding exactly the bytes stash-runner's restore
  feeds psql (the dump through drivers/pgsql.py's DumpStream, which differs from the dump only in keeping the
  role ``postgres``; without that, ON_ERROR_STOP stops at ``CREATE ROLE postgres``).
* ``restic dump | psql``: the snapshot's dump piped into psql (``--no-psqlrc --quiet``, no ON_ERROR_STOP: the
  unfiltered dump's ``CREATE ROLE postgres`` fails harmlessly, as it does for Stash).
* ``stash-runner restore``: the CLI, as tests/test_postgres.py runs it. The restored data is checked (row count
  and a checksum of every column of the bulk table, against the source's) after the timed window.
* ``stash-runner dump > /dev/null`` and ``restic dump > /dev/null``: the snapshot's file read back, MB/s.

CPU is measured as bench_backup.py does: wait4 of the step's direct children (so psql is counted with
stash-runner, which waits for it), the python process alone from the bench/measured.py wrapper's report (so
"psql" in the CPU table is the difference), the target server's postmaster with its reaped backends, and the
rest of the machine. Steps run round-robin per run, every other run in reverse order, so drift spreads over all of
them; the ratio table also shows the median of the per-run ratios (each run's two restores side by side), which
drift between runs does not move.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from bench.bench_backup import (  # noqa: E402
    ProcUsage,
    Window,
    _check,
    _killed_on_error,
    _reap,
    machine_info,
    prepare_data,
    restic_env,
    say,
)
from bench.measured import WRAPPER, peak_rss_kib  # noqa: E402
from drivers import pgsql  # noqa: E402
from tests.helpers import objects_yaml  # noqa: E402
from tests.pgcluster import PgCluster  # noqa: E402

MB = 1_000_000
MIB = 1 << 20

TARGET_RESTORE_VS_PSQL = 1.05  # stash-runner restore wall / psql -f wall, at most
TARGET_DUMP_MB_S = 500  # stash-runner dump to /dev/null, at least

PSQL_FLAGS = ["--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"]  # as drivers/postgres.py runs psql

STEP_PSQL = "psql -f dumpfile.sql"
STEP_RESTIC = "restic dump | psql"
STEP_RUNNER = "stash-runner restore"
STEP_RUNNER_DUMP = "stash-runner dump > /dev/null"
STEP_RESTIC_DUMP = "restic dump > /dev/null"
RESTORE_STEPS = (STEP_PSQL, STEP_RESTIC, STEP_RUNNER)
DUMP_STEPS = (STEP_RUNNER_DUMP, STEP_RESTIC_DUMP)
STEPS = RESTORE_STEPS + DUMP_STEPS
SHORT = {"psql": STEP_PSQL, "restic": STEP_RESTIC, "runner": STEP_RUNNER, "runner-dump": STEP_RUNNER_DUMP,
         "restic-dump": STEP_RESTIC_DUMP}

# Cheap but complete: every column of every row goes into the sums.
CHECKSUM_SQL = ("SELECT count(*), sum(id), sum(hashtext(a)::bigint), sum(hashtext(b)::bigint), sum(c) "
                "FROM payload")


@dataclass
class Sample:
    step: str
    wall: float
    cpu: float  # the step's processes (wait4 of its direct children, with their waited-for descendants)
    python_cpu: float | None = None  # stash-runner's python process alone (measured.py's report)
    peak_rss_kib: int | None = None  # stash-runner's python process (VmHWM)
    procs: dict[str, ProcUsage] = field(default_factory=dict)
    threads: list = field(default_factory=list)  # stash-runner's threads' CPU by name
    cpu_children_delta: float = 0.0
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    s3_server_cpu: float | None = None  # unused (Window.fill sets these)
    s3_server_peak_rss_kib: int | None = None
    s3_server_rss_before_kib: int | None = None
    verified: bool | None = None  # the restored data matched the source (stash-runner restore only)


def _runner_argv(report: str, *args: str) -> list[str]:
    return [sys.executable, "-c", WRAPPER, report, "runner", *args]


def _runner_usage(report: str, usage: dict[str, ProcUsage], sample: Sample) -> Sample:
    with open(report) as f:
        own = json.load(f)
    usage["stash-runner (python only)"] = ProcUsage(own["utime"], own["stime"], peak_rss_kib(own), 0)
    sample.python_cpu = own["utime"] + own["stime"]
    sample.peak_rss_kib = peak_rss_kib(own)
    sample.threads = own.get("threads", [])
    return sample


def checksum(cluster: PgCluster) -> list:
    with cluster.connect("bulk") as c:
        return [str(x) for x in c.execute(CHECKSUM_SQL).fetchone()]


# -- the timed steps ---------------------------------------------------------------------------

def measure_psql(target: PgCluster, run_dir: str, psql_input: str) -> Sample:
    logs = {"psql": os.path.join(run_dir, "psql.log")}
    procs: list[subprocess.Popen] = []
    env = dict(target.env(), PGDATABASE="postgres")
    with Window(target.pid) as win, open(logs["psql"], "wb") as log, _killed_on_error(procs):
        t0 = time.perf_counter()
        procs.append(subprocess.Popen(["psql", *PSQL_FLAGS, "-f", psql_input], stdout=subprocess.DEVNULL,
                                      stderr=log, env=env))
        usage = {"psql": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    u = usage["psql"]
    return win.fill(Sample(STEP_PSQL, wall, u.utime + u.stime, procs=usage))


def measure_restic_psql(target: PgCluster, run_dir: str, repo: str) -> Sample:
    logs = {"restic": os.path.join(run_dir, "restic-dump.err"), "psql": os.path.join(run_dir, "psql-pipe.log")}
    procs: list[subprocess.Popen] = []
    env = dict(target.env(), PGDATABASE="postgres")
    with Window(target.pid) as win, open(logs["restic"], "wb") as rerr, open(logs["psql"], "wb") as plog, \
            _killed_on_error(procs):
        t0 = time.perf_counter()
        dump = subprocess.Popen(["restic", "--no-cache", "-r", repo, "dump", "latest", "/dumpfile.sql"],
                                stdout=subprocess.PIPE, stderr=rerr, env=restic_env())
        procs.append(dump)
        try:
            procs.append(subprocess.Popen(["psql", "--no-psqlrc", "--quiet", "-f", "-"], stdin=dump.stdout,
                                          stdout=subprocess.DEVNULL, stderr=plog, env=env))
        finally:
            dump.stdout.close()
        usage = {"restic": _reap(procs[0]), "psql": _reap(procs[1])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    cpu = sum(u.utime + u.stime for u in usage.values())
    return win.fill(Sample(STEP_RESTIC, wall, cpu, procs=usage))


def measure_runner_restore(target: PgCluster, run_dir: str, repo: str, expected: list) -> Sample:
    objects = objects_yaml(os.path.join(run_dir, "restore-objects.yaml"), cluster=target, repo_dir=repo)
    report = os.path.join(run_dir, "runner-restore-rusage.json")
    logs = {"stash-runner": os.path.join(run_dir, "stash-runner-restore.log")}
    argv = _runner_argv(report, "restore", "--objects", objects, "-n", "demo", "--appbinding", "pg",
                        "--repository", "repo", "--output-dir", os.path.join(run_dir, "restore-out"))
    procs: list[subprocess.Popen] = []
    with Window(target.pid) as win, open(logs["stash-runner"], "wb") as log, _killed_on_error(procs):
        t0 = time.perf_counter()
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT))
        usage = {"stash-runner": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    u = usage["stash-runner"]
    sample = _runner_usage(report, usage, win.fill(Sample(STEP_RUNNER, wall, u.utime + u.stime, procs=usage)))
    got = checksum(target)
    sample.verified = got == expected
    if not sample.verified:
        raise RuntimeError(f"restored data differs: {got} != {expected}")
    return sample


def measure_runner_dump(run_dir: str, repo: str, postmaster: int) -> Sample:
    objects = objects_yaml(os.path.join(run_dir, "dump-objects.yaml"), repo_dir=repo)
    report = os.path.join(run_dir, "runner-dump-rusage.json")
    logs = {"stash-runner": os.path.join(run_dir, "stash-runner-dump.err")}
    argv = _runner_argv(report, "dump", "--objects", objects, "-n", "demo", "--repository", "repo", "latest",
                        "/dumpfile.sql")
    procs: list[subprocess.Popen] = []
    with Window(postmaster) as win, open(os.devnull, "wb") as null, open(logs["stash-runner"], "wb") as err, \
            _killed_on_error(procs):
        t0 = time.perf_counter()
        procs.append(subprocess.Popen(argv, stdout=null, stderr=err, cwd=REPO_ROOT))
        usage = {"stash-runner": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    u = usage["stash-runner"]
    return _runner_usage(report, usage, win.fill(Sample(STEP_RUNNER_DUMP, wall, u.utime + u.stime, procs=usage)))


def measure_restic_dump(run_dir: str, repo: str, postmaster: int) -> Sample:
    logs = {"restic": os.path.join(run_dir, "restic-dump-null.err")}
    procs: list[subprocess.Popen] = []
    with Window(postmaster) as win, open(os.devnull, "wb") as null, open(logs["restic"], "wb") as err, \
            _killed_on_error(procs):
        t0 = time.perf_counter()
        procs.append(subprocess.Popen(["restic", "--no-cache", "-r", repo, "dump", "latest", "/dumpfile.sql"],
                                      stdout=null, stderr=err, env=restic_env()))
        usage = {"restic": _reap(procs[0])}
        wall = time.perf_counter() - t0
    _check(usage, logs)
    u = usage["restic"]
    return win.fill(Sample(STEP_RESTIC_DUMP, wall, u.utime + u.stime, peak_rss_kib=u.maxrss_kib, procs=usage))


# -- setup -------------------------------------------------------------------------------------

def backup(source: PgCluster, tmp: str) -> str:
    repo = os.path.join(tmp, "repo")
    objects = objects_yaml(os.path.join(tmp, "backup-objects.yaml"), cluster=source, repo_dir=repo)
    r = subprocess.run([sys.executable, "-m", "stash_runner", "backup", "--objects", objects, "-n", "demo",
                        "--appbinding", "pg", "--repository", "repo"], capture_output=True, text=True, cwd=REPO_ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"stash-runner backup failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return repo


def dump_files(repo: str, tmp: str) -> tuple[str, str, int]:
    """The snapshot's dump as restic reads it, and the bytes stash-runner's restore feeds psql for it."""
    raw = os.path.join(tmp, "dumpfile.sql")
    with open(raw, "wb") as f:
        r = subprocess.run(["restic", "--no-cache", "-r", repo, "dump", "latest", "/dumpfile.sql"], stdout=f,
                           stderr=subprocess.PIPE, env=restic_env())
    if r.returncode != 0:
        raise RuntimeError(f"restic dump failed: {r.stderr.decode(errors='replace')}")
    fed = os.path.join(tmp, "dumpfile-psql.sql")

    def chunks():
        with open(raw, "rb") as f:
            while data := f.read(4 * MIB):
                yield data

    with open(fed, "wb") as out:
        for data in pgsql.DumpStream(chunks(), pgsql.Plan(keep_roles={"postgres"})):
            out.write(data)
    os.chmod(tmp, 0o755)
    for p in (raw, fed):
        os.chmod(p, 0o644)
    return raw, fed, os.path.getsize(raw)


# -- reporting ---------------------------------------------------------------------------------

def _median(samples: list[Sample], attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[Sample]], dump_bytes: int) -> dict[str, dict]:
    out = {}
    for step, samples in runs.items():
        wall = _median(samples, "wall")
        rss = _median(samples, "peak_rss_kib")
        out[step] = {"wall_s": wall, "mb_per_s": dump_bytes / MB / wall, "cpu_s": _median(samples, "cpu"),
                     "python_cpu_s": _median(samples, "python_cpu"),
                     "peak_rss_mib": rss / 1024 if rss is not None else None,
                     "server_cpu_s": _median(samples, "server_cpu"), "other_cpu_s": _median(samples, "other_cpu"),
                     "walls": [s.wall for s in samples]}
    return out


def ratios(med: dict[str, dict], runs: dict[str, list[Sample]]) -> list[dict]:
    checks = []
    if STEP_RUNNER in med and STEP_PSQL in med:
        ratio = med[STEP_RUNNER]["wall_s"] / med[STEP_PSQL]["wall_s"]
        checks.append(("stash-runner restore wall / psql -f wall", ratio, "<=", TARGET_RESTORE_VS_PSQL))
        paired = statistics.median(r.wall / p.wall for r, p in zip(runs[STEP_RUNNER], runs[STEP_PSQL], strict=True))
        checks.append(("the same, median of the per-run ratios", paired, "<=", TARGET_RESTORE_VS_PSQL))
    if STEP_RUNNER_DUMP in med:
        checks.append(("stash-runner dump MB/s", med[STEP_RUNNER_DUMP]["mb_per_s"], ">=", TARGET_DUMP_MB_S))
    return [{"check": n, "value": v, "op": op, "target": t, "pass": v <= t if op == "<=" else v >= t}
            for n, v, op, t in checks]


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, med: dict[str, dict], checks: list[dict]) -> str:
    steps = [s for s in STEPS if s in med]
    lines = [
        f"Dump: {meta['data']['dump_bytes'] / MB:.1f} MB from pg_dumpall ({meta['data']['rows']} rows), restored "
        f"into a fresh cluster per run; median of {meta['args']['runs']} run(s); {meta['machine']['cpus']} CPUs, "
        f"{meta['machine']['restic']}, PostgreSQL {meta['machine']['postgres']}; 1-min load average "
        f"{meta['loadavg_before'][0]:.2f} before starting.", "",
        "| step | wall s | MB/s | CPU s | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    for step in steps:
        m = med[step]
        lines.append(f"| `{step}` | {_fmt(m['wall_s'], 2)} | {_fmt(m['mb_per_s'], 1)} | {_fmt(m['cpu_s'], 1)} | "
                     f"{_fmt(m['peak_rss_mib'], 0)} |")
    lines += ["", "CPU breakdown (median s): stash-runner = its python process alone; tools = psql/restic "
              "(for stash-runner restore: its psql child); server = the target's PostgreSQL; other = the rest of "
              "the machine (should be ~0).", "",
              "| step | stash-runner | tools | server | other | cores busy |", "|---|---:|---:|---:|---:|---:|"]
    for step in steps:
        m = med[step]
        py = m["python_cpu_s"]
        tools = m["cpu_s"] - (py or 0)
        busy = (m["cpu_s"] + m["server_cpu_s"] + m["other_cpu_s"]) / m["wall_s"]
        lines.append(f"| `{step}` | {_fmt(py, 1)} | {tools:.1f} | {m['server_cpu_s']:.1f} | "
                     f"{m['other_cpu_s']:.1f} | {busy:.2f} |")
    disturbed = [s for s in steps if med[s]["other_cpu_s"] > 0.1 * med[s]["wall_s"]]
    if disturbed:
        lines += ["", f"**Warning:** other processes used more than 0.1 core during {', '.join(disturbed)}: "
                  "the machine was not idle, so these numbers are disturbed."]
    lines += ["", "| ratio | value | target | result |", "|---|---:|---:|---|"]
    for c in checks:
        op = "≤" if c["op"] == "<=" else "≥"
        lines.append(f"| {c['check']} | {c['value']:.2f} | {op} {c['target']:g} | {'PASS' if c['pass'] else 'MISS'} |")
    if meta.get("verified") is not None:
        lines += ["", f"stash-runner restore: restored data {'matches' if meta['verified'] else 'DIFFERS FROM'} "
                  "the source (row count and column checksums of the bulk table) in every run."]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000, help="target pg_dumpall output size in MB (default 1000)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each step; the median is reported (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (source cluster, repository)")
    ap.add_argument("--steps", default="", help=f"comma-separated subset of {','.join(SHORT)} (default: all)")
    args = ap.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        ap.error("--size-mb and --runs must be at least 1")
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    if any(s not in SHORT for s in wanted):
        ap.error(f"--steps: choose from {', '.join(SHORT)}")
    args.step_list = [SHORT[s] for s in SHORT if s in wanted] if wanted else list(STEPS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    missing = [t for t in ("restic", "psql", "pg_dumpall", "pg_isready", "runuser") if not shutil.which(t)]
    if missing:
        print(f"missing tools {missing}: run `make deps`", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-restore-", dir="/tmp")
    os.chmod(tmp, 0o755)
    source = PgCluster(os.path.join(tmp, "source"))
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        say(f"warning: load average is {load_before[0]:.2f} before starting; results will be noisy")
    targets: list[PgCluster] = []
    try:
        say(f"starting PostgreSQL in {tmp}")
        source.start()
        say(f"loading ~{args.size_mb} MB of data")
        data = prepare_data(source, args.size_mb)
        expected = checksum(source)
        say("backing up with stash-runner (not timed)")
        repo = backup(source, tmp)
        raw, fed, nbytes = dump_files(repo, tmp)
        data["dump_bytes"] = nbytes
        machine = machine_info(source)
        source.stop()  # only the target's server runs during the timed steps
        runs: dict[str, list[Sample]] = {s: [] for s in args.step_list}
        for i in range(1, args.runs + 1):
            run_dir = os.path.join(tmp, f"run-{i}")
            os.makedirs(run_dir)
            # Every other run in reverse order: a machine that gets busier or quieter over a run favours no step.
            for step in (args.step_list if i % 2 else args.step_list[::-1]):
                target = PgCluster(os.path.join(tmp, f"target-{i}-{len(targets)}"))
                targets.append(target)
                target.start()
                target.execute("ALTER SYSTEM SET autovacuum = off")
                target.execute("SELECT pg_reload_conf()")
                time.sleep(0.5)  # let the set-up connections' backends exit before the CPU window opens
                if step == STEP_PSQL:
                    sample = measure_psql(target, run_dir, fed)
                elif step == STEP_RESTIC:
                    sample = measure_restic_psql(target, run_dir, repo)
                elif step == STEP_RUNNER:
                    sample = measure_runner_restore(target, run_dir, repo, expected)
                elif step == STEP_RUNNER_DUMP:
                    sample = measure_runner_dump(run_dir, repo, target.pid)
                else:
                    sample = measure_restic_dump(run_dir, repo, target.pid)
                target.destroy()
                runs[step].append(sample)
                py = f", python {sample.python_cpu:.1f} s" if sample.python_cpu is not None else ""
                say(f"run {i}/{args.runs} {step}: {sample.wall:.2f} s wall ({nbytes / MB / sample.wall:.0f} MB/s), "
                    f"{sample.cpu:.1f} s CPU{py}, server {sample.server_cpu:.1f} s")
        med = summarize(runs, nbytes)
        checks = ratios(med, runs)
        verified = [s.verified for s in runs.get(STEP_RUNNER, [])]
        meta = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "args": {k: v for k, v in vars(args).items() if k != "step_list"}, "machine": machine, "data": data,
                "loadavg_before": load_before, "verified": all(verified) if verified else None}
        table = markdown(meta, med, checks)
        total = time.perf_counter() - started
        table += f"\nTotal benchmark time: {total:.0f} s.\n"
        print(table, end="")
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "bench_restore.md"), "w") as f:
            f.write(table)
        with open(os.path.join(OUT_DIR, "bench_restore.json"), "w") as f:
            json.dump({**meta, "total_seconds": total, "medians": med, "ratios": checks,
                       "runs": {s: [asdict(x) for x in samples] for s, samples in runs.items()}}, f, indent=2)
        say(f"wrote {os.path.relpath(OUT_DIR, REPO_ROOT)}/bench_restore.md and .json")
        return 0
    finally:
        for t in targets:
            t.destroy()
        if args.keep:
            source.stop()
            say(f"kept {tmp}")
        else:
            source.destroy()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
