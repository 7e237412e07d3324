#!/usr/bin/env python3
"""Benchmark scale (issue 17): the in-memory index at 10 million blobs, and a 10 GB ``backup --stdin``.

Run from the repository root: ``python3 bench/bench_scale.py [--index-blobs N] [--stream-gb G] [--no-index |
--no-stream]``. Prints a Markdown table with the targets (PASS/MISS); writes it, and every raw number as JSON,
to bench/out/bench_scale.{md,json}.

Row 1, the index (stash_runner/restic/index.py), in a fresh child process of its own so that its RSS is the
index's and nothing else's: N synthetic blobs (random 32-byte ids, 16 blobs a pack as 16 MiB packs of ~1 MiB
chunks give) added through ``Index.add_pack`` with PackedBlob objects, as the backup and index loading add them.
Bytes per blob, two ways: the index's own buffers as allocated (sys.getsizeof of its bytearrays and arrays,
over-allocation included: what tracemalloc reports for them, which a tracemalloc run on ``--tracemalloc-blobs``
blobs cross-checks, tracemalloc being too slow to trace 10 million adds), and the process's RSS growth over the
build (the id source, allocated before, not counted). Lookups: 1 million random probes each of ids present
(hits) and of fresh random ids (misses), every one a single ``has()`` / ``lookup()`` call from Python, timed with
time.perf_counter around the loop (and, as a second figure less disturbed by other load on the machine, per
CPU-second of the thread, time.thread_time). The verdict is on the wall-clock rate; the >= 1 million target is
set for has() (the dedup question every chunk asks); lookup() also builds a PackedBlob and a bytes pack id per
call, and is reported against the same target. Targets: <= 64 bytes a blob (restic's order) and >= 1 million lookups/s.

Row 2, the stream: ``stash-runner backup --stdin --stdin-filename big.bin`` into a fresh local repository
under /tmp, fed G GB (decimal) through a pipe from a child process. The data never repeats at chunk scale
(every 4 KiB carries a unique counter, so nothing deduplicates) and is about half random bytes, half
made-up words (so zstd has work to do); it is cut from a 64 MiB pool at shifting offsets, so the generator
writes well over 400 MB/s and is not the bottleneck (its own rate into /dev/null is measured and reported).
stash-runner's peak RSS is the python process's own VmHWM, from the bench/measured.py wrapper (as in
bench_backup.py); wall, MB/s and CPU seconds (its user+system) are reported. Target: peak RSS <= 200 MiB.
Afterwards ``restic check`` (no --read-data: too slow at 10 GB) must pass and ``restic snapshots --json`` /
``restic ls`` must show the file at exactly the bytes sent. The repository is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "bench", "out")
sys.path.insert(0, REPO_ROOT)

from bench.measured import WRAPPER, peak_rss_kib  # noqa: E402
from tests.helpers import REPO_PASSWORD, objects_yaml  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
TARGET_BYTES_PER_BLOB = 64
TARGET_LOOKUPS_PER_S = 1_000_000
TARGET_STREAM_RSS_MIB = 200
BLOBS_PER_PACK = 16
PROBES = 1_000_000

# The data generator, run as ``python3 -c GENERATOR BYTES``: writes exactly BYTES to stdout.
GENERATOR = """\
import os, random, struct, sys
total = int(sys.argv[1])
rnd = random.Random(17)
words = [("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))).encode()
         for _ in range(4096)]
seg = 4096
text = b" ".join(rnd.choice(words) for _ in range(200_000))  # ~1 MiB of text, cut into the pool at random places
parts = []
for i in range(64 * 1024 * 1024 // seg):  # the pool: 4 KiB segments, alternately random and text
    if i % 2:
        parts.append(rnd.randbytes(seg))
    else:
        o = rnd.randrange(len(text) - seg)
        parts.append(text[o:o + seg])
pool = b"".join(parts)
del parts
block = 1 << 20
stamp = struct.Struct("<QQ")
sent, n = 0, 0
span = len(pool) - block - seg
while sent < total:
    o = (n * 1_048_573) % span  # shifting offsets: block n is no copy of block n - 64
    # a unique 16-byte stamp every 4 KiB: every content-defined chunk is new data
    data = b"".join([stamp.pack(n, j) + pool[o + j * seg + 16:o + (j + 1) * seg] for j in range(block // seg)])
    data = data[:total - sent]
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    sent += len(data)
    n += 1
"""


def say(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# -- row 1: the index, in a child process --------------------------------------------------------

def index_child(n: int, traced: int) -> dict:
    """Runs in the fresh child (``--index-child``): build, measure, probe; returns the numbers."""
    import gc
    import tracemalloc

    from stash_runner.restic.index import Index
    from stash_runner.restic.pack import DATA, PackedBlob

    rnd = random.Random(42)
    result: dict = {"blobs": n, "blobs_per_pack": BLOBS_PER_PACK}

    def build(count: int, src: bytes) -> tuple[Index, float]:
        idx, pb, per = Index(), PackedBlob, BLOBS_PER_PACK
        t0 = time.perf_counter()
        for p in range(0, count, per):
            base = p * 32
            idx.add_pack(rnd.randbytes(32), [
                pb(src[base + 32 * j:base + 32 * j + 32], DATA, 1_048_576 * j, 1_000_000 + j, 2_000_000 + j)
                for j in range(min(per, count - p))])
        return idx, time.perf_counter() - t0

    # tracemalloc cross-check on a smaller index (tracing slows every allocation ~5x)
    if traced:
        src = rnd.randbytes(32 * traced)
        tracemalloc.start()
        small, _ = build(traced, src)
        result["tracemalloc_blobs"] = traced
        result["tracemalloc_bytes_per_blob"] = tracemalloc.get_traced_memory()[0] / traced
        tracemalloc.stop()
        del small, src
        gc.collect()

    src = os.urandom(32 * n)  # the ids, allocated before the RSS baseline
    gc.collect()
    rss0 = _status_kib("VmRSS")
    idx, build_s = build(n, src)
    gc.collect()
    rss1 = _status_kib("VmRSS")
    assert len(idx) == n
    buffers = (idx._ids, idx._rec, idx._state[0], idx._pack_ids)
    own = sum(sys.getsizeof(b) for b in buffers)
    result.update(build_s=build_s, adds_per_s=n / build_s, own_bytes=own, bytes_per_blob=own / n,
                  rss_delta_bytes=(rss1 - rss0) * 1024, rss_bytes_per_blob=(rss1 - rss0) * 1024 / n,
                  table_slots=len(idx._state[0]), packs=len(idx._pack_ids) // 32)

    hits = [src[i * 32:i * 32 + 32] for i in (rnd.randrange(n) for _ in range(PROBES))]
    misses = [rnd.randbytes(32) for _ in range(PROBES)]
    rates, cpu_rates = {}, {}
    for name, fn in (("has", idx.has), ("lookup", idx.lookup)):
        for kind, probes, want in (("hit", hits, True), ("miss", misses, False)):
            t0, c0 = time.perf_counter(), time.thread_time()
            for blob_id in probes:
                fn(blob_id)
            dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
            rates[f"{name}_{kind}"] = len(probes) / dt
            cpu_rates[f"{name}_{kind}"] = len(probes) / cpu
            assert all(bool(fn(b)) is want for b in probes[:1000])
    result["lookups_per_s"] = rates
    result["lookups_per_cpu_s"] = cpu_rates  # the same loops per CPU second of the thread: less noisy when shared
    return result


def measure_index(n: int, traced: int) -> dict:
    say(f"index: {n:,} blobs in a fresh process (tracemalloc cross-check at {traced:,})")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--index-child", str(n),
                        "--tracemalloc-blobs", str(traced)], capture_output=True, text=True, cwd=REPO_ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"index child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


# -- row 2: the stream ---------------------------------------------------------------------------

def restic(repo: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD"] = REPO_PASSWORD
    return subprocess.run(["restic", "--no-cache", "-r", repo, *args], env=env, capture_output=True, text=True)


def generator_rate(nbytes: int) -> float:
    """MB/s of the generator alone, into /dev/null."""
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", GENERATOR, str(nbytes)], stdout=null, check=True)
        return nbytes / (time.perf_counter() - t0) / MB


def measure_stream(total: int, workdir: str) -> dict:
    repo = os.path.join(workdir, "repo")
    objects = objects_yaml(os.path.join(workdir, "objects.yaml"), repo_dir=repo)
    report = os.path.join(workdir, "rusage.json")
    log_path = os.path.join(workdir, "stash-runner.log")
    say(f"stream: {total / MB:,.0f} MB through backup --stdin into {repo}")
    argv = [sys.executable, "-c", WRAPPER, report, "runner", "backup", "--stdin", "--stdin-filename", "big.bin",
            "--objects", objects, "-n", "demo", "--repository", "repo"]
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        gen = subprocess.Popen([sys.executable, "-c", GENERATOR, str(total)], stdout=subprocess.PIPE)
        try:
            runner = subprocess.Popen(argv, stdin=gen.stdout, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        finally:
            gen.stdout.close()
        _, status, ru = os.wait4(runner.pid, 0)
        runner.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        gen.wait()
    if runner.returncode != 0:
        with open(log_path, errors="replace") as f:
            raise RuntimeError(f"stash-runner exited with {runner.returncode}:\n{f.read()[-3000:]}")
    with open(report) as f:
        own = json.load(f)
    stored = sum(os.path.getsize(os.path.join(d, n)) for d, _, fs in os.walk(repo) for n in fs)
    say("stream: restic check, snapshots, ls")
    check = restic(repo, "check")
    snaps = json.loads(restic(repo, "snapshots", "--json").stdout or "[]")
    size = None
    if snaps:
        for line in restic(repo, "ls", "--json", snaps[-1]["id"]).stdout.splitlines():
            node = json.loads(line)
            if node.get("path") == "/big.bin":
                size = node.get("size")
    return {"bytes": total, "wall_s": wall, "mb_per_s": total / wall / MB, "cpu_s": own["utime"] + own["stime"],
            "cpu_s_wait4": ru.ru_utime + ru.ru_stime, "peak_rss_kib": peak_rss_kib(own),
            "wait4_maxrss_kib": ru.ru_maxrss, "threads": own["threads"], "stored_bytes": stored,
            "restic_check_ok": check.returncode == 0, "restic_check_tail": (check.stdout + check.stderr)[-500:],
            "snapshots": len(snaps), "snapshot_summary": snaps[-1].get("summary") if snaps else None,
            "file_size": size, "size_ok": size == total}


# -- report --------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-blobs", type=int, default=10_000_000)
    ap.add_argument("--tracemalloc-blobs", type=int, default=500_000,
                    help="blobs of the smaller index whose allocations tracemalloc counts (0: skip)")
    ap.add_argument("--stream-gb", type=float, default=10.0, help="decimal GB through backup --stdin")
    ap.add_argument("--no-index", action="store_true")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--index-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.index_child:
        print(json.dumps(index_child(args.index_child, args.tracemalloc_blobs)))
        return 0

    results: dict = {"args": vars(args), "python": platform.python_version(), "cpus": os.cpu_count()}
    lines = ["| measure | value | target | |", "|---|---:|---:|---|"]
    ok = True
    if not args.no_index:
        ix = results["index"] = measure_index(args.index_blobs, args.tracemalloc_blobs)
        n, rates = ix["blobs"], ix["lookups_per_s"]
        lines.append(f"| index of {n:,} blobs: build (add_pack, {BLOBS_PER_PACK} blobs a pack) | "
                     f"{ix['build_s']:.1f} s ({ix['adds_per_s'] / 1e6:.2f} M adds/s) | | |")
        bpb = ix["bytes_per_blob"]
        ok &= bpb <= TARGET_BYTES_PER_BLOB
        lines.append(f"| bytes per blob, the index's buffers as allocated | {bpb:.1f} | ≤ {TARGET_BYTES_PER_BLOB} | "
                     f"{verdict(bpb <= TARGET_BYTES_PER_BLOB)} |")
        rss = ix["rss_bytes_per_blob"]
        lines.append(f"| bytes per blob, process RSS growth over the build | {rss:.1f} | ≤ {TARGET_BYTES_PER_BLOB} | "
                     f"{verdict(rss <= TARGET_BYTES_PER_BLOB)} |")
        if "tracemalloc_bytes_per_blob" in ix:
            lines.append(f"| bytes per blob, tracemalloc, index of {ix['tracemalloc_blobs']:,} | "
                         f"{ix['tracemalloc_bytes_per_blob']:.1f} | | |")
        for key, label in (("has_hit", "has(), hits"), ("has_miss", "has(), misses"),
                           ("lookup_hit", "lookup(), hits"), ("lookup_miss", "lookup(), misses")):
            rate = rates[key]
            if key.startswith("has"):
                ok &= rate >= TARGET_LOOKUPS_PER_S
            lines.append(f"| {label}: single calls/s ({PROBES:,} random probes; per CPU-second) | {rate / 1e6:.2f} M "
                         f"({ix['lookups_per_cpu_s'][key] / 1e6:.2f} M) | "
                         f"≥ {TARGET_LOOKUPS_PER_S / 1e6:.0f} M | {verdict(rate >= TARGET_LOOKUPS_PER_S)} |")
    if not args.no_stream:
        total = int(args.stream_gb * 1e9)
        workdir = tempfile.mkdtemp(prefix="bench-scale-", dir="/tmp")
        try:
            gen_bytes = min(total, 2 * 10**9)
            say(f"generator alone: {gen_bytes / MB:,.0f} MB into /dev/null")
            gen = generator_rate(gen_bytes)
            st = results["stream"] = measure_stream(total, workdir)
            st["generator_mb_per_s"] = gen
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        peak = st["peak_rss_kib"] / 1024
        ok &= peak <= TARGET_STREAM_RSS_MIB and st["restic_check_ok"] and st["size_ok"]
        lines += [
            f"| `backup --stdin` of {total / 1e9:g} GB: wall | {st['wall_s']:.1f} s ({st['mb_per_s']:.0f} MB/s; "
            f"generator alone {gen:.0f} MB/s) | | |",
            f"| … CPU of stash-runner (user+system) | {st['cpu_s']:.1f} s | | |",
            f"| … peak RSS of the stash-runner python process | {peak:.0f} MiB | ≤ {TARGET_STREAM_RSS_MIB} MiB | "
            f"{verdict(peak <= TARGET_STREAM_RSS_MIB)} |",
            f"| … repository size | {st['stored_bytes'] / MIB:,.0f} MiB | | |",
            f"| … `restic check`; file size in the snapshot = bytes sent | "
            f"{'passes' if st['restic_check_ok'] else 'FAILS'}; {st['file_size']} | {total} | "
            f"{verdict(st['restic_check_ok'] and st['size_ok'])} |",
        ]
    lines += ["", f"Python {results['python']}, {results['cpus']} CPUs; see bench/bench_scale.py for the method."]
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "bench_scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(OUT_DIR, "bench_scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
