#!/usr/bin/env python3
"""Benchmark forget, prune and check against restic's, on the same repository with 1,000 snapshots.

Run from the repository root:
``python3 bench/bench_maintenance.py [--snapshots 1000] [--unique 30] [--rounds 5] [--base DIR]``.
The repository is made with restic: ``--unique`` backups of distinct random data (so that prune has
packs to delete and repack), then snapshot files that share those trees, at hourly to monthly
distances over three years, up to ``--snapshots``. Two identical copies are made; restic works on one,
stash-runner on the other, step by step: forget (a daily/weekly/monthly/yearly policy), prune, check,
check --read-data. After each step the two copies must agree (same snapshots kept); both must pass
``restic check`` at the end. Wall time and peak RSS (wait4 of the process) are reported, the median of
``--rounds`` rounds on fresh copies (restic and stash-runner alternate which goes first);
results go to bench/out/bench_maintenance.{md,json}.

CLI start-up: ``python -c pass`` (the floor), ``stash-runner --help``, and ``snapshots`` of a small repository
(the one pruned above) — ours and restic's, the median of ``--startup-runs`` runs each. That repository's copy
holds one key file with cheap scrypt parameters (N=1024, r=8, p=1) instead of restic's calibrated one
(N=32768, r=8, p=5: ~0.3 CPU-s in Python's hashlib, ~0.5 in restic's Go), so that the row measures the program,
not the key; the calibrated KDF is reported on its own row. restic 0.14 sleeps 200 ms after writing a lock
(waitBeforeLockCheck), in every row that locks.

Bytecode: the image compiles every module (``compileall`` in images/runtime.Containerfile), as a wheel install
does; a clone run with PYTHONDONTWRITEBYTECODE=1 compiles stash-runner's modules from source on every start. So
stash-runner runs here with its bytecode cached in a directory of the bench's own (PYTHONPYCACHEPREFIX, written by a
warm-up; the clone is not touched), unless ``--no-bytecode``; the start-up table also shows the uncached figures.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from backends.base import FileType, Handle  # noqa: E402
from backends.local import LocalBackend  # noqa: E402
from stash_runner.restic import crypto  # noqa: E402
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
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(argv: list[str], env: dict) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MiB and CPU seconds of the command itself, result)."""
    with tempfile.NamedTemporaryFile(prefix="rss-") as rss:
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], env={**env, "BENCH_RSS_FILE": rss.name},
                           capture_output=True)
        wall = time.monotonic() - start
        with open(rss.name) as f:
            rss_kib, cpu = (f.read().split() or ["0", "0"])
    return wall, int(rss_kib) / 1024, float(cpu), r


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


def cheap_key_copy(src: str, dst: str) -> None:
    """A copy of ``src`` whose only key file wraps the same master key with cheap scrypt parameters."""
    shutil.copytree(src, dst)
    backend = LocalBackend(dst)
    master = Repository.open(backend, REPO_PASSWORD).key
    n, r, p = 1024, 8, 1
    salt = os.urandom(64)
    raw = hashlib.scrypt(REPO_PASSWORD.encode(), salt=salt, n=n, r=r, p=p, dklen=64)
    user_key = crypto.Key.from_kdf_output(raw)
    keyfile = {"created": "2024-01-01T00:00:00Z", "username": "bench", "hostname": "bench", "kdf": "scrypt",
               "N": n, "r": r, "p": p, "salt": base64.standard_b64encode(salt).decode(),
               "data": base64.standard_b64encode(user_key.encrypt(json.dumps(master.to_json()).encode())).decode()}
    for name, _ in list(backend.list(FileType.KEY)):
        backend.remove(Handle(FileType.KEY, name))
    data = json.dumps(keyfile).encode()
    backend.save(Handle(FileType.KEY, hashlib.sha256(data).hexdigest()), data)


def kdf_seconds(path: str) -> float:
    """The calibrated key's scrypt alone, as every command that opens ``path`` pays it."""
    backend = LocalBackend(path)
    name = next(n for n, _ in backend.list(FileType.KEY))
    k = json.loads(backend.load(Handle(FileType.KEY, name)))
    salt = base64.standard_b64decode(k["salt"])
    start = time.monotonic()
    hashlib.scrypt(b"x", salt=salt, n=k["N"], r=k["r"], p=k["p"], dklen=64, maxmem=128 * k["r"] * (k["N"] + k["p"] + 2)
                   + (1 << 20))
    return time.monotonic() - start


def timed(argv: list[str], env: dict, runs: int) -> float:
    """Median wall seconds of ``runs`` runs of ``argv`` (output discarded; a failure stops the bench)."""
    walls = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
        walls.append(time.monotonic() - start)
    return statistics.median(walls)


def bytecode_env(env: dict, prefix: str) -> dict:
    """``env`` with Python's bytecode cached under ``prefix``, warmed by importing what the commands import."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    modules = ["stash_runner.cli.main", "stash_runner.stash.resolve", "stash_runner.restic.lock",
               "stash_runner.restic.reader", "stash_runner.maintenance.post_backup", "stash_runner.maintenance.check",
               "stash_runner.maintenance.prune", "stash_runner.maintenance.forget", "stash_runner.maintenance.stats"]
    subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], env=env, check=True)
    return env


def snapshot_ids(path: str) -> set[str]:
    r = subprocess.run(["restic", "--no-cache", "snapshots", "--json"], env=restic_env(path), capture_output=True,
                       check=True)
    return {s["id"] for s in json.loads(r.stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--unique", type=int, default=30, help="backups of distinct data")
    ap.add_argument("--unique-mb", type=int, default=6, help="MiB of random data in each")
    ap.add_argument("--rounds", type=int, default=5, help="rounds on fresh copies; the median is reported")
    ap.add_argument("--startup-runs", type=int, default=7, help="runs of each start-up command; the median")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="run stash-runner as the environment has it (no bytecode cache for its modules)")
    ap.add_argument("--base", default="",
                    help="keep the generated repository here and reuse it when it exists (saves making it again)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-maint-", dir="/tmp")
    try:
        base = args.base or os.path.join(work, "base")
        t0 = time.monotonic()
        if args.base and os.path.exists(os.path.join(base, "config")):
            print(f"reusing the repository in {base}", flush=True)
        else:
            make_repository(base, args.snapshots, args.unique, args.unique_mb)
            print(f"made a repository with {args.snapshots} snapshots in {time.monotonic() - t0:.1f} s", flush=True)
        ours_repo, theirs_repo = os.path.join(work, "ours"), os.path.join(work, "restic")
        objects = objects_yaml(os.path.join(work, "o.yaml"), repo_dir=ours_repo)
        ours = [sys.executable, "-m", "stash_runner", "-q"]
        cold_env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        ours_env = dict(cold_env) if args.no_bytecode else bytecode_env(cold_env, os.path.join(work, "pycache"))
        where = ["--objects", objects, "-n", "demo", "--repository", "repo"]
        restic = ["restic", "--no-cache", "-q"]
        steps = [
            ("forget " + " ".join(POLICY), restic + ["forget", *POLICY], ours + ["forget", *where, *POLICY]),
            ("prune", restic + ["prune"], ours + ["prune", *where]),
            ("check", restic + ["check"], ours + ["check", *where]),
            ("check --read-data", restic + ["check", "--read-data"], ours + ["check", *where, "--read-data"]),
        ]
        measured: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _, _ in steps}
        for round_no in range(args.rounds):
            for p in (ours_repo, theirs_repo):
                shutil.rmtree(p, ignore_errors=True)
                shutil.copytree(base, p)
            for name, theirs_cmd, ours_cmd in steps:
                # Alternate who goes first: the second may find the files in the page cache warmer.
                order = [("restic", theirs_cmd, restic_env(theirs_repo)), ("stash-runner", ours_cmd, ours_env)]
                if round_no % 2:
                    order.reverse()
                got = {}
                for who, cmd, env in order:
                    got[who] = run(cmd, env)
                    if got[who][3].returncode != 0:
                        r = got[who][3]
                        print(f"{who} {name} failed ({r.returncode}):\n{r.stderr.decode()[-2000:]}", file=sys.stderr)
                        return 1
                (tw, trss, tcpu, _), (ow, orss, ocpu, _) = got["restic"], got["stash-runner"]
                measured[name].append((tw, trss, ow, orss, tcpu, ocpu))
                print(f"round {round_no + 1} {name}: restic {tw:.2f} s / {trss:.0f} MiB, stash-runner {ow:.2f} s / "
                      f"{orss:.0f} MiB", flush=True)
                if name.startswith("forget"):
                    kept_ours, kept_theirs = snapshot_ids(ours_repo), snapshot_ids(theirs_repo)
                    if kept_ours != kept_theirs:
                        print("forget kept different snapshots than restic", file=sys.stderr)
                        return 1
                    kept = len(kept_ours)
        rows = []
        for name, _, _ in steps:
            m = measured[name]
            rows.append({"step": name, "restic_s": statistics.median(x[0] for x in m),
                         "restic_rss_mib": statistics.median(x[1] for x in m),
                         "ours_s": statistics.median(x[2] for x in m),
                         "ours_rss_mib": statistics.median(x[3] for x in m),
                         "restic_cpu_s": statistics.median(x[4] for x in m),
                         "ours_cpu_s": statistics.median(x[5] for x in m),
                         "restic_runs": [x[0] for x in m], "ours_runs": [x[2] for x in m],
                         # each round's pair ran back to back: the ratio within a round is what load changes least
                         "ratio_median": statistics.median(x[0] / x[2] for x in m),
                         "rounds_won": sum(x[2] <= x[0] for x in m)})
        sizes = {who: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(p, "data"))
                          for f in fs) for who, p in (("restic", theirs_repo), ("ours", ours_repo))}
        # Start-up: on a copy of the pruned repository with a cheap key (see the module docstring).
        small = os.path.join(work, "small")
        cheap_key_copy(ours_repo, small)
        small_objects = objects_yaml(os.path.join(work, "small.yaml"), repo_dir=small)
        n = args.startup_runs
        startup = {
            "python -c pass": (None, timed([sys.executable, "-c", "pass"], ours_env, n)),
            "--help": (timed(["restic", "--help"], os.environ, n), timed(ours + ["--help"], ours_env, n)),
            "snapshots": (timed(restic + ["snapshots"], restic_env(small), n),
                          timed(ours + ["snapshots", "--objects", small_objects, "-n", "demo", "--repository", "repo"],
                                ours_env, n)),
        }
        if not args.no_bytecode:
            startup["--help, no bytecode cache"] = (None, timed(ours + ["--help"], cold_env, n))
            startup["snapshots, no bytecode cache"] = (
                None, timed(ours + ["snapshots", "--objects", small_objects, "-n", "demo", "--repository", "repo"],
                            cold_env, n))
        kdf = kdf_seconds(base)
        lines = [
            f"Repository: {args.snapshots} snapshots ({args.unique} of distinct {args.unique_mb} MiB random data), "
            f"restic 0.14 format 2; forget keeps {kept}. data/ after prune: restic {sizes['restic'] / MIB:.1f} MiB, "
            f"stash-runner {sizes['ours'] / MIB:.1f} MiB.",
            "",
            "| step | restic s | restic CPU s | restic peak RSS MiB | stash-runner s | stash-runner CPU s "
            "| stash-runner peak RSS MiB | restic / ours | restic / ours, median of rounds "
            "| rounds stash-runner was faster |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            cells = [f"`{r['step']}`", f"{r['restic_s']:.2f}", f"{r['restic_cpu_s']:.2f}", f"{r['restic_rss_mib']:.0f}",
                     f"{r['ours_s']:.2f}", f"{r['ours_cpu_s']:.2f}", f"{r['ours_rss_mib']:.0f}",
                     f"{r['restic_s'] / r['ours_s']:.2f}", f"{r['ratio_median']:.2f}",
                     f"{r['rounds_won']} of {args.rounds}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Median of {args.rounds} rounds; stash-runner "
            + ("without a bytecode cache" if args.no_bytecode else "with its bytecode cached, as in the image")
            + f". CLI start-up (median of {n} runs; `snapshots` of the pruned repository "
            "with a cheap key, see the bench's docstring):",
            "",
            "| command | restic s | stash-runner s |",
            "|---|---:|---:|",
        ]
        for name, (theirs, ours_s) in startup.items():
            lines.append(f"| `{name}` | {'' if theirs is None else f'{theirs:.3f}'} | {ours_s:.3f} |")
        lines += ["", f"The calibrated key's scrypt alone (Python's hashlib, one thread): {kdf:.2f} s; every "
                      "maintenance command above pays it once (restic its own, as long)."]
        for p in (ours_repo, theirs_repo):
            subprocess.run(["restic", "--no-cache", "check", "-q"], env=restic_env(p), check=True)
        lines += ["", "`restic check` passes on both repositories afterwards."]
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "bench_maintenance.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(OUT_DIR, "bench_maintenance.json"), "w") as f:
            json.dump({"args": vars(args), "rows": rows, "kept": kept, "data_bytes": sizes,
                       "startup": {k: {"restic_s": v[0], "ours_s": v[1]} for k, v in startup.items()},
                       "kdf_s": kdf}, f, indent=2)
        print("\n".join(lines))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
