"""Sessions end to end against a real kube-apiserver (tests/kubecluster.py): the CLI reads a BackupSession or
RestoreSession, backs up or restores a real PostgreSQL, writes status, Events and metrics (real Pushgateway), and
restic judges the repository. Each test has a namespace of its own; what the runner asked of the server is read
from the server's audit log."""

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

from stash_runner.errors import RunnerError
from stash_runner.stash import metrics as m
from stash_runner.stash.kube import Cluster
from stash_runner.stash.output import HostResult
from stash_runner.stash.reporting import BackupReporter, Pusher
from stash_runner.stash.sessions import BackupSession, ObjectRef

from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .kubecluster import Interposer, Namespace, path_of
from .pgcluster import free_port
from .pushgateway import groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STASH = ("stash.appscode.com", "v1beta1")
REF = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"}


def job(kube: Namespace, invoker_name: str = "pg-backup", kind: str = "backupconfiguration") -> str:
    """Stash's Pushgateway job name: <lower(invoker kind)>-<namespace>-<invoker name>."""
    return f"{kind}-{kube.name}-{invoker_name}"


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
            "metadata": {"name": name}, "spec": spec}


def session(name: str = "s1", status: dict | None = None, invoker_name: str = "pg-backup") -> dict:
    obj = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
           "metadata": {"name": name, "labels": {"stash.appscode.com/invoker-name": invoker_name}},
           "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration",
                                "name": invoker_name}}}
    if status:
        obj["status"] = status
    return obj


def seed(kube: Namespace, tmp_path, *extra: dict, pg=None, repo_dir: str = "", url: str | None = None,
         **kw) -> str:
    """The AppBinding, Secrets and Repository (as the offline tests write them) plus ``extra``, into the
    namespace; returns a kubeconfig for it."""
    path = objects_yaml(str(tmp_path / "objects.yaml"), cluster=pg, repo_dir=repo_dir, namespace=kube.name,
                        url=url, extra=list(extra), **kw)
    kube.load_fixtures(path)
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


def bs(kube: Namespace, name: str = "s1") -> dict:
    return kube.get(*STASH, "backupsessions", name)


def reasons(kube: Namespace) -> list[str]:
    return sorted(e["reason"] for e in kube.events())


def puts(kube: Namespace) -> list:
    return [q for q in kube.requests() if q.method == "PUT"]


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


def run_backup(kube: Namespace, kubeconfig: str, *extra: str, session_name: str = "s1", cmd: str = "backup",
               env: dict | None = None, verbose: bool = False) -> subprocess.CompletedProcess:
    flags = ["-v"] if verbose else []
    return runner(*flags, cmd, "--backupsession", session_name, "--namespace", kube.name, "--kubeconfig",
                  kubeconfig, *extra, env=env)


def test_backup_session_reads_the_cluster_and_reports_like_stash(kube, source_pg, repo_dir, tmp_path, gateway):
    kc = seed(kube, tmp_path, invoker(retention={"keepLast": 2, "prune": True}), session("s1"), session("s2"),
              session("s3"), pg=source_pg, repo_dir=repo_dir)
    logs = b""
    for name in ("s1", "s2", "s3"):
        r = run_backup(kube, kc, "--metrics-pushgateway-url", gateway.url, "--output-dir", str(tmp_path / name),
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

    repo = kube.get("stash.appscode.com", "v1alpha1", "repositories", "repo")["status"]
    assert repo["integrity"] is True and repo["snapshotCount"] == 2 and repo["snapshotsRemovedOnLastCleanup"] == 1
    assert repo["totalSize"].endswith(("B", "KiB", "MiB")) and repo["lastBackupTime"] >= repo["firstBackupTime"]

    # status went to the status subresource, with the resourceVersion read (the server refuses a custom
    # resource's update without one); nothing but statuses was written, and only by the runner
    writes = [q for q in kube.requests() if q.method in ("PUT", "PATCH", "POST", "DELETE")]
    assert {(q.method, q.resource, q.subresource) for q in writes} == {
        ("PUT", "backupsessions", "status"), ("PUT", "repositories", "status"), ("POST", "events", None)}
    assert all(q.body["metadata"]["resourceVersion"] for q in writes if q.method == "PUT")
    assert {q.user for q in writes} == {"admin"}

    # Stash's status updater's Event on the session, naming it by uid
    ev = [e for e in kube.events() if e["involvedObject"]["name"] == "s3"]
    assert [(e["reason"], e["type"], e["source"]["component"]) for e in ev] == [
        ("Host Backup Succeeded", "Normal", "Status Updater")]
    assert ev[0]["message"] == 'backup succeeded for host host-0 of "AppBinding"/"pg".'
    assert ev[0]["involvedObject"]["uid"] == bs(kube, "s3")["metadata"]["uid"]

    # Stash's metrics under Stash's job name
    jb = job(kube)
    assert value(gateway, jb, "stash_appscode_com_backupsession_success") == 1
    assert value(gateway, jb, "stash_appscode_com_backupsession_host_backup_success", hostname="host-0") == 1
    [(labels, _)] = family(gateway, jb, "stash_appscode_com_backupsession_host_data_size_bytes",
                           hostname="host-0").items()
    assert dict(labels) == {"job": jb, "hostname": "host-0", "invoker_kind": "BackupConfiguration",
                            "invoker_name": "pg-backup", "namespace": kube.name, "driver": "Restic",
                            "repository": "repo", "kind": "postgres", "group": "kubedb.com", "name": "pg"}
    assert value(gateway, jb, "stash_appscode_com_repository_snapshot_count") == 2
    assert value(gateway, jb, "stash_appscode_com_repository_snapshot_cleaned") == 1
    assert value(gateway, jb, "stash_appscode_com_repository_integrity") == 1
    # and the legacy series Stash pushes beside them, same labels and values
    assert family(gateway, jb, "stash_backup_host_data_size_bytes", hostname="host-0") == \
        family(gateway, jb, "stash_appscode_com_backupsession_host_data_size_bytes", hostname="host-0")
    assert value(gateway, jb, "stash_repository_snapshot_count") == 2

    # secrets appear nowhere: not in the (verbose) log, the status, the Events or the metrics
    everything = logs + json.dumps([bs(kube, n) for n in ("s1", "s2", "s3")] + kube.events()).encode() + \
        json.dumps(groups(gateway)).encode()
    for secret in (source_pg.password, REPO_PASSWORD):
        assert secret.encode() not in everything

    # output.json says the status is written, so an update-status step after it does nothing more
    out = json.loads((tmp_path / "s3" / "output.json").read_text())
    assert out["statusReported"] is True and out["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    n_events, n_puts = len(kube.events()), len(puts(kube))
    r = runner("update-status", "--backupsession", "s3", "--namespace", kube.name, "--kubeconfig", kc,
               "--output-dir", str(tmp_path / "s3"))
    assert r.returncode == 0, r.stderr.decode()
    assert len(kube.events()) == n_events and len(puts(kube)) == n_puts


def envsubst(text: str, env: dict[str, str]) -> str:
    """The operator's envsubst: ${VAR}, and ${VAR:=default} for unset or empty."""
    return re.sub(r"\$\{(\w+)(?::=([^}]*))?\}", lambda mt: env.get(mt.group(1)) or mt.group(2) or "", text)


CATALOG = os.path.join(ROOT, "deploy", "catalog")


def manifests() -> dict[tuple[str, str], dict]:
    """deploy/catalog's Functions and Tasks and deploy/rbac.yaml's objects, by (kind, name)."""
    paths = sorted(os.path.join(CATALOG, n) for n in os.listdir(CATALOG) if n.endswith(".yaml"))
    docs: list[dict] = []
    for path in [*paths, os.path.join(ROOT, "deploy", "rbac.yaml")]:
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def task_steps(task: dict, functions: dict, env: dict[str, str], scratch_dir: str) -> list[tuple[str, list[str]]]:
    """Each step of a Task as the operator renders it: the Function (all of it, as JSON) envsubst'd with the step's
    params and the operator's variables ``env`` (which win, as the operator upserts its inputs over the params);
    ``/stash-tmp``, the Job's scratch emptyDir, is ``scratch_dir`` here. (step name, args)."""
    steps = []
    for step in task["spec"]["steps"]:
        fn = functions[("Function", step["name"])]
        params = {p["name"]: p["value"] for p in step.get("params") or []}
        spec = json.loads(envsubst(json.dumps(fn["spec"]), {**params, **env}))
        args = [re.sub(r"(?<==)/stash-tmp(?=/|$)", scratch_dir, a) for a in spec["args"]]
        steps.append((step["name"], args))
    return steps


def run_task(task: dict, functions: dict, env: dict[str, str], scratch_dir: str) -> list[tuple[str, list[str]]]:
    """Each step of a Task run as the operator runs it (``task_steps``), in order; every one must succeed."""
    steps = task_steps(task, functions, env, scratch_dir)
    for name, args in steps:
        r = runner(*args)
        assert r.returncode == 0, f"{name}: {r.stderr.decode()}"
    return steps


def rbac_objects(objs: dict) -> list[dict]:
    """deploy/rbac.yaml's Role and RoleBinding (the ServiceAccount is made by the token helper)."""
    return [objs[("Role", "stash-runner")], objs[("RoleBinding", "stash-runner")]]


def test_stash_tasks_from_deploy_run_with_the_deploy_rbac(kube, source_pg, fresh_pg, repo_dir, tmp_path,
                                                          gateway):
    """deploy/catalog's postgres Tasks, args substituted as the operator does, with the token of a ServiceAccount
    bound to deploy/rbac.yaml's Role: a backup session (backup-pg, then update-status), then a restore session
    (restore-pg, then update-status reporting it), without one 401 or 403."""
    objs = manifests()
    target = fresh_pg()
    seed(kube, tmp_path, invoker(retention={"keepLast": 3}), session("s1"), pg=source_pg, repo_dir=repo_dir)
    # the restore target: another AppBinding, to a fresh cluster
    restore_objs = objects_yaml(str(tmp_path / "restore-target.yaml"), cluster=target, namespace=kube.name,
                                appbinding="pg-restored")
    kube.load_fixtures(restore_objs)
    token = kube.service_account_token("stash-runner", *rbac_objects(objs))
    kc = kube.kubeconfig(str(tmp_path / "sa.kubeconfig"), token=token)
    scratch = tmp_path / "stash-tmp"  # the Job's emptyDir
    scratch.mkdir()
    env = {"REPOSITORY_PROVIDER": "local", "REPOSITORY_BUCKET": repo_dir, "REPOSITORY_NAME": "repo",
           "REPOSITORY_NAMESPACE": kube.name, "REPOSITORY_SECRET_NAME": "repo-secret",
           "REPOSITORY_SECRET_NAMESPACE": kube.name, "HOSTNAME": "host-0", "NAMESPACE": kube.name,
           "TARGET_KIND": "AppBinding", "TARGET_NAME": "pg", "TARGET_NAMESPACE": kube.name,
           "INVOKER_KIND": "BackupConfiguration", "INVOKER_NAME": "pg-backup", "BACKUP_SESSION": "s1",
           "RETENTION_KEEP_LAST": "3", "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
    functions = {k: v for k, v in objs.items() if k[0] == "Function"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", kc)  # the runner finds the cluster as in a Job it would in-cluster
        run_task(objs[("Task", "stash-runner-postgres-backup")], functions, env, str(scratch))
        st = bs(kube)["status"]
        assert st["phase"] == "Succeeded" and st["targets"][0]["stats"][0]["phase"] == "Succeeded"
        assert reasons(kube).count("Host Backup Succeeded") == 1  # update-status added nothing
        restic(repo_dir, "check", "--read-data")
        snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]

        rs = restore_session("r1", [snap["short_id"]], "host-0")
        rs["spec"]["target"]["ref"]["name"] = "pg-restored"
        kube.seed(rs)
        run_task(objs[("Task", "stash-runner-postgres-restore")], functions,
                 {**env, "BACKUP_SESSION": "", "RESTORE_SESSION": "r1", "TARGET_NAME": "pg-restored",
                  "INVOKER_KIND": "RestoreSession", "INVOKER_NAME": "r1", "SOURCE_HOSTNAME": "host-0",
                  "RESTORE_SNAPSHOTS": snap["short_id"]}, str(scratch))
    assert target.contents() == source_pg.contents()
    assert kube.get(*STASH, "restoresessions", "r1")["status"]["phase"] == "Succeeded"
    sa = f"system:serviceaccount:{kube.name}:stash-runner"
    asked = kube.requests(user=sa)
    assert asked and not [q for q in asked if q.status in (401, 403)]
    # the Role is not wider than what was used: every rule's resources were asked for
    used = {(q.verb, q.resource + (f"/{q.subresource}" if q.subresource else "")) for q in asked}
    granted = {(verb, res) for rule in objs[("Role", "stash-runner")]["rules"] for res in rule["resources"]
               for verb in rule["verbs"]}
    assert used <= granted
    assert {res for _, res in granted} - {res for _, res in used} == {"backupbatches", "restorebatches",
                                                                      "restorebatches/status"}  # no batch here


def test_task_params_from_the_invoker_reach_the_dump_tool(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(params=[{"name": "args", "value": "--roles-only"}]), session("s1"),
              pg=source_pg, repo_dir=repo_dir)
    r = run_backup(kube, kc)
    assert r.returncode == 0, r.stderr.decode()
    dump = restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout
    assert b"CREATE ROLE" in dump and b"CREATE TABLE" not in dump and b"CREATE TABLE" in source_pg.pg_dumpall()


def stash_output(out_dir, snap: dict) -> None:
    """output.json as Stash's own backup image writes it."""
    out_dir.mkdir()
    (out_dir / "output.json").write_text(json.dumps({"targetStatus": {
        "ref": REF,
        "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "2.5s",
                   "snapshots": [{"name": snap["short_id"], "path": "/dumpfile.sql", "totalSize": "3.408 MiB",
                                  "uploaded": "1.000 KiB", "processingTime": "0:02",
                                  "fileStats": {"totalFiles": 1, "newFiles": 1, "modifiedFiles": 0,
                                                "unmodifiedFiles": 0}}]}]}}))


def test_update_status_reports_a_stash_images_output(kube, source_pg, repo_dir, tmp_path, gateway):
    """Our update-status after Stash's own backup image: output.json without our marker is reported, and the
    post-backup actions run on the invoker's Repository."""
    kc = seed(kube, tmp_path, invoker(retention={"keepLast": 5}), session("s1"), pg=source_pg, repo_dir=repo_dir)
    objects = str(tmp_path / "objects.yaml")
    runner("backup", "--objects", objects, "-n", kube.name, "--appbinding", "pg", "--repository", "repo",
           check=True)
    snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]
    out = tmp_path / "out"
    stash_output(out, snap)
    r = runner("update-status", "--namespace", kube.name, "--backupsession", "s1", "--repository", "repo",
               "--output-dir", str(out), "--metrics-enabled=true", "--metrics-pushgateway-url", gateway.url,
               "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and conditions(st)["RepositoryIntegrityVerified"] == "True"
    assert st["targets"][0]["stats"][0]["snapshots"][0]["totalSize"] == "3.408 MiB"
    assert kube.get("stash.appscode.com", "v1alpha1", "repositories", "repo")["status"]["snapshotCount"] == 1
    sizes = family(gateway, job(kube), "stash_appscode_com_backupsession_host_data_size_bytes", hostname="host-0")
    assert list(sizes.values()) == [round(3.408 * 1024 * 1024)]


def operator_update_status_args(kube: Namespace, repo_dir: str, out: str, gateway, *, backup_session: str,
                                invoker_kind: str, invoker_name: str, secret_dir: str) -> list[str]:
    """The update-status Function Stash's operator creates (stash pkg/util/crds.go), envsubst'd as the operator
    does for a session of ours; the storage Secret is mounted at ``secret_dir``."""
    fn = ["update-status", "--provider=${REPOSITORY_PROVIDER:=}", "--bucket=${REPOSITORY_BUCKET:=}",
          "--endpoint=${REPOSITORY_ENDPOINT:=}", "--insecure-tls=${REPOSITORY_INSECURE_TLS:=}",
          "--region=${REPOSITORY_REGION:=}", "--path=${REPOSITORY_PREFIX:=}", "--enable-cache=${ENABLE_CACHE:=true}",
          "--max-connections=${MAX_CONNECTIONS:=0}", "--namespace=${NAMESPACE:=default}",
          "--backupsession=${BACKUP_SESSION:=}", "--storage-secret-name=${REPOSITORY_SECRET_NAME:=}",
          "--storage-secret-namespace=${REPOSITORY_SECRET_NAMESPACE:=}", "--invoker-kind=${INVOKER_KIND:=}",
          "--invoker-name=${INVOKER_NAME:=}", "--target-kind=${TARGET_KIND:=}", "--target-name=${TARGET_NAME:=}",
          "--target-namespace=${TARGET_NAMESPACE:=}", "--output-dir=${outputDir:=}", "--metrics-enabled=true",
          "--scratch-dir=/stash-tmp", "--metrics-pushgateway-url=" + gateway.url, "--secret-dir=" + secret_dir]
    env = {"REPOSITORY_PROVIDER": "local", "REPOSITORY_BUCKET": repo_dir, "NAMESPACE": kube.name,
           "BACKUP_SESSION": backup_session, "REPOSITORY_SECRET_NAME": "repo-secret",
           "REPOSITORY_SECRET_NAMESPACE": kube.name, "INVOKER_KIND": invoker_kind, "INVOKER_NAME": invoker_name,
           "TARGET_KIND": "AppBinding", "TARGET_NAME": "pg", "TARGET_NAMESPACE": kube.name, "outputDir": out}
    return [envsubst(a, env) for a in fn]


def test_update_status_runs_as_the_operator_writes_it_for_a_backup_and_a_restore(kube, source_pg, repo_dir,
                                                                                 tmp_path, gateway):
    """Stash's own images did the backup and the restore; our image runs the operator's update-status step,
    args exactly as the operator generates them (no --repository; a restore named only by --invoker-kind and
    --invoker-name, with an empty --backupsession=)."""
    kc = seed(kube, tmp_path, invoker(retention={"keepLast": 5}), session("s1"), restore_session("r1"),
              pg=source_pg, repo_dir=repo_dir)
    runner("backup", "--objects", str(tmp_path / "objects.yaml"), "-n", kube.name, "--appbinding", "pg",
           "--repository", "repo", check=True)
    snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "RESTIC_PASSWORD").write_text(REPO_PASSWORD)
    out = tmp_path / "out"
    stash_output(out, snap)
    r = runner(*operator_update_status_args(kube, repo_dir, str(out), gateway, backup_session="s1",
                                            invoker_kind="BackupConfiguration", invoker_name="pg-backup",
                                            secret_dir=str(secret_dir)), "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and conditions(st)["RetentionPolicyApplied"] == "True"
    assert kube.get("stash.appscode.com", "v1alpha1", "repositories", "repo")["status"]["snapshotCount"] == 1

    rout = tmp_path / "rout"
    rout.mkdir()
    (rout / "output.json").write_text(json.dumps({"targetStatus": {
        "ref": REF, "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "3.1s"}]}}))
    r = runner(*operator_update_status_args(kube, repo_dir, str(rout), gateway, backup_session="",
                                            invoker_kind="RestoreSession", invoker_name="r1",
                                            secret_dir=str(secret_dir)), "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    rst = kube.get(*STASH, "restoresessions", "r1")["status"]
    assert rst["phase"] == "Succeeded" and [(h["hostname"], h["phase"]) for h in rst["stats"]] == \
        [("host-0", "Succeeded")]
    restore_events = [e for e in kube.events() if e["involvedObject"]["kind"] == "RestoreSession"]
    assert [(e["reason"], e["message"]) for e in restore_events] == [
        ("Host Restore Succeeded", 'restore succeeded for host "host-0"')]


def test_a_failing_database_fails_host_and_session_with_reason_event_and_metrics(kube, repo_dir, tmp_path,
                                                                                 gateway):
    url = f"postgres://127.0.0.1:{free_port()}/postgres"
    kc = seed(kube, tmp_path, invoker(name="down-backup"), session("s1", invoker_name="down-backup"), url=url,
              pg_password="x", repo_dir=repo_dir)
    r = run_backup(kube, kc, "--wait-timeout", "1", "--metrics-pushgateway-url", gateway.url,
                   "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 5, r.stderr.decode()
    err = r.stderr.decode().strip().splitlines()[-1]
    assert err.startswith("stash-runner: error: ") and "127.0.0.1" in err
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["sessionDuration"]
    [target] = st["targets"]
    assert target["phase"] == "Failed"
    error = target["stats"][0]["error"]
    assert target["stats"][0]["phase"] == "Failed" and "is not accepting connections" in error
    [ev] = kube.events()
    assert (ev["reason"], ev["type"], ev["source"]["component"]) == ("Host Backup Failed", "Warning",
                                                                     "Status Updater")
    assert ev["message"] == f'backup failed for host "host-0" of "AppBinding"/"pg". Reason: {error}'
    jb = job(kube, "down-backup")
    assert value(gateway, jb, "stash_appscode_com_backupsession_success") == 0
    assert value(gateway, jb, "stash_appscode_com_backupsession_host_backup_success", hostname="host-0") == 0
    assert value(gateway, jb, "stash_backup_host_backup_success", hostname="host-0") == 0
    assert json.loads((tmp_path / "out" / "output.json").read_text())["targetStatus"]["stats"][0]["phase"] == \
        "Failed"
    assert not os.path.exists(os.path.join(repo_dir, "config"))  # bad input leaves the repository untouched


def test_a_missing_invoker_fails_the_session(kube, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, session("s1", invoker_name="gone"), repo_dir=repo_dir)
    r = run_backup(kube, kc)
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith(f"BackupConfiguration {kube.name}/gone: not found in the cluster "
                                              f"({kube.url})")
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and conditions(st) == {"SessionFailed": "False"}
    assert f"BackupConfiguration {kube.name}/gone: not found" in st["conditions"][0]["message"]
    assert reasons(kube) == ["Host Backup Failed"]


def test_missing_session_unreachable_api_and_no_source(kube, tmp_path):
    kc = seed(kube, tmp_path)
    r = run_backup(kube, kc, session_name="nope")
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith(f"BackupSession {kube.name}/nope: not found in the cluster "
                                              f"({kube.url})")
    down = kube.kubeconfig(str(tmp_path / "down.kubeconfig"), server=f"https://127.0.0.1:{free_port()}")
    started = time.monotonic()
    r = run_backup(kube, down)
    assert r.returncode == 9 and time.monotonic() - started < 30
    line = r.stderr.decode().strip().splitlines()[-1]
    assert "unreachable" in line and "Kubernetes API at https://127.0.0.1:" in line
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    r = runner("backup", "--backupsession", "s1", "-n", kube.name, env=env)
    assert r.returncode == 2 and b"give --objects FILE|DIR, or run in a cluster" in r.stderr


def test_rbac_denial_names_the_object_and_is_reported(kube, source_pg, repo_dir, tmp_path):
    """A service account whose Role lacks one rule of deploy/rbac.yaml (Secrets): the server's 403 becomes exit
    code 10 naming the object, and the session says why."""
    seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    role, binding = rbac_objects(manifests())
    role = {**role, "rules": [r for r in role["rules"] if "secrets" not in r["resources"]]}
    token = kube.service_account_token("stash-runner", role, binding)
    kc = kube.kubeconfig(str(tmp_path / "sa.kubeconfig"), token=token)
    r = run_backup(kube, kc)
    assert r.returncode == 10, r.stderr.decode()
    line = r.stderr.decode().strip().splitlines()[-1]
    assert line.startswith(f"stash-runner: error: Secret {kube.name}/repo-secret: forbidden: ")
    assert f'User "system:serviceaccount:{kube.name}:stash-runner" cannot get resource "secrets"' in line
    assert token not in r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and "forbidden" in st["targets"][0]["stats"][0]["error"]
    assert [q.status for q in kube.requests() if q.resource == "secrets"] == [403]


def test_timeout_from_the_invoker_stops_the_run_and_fails_the_session(kube, repo_dir, tmp_path):
    url = f"postgres://127.0.0.1:{free_port()}/postgres"  # nobody listens: the run waits for the database
    kc = seed(kube, tmp_path, invoker(timeout="2s"), session("s1"), url=url, pg_password="x", repo_dir=repo_dir)
    started = time.monotonic()
    r = run_backup(kube, kc, "--wait-timeout", "120")
    assert r.returncode == 124, r.stderr.decode()
    assert time.monotonic() - started < 60
    assert r.stderr.decode().strip().endswith(f"BackupConfiguration {kube.name}/pg-backup: spec.timeOut: timed out "
                                              "after 2s")
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and "timed out after 2s" in st["targets"][0]["stats"][0]["error"]


def test_a_pushgateway_that_is_down_does_not_fail_a_good_backup(kube, source_pg, repo_dir, tmp_path):
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    r = run_backup(kube, kc, env={**os.environ, "PROMETHEUS_PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.returncode == 0, r.stderr.decode()
    assert b"metrics not pushed to the Pushgateway" in r.stderr
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and conditions(st)["RepositoryMetricsPushed"] == "False"


def session_path(kube: Namespace, name: str) -> str:
    return path_of(*STASH, "backupsessions", kube.name, name)


def test_status_writes_survive_conflicts(kube, control_plane, source_pg, repo_dir, tmp_path):
    """Someone else writes the session after each of the runner's reads and before its write: the server
    answers the write 409, and the runner reads again and writes again."""
    seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir)
    with Interposer(control_plane) as via:
        kc = kube.kubeconfig(str(tmp_path / "via.kubeconfig"), server=via.url)
        via.write_after_read(session_path(kube, "s1"), 4,
                             lambda: kube.touch(*STASH, "backupsessions", "s1"))
        r = run_backup(kube, kc)
    assert r.returncode == 0, r.stderr.decode()
    assert via.writes == 4
    assert bs(kube)["status"]["phase"] == "Succeeded"
    conflicts = [q for q in puts(kube) if q.status == 409]
    assert len(conflicts) >= 3 and all(q.subresource == "status" for q in conflicts)


def test_eight_hosts_report_into_one_session_at_once(kube, control_plane, source_pg, repo_dir, tmp_path, gateway):
    """Eight backups (one per host, as for a sharded database) run at the same moment into one repository
    and one BackupSession: all eight entries land, the post-backup actions run exactly once."""
    hosts = [f"host-{i}" for i in range(8)]
    # the operator creates the session with the target's host count
    seed(kube, tmp_path, invoker(name="shards", retention={"keepLast": 8}),
         session("s1", invoker_name="shards",
                 status={"phase": "Running", "targets": [{"ref": REF, "totalHosts": 8, "phase": "Running"}]}),
         pg=source_pg, repo_dir=repo_dir)
    # the repository exists already, as after the first scheduled run
    runner("backup", "--objects", str(tmp_path / "objects.yaml"), "-n", kube.name, "--appbinding", "pg",
           "--repository", "repo", "--hostname", "seed", check=True)
    with Interposer(control_plane) as via:
        kc = kube.kubeconfig(str(tmp_path / "via.kubeconfig"), server=via.url)
        # Each host reads the session three times: to start, to mark its target started (a no-op here, the
        # operator wrote the entry) and to record its stats. Each round of eight answers is handed out together,
        # so the eight stats writes race on one resourceVersion whatever the timing.
        via.hold_gets(session_path(kube, "s1"), parties=8, rounds=3)
        procs = [subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--backupsession", "s1", "-n",
                                   kube.name, "--kubeconfig", kc, "--hostname", h, "--metrics-pushgateway-url",
                                   gateway.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for h in hosts]
        results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0] * 8, results
    assert via.held == 24
    st = bs(kube)["status"]
    [target] = st["targets"]
    assert sorted(h["hostname"] for h in target["stats"]) == hosts
    assert all(h["phase"] == "Succeeded" for h in target["stats"]) and target["phase"] == "Succeeded"
    assert st["phase"] == "Succeeded"
    # they did collide: seven of the eight first writes lost the race and were retried
    assert sum(1 for q in puts(kube) if q.status == 409) >= 7
    # the post-backup actions ran once: one Repository status write
    assert sum(1 for q in puts(kube) if q.resource == "repositories") == 1
    assert reasons(kube).count("Host Backup Succeeded") == 8 and len(reasons(kube)) == 8
    restic(repo_dir, "check", "--read-data")
    snaps = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert sorted(s["hostname"] for s in snaps) == sorted(hosts + ["seed"])
    # every host's series is kept on the gateway
    for h in hosts:
        assert value(gateway, job(kube, "shards"), "stash_appscode_com_backupsession_host_backup_success",
                     hostname=h) == 1


def restore_session(name: str = "r1", snapshots: list[str] | None = None, source_host: str = "") -> dict:
    rule = {"sourceHost": source_host, "snapshots": snapshots or []}
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "repo"}, "task": {"name": "postgres-restore-16"},
                     "target": {"ref": dict(REF), "rules": [rule]}}}


@pytest.mark.parametrize("cmd", ["restore", "restore-pg"])
def test_restore_session_restores_and_reports(cmd, kube, source_pg, fresh_pg, repo_dir, tmp_path, gateway):
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=kube.name)
    runner("backup", "--objects", objects, "-n", kube.name, "--appbinding", "pg", "--repository", "repo",
           check=True)
    snap = json.loads(restic(repo_dir, "snapshots", "--json").stdout)[0]
    target = fresh_pg()
    kc = seed(kube, tmp_path, restore_session("r1", [f"repo-{snap['short_id']}"], "host-0"), pg=target,
              repo_dir=repo_dir)
    r = runner(cmd, "--restoresession", "r1", "--namespace", kube.name, "--kubeconfig", kc,
               "--metrics-pushgateway-url", gateway.url)
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()
    st = kube.get(*STASH, "restoresessions", "r1")["status"]
    assert st["phase"] == "Succeeded" and st["totalHosts"] == 1 and st["sessionDuration"]
    assert [(h["hostname"], h["phase"]) for h in st["stats"]] == [("host-0", "Succeeded")]
    [ev] = kube.events()
    assert (ev["reason"], ev["message"], ev["source"]["component"]) == (
        "Host Restore Succeeded", 'restore succeeded for host "host-0"', "Status Updater")
    jb = f"restoresession-{kube.name}-r1"
    assert value(gateway, jb, "stash_appscode_com_restoresession_success") == 1
    assert value(gateway, jb, "stash_appscode_com_restoresession_host_restore_success", hostname="host-0") == 1
    assert value(gateway, jb, "stash_restore_host_restore_success", hostname="host-0") == 1


def test_update_status_reports_a_stash_images_restore_output(kube, source_pg, repo_dir, tmp_path, gateway):
    """Our update-status after Stash's own restore image: the host goes into the RestoreSession's status, and
    its metrics carry the application's labels (the AppBinding's spec.type), as the restore step's do."""
    kc = seed(kube, tmp_path, restore_session("r3"), pg=source_pg, repo_dir=repo_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "output.json").write_text(json.dumps({"targetStatus": {
        "ref": REF, "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "3.1s"}]}}))
    r = runner("update-status", "--namespace", kube.name, "--restoresession", "r3", "--output-dir", str(out),
               "--metrics-pushgateway-url", gateway.url, "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    st = kube.get(*STASH, "restoresessions", "r3")["status"]
    assert st["phase"] == "Succeeded" and [(h["hostname"], h["phase"]) for h in st["stats"]] == \
        [("host-0", "Succeeded")]
    assert reasons(kube) == ["Host Restore Succeeded"]
    [labels] = family(gateway, f"restoresession-{kube.name}-r3",
                      "stash_appscode_com_restoresession_host_restore_success", hostname="host-0")
    assert ("kind", "postgres") in labels and ("group", "kubedb.com") in labels and ("name", "pg") in labels


def test_restore_session_failure_is_reported(kube, source_pg, repo_dir, tmp_path, gateway):
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=kube.name)
    runner("backup", "--objects", objects, "-n", kube.name, "--appbinding", "pg", "--repository", "repo",
           check=True)
    kc = seed(kube, tmp_path, restore_session("r2", ["repo-deadbeef"]), pg=source_pg, repo_dir=repo_dir)
    r = runner("restore", "--restoresession", "r2", "--namespace", kube.name, "--kubeconfig", kc,
               "--metrics-pushgateway-url", gateway.url)
    assert r.returncode == 7, r.stderr.decode()
    st = kube.get(*STASH, "restoresessions", "r2")["status"]
    assert st["phase"] == "Failed" and "deadbeef" in st["stats"][0]["error"]
    [ev] = kube.events()
    assert (ev["reason"], ev["type"]) == ("Host Restore Failed", "Warning")
    assert ev["message"] == f'restore failed for host "host-0". Reason: {st["stats"][0]["error"]}'
    assert value(gateway, f"restoresession-{kube.name}-r2", "stash_appscode_com_restoresession_success") == 0


def test_sessions_from_objects_files_offline(source_pg, repo_dir, tmp_path, gateway):
    """--objects stays the offline source: the session and invoker come from files; metrics still go out."""
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace="demo",
                           extra=[{**invoker(name="offline", retention={"keepLast": 1}),
                                   "metadata": {"name": "offline", "namespace": "demo"}},
                                  {**session("s1", invoker_name="offline"),
                                   "metadata": {"name": "s1", "namespace": "demo"}}])
    for _ in range(2):
        r = runner("backup", "--backupsession", "s1", "-n", "demo", "--objects", objects,
                   "--metrics-pushgateway-url", gateway.url)
        assert r.returncode == 0, r.stderr.decode()
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 1
    jb = "backupconfiguration-demo-offline"
    assert value(gateway, jb, "stash_appscode_com_backupsession_success") == 1
    assert value(gateway, jb, "stash_appscode_com_repository_snapshot_cleaned") == 1


def test_two_targets_and_eight_hosts_at_once_exactly_one_runs_the_post_backup_actions(kube, control_plane,
                                                                                       tmp_path):
    """A BackupBatch's two targets, four hosts each, all reporting at the same moment through the library:
    every entry lands and exactly one host is told to run the post-backup actions."""
    refs = [ObjectRef("apps/v1", "Deployment", "app"), ObjectRef("appcatalog.appscode.com/v1alpha1", "AppBinding",
                                                                 "db")]
    status = {"targets": [{"ref": r.json(), "totalHosts": 4, "phase": "Running"} for r in refs]}
    [obj] = kube.seed({**session("b1", status=status, invoker_name="batch"),
                       "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch",
                                            "name": "batch"}}})
    sess = BackupSession.from_object(obj, kube.name)
    runs_post: list[str] = []
    barrier = threading.Barrier(8)
    with Interposer(control_plane) as via:
        cluster = Cluster.connect(kube.kubeconfig(str(tmp_path / "kubeconfig"), server=via.url), environ={})

        def report(ref: ObjectRef, hostname: str) -> None:
            reporter = BackupReporter(cluster, sess, Pusher(None, m.Invoker("BackupBatch", "batch", kube.name,
                                                                            "repo")))
            reporter.set_target(ref, total_hosts=4, expected_targets=2)
            barrier.wait()
            if reporter.host_done(HostResult(hostname, "Succeeded", 1.0)):
                runs_post.append(hostname)

        via.hold_gets(session_path(kube, "b1"), parties=8)  # all eight read one resourceVersion
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
    assert sum(1 for q in puts(kube) if q.status == 409) >= 7
    assert reasons(kube).count("Host Backup Succeeded") == 8


def test_a_storage_error_is_reported_and_leaves_the_repository_untouched(kube, source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "first.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=kube.name)
    runner("backup", "--objects", objects, "-n", kube.name, "--appbinding", "pg", "--repository", "repo",
           check=True)
    before = sorted(os.listdir(os.path.join(repo_dir, "snapshots")))
    kc = seed(kube, tmp_path, invoker(), session("s1"), pg=source_pg, repo_dir=repo_dir,
              repo_password="Not-The-Pass-1")
    r = run_backup(kube, kc)
    assert r.returncode == 3, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["targets"][0]["stats"][0]["phase"] == "Failed"
    assert "password" in st["targets"][0]["stats"][0]["error"] and "Not-The-Pass-1" not in json.dumps(st)
    assert reasons(kube) == ["Host Backup Failed"]
    assert sorted(os.listdir(os.path.join(repo_dir, "snapshots"))) == before
    restic(repo_dir, "check")


def test_a_backup_batch_initialises_once_and_runs_the_post_backup_actions_once_after_every_member(
        kube, control_plane, source_pg, repo_dir, tmp_path, gateway):
    """A real BackupBatch with two members (told apart by their alias, Stash's --hostname for the member's Job),
    both Jobs starting at the same moment on an empty repository, the session as the operator creates it (target
    entries in member order, the pre-backup action on the first, the post-backup actions on the last): one of them
    initialises the repository, both snapshots land, and the post-backup actions run once, after both members."""
    refs = [{**REF, "name": "pg-a"}, {**REF, "name": "pg-b"}]
    batch = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBatch", "metadata": {"name": "batch"},
             "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                      "retentionPolicy": {"name": "keep", "keepLast": 1, "prune": True},
                      "executionOrder": "Parallel",
                      "members": [{"target": {"alias": alias, "ref": ref}, "task": {"name": "postgres-backup-16"}}
                                  for alias, ref in zip("ab", refs, strict=True)]}}
    targets = [{"ref": refs[0], "totalHosts": 1, "preBackupActions": ["InitializeBackendRepository"]},
               {"ref": refs[1], "totalHosts": 1, "postBackupActions": ["ApplyRetentionPolicy",
                                                                       "VerifyRepositoryIntegrity",
                                                                       "SendRepositoryMetrics"]}]
    sess = {**session("s1", invoker_name="batch", status={"phase": "Running", "targets": targets}),
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch", "name": "batch"}}}
    seed(kube, tmp_path, batch, sess, pg=source_pg, repo_dir=repo_dir, appbinding="pg-a")
    kube.load_fixtures(objects_yaml(str(tmp_path / "b.yaml"), cluster=source_pg, namespace=kube.name,
                                    appbinding="pg-b"))
    with Interposer(control_plane) as via:
        kc = kube.kubeconfig(str(tmp_path / "via.kubeconfig"), server=via.url)
        via.hold_gets(session_path(kube, "s1"), parties=2)  # both Jobs start from the same reading
        procs = [subprocess.Popen([sys.executable, "-m", "stash_runner", "backup-pg", "--backupsession=s1",
                                   f"--namespace={kube.name}", f"--kubeconfig={kc}", f"--appbinding=pg-{alias}",
                                   f"--hostname={alias}", f"--metrics-pushgateway-url={gateway.url}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for alias in "ab"]
        results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0], results
    # the first member, which the operator gave the initialisation, created the repository; the second waited
    # for it (or, when it came later, found it)
    assert "initialised a new repository" in results[0][1] and "initialised a new repository" not in results[1][1]
    assert "waiting up to" not in results[0][1]
    assert len(os.listdir(os.path.join(repo_dir, "keys"))) == 1
    restic(repo_dir, "check", "--read-data")
    snaps = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert sorted(s["hostname"] for s in snaps) == ["a", "b"]

    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded"
    # the operator's entries are kept, in member order, with what the runners added
    assert [t["ref"]["name"] for t in st["targets"]] == ["pg-a", "pg-b"]
    assert st["targets"][0]["preBackupActions"] == ["InitializeBackendRepository"]
    assert [[h["hostname"] for h in t["stats"]] for t in st["targets"]] == [["a"], ["b"]]
    assert all(t["phase"] == "Succeeded" for t in st["targets"])
    assert conditions(st) == {"BackendRepositoryInitialized": "True", "RetentionPolicyApplied": "True",
                              "RepositoryIntegrityVerified": "True", "RepositoryMetricsPushed": "True"}
    assert next(c for c in st["conditions"] if c["type"] == "BackendRepositoryInitialized")["reason"] == \
        "BackendRepositoryInitialized"
    # the post-backup actions ran once, after both members' results were written
    asked = kube.requests()
    stats_writes = [i for i, q in enumerate(asked) if q.method == "PUT" and q.status == 200 and
                    q.resource == "backupsessions" and any(t.get("stats") for t in q.body["status"]["targets"])]
    repo_writes = [i for i, q in enumerate(asked) if q.method == "PUT" and q.resource == "repositories"]
    assert len(repo_writes) == 1 and repo_writes[0] > stats_writes[1]
    assert kube.get("stash.appscode.com", "v1alpha1", "repositories", "repo")["status"]["snapshotCount"] == 2
    assert value(gateway, job(kube, "batch", "backupbatch"), "stash_appscode_com_repository_snapshot_count") == 2
    assert reasons(kube) == ["Host Backup Succeeded"] * 2


@pytest.mark.parametrize("outcome", ["initialised", "owner failed", "timed out"])
def test_a_batch_member_waits_for_the_member_that_initialises_the_repository(kube, tmp_path, outcome):
    """The waiting side of the above, made certain: member b finds no repository, and member a (the operator
    gave it InitializeBackendRepository) has not said yet that it created one."""
    refs = [ObjectRef("appcatalog.appscode.com/v1alpha1", "AppBinding", n) for n in ("pg-a", "pg-b")]
    targets = [{"ref": refs[0].json(), "totalHosts": 1, "preBackupActions": ["InitializeBackendRepository"]},
               {"ref": refs[1].json(), "totalHosts": 1}]
    [obj] = kube.seed({**session("s1", invoker_name="batch", status={"phase": "Running", "targets": targets}),
                       "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch",
                                            "name": "batch"}}})
    cluster = Cluster.connect(kube.kubeconfig(str(tmp_path / "kubeconfig")), environ={})
    sess = BackupSession.from_object(obj, kube.name)

    def reporter(ref: ObjectRef) -> BackupReporter:
        rep = BackupReporter(cluster, sess, Pusher(None, m.Invoker("BackupBatch", "batch", kube.name, "repo")))
        rep.set_target(ref, expected_targets=2)
        return rep

    try:
        assert reporter(refs[0]).await_repository() is False  # a is the one to create it: no wait
        b = reporter(refs[1])

        def member_a() -> None:
            time.sleep(1.5)
            if outcome == "initialised":
                reporter(refs[0]).repository_initialised()
            elif outcome == "owner failed":
                reporter(refs[0]).host_done(HostResult("a", "Failed", 1.0, "its database is down"))

        t = threading.Thread(target=member_a)
        t.start()
        started = time.monotonic()
        try:
            if outcome == "initialised":
                assert b.await_repository(timeout=60) is True
            else:
                with pytest.raises(RunnerError) as e:
                    b.await_repository(timeout=60 if outcome == "owner failed" else 3)
                assert str(e.value) == {
                    "owner failed": f"BackupSession {kube.name}/s1: AppBinding pg-a failed before initialising "
                                    "the repository",
                    "timed out": f"BackupSession {kube.name}/s1: timed out after 3 s waiting for AppBinding pg-a "
                                 "to initialise the repository"}[outcome]
        finally:
            t.join()
        assert time.monotonic() - started >= 1.5
    finally:
        cluster.close()
    cond = next((c for c in bs(kube)["status"].get("conditions") or []
                 if c["type"] == "BackendRepositoryInitialized"), None)
    assert (cond or {}).get("reason") == ("BackendRepositoryInitialized" if outcome == "initialised" else None)


def test_batch_members_are_listed_in_members_order_whoever_reports_first(kube, source_pg, repo_dir, tmp_path):
    """Without entries the operator made, the runner keeps the session's targets in the BackupBatch's members
    order, as the operator would: the second member reports first and is still listed second."""
    refs = [{**REF, "name": "pg-a"}, {**REF, "name": "pg-b"}]
    batch = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBatch", "metadata": {"name": "batch"},
             "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                      "members": [{"target": {"alias": alias, "ref": ref}, "task": {"name": "postgres-backup-16"}}
                                  for alias, ref in zip("ab", refs, strict=True)]}}
    sess = {**session("s1", invoker_name="batch"),
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch", "name": "batch"}}}
    kc = seed(kube, tmp_path, batch, sess, pg=source_pg, repo_dir=repo_dir, appbinding="pg-a")
    kube.load_fixtures(objects_yaml(str(tmp_path / "b.yaml"), cluster=source_pg, namespace=kube.name,
                                    appbinding="pg-b"))
    for alias in "ba":
        r = run_backup(kube, kc, f"--appbinding=pg-{alias}", f"--hostname={alias}")
        assert r.returncode == 0, r.stderr.decode()
        names = [t["ref"]["name"] for t in bs(kube)["status"]["targets"]]
        assert names == (["pg-b"] if alias == "b" else ["pg-a", "pg-b"])
    st = bs(kube)["status"]
    assert st["phase"] == "Succeeded" and [t["phase"] for t in st["targets"]] == ["Succeeded", "Succeeded"]
