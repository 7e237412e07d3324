"""Long waits say what they wait for, and again every ~15 s with the time left: a repository lock another run holds,
a storage request that stalls and is retried (a real fault proxy in front of moto), a hook whose server is slow.
These tests really wait (about 20-30 s each): the messages are timed as they come."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from backends.local import LocalBackend
from stash_runner.hooks import probe
from stash_runner.hooks import run as hook_run
from stash_runner.hooks.spec import PRE_BACKUP, Handler, Hook, HTTPAction, Summary
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository

from .faultproxy import FaultProxy, Faults
from .helpers import REPO_PASSWORD, objects_yaml, runner
from .test_faults import PACK_WRITES, Remote

NS = ["-n", "demo"]


class Lines:
    """A child's stderr, line by line, each with the time (monotonic) it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self.lines.append((time.monotonic() - self.started, raw.decode(errors="replace").rstrip()))

    def matching(self, pattern: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in list(self.lines) if re.search(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> list[tuple[float, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(pattern)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} line(s) matching {pattern!r} not seen in {timeout} s:\n" + self.text())

    def text(self) -> str:
        return "\n".join(f"{t:6.1f} {line}" for t, line in self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def _left(line: str) -> float:
    m = re.search(r"\((\d+) s left\)", line)
    assert m, line
    return float(m.group(1))


def test_restore_says_whose_lock_it_waits_for_every_15_s(source_pg, fresh_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", check=True)
    target = fresh_pg()
    target_objects = objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir)

    held = RepositoryLock(Repository.open(LocalBackend(repo_dir), REPO_PASSWORD), exclusive=True)  # "a prune"
    held.acquire()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "stash_runner", "restore", "--objects", target_objects, *NS,
                                 "--appbinding", "pg", "--repository", "repo", "--lock-wait", "20"],
                                stderr=subprocess.PIPE)
        err = Lines(proc)
        waits = err.wait_for("waiting for the exclusive lock", count=2, timeout=40)
    finally:
        held.release()  # after the second message: the restore goes on
    assert proc.wait(timeout=120) == 0, err.text()
    err.join()
    assert target.contents() == source_pg.contents()

    (t1, first), (t2, second) = waits[:2]
    assert f"of local:{os.path.abspath(repo_dir)} held by PID {os.getpid()} on {socket.gethostname()}" in first, first
    assert "since " in first
    assert t1 < 10, err.text()  # said as the wait starts (after start-up and the database check)
    assert 19 <= _left(first) <= 20, first
    assert 14 <= t2 - t1 <= 17, err.text()  # and again ~15 s later, with the time left
    assert 3 <= _left(second) <= 6, second
    assert len(err.matching("waiting for the exclusive lock")) == 2, err.text()


def test_a_stalled_storage_request_is_said_while_it_lasts_then_retried(moto_server, source_pg, tmp_path):
    with FaultProxy(moto_server.url).start() as proxy:
        remote = Remote("s3", moto_server, proxy, os.urandom(4).hex())
        objects = remote.objects(tmp_path / "o.yaml", source_pg)
        proxy.faults = Faults(stall_rate=1.0, stall_seconds=120, **PACK_WRITES)  # pack uploads get no answer
        proc = subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--objects", objects, *NS,
                                 "--appbinding", "pg", "--repository", "repo", "--backend-timeout", "28",
                                 "--backend-retries", "3"], stderr=subprocess.PIPE, env=remote.env)
        err = Lines(proc)
        try:
            still = err.wait_for(r"still waiting for save data/", count=2, timeout=60)
            # The storage is back while the stalled request still waits: its retry succeeds.
            proxy.faults = Faults()
            retried = err.wait_for(r"retrying save data/", timeout=30)
            assert proc.wait(timeout=120) == 0, err.text()
        finally:
            if proc.poll() is None:
                proc.kill()
        err.join()
    t1, first = still[0]
    location = f"s3:{proxy.url}/{remote.bucket}/{remote.prefix}"
    assert f"{location}: still waiting for save data/" in first, first
    assert re.search(r"after 1[01] s \(attempt 1 of 3; tried again after 28 s without an answer\)$", first), first
    # The same request again ~15 s later (several packs may stall at once: follow the one named first).
    request = re.search(r"still waiting for (save \S+)", first)
    assert request
    again = err.matching(f"still waiting for {re.escape(request.group(1))} after")
    assert len(again) >= 2 and re.search(r"after 2[56] s \(attempt 1 of 3", again[1][1]), err.text()
    assert 14 <= again[1][0] - again[0][0] <= 16, err.text()
    t_retry, retry = retried[0]
    # the cause without the location and request repeated, the attempt coming and when
    assert re.search(r"retrying save data/\S+ after ReadTimeoutError: .*: attempt 2 of 3, next in \d", retry), retry
    assert 26 <= t_retry - (t1 - 10) <= 31, err.text()  # --backend-timeout after the request began


def test_storage_errors_name_the_request_the_attempt_and_the_wait(moto_server, source_pg, tmp_path):
    with FaultProxy(moto_server.url).start() as proxy:
        remote = Remote("s3", moto_server, proxy, os.urandom(4).hex())
        proxy.faults = Faults(error_rate=1.0, **PACK_WRITES)  # every pack upload answered 503 SlowDown
        r = remote.run("backup", remote.objects(tmp_path / "o.yaml", source_pg), "--backend-retries", "3")
    err = r.stderr.decode()
    assert r.returncode == 4, err
    retries = [line for line in err.splitlines() if "retrying save data/" in line]
    assert retries, err
    assert re.search(r"retrying save data/\S+ after SlowDown \(Please reduce your request rate.*\): "
                     r"attempt 2 of 3, next in \d+\.\d s$", retries[0]), retries[0]
    assert any("attempt 3 of 3" in line for line in retries), err
    last = err.strip().splitlines()[-1]
    assert re.search(r"s3:\S+: save data/\S+: failed after 3 attempts: SlowDown \(", last), last


class _Slow(BaseHTTPRequestHandler):
    delay = 21.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_a_slow_hook_is_said_while_it_runs(caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    hook = Hook(PRE_BACKUP, Handler(http_get=HTTPAction(port=port, path="/slow")))

    def handler(h: Hook, summary: Summary) -> str:
        return probe.run_handler(h.handler, summary, pod_exec=None, default_host="127.0.0.1", timeout=300)

    caplog.set_level(logging.INFO, logger="stash_runner")
    started = time.time()
    try:
        outcome = hook_run.run(hook, Summary(name="s1", namespace="demo"), handler)
    finally:
        server.shutdown()
        server.server_close()
    assert outcome.ok and outcome.ran, outcome
    waits = [(r.created - started, r.getMessage()) for r in caplog.records if "waiting for" in r.getMessage()]
    assert [m for _, m in waits] == [
        f"preBackup hook: waiting for GET http://127.0.0.1:{port}/slow to answer (295 s left)",
        f"preBackup hook: waiting for GET http://127.0.0.1:{port}/slow to answer (280 s left)",
    ], waits
    assert 4.5 <= waits[0][0] <= 6.5 and 19.5 <= waits[1][0] <= 21, waits
