"""stash_runner.stash.kube against a real kube-apiserver (tests/kubecluster.py): TLS with the control plane's CA,
RBAC with ServiceAccount tokens from the TokenRequest API, the CRDs of deploy/crds, and the server's audit log as
the record of what the runner asked. Each test has a namespace of its own (``kube.name``).

Conflicts and simultaneous readers are arranged by ``Interposer`` (timing only: every answer is the server's).
What a real server cannot be made to do — answer 5xx, send an error body that is not a Status, never answer, not
be there at all — is in the last section, against tests.kubeapi.KubeAPIServer or no server at all."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import kubernetes
import pytest
import yaml

from stash_runner.errors import BadInput, ClusterAccessDenied, ClusterError
from stash_runner.stash import objects
from stash_runner.stash.kube import KINDS, Cluster
from tests.kubeapi import KubeAPIServer
from tests.kubecluster import ControlPlane, Interposer, Namespace, path_of
from tests.pgcluster import free_port
from tests.servers import self_signed_cert

STASH = "stash.appscode.com"
BACKUPSESSIONS = (STASH, "v1beta1", "backupsessions")
RESTORESESSIONS = (STASH, "v1beta1", "restoresessions")
PASSWORD = "s3cr3t-Pa55w0rd-xyzzy"
SA_NAME = "stash-runner"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# --- objects: without a namespace they are created in the test's own (Namespace.seed) ---------------------------


def _meta(name: str, namespace: str | None) -> dict:
    return {"name": name, **({"namespace": namespace} if namespace else {})}


def secret(namespace: str | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("pg-auth", namespace), "type": "Opaque",
            "data": {"username": b64("postgres"), "password": b64(PASSWORD)}}


def appbinding(namespace: str | None = None) -> dict:
    return {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "metadata": _meta("pg", namespace),
            "spec": {"type": "kubedb.com/postgres", "secret": {"name": "pg-auth"},
                     "clientConfig": {"service": {"name": "pg", "port": 5432, "scheme": "postgresql",
                                                  "query": "sslmode=disable"}}}}


REPOSITORY_SPEC = {"backend": {"s3": {"bucket": "backups", "prefix": "pg", "endpoint": "http://minio:9000"},
                               "storageSecretName": "repo-secret"}}


def repository(namespace: str | None = None) -> dict:
    return {"apiVersion": f"{STASH}/v1alpha1", "kind": "Repository", "metadata": _meta("repo", namespace),
            "spec": REPOSITORY_SPEC}


def stash_object(kind: str, name: str, namespace: str | None = None, version: str = "v1beta1", **extra: Any) -> dict:
    return {"apiVersion": f"{STASH}/{version}", "kind": kind, "metadata": _meta(name, namespace), **extra}


def session(name: str = "s1", namespace: str | None = None, **status: Any) -> dict:
    return stash_object("BackupSession", name, namespace,
                        spec={"invoker": {"kind": "BackupConfiguration", "name": "cfg"}},
                        status=status or {"phase": "Pending"})


def restore_session(name: str = "r1", **status: Any) -> dict:
    return stash_object("RestoreSession", name, spec={"repository": {"name": "repo"}},
                        status=status or {"phase": "Pending"})


# --- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def kubeconfig(kube: Namespace, tmp_path) -> str:
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


@pytest.fixture
def cluster(kubeconfig: str) -> Iterator[Cluster]:
    c = Cluster.connect(kubeconfig, environ={"HOSTNAME": "runner-pod-1"})
    yield c
    c.close()


@pytest.fixture
def via(control_plane: ControlPlane) -> Iterator[Interposer]:
    with Interposer(control_plane) as i:
        yield i


@contextlib.contextmanager
def connected(*args: Any, **kwargs: Any) -> Iterator[Cluster]:
    c = Cluster.connect(*args, **kwargs)
    try:
        yield c
    finally:
        c.close()


def in_cluster_env(plane: ControlPlane) -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(plane.port),
            "HOSTNAME": "runner-pod-1"}


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def sa_user(kube: Namespace) -> str:
    return f"system:serviceaccount:{kube.name}:{SA_NAME}"


def sa_token(kube: Namespace, *rules: tuple[str, str, str]) -> str:
    """The token (TokenRequest API) of ServiceAccount ``stash-runner``, bound to a Role that allows exactly
    ``rules``: (verb, API group, resource). Returns once the server's authorizer grants every rule (RBAC is served
    from a watch cache, so a new RoleBinding takes effect a moment after it is created)."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": SA_NAME},
            "rules": [{"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                      for verb, group, resource in rules]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": SA_NAME},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA_NAME},
               "subjects": [{"kind": "ServiceAccount", "name": SA_NAME}]}
    token = kube.service_account_token(SA_NAME, role, binding)
    deadline = time.monotonic() + 10
    for verb, group, resource in rules:
        plural, _, sub = resource.partition("/")
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": kube.name, "verb": verb, "group": group,
                                                  "resource": plural, "subresource": sub}}}
        while not kube.plane.call("POST", path_of("authorization.k8s.io", "v1", "selfsubjectaccessreviews", None),
                                  review, token=token)["status"].get("allowed"):
            assert time.monotonic() < deadline, f"RBAC did not grant {verb} {resource} within 10s"
            time.sleep(0.05)
    return token


def status_puts(kube: Namespace, name: str) -> list:
    """The runner's writes to ``name``'s status subresource, as the server's audit log has them."""
    return [r for r in kube.requests() if r.method == "PUT" and r.path.endswith(f"/{name}/status")]


# --- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_get_each_kind(kube: Namespace, cluster: Cluster, kind: str) -> None:
    k = KINDS[kind]
    obj = {"apiVersion": k.api_version, "kind": kind, "metadata": {"name": f"x-{k.plural}"},
           "spec": {"some": "thing"}}
    if kind == "Secret":
        obj = {**obj, "data": {"k": b64("v")}}
        del obj["spec"]
    (stored,) = kube.seed(obj)
    got = cluster.get(kind, kube.name, f"x-{k.plural}")
    assert got == stored
    assert got["apiVersion"] == k.api_version and got["kind"] == kind
    path = (f"/api/v1/namespaces/{kube.name}/secrets/x-secrets" if kind == "Secret" else
            f"/apis/{k.group}/{k.version}/namespaces/{kube.name}/{k.plural}/x-{k.plural}")
    assert [(r.method, r.path, r.status, r.user) for r in kube.requests()] == [("GET", path, 200, "admin")]


def test_secret_data_stays_base64_and_decodes(kube: Namespace, cluster: Cluster) -> None:
    kube.seed(secret())
    got = cluster.get("Secret", kube.name, "pg-auth")
    assert got["data"] == secret()["data"]  # as served: base64
    s = objects.Secret.from_object(got, kube.name)
    assert s.ref == f"Secret {kube.name}/pg-auth"
    assert s.get("password") == PASSWORD and s.get("username") == "postgres"


def test_objects_parse_through_the_typed_views(kube: Namespace, cluster: Cluster) -> None:
    kube.seed(repository(), appbinding())
    repo = objects.Repository.from_object(cluster.get("Repository", kube.name, "repo"), kube.name)
    assert (repo.ref, repo.backend.provider, repo.backend.bucket, repo.storage_secret_name) == \
        (f"Repository {kube.name}/repo", "s3", "backups", "repo-secret")
    app = objects.AppBinding.from_object(cluster.get("AppBinding", kube.name, "pg"), kube.name)
    assert (app.host, app.port, app.secret_name) == (f"pg.{kube.name}.svc", 5432, "pg-auth")


def test_unknown_kind_is_a_programming_error(kube: Namespace, cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="Pod"):
        cluster.get("Pod", kube.name, "x")
    with pytest.raises(ValueError):
        cluster.update_status("Secret", kube.name, "x", lambda o: {})
    assert kube.requests() == []  # refused before asking the server


def test_not_found_is_bad_input_naming_the_object(kube: Namespace, cluster: Cluster) -> None:
    with pytest.raises(BadInput) as e:
        cluster.get("BackupSession", kube.name, "missing")
    assert str(e.value) == f"BackupSession {kube.name}/missing: not found in the cluster ({kube.url})"
    assert e.value.exit_code == 2
    with pytest.raises(BadInput, match=f"^Secret {kube.name}/nope: not found"):
        cluster.get("Secret", kube.name, "nope")
    assert [(r.resource, r.name, r.status) for r in kube.requests()] == [("backupsessions", "missing", 404),
                                                                         ("secrets", "nope", 404)]


# --- configuration ----------------------------------------------------------------------------------------------


def test_kubeconfig_argument(kube: Namespace, kubeconfig: str) -> None:
    kube.seed(secret())
    with connected(kubeconfig, environ={}) as c:
        assert c.server == kube.url
        assert c.get("Secret", kube.name, "pg-auth")["metadata"]["name"] == "pg-auth"


def test_kubeconfig_argument_wins_over_in_cluster_and_env(kube: Namespace, kubeconfig: str, tmp_path) -> None:
    token = write(tmp_path / "token", "t")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBECONFIG": "/nonexistent"}
    with connected(kubeconfig, environ=env, token_file=token, ca_file=token) as c:
        assert c.server == kube.url


def test_kubeconfig_from_env(kube: Namespace, kubeconfig: str, tmp_path) -> None:
    kube.seed(repository())
    # Like kubectl: a list, files that do not exist skipped.
    env = {"KUBECONFIG": f"{tmp_path}/missing:{kubeconfig}", "HOME": str(tmp_path)}
    with connected(environ=env, token_file=str(tmp_path / "no-token")) as c:
        assert c.server == kube.url
        assert c.get("Repository", kube.name, "repo")["spec"] == REPOSITORY_SPEC


def test_kubeconfig_from_home(kube: Namespace, tmp_path) -> None:
    kube.seed(repository())
    (tmp_path / ".kube").mkdir()
    kube.kubeconfig(str(tmp_path / ".kube" / "config"))
    with connected(environ={"HOME": str(tmp_path)}, token_file=str(tmp_path / "no-token")) as c:
        assert c.server == kube.url
        assert c.get("Repository", kube.name, "repo")["spec"] == REPOSITORY_SPEC


def test_no_config_at_all(tmp_path) -> None:
    with pytest.raises(BadInput) as e:
        Cluster.connect(environ={"HOME": str(tmp_path)}, token_file=str(tmp_path / "no-token"))
    assert str(e.value) == ("no objects: give --objects FILE|DIR, or run in a cluster, "
                            "or give --kubeconfig or KUBECONFIG")
    # in-cluster variables without a token file are not in-cluster either
    with pytest.raises(BadInput, match="^no objects: give --objects"):
        Cluster.connect(environ={"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                 "KUBERNETES_SERVICE_PORT": "443"}, token_file=str(tmp_path / "no-token"))


def test_kubeconfig_errors_are_one_line(tmp_path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(BadInput, match=f"^--kubeconfig {missing}: no such file$"):
        Cluster.connect(missing, environ={})
    broken = write(tmp_path / "broken", "clusters: [\n  - {name: x\n")
    with pytest.raises(BadInput) as e:
        Cluster.connect(broken, environ={})
    assert str(e.value).startswith(f"--kubeconfig {broken}: ") and "\n" not in str(e.value)
    no_context = write(tmp_path / "no-context", json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []}))
    with pytest.raises(BadInput) as e:
        Cluster.connect(no_context, environ={})
    assert str(e.value).startswith(f"--kubeconfig {no_context}: ") and "\n" not in str(e.value)
    with pytest.raises(BadInput, match=f"^KUBECONFIG {tmp_path}/a:{tmp_path}/b: no such file$"):
        Cluster.connect(environ={"KUBECONFIG": f"{tmp_path}/a:{tmp_path}/b"}, token_file=missing)


def test_the_client_global_configuration_is_untouched(kube: Namespace, kubeconfig: str) -> None:
    before = kubernetes.client.Configuration.get_default_copy().host
    with connected(kubeconfig, environ={}) as c:
        assert c.server == kube.url
    assert kubernetes.client.Configuration.get_default_copy().host == before != kube.url


def test_in_cluster_over_tls_with_the_service_account_token(kube: Namespace, control_plane: ControlPlane,
                                                             tmp_path) -> None:
    kube.seed(secret(), session())
    token = write(tmp_path / "token", sa_token(kube, ("get", "", "secrets"), ("get", STASH, "backupsessions")))
    env = {**in_cluster_env(control_plane), "KUBECONFIG": "/nonexistent"}  # in-cluster wins over KUBECONFIG
    with connected(environ=env, token_file=token, ca_file=control_plane.pki.ca) as c:
        assert c.server == kube.url and c.server.startswith("https://127.0.0.1:")
        s = objects.Secret.from_object(c.get("Secret", kube.name, "pg-auth"), kube.name)
        assert s.get("password") == PASSWORD
        assert c.get("BackupSession", kube.name, "s1")["status"] == {"phase": "Pending"}
    # the bearer token was sent: the server knew the ServiceAccount
    assert [(r.user, r.resource, r.status) for r in kube.requests()] == [(sa_user(kube), "secrets", 200),
                                                                         (sa_user(kube), "backupsessions", 200)]

    wrong = write(tmp_path / "wrong-token", "not-the-token")
    with connected(environ=env, token_file=wrong, ca_file=control_plane.pki.ca) as c, \
            pytest.raises(ClusterAccessDenied) as e:
        c.get("Secret", kube.name, "pg-auth")
    assert str(e.value) == f"Kubernetes API at {kube.url}: the credentials were refused (401 Unauthorized)"
    assert "not-the-token" not in str(e.value)


def test_kubeconfig_over_tls(kube: Namespace, control_plane: ControlPlane, tmp_path) -> None:
    kube.seed(repository())
    kc = kube.kubeconfig(str(tmp_path / "kc"))
    with open(kc) as f:
        cfg = yaml.safe_load(f)
    assert cfg["clusters"][0]["cluster"]["certificate-authority"] == control_plane.pki.ca
    with connected(kc, environ={}) as c:
        assert c.server == kube.url and c.server.startswith("https://")
        assert c.get("Repository", kube.name, "repo")["spec"] == REPOSITORY_SPEC


def test_in_cluster_with_a_ca_that_does_not_sign_the_server(kube: Namespace, control_plane: ControlPlane,
                                                            tmp_path) -> None:
    other_ca, _ = self_signed_cert(str(tmp_path / "other"))
    token = write(tmp_path / "token", sa_token(kube, ("get", "", "secrets")))
    with connected(environ=in_cluster_env(control_plane), token_file=token, ca_file=other_ca) as c, \
            pytest.raises(ClusterError) as e:
        c.get("Secret", kube.name, "pg-auth")
    assert type(e.value) is ClusterError and e.value.exit_code == 9
    assert str(e.value).startswith(f"Kubernetes API at {kube.url} unreachable: TLS certificate verification failed: ")
    assert kube.requests() == []  # nothing reached the server


def test_in_cluster_without_ca_file_is_bad_input(kube: Namespace, control_plane: ControlPlane, tmp_path) -> None:
    token = write(tmp_path / "token", "t")
    with pytest.raises(BadInput, match="certification file does not exist"):
        Cluster.connect(environ=in_cluster_env(control_plane), token_file=token, ca_file=str(tmp_path / "no-ca"))


# --- errors -----------------------------------------------------------------------------------------------------


def test_forbidden_carries_the_server_message(kube: Namespace, tmp_path) -> None:
    kube.seed(secret(), session())
    token = sa_token(kube, ("get", "", "secrets"))
    with connected(kube.kubeconfig(str(tmp_path / "kc"), token=token), environ={}) as c:
        assert c.get("Secret", kube.name, "pg-auth")
        with pytest.raises(ClusterAccessDenied) as e:
            c.get("BackupSession", kube.name, "s1")
    assert e.value.exit_code == 10
    assert str(e.value) == (f'BackupSession {kube.name}/s1: forbidden: backupsessions.{STASH} "s1" is forbidden: '
                            f'User "{sa_user(kube)}" cannot get resource "backupsessions" in API group "{STASH}" '
                            f'in the namespace "{kube.name}"')
    assert token not in str(e.value)
    assert [(r.user, r.resource, r.status) for r in kube.requests()] == [(sa_user(kube), "secrets", 200),
                                                                         (sa_user(kube), "backupsessions", 403)]


def test_forbidden_secret_names_it_and_not_the_token(kube: Namespace, tmp_path) -> None:
    kube.seed(secret(), session())
    token = sa_token(kube, ("get", STASH, "backupsessions"))
    with connected(kube.kubeconfig(str(tmp_path / "kc"), token=token), environ={}) as c, \
            pytest.raises(ClusterAccessDenied) as e:
        c.get("Secret", kube.name, "pg-auth")
    assert str(e.value) == (f'Secret {kube.name}/pg-auth: forbidden: secrets "pg-auth" is forbidden: '
                            f'User "{sa_user(kube)}" cannot get resource "secrets" in API group "" '
                            f'in the namespace "{kube.name}"')
    for leak in (token, PASSWORD, b64(PASSWORD)):
        assert leak not in str(e.value)


def test_unauthorized(kube: Namespace, tmp_path) -> None:
    kube.seed(repository())
    with connected(kube.kubeconfig(str(tmp_path / "kc"), token="bad-token-value"), environ={}) as c, \
            pytest.raises(ClusterAccessDenied) as e:
        c.get("Repository", kube.name, "repo")
    assert str(e.value) == f"Kubernetes API at {kube.url}: the credentials were refused (401 Unauthorized)"
    assert e.value.exit_code == 10
    assert "bad-token-value" not in str(e.value)


# --- status writes ----------------------------------------------------------------------------------------------


def test_update_status_writes_only_status(kube: Namespace, cluster: Cluster) -> None:
    (seeded,) = kube.seed(session())
    rv = seeded["metadata"]["resourceVersion"]

    def change(obj: dict) -> dict:
        obj["spec"]["invoker"]["name"] = "changed"  # not how to change a spec: the status write ignores it
        return {**obj["status"], "phase": "Running"}

    out = cluster.update_status("BackupSession", kube.name, "s1", change)
    stored = kube.get(*BACKUPSESSIONS, "s1")
    assert out == stored
    assert stored["status"] == {"phase": "Running"}
    assert stored["spec"] == seeded["spec"]
    (put,) = status_puts(kube, "s1")
    assert (put.path, put.status) == (f"/apis/{STASH}/v1beta1/namespaces/{kube.name}/backupsessions/s1/status", 200)
    assert put.body["metadata"]["resourceVersion"] == rv
    assert put.body["spec"] == seeded["spec"]  # the body is the object as read, not as change() left it
    assert stored["metadata"]["resourceVersion"] != rv
    assert stored["metadata"]["generation"] == seeded["metadata"]["generation"]  # a status write: spec untouched


def test_update_status_retries_on_conflict_with_a_fresh_object(kube: Namespace, via: Interposer, tmp_path) -> None:
    """Someone else writes the session after each of the runner's first three reads: three 409s, then a write."""
    kube.seed(session())
    via.write_after_read(path_of(*BACKUPSESSIONS, kube.name, "s1"), 3,
                         lambda: kube.touch(*BACKUPSESSIONS, "s1"))
    seen: list[dict] = []

    def change(obj: dict) -> dict:
        seen.append(obj)
        return {"phase": "Succeeded", "sessionDuration": f"{len(seen)}s"}

    with connected(kube.kubeconfig(str(tmp_path / "kc"), server=via.url), environ={}) as c:
        out = c.update_status("BackupSession", kube.name, "s1", change)
    assert via.writes == 3
    assert [p.status for p in status_puts(kube, "s1")] == [409, 409, 409, 200]
    assert len(seen) == 4 and len({id(o) for o in seen}) == 4
    assert len({o["metadata"]["resourceVersion"] for o in seen}) == 4  # read again each time
    assert out["status"] == {"phase": "Succeeded", "sessionDuration": "4s"}
    assert kube.get(*BACKUPSESSIONS, "s1")["status"] == out["status"]


def test_update_status_sees_a_concurrent_write(kube: Namespace, via: Interposer, tmp_path) -> None:
    """Another host adds its stats between the runner's read and its write: the write is refused, and the second
    try builds on the other host's."""
    kube.seed(restore_session(phase="Running", stats=[]))

    def other_host() -> None:
        obj = kube.get(*RESTORESESSIONS, "r1")
        obj["status"]["stats"] = [*obj["status"].get("stats", []), {"hostname": "other", "phase": "Succeeded"}]
        kube.put(obj, "status")

    via.write_after_read(path_of(*RESTORESESSIONS, kube.name, "r1"), 1, other_host)
    calls = 0

    def change(obj: dict) -> dict:
        nonlocal calls
        calls += 1
        return {**obj["status"], "stats": [*obj["status"].get("stats", []), {"hostname": "mine",
                                                                              "phase": "Succeeded"}]}

    with connected(kube.kubeconfig(str(tmp_path / "kc"), server=via.url), environ={}) as c:
        out = c.update_status("RestoreSession", kube.name, "r1", change)
    assert calls == 2
    assert [p.status for p in status_puts(kube, "r1")] == [409, 200]
    assert [s["hostname"] for s in out["status"]["stats"]] == ["other", "mine"]
    assert kube.get(*RESTORESESSIONS, "r1")["status"] == out["status"]


def test_update_status_gives_up(kube: Namespace, via: Interposer, tmp_path) -> None:
    kube.seed(session())
    via.write_after_read(path_of(*BACKUPSESSIONS, kube.name, "s1"), 100,
                         lambda: kube.touch(*BACKUPSESSIONS, "s1"))
    with connected(kube.kubeconfig(str(tmp_path / "kc"), server=via.url), environ={}) as c, \
            pytest.raises(ClusterError) as e:
        c.update_status("BackupSession", kube.name, "s1", lambda o: {"phase": "Failed"}, attempts=3)
    assert type(e.value) is ClusterError
    assert str(e.value) == (f"BackupSession {kube.name}/s1: status update still conflicting after 3 attempts "
                            f"({via.url})")
    assert [p.status for p in status_puts(kube, "s1")] == [409, 409, 409]
    assert kube.get(*BACKUPSESSIONS, "s1")["status"] == {"phase": "Pending"}


def test_update_status_from_eight_threads(kube: Namespace, via: Interposer, tmp_path) -> None:
    """Eight threads of one Cluster add a host each to one RestoreSession; all eight first reads are answered
    together, so they all carry one resourceVersion and at most one of those writes can land."""
    kube.seed(restore_session(phase="Running", stats=[]))
    via.hold_gets(path_of(*RESTORESESSIONS, kube.name, "r1"), parties=8)
    errors: list[BaseException] = []

    def add(i: int) -> Any:
        return lambda o: {**o["status"], "stats": [*o["status"].get("stats", []),
                                                   {"hostname": f"host-{i}", "phase": "Succeeded"}]}

    with connected(kube.kubeconfig(str(tmp_path / "kc"), server=via.url), environ={}) as c:
        def worker(i: int) -> None:
            try:
                c.update_status("RestoreSession", kube.name, "r1", add(i))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert via.held == 8
    stats = kube.get(*RESTORESESSIONS, "r1")["status"]["stats"]
    assert sorted(s["hostname"] for s in stats) == [f"host-{i}" for i in range(8)]
    statuses = [p.status for p in status_puts(kube, "r1")]
    assert statuses.count(200) == 8 and statuses.count(409) >= 7 and set(statuses) == {200, 409}


def test_update_status_nothing_to_write(kube: Namespace, cluster: Cluster) -> None:
    (seeded,) = kube.seed(session())
    out = cluster.update_status("BackupSession", kube.name, "s1", lambda o: None)
    assert out == seeded
    assert [(r.method, r.name) for r in kube.requests()] == [("GET", "s1")]  # read, nothing written
    assert kube.get(*BACKUPSESSIONS, "s1")["metadata"]["resourceVersion"] == seeded["metadata"]["resourceVersion"]


def test_update_status_of_a_missing_object(kube: Namespace, cluster: Cluster) -> None:
    with pytest.raises(BadInput, match=f"^Repository {kube.name}/gone: not found"):
        cluster.update_status("Repository", kube.name, "gone", lambda o: {"snapshotCount": 1})
    assert [(r.method, r.status) for r in kube.requests()] == [("GET", 404)]


def test_update_status_forbidden(kube: Namespace, tmp_path) -> None:
    kube.seed(session())
    token = sa_token(kube, ("get", STASH, "backupsessions"))
    with connected(kube.kubeconfig(str(tmp_path / "kc"), token=token), environ={}) as c, \
            pytest.raises(ClusterAccessDenied) as e:
        c.update_status("BackupSession", kube.name, "s1", lambda o: {"phase": "Running"})
    assert str(e.value) == (f'BackupSession {kube.name}/s1: forbidden: backupsessions.{STASH} "s1" is forbidden: '
                            f'User "{sa_user(kube)}" cannot update resource "backupsessions/status" in API group '
                            f'"{STASH}" in the namespace "{kube.name}"')
    assert token not in str(e.value)
    assert [p.status for p in status_puts(kube, "s1")] == [403]  # refused once, not retried
    assert kube.get(*BACKUPSESSIONS, "s1")["status"] == {"phase": "Pending"}


# --- events -----------------------------------------------------------------------------------------------------


def assert_recent_utc(stamp: str) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp  # RFC 3339, seconds, UTC: as served
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(time.time() - when.timestamp()) < 60


@pytest.mark.parametrize("component", [None, "Status Updater"])
def test_event_is_created_about_the_object(kube: Namespace, cluster: Cluster, component: str | None) -> None:
    """kube.py's own source component is "stash-runner"; the reporters pass Stash's "Status Updater"."""
    kube.seed(session())
    obj = cluster.get("BackupSession", kube.name, "s1")
    extra = {"component": component} if component else {}
    assert cluster.event(obj, reason="BackupFailed", message="pg_dumpall exited with 1", type="Warning",
                         **extra) is True
    (ev,) = kube.events()
    meta = obj["metadata"]
    assert ev["involvedObject"] == {"apiVersion": f"{STASH}/v1beta1", "kind": "BackupSession", "name": "s1",
                                    "namespace": kube.name, "uid": meta["uid"],
                                    "resourceVersion": meta["resourceVersion"]}
    assert ev["metadata"]["name"].startswith("s1.") and len(ev["metadata"]["name"]) > len("s1.")
    assert ev["metadata"]["generateName"] == "s1." and ev["metadata"]["namespace"] == kube.name
    assert (ev["reason"], ev["message"], ev["type"], ev["count"]) == \
        ("BackupFailed", "pg_dumpall exited with 1", "Warning", 1)
    expected = component or "stash-runner"
    assert ev["source"] == {"component": expected, "host": "runner-pod-1"}
    assert (ev["reportingComponent"], ev["reportingInstance"]) == (expected, "runner-pod-1")
    assert ev["eventTime"] is None  # a core/v1 Event of the legacy kind: first/lastTimestamp, no eventTime
    assert ev["firstTimestamp"] == ev["lastTimestamp"]
    assert_recent_utc(ev["firstTimestamp"])
    (post,) = [r for r in kube.requests() if r.resource == "events"]
    assert (post.method, post.status, post.user) == ("POST", 201, "admin")


def test_event_that_cannot_be_written_is_one_warning(kube: Namespace, tmp_path, caplog) -> None:
    kube.seed(session())
    token = sa_token(kube, ("get", STASH, "backupsessions"))
    with connected(kube.kubeconfig(str(tmp_path / "kc"), token=token), environ={}) as c:
        obj = c.get("BackupSession", kube.name, "s1")
        with caplog.at_level(logging.WARNING, logger="stash_runner"):
            assert c.event(obj, reason="BackupSucceeded", message="done") is False
    records = [r for r in caplog.records if r.name == "stash_runner"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert line == (f"could not record Event BackupSucceeded about BackupSession {kube.name}/s1: forbidden: "
                    f'events is forbidden: User "{sa_user(kube)}" cannot create resource "events" in API group "" '
                    f'in the namespace "{kube.name}"')
    assert token not in line
    assert kube.events() == []
    assert [r.status for r in kube.requests() if r.resource == "events"] == [403]  # one attempt


# --- lifecycle --------------------------------------------------------------------------------------------------


def test_close_leaves_no_threads(kube: Namespace, kubeconfig: str) -> None:
    kube.seed(session())
    before = set(threading.enumerate())
    c = Cluster.connect(kubeconfig, environ={})
    c.update_status("BackupSession", kube.name, "s1", lambda o: {"phase": "Running"})
    c.event(c.get("BackupSession", kube.name, "s1"), reason="R", message="m")
    c.close()
    c.close()  # idempotent
    lingering = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    deadline = time.monotonic() + 5
    while lingering and time.monotonic() < deadline:
        time.sleep(0.05)
        lingering = [t for t in lingering if t.is_alive()]
    assert lingering == []
    assert kube.get(*BACKUPSESSIONS, "s1")["status"] == {"phase": "Running"} and len(kube.events()) == 1


# =================================================================================================================
# Not the real server. What a real kube-apiserver cannot be made to do: answer 5xx, answer with an error body that
# is not a Status, never answer, not be there at all. These run against tests.kubeapi.KubeAPIServer (plain HTTP,
# namespace "demo") or against no server; each says why in its docstring.
# =================================================================================================================

DEMO = "demo"


@pytest.fixture
def imitation() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as s:
        yield s


@pytest.fixture
def imitation_cluster(imitation: KubeAPIServer, tmp_path) -> Iterator[Cluster]:
    c = Cluster.connect(imitation.kubeconfig(str(tmp_path / "kubeconfig")), environ={"HOSTNAME": "runner-pod-1"})
    yield c
    c.close()


def test_unreachable_fails_within_seconds(tmp_path) -> None:
    """No server at all: a port nobody listens on."""
    url = f"http://127.0.0.1:{free_port()}"
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                              "clusters": [{"name": "c", "cluster": {"server": url}}],
                              "users": [{"name": "u", "user": {"token": "tok"}}],
                              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    with connected(str(kc), environ={}) as c:
        start = time.monotonic()
        with pytest.raises(ClusterError) as e:
            c.get("BackupSession", DEMO, "s1")
        assert time.monotonic() - start < 5
    assert type(e.value) is ClusterError and e.value.exit_code == 9
    assert str(e.value) == f"Kubernetes API at {url} unreachable: connection refused"


def test_a_server_that_never_answers_times_out(tmp_path) -> None:
    """A real server cannot be made to stall: a listening socket nobody accepts on stands in for one."""
    # The TCP handshake completes (backlog), the answer never comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        cfg = kubernetes.client.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
        c = Cluster(cfg, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ClusterError, match="unreachable: timed out$"):
            c.get("Secret", DEMO, "pg-auth")
        assert time.monotonic() - start < 5
        c.close()


def test_event_with_the_api_unreachable(caplog) -> None:
    """No server at all: a port nobody listens on."""
    c = Cluster(kubernetes.client.Configuration(host=f"http://127.0.0.1:{free_port()}"), hostname="h")
    with caplog.at_level(logging.WARNING, logger="stash_runner"):
        assert c.event(session(namespace=DEMO), reason="BackupSucceeded", message="done") is False
    c.close()
    (record,) = [r for r in caplog.records if r.name == "stash_runner"]
    assert "unreachable: connection refused" in record.getMessage()


def test_server_errors_are_retried_then_reported(imitation: KubeAPIServer, imitation_cluster: Cluster) -> None:
    """A real server cannot be made to answer 500 on demand."""
    imitation.seed(session(namespace=DEMO))
    imitation.fail_next(2, 500, method="GET")
    assert imitation_cluster.get("BackupSession", DEMO, "s1")["metadata"]["name"] == "s1"
    imitation.fail_next(10, 500, method="GET")
    with pytest.raises(ClusterError) as e:
        imitation_cluster.get("BackupSession", DEMO, "s1")
    assert str(e.value) == (f"BackupSession {DEMO}/s1: get failed: 500 Internal error occurred: "
                            "injected by the test server")


def test_secret_data_never_reaches_an_error(imitation: KubeAPIServer, imitation_cluster: Cluster) -> None:
    """A real server cannot be made to answer 500 to a Secret's GET."""
    imitation.seed(secret(DEMO))
    imitation.fail_next(10, 500, path_contains="/secrets/")
    with pytest.raises(ClusterError) as e:
        imitation_cluster.get("Secret", DEMO, "pg-auth")
    message = str(e.value)
    assert message.startswith(f"Secret {DEMO}/pg-auth: get failed: 500 ")
    assert e.value.__cause__ is None and e.value.__suppress_context__  # the client's exception text has the body
    for leak in (PASSWORD, b64(PASSWORD)):
        assert leak not in message


class EchoingServer(KubeAPIServer):
    """A broken proxy in front of the API: answers 500 with the Secret itself as the body."""

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        code, out, extra = super().handle(method, target, headers, body)
        if "/secrets/" in target and code == 200:
            return 500, out, extra
        return code, out, extra


def test_an_error_body_that_is_not_a_status_is_not_quoted(tmp_path) -> None:
    """A real server's error bodies are always Status objects: a broken proxy echoing a Secret is imitated."""
    with EchoingServer() as server:
        server.seed(secret(DEMO))
        with connected(server.kubeconfig(str(tmp_path / "kc")), environ={}) as c, \
                pytest.raises(ClusterError) as e:
            c.get("Secret", DEMO, "pg-auth")
    assert str(e.value) == f"Secret {DEMO}/pg-auth: get failed: 500 Internal Server Error"
    for leak in (PASSWORD, b64(PASSWORD)):
        assert leak not in str(e.value)


def test_update_status_retries_a_server_error_on_the_write(imitation: KubeAPIServer,
                                                           imitation_cluster: Cluster) -> None:
    """A real server cannot be made to answer 500 to a status write."""
    imitation.seed(stash_object("RestoreSession", "r1", DEMO, status={"phase": "Pending"}))
    imitation.fail_next(1, 500, method="PUT")
    out = imitation_cluster.update_status("RestoreSession", DEMO, "r1", lambda o: {"phase": "Running"})
    assert out["status"] == {"phase": "Running"}
    assert [p.status for p in imitation.requests if p.method == "PUT" and p.path.endswith("/r1/status")] == [500, 200]
