"""Sessions end to end: the CLI reads a BackupSession/RestoreSession from an API server over real HTTP,
backs up or restores a real PostgreSQL, writes status, Events and metrics (real Pushgateway), and restic
judges the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import yaml

from stash_runner.stash import metrics as m
from stash_runner.stash.kube import Cluster
from stash_runner.stash.output import HostResult
from stash_runner.stash.reporting import BackupReporter, Pusher
from stash_runner.stash.sessions import BackupSession, ObjectRef

from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .kubeapi import KubeAPIServer
from .pgcluster import free_port
from .pushgateway import groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STASH = ("stash.appscode.com", "v1beta1")
NS = "demo"
JOB = "backupconfiguration-demo-pg-backup"


@pytest.fixture
def kube():
    with KubeAPIServer() as server:
        yield server


def invoker(*, retention: dict | None = None, timeout: str = "", params: list | None = None,
            name: str = "pg-backup") -> dict:
    spec: dict = {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                  "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                     "name": "pg"}},
                  "task": {"name": "postgres-backup-16", "params": params or []}}
    if retention:
        spec["retentionPolicy"] = {"name": "keep", **retention}
    if timeout:
        spec["timeOut"] = timeout
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def session(name: str = "s1", status: dict | None = None, invoker_name: str = "pg-backup") -> dict:
    obj = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"stash.appscode.com/invoker-name": invoker_name}},
           "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration",
                                "name": invoker_name}}}
    if status:
        obj["status"] = status
    return obj


def seed(server: KubeAPIServer, tmp_path, *extra: dict, pg=None, repo_dir: str = "", url: str | None = None,
         **kw) -> str:
    """The AppBinding, Secrets and Repository (as the offline tests write them) plus ``extra``, into the server;
    returns a kubeconfig for it."""
    path = objects_yaml(str(tmp_path / "objects.yaml"), cluster=pg, repo_dir=repo_dir, namespace=NS, url=url,
                        extra=list(extra), **kw)
    server.load_fixtures(path)
    return server.kubeconfig(str(tmp_path / "kubeconfig"))


def bs(server: KubeAPIServer, name: str = "s1") -> dict:
    return server.get(*STASH, "backupsessions", NS, name)


def events(server: KubeAPIServer) -> list[dict]:
    return server.list_objects("", "v1", "events", NS)


def reasons(server: KubeAPIServer) -> list[str]:
    return sorted(e["reason"] for e in events(server))


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def family(gw, job: str, name: str, **grouping: str) -> dict[frozenset, float]:
    want = {"job": job, **grouping}
    for g in groups(gw):
        if g["labels"] == want and name in g:
            # the gateway's API adds an empty "instance" label to every series
            return {frozenset((k, v) for k, v in s["labels"].items() if (k, v) != ("instance", "")): float(s["value"])
                    for s in g[name]["metrics"]}
    raise AssertionError(f"{name} not in group {want}")


def value(gw, job: str, name: str, **grouping: str) -> float:
    series = family(gw, job, name, **grouping)
    assert len(series) == 1, series
    return next(iter(series.values()))


def run_backup(kubeconfig: str, *extra: str, session_name: str = "s1", cmd: str = "backup",
               env: dict | None = None, verbose: bool = False) -> subprocess.CompletedProcess:
    flags = ["-v"] if verbose else []
    return runner(*flags, cmd, "--backupsession", session_name, "--namespace", NS, "--kubeconfig", kubeconfig,
                  *extra, env=env)


def test_backup_session_reads_the_cluster_and_reports_like_stash(kube, source_pg, repo_dir, tmp_path, gateway):
    kc = seed(kube, tmp_path, invoker(retention={"keepLast": 2, "prune": True}), session("s1"), session("s2"),
              session("s3"), pg=source_pg, repo_dir=repo_dir)
    logs = b""
    for name in ("s1", "s2", "s3"):
        r = run_backup(kc, "--metrics-pushgateway-url", gateway.url, "--output-dir", str(tmp_path / name),
                       session_name=name, verbose=True)
        assert r.returncode == 0, r.stderr.decode()
        logs += r.stderr

    # restic judges the repository; retention from the invoker kept 2 of 3 and pruned
    restic(repo_dir, "check", "--read-data")
    snaps = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert len(snaps) == 2 and {s["hostname"] for s in snaps} == {"host-0"}
    assert normalize_dump(restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout) == \
        normalize_dump(source_pg.pg_dumpall())

    st = bs(kube, "s3")["status"]
    assert st["phase"] == "Succeeded" and st["sessionDuration"].endswith("s")
    assert conditions(st) == {"BackendRepositoryInitialized": "True", "RetentionPolicyApplied": "True",
                              "RepositoryIntegrityVerified": "True", "RepositoryMetricsPushed": "True"}
    [target] = st["targets"]
    assert target["ref"] == {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"}
    assert target["totalHosts"] == 1 and target["phase"] == "Succeeded"
    assert target["postBackupActions"] == ["ApplyRetentionPolicy", "VerifyRepositoryIntegrity",
                                           "SendRepositoryMetrics"]
    [h] = target["stats"]
    assert h["hostname"] == "host-0" and h["phase"] == "Succeeded" and "error" not in h
    assert h["snapshots"][0]["name"] == snaps[-1]["id"] and h["snapshots"][0]["path"] == "/dumpfile.sql"
    assert set(h["snapshots"][0]) == {"name", "path", "totalSize", "uploaded", "processingTime", "fileStats"}
    first = bs(kube, "s1")["status"]
    assert next(c for c in first["conditions"] if c["type"] == "BackendRepositoryInitialized")["reason"] == \
        "BackendRepositoryInitialized"
    assert next(c for c in st["conditions"] if c["type"] == "BackendRepositoryInitialized")["reason"] == \
        "BackendRepositoryFound"

    repo = kube.get("stash.appscode.com", "v1alpha1", "repositories", NS, "repo")["status"]
    assert repo["integrity"] is True and repo["snapshotCount"] == 2 and repo["snapshotsRemovedOnLastCleanup"] == 1
    assert repo["totalSize"].endswith(("B", "KiB", "MiB")) and repo["lastBackupTime"] >= repo["firstBackupTime"]

    # status went to the status subresource, with the resourceVersion read (a PUT without it is refused)
    puts = [q for q in kube.requests if q.method == "PUT"]
    assert puts and all(q.path.endswith("/status") for q in puts)
    assert all(q.body["metadata"]["resourceVersion"] for q in puts)

    # Events on the session, naming it by uid
    ev = [e for e in events(kube) if e["involvedObject"]["name"] == "s3"]
    assert sorted(e["reason"] for e in ev) == ["BackupSessionSucceeded", "HostBackupSucceeded"]
    assert all(e["involvedObject"]["uid"] == bs(kube, "s3")["metadata"]["uid"] and e["type"] == "Normal" for e in ev)

    # Stash's metrics under Stash's job name
    assert value(gateway, JOB, "stash_appscode_com_backupsession_success") == 1
    assert value(gateway, JOB, "stash_appscode_com_backupsession_host_backup_success", hostname="host-0") == 1
    [(labels, _)] = family(gateway, JOB, "stash_appscode_com_backupsession_host_data_size_bytes",
                           hostname="host-0").items()
    assert dict(labels) == {"job": JOB, "hostname": "host-0", "invoker_kind": "BackupConfiguration",
                            "invoker_name": "pg-backup", "namespace": NS, "driver": "Restic", "repository": "repo",
                            "kind": "postgres", "group": "kubedb.com", "name": "pg"}
    assert value(gateway, JOB, "stash_appscode_com_repository_snapshot_count") == 2
    assert value(gateway, JOB, "stash_appscode_com_repository_snapshot_cleaned") == 1
    assert value(gateway, JOB, "stash_appscode_com_repository_integrity") == 1

    # secrets appear nowhere: not in the (verbose) log, the status, the Events or the metrics
    everything = logs + json.dumps([bs(kube, n) for n in ("s1", "s2", "s3")] + events(kube)).encode() + \
        json.dumps(groups(gateway)).encode()
    for secret in (source_pg.password, REPO_PASSWORD):
        assert secret.encode() not in everything

    # output.json says the status is written, so an update-status step after it does nothing more
    out = json.loads((tmp_path / "s3" / "output.json").read_text())
    assert out["statusReported"] is True and out["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    n_events, n_puts = len(events(kube)), len(puts)
    r = runner("update-status", "--backupsession", "s3", "--namespace", NS, "--kubeconfig", kc,
               "--output-dir", str(tmp_path / "s3"))
    assert r.returncode == 0, r.stderr.decode()
    assert len(events(kube)) == n_events and len([q for q in kube.requests if q.method == "PUT"]) == n_puts


def envsubst(text: str, env: dict[str, str]) -> str:
    """The operator's envsubst: ${VAR}, and ${VAR:=default} for unset or empty."""
    return re.sub(r"\$\{(\w+)(?::=([^}]*))?\}", lambda mt: env.get(mt.group(1)) or mt.group(2) or "", text)


def manifests() -> dict[tuple[str, str], dict]:
    with open(os.path.join(ROOT, "deploy", "stash-functions.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(os.path.join(ROOT, "deploy", "rbac.yaml")) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def run_task(task: dict, functions: dict, env: dict[str, str], secret_dir: str) -> None:
    """Each step of a Task as the operator runs it: the Function's args with the step's params and the
    operator's variables substituted, the storage Secret mounted where the Function says."""
    for step in task["spec"]["steps"]:
        fn = functions[("Function", step["name"])]
        params = {p["name"]: p["value"] for p in step.get("params") or []}
        args = [envsubst(a, {**env, **params}) for a in fn["spec"]["args"]]
        mount = next((m["mountPath"] for m in fn["spec"].get("volumeMounts") or []), None)
        if mount:
            args = [a.replace(mount, secret_dir) for a in args]
        r = runner(*args)
        assert r.returncode == 0, f"{step['name']}: {r.stderr.decode()}"


def rbac_token(server: KubeAPIServer, objs: dict) -> str:
    """A service-account token allowed exactly what deploy/rbac.yaml's Role allows."""
    role = objs[("Role", "stash-runner")]
    allow = [(verb, res) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]]
    server.add_token("runner-sa", "system:serviceaccount:demo:stash-runner", allow=allow)
    return "runner-sa"


def test_stash_tasks_from_deploy_run_with_the_deploy_rbac(kube, source_pg, fresh_pg, repo_dir, tmp_path,
                                                          gateway):
    """deploy/'s Functions and Tasks, args substituted as the operator does, with a token holding exactly
    deploy/rbac.yaml's rules: a backup session (backup-pg, then update-status), then a restore session."""
    objs = manifests()
    target = fresh_pg()
    seed(kube, tmp_path, invoker(retention={"keepLast": 3}), session("s1"), pg=source_pg, repo_dir=repo_dir)
    # the restore target: another AppBinding, to a fresh cluster
    restore_objs = objects_yaml(str(tmp_path / "restore-target.yaml"), cluster=target, namespace=NS,
                                appbinding="pg-restored")
    kube.load_fixtures(restore_objs)
    kc = kube.kubeconfig(str(tmp_path / "sa.kubeconfig"), token=rbac_token(kube, objs))
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "RESTIC_PASSWORD").write_text("repo-Secret-Pass-7")
    env = {"REPOSITORY_PROVIDER": "local", "REPOSITORY_BUCKET": repo_dir, "REPOSITORY_NAME": "repo",
           "HOSTNAME": "host-0", "NAMESPACE": NS, "TARGET_NAME": "pg", "BACKUP_SESSION": "s1",
           "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
    functions = {k: v for k, v in objs.items() if k[0] == "Function"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", kc)  # the runner finds the cluster as in a Job it would in-cluster
        run_task(objs[("Task", "stash-runner-postgres-backup")], functions, env, str(secret_dir))
        st = bs(kube)["status"]
        assert st["phase"] == "Succeeded" and st["targets"][0]["stats"][0]["phase"] == "Succeeded"
        assert reasons(kube).count("HostBackupSucceeded") == 1  # update-status added nothing
        restic(repo_dir, "check", "--read-data")
        snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]

        rs = restore_session("r1", [f"repo-{snap['short_id']}"], "host-0")
        rs["spec"]["target"]["ref"]["name"] = "pg-restored"
        kube.seed(rs)
        run_task(objs[("Task", "stash-runner-postgres-restore")], functions,
                 {**env, "BACKUP_SESSION": "", "RESTORE_SESSION": "r1", "TARGET_NAME": "pg-restored"},
                 str(secret_dir))
    assert target.contents() == source_pg.contents()
    assert kube.get(*STASH, "restoresessions", NS, "r1")["status"]["phase"] == "Succeeded"
    assert not [q for q in kube.requests if q.status in (401, 403)]


def test_task_params_from_the_invoker_reach_the_dump_tool(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(params=[{"name": "args", "value": "--roles-only"}]), session("s1"),
              pg=source_pg, repo_dir=repo_dir)
    r = run_backup(kc)
    assert r.returncode == 0, r.stderr.decode()
    dump = restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout
    assert b"CREATE ROLE" in dump and b"CREATE TABLE" not in dump and b"CREATE TABLE" in source_pg.pg_dumpall()


def test_update_status_reports_a_stash_images_output(kube, source_pg, repo_dir, tmp_path, gateway):
    """Our update-status after Stash's own backup image: output.json without our marker is reported, and the
    post-backup actions run on the invoker's Repository."""
    kc = seed(kube, tmp_path, invoker(retention={"keepLast": 5}), session("s1"), pg=source_pg, repo_dir=repo_dir)
    objects = str(tmp_path / "objects.yaml")
    runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", check=True)
    snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "output.json").write_text(json.dumps({"targetStatus": {
        "ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"},
        "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "2.5s",
                   "snapshots": [{"name": snap["short_id"], "path": "/dumpfile.sql", "totalSize": "3.408 MiB",
                                  "uploaded": "1.000 KiB", "processingTime": "0:02",
                                  "fileStats": {"totalFiles": 1, "newFiles": 1, "modifiedFiles": 0,
                                                "unmodifiedFiles": 0}}]}]}}))
    r = runner("update-status", "--namespace", NS, "--backupsession", "s1", "--repository", "repo",
               "--output-dir", str(out), "--metrics-enabled=true", "--metrics-pushgateway-url", gateway.url,
               "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and conditions(st)["RepositoryIntegrityVerified"] == "True"
    assert st["targets"][0]["stats"][0]["snapshots"][0]["totalSize"] == "3.408 MiB"
    assert kube.get("stash.appscode.com", "v1alpha1", "repositories", NS, "repo")["status"]["snapshotCount"] == 1
    sizes = family(gateway, JOB, "stash_appscode_com_backupsession_host_data_size_bytes", hostname="host-0")
    assert list(sizes.values()) == [round(3.408 * 1024 * 1024)]


def test_a_failing_database_fails_host_and_session_with_reason_event_and_metrics(kube, repo_dir, tmp_path,
                                                                                 gateway):
    url = f"postgres://127.0.0.1:{free_port()}/postgres"
    kc = seed(kube, tmp_path, invoker(name="down-backup"), session("s1", invoker_name="down-backup"), url=url,
              pg_password="x", repo_dir=repo_dir)
    r = run_backup(kc, "--wait-timeout", "1", "--metrics-pushgateway-url", gateway.url,
                   "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 5, r.stderr.decode()
    err = r.stderr.decode().strip().splitlines()[-1]
    assert err.startswith("stash-runner: error: ") and "127.0.0.1" in err
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["sessionDuration"]
    [target] = st["targets"]
    assert target["phase"] == "Failed"
    assert target["stats"][0]["phase"] == "Failed" and "is not accepting connections" in target["stats"][0]["error"]
    ev = {e["reason"]: e for e in events(kube)}
    assert ev["HostBackupFailed"]["type"] == "Warning" and "is not accepting connections" in \
        ev["HostBackupFailed"]["message"]
    assert ev["BackupSessionFailed"]["type"] == "Warning"
    job = "backupconfiguration-demo-down-backup"
    assert value(gateway, job, "stash_appscode_com_backupsession_success") == 0
    assert value(gateway, job, "stash_appscode_com_backupsession_host_backup_success", hostname="host-0") == 0
    assert json.loads((tmp_path / "out" / "output.json").read_text())["targetStatus"]["stats"][0]["phase"] == \
        "Failed"
    assert not os.path.exists(os.path.join(repo_dir, "config"))  # bad input leaves the repository untouched


def test_a_missing_invoker_fails_the_session(kube, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, session("s1", invoker_name="gone"), repo_dir=repo_dir)
    r = run_backup(kc)
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith("BackupConfiguration demo/gone: not found in the cluster "
                                              f"({kube.url})")
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and conditions(st) == {"SessionFailed": "False"}
    assert "BackupConfiguration demo/gone: not found" in st["conditions"][0]["message"]
    assert reasons(kube) == ["BackupSessionFailed", "HostBackupFailed"]


def test_missing_session_unreachable_api_and_no_source(kube, tmp_path):
    kc = seed(kube, tmp_path)
    r = run_backup(kc, session_name="nope")
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith(f"BackupSession demo/nope: not found in the cluster ({kube.url})")
    down = KubeAPIServer()
    down_cfg = tmp_path / "down.kubeconfig"
    with down:
        down.kubeconfig(str(down_cfg))
    started = time.monotonic()
    r = run_backup(str(down_cfg))
    assert r.returncode == 9 and time.monotonic() - started < 30
    line = r.stderr.decode().strip().splitlines()[-1]
    assert "unreachable" in line and "Kubernetes API at http://127.0.0.1:" in line
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    r = runner("backup", "--backupsession", "s1", "-n", NS, env=env)
    assert r.returncode == 2 and b"give --objects FILE|DIR, or run in a cluster" in r.stderr


def test_rbac_denial_names_the_object_and_is_reported(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    kube.add_token("sa-token", "system:serviceaccount:demo:stash-runner", allow=[
        ("get", "backupsessions"), ("update", "backupsessions/status"), ("get", "backupconfigurations"),
        ("get", "appbindings"), ("get", "repositories"), ("create", "events")])  # no secrets
    kc = kube.kubeconfig(str(tmp_path / "sa.kubeconfig"), token="sa-token")
    r = run_backup(kc)
    assert r.returncode == 10, r.stderr.decode()
    line = r.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("stash-runner: error: Secret demo/repo-secret: forbidden: ")
    assert "system:serviceaccount:demo:stash-runner" in line and "sa-token" not in r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and "forbidden" in st["targets"][0]["stats"][0]["error"]


def test_timeout_from_the_invoker_stops_the_run_and_fails_the_session(kube, repo_dir, tmp_path):
    url = f"postgres://127.0.0.1:{free_port()}/postgres"  # nobody listens: the run waits for the database
    kc = seed(kube, tmp_path, invoker(timeout="2s"), session("s1"), url=url, pg_password="x", repo_dir=repo_dir)
    started = time.monotonic()
    r = run_backup(kc, "--wait-timeout", "120")
    assert r.returncode == 124, r.stderr.decode()
    assert time.monotonic() - started < 60
    assert r.stderr.decode().strip().endswith("BackupConfiguration demo/pg-backup: spec.timeOut: timed out after 2s")
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and "timed out after 2s" in st["targets"][0]["stats"][0]["error"]


def test_a_pushgateway_that_is_down_does_not_fail_a_good_backup(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    r = run_backup(kc, env={**os.environ, "PROMETHEUS_PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.returncode == 0, r.stderr.decode()
    assert b"metrics not pushed to the Pushgateway" in r.stderr
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and conditions(st)["RepositoryMetricsPushed"] == "False"


def test_status_writes_survive_conflicts(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    kube.conflict_next(STASH[0], "backupsessions", NS, "s1", n=4)
    r = run_backup(kc)
    assert r.returncode == 0, r.stderr.decode()
    assert bs(kube)["status"]["phase"] == "Succeeded"
    assert sum(1 for q in kube.requests if q.method == "PUT" and q.status == 409) == 4


def test_eight_hosts_report_into_one_session_at_once(kube, source_pg, repo_dir, tmp_path, gateway):
    """Eight backups (one per host, as for a sharded database) run at the same moment into one repository
    and one BackupSession: all eight entries land, the post-backup actions run exactly once."""
    hosts = [f"host-{i}" for i in range(8)]
    ref = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"}
    # the operator creates the session with the target's host count
    kc = seed(kube, tmp_path, invoker(name="shards", retention={"keepLast": 8}),
              session("s1", invoker_name="shards",
                      status={"phase": "Running", "targets": [{"ref": ref, "totalHosts": 8, "phase": "Running"}]}),
              pg=source_pg, repo_dir=repo_dir)
    # the repository exists already, as after the first scheduled run
    runner("backup", "--objects", str(tmp_path / "objects.yaml"), "-n", NS, "--appbinding", "pg", "--repository",
           "repo", "--hostname", "seed", check=True)
    kube.clear_requests()
    # Each host reads the session three times: to start, to mark its target started (a no-op here, the operator
    # wrote the entry) and to record its stats. Each round of eight reads is answered together, so the eight
    # stats writes race on one resourceVersion whatever the timing.
    kube.hold_gets(STASH[0], "backupsessions", NS, "s1", parties=8, rounds=3)
    procs = [subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--backupsession", "s1", "-n", NS,
                               "--kubeconfig", kc, "--hostname", h, "--metrics-pushgateway-url", gateway.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for h in hosts]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0] * 8, results
    st = bs(kube)["status"]
    [target] = st["targets"]
    assert sorted(h["hostname"] for h in target["stats"]) == hosts
    assert all(h["phase"] == "Succeeded" for h in target["stats"]) and target["phase"] == "Succeeded"
    assert st["phase"] == "Succeeded"
    # they did collide: seven of the eight first writes lost the race and were retried
    assert sum(1 for q in kube.requests if q.method == "PUT" and q.status == 409) >= 7
    # the post-backup actions ran once: one Repository status write, one session-succeeded Event
    assert sum(1 for q in kube.requests if q.method == "PUT" and "/repositories/" in q.path) == 1
    assert reasons(kube).count("BackupSessionSucceeded") == 1 and reasons(kube).count("HostBackupSucceeded") == 8
    restic(repo_dir, "check", "--read-data")
    snaps = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert sorted(s["hostname"] for s in snaps) == sorted(hosts + ["seed"])
    # every host's series is kept on the gateway
    for h in hosts:
        assert value(gateway, "backupconfiguration-demo-shards",
                     "stash_appscode_com_backupsession_host_backup_success", hostname=h) == 1


def restore_session(name: str = "r1", snapshots: list[str] | None = None, source_host: str = "") -> dict:
    rule = {"sourceHost": source_host, "snapshots": snapshots or []}
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"repository": {"name": "repo"}, "task": {"name": "postgres-restore-16"},
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                        "name": "pg"}, "rules": [rule]}}}


@pytest.mark.parametrize("cmd", ["restore", "restore-pg"])
def test_restore_session_restores_and_reports(cmd, kube, source_pg, fresh_pg, repo_dir, tmp_path, gateway):
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS)
    runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", check=True)
    snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]
    target = fresh_pg()
    kc = seed(kube, tmp_path, restore_session("r1", [f"repo-{snap['short_id']}"], "host-0"), pg=target,
              repo_dir=repo_dir)
    r = runner(cmd, "--restoresession", "r1", "--namespace", NS, "--kubeconfig", kc, "--metrics-pushgateway-url",
               gateway.url)
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()
    st = kube.get(*STASH, "restoresessions", NS, "r1")["status"]
    assert st["phase"] == "Succeeded" and st["totalHosts"] == 1 and st["sessionDuration"]
    assert [(h["hostname"], h["phase"]) for h in st["stats"]] == [("host-0", "Succeeded")]
    assert reasons(kube) == ["HostRestoreSucceeded", "RestoreSessionSucceeded"]
    job = "restoresession-demo-r1"
    assert value(gateway, job, "stash_appscode_com_restoresession_success") == 1
    assert value(gateway, job, "stash_appscode_com_restoresession_host_restore_success", hostname="host-0") == 1


def test_update_status_reports_a_stash_images_restore_output(kube, source_pg, repo_dir, tmp_path, gateway):
    """Our update-status after Stash's own restore image: the host goes into the RestoreSession's status, and
    its metrics carry the application's labels (the AppBinding's spec.type), as the restore step's do."""
    kc = seed(kube, tmp_path, restore_session("r3"), pg=source_pg, repo_dir=repo_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "output.json").write_text(json.dumps({"targetStatus": {
        "ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"},
        "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "3.1s"}]}}))
    r = runner("update-status", "--namespace", NS, "--restoresession", "r3", "--output-dir", str(out),
               "--metrics-pushgateway-url", gateway.url, "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    st = kube.get(*STASH, "restoresessions", NS, "r3")["status"]
    assert st["phase"] == "Succeeded" and [(h["hostname"], h["phase"]) for h in st["stats"]] == \
        [("host-0", "Succeeded")]
    assert reasons(kube) == ["HostRestoreSucceeded", "RestoreSessionSucceeded"]
    [labels] = family(gateway, "restoresession-demo-r3", "stash_appscode_com_restoresession_host_restore_success",
                      hostname="host-0")
    assert ("kind", "postgres") in labels and ("group", "kubedb.com") in labels and ("name", "pg") in labels


def test_restore_session_failure_is_reported(kube, source_pg, repo_dir, tmp_path, gateway):
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS)
    runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", check=True)
    kc = seed(kube, tmp_path, restore_session("r2", ["repo-deadbeef"]), pg=source_pg, repo_dir=repo_dir)
    r = runner("restore", "--restoresession", "r2", "--namespace", NS, "--kubeconfig", kc,
               "--metrics-pushgateway-url", gateway.url)
    assert r.returncode == 7, r.stderr.decode()
    st = kube.get(*STASH, "restoresessions", NS, "r2")["status"]
    assert st["phase"] == "Failed" and "deadbeef" in st["stats"][0]["error"]
    assert {e["reason"]: e["type"] for e in events(kube)} == {"HostRestoreFailed": "Warning",
                                                              "RestoreSessionFailed": "Warning"}
    assert value(gateway, "restoresession-demo-r2", "stash_appscode_com_restoresession_success") == 0


def test_sessions_from_objects_files_offline(source_pg, repo_dir, tmp_path, gateway):
    """--objects stays the offline source: the session and invoker come from files; metrics still go out."""
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS,
                           extra=[invoker(name="offline", retention={"keepLast": 1}),
                                  session("s1", invoker_name="offline")])
    for _ in range(2):
        r = runner("backup", "--backupsession", "s1", "-n", NS, "--objects", objects, "--metrics-pushgateway-url",
                   gateway.url)
        assert r.returncode == 0, r.stderr.decode()
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 1
    job = "backupconfiguration-demo-offline"
    assert value(gateway, job, "stash_appscode_com_backupsession_success") == 1
    assert value(gateway, job, "stash_appscode_com_repository_snapshot_cleaned") == 1



def test_two_targets_and_eight_hosts_at_once_exactly_one_runs_the_post_backup_actions(kube, tmp_path):
    """A BackupBatch's two targets, four hosts each, all reporting at the same moment through the library:
    every entry lands and exactly one host is told to run the post-backup actions."""
    refs = [ObjectRef("apps/v1", "Deployment", "app"), ObjectRef("appcatalog.appscode.com/v1alpha1", "AppBinding",
                                                                 "db")]
    status = {"targets": [{"ref": r.json(), "totalHosts": 4, "phase": "Running"} for r in refs]}
    [obj] = kube.seed({**session("b1", status=status, invoker_name="batch"),
                       "spec": {"invoker": {"kind": "BackupBatch", "name": "batch"}}})
    cluster = Cluster.connect(kube.kubeconfig(str(tmp_path / "kubeconfig")), environ={})
    sess = BackupSession.from_object(obj, NS)
    runs_post: list[str] = []
    barrier = threading.Barrier(8)

    def report(ref: ObjectRef, hostname: str) -> None:
        reporter = BackupReporter(cluster, sess, Pusher(None, m.Invoker("BackupBatch", "batch", NS, "repo")))
        reporter.set_target(ref, total_hosts=4, expected_targets=2)
        barrier.wait()
        if reporter.host_done(HostResult(hostname, "Succeeded", 1.0)):
            runs_post.append(hostname)

    kube.hold_gets(STASH[0], "backupsessions", NS, "b1", parties=8)  # all eight read one resourceVersion
    threads = [threading.Thread(target=report, args=(ref, f"{ref.name}-{i}")) for ref in refs for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        cluster.close()
    st = bs(kube, "b1")["status"]
    assert [sorted(h["hostname"] for h in t["stats"]) for t in st["targets"]] == \
        [[f"app-{i}" for i in range(4)], [f"db-{i}" for i in range(4)]]
    assert all(t["phase"] == "Succeeded" for t in st["targets"]) and st["phase"] == "Running"  # post-backup next
    assert len(runs_post) == 1, runs_post
    assert sum(1 for q in kube.requests if q.method == "PUT" and q.status == 409) >= 7
    assert reasons(kube).count("HostBackupSucceeded") == 8



def test_a_storage_error_is_reported_and_leaves_the_repository_untouched(kube, source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "first.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS)
    runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", check=True)
    before = sorted(os.listdir(os.path.join(repo_dir, "snapshots")))
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir, repo_password="Not-The-Pass-1")
    r = run_backup(kc)
    assert r.returncode == 3, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["targets"][0]["stats"][0]["phase"] == "Failed"
    assert "password" in st["targets"][0]["stats"][0]["error"] and "Not-The-Pass-1" not in json.dumps(st)
    assert reasons(kube) == ["BackupSessionFailed", "HostBackupFailed"]
    assert sorted(os.listdir(os.path.join(repo_dir, "snapshots"))) == before
    restic(repo_dir, "check")
