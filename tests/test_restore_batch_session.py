"""A RestoreBatch run as Stash's operator runs it, against the real kube-apiserver: one Job per member, each running
our image for its member (``restore``/``restore-pg`` with ``--invoker-kind=RestoreBatch --invoker-name`` or
``--restorebatch``, and the member's ``--target-name``/``--appbinding``), reporting into the RestoreBatch's
status.members; ``update-status`` after Stash's own restore image; ``run-hook`` for the global and the members'
hooks. Real PostgreSQL clusters, restic as the judge, a real Pushgateway, loopback hook targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import objects_yaml, restic, runner
from .kubecluster import Namespace
from .pgcluster import PgCluster
from .test_session import STASH, conditions, manifests, rbac_objects, value
from .test_session_hooks import HookTarget, http_get, http_post

APPBINDING = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding"}


@pytest.fixture
def hook_target():
    t = HookTarget()
    yield t
    t.close()


def member(appbinding: str, alias: str, rules: list[dict] | None = None, hooks: dict | None = None) -> dict:
    target: dict = {"alias": alias, "ref": {**APPBINDING, "name": appbinding}}
    if rules is not None:
        target["rules"] = rules
    m: dict = {"target": target, "task": {"name": "postgres-restore-16"}}
    if hooks:
        m["hooks"] = hooks
    return m


def restore_batch(members: list[dict], hooks: dict | None = None, name: str = "rb") -> dict:
    spec: dict = {"repository": {"name": "repo"}, "members": members}
    if hooks:
        spec["hooks"] = hooks
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreBatch", "metadata": {"name": name},
            "spec": spec}


def rb(kube: Namespace, name: str = "rb") -> dict:
    return kube.get(*STASH, "restorebatches", name)


def second_source(fresh_pg) -> PgCluster:
    """Another source cluster, with other data than source_pg's."""
    c = fresh_pg()
    c.execute("CREATE DATABASE inventory")
    c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int); "
              "INSERT INTO items SELECT g, 'item ' || g, g % 17 FROM generate_series(1, 2000) g", dbname="inventory")
    return c


def back_up(tmp_path, kube: Namespace, repo_dir: str, cluster: PgCluster, appbinding: str, alias: str) -> dict:
    """A backup of ``cluster`` as host ``alias`` (a BackupBatch member's snapshot); returns restic's snapshot."""
    objs = objects_yaml(str(tmp_path / f"src-{appbinding}.yaml"), cluster=cluster, appbinding=appbinding,
                        repo_dir=repo_dir, namespace=kube.name)
    runner("backup", "--objects", objs, "-n", kube.name, "--appbinding", appbinding, "--repository", "repo",
           "--hostname", alias, check=True)
    snaps = json.loads(restic(repo_dir, "snapshots", "--json", "--host", alias).stdout)
    return snaps[-1]


def seed_targets(kube: Namespace, tmp_path, repo_dir: str, targets: dict[str, PgCluster], *extra: dict) -> str:
    """The restore targets' AppBindings, the Repository and ``extra`` in the namespace; returns a kubeconfig."""
    for name, cluster in targets.items():
        kube.load_fixtures(objects_yaml(str(tmp_path / f"dst-{name}.yaml"), cluster=cluster, appbinding=name,
                                        namespace=kube.name))
    kube.load_fixtures(objects_yaml(str(tmp_path / "repo.yaml"), repo_dir=repo_dir, namespace=kube.name,
                                    extra=list(extra)))
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


def member_job(kube: Namespace, kc: str, *args: str) -> subprocess.Popen:
    """A member's Job, started as a process of its own (the operator starts them all at once)."""
    return subprocess.Popen([sys.executable, "-m", "stash_runner", *args, f"--namespace={kube.name}",
                             f"--kubeconfig={kc}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err.decode()


def entries(st: dict) -> list[tuple]:
    return [(m["ref"]["name"], m.get("totalHosts"), m["phase"], [(h["hostname"], h["phase"]) for h in m["stats"]])
            for m in st.get("members") or []]


def test_members_restore_at_once_and_report_to_the_restore_batch(kube, source_pg, fresh_pg, repo_dir, tmp_path,
                                                                 gateway, hook_target):
    """The operator's run of a RestoreBatch with two members, with the token of deploy/rbac.yaml's Role: the global
    pre hook (run-hook), then both members' Jobs at once — one in the operator's spelling (restore-pg with
    --invoker-kind/--invoker-name, --appbinding), one in ours (restore --restorebatch --target-name). Each restores
    its snapshot, writes its members[] entry (in spec order), its host's Event and metrics; the last to end ends
    the batch."""
    second = second_source(fresh_pg)
    snap_a = back_up(tmp_path, kube, repo_dir, source_pg, "pg-a", "a")
    snap_b = back_up(tmp_path, kube, repo_dir, second, "pg-b", "b")
    new_a, new_b = fresh_pg(), fresh_pg()
    batch = restore_batch(
        [member("new-a", "a", rules=[{"sourceHost": "a", "snapshots": [f"repo-{snap_a['short_id']}"]}]),
         member("new-b", "b", rules=[{"sourceHost": "b", "snapshots": [f"repo-{snap_b['short_id']}"]}],
                hooks={"postRestore": http_post(hook_target.port, "/b/post",
                                                "{{ .Invoker.Kind }} {{ .Name }} {{ .Target.Name }} "
                                                "{{ .Status.Phase }}")})],
        hooks={"preRestore": http_get(hook_target.port, "/global-pre")})
    seed_targets(kube, tmp_path, repo_dir, {"new-a": new_a, "new-b": new_b}, batch)
    token = kube.service_account_token("stash-runner", *rbac_objects(manifests()))
    kc = kube.kubeconfig(str(tmp_path / "sa.kubeconfig"), token=token)

    r = runner("run-hook", f"--namespace={kube.name}", f"--kubeconfig={kc}", "--backupsession=",
               "--invoker-kind=RestoreBatch", "--invoker-name=rb", "--hook-type=preRestore", "--hostname=",
               "--output-dir=", "--metrics-enabled=true", "--metrics-pushgateway-url=")
    assert r.returncode == 0, r.stderr.decode()
    assert hook_target.paths() == ["GET /global-pre"]

    metrics = ("--metrics-enabled=true", f"--metrics-pushgateway-url={gateway.url}")
    jobs = [member_job(kube, kc, "restore-pg", "--invoker-kind=RestoreBatch", "--invoker-name=rb",
                       "--appbinding=new-b", "--hostname=b", "--restoresession=", "--snapshot=",
                       "--source-hostname=", "--pg-args=", "--wait-timeout=", *metrics),
            member_job(kube, kc, "restore", "--restorebatch", "rb", "--target-name", "new-a", "--hostname", "a",
                       *metrics)]
    for code, err in map(finish, jobs):
        assert code == 0, err
    assert new_a.contents() == source_pg.contents()
    assert new_b.contents() == second.contents()
    assert hook_target.paths() == ["GET /global-pre", "POST /b/post"]
    assert hook_target.requests[1]["body"] == "RestoreBatch rb new-b Succeeded"

    st = rb(kube)["status"]
    assert st["phase"] == "Succeeded" and st["sessionDuration"]
    assert entries(st) == [("new-a", 1, "Succeeded", [("a", "Succeeded")]),
                           ("new-b", 1, "Succeeded", [("b", "Succeeded")])]
    assert all(m["stats"][0]["duration"] for m in st["members"])
    assert [m["ref"] for m in st["members"]] == [{**APPBINDING, "name": "new-a"}, {**APPBINDING, "name": "new-b"}]
    assert "conditions" not in st["members"][0]
    assert {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["members"][1]["conditions"]} == {
        "PostRestoreHookExecutionSucceeded": ("True", "SuccessfullyExecutedPostRestoreHook",
                                              "Successfully executed postRestore hook.")}
    assert {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]} == {
        "GlobalPreRestoreHookSucceeded": ("True", "GlobalPreRestoreHookExecutedSuccessfully",
                                          "Global PreRestore hook has been executed successfully")}

    events = kube.events()
    assert sorted((e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"], e["message"],
                   e["source"]["component"]) for e in events) == [
        ("RestoreBatch", "rb", "Host Restore Succeeded", 'restore succeeded for host "a"', "Status Updater"),
        ("RestoreBatch", "rb", "Host Restore Succeeded", 'restore succeeded for host "b"', "Status Updater")]

    jb = f"restorebatch-{kube.name}-rb"
    assert value(gateway, jb, "stash_appscode_com_restoresession_success") == 1
    for host in ("a", "b"):
        assert value(gateway, jb, "stash_appscode_com_restoresession_host_restore_success", hostname=host) == 1

    # every status write is a PUT to the status subresource with the resourceVersion read; the Role allowed all
    asked = kube.requests(user=f"system:serviceaccount:{kube.name}:stash-runner")
    assert asked and not [q for q in asked if q.status in (401, 403)]
    writes = [q for q in asked if q.resource == "restorebatches" and q.method == "PUT"]
    assert writes and all(q.subresource == "status" and q.body["metadata"].get("resourceVersion") for q in writes)
    assert all(q.status in (200, 409) for q in writes)


def test_a_failing_member_fails_its_entry_and_the_batch_once_the_other_ended(kube, source_pg, fresh_pg, repo_dir,
                                                                             tmp_path, gateway):
    back_up(tmp_path, kube, repo_dir, source_pg, "pg-a", "a")
    new_a, new_x = fresh_pg(), fresh_pg()
    batch = restore_batch([member("new-x", "x", rules=[{"sourceHost": "a", "snapshots": ["repo-deadbeef"]}]),
                           member("new-a", "a")])  # no rules: host a's latest snapshot
    kc = seed_targets(kube, tmp_path, repo_dir, {"new-a": new_a, "new-x": new_x}, batch)
    metrics = ("--metrics-pushgateway-url", gateway.url)

    r = runner("restore", "--invoker-kind=RestoreBatch", "--invoker-name=rb", "--target-name=new-x",
               "--hostname=x", f"--namespace={kube.name}", f"--kubeconfig={kc}", *metrics)
    assert r.returncode == 7, r.stderr.decode()  # the snapshot does not exist
    st = rb(kube)["status"]
    [(name, total, phase, [(host, hphase)])] = entries(st)
    assert (name, total, phase, host, hphase) == ("new-x", 1, "Failed", "x", "Failed")
    assert "deadbeef" in st["members"][0]["stats"][0]["error"]
    assert st["phase"] == "Running" and "sessionDuration" not in st  # new-a has not ended yet
    [ev] = kube.events()
    error = st["members"][0]["stats"][0]["error"]
    assert (ev["reason"], ev["type"], ev["message"]) == (
        "Host Restore Failed", "Warning", f'restore failed for host "x". Reason: {error}')

    r = runner("restore", "--restorebatch=rb", "--appbinding=new-a", "--hostname=a", f"--namespace={kube.name}",
               f"--kubeconfig={kc}", *metrics)
    assert r.returncode == 0, r.stderr.decode()
    assert new_a.contents() == source_pg.contents()
    st = rb(kube)["status"]
    assert entries(st) == [("new-x", 1, "Failed", [("x", "Failed")]), ("new-a", 1, "Succeeded", [("a", "Succeeded")])]
    assert st["phase"] == "Failed" and st["sessionDuration"]
    assert value(gateway, f"restorebatch-{kube.name}-rb", "stash_appscode_com_restoresession_success") == 0


def test_a_member_not_in_the_batch_is_a_one_line_error(kube, tmp_path, repo_dir):
    kc = seed_targets(kube, tmp_path, repo_dir, {}, restore_batch([member("new-a", "a")]))
    r = runner("restore", "--invoker-kind=RestoreBatch", "--invoker-name=rb", "--target-name=nope",
               f"--namespace={kube.name}", f"--kubeconfig={kc}")
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines()[-1] == (
        f"stash-runner: error: RestoreBatch {kube.name}/rb: no member with target 'nope' (members: new-a)")
    r = runner("restore", "--invoker-kind=RestoreBatch", "--invoker-name=other", "--target-name=new-a",
               f"--namespace={kube.name}", f"--kubeconfig={kc}")
    assert r.returncode == 2 and "--invoker-kind=RestoreBatch --invoker-name=other: RestoreBatch" in r.stderr.decode()
    assert "status" not in rb(kube)


def stash_restore_output(out_dir, name: str, host: str) -> str:
    """output.json as Stash's own restore image writes it for a member."""
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "output.json"), "w") as f:
        json.dump({"targetStatus": {"ref": {**APPBINDING, "name": name},
                                    "stats": [{"hostname": host, "phase": "Succeeded", "duration": "3.1s"}]}}, f)
    return str(out_dir)


def test_update_status_reports_a_stash_images_output_to_its_member(kube, tmp_path, repo_dir, gateway):
    """Our update-status after Stash's own restore image, args as the operator writes them for a RestoreBatch
    member: the host goes into that member's entry; the entries stay in spec.members order whoever writes first."""
    kc = seed_targets(kube, tmp_path, repo_dir, {}, restore_batch([member("new-a", "a"), member("new-b", "b")]))

    def update_status(out: str, *target: str):
        return runner("update-status", f"--namespace={kube.name}", "--backupsession=", "--invoker-kind=RestoreBatch",
                      "--invoker-name=rb", *target, f"--output-dir={out}", "--metrics-enabled=true",
                      f"--metrics-pushgateway-url={gateway.url}", f"--kubeconfig={kc}")

    r = update_status(stash_restore_output(tmp_path / "out-b", "new-b", "b"), "--target-kind=AppBinding",
                      "--target-name=new-b", f"--target-namespace={kube.name}")
    assert r.returncode == 0, r.stderr.decode()
    st = rb(kube)["status"]
    assert entries(st) == [("new-b", 1, "Succeeded", [("b", "Succeeded")])] and st["phase"] == "Running"
    assert st["members"][0]["stats"][0]["duration"] == "3.1s"

    r = update_status(stash_restore_output(tmp_path / "out-a", "new-a", "a"))  # the member from output.json's ref
    assert r.returncode == 0, r.stderr.decode()
    st = rb(kube)["status"]
    assert entries(st) == [("new-a", 1, "Succeeded", [("a", "Succeeded")]),
                           ("new-b", 1, "Succeeded", [("b", "Succeeded")])]
    assert st["phase"] == "Succeeded" and st["sessionDuration"]
    assert sorted(e["message"] for e in kube.events()) == ['restore succeeded for host "a"',
                                                           'restore succeeded for host "b"']
    assert value(gateway, f"restorebatch-{kube.name}-rb", "stash_appscode_com_restoresession_success") == 1

    r = update_status(str(tmp_path / "out-a"), "--target-name=nope")
    assert r.returncode == 2 and "--target-name=nope: RestoreBatch" in r.stderr.decode()


def test_run_hook_runs_the_global_and_the_members_hooks(kube, tmp_path, repo_dir, hook_target):
    port = hook_target.port
    batch = restore_batch(
        [member("new-a", "a", hooks={"preRestore": http_get(port, "/a/pre")}), member("new-b", "b")],
        hooks={"preRestore": http_get(port, "/global-pre"),
               "postRestore": http_post(port, "/global-post", "{{ .Invoker.Kind }} {{ .Name }} {{ .Status.Phase }}")})
    kc = seed_targets(kube, tmp_path, repo_dir, {}, batch)

    def run_hook(*args: str):
        return runner("run-hook", f"--namespace={kube.name}", f"--kubeconfig={kc}", "--backupsession=",
                      "--invoker-kind=RestoreBatch", "--invoker-name=rb", *args)

    for _ in range(2):  # recorded: the second run does not run it again
        r = run_hook("--hook-type=preRestore")
        assert r.returncode == 0, r.stderr.decode()
    r = run_hook("--target-kind=AppBinding", "--target-name=new-a", f"--target-namespace={kube.name}",
                 "--hook-type=preRestore")
    assert r.returncode == 0, r.stderr.decode()
    r = run_hook("--hook-type=postRestore")
    assert r.returncode == 0, r.stderr.decode()
    assert hook_target.paths() == ["GET /global-pre", "GET /a/pre", "POST /global-post"]
    assert hook_target.requests[2]["body"] == "RestoreBatch rb Succeeded"
    st = rb(kube)["status"]
    assert conditions(st) == {"GlobalPreRestoreHookSucceeded": "True", "GlobalPostRestoreHookSucceeded": "True"}
    [entry] = st["members"]
    assert entry["ref"]["name"] == "new-a" and conditions(entry) == {"PreRestoreHookExecutionSucceeded": "True"}

    hook_target.status["/a/pre"] = 500
    kube.put({**rb(kube), "status": {}}, "status")  # a fresh run of the batch
    r = run_hook("--target-name=new-a", "--hook-type=preRestore")
    assert r.returncode == 11 and b"preRestore hook failed" in r.stderr
    [entry] = rb(kube)["status"]["members"]
    assert entry["phase"] == "Failed" and conditions(entry) == {"PreRestoreHookExecutionSucceeded": "False"}
    r = run_hook("--hook-type=postBackup")
    assert r.returncode == 2 and b"a RestoreBatch's hooks are preRestore or postRestore" in r.stderr
