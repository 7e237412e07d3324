#!/usr/bin/env python3
"""Benchmark forget, prune and check against restic's, on the same repository with 1,000 snapshots.

Run from the repository root: ``python3 bench/bench_maintenance.py [--snapshots 1000] [--unique 30]``.
The repository is made with restic: ``--unique`` backups of distinct random data (so that prune has
packs to delete and repack), then snapshot files that share those trees, at hourly to monthly
distances over three years, up to ``--snapshots``. Two identical copies are made; restic works on one,
stash-runner on the other, step by step: forget (a daily/weekly/monthly/yearly policy), prune, check,
check --read-data. After each step the two copies must agree (same snapshots kept); both must pass
``restic check`` at the end. Wall time and peak RSS (wait4 of the process) are reported;
results go to bench/out/bench_maintenance.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from backends.base import FileType  # noqa: E402
from backends.local import LocalBackend  # noqa: E402
from stash_runner.restic.repository import Repository  # noqa: E402
from stash_runner.restic.timefmt import format_time  # noqa: E402
from tests.helpers import REPO_PASSWORD, objects_yaml  # noqa: E402

POLICY = ["--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12", "--keep-yearly", "3"]
MIB = 1 << 20


def restic_env(repo: str) -> dict:
    return {**os.environ, "RESTIC_PASSWORD": REPO_PASSWORD, "RESTIC_REPOSITORY": repo}


# A small launcher between this (large) process and the measured one: a forked child inherits its
# parent's peak RSS in ru_maxrss, so the measured command must be forked from something small.
_LAUNCHER = """
import os, sys
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(os.environ["BENCH_RSS_FILE"], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(argv: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MiB of the command itself, result)."""
    with tempfile.NamedTemporaryFile(prefix="rss-") as rss:
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], env={**env, "BENCH_RSS_FILE": rss.name},
                           capture_output=True)
        wall = time.monotonic() - start
        with open(rss.name) as f:
            peak = int(f.read() or 0) / 1024
    return wall, peak, r


def make_repository(path: str, snapshots: int, unique: int, unique_mb: int) -> None:
    env = restic_env(path)
    subprocess.run(["restic", "init", "-q"], env=env, check=True)
    rng = random.Random(1)
    start = datetime.datetime(2023, 1, 1, 3, 0, 0)
    for i in range(unique):
        data = rng.randbytes(unique_mb * MIB)
        when = start + datetime.timedelta(days=36 * i)
        subprocess.run(["restic", "backup", "-q", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "host-0",
                        "--time", when.strftime("%Y-%m-%d %H:%M:%S")], input=data, env=env, check=True)
    # The rest: snapshot files that share the existing trees, at many different times.
    repo = Repository.open(LocalBackend(path), REPO_PASSWORD)
    existing = [repo.load_unpacked(FileType.SNAPSHOT, n) for n, _ in repo.list_files(FileType.SNAPSHOT)]
    t = start
    for i in range(snapshots - unique):
        t += datetime.timedelta(hours=rng.choice([1, 3, 7, 25, 50, 170]))
        obj = dict(existing[i % len(existing)])
        obj["time"] = format_time(t.replace(tzinfo=datetime.UTC))
        repo.save_unpacked(FileType.SNAPSHOT, obj)


def snapshot_ids(path: str) -> set[str]:
    r = subprocess.run(["restic", "--no-cache", "snapshots", "--json"], env=restic_env(path), capture_output=True,
                       check=True)
    return {s["id"] for s in json.loads(r.stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--unique", type=int, default=30, help="backups of distinct data")
    ap.add_argument("--unique-mb", type=int, default=6, help="MiB of random data in each")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-maint-", dir="/tmp")
    try:
        base = os.path.join(work, "base")
        t0 = time.monotonic()
        make_repository(base, args.snapshots, args.unique, args.unique_mb)
        print(f"made a repository with {args.snapshots} snapshots in {time.monotonic() - t0:.1f} s", flush=True)
        ours_repo, theirs_repo = os.path.join(work, "ours"), os.path.join(work, "restic")
        shutil.copytree(base, ours_repo)
        shutil.copytree(base, theirs_repo)
        objects = objects_yaml(os.path.join(work, "o.yaml"), repo_dir=ours_repo)
        ours = [sys.executable, "-m", "stash_runner", "-q"]
        where = ["--objects", objects, "-n", "demo", "--repository", "repo"]
        restic = ["restic", "--no-cache", "-q"]
        steps = [
            ("forget " + " ".join(POLICY), restic + ["forget", *POLICY], ours + ["forget", *where, *POLICY]),
            ("prune", restic + ["prune"], ours + ["prune", *where]),
            ("check", restic + ["check"], ours + ["check", *where]),
            ("check --read-data", restic + ["check", "--read-data"], ours + ["check", *where, "--read-data"]),
        ]
        rows = []
        for name, theirs_cmd, ours_cmd in steps:
            tw, trss, tr = run(theirs_cmd, restic_env(theirs_repo))
            ow, orss, o = run(ours_cmd, {**os.environ, "PYTHONPATH": REPO_ROOT})
            for who, r in (("restic", tr), ("stash-runner", o)):
                if r.returncode != 0:
                    print(f"{who} {name} failed ({r.returncode}):\n{r.stderr.decode()[-2000:]}", file=sys.stderr)
                    return 1
            rows.append({"step": name, "restic_s": tw, "restic_rss_mib": trss, "ours_s": ow, "ours_rss_mib": orss})
            print(f"{name}: restic {tw:.2f} s / {trss:.0f} MiB, stash-runner {ow:.2f} s / {orss:.0f} MiB", flush=True)
            if name.startswith("forget"):
                kept_ours, kept_theirs = snapshot_ids(ours_repo), snapshot_ids(theirs_repo)
                if kept_ours != kept_theirs:
                    print("forget kept different snapshots than restic", file=sys.stderr)
                    return 1
                kept = len(kept_ours)
        sizes = {who: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(p, "data"))
                          for f in fs) for who, p in (("restic", theirs_repo), ("ours", ours_repo))}
        lines = [
            f"Repository: {args.snapshots} snapshots ({args.unique} of distinct {args.unique_mb} MiB random data), "
            f"restic 0.14 format 2; forget keeps {kept}. data/ after prune: restic {sizes['restic'] / MIB:.1f} MiB, "
            f"stash-runner {sizes['ours'] / MIB:.1f} MiB.",
            "",
            "| step | restic s | restic peak RSS MiB | stash-runner s | stash-runner peak RSS MiB | restic / ours |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(f"| `{r['step']}` | {r['restic_s']:.2f} | {r['restic_rss_mib']:.0f} | {r['ours_s']:.2f} | "
                         f"{r['ours_rss_mib']:.0f} | {r['restic_s'] / r['ours_s']:.2f} |")
        for p in (ours_repo, theirs_repo):
            subprocess.run(["restic", "--no-cache", "check", "-q"], env=restic_env(p), check=True)
        lines += ["", "`restic check` passes on both repositories afterwards."]
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "bench_maintenance.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(OUT_DIR, "bench_maintenance.json"), "w") as f:
            json.dump({"args": vars(args), "rows": rows, "kept": kept, "data_bytes": sizes}, f, indent=2)
        print("\n".join(lines))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
