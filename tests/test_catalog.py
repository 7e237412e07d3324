"""deploy/catalog (Stash's catalog Functions and Tasks with our images), deploy/examples and deploy/rbac.yaml.

1. End to end, per database (PostgreSQL, MongoDB on FerretDB, Elasticsearch 8 with security and TLS): every step
   of the backup Task and then of the restore Task is rendered as Stash's operator renders it (envsubst of the
   Function with the step's params and the operator's variables, which it builds from the invoker, the session and
   the Repository) and run for real; the Job's ``/stash-tmp`` emptyDir and the interim volume are temporary
   directories. restic checks the repository, the restored data equals the source, and the sessions' phases in
   the real kube-apiserver are Succeeded.
2. Every Function's args: each flag is one our CLI takes (the args parse, rendered), they are Stash's catalog args
   flag by flag, and each ``${VAR}`` is one the operator provides (its variables, or a Task/step param).
3. The catalog and the examples are applied to the real kube-apiserver with kubectl's strict field validation
   (deploy/crds has the Function and Task CRDs), and accepted; misspelt or mistyped fields are refused. rbac.yaml
   applies as written into a namespace, and its ServiceAccount gets exactly the Role's rights.
"""

from __future__ import annotations

import copy
import json
import os
import re

import click
import pytest
import yaml

from stash_runner.cli.main import cli

from .esdata import delete
from .esdata import seed as es_seed
from .esservers import start_search_server
from .helpers import REPO_PASSWORD, objects_yaml, restic
from .kubecluster import KINDS, ApiStatus, Namespace, path_of
from .test_elasticsearch import SEEDED, _assert_same, _before, es_objects
from .test_mongodb import drop_all, index_specs, mongo_objects, raw_documents
from .test_session import ROOT, envsubst, manifests, run_task, session, task_steps, value

STASH = ("stash.appscode.com", "v1beta1")
EXAMPLES = os.path.join(ROOT, "deploy", "examples")
APPBINDING_API = "appcatalog.appscode.com/v1alpha1"

#: What Stash's operator substitutes into a Task's Functions (stash pkg/resolver/task.go, pkg/util): its own
#: variables, for every Job.
OPERATOR_VARS = frozenset({
    "NAMESPACE", "BACKUP_SESSION", "RESTORE_SESSION",
    "REPOSITORY_NAME", "REPOSITORY_NAMESPACE", "REPOSITORY_PROVIDER", "REPOSITORY_BUCKET", "REPOSITORY_PREFIX",
    "REPOSITORY_ENDPOINT", "REPOSITORY_REGION", "REPOSITORY_INSECURE_TLS", "REPOSITORY_SECRET_NAME",
    "REPOSITORY_SECRET_NAMESPACE", "MAX_CONNECTIONS", "HOSTNAME", "SOURCE_HOSTNAME", "INTERIM_DATA_DIR",
    "TARGET_NAME", "TARGET_KIND", "TARGET_NAMESPACE", "TARGET_PATHS", "TARGET_MOUNT_PATH", "TARGET_APP_REPLICAS",
    "INVOKER_KIND", "INVOKER_NAME", "RESTORE_PATHS", "RESTORE_SNAPSHOTS", "INCLUDE_PATTERNS", "EXCLUDE_PATTERNS",
    "DRIVER_ARGS", "RETENTION_KEEP_LAST", "RETENTION_KEEP_HOURLY", "RETENTION_KEEP_DAILY", "RETENTION_KEEP_WEEKLY",
    "RETENTION_KEEP_MONTHLY", "RETENTION_KEEP_YEARLY", "RETENTION_KEEP_TAGS", "RETENTION_PRUNE",
    "RETENTION_DRY_RUN", "ENABLE_CACHE", "PROMETHEUS_PUSHGATEWAY_URL", "PROMETHEUS_JOB_NAME", "LICENSE_APISERVICE",
})
#: Set by the operator for its hook containers (HOOK_TYPE=preBackup|postBackup|preRestore|postRestore).
HOOK_VARS = frozenset({"HOOK_TYPE"})
#: The invoker's task.params that Stash's catalog Functions read (each with a default there): the operator
#: substitutes every task.params name.
INVOKER_PARAMS = frozenset({"args", "backupCMD", "waitTimeout", "user", "authenticationDatabase", "MAX_CONCURRENCY",
                            "ENABLE_DASHBOARD_BACKUP", "ENABLE_DASHBOARD_RESTORE"})

# -- Stash's catalog args, flag by flag (stashed/installer catalog/raw/<db>/<version>/*-function.yaml: postgres
#    16.1, mongodb 6.0.5, elasticsearch 8.2.0; the update-status Function of stash pkg/util/crds.go) ---------------
_STORAGE = ["--provider=${REPOSITORY_PROVIDER:=}", "--bucket=${REPOSITORY_BUCKET:=}",
            "--endpoint=${REPOSITORY_ENDPOINT:=}", "--insecure-tls=${REPOSITORY_INSECURE_TLS:=}",
            "--region=${REPOSITORY_REGION:=}", "--path=${REPOSITORY_PREFIX:=}",
            "--storage-secret-name=${REPOSITORY_SECRET_NAME:=}",
            "--storage-secret-namespace=${REPOSITORY_SECRET_NAMESPACE:=}", "--scratch-dir=/stash-tmp"]
_CACHE = ["--enable-cache=${ENABLE_CACHE:=true}", "--max-connections=${MAX_CONNECTIONS:=0}"]
_TARGET = ["--namespace=${NAMESPACE:=default}", "--appbinding=${TARGET_NAME:=}",
           "--appbinding-namespace=${TARGET_NAMESPACE:=}"]
_RETENTION = [f"--retention-keep-{k}=${{RETENTION_KEEP_{k.upper()}:=0}}"
              for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly")] + [
    "--retention-keep-tags=${RETENTION_KEEP_TAGS:=}", "--retention-prune=${RETENTION_PRUNE:=false}",
    "--retention-dry-run=${RETENTION_DRY_RUN:=false}"]
_LICENSE = ["--license-apiservice=${LICENSE_APISERVICE:=}"]
STASH_ARGS: dict[str, list[str]] = {
    "postgres-backup": ["backup-pg", *_STORAGE, *_CACHE, "--hostname=${HOSTNAME:=}",
                        "--backup-cmd=${backupCMD:=pg_dumpall}", "--pg-args=${args:=}",
                        "--wait-timeout=${waitTimeout:=300}", *_TARGET, "--backupsession=${BACKUP_SESSION:=}",
                        *_RETENTION, "--output-dir=${outputDir:=}", *_LICENSE, "--user=${user:=}"],
    "postgres-restore": ["restore-pg", *_STORAGE, *_CACHE, "--hostname=${HOSTNAME:=}",
                         "--source-hostname=${SOURCE_HOSTNAME:=}", "--pg-args=${args:=}",
                         "--wait-timeout=${waitTimeout:=300}", *_TARGET, "--snapshot=${RESTORE_SNAPSHOTS:=}",
                         "--output-dir=${outputDir:=}", *_LICENSE, "--user=${user:=}"],
    "mongodb-backup": ["backup-mongo", *_STORAGE, *_CACHE, "--hostname=${HOSTNAME:=}", "--mongo-args=${args:=}",
                       "--max-concurrency=${MAX_CONCURRENCY:=3}", "--wait-timeout=${waitTimeout:=300}", *_TARGET,
                       "--backupsession=${BACKUP_SESSION:=}", *_RETENTION, "--output-dir=${outputDir:=}",
                       *_LICENSE, "--authentication-database=${authenticationDatabase:=admin}"],
    "mongodb-restore": ["restore-mongo", *_STORAGE, "--enable-cache=false", "--max-connections=${MAX_CONNECTIONS:=0}",
                        "--hostname=${HOSTNAME:=}", "--source-hostname=${SOURCE_HOSTNAME:=}",
                        "--mongo-args=${args:=}", "--max-concurrency=${MAX_CONCURRENCY:=3}",
                        "--wait-timeout=${waitTimeout:=300}", *_TARGET, "--restoresession=${RESTORE_SESSION:=}",
                        "--snapshot=${RESTORE_SNAPSHOTS:=}", "--output-dir=${outputDir:=}", *_LICENSE,
                        "--authentication-database=${authenticationDatabase:=admin}"],
    "elasticsearch-backup": ["backup-es", *_STORAGE, *_CACHE, "--wait-timeout=${waitTimeout:=300}",
                             "--hostname=${HOSTNAME:=}", "--interim-data-dir=${INTERIM_DATA_DIR}", *_TARGET,
                             "--backupsession=${BACKUP_SESSION:=}", "--es-args=${args:=}", *_RETENTION,
                             "--output-dir=${outputDir:=}", *_LICENSE,
                             "--enable-dashboard-backup=${ENABLE_DASHBOARD_BACKUP:=false}"],
    "elasticsearch-restore": ["restore-es", *_STORAGE, *_CACHE, "--wait-timeout=${waitTimeout:=300}",
                              "--hostname=${HOSTNAME:=}", "--source-hostname=${SOURCE_HOSTNAME:=}",
                              "--interim-data-dir=${INTERIM_DATA_DIR}", *_TARGET,
                              "--snapshot=${RESTORE_SNAPSHOTS:=}", "--es-args=${args:=}",
                              "--output-dir=${outputDir:=}", *_LICENSE,
                              "--enable-dashboard-restore=${ENABLE_DASHBOARD_RESTORE:=false}"],
    # the operator writes its own Pushgateway's URL in; ours takes it from the operator's variable
    "update-status": ["update-status", "--provider=${REPOSITORY_PROVIDER:=}", "--bucket=${REPOSITORY_BUCKET:=}",
                      "--endpoint=${REPOSITORY_ENDPOINT:=}", "--insecure-tls=${REPOSITORY_INSECURE_TLS:=}",
                      "--region=${REPOSITORY_REGION:=}", "--path=${REPOSITORY_PREFIX:=}", *_CACHE,
                      "--namespace=${NAMESPACE:=default}", "--backupsession=${BACKUP_SESSION:=}",
                      "--storage-secret-name=${REPOSITORY_SECRET_NAME}",
                      "--storage-secret-namespace=${REPOSITORY_SECRET_NAMESPACE}", "--invoker-kind=${INVOKER_KIND:=}",
                      "--invoker-name=${INVOKER_NAME:=}", "--target-kind=${TARGET_KIND:=}",
                      "--target-name=${TARGET_NAME:=}", "--target-namespace=${TARGET_NAMESPACE:=}",
                      "--output-dir=${outputDir:=}", "--metrics-enabled=true", "--scratch-dir=/stash-tmp",
                      "--metrics-pushgateway-url=${PROMETHEUS_PUSHGATEWAY_URL:=}"],
}
#: Stash's name -> ours (Stash's names carry the database version: postgres-backup-16.1)
OURS = {stash: f"stash-runner-{stash}" for stash in STASH_ARGS}
IMAGES = {"postgres": "stash-runner-postgres:0.1.0", "mongodb": "stash-runner-mongodb:0.1.0",
          "elasticsearch": "stash-runner-elasticsearch:0.1.0", "update": "stash-runner:0.1.0",
          "run": "stash-runner:0.1.0"}
_VAR = re.compile(r"\$\{(\w+)(:=[^}]*)?\}")


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def catalog() -> tuple[dict, dict]:
    """deploy/catalog's Functions and Tasks, each by (kind, name)."""
    objs = manifests()
    return ({k: v for k, v in objs.items() if k[0] == "Function"}, {k: v for k, v in objs.items() if k[0] == "Task"})


def examples() -> dict[str, list[dict]]:
    return {name: load(os.path.join(EXAMPLES, name)) for name in sorted(os.listdir(EXAMPLES)) if name.endswith(".yaml")}


# -- the operator ------------------------------------------------------------------------------------------------

def operator_vars(kube: Namespace, invoker: dict, repository: dict, *, hostname: str = "host-0",
                  interim: str = "", gateway=None) -> dict[str, str]:
    """The variables Stash's operator gives a Job of ``invoker`` (a BackupConfiguration or a RestoreSession), from
    the objects as it reads them: the Repository's backend, the target, the retention policy (only what is set, as
    the operator), the session, the rule for ``hostname`` and the invoker's task.params."""
    spec = invoker["spec"]
    backend = repository["spec"]["backend"]
    if "local" not in backend:
        raise AssertionError("these tests use local Repositories")
    ref = spec["target"]["ref"]
    env = {"NAMESPACE": kube.name, "REPOSITORY_NAME": repository["metadata"]["name"],
           "REPOSITORY_NAMESPACE": kube.name, "REPOSITORY_PROVIDER": "local",
           "REPOSITORY_BUCKET": backend["local"]["mountPath"], "REPOSITORY_PREFIX": backend["local"].get("subPath", ""),
           "REPOSITORY_SECRET_NAME": backend["storageSecretName"], "REPOSITORY_SECRET_NAMESPACE": kube.name,
           "HOSTNAME": hostname, "TARGET_KIND": ref["kind"], "TARGET_NAME": ref["name"],
           "TARGET_NAMESPACE": ref.get("namespace") or kube.name, "TARGET_APP_REPLICAS": "1",
           "INVOKER_KIND": invoker["kind"], "INVOKER_NAME": invoker["metadata"]["name"], "ENABLE_CACHE": "true",
           "PROMETHEUS_JOB_NAME": invoker["metadata"]["name"], "LICENSE_APISERVICE": ""}
    if gateway is not None:
        env["PROMETHEUS_PUSHGATEWAY_URL"] = gateway.url
    if interim:
        env["INTERIM_DATA_DIR"] = interim
    if invoker["kind"] == "RestoreSession":
        rules = spec["target"].get("rules") or []
        rule = next((r for r in rules if hostname in (r.get("targetHosts") or [])),
                    next((r for r in rules if not r.get("targetHosts")), {}))
        env.update(RESTORE_SESSION=invoker["metadata"]["name"], SOURCE_HOSTNAME=rule.get("sourceHost") or hostname,
                   RESTORE_SNAPSHOTS=",".join(rule.get("snapshots") or []))
    else:
        policy = spec.get("retentionPolicy") or {}
        for key in ("Last", "Hourly", "Daily", "Weekly", "Monthly", "Yearly"):
            if policy.get(f"keep{key}", 0) > 0:
                env[f"RETENTION_KEEP_{key.upper()}"] = str(policy[f"keep{key}"])
        if policy.get("keepTags"):
            env["RETENTION_KEEP_TAGS"] = ",".join(policy["keepTags"])
        for key, var in (("prune", "RETENTION_PRUNE"), ("dryRun", "RETENTION_DRY_RUN")):
            if policy.get(key):
                env[var] = "true"
    for p in (spec.get("task") or {}).get("params") or []:
        env[p["name"]] = p["value"]
    return env


def run_job(kube: Namespace, tmp_path, task_name: str, env: dict[str, str], monkeypatch) -> list[tuple[str, list]]:
    """The Job of ``task_name``: its steps in order, in a scratch directory of its own (the Job's emptyDir), with
    the cluster found through KUBECONFIG as a Job's pod finds it in-cluster. Returns the rendered steps."""
    functions, tasks = catalog()
    scratch = tmp_path / f"job-{task_name}"
    scratch.mkdir()
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig(str(tmp_path / "kubeconfig")))
    steps = run_task(tasks[("Task", task_name)], functions, env, str(scratch))
    for _, args in steps:
        assert not [a for a in args if "${" in a or "/stash-tmp" in a], args
    return steps


def phase(kube: Namespace, plural: str, name: str) -> str:
    return kube.get(*STASH, plural, name)["status"]["phase"]


def backup_configuration(name: str, task: str, appbinding: str, params: list | None = None) -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": name},
            "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                     "target": {"ref": {"apiVersion": APPBINDING_API, "kind": "AppBinding", "name": appbinding}},
                     "task": {"name": task, "params": params or []}, "retentionPolicy": {"name": "k", "keepLast": 3}}}


def restore_session(name: str, task: str, appbinding: str, rules: list[dict]) -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": name},
            "spec": {"repository": {"name": "repo"}, "task": {"name": task},
                     "target": {"ref": {"apiVersion": APPBINDING_API, "kind": "AppBinding", "name": appbinding},
                                "rules": rules}}}


def repository(kube: Namespace, name: str = "repo") -> dict:
    return kube.get("stash.appscode.com", "v1alpha1", "repositories", name)


# -- 1. end to end -----------------------------------------------------------------------------------------------

def test_postgres_tasks_back_up_and_restore_with_the_examples(kube, source_pg, fresh_pg, repo_dir, tmp_path,
                                                             gateway, monkeypatch):
    """deploy/examples' AppBinding, Repository, BackupConfiguration and RestoreSession (the database, the storage
    and the restore target made local), run by the operator's rendering of stash-runner-postgres-backup and
    -restore."""
    ex = examples()
    objs = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for name in (
        "postgres-appbinding.yaml", "repository.yaml", "backupconfiguration.yaml", "restoresession.yaml")
        for o in ex[name]}
    objs[("AppBinding", "pg")]["spec"]["clientConfig"] = {"url": source_pg.url}
    objs[("Secret", "pg-auth")]["stringData"]["password"] = source_pg.password
    objs[("Repository", "s3-repo")]["spec"]["backend"] = {"local": {"mountPath": repo_dir},
                                                          "storageSecretName": "s3-secret"}
    objs[("Secret", "s3-secret")]["stringData"] = {"RESTIC_PASSWORD": REPO_PASSWORD}
    rs = objs[("RestoreSession", "pg-restore")]
    rs["spec"]["target"]["ref"]["name"] = "pg-restored"  # into a fresh cluster
    target = fresh_pg()
    kube.load_fixtures(objects_yaml(str(tmp_path / "restored.yaml"), cluster=target, appbinding="pg-restored"))
    bc = objs[("BackupConfiguration", "pg-backup")]
    kube.seed(*objs.values(), session("s1", invoker_name="pg-backup"))
    repo = repository(kube, "s3-repo")

    env = operator_vars(kube, bc, repo, gateway=gateway)
    [(_, backup), _] = run_job(kube, tmp_path, "stash-runner-postgres-backup", {**env, "BACKUP_SESSION": "s1"},
                               monkeypatch)
    # the invoker's Task params and retention reached the step's flags
    assert {"--pg-args=--quote-all-identifiers", "--backup-cmd=pg_dumpall", "--retention-keep-last=5",
            "--retention-prune=true"} <= set(backup)
    assert phase(kube, "backupsessions", "s1") == "Succeeded"
    restic(repo_dir, "check", "--read-data")
    [snap] = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert (snap["hostname"], snap["paths"]) == ("host-0", ["/dumpfile.sql"])
    assert b'ALTER ROLE "postgres"' in restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout

    run_job(kube, tmp_path, "stash-runner-postgres-restore", operator_vars(kube, rs, repo, gateway=gateway),
            monkeypatch)
    assert target.contents() == source_pg.contents()
    # restore-pg names no session (as Stash's): update-status reported it
    assert phase(kube, "restoresessions", "pg-restore") == "Succeeded"
    assert value(gateway, f"restoresession-{kube.name}-pg-restore", "stash_appscode_com_restoresession_success") == 1


def test_mongodb_tasks_back_up_and_restore(kube, ferretdb, repo_dir, tmp_path, gateway, monkeypatch):
    client = ferretdb.client()
    drop_all(client)
    shop = client["shop"]
    shop["orders"].insert_many([{"_id": i, "item": f"sku-{i % 17}", "qty": i * 3, "price": i / 4,
                                 "lines": [{"n": j} for j in range(i % 4)]} for i in range(500)])
    shop["orders"].create_index([("item", 1), ("qty", -1)], name="item_qty")
    shop["customers"].insert_many([{"name": f"Kundé {i}", "vip": i % 5 == 0} for i in range(40)])
    namespaces = ("shop.orders", "shop.customers")
    before = {ns: (raw_documents(client, ns), index_specs(client, ns)) for ns in namespaces}

    kube.load_fixtures(mongo_objects(str(tmp_path / "mg.yaml"), ferretdb, repo_dir=repo_dir))
    bc = backup_configuration("mg-backup", "stash-runner-mongodb-backup", "mg",
                              [{"name": "authenticationDatabase", "value": "admin"}])
    rs = restore_session("mg-restore", "stash-runner-mongodb-restore", "mg", [{"sourceHost": "host-0"}])
    kube.seed(bc, session("s1", invoker_name="mg-backup"))
    repo = repository(kube)

    run_job(kube, tmp_path, "stash-runner-mongodb-backup",
            {**operator_vars(kube, bc, repo, gateway=gateway), "BACKUP_SESSION": "s1"}, monkeypatch)
    assert phase(kube, "backupsessions", "s1") == "Succeeded"
    restic(repo_dir, "check", "--read-data")
    [snap] = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert (snap["hostname"], snap["paths"]) == ("host-0", ["/dump"])

    drop_all(client)
    kube.seed(rs)
    run_job(kube, tmp_path, "stash-runner-mongodb-restore", operator_vars(kube, rs, repo, gateway=gateway),
            monkeypatch)
    assert {ns: (raw_documents(client, ns), index_specs(client, ns)) for ns in namespaces} == before
    assert phase(kube, "restoresessions", "mg-restore") == "Succeeded"


@pytest.fixture(scope="module")
def es(tmp_path_factory):
    """Elasticsearch 8 with security and TLS (as KubeDB runs it), with the test data of tests/esdata.py."""
    server = start_search_server("es8", str(tmp_path_factory.mktemp("es8")), security=True, tls=True)
    try:
        es_seed(server, big=3000)
        yield server
    finally:
        server.stop()


def test_elasticsearch_tasks_back_up_and_restore_through_the_interim_volume(kube, es, repo_dir, tmp_path, gateway,
                                                                            monkeypatch):
    before = _before(es)
    kube.load_fixtures(es_objects(str(tmp_path / "es.yaml"), es, repo_dir=repo_dir))
    bc = backup_configuration("es-backup", "stash-runner-elasticsearch-backup", "es")
    rs = restore_session("es-restore", "stash-runner-elasticsearch-restore", "es", [{"snapshots": ["latest"]}])
    kube.seed(bc, session("s1", invoker_name="es-backup"))
    repo = repository(kube)
    interim = tmp_path / "interim-volume" / "data"  # the interim volume the operator mounts
    interim.mkdir(parents=True)

    run_job(kube, tmp_path, "stash-runner-elasticsearch-backup",
            {**operator_vars(kube, bc, repo, interim=str(interim), gateway=gateway), "BACKUP_SESSION": "s1"},
            monkeypatch)
    assert phase(kube, "backupsessions", "s1") == "Succeeded"
    restic(repo_dir, "check", "--read-data")
    [snap] = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert (snap["hostname"], snap["paths"]) == ("host-0", [str(interim)])

    delete(es, *SEEDED)
    kube.seed(rs)
    run_job(kube, tmp_path, "stash-runner-elasticsearch-restore",
            operator_vars(kube, rs, repo, interim=str(interim), gateway=gateway), monkeypatch)
    _assert_same(es, before, exact=False)  # multielasticdump holds numbers as JavaScript does
    assert phase(kube, "restoresessions", "es-restore") == "Succeeded"


# -- 2. the args -------------------------------------------------------------------------------------------------

def _every_var() -> dict[str, str]:
    """A value for every variable the operator may give, and every param: the args rendered with them must parse."""
    env = {v: "" for v in OPERATOR_VARS}
    env.update(NAMESPACE="demo", BACKUP_SESSION="s1", REPOSITORY_PROVIDER="s3", REPOSITORY_BUCKET="b",
               REPOSITORY_ENDPOINT="https://s3.example.com", REPOSITORY_INSECURE_TLS="false",
               REPOSITORY_REGION="us-east-1", REPOSITORY_PREFIX="p", REPOSITORY_SECRET_NAME="s3-secret",
               REPOSITORY_SECRET_NAMESPACE="demo", MAX_CONNECTIONS="4", HOSTNAME="host-0", SOURCE_HOSTNAME="host-0",
               INTERIM_DATA_DIR="/interim/data", TARGET_NAME="db", TARGET_KIND="AppBinding", TARGET_NAMESPACE="demo",
               INVOKER_KIND="BackupConfiguration", INVOKER_NAME="db-backup", RESTORE_SNAPSHOTS="latest",
               RETENTION_KEEP_LAST="5", RETENTION_KEEP_TAGS="a,b", RETENTION_PRUNE="true", ENABLE_CACHE="true",
               PROMETHEUS_PUSHGATEWAY_URL="http://stash.kube-system.svc:56789", PROMETHEUS_JOB_NAME="db-backup",
               HOOK_TYPE="preBackup", args="", waitTimeout="120", user="", authenticationDatabase="admin")
    return env


def test_every_function_is_stashs_with_our_image_and_every_flag_parses():
    functions, tasks = catalog()
    names = {name for _, name in functions}
    assert names == {*OURS.values(), "stash-runner-run-hook"}
    for stash_name, ours in OURS.items():
        fn = functions[("Function", ours)]
        assert fn["spec"]["args"] == STASH_ARGS[stash_name], ours
        assert fn["spec"]["image"] == IMAGES[stash_name.split("-")[0]], ours
        assert set(fn["spec"]) == {"image", "args"}  # no volumes, env or securityContext, as Stash's
    assert functions[("Function", "stash-runner-run-hook")]["spec"]["image"] == IMAGES["run"]

    for (_, name), fn in functions.items():
        args = fn["spec"]["args"]
        command = cli.commands[args[0]]
        known = {opt for p in command.params for opt in p.opts + p.secondary_opts}
        flags = [a.split("=", 1)[0] for a in args[1:]]
        assert all(a.startswith("--") and "=" in a for a in args[1:]), name  # one --flag=value each, as cobra
        assert [f for f in flags if f not in known] == [], f"{name}: flags our CLI lacks"
        assert len(set(flags)) == len(flags), name
        rendered = [envsubst(a, _every_var()) for a in args]
        with click.Context(cli) as parent:  # parse only: the command's body does not run
            command.make_context(args[0], rendered[1:], parent=parent)
        # the defaults alone parse too (every variable unset), but run-hook's, which needs its HOOK_TYPE
        if name != "stash-runner-run-hook":
            with click.Context(cli) as parent:
                command.make_context(args[0], [envsubst(a, {}) for a in args[1:]], parent=parent)


def test_every_variable_is_one_the_operator_provides():
    functions, tasks = catalog()
    step_params: dict[str, set[str]] = {}
    for (_, task_name), task in tasks.items():
        assert task_name in OURS.values(), task_name
        steps = task["spec"]["steps"]
        # Stash's shape: [the database step, update-status], both with outputDir=/stash-tmp/output
        assert [s["name"] for s in steps] == [task_name, "stash-runner-update-status"]
        for s in steps:
            assert s["params"] == [{"name": "outputDir", "value": "/stash-tmp/output"}]
            step_params.setdefault(s["name"], set()).update(p["name"] for p in s["params"])
        assert set(task["spec"]) == {"steps"}
    assert set(step_params) | {"stash-runner-run-hook"} == {name for _, name in functions}

    for (_, name), fn in functions.items():
        text = json.dumps(fn)  # the operator substitutes the whole Function
        used = {m.group(1) for m in _VAR.finditer(text)}
        allowed = OPERATOR_VARS | INVOKER_PARAMS | step_params.get(name, set())
        if name == "stash-runner-run-hook":
            allowed |= HOOK_VARS | {"outputDir"}
        assert used - allowed == set(), name
        # no default only where Stash's have none: what the operator always sets (and the interim volume's dir)
        bare = {m.group(1) for m in _VAR.finditer(text) if not m.group(2)}
        assert bare <= {"INTERIM_DATA_DIR", "REPOSITORY_SECRET_NAME", "REPOSITORY_SECRET_NAMESPACE"}, name
        assert "$" not in _VAR.sub("", text), name  # nothing envsubst would read differently ($VAR, ${VAR:-x})

    # rendered for a Job, nothing is left of the variables and /stash-tmp is the Job's scratch dir
    for task in tasks.values():
        for _, args in task_steps(task, functions, _every_var(), "/scratch"):
            assert not [a for a in args if "$" in a or "/stash-tmp" in a]
            assert "--output-dir=/scratch/output" in args


# -- 3. applied to the API server ---------------------------------------------------------------------------------

def strict_create(kube: Namespace, obj: dict) -> dict:
    """``kubectl apply -n <ns>``'s create: strict field validation (a field the schema does not have is an error),
    the namespace from -n for namespaced kinds."""
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = {"Function": "functions", "Task": "tasks"}.get(obj["kind"])
    namespaced = plural is None
    if namespaced:
        plural = KINDS[obj["kind"]][2]
    obj = copy.deepcopy(obj)
    if namespaced:
        obj["metadata"]["namespace"] = kube.name
    path = path_of(group, version, plural, kube.name if namespaced else None) + "?fieldValidation=Strict"
    return kube.plane.call("POST", path, obj)


def rejected(kube: Namespace, obj: dict) -> str:
    with pytest.raises(ApiStatus) as e:
        strict_create(kube, obj)
    assert e.value.code in (400, 422), e.value
    return e.value.body["message"]


def test_the_catalog_and_the_examples_are_accepted_and_wrong_fields_refused(kube):
    functions, tasks = catalog()
    created: list[str] = []
    try:
        for obj in [*functions.values(), *tasks.values()]:
            got = strict_create(kube, obj)
            created.append(path_of(*STASH, got["kind"].lower() + "s", None, got["metadata"]["name"]))
            assert got["spec"] == obj["spec"], obj["metadata"]["name"]  # nothing pruned
            assert "namespace" not in got["metadata"]  # cluster-scoped, as Stash's
        for name, docs in examples().items():
            for obj in docs:
                assert "namespace" not in obj["metadata"], name  # applied with -n
                got = strict_create(kube, obj)
                if "spec" in obj:
                    assert got["spec"] == obj["spec"], f"{name}: {obj['kind']}"
        # the Tasks' steps name Functions that exist, and the examples name Tasks that exist
        listed = kube.plane.call("GET", path_of(*STASH, "functions", None))["items"]
        assert {s["name"] for t in tasks.values() for s in t["spec"]["steps"]} <= {f["metadata"]["name"]
                                                                                    for f in listed}
        invokers = [o for docs in examples().values() for o in docs
                    if o["kind"] in ("BackupConfiguration", "RestoreSession", "BackupBatch")]
        named = {o["spec"]["task"]["name"] for o in invokers if "task" in o["spec"]} | {
            m["task"]["name"] for o in invokers for m in o["spec"].get("members", [])}
        assert named <= {name for _, name in tasks} and len(invokers) == 3

        # a misspelt field is refused, where the schema is closed: the Function's and Task's spec, and the top
        # level of every kind
        fn = copy.deepcopy(functions[("Function", "stash-runner-postgres-backup")])
        fn["metadata"]["name"] = "typo"
        fn["spec"]["arg"] = fn["spec"].pop("args")
        assert 'unknown field "spec.arg"' in rejected(kube, fn)
        task = copy.deepcopy(tasks[("Task", "stash-runner-postgres-backup")])
        task["metadata"]["name"] = "typo"
        task["spec"]["steps"][0]["parms"] = task["spec"]["steps"][0].pop("params")
        assert 'unknown field "spec.steps[0].parms"' in rejected(kube, task)
        fn = copy.deepcopy(functions[("Function", "stash-runner-postgres-backup")])
        fn["metadata"]["name"] = "no-image"
        del fn["spec"]["image"]
        assert "spec.image: Required value" in rejected(kube, fn)
        [bc] = examples()["backupconfiguration.yaml"]
        wrong = {**copy.deepcopy(bc), "metadata": {"name": "typo"}}
        wrong["spc"] = wrong.pop("spec")
        assert 'unknown field "spc"' in rejected(kube, wrong)
        # and a value of the wrong type, where the schema types it
        wrong = copy.deepcopy(bc)
        wrong["metadata"] = {"name": "typo"}
        wrong["spec"]["retentionPolicy"]["keepLast"] = "five"
        assert "spec.retentionPolicy.keepLast" in rejected(kube, wrong)
    finally:
        for path in created:
            kube.plane.request("DELETE", path)


def test_rbac_applies_into_any_namespace_and_grants_the_role_to_its_service_account(kube):
    """deploy/rbac.yaml as written (no namespace anywhere, the RoleBindings' subjects included) into the test's
    namespace: the ServiceAccount's token reads what the Role grants there, and nothing in another namespace."""
    docs = load(os.path.join(ROOT, "deploy", "rbac.yaml"))
    assert not [d for d in docs if "namespace" in d["metadata"]]
    assert not [s for d in docs for s in d.get("subjects") or [] if "namespace" in s]
    for obj in docs:
        strict_create(kube, obj)
    token = kube.plane.call("POST", path_of("", "v1", "serviceaccounts", kube.name, "stash-runner", "token"),
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"audiences": ["https://kubernetes.default.svc"]}})["status"]["token"]

    def code(path: str) -> int:
        return kube.plane.request("GET", path, token=token)[0]

    assert code(path_of("", "v1", "secrets", kube.name, "absent")) == 404  # allowed: not found
    assert code(path_of(*STASH, "backupsessions", kube.name, "absent")) == 404
    assert code(path_of("", "v1", "pods", kube.name, "absent")) == 404  # the exec-hooks Role
    assert code(path_of("", "v1", "configmaps", kube.name, "absent")) == 403  # not in the Role
    assert code(path_of("", "v1", "secrets", "default", "absent")) == 403  # another namespace

