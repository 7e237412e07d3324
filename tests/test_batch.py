"""A BackupBatch and a RestoreBatch run by the runner alone (``backup --backupbatch``, ``restore --restorebatch``),
against real PostgreSQL clusters, a local repository judged by restic, and real HTTP hook targets on loopback:
the order of members and hooks (from the hook requests' and snapshots' timestamps), overlap of parallel members, a
failing global pre hook, a failing member, retention once per batch, retryConfig and RetryLeft, spec.timeOut, the
summary table and each member's output.json."""

from __future__ import annotations

import json
import os
import threading
import time

import psycopg
import pytest

from stash_runner.errors import BadInput
from stash_runner.restic.timefmt import parse_time
from stash_runner.stash.batch import RetryConfig
from stash_runner.stash.sessions import RestoreBatch

from .helpers import objects_yaml, restic, runner
from .pgcluster import PgCluster, free_port
from .test_session_hooks import HookTarget, http_get, http_post

NS = "demo"
APPBINDING = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding"}


class ScriptedTarget(HookTarget):
    """A HookTarget whose answers can be scripted per path: ``gate`` holds each request to those paths until
    ``gate_count`` of them have arrived (members running at once get through; one after the other would time
    out), ``fail_first`` answers a path's first n requests 503, ``delay`` answers a path only after n seconds."""

    GATE_TIMEOUT = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.gate: set[str] = set()
        self.gate_count = 2
        self.gate_timed_out = False
        self.fail_first: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self._arrived = 0
        self._cond = threading.Condition()
        self._closed = threading.Event()
        base = self.server.RequestHandlerClass
        target = self

        class Scripted(base):  # type: ignore[misc, valid-type]
            def _answer(self) -> None:
                target._before(self.path.partition("?")[0])
                base._answer(self)

            do_GET = do_POST = _answer

        self.server.RequestHandlerClass = Scripted

    def _before(self, path: str) -> None:
        if path in self.gate:
            with self._cond:
                self._arrived += 1
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: self._arrived >= self.gate_count, self.GATE_TIMEOUT):
                    self.gate_timed_out = True
        if path in self.fail_first:
            if self.fail_first[path] > 0:
                self.fail_first[path] -= 1
                self.status[path] = 503
            else:
                self.status.pop(path, None)
        if path in self.delay:
            self._closed.wait(self.delay[path])

    def at(self, path: str) -> float:
        """When the (first) request to ``path`` was answered."""
        return next(r["at"] for r in self.requests if r["path"] == path)

    def bodies(self, path: str) -> list[str]:
        return [r["body"] for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self._closed.set()
        super().close()


@pytest.fixture
def hooks_target():
    t = ScriptedTarget()
    yield t
    t.close()


@pytest.fixture
def second_pg(fresh_pg) -> PgCluster:
    """Another source cluster, with other data than source_pg's."""
    c = fresh_pg()
    c.execute("CREATE DATABASE inventory")
    c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int); "
              "INSERT INTO items SELECT g, 'item ' || g, g % 17 FROM generate_series(1, 3000) g", dbname="inventory")
    return c


def member(appbinding: str, alias: str, hooks: dict | None = None, params: dict[str, str] | None = None,
           rules: list[dict] | None = None, task: str = "postgres-backup-16") -> dict:
    target: dict = {"alias": alias, "ref": {**APPBINDING, "name": appbinding}}
    if rules is not None:
        target["rules"] = rules
    m: dict = {"target": target,
               "task": {"name": task, "params": [{"name": k, "value": v} for k, v in (params or {}).items()]}}
    if hooks:
        m["hooks"] = hooks
    return m


def batch_object(kind: str, members: list[dict], *, name: str = "batch", order: str = "", hooks: dict | None = None,
                 **spec: object) -> dict:
    body: dict = {"repository": {"name": "repo"}, "members": members}
    if kind == "BackupBatch":
        body["schedule"] = "*/5 * * * *"
    if order:
        body["executionOrder"] = order
    if hooks:
        body["hooks"] = hooks
    body.update(spec)
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": kind, "metadata": {"name": name, "namespace": NS},
            "spec": body}


def objects(tmp_path, repo_dir: str, dbs: dict[str, PgCluster | str], *extra: dict) -> list[str]:
    """--objects arguments: an AppBinding and its Secret per database (a cluster, or a URL where nothing
    listens), the Repository with its Secret, and ``extra``."""
    args: list[str] = []
    for name, db in dbs.items():
        kw = {"url": db, "pg_password": "x"} if isinstance(db, str) else {"cluster": db}
        args += ["--objects", objects_yaml(str(tmp_path / f"ab-{name}.yaml"), appbinding=name, namespace=NS, **kw)]
    tag = f"{len(os.listdir(tmp_path))}"
    args += ["--objects", objects_yaml(str(tmp_path / f"repo-{tag}.yaml"), repo_dir=repo_dir, namespace=NS,
                                       extra=list(extra))]
    return args


def dead_url() -> str:
    return f"postgres://127.0.0.1:{free_port()}/postgres"


def snapshots(repo_dir: str) -> list[dict]:
    if not os.path.exists(os.path.join(repo_dir, "config")):
        return []
    return json.loads(restic(repo_dir, "snapshots", "--json").stdout)


def output(out_dir, name: str) -> dict:
    with open(os.path.join(out_dir, name, "output.json")) as f:
        return json.load(f)


def table_rows(stdout: bytes) -> dict[str, list[str]]:
    """The summary table's rows by member (split on runs of two or more spaces)."""
    import re

    lines = stdout.decode().strip().splitlines()
    assert lines[0].split() == ["MEMBER", "HOST", "PHASE", "SNAPSHOT", "SIZE", "DURATION", "ERROR"]
    return {row[0]: row for row in (re.split(r"\s{2,}", line) for line in lines[1:-1])}


def last_line(r) -> str:
    return r.stderr.decode().strip().splitlines()[-1]


def test_sequential_members_run_in_order_with_their_hooks(source_pg, second_pg, repo_dir, tmp_path, hooks_target):
    port = hooks_target.port
    local = {name: {"preBackup": http_get(port, f"/{name}/pre"),
                    "postBackup": http_post(port, f"/{name}/post", "{{ .Target.Name }} {{ .Status.Phase }}")}
             for name in ("a", "b")}
    b = batch_object("BackupBatch", [member("pg-a", "a", local["a"]), member("pg-b", "b", local["b"])],
                     order="Sequential",
                     hooks={"preBackup": http_get(port, "/global-pre"),
                            "postBackup": http_post(port, "/global-post",
                                                    "{{ .Invoker.Kind }} {{ .Invoker.Name }} {{ .Status.Phase }}")})
    out = tmp_path / "out"
    r = runner("backup", "--backupbatch", "batch", "-n", NS, "--output-dir", str(out),
               *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, b))
    assert r.returncode == 0, r.stderr.decode()
    assert hooks_target.paths() == ["GET /global-pre", "GET /a/pre", "POST /a/post", "GET /b/pre", "POST /b/post",
                                    "POST /global-post"]
    assert hooks_target.bodies("/a/post") == ["pg-a Succeeded"]
    assert hooks_target.bodies("/global-post") == ["BackupBatch batch Succeeded"]
    # member b started after member a had ended: its first hook after a's post hook, each dump between its hooks
    snaps = {s["hostname"]: s for s in snapshots(repo_dir)}
    assert set(snaps) == {"a", "b"}
    taken = {h: parse_time(s["time"]).timestamp() for h, s in snaps.items()}
    assert hooks_target.at("/a/pre") <= taken["a"] <= hooks_target.at("/a/post")
    assert hooks_target.at("/a/post") <= hooks_target.at("/b/pre") <= taken["b"] <= hooks_target.at("/b/post")
    restic(repo_dir, "check", "--read-data")
    # one output.json per member, in Stash's shape; the last member's carries the post-backup actions' figures
    for name, host in (("pg-a", "a"), ("pg-b", "b")):
        doc = output(out, name)
        assert doc["targetStatus"]["ref"] == {**APPBINDING, "name": name}
        [stat] = doc["targetStatus"]["stats"]
        assert (stat["hostname"], stat["phase"]) == (host, "Succeeded")
        assert stat["snapshots"][0]["name"] == snaps[host]["id"]
    assert "repository" not in output(out, "pg-a")
    assert output(out, "pg-b")["repository"]["integrity"] is True
    assert output(out, "pg-b")["repository"]["snapshotCount"] == 2
    rows = table_rows(r.stdout)
    assert rows["pg-a"][:4] == ["pg-a", "a", "Succeeded", snaps["a"]["short_id"]]
    assert rows["pg-b"][:4] == ["pg-b", "b", "Succeeded", snaps["b"]["short_id"]]
    assert rows["pg-a"][4].endswith(("B", "KiB", "MiB")) and rows["pg-a"][5].endswith("s")
    assert r.stdout.decode().strip().splitlines()[-1].startswith("BackupBatch demo/batch: Succeeded in ")


def test_parallel_members_run_at_once(source_pg, second_pg, repo_dir, tmp_path, hooks_target):
    """The default order: both members' pre hooks are held until both have arrived, which only members running
    at once can do; both pre hooks come before either post hook."""
    port = hooks_target.port
    hooks_target.gate = {"/a/pre", "/b/pre"}
    members = [member(f"pg-{n}", n, {"preBackup": http_get(port, f"/{n}/pre"),
                                     "postBackup": http_post(port, f"/{n}/post", "{{ .Status.Phase }}")})
               for n in ("a", "b")]
    r = runner("backup", "--backupbatch", "batch", "-n", NS,
               *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg},
                        batch_object("BackupBatch", members)))
    assert r.returncode == 0, r.stderr.decode()
    assert not hooks_target.gate_timed_out
    assert max(hooks_target.at("/a/pre"), hooks_target.at("/b/pre")) <= \
        min(hooks_target.at("/a/post"), hooks_target.at("/b/post"))
    assert sorted(s["hostname"] for s in snapshots(repo_dir)) == ["a", "b"]
    restic(repo_dir, "check", "--read-data")


def test_a_failed_global_pre_hook_runs_no_member(source_pg, second_pg, repo_dir, tmp_path, hooks_target):
    port = hooks_target.port
    hooks_target.status["/global-pre"] = 503
    b = batch_object("BackupBatch", [member("pg-a", "a", {"preBackup": http_get(port, "/a/pre")}),
                                     member("pg-b", "b")],
                     hooks={"preBackup": http_get(port, "/global-pre"),
                            "postBackup": http_post(port, "/global-post", "x")})
    out = tmp_path / "out"
    r = runner("backup", "--backupbatch", "batch", "-n", NS, "--output-dir", str(out),
               *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, b))
    assert r.returncode == 11, r.stderr.decode()
    assert "global preBackup hook failed" in last_line(r) and "503" in last_line(r)
    assert hooks_target.paths() == ["GET /global-pre"]  # no member, and no global post hook (Stash)
    assert not os.path.exists(os.path.join(repo_dir, "config"))  # nothing written
    for name in ("pg-a", "pg-b"):
        [stat] = output(out, name)["targetStatus"]["stats"]
        assert stat["phase"] == "Failed" and stat["error"].startswith("not run: global preBackup hook failed")
    rows = table_rows(r.stdout)
    assert rows["pg-a"][2] == rows["pg-b"][2] == "Failed"


def test_a_failed_member_does_not_stop_the_next_in_sequence(second_pg, repo_dir, tmp_path, hooks_target):
    port = hooks_target.port
    a = member("pg-a", "a", {"postBackup": http_post(port, "/a/post", "{{ .Status.Phase }}: {{ .Status.Error }}",
                                                      "OnFailure")}, params={"waitTimeout": "1"})
    b = member("pg-b", "b", {"preBackup": http_get(port, "/b/pre")})
    obj = batch_object("BackupBatch", [a, b], order="Sequential",
                       hooks={"postBackup": http_post(port, "/global-post", "{{ .Status.Phase }}")},
                       retentionPolicy={"name": "keep", "keepLast": 1, "prune": True})
    out = tmp_path / "out"
    r = runner("backup", "--backupbatch", "batch", "-n", NS, "--output-dir", str(out),
               *objects(tmp_path, repo_dir, {"pg-a": dead_url(), "pg-b": second_pg}, obj))
    assert r.returncode == 5, r.stderr.decode()  # the first failure: member a's database is unreachable
    assert "1 of 2 members failed (pg-a)" in last_line(r)
    assert hooks_target.paths() == ["POST /a/post", "GET /b/pre", "POST /global-post"]
    assert hooks_target.bodies("/a/post")[0].startswith("Failed: ")
    assert hooks_target.bodies("/global-post") == ["Failed"]
    assert hooks_target.at("/a/post") <= hooks_target.at("/b/pre")
    assert [s["hostname"] for s in snapshots(repo_dir)] == ["b"]
    restic(repo_dir, "check", "--read-data")
    assert output(out, "pg-a")["targetStatus"]["stats"][0]["phase"] == "Failed"
    assert output(out, "pg-b")["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    assert "repository" not in output(out, "pg-b")  # no post-backup actions after a failed member
    assert "retention (" not in r.stderr.decode()
    rows = table_rows(r.stdout)
    assert rows["pg-a"][2] == "Failed" and rows["pg-a"][3] == "-" and "accepting connections" in rows["pg-a"][-1]
    assert rows["pg-b"][2] == "Succeeded"


def test_retention_is_applied_once_after_every_member(source_pg, second_pg, repo_dir, tmp_path):
    obj = batch_object("BackupBatch", [member("pg-a", "a"), member("pg-b", "b")],
                       retentionPolicy={"name": "keep-1", "keepLast": 1, "prune": True})
    args = ["backup", "--backupbatch", "batch", "-n", NS,
            *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, obj)]
    runner(*args, check=True)
    out = tmp_path / "out"
    r = runner(*args, "--output-dir", str(out), check=True)
    assert r.stderr.decode().count("retention (") == 1
    snaps = snapshots(repo_dir)
    assert sorted(s["hostname"] for s in snaps) == ["a", "b"]  # keepLast 1 per host: the second run's
    restic(repo_dir, "check", "--read-data")
    repository = output(out, "pg-b")["repository"]
    assert (repository["snapshotsRemovedOnLastCleanup"], repository["snapshotCount"], repository["integrity"]) == \
        (2, 2, True)
    assert "repository" not in output(out, "pg-a")
    assert "retention removed 2 snapshot(s), integrity verified" in r.stdout.decode().splitlines()[-1]


def test_retry_runs_a_failed_batch_again_and_counts_retry_left_down(source_pg, repo_dir, tmp_path, hooks_target):
    port = hooks_target.port
    hooks_target.fail_first["/global-pre"] = 1
    obj = batch_object("BackupBatch", [member("pg-a", "a")], retryConfig={"maxRetry": 2, "delay": "1s"},
                       hooks={"preBackup": http_get(port, "/global-pre"),
                              "postBackup": http_post(port, "/global-post", "{{ .Status.Phase }} {{ .RetryLeft }}")})
    r = runner("backup", "--backupbatch", "batch", "-n", NS,
               *objects(tmp_path, repo_dir, {"pg-a": source_pg}, obj))
    assert r.returncode == 0, r.stderr.decode()
    assert hooks_target.paths() == ["GET /global-pre", "GET /global-pre", "POST /global-post"]
    first, second = (q["at"] for q in hooks_target.requests[:2])
    assert second - first >= 1.0  # the delay
    assert hooks_target.bodies("/global-post") == ["Succeeded 1"]
    assert "attempt 1 of 3 failed" in r.stderr.decode()
    assert len(snapshots(repo_dir)) == 1
    assert "(attempt 2 of 3)" in r.stdout.decode().splitlines()[-1]


def test_on_final_retry_failure_runs_only_on_the_last_failed_attempt(repo_dir, tmp_path, hooks_target):
    port = hooks_target.port
    a = member("pg-a", "a", {"postBackup": http_post(port, "/a/post", "{{ .RetryLeft }}", "OnFinalRetryFailure")},
               params={"waitTimeout": "1"})
    obj = batch_object("BackupBatch", [a], retryConfig={"maxRetry": 1, "delay": "0s"},
                       hooks={"postBackup": http_post(port, "/global-post", "{{ .Status.Phase }} {{ .RetryLeft }}",
                                                      "OnFinalRetryFailure")})
    r = runner("backup", "--backupbatch", "batch", "-n", NS, *objects(tmp_path, repo_dir, {"pg-a": dead_url()}, obj))
    assert r.returncode == 5, r.stderr.decode()
    assert hooks_target.paths() == ["POST /a/post", "POST /global-post"]
    assert hooks_target.bodies("/a/post") == ["0"] and hooks_target.bodies("/global-post") == ["Failed 0"]
    assert "attempt 1 of 2 failed" in r.stderr.decode()


def test_time_out_stops_the_batch_and_the_global_post_hook_says_why(source_pg, second_pg, repo_dir, tmp_path,
                                                                    hooks_target):
    port = hooks_target.port
    hooks_target.delay["/a/pre"] = 60
    obj = batch_object("BackupBatch", [member("pg-a", "a", {"preBackup": http_get(port, "/a/pre")}),
                                       member("pg-b", "b", {"preBackup": http_get(port, "/b/pre")})],
                       order="Sequential", timeOut="2s",
                       hooks={"postBackup": http_post(port, "/global-post", "{{ .Status.Phase }}: {{ .Status.Error }}",
                                                      "OnFailure")})
    started = time.monotonic()
    r = runner("backup", "--backupbatch", "batch", "-n", NS,
               *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, obj))
    assert r.returncode == 124, r.stderr.decode()
    assert time.monotonic() - started < 30
    assert "timed out after 2s" in last_line(r)
    [body] = hooks_target.bodies("/global-post")
    assert body.startswith("Failed: ") and "timed out after 2s" in body
    assert "/b/pre" not in [q["path"] for q in hooks_target.requests]
    assert snapshots(repo_dir) == []
    rows = table_rows(r.stdout)
    assert rows["pg-b"][2] == "Failed" and rows["pg-b"][-1].startswith("not run: ")


def test_backup_batch_then_restore_batch_into_fresh_clusters(source_pg, second_pg, fresh_pg, repo_dir, tmp_path,
                                                             hooks_target):
    port = hooks_target.port
    backup_obj = batch_object("BackupBatch", [member("pg-a", "a"), member("pg-b", "b")])
    runner("backup", "--backupbatch", "batch", "-n", NS,
           *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, backup_obj), check=True)
    snaps = {s["hostname"]: s for s in snapshots(repo_dir)}
    new_a, new_b = fresh_pg(), fresh_pg()
    restore_obj = batch_object(
        "RestoreBatch",
        [member("new-a", "a", task="postgres-restore-16"),  # no rules: the latest snapshot of host a
         member("new-b", "b", task="postgres-restore-16",
                rules=[{"sourceHost": "b", "snapshots": [f"repo-{snaps['b']['short_id']}"]}],
                hooks={"preRestore": http_get(port, "/b/pre"),
                       "postRestore": http_post(port, "/b/post", "{{ .Target.Name }} {{ .Status.Phase }}")})],
        name="restore", order="Sequential",
        hooks={"preRestore": http_get(port, "/global-pre"),
               "postRestore": http_post(port, "/global-post", "{{ .Invoker.Kind }} {{ .Status.Phase }}")})
    out = tmp_path / "out"
    r = runner("restore", "--restorebatch", "restore", "-n", NS, "--output-dir", str(out),
               *objects(tmp_path, repo_dir, {"new-a": new_a, "new-b": new_b}, restore_obj))
    assert r.returncode == 0, r.stderr.decode()
    assert new_a.contents() == source_pg.contents()
    assert new_b.contents() == second_pg.contents()
    assert hooks_target.paths() == ["GET /global-pre", "GET /b/pre", "POST /b/post", "POST /global-post"]
    assert hooks_target.bodies("/b/post") == ["new-b Succeeded"]
    assert hooks_target.bodies("/global-post") == ["RestoreBatch Succeeded"]
    rows = table_rows(r.stdout)
    assert rows["new-a"][:4] == ["new-a", "a", "Succeeded", snaps["a"]["short_id"]]
    assert rows["new-b"][:4] == ["new-b", "b", "Succeeded", snaps["b"]["short_id"]]
    for name, host in (("new-a", "a"), ("new-b", "b")):
        [stat] = output(out, name)["targetStatus"]["stats"]
        assert (stat["hostname"], stat["phase"]) == (host, "Succeeded")
    assert r.stdout.decode().strip().splitlines()[-1].startswith("RestoreBatch demo/restore: Succeeded")


def test_a_restore_member_without_a_rule_for_its_host_fails_alone(source_pg, fresh_pg, repo_dir, tmp_path):
    runner("backup", "--backupbatch", "batch", "-n", NS,
           *objects(tmp_path, repo_dir, {"pg-a": source_pg},
                    batch_object("BackupBatch", [member("pg-a", "a")])), check=True)
    target = fresh_pg()
    obj = batch_object("RestoreBatch",
                       [member("new-x", "x", task="postgres-restore-16", rules=[{"targetHosts": ["y"]}]),
                        member("new-a", "a", task="postgres-restore-16")], name="restore")
    r = runner("restore", "--restorebatch", "restore", "-n", NS,
               *objects(tmp_path, repo_dir, {"new-x": target, "new-a": target}, obj))
    assert r.returncode == 2, r.stderr.decode()
    assert "spec.members[0].target.rules: no rule for host 'x'" in r.stdout.decode()
    assert target.contents() == source_pg.contents()  # the other member restored


def test_batch_spec_errors_are_one_line_naming_the_field(tmp_path, repo_dir):
    obj = batch_object("BackupBatch", [member("pg-a", "a")], order="Sideways")
    r = runner("backup", "--backupbatch", "batch", "-n", NS, *objects(tmp_path, repo_dir, {"pg-a": dead_url()}, obj))
    assert r.returncode == 2
    assert last_line(r) == ("stash-runner: error: BackupBatch demo/batch: spec.executionOrder: 'Sideways' is not one "
                            "of Parallel, Sequential")
    r = runner("backup", "--backupbatch", "batch", "--appbinding", "pg-a", "-n", NS,
               *objects(tmp_path, repo_dir, {"pg-a": dead_url()}, obj))
    assert r.returncode == 2 and "a batch names its members itself" in last_line(r)
    assert not os.path.exists(os.path.join(repo_dir, "config"))


def test_retry_config_and_restore_batch_parsing():
    assert RetryConfig.from_spec({}, "x") is None
    assert RetryConfig.from_spec({"retryConfig": {"delay": "1m30s"}}, "x") == RetryConfig(1, 90.0)
    assert RetryConfig.from_spec({"retryConfig": {"maxRetry": 0}}, "x") == RetryConfig(0, 0.0)
    with pytest.raises(BadInput, match=r"x: spec.retryConfig.maxRetry must be a non-negative number"):
        RetryConfig.from_spec({"retryConfig": {"maxRetry": -1}}, "x")
    with pytest.raises(BadInput, match=r"x: spec.retryConfig.delay: invalid duration"):
        RetryConfig.from_spec({"retryConfig": {"delay": "soon"}}, "x")
    rb = RestoreBatch.from_object(batch_object("RestoreBatch", [
        member("new-a", "a", rules=[{"targetHosts": ["a"], "sourceHost": "old", "snapshots": ["repo-1234"]}],
               params={"args": "--single-transaction"}, hooks={"preRestore": {"tcpSocket": {"port": 5432}}})],
        name="r", timeOut="10m"), NS)
    [m] = rb.members
    assert (rb.ref, rb.execution_order, rb.timeout, m.alias) == ("RestoreBatch demo/r", "Parallel", 600.0, "a")
    assert m.session.rule_for("a").source_host == "old" and m.session.params == {"args": "--single-transaction"}
    assert m.session.hooks.pre is not None and m.session.hooks.post is None
    with pytest.raises(BadInput, match=r"RestoreBatch demo/r: spec.members\[0\].target.rules\[0\] must be a mapping"):
        RestoreBatch.from_object(batch_object("RestoreBatch", [member("x", "x", rules=["bad"])], name="r"), NS)


def test_time_out_stops_parallel_members_mid_dump(source_pg, second_pg, repo_dir, tmp_path, hooks_target):
    """Member b's dump waits on a table lock another session holds; spec.timeOut stops it from the main thread
    (its pg_dumpall is ended, its archiver removes what it wrote, its repository lock goes), member a's snapshot
    stays, and the global post hook hears why."""
    port = hooks_target.port
    obj = batch_object("BackupBatch", [member("pg-a", "a"), member("pg-b", "b")], timeOut="4s",
                       hooks={"postBackup": http_post(port, "/global-post", "{{ .Status.Error }}", "OnFailure")})
    blocker = psycopg.connect(host=second_pg.host, port=second_pg.port, user="postgres", password=second_pg.password,
                              dbname="inventory")
    try:
        blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        out = tmp_path / "out"
        r = runner("backup", "--backupbatch", "batch", "-n", NS, "--output-dir", str(out),
                   *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, obj))
        took = time.monotonic() - started
    finally:
        blocker.close()
    assert r.returncode == 124, r.stderr.decode()
    assert took < 4 + ScriptedTarget.GATE_TIMEOUT
    assert [s["hostname"] for s in snapshots(repo_dir)] == ["a"]
    assert restic(repo_dir, "list", "locks").stdout.strip() == b"", r.stderr.decode()
    restic(repo_dir, "check", "--read-data")
    [stat] = output(out, "pg-b")["targetStatus"]["stats"]
    assert stat["phase"] == "Failed" and stat["error"] == "stopped: BackupBatch demo/batch: spec.timeOut: timed out " \
                                                          "after 4s"
    assert hooks_target.bodies("/global-post") == ["BackupBatch demo/batch: spec.timeOut: timed out after 4s"]


def test_exec_hooks_need_the_cluster(source_pg, second_pg, repo_dir, tmp_path):
    obj = batch_object("BackupBatch", [member("pg-a", "a", {"preBackup": {"exec": {"command": ["true"]}}}),
                                       member("pg-b", "b")])
    r = runner("backup", "--backupbatch", "batch", "-n", NS,
               *objects(tmp_path, repo_dir, {"pg-a": source_pg, "pg-b": second_pg}, obj))
    assert r.returncode == 11, r.stderr.decode()
    assert "preBackup hook failed" in last_line(r) and "need the cluster" in last_line(r)
    assert [s["hostname"] for s in snapshots(repo_dir)] == ["b"]


def test_a_batch_from_the_cluster_writes_nothing_there(kube, source_pg, second_pg, repo_dir, tmp_path, hooks_target):
    """With --kubeconfig the objects come from the API server; no session exists for an operator-less run, so
    nothing is written there (hooks are run, and recorded only in the log)."""
    port = hooks_target.port
    obj = batch_object("BackupBatch", [member("pg-a", "a", {"preBackup": http_get(port, "/a/pre")}),
                                       member("pg-b", "b")],
                       hooks={"postBackup": http_post(port, "/global-post", "{{ .Namespace }} {{ .Status.Phase }}")})
    obj["metadata"]["namespace"] = kube.name
    for name, pg in (("pg-a", source_pg), ("pg-b", second_pg)):
        kube.load_fixtures(objects_yaml(str(tmp_path / f"{name}.yaml"), cluster=pg, appbinding=name,
                                        namespace=kube.name))
    kube.load_fixtures(objects_yaml(str(tmp_path / "repo.yaml"), repo_dir=repo_dir, namespace=kube.name,
                                    extra=[obj]))
    r = runner("backup", "--backupbatch", "batch", "-n", kube.name,
               "--kubeconfig", kube.kubeconfig(str(tmp_path / "kubeconfig")))
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(s["hostname"] for s in snapshots(repo_dir)) == ["a", "b"]
    assert hooks_target.paths() == ["GET /a/pre", "POST /global-post"]
    assert hooks_target.bodies("/global-post") == [f"{kube.name} Succeeded"]
    asked = kube.requests()
    assert {q.method for q in asked} == {"GET"}
    assert "backupbatches" in {q.resource for q in asked}
