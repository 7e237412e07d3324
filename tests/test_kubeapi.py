"""The test Kubernetes API server (tests/kubeapi.py) driven by the official ``kubernetes`` client over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from .kubeapi import JSON_PATCH, KubeAPIServer

STASH = "stash.appscode.com"
V1B1 = "v1beta1"
NS = "demo"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as s:
        yield s


def api_client(server: KubeAPIServer, token: str | None = None) -> client.ApiClient:
    cfg = client.Configuration(host=server.url)
    if token:
        cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


@pytest.fixture
def core(server: KubeAPIServer) -> client.CoreV1Api:
    return client.CoreV1Api(api_client(server))


@pytest.fixture
def custom(server: KubeAPIServer) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client(server))


def backup_session(name: str = "bs", *, labels: dict[str, str] | None = None, status: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": f"{STASH}/{V1B1}", "kind": "BackupSession",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"invoker": {"apiGroup": STASH, "kind": "BackupConfiguration", "name": "pg-backup"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status_of(e: ApiException) -> dict[str, Any]:
    body = json.loads(e.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == e.status
    return body


def get_bs(custom: client.CustomObjectsApi, name: str = "bs") -> dict[str, Any]:
    return custom.get_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", name)


# --- reads --------------------------------------------------------------------------------------------------------

def test_get_and_list_secrets(server: KubeAPIServer, core: client.CoreV1Api) -> None:
    server.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-cred", "namespace": NS},
                 "stringData": {"RESTIC_PASSWORD": "pw"}},
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": NS},
                 "data": {"k": "dg=="}},
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "elsewhere", "namespace": "kube-system"}})
    s = core.read_namespaced_secret("repo-cred", NS)
    assert s.data == {"RESTIC_PASSWORD": "cHc="} and s.type == "Opaque"  # stringData folded into data
    assert s.metadata.uid and s.metadata.creation_timestamp

    lst = core.list_namespaced_secret(NS)
    assert [i.metadata.name for i in lst.items] == ["other", "repo-cred"]
    assert lst.metadata.resource_version == str(server.resource_version) == "3"
    assert len(core.list_secret_for_all_namespaces().items) == 3
    assert [i.metadata.name for i in core.list_namespaced_secret(NS, field_selector="metadata.name=other").items] == [
        "other"]

    with pytest.raises(ApiException) as ei:
        core.read_namespaced_secret("nope", NS)
    assert ei.value.status == 404
    body = status_of(ei.value)
    assert body["reason"] == "NotFound" and body["message"] == 'secrets "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "secrets"}


def test_get_and_list_custom_objects(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session("bs-1", labels={"stash.appscode.com/invoker-name": "pg-backup"}),
                backup_session("bs-2", labels={"stash.appscode.com/invoker-name": "other"}),
                {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                 "metadata": {"name": "pg", "namespace": NS}, "spec": {"type": "postgres"}},
                {"apiVersion": f"{STASH}/v1alpha1", "kind": "Repository",
                 "metadata": {"name": "gcs-repo", "namespace": NS}, "spec": {"backend": {"gcs": {"bucket": "b"}}}})
    obj = get_bs(custom, "bs-1")
    assert obj["kind"] == "BackupSession" and obj["metadata"]["generation"] == 1

    lst = custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions")
    assert lst["kind"] == "BackupSessionList" and lst["apiVersion"] == f"{STASH}/{V1B1}"
    assert [i["metadata"]["name"] for i in lst["items"]] == ["bs-1", "bs-2"]
    assert lst["metadata"]["resourceVersion"] == str(server.resource_version)

    sel = custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions",
                                               label_selector="stash.appscode.com/invoker-name in (pg-backup)")
    assert [i["metadata"]["name"] for i in sel["items"]] == ["bs-1"]
    sel = custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions",
                                               label_selector="stash.appscode.com/invoker-name!=pg-backup")
    assert [i["metadata"]["name"] for i in sel["items"]] == ["bs-2"]

    ab = custom.get_namespaced_custom_object("appcatalog.appscode.com", "v1alpha1", NS, "appbindings", "pg")
    assert ab["spec"] == {"type": "postgres"}
    repo = custom.get_namespaced_custom_object(STASH, "v1alpha1", NS, "repositories", "gcs-repo")
    assert repo["spec"]["backend"]["gcs"]["bucket"] == "b"
    everywhere = custom.list_cluster_custom_object(STASH, V1B1, "backupsessions")
    assert len(everywhere["items"]) == 2


def test_list_pagination(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(*(backup_session(f"bs-{i}") for i in range(5)))
    names, token = [], None
    while True:
        page = custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", limit=2, _continue=token)
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert names == [f"bs-{i}" for i in range(5)]


def test_unknown_paths_are_404_status(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    for call in (lambda: custom.list_namespaced_custom_object(STASH, V1B1, NS, "nosuchthings"),
                 lambda: custom.get_namespaced_custom_object("nosuch.example.com", "v1", NS, "things", "x"),
                 # appbindings have no status subresource
                 lambda: custom.get_namespaced_custom_object_status("appcatalog.appscode.com", "v1alpha1", NS,
                                                                    "appbindings", "x")):
        with pytest.raises(ApiException) as ei:
            call()
        assert ei.value.status == 404
        body = status_of(ei.value)
        assert body["reason"] == "NotFound" and body["message"] == "the server could not find the requested resource"

    with pytest.raises(ApiException) as ei:
        get_bs(custom, "missing")
    body = status_of(ei.value)
    assert body["message"] == 'backupsessions.stash.appscode.com "missing" not found'
    assert body["details"] == {"name": "missing", "group": STASH, "kind": "backupsessions"}


# --- writes -------------------------------------------------------------------------------------------------------

def test_create_replace_delete_custom_object(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(STASH, V1B1, NS, "backupsessions",
                                                     backup_session(status={"phase": "Succeeded"}))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert meta["resourceVersion"] == "1"
    assert "status" not in created  # create cannot set status when the status subresource is on

    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", backup_session())
    assert ei.value.status == 409
    body = status_of(ei.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'backupsessions.stash.appscode.com "bs" already exists'

    created["spec"]["invoker"]["name"] = "changed"
    replaced = custom.replace_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", created)
    assert replaced["metadata"]["resourceVersion"] == "2" and replaced["metadata"]["generation"] == 2
    assert replaced["metadata"]["uid"] == meta["uid"]

    # a replace that changes nothing is not written
    same = custom.replace_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", replaced)
    assert same["metadata"]["resourceVersion"] == "2" and server.resource_version == 2

    # custom resources do not allow unconditional update
    no_rv = json.loads(json.dumps(replaced))
    del no_rv["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as ei:
        custom.replace_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", no_rv)
    assert ei.value.status == 422
    body = status_of(ei.value)
    assert body["reason"] == "Invalid" and "must be specified for an update" in body["message"]
    assert body["details"]["causes"][0]["field"] == "metadata.resourceVersion"

    deleted = custom.delete_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs")
    assert deleted["kind"] == "BackupSession" and deleted["metadata"]["name"] == "bs"  # CRs return the object
    assert deleted["metadata"]["resourceVersion"] == "3"  # a delete is a write too
    assert server.get(STASH, V1B1, "backupsessions", NS, "bs") is None
    with pytest.raises(ApiException) as ei:
        custom.delete_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs")
    assert ei.value.status == 404


def test_create_replace_delete_secret(server: KubeAPIServer, core: client.CoreV1Api) -> None:
    s = core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(generate_name="cred-"),
                                                          string_data={"a": "b"}))
    name = s.metadata.name
    assert name.startswith("cred-") and len(name) == len("cred-") + 5
    assert s.data == {"a": "Yg=="} and s.metadata.generation is None  # built-in: no generation tracking

    # built-in resources accept an update without resourceVersion (AllowUnconditionalUpdate)
    s2 = core.replace_namespaced_secret(name, NS, client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                                                  data={"a": "Yw=="}))
    assert s2.data == {"a": "Yw=="} and int(s2.metadata.resource_version) == int(s.metadata.resource_version) + 1
    assert s2.metadata.uid == s.metadata.uid

    # ... but not a stale one
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret(name, NS, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, resource_version=s.metadata.resource_version), data={}))
    assert ei.value.status == 409 and status_of(ei.value)["reason"] == "Conflict"

    # strategic merge patch is accepted for built-in resources
    s3 = core.patch_namespaced_secret(name, NS, {"metadata": {"labels": {"x": "y"}}})
    assert s3.metadata.labels == {"x": "y"} and s3.data == {"a": "Yw=="}
    assert server.requests[-1].content_type == "application/strategic-merge-patch+json"

    st = core.delete_namespaced_secret(name, NS)  # v37 types this answer as a plain object
    assert st["kind"] == "Status" and st["status"] == "Success"
    assert st["details"] == {"name": name, "kind": "secrets", "uid": s.metadata.uid}
    assert core.list_namespaced_secret(NS).items == []


def test_merge_patch(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session(labels={"keep": "1", "drop": "1"}))
    out = custom.patch_namespaced_custom_object(
        STASH, V1B1, NS, "backupsessions", "bs",
        {"metadata": {"labels": {"drop": None, "new": "2"}}, "spec": {"invoker": {"name": "other"}}})
    assert out["metadata"]["labels"] == {"keep": "1", "new": "2"}
    assert out["spec"]["invoker"] == {"apiGroup": STASH, "kind": "BackupConfiguration", "name": "other"}
    assert out["metadata"]["resourceVersion"] == "2" and out["metadata"]["generation"] == 2
    assert server.requests[-1].content_type == "application/merge-patch+json"

    # a label-only change is metadata: no new generation
    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                                {"metadata": {"labels": {"x": "y"}}})
    assert out["metadata"]["generation"] == 2 and out["metadata"]["resourceVersion"] == "3"
    # a patch that changes nothing keeps the resourceVersion
    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                                {"metadata": {"labels": {"x": "y"}}})
    assert out["metadata"]["resourceVersion"] == "3" and server.resource_version == 3


def test_json_patch(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session(labels={"a": "1"}))
    rv = get_bs(custom)["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},  # the usual conditional patch
        {"op": "add", "path": "/spec/targets", "value": [{"ref": {"name": "db"}}]},
        {"op": "add", "path": "/spec/targets/-", "value": {"ref": {"name": "db2"}}},
        {"op": "replace", "path": "/spec/invoker/name", "value": "x"},
        {"op": "copy", "from": "/spec/invoker/name", "path": "/metadata/labels/copied"},
        {"op": "move", "from": "/metadata/labels/a", "path": "/metadata/labels/b"},
        {"op": "remove", "path": "/spec/invoker/apiGroup"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "1"}},
        {"op": "test", "path": "/metadata/annotations/a~0b~1c", "value": "1"},
    ]
    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", ops,
                                                _content_type=JSON_PATCH)
    assert out["spec"] == {"invoker": {"kind": "BackupConfiguration", "name": "x"},
                           "targets": [{"ref": {"name": "db"}}, {"ref": {"name": "db2"}}]}
    assert out["metadata"]["labels"] == {"b": "1", "copied": "x"}
    assert server.requests[-1].content_type == JSON_PATCH

    # the same conditional patch again: its test op now fails -> 422 Invalid, nothing written
    before = server.resource_version
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                              [ops[0], {"op": "replace", "path": "/spec/invoker/name", "value": "y"}],
                                              _content_type=JSON_PATCH)
    assert ei.value.status == 422
    body = status_of(ei.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    assert get_bs(custom)["spec"]["invoker"]["name"] == "x" and server.resource_version == before

    # an op on a missing path fails the same way
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                              [{"op": "remove", "path": "/spec/nope"}], _content_type=JSON_PATCH)
    assert ei.value.status == 422
    # a JSON patch that is not a list is a 400 (raw HTTP: the client would resend it as a strategic merge patch)
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
    conn.request("PATCH", f"/apis/{STASH}/{V1B1}/namespaces/{NS}/backupsessions/bs", body=b'{"op": "remove"}',
                 headers={"Content-Type": JSON_PATCH})
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["reason"] == "BadRequest"
    conn.close()


def test_strategic_merge_patch_on_custom_resource_is_415(server: KubeAPIServer,
                                                         custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session())
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", {"spec": {}},
                                              _content_type="application/strategic-merge-patch+json")
    assert ei.value.status == 415
    body = status_of(ei.value)
    assert body["reason"] == "UnsupportedMediaType"
    assert body["message"] == ("the body of the request was in an unknown format - accepted media types include: "
                               "application/json-patch+json, application/merge-patch+json, "
                               "application/apply-patch+yaml")


def test_stale_resource_version_is_409(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session(status={"phase": "Running"}))
    stale = get_bs(custom)
    custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", {"metadata": {"labels": {"a": "b"}}})

    want = ('Operation cannot be fulfilled on backupsessions.stash.appscode.com "bs": the object has been modified; '
            "please apply your changes to the latest version and try again")
    calls = [
        lambda: custom.replace_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", stale),
        lambda: custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", stale),
        # a merge patch that carries metadata.resourceVersion is conditional too
        lambda: custom.patch_namespaced_custom_object_status(
            STASH, V1B1, NS, "backupsessions", "bs",
            {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "status": {"phase": "Failed"}}),
    ]
    for call in calls:
        with pytest.raises(ApiException) as ei:
            call()
        assert ei.value.status == 409
        body = status_of(ei.value)
        assert body["reason"] == "Conflict" and body["message"] == want
        assert body["details"] == {"name": "bs", "group": STASH, "kind": "backupsessions"}
    assert get_bs(custom)["status"] == {"phase": "Running"}


def test_status_subresource_is_kept_apart(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session(status={"phase": "Running"}))

    # the main resource ignores .status
    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                                {"spec": {"invoker": {"name": "n2"}}, "status": {"phase": "Failed"}})
    assert out["status"] == {"phase": "Running"} and out["spec"]["invoker"]["name"] == "n2"
    assert out["metadata"]["generation"] == 2
    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", {"status": None})
    assert out["status"] == {"phase": "Running"}

    # /status changes only .status (and the resourceVersion), whatever else the body says
    rv = int(out["metadata"]["resourceVersion"])
    out = custom.patch_namespaced_custom_object_status(
        STASH, V1B1, NS, "backupsessions", "bs",
        {"metadata": {"labels": {"sneaky": "1"}}, "spec": {"invoker": {"name": "n3"}},
         "status": {"phase": "Succeeded", "sessionDuration": "1m"}})
    assert out["status"] == {"phase": "Succeeded", "sessionDuration": "1m"}
    assert out["spec"]["invoker"]["name"] == "n2" and not out["metadata"].get("labels", {}).get("sneaky")
    assert out["metadata"]["generation"] == 2 and int(out["metadata"]["resourceVersion"]) == rv + 1

    # PUT /status with the whole object: same rule
    whole = custom.get_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs")
    assert whole["kind"] == "BackupSession" and whole["spec"]["invoker"]["name"] == "n2"  # GET /status: whole object
    whole["status"]["phase"] = "Failed"
    whole["spec"]["invoker"]["name"] = "ignored"
    out = custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", whole)
    assert out["status"]["phase"] == "Failed" and out["spec"]["invoker"]["name"] == "n2"

    # and a JSON patch on /status
    out = custom.patch_namespaced_custom_object_status(
        STASH, V1B1, NS, "backupsessions", "bs",
        [{"op": "test", "path": "/metadata/resourceVersion", "value": out["metadata"]["resourceVersion"]},
         {"op": "replace", "path": "/status/phase", "value": "Succeeded"}], _content_type=JSON_PATCH)
    assert out["status"]["phase"] == "Succeeded"
    stored = server.get(STASH, V1B1, "backupsessions", NS, "bs")
    assert stored is not None and stored["status"]["phase"] == "Succeeded"
    assert stored["spec"]["invoker"]["name"] == "n2"


def test_resource_version_is_one_global_counter(server: KubeAPIServer, core: client.CoreV1Api,
                                                custom: client.CustomObjectsApi) -> None:
    seen = []
    seen.append(custom.create_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", backup_session("a"))
                ["metadata"]["resourceVersion"])
    seen.append(core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="s")))
                .metadata.resource_version)
    seen.append(custom.create_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", backup_session("b"))
                ["metadata"]["resourceVersion"])
    get_bs(custom, "a")
    core.list_namespaced_secret(NS)  # reads do not count
    seen.append(custom.patch_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "a",
                                                             {"status": {"phase": "Running"}})
                ["metadata"]["resourceVersion"])
    assert seen == ["1", "2", "3", "4"]  # strings in JSON
    assert all(isinstance(v, str) for v in seen)
    assert custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions")["metadata"][
        "resourceVersion"] == "4"


def test_finalizers_delay_deletion(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed({**backup_session(), "metadata": {"name": "bs", "namespace": NS, "finalizers": ["stash/x"]}})
    out = custom.delete_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs")
    assert out["metadata"]["deletionTimestamp"]
    assert get_bs(custom)["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", {"metadata": {"finalizers": None}})
    assert server.get(STASH, V1B1, "backupsessions", NS, "bs") is None


def test_delete_preconditions_and_dry_run(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session())
    cur = get_bs(custom)
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="999"))
    with pytest.raises(ApiException) as ei:
        custom.delete_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", body=stale)
    assert ei.value.status == 409
    assert "Precondition failed: ResourceVersion in precondition: 999" in status_of(ei.value)["message"]

    out = custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs",
                                                {"spec": {"invoker": {"name": "dry"}}}, dry_run="All")
    assert out["spec"]["invoker"]["name"] == "dry" and get_bs(custom) == cur  # dryRun=All stores nothing

    ok = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=cur["metadata"]["uid"],
                                                                     resource_version=cur["metadata"]["resourceVersion"]))
    custom.delete_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", body=ok)
    assert server.get(STASH, V1B1, "backupsessions", NS, "bs") is None


def test_dynamic_client_discovery(server: KubeAPIServer, tmp_path: Any) -> None:
    server.seed(backup_session(status={"phase": "Pending"}))
    dyn = dynamic.DynamicClient(api_client(server), cache_file=str(tmp_path / "discovery.json"))
    sessions = dyn.resources.get(api_version=f"{STASH}/{V1B1}", kind="BackupSession")
    assert sessions.get(name="bs", namespace=NS).status.phase == "Pending"
    out = sessions.status.patch(body={"metadata": {"name": "bs"}, "status": {"phase": "Running"}}, namespace=NS,
                                content_type="application/merge-patch+json")
    assert out.status.phase == "Running"
    secrets = dyn.resources.get(api_version="v1", kind="Secret")
    assert secrets.namespaced and secrets.get(namespace=NS).items == []


# --- events -------------------------------------------------------------------------------------------------------

def test_events_create_and_list(server: KubeAPIServer, core: client.CoreV1Api) -> None:
    ref = client.V1ObjectReference(api_version=f"{STASH}/{V1B1}", kind="BackupSession", name="bs", namespace=NS)
    ev = core.create_namespaced_event(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="bs."), involved_object=ref, reason="BackupSucceeded",
        message="backup done", type="Normal", source=client.V1EventSource(component="stash-runner")))
    assert ev.metadata.name.startswith("bs.") and ev.involved_object.name == "bs"
    core.create_namespaced_event(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="other.1"), reason="X", type="Warning",
        involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace=NS)))

    got = core.list_namespaced_event(NS, field_selector="involvedObject.name=bs,involvedObject.kind=BackupSession")
    assert [(e.reason, e.message, e.source.component) for e in got.items] == [
        ("BackupSucceeded", "backup done", "stash-runner")]
    assert len(core.list_namespaced_event(NS, field_selector="type=Warning").items) == 1
    with pytest.raises(ApiException) as ei:
        core.list_namespaced_event(NS, field_selector="message=x")
    assert ei.value.status == 400

    # events.k8s.io/v1 serves the same events, converted
    ev1 = client.EventsV1Api(api_client(server))
    created = ev1.create_namespaced_event(NS, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="bs.2"), event_time=datetime.now(UTC), regarding=ref,
        note="second", reason="BackupSucceeded", type="Normal", action="Backup",
        reporting_controller="stash.appscode.com/runner", reporting_instance="runner-0"))
    assert created.note == "second" and created.regarding.name == "bs"
    as_core = core.read_namespaced_event("bs.2", NS)
    assert as_core.message == "second" and as_core.involved_object.kind == "BackupSession"
    assert as_core.reporting_component == "stash.appscode.com/runner"
    assert len(core.list_namespaced_event(NS).items) == 3
    listed = ev1.list_namespaced_event(NS, field_selector="metadata.name=bs.2")
    assert [e.note for e in listed.items] == ["second"]
    assert {e.get("note") for e in server.list_objects("events.k8s.io", "v1", "events", NS)} == {
        "backup done", "second", None}


# --- authorization ------------------------------------------------------------------------------------------------

def test_authorization(server: KubeAPIServer, tmp_path: Any) -> None:
    server.seed(backup_session())
    server.add_token("runner-token", "system:serviceaccount:demo:runner",
                     [("get", "backupsessions"), ("list", "backupsessions.stash.appscode.com"), ("create", "events")])
    path = server.kubeconfig(str(tmp_path / "kubeconfig"), token="runner-token", namespace=NS)
    cfg = client.Configuration()
    config.load_kube_config(path, client_configuration=cfg)
    assert cfg.host == server.url
    custom = client.CustomObjectsApi(client.ApiClient(cfg))

    assert get_bs(custom)["metadata"]["name"] == "bs"
    assert len(custom.list_namespaced_custom_object(STASH, V1B1, NS, "backupsessions")["items"]) == 1
    assert server.requests[-1].user == "system:serviceaccount:demo:runner"

    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", {"status": {}})
    assert ei.value.status == 403
    body = status_of(ei.value)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'backupsessions.stash.appscode.com "bs" is forbidden: User "system:serviceaccount:demo:runner" cannot patch '
        'resource "backupsessions/status" in API group "stash.appscode.com" in the namespace "demo"')
    assert body["details"] == {"name": "bs", "group": STASH, "kind": "backupsessions"}

    with pytest.raises(ApiException) as ei:
        client.CoreV1Api(client.ApiClient(cfg)).list_secret_for_all_namespaces()
    assert status_of(ei.value)["message"] == (
        'secrets is forbidden: User "system:serviceaccount:demo:runner" cannot list resource "secrets" in API group '
        '"" at the cluster scope')

    server.allow("runner-token", ("patch", "backupsessions/status"))
    custom.patch_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", {"status": {"phase": "x"}})

    with pytest.raises(ApiException) as ei:
        get_bs(client.CustomObjectsApi(api_client(server)))  # no token: anonymous
    assert ei.value.status == 403 and 'User "system:anonymous" cannot get' in status_of(ei.value)["message"]
    with pytest.raises(ApiException) as ei:
        get_bs(client.CustomObjectsApi(api_client(server, token="wrong")))
    assert ei.value.status == 401 and status_of(ei.value)["reason"] == "Unauthorized"


def test_kubeconfig_loads_with_the_official_loader(server: KubeAPIServer, tmp_path: Any) -> None:
    server.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS}})
    path = server.kubeconfig(str(tmp_path / "config"), token="t0k")
    api = config.new_client_from_config(path)
    assert client.CoreV1Api(api).read_namespaced_secret("s", NS).metadata.name == "s"

    # the global default configuration, as code under test would use it; restored afterwards
    saved = client.Configuration.get_default_copy()
    try:
        config.load_kube_config(path)
        assert client.CoreV1Api().read_namespaced_secret("s", NS).metadata.name == "s"
    finally:
        client.Configuration.set_default(saved)
    assert server.requests[-1].user == ""  # authorization is off: the token is accepted as anything


# --- concurrency and fault injection -----------------------------------------------------------------------------

def test_concurrent_read_modify_write_of_status(server: KubeAPIServer) -> None:
    server.seed(backup_session(status={"phase": "Running", "targets": [{"ref": {"name": "db"}, "stats": []}]}))
    n = 8
    barrier = threading.Barrier(n)
    conflicts = [0] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        custom = client.CustomObjectsApi(api_client(server))
        first = True
        try:
            while True:
                obj = get_bs(custom)
                if first:
                    barrier.wait(timeout=30)  # everyone read the same resourceVersion: all but one must conflict
                    first = False
                obj["status"]["targets"][0]["stats"].append({"hostname": f"host-{i}", "phase": "Succeeded"})
                try:
                    custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", obj)
                    return
                except ApiException as e:
                    if e.status != 409:
                        raise
                    conflicts[i] += 1
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    stored = server.get(STASH, V1B1, "backupsessions", NS, "bs")
    assert stored is not None
    hosts = sorted(s["hostname"] for s in stored["status"]["targets"][0]["stats"])
    assert hosts == sorted(f"host-{i}" for i in range(n))
    assert sum(conflicts) >= n - 1
    assert sum(1 for r in server.requests if r.status == 409) == sum(conflicts)


def test_conflict_next_and_concurrent_writer(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session(status={"phase": "Running"}))
    server.conflict_next(STASH, "backupsessions", NS, "bs", n=2)
    obj = get_bs(custom)
    obj["status"]["phase"] = "Succeeded"
    for _ in range(2):  # the resourceVersion matches, yet: 409
        with pytest.raises(ApiException) as ei:
            custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", obj)
        assert ei.value.status == 409 and status_of(ei.value)["reason"] == "Conflict"
    out = custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", obj)
    assert out["status"]["phase"] == "Succeeded"

    # another writer changes the object behind the client's back: the client's copy is stale
    mine = get_bs(custom)
    theirs = server.mutate(STASH, V1B1, "backupsessions", NS, "bs",
                           lambda o: o["metadata"].setdefault("annotations", {}).update({"by": "operator"}))
    assert int(theirs["metadata"]["resourceVersion"]) == int(mine["metadata"]["resourceVersion"]) + 1
    with pytest.raises(ApiException) as ei:
        custom.replace_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", mine)
    assert ei.value.status == 409


def test_fail_next(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session())
    server.fail_next(1, 500, method="GET", path_contains="/backupsessions/")
    with pytest.raises(ApiException) as ei:
        get_bs(custom)
    assert ei.value.status == 500 and status_of(ei.value)["reason"] == "InternalError"
    assert get_bs(custom)["metadata"]["name"] == "bs"

    # a 503 carries Retry-After, which urllib3's default Retry honours for a GET: the client never sees it
    server.clear_requests()
    server.fail_next(1, 503, method="GET")
    assert get_bs(custom)["metadata"]["name"] == "bs"
    assert [r.status for r in server.requests] == [503, 200]
    # ... but not for a PATCH (not idempotent)
    server.fail_next(1, 503, method="PATCH")
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs", {"metadata": {}})
    assert ei.value.status == 503 and status_of(ei.value)["reason"] == "ServiceUnavailable"
    assert ei.value.headers["Retry-After"] == "1"


def test_request_log(server: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    server.seed(backup_session())
    custom.patch_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", {"status": {"phase": "x"}})
    with pytest.raises(ApiException):
        get_bs(custom, "nope")
    assert [(r.method, r.path, r.content_type, r.status) for r in server.requests] == [
        ("PATCH", "/apis/stash.appscode.com/v1beta1/namespaces/demo/backupsessions/bs/status",
         "application/merge-patch+json", 200),
        ("GET", "/apis/stash.appscode.com/v1beta1/namespaces/demo/backupsessions/nope", "", 404),
    ]
    assert server.requests[0].body == {"status": {"phase": "x"}}


def test_subprocess_mode(tmp_path: Any) -> None:
    fixtures = tmp_path / "objs.yaml"
    fixtures.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: repo-cred, namespace: demo}\nstringData: {k: v}\n---\n"
        f"apiVersion: {STASH}/{V1B1}\nkind: BackupSession\nmetadata: {{name: bs, namespace: demo}}\n"
        "status: {phase: Pending}\n")
    auth = tmp_path / "auth.yaml"
    auth.write_text("tokens:\n  t1:\n    user: system:serviceaccount:demo:runner\n"
                    "    allow: [get secrets, get backupsessions]\n")
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "tests.kubeapi", "--port", "0", "--fixtures", str(fixtures),
                             "--auth", str(auth), "--kubeconfig", str(kubeconfig), "--token", "t1"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        api = config.new_client_from_config(str(kubeconfig))
        assert client.CoreV1Api(api).read_namespaced_secret("repo-cred", NS).data == {"k": "dg=="}
        custom = client.CustomObjectsApi(api)
        obj = custom.get_namespaced_custom_object(STASH, V1B1, NS, "backupsessions", "bs")
        assert obj["status"] == {"phase": "Pending"}  # fixtures are stored as given
        with pytest.raises(ApiException) as ei:
            custom.patch_namespaced_custom_object_status(STASH, V1B1, NS, "backupsessions", "bs", {"status": {}})
        assert ei.value.status == 403
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
