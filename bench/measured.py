"""How the benchmarks measure a Python process of their own: a wrapper run as ``python3 -c WRAPPER REPORT MODE
...`` that runs the CLI (``runner ARGS``: exactly ``python3 -m stash_runner ARGS``) or a script (``script PATH
ARGS``) and writes, at exit, its CPU, the CPU of each of its threads by name, and its peak RSS to REPORT (JSON).

The peak is VmHWM, not ru_maxrss: Linux carries the RSS a child had between fork and exec (the benchmark's own)
into its ru_maxrss, so that every child would show at least the benchmark script's size. A thread is counted
when its run() returns (time.thread_time() in that thread); one still running at exit (a daemon) from
/proc/self/task/TID/stat.
"""

from __future__ import annotations

WRAPPER = """\
import atexit, json, os, resource, runpy, sys, threading, time
_report, _mode = sys.argv[1], sys.argv[2]
_lock = threading.Lock()
_ended = []
_run = threading.Thread.run
def _counted_run(self):
    try:
        _run(self)
    finally:
        self._bench_cpu = time.thread_time()
        with _lock:
            _ended.append((self.name, self._bench_cpu))
threading.Thread.run = _counted_run
def _write():
    r = resource.getrusage(resource.RUSAGE_SELF)
    threads = list(_ended) + [("MainThread", time.thread_time())]
    tick = os.sysconf("SC_CLK_TCK")
    for t in threading.enumerate():
        tid = t.native_id
        if t is threading.main_thread() or tid is None or hasattr(t, "_bench_cpu"):
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            threads.append((t.name, (int(fields[11]) + int(fields[12])) / tick))
        except OSError:
            pass
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    with open(_report, "w") as f:
        json.dump({"maxrss_kib": r.ru_maxrss, "vmhwm_kib": hwm, "utime": r.ru_utime, "stime": r.ru_stime,
                   "threads": threads}, f)
atexit.register(_write)
if _mode == "runner":
    sys.argv = ["stash_runner", *sys.argv[3:]]
    runpy.run_module("stash_runner", run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peak_rss_kib(report: dict) -> int:
    """A report's peak RSS (VmHWM; ru_maxrss where /proc gave none)."""
    return report.get("vmhwm_kib") or report["maxrss_kib"]
