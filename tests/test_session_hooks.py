"""A session's hooks run by the runner, against the real kube-apiserver (conditions and status as Stash writes
them) and real HTTP and TCP hook targets on loopback: a target's preBackup/postBackup, a RestoreSession's
preRestore/postRestore, every execution policy against a backup that succeeds and one that fails, templates, and
``run-hook`` as the operator's hook containers call it (a BackupBatch's global hooks included)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stash_runner.restic.timefmt import parse_time

from .helpers import objects_yaml, restic, runner
from .kubecluster import Namespace
from .pgcluster import free_port
from .test_session import REF, STASH, bs, conditions, invoker, restore_session, session

HOOK_POLICIES = ("Always", "OnSuccess", "OnFailure", "OnFinalRetryFailure")


class HookTarget:
    """An HTTP server on loopback that records every request (time, method, path, body) and answers with the
    status set for its path (200 by default)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status: dict[str, int] = {}
        target = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                target.requests.append({"at": time.time(), "method": self.command, "path": self.path, "body": body,
                                        "content_type": self.headers.get("Content-Type", ""),
                                        "headers": dict(self.headers)})
                code = target.status.get(self.path.partition("?")[0], 200)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_target():
    t = HookTarget()
    yield t
    t.close()


def http_get(port: int, path: str) -> dict:
    return {"httpGet": {"host": "127.0.0.1", "port": port, "path": path,
                        "httpHeaders": [{"name": "X-Hook", "value": "stash-runner"}]}}


def http_post(port: int, path: str, body: str, policy: str = "") -> dict:
    hook = {"httpPost": {"host": "127.0.0.1", "port": port, "path": path, "body": body}}
    if policy:
        hook["executionPolicy"] = policy
    return hook


def seed_backup(kube: Namespace, tmp_path, hooks: dict, *, pg=None, url: str | None = None, repo_dir: str,
                extra_session: dict | None = None) -> str:
    inv = invoker()
    inv["spec"]["hooks"] = hooks
    path = objects_yaml(str(tmp_path / "objects.yaml"), cluster=pg, url=url, pg_password=None if pg else "x",
                        repo_dir=repo_dir, namespace=kube.name,
                        extra=[inv, {**session("s1"), **(extra_session or {})}])
    kube.load_fixtures(path)
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


def target_conditions(kube: Namespace) -> dict[str, dict]:
    [target] = bs(kube)["status"]["targets"]
    return {c["type"]: c for c in target.get("conditions") or []}


def backup(kube: Namespace, kc: str, *extra: str):
    return runner("backup", "--backupsession", "s1", "--namespace", kube.name, "--kubeconfig", kc, *extra)


def test_pre_and_post_backup_hooks_run_around_the_dump_and_are_recorded(kube, hook_target, source_pg, repo_dir,
                                                                        tmp_path):
    body = '{"session": "{{ .Name }}", "phase": "{{ .Status.Phase }}", "target": "{{ .Target.Name }}", ' \
           '"invoker": "{{ .Invoker.Kind }}/{{ .Invoker.Name }}"}'
    kc = seed_backup(kube, tmp_path, {"preBackup": http_get(hook_target.port, "/pre"),
                                      "postBackup": http_post(hook_target.port, "/post", body)},
                     pg=source_pg, repo_dir=repo_dir)
    r = backup(kube, kc)
    assert r.returncode == 0, r.stderr.decode()
    assert hook_target.paths() == ["GET /pre", "POST /post"]
    assert hook_target.requests[0]["headers"].get("X-Hook") == "stash-runner"
    assert json.loads(hook_target.requests[1]["body"]) == {
        "session": "s1", "phase": "Succeeded", "target": "pg", "invoker": "BackupConfiguration/pg-backup"}
    # the dump ran between the hooks: the snapshot's time lies between the two requests
    [snap] = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    taken = parse_time(snap["time"]).timestamp()
    assert hook_target.requests[0]["at"] <= taken <= hook_target.requests[1]["at"]
    conds = target_conditions(kube)
    assert {k: (c["status"], c["reason"], c["message"]) for k, c in conds.items()} == {
        "PreBackupHookExecutionSucceeded": ("True", "SuccessfullyExecutedPreBackupHook",
                                            "Successfully executed preBackup hook."),
        "PostBackupHookExecutionSucceeded": ("True", "SuccessfullyExecutedPostBackupHook",
                                             "Successfully executed postBackup hook.")}
    assert bs(kube)["status"]["phase"] == "Succeeded"


def test_a_failed_pre_hook_fails_the_target_and_nothing_is_dumped(kube, hook_target, source_pg, repo_dir, tmp_path):
    hook_target.status["/pre"] = 503
    kc = seed_backup(kube, tmp_path, {"preBackup": http_get(hook_target.port, "/pre"),
                                      "postBackup": http_post(hook_target.port, "/post", "x")},
                     pg=source_pg, repo_dir=repo_dir)
    r = backup(kube, kc)
    assert r.returncode == 11, r.stderr.decode()
    line = r.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("stash-runner: error: preBackup hook failed: ") and "503" in line
    assert hook_target.paths() == ["GET /pre"]  # no post hook after a failed pre hook (Stash's pod stops)
    assert not os.path.exists(os.path.join(repo_dir, "config"))  # nothing written
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["targets"][0]["phase"] == "Failed"
    cond = target_conditions(kube)["PreBackupHookExecutionSucceeded"]
    assert (cond["status"], cond["reason"]) == ("False", "FailedToExecutePreBackupHook")
    assert cond["message"].startswith("Failed to execute preBackup hook. Reason: ") and "503" in cond["message"]


def test_a_failed_post_hook_fails_the_target_and_the_snapshot_stays(kube, hook_target, source_pg, repo_dir,
                                                                    tmp_path):
    hook_target.status["/post"] = 500
    kc = seed_backup(kube, tmp_path, {"postBackup": http_post(hook_target.port, "/post", "done")},
                     pg=source_pg, repo_dir=repo_dir)
    r = backup(kube, kc)
    assert r.returncode == 11, r.stderr.decode()
    restic(repo_dir, "check", "--read-data")
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 1
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["targets"][0]["phase"] == "Failed"
    assert st["targets"][0]["stats"][0]["phase"] == "Succeeded"  # the host's backup itself succeeded
    cond = target_conditions(kube)["PostBackupHookExecutionSucceeded"]
    assert (cond["status"], cond["reason"]) == ("False", "FailedToExecutePostBackupHook") and "500" in cond["message"]


@pytest.mark.parametrize("outcome", ["Succeeded", "Failed"])
@pytest.mark.parametrize("policy", HOOK_POLICIES)
def test_post_backup_execution_policies(kube, hook_target, source_pg, repo_dir, tmp_path, policy, outcome):
    """Each executionPolicy against a backup that succeeds and one that fails (its database is down): the hook runs
    exactly when Stash's IsAllowedByExecutionPolicy allows (OnFinalRetryFailure: failed and retryLeft 0, which a
    session without spec.retryLeft has); a skipped hook is still recorded True, with Stash's message."""
    kw = {"pg": source_pg} if outcome == "Succeeded" else {"url": f"postgres://127.0.0.1:{free_port()}/postgres"}
    kc = seed_backup(kube, tmp_path, {"postBackup": http_post(hook_target.port, "/post", "{{ .Status.Phase }}",
                                                              policy)}, repo_dir=repo_dir, **kw)
    r = backup(kube, kc, "--wait-timeout", "1")
    assert r.returncode == (0 if outcome == "Succeeded" else 5), r.stderr.decode()
    runs = {"Always": True, "OnSuccess": outcome == "Succeeded", "OnFailure": outcome == "Failed",
            "OnFinalRetryFailure": outcome == "Failed"}[policy]
    assert hook_target.paths() == (["POST /post"] if runs else [])
    if runs:
        assert hook_target.requests[0]["body"] == outcome
    cond = target_conditions(kube)["PostBackupHookExecutionSucceeded"]
    assert cond["status"] == "True"
    if not runs:
        assert cond["message"] == f'Skipping executing postBackup. Reason: executionPolicy is "{policy}" but phase ' \
                                  f'is "{outcome}".'


def test_a_tcp_hook_and_the_summary_s_error_in_a_failed_backup(kube, hook_target, repo_dir, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"postgres://127.0.0.1:{free_port()}/postgres"
        kc = seed_backup(kube, tmp_path, {
            "preBackup": {"tcpSocket": {"host": "127.0.0.1", "port": listener.getsockname()[1]}},
            "postBackup": http_post(hook_target.port, "/post", "{{ .Status.Phase }}: {{ .Status.Error }}",
                                    "OnFailure")}, url=url, repo_dir=repo_dir)
        r = backup(kube, kc, "--wait-timeout", "1")
    finally:
        listener.close()
    assert r.returncode == 5, r.stderr.decode()
    assert target_conditions(kube)["PreBackupHookExecutionSucceeded"]["status"] == "True"
    [post] = hook_target.requests
    assert post["body"].startswith("Failed: ") and "is not accepting connections" in post["body"]


def test_restore_session_hooks_are_recorded_on_the_session(kube, hook_target, source_pg, fresh_pg, repo_dir,
                                                           tmp_path):
    objects = objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=kube.name)
    runner("backup", "--objects", objects, "-n", kube.name, "--appbinding", "pg", "--repository", "repo",
           check=True)
    target = fresh_pg()
    rs = restore_session("r1")
    rs["spec"]["hooks"] = {"preRestore": http_get(hook_target.port, "/pre-restore"),
                           "postRestore": http_post(hook_target.port, "/post-restore",
                                                    "{{ .Invoker.Kind }} {{ .Name }} {{ .Status.Phase }}")}
    kube.load_fixtures(objects_yaml(str(tmp_path / "objects.yaml"), cluster=target, repo_dir=repo_dir,
                                    namespace=kube.name, extra=[rs]))
    kc = kube.kubeconfig(str(tmp_path / "kubeconfig"))
    r = runner("restore", "--restoresession", "r1", "--namespace", kube.name, "--kubeconfig", kc)
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()
    assert hook_target.paths() == ["GET /pre-restore", "POST /post-restore"]
    assert hook_target.requests[1]["body"] == "RestoreSession r1 Succeeded"
    st = kube.get(*STASH, "restoresessions", "r1")["status"]
    assert st["phase"] == "Succeeded"
    assert conditions(st) == {"PreRestoreHookExecutionSucceeded": "True", "PostRestoreHookExecutionSucceeded": "True"}


def test_a_failed_pre_restore_hook_restores_nothing(kube, hook_target, fresh_pg, repo_dir, tmp_path):
    target = fresh_pg()
    before = target.contents()
    rs = restore_session("r1")
    rs["spec"]["hooks"] = {"preRestore": http_get(hook_target.port, "/pre-restore")}
    hook_target.status["/pre-restore"] = 404
    kube.load_fixtures(objects_yaml(str(tmp_path / "objects.yaml"), cluster=target, repo_dir=repo_dir,
                                    namespace=kube.name, extra=[rs]))
    r = runner("restore", "--restoresession", "r1", "--namespace", kube.name, "--kubeconfig",
               kube.kubeconfig(str(tmp_path / "kubeconfig")))
    assert r.returncode == 11, r.stderr.decode()
    assert target.contents() == before
    st = kube.get(*STASH, "restoresessions", "r1")["status"]
    assert st["phase"] == "Failed" and conditions(st)["PreRestoreHookExecutionSucceeded"] == "False"


def run_hook(kube: Namespace, kc: str, *args: str):
    return runner("run-hook", f"--namespace={kube.name}", f"--kubeconfig={kc}", *args)


def test_run_hook_as_the_operators_hook_containers_call_it(kube, hook_target, source_pg, repo_dir, tmp_path):
    """The operator's pre-task-hook and post-task-hook containers' args (stash pkg/util/util.go): the hook runs
    once, its condition is recorded, a second run does not run it again; a failed pre hook exits 11, a failed post
    hook is recorded and exits 0, as Stash's run-hook."""
    kc = seed_backup(kube, tmp_path, {"preBackup": http_get(hook_target.port, "/pre"),
                                      "postBackup": http_post(hook_target.port, "/post", "{{ .Status.Phase }}")},
                     pg=source_pg, repo_dir=repo_dir)
    args = ["--backupsession=s1", "--invoker-kind=BackupConfiguration", "--invoker-name=pg-backup",
            "--target-kind=AppBinding", f"--target-namespace={kube.name}", "--target-name=pg", "--hostname=host-0",
            "--output-dir=/tmp/output", "--metrics-enabled=true", "--metrics-pushgateway-url="]
    r = run_hook(kube, kc, *args, "--hook-type=preBackup")
    assert r.returncode == 0, r.stderr.decode()
    assert run_hook(kube, kc, *args, "--hook-type=preBackup").returncode == 0  # recorded: not run again
    assert hook_target.paths() == ["GET /pre"]
    assert target_conditions(kube)["PreBackupHookExecutionSucceeded"]["status"] == "True"

    hook_target.status["/post"] = 500
    r = run_hook(kube, kc, *args, "--hook-type=postBackup")
    assert r.returncode == 0, r.stderr.decode()
    assert b"postBackup hook failed" in r.stderr
    assert hook_target.paths() == ["GET /pre", "POST /post"]
    assert target_conditions(kube)["PostBackupHookExecutionSucceeded"]["status"] == "False"

    hook_target.status["/pre"] = 500
    kube.put({**bs(kube), "status": {}}, "status")  # a fresh session for the same invoker
    r = run_hook(kube, kc, *args, "--hook-type=preBackup")
    assert r.returncode == 11 and b"preBackup hook failed" in r.stderr


def test_run_hook_runs_a_backup_batch_s_global_hooks(kube, hook_target, tmp_path):
    batch = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBatch", "metadata": {"name": "batch"},
             "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                      "hooks": {"preBackup": http_get(hook_target.port, "/global-pre"),
                                "postBackup": http_post(hook_target.port, "/global-post",
                                                        "{{ .Invoker.Kind }} {{ .Status.Phase }}")},
                      "members": [{"target": {"alias": "a", "ref": REF}, "task": {"name": "postgres-backup-16"}}]}}
    sess = {**session("s1", invoker_name="batch",
                      status={"phase": "Running", "targets": [{"ref": REF, "totalHosts": 1, "phase": "Succeeded",
                                                               "stats": [{"hostname": "a", "phase": "Succeeded"}]}]}),
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch", "name": "batch"}}}
    kube.seed(batch, sess)
    kc = kube.kubeconfig(str(tmp_path / "kubeconfig"))
    for hook in ("preBackup", "postBackup"):
        r = run_hook(kube, kc, "--backupsession=s1", "--invoker-kind=BackupBatch", "--invoker-name=batch",
                     f"--hook-type={hook}")
        assert r.returncode == 0, r.stderr.decode()
    assert hook_target.paths() == ["GET /global-pre", "POST /global-post"]
    assert hook_target.requests[1]["body"] == "BackupBatch Succeeded"
    st = bs(kube)["status"]
    assert {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]} == {
        "GlobalPreBackupHookSucceeded": ("True", "GlobalPreBackupHookExecutedSuccessfully",
                                         "Global PreBackup hook has been executed successfully"),
        "GlobalPostBackupHookSucceeded": ("True", "GlobalPostBackupHookExecutedSuccessfully",
                                          "Global PostBackup hook has been executed successfully")}


def test_bad_hooks_are_one_line_errors_naming_the_field(kube, source_pg, repo_dir, tmp_path):
    kc = seed_backup(kube, tmp_path, {"postBackup": {"httpPost": {"port": 80}, "executionPolicy": "Sometimes"}},
                     pg=source_pg, repo_dir=repo_dir)
    r = backup(kube, kc)
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines()[-1] == (
        f"stash-runner: error: BackupConfiguration {kube.name}/pg-backup: spec.hooks.postBackup.executionPolicy: "
        "'Sometimes' is not one of Always, OnSuccess, OnFailure, OnFinalRetryFailure")
    assert not os.path.exists(os.path.join(repo_dir, "config"))


def test_an_exec_hook_goes_to_the_pod_behind_the_appbinding_s_service(kube, repo_dir, tmp_path):
    """The exec path of a session's hook on the real kube-apiserver: the pod is found through the AppBinding's
    Service's Endpoints, and the exec request reaches the server — which, with no kubelet here, answers 400 "does
    not have a host assigned". That answer is the hook's failure, recorded as Stash records it. (The exec stream
    itself, with a real command's output and exit code, is tested against a double of the kubelet's protocol in
    tests/test_podexec.py.)"""
    from .test_podexec import address, appbinding, create, endpoints, pod

    inv = invoker()
    inv["spec"]["hooks"] = {"preBackup": {"exec": {"command": ["sh", "-c", "echo freeze {{ .Name }}"]},
                                          "containerName": "db"}}
    kube.load_fixtures(objects_yaml(str(tmp_path / "objects.yaml"), repo_dir=repo_dir, namespace=kube.name,
                                    extra=[inv, session("s1"), appbinding(kube.name)]))
    create(kube, "endpoints", endpoints(kube.name, {"addresses": [address("10.0.0.7", name="pg-0")]}))
    create(kube, "pods", pod(kube.name, "pg-0", "db"))
    r = backup(kube, kube.kubeconfig(str(tmp_path / "kubeconfig")))
    assert r.returncode == 11, r.stderr.decode()
    cond = target_conditions(kube)["PreBackupHookExecutionSucceeded"]
    assert cond["status"] == "False" and "pod pg-0 does not have a host assigned" in cond["message"]
    asked = {(q.verb, q.resource, q.subresource, q.name) for q in kube.requests()}
    assert {("get", "endpoints", None, "pg"), ("get", "pods", None, "pg-0")} <= asked
    assert any(q.resource == "pods" and q.subresource == "exec" for q in kube.requests())
    assert not os.path.exists(os.path.join(repo_dir, "config"))


def test_a_failed_global_pre_hook_fails_the_batch_s_session(kube, hook_target, tmp_path):
    hook_target.status["/global-pre"] = 500
    batch = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBatch", "metadata": {"name": "batch"},
             "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                      "hooks": {"preBackup": http_get(hook_target.port, "/global-pre")},
                      "members": [{"target": {"alias": "a", "ref": REF}, "task": {"name": "postgres-backup-16"}}]}}
    sess = {**session("s1", invoker_name="batch", status={"phase": "Running"}),
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupBatch", "name": "batch"}}}
    kube.seed(batch, sess)
    r = run_hook(kube, kube.kubeconfig(str(tmp_path / "kubeconfig")), "--backupsession=s1",
                 "--invoker-kind=BackupBatch", "--invoker-name=batch", "--hook-type=preBackup")
    assert r.returncode == 11, r.stderr.decode()
    st = bs(kube)["status"]
    assert st["phase"] == "Failed" and st["sessionDuration"]
    [cond] = st["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("GlobalPreBackupHookSucceeded", "False",
                                                              "GlobalPreBackupHookExecutionFailed")
    assert cond["message"].startswith("Failed to execute global PreBackup Hook. Reason: ") and "500" in cond["message"]


def test_run_hook_without_a_session_is_a_one_line_error_naming_run_hook(tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=str(tmp_path / "repo"), namespace="demo")
    r = runner("run-hook", "--hook-type=preBackup", "--namespace=demo", "--objects", objects)
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines() == [
        "stash-runner: error: run-hook: no session: give --backupsession, or --invoker-kind=RestoreSession "
        "--invoker-name (or --restoresession)"]
