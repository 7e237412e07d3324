"""stash_runner.stash.kube against tests.kubeapi.KubeAPIServer: real HTTP (and HTTPS for the in-cluster path)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import kubernetes
import pytest

from stash_runner.errors import BadInput, ClusterAccessDenied, ClusterError
from stash_runner.stash import objects
from stash_runner.stash.kube import KINDS, Cluster
from tests.kubeapi import RESOURCES, KubeAPIServer, Resource
from tests.servers import self_signed_cert

NS = "demo"
STASH = "stash.appscode.com"
SA_USER = "system:serviceaccount:demo:stash-runner"
PASSWORD = "s3cr3t-Pa55w0rd-xyzzy"

# The server serves RestoreBatch too, so that every kind of the runner's table can be read.
SERVED = (*RESOURCES, Resource(STASH, "v1beta1", "restorebatches", "RestoreBatch", has_status=True))


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-auth", "namespace": NS},
          "type": "Opaque", "data": {"username": b64("postgres"), "password": b64(PASSWORD)}}
APPBINDING = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
              "metadata": {"name": "pg", "namespace": NS},
              "spec": {"type": "kubedb.com/postgres", "secret": {"name": "pg-auth"},
                       "clientConfig": {"service": {"name": "pg", "port": 5432, "scheme": "postgresql",
                                                    "query": "sslmode=disable"}}}}
REPOSITORY = {"apiVersion": f"{STASH}/v1alpha1", "kind": "Repository", "metadata": {"name": "repo", "namespace": NS},
              "spec": {"backend": {"s3": {"bucket": "backups", "prefix": "pg", "endpoint": "http://minio:9000"},
                                   "storageSecretName": "repo-secret"}}}


def stash_object(kind: str, name: str, version: str = "v1beta1", **extra: Any) -> dict:
    return {"apiVersion": f"{STASH}/{version}", "kind": kind, "metadata": {"name": name, "namespace": NS}, **extra}


def session(name: str = "s1", **status: Any) -> dict:
    return stash_object("BackupSession", name, spec={"invoker": {"kind": "BackupConfiguration", "name": "cfg"}},
                        status=status or {"phase": "Pending"})


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(SERVED) as s:
        yield s


@pytest.fixture
def kubeconfig(server: KubeAPIServer, tmp_path) -> str:
    return server.kubeconfig(str(tmp_path / "kubeconfig"))


@pytest.fixture
def cluster(kubeconfig: str) -> Iterator[Cluster]:
    c = Cluster.connect(kubeconfig, environ={"HOSTNAME": "runner-pod-1"})
    yield c
    c.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    return self_signed_cert(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def tls_server(cert: tuple[str, str]) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(SERVED, tls=cert) as s:
        yield s


@contextlib.contextmanager
def connected(*args: Any, **kwargs: Any) -> Iterator[Cluster]:
    c = Cluster.connect(*args, **kwargs)
    try:
        yield c
    finally:
        c.close()


def in_cluster_env(server: KubeAPIServer) -> dict[str, str]:
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, "HOSTNAME": "runner-pod-1"}


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def puts(server: KubeAPIServer, name: str) -> list:
    return [r for r in server.requests if r.method == "PUT" and r.path.endswith(f"/{name}/status")]


# --- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_get_each_kind(server: KubeAPIServer, cluster: Cluster, kind: str) -> None:
    k = KINDS[kind]
    obj = {"apiVersion": k.api_version, "kind": kind, "metadata": {"name": f"x-{k.plural}", "namespace": NS},
           "spec": {"some": "thing"}}
    if kind == "Secret":
        obj = {**obj, "data": {"k": b64("v")}}
        del obj["spec"]
    (stored,) = server.seed(obj)
    got = cluster.get(kind, NS, f"x-{k.plural}")
    assert got == stored
    assert got["apiVersion"] == k.api_version and got["kind"] == kind
    assert server.requests[-1].path == (f"/api/v1/namespaces/{NS}/secrets/x-secrets" if kind == "Secret" else
                                        f"/apis/{k.group}/{k.version}/namespaces/{NS}/{k.plural}/x-{k.plural}")


def test_secret_data_stays_base64_and_decodes(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(SECRET)
    got = cluster.get("Secret", NS, "pg-auth")
    assert got["data"] == SECRET["data"]  # as served: base64
    secret = objects.Secret.from_object(got, NS)
    assert secret.ref == f"Secret {NS}/pg-auth"
    assert secret.get("password") == PASSWORD and secret.get("username") == "postgres"


def test_objects_parse_through_the_typed_views(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(REPOSITORY, APPBINDING)
    repo = objects.Repository.from_object(cluster.get("Repository", NS, "repo"), NS)
    assert (repo.ref, repo.backend.provider, repo.backend.bucket, repo.storage_secret_name) == \
        (f"Repository {NS}/repo", "s3", "backups", "repo-secret")
    app = objects.AppBinding.from_object(cluster.get("AppBinding", NS, "pg"), NS)
    assert (app.host, app.port, app.secret_name) == (f"pg.{NS}.svc", 5432, "pg-auth")


def test_unknown_kind_is_a_programming_error(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="Pod"):
        cluster.get("Pod", NS, "x")
    with pytest.raises(ValueError):
        cluster.update_status("Secret", NS, "x", lambda o: {})


def test_not_found_is_bad_input_naming_the_object(server: KubeAPIServer, cluster: Cluster) -> None:
    with pytest.raises(BadInput) as e:
        cluster.get("BackupSession", NS, "missing")
    assert str(e.value) == f"BackupSession {NS}/missing: not found in the cluster ({server.url})"
    assert e.value.exit_code == 2
    with pytest.raises(BadInput, match=f"^Secret {NS}/nope: not found"):
        cluster.get("Secret", NS, "nope")


# --- configuration ----------------------------------------------------------------------------------------------


def test_kubeconfig_argument(server: KubeAPIServer, kubeconfig: str) -> None:
    server.seed(SECRET)
    with connected(kubeconfig, environ={}) as c:
        assert c.server == server.url
        assert c.get("Secret", NS, "pg-auth")["metadata"]["name"] == "pg-auth"


def test_kubeconfig_argument_wins_over_in_cluster_and_env(server: KubeAPIServer, kubeconfig: str, tmp_path) -> None:
    token = write(tmp_path / "token", "t")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBECONFIG": "/nonexistent"}
    with connected(kubeconfig, environ=env, token_file=token, ca_file=token) as c:
        assert c.server == server.url


def test_kubeconfig_from_env(server: KubeAPIServer, kubeconfig: str, tmp_path) -> None:
    server.seed(REPOSITORY)
    # Like kubectl: a list, files that do not exist skipped.
    env = {"KUBECONFIG": f"{tmp_path}/missing:{kubeconfig}", "HOME": str(tmp_path)}
    with connected(environ=env, token_file=str(tmp_path / "no-token")) as c:
        assert c.server == server.url
        assert c.get("Repository", NS, "repo")["spec"] == REPOSITORY["spec"]


def test_kubeconfig_from_home(server: KubeAPIServer, tmp_path) -> None:
    (tmp_path / ".kube").mkdir()
    server.kubeconfig(str(tmp_path / ".kube" / "config"))
    with connected(environ={"HOME": str(tmp_path)}, token_file=str(tmp_path / "no-token")) as c:
        assert c.server == server.url


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


def test_the_client_global_configuration_is_untouched(server: KubeAPIServer, kubeconfig: str) -> None:
    before = kubernetes.client.Configuration.get_default_copy().host
    with connected(kubeconfig, environ={}) as c:
        assert c.server == server.url
    assert kubernetes.client.Configuration.get_default_copy().host == before != server.url


def test_in_cluster_over_tls_with_the_service_account_token(tls_server: KubeAPIServer, cert, tmp_path) -> None:
    tls_server.seed(SECRET, session())
    tls_server.add_token("sa-token", SA_USER, [("get", "secrets"), ("get", "backupsessions")])
    token = write(tmp_path / "token", "sa-token")
    env = {**in_cluster_env(tls_server), "KUBECONFIG": "/nonexistent"}  # in-cluster wins over KUBECONFIG
    with connected(environ=env, token_file=token, ca_file=cert[0]) as c:
        assert c.server == tls_server.url and c.server.startswith("https://127.0.0.1:")
        secret = objects.Secret.from_object(c.get("Secret", NS, "pg-auth"), NS)
        assert secret.get("password") == PASSWORD
        assert c.get("BackupSession", NS, "s1")["status"] == {"phase": "Pending"}
    assert [r.user for r in tls_server.requests[-2:]] == [SA_USER, SA_USER]  # the bearer token was sent

    wrong = write(tmp_path / "wrong-token", "not-the-token")
    with connected(environ=env, token_file=wrong, ca_file=cert[0]) as c, pytest.raises(ClusterAccessDenied) as e:
        c.get("Secret", NS, "pg-auth")
    assert str(e.value) == f"Kubernetes API at {tls_server.url}: the credentials were refused (401 Unauthorized)"
    assert "not-the-token" not in str(e.value)


def test_kubeconfig_over_tls(tls_server: KubeAPIServer, tmp_path) -> None:
    tls_server.seed(REPOSITORY)
    with connected(tls_server.kubeconfig(str(tmp_path / "kc")), environ={}) as c:  # certificate-authority: the cert
        assert c.server == tls_server.url
        assert c.get("Repository", NS, "repo")["spec"] == REPOSITORY["spec"]


def test_in_cluster_with_a_ca_that_does_not_sign_the_server(tls_server: KubeAPIServer, tmp_path) -> None:
    other_ca, _ = self_signed_cert(str(tmp_path / "other"))
    token = write(tmp_path / "token", "t")
    with connected(environ=in_cluster_env(tls_server), token_file=token, ca_file=other_ca) as c, \
            pytest.raises(ClusterError) as e:
        c.get("Secret", NS, "pg-auth")
    assert type(e.value) is ClusterError and e.value.exit_code == 9
    assert str(e.value).startswith(f"Kubernetes API at {tls_server.url} unreachable: TLS certificate verification")


def test_in_cluster_without_ca_file_is_bad_input(tls_server: KubeAPIServer, tmp_path) -> None:
    token = write(tmp_path / "token", "t")
    with pytest.raises(BadInput, match="certification file does not exist"):
        Cluster.connect(environ=in_cluster_env(tls_server), token_file=token, ca_file=str(tmp_path / "no-ca"))


# --- errors -----------------------------------------------------------------------------------------------------


def test_forbidden_carries_the_server_message(server: KubeAPIServer, tmp_path) -> None:
    server.seed(SECRET, session())
    server.add_token("limited", SA_USER, [("get", "secrets")])
    with connected(server.kubeconfig(str(tmp_path / "kc"), token="limited"), environ={}) as c:
        assert c.get("Secret", NS, "pg-auth")
        with pytest.raises(ClusterAccessDenied) as e:
            c.get("BackupSession", NS, "s1")
    assert e.value.exit_code == 10
    assert str(e.value) == (f'BackupSession {NS}/s1: forbidden: backupsessions.{STASH} "s1" is forbidden: '
                            f'User "{SA_USER}" cannot get resource "backupsessions" in API group "{STASH}" '
                            f'in the namespace "{NS}"')


def test_unauthorized(server: KubeAPIServer, tmp_path) -> None:
    server.add_token("good", "someone", [("*", "*")])
    with connected(server.kubeconfig(str(tmp_path / "kc"), token="bad-token-value"), environ={}) as c, \
            pytest.raises(ClusterAccessDenied) as e:
        c.get("Repository", NS, "repo")
    assert str(e.value) == f"Kubernetes API at {server.url}: the credentials were refused (401 Unauthorized)"
    assert "bad-token-value" not in str(e.value)


def test_unreachable_fails_within_seconds(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                              "clusters": [{"name": "c", "cluster": {"server": url}}],
                              "users": [{"name": "u", "user": {"token": "tok"}}],
                              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    with connected(str(kc), environ={}) as c:
        start = time.monotonic()
        with pytest.raises(ClusterError) as e:
            c.get("BackupSession", NS, "s1")
        assert time.monotonic() - start < 5
    assert type(e.value) is ClusterError and e.value.exit_code == 9
    assert str(e.value) == f"Kubernetes API at {url} unreachable: connection refused"


def test_a_server_that_never_answers_times_out(tmp_path) -> None:
    # A listening socket nobody accepts on: the TCP handshake completes (backlog), the answer never comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        cfg = kubernetes.client.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
        c = Cluster(cfg, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ClusterError, match="unreachable: timed out$"):
            c.get("Secret", NS, "pg-auth")
        assert time.monotonic() - start < 5
        c.close()


def test_server_errors_are_retried_then_reported(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session())
    server.fail_next(2, 500, method="GET")
    assert cluster.get("BackupSession", NS, "s1")["metadata"]["name"] == "s1"
    server.fail_next(10, 500, method="GET")
    with pytest.raises(ClusterError) as e:
        cluster.get("BackupSession", NS, "s1")
    assert str(e.value) == (f"BackupSession {NS}/s1: get failed: 500 Internal error occurred: "
                            "injected by the test server")


def test_secret_data_never_reaches_an_error(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(SECRET)
    server.fail_next(10, 500, path_contains="/secrets/")
    with pytest.raises(ClusterError) as e:
        cluster.get("Secret", NS, "pg-auth")
    message = str(e.value)
    assert message.startswith(f"Secret {NS}/pg-auth: get failed: 500 ")
    assert e.value.__cause__ is None and e.value.__suppress_context__  # the client's exception text has the body
    for leak in (PASSWORD, b64(PASSWORD), "sa-token"):
        assert leak not in message


class EchoingServer(KubeAPIServer):
    """A broken proxy in front of the API: answers 500 with the Secret itself as the body."""

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        code, out, extra = super().handle(method, target, headers, body)
        if "/secrets/" in target and code == 200:
            return 500, out, extra
        return code, out, extra


def test_an_error_body_that_is_not_a_status_is_not_quoted(tmp_path) -> None:
    with EchoingServer(SERVED) as server:
        server.seed(SECRET)
        with connected(server.kubeconfig(str(tmp_path / "kc")), environ={}) as c, \
                pytest.raises(ClusterError) as e:
            c.get("Secret", NS, "pg-auth")
    assert str(e.value) == f"Secret {NS}/pg-auth: get failed: 500 Internal Server Error"


# --- status writes ----------------------------------------------------------------------------------------------


def test_update_status_writes_only_status(server: KubeAPIServer, cluster: Cluster) -> None:
    (seeded,) = server.seed(session())
    rv = seeded["metadata"]["resourceVersion"]

    def change(obj: dict) -> dict:
        obj["spec"]["invoker"]["name"] = "changed"  # not how to change a spec: the status write ignores it
        return {**obj["status"], "phase": "Running"}

    out = cluster.update_status("BackupSession", NS, "s1", change)
    stored = server.get(STASH, "v1beta1", "backupsessions", NS, "s1")
    assert out == stored
    assert stored["status"] == {"phase": "Running"}
    assert stored["spec"] == seeded["spec"]
    (put,) = puts(server, "s1")
    assert put.path == f"/apis/{STASH}/v1beta1/namespaces/{NS}/backupsessions/s1/status"
    assert put.body["metadata"]["resourceVersion"] == rv
    assert put.body["spec"] == seeded["spec"]  # the body is the object as read, not as change() left it
    assert int(stored["metadata"]["resourceVersion"]) > int(rv)


def test_update_status_retries_on_conflict_with_a_fresh_object(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session())
    server.conflict_next(STASH, "backupsessions", NS, "s1", n=3)
    seen: list[dict] = []

    def change(obj: dict) -> dict:
        seen.append(obj)
        return {"phase": "Succeeded", "try": len(seen)}

    out = cluster.update_status("BackupSession", NS, "s1", change)
    assert len(puts(server, "s1")) == 4
    assert len(seen) == 4 and len({id(o) for o in seen}) == 4
    assert out["status"] == {"phase": "Succeeded", "try": 4}


def test_update_status_sees_a_concurrent_write(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session(stats=[]))
    calls = 0

    def change(obj: dict) -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else writes between our GET and our PUT: a real resourceVersion conflict
            server.mutate(STASH, "v1beta1", "backupsessions", NS, "s1",
                          lambda o: o["status"]["stats"].append("other") or o)
        return {**obj["status"], "stats": [*obj["status"]["stats"], "mine"]}

    out = cluster.update_status("BackupSession", NS, "s1", change)
    assert calls == 2
    assert [p.status for p in puts(server, "s1")] == [409, 200]
    assert out["status"]["stats"] == ["other", "mine"]


def test_update_status_gives_up(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session())
    server.conflict_next(STASH, "backupsessions", NS, "s1", n=100)
    with pytest.raises(ClusterError) as e:
        cluster.update_status("BackupSession", NS, "s1", lambda o: {"phase": "Failed"}, attempts=3)
    assert type(e.value) is ClusterError
    assert str(e.value).startswith(f"BackupSession {NS}/s1: status update still conflicting after 3 attempts")
    assert len(puts(server, "s1")) == 3


def test_update_status_from_eight_threads(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session(stats=[]))
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            cluster.update_status("BackupSession", NS, "s1",
                                  lambda o: {**o["status"], "stats": [*o["status"]["stats"], {"worker": i}]})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    stats = server.get(STASH, "v1beta1", "backupsessions", NS, "s1")["status"]["stats"]
    assert sorted(s["worker"] for s in stats) == list(range(8))
    assert len(puts(server, "s1")) >= 8


def test_update_status_nothing_to_write(server: KubeAPIServer, cluster: Cluster) -> None:
    (seeded,) = server.seed(session())
    out = cluster.update_status("BackupSession", NS, "s1", lambda o: None)
    assert out == seeded
    assert puts(server, "s1") == []
    assert server.resource_version == int(seeded["metadata"]["resourceVersion"])


def test_update_status_retries_a_server_error_on_the_write(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(stash_object("RestoreSession", "r1", status={"phase": "Pending"}))
    server.fail_next(1, 500, method="PUT")
    out = cluster.update_status("RestoreSession", NS, "r1", lambda o: {"phase": "Running"})
    assert out["status"] == {"phase": "Running"}
    assert [p.status for p in puts(server, "r1")] == [500, 200]


def test_update_status_of_a_missing_object(server: KubeAPIServer, cluster: Cluster) -> None:
    with pytest.raises(BadInput, match=f"^Repository {NS}/gone: not found"):
        cluster.update_status("Repository", NS, "gone", lambda o: {"x": 1})


def test_update_status_forbidden(server: KubeAPIServer, tmp_path) -> None:
    server.seed(session())
    server.add_token("reader", SA_USER, [("get", "backupsessions")])
    with connected(server.kubeconfig(str(tmp_path / "kc"), token="reader"), environ={}) as c, \
            pytest.raises(ClusterAccessDenied, match='cannot update resource "backupsessions/status"'):
        c.update_status("BackupSession", NS, "s1", lambda o: {"phase": "Running"})


# --- events -----------------------------------------------------------------------------------------------------


def test_event_is_created_about_the_object(server: KubeAPIServer, cluster: Cluster) -> None:
    server.seed(session())
    obj = cluster.get("BackupSession", NS, "s1")
    assert cluster.event(obj, reason="BackupFailed", message="pg_dumpall exited with 1", type="Warning") is True
    (ev,) = server.list_objects("", "v1", "events", NS)
    meta = obj["metadata"]
    assert ev["involvedObject"] == {"apiVersion": f"{STASH}/v1beta1", "kind": "BackupSession", "name": "s1",
                                    "namespace": NS, "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}
    assert ev["metadata"]["name"].startswith("s1.") and ev["metadata"]["namespace"] == NS
    assert (ev["reason"], ev["message"], ev["type"], ev["count"]) == \
        ("BackupFailed", "pg_dumpall exited with 1", "Warning", 1)
    assert ev["source"] == {"component": "stash-runner", "host": "runner-pod-1"}
    assert (ev["reportingComponent"], ev["reportingInstance"]) == ("stash-runner", "runner-pod-1")
    for field in ("firstTimestamp", "lastTimestamp"):
        when = datetime.fromisoformat(ev[field].replace("Z", "+00:00"))
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
        assert abs(time.time() - when.timestamp()) < 60


def test_event_that_cannot_be_written_is_one_warning(server: KubeAPIServer, tmp_path, caplog) -> None:
    server.seed(session())
    server.add_token("no-events", SA_USER, [("get", "backupsessions")])
    with connected(server.kubeconfig(str(tmp_path / "kc"), token="no-events"), environ={}) as c:
        obj = c.get("BackupSession", NS, "s1")
        with caplog.at_level(logging.WARNING, logger="stash_runner"):
            assert c.event(obj, reason="BackupSucceeded", message="done") is False
    records = [r for r in caplog.records if r.name == "stash_runner"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line
    assert line.startswith(f"could not record Event BackupSucceeded about BackupSession {NS}/s1: forbidden: ")
    assert 'cannot create resource "events"' in line
    assert server.list_objects("", "v1", "events") == []


def test_event_with_the_api_unreachable(caplog) -> None:
    c = Cluster(kubernetes.client.Configuration(host=f"http://127.0.0.1:{free_port()}"), hostname="h")
    with caplog.at_level(logging.WARNING, logger="stash_runner"):
        assert c.event(session(), reason="BackupSucceeded", message="done") is False
    c.close()
    (record,) = [r for r in caplog.records if r.name == "stash_runner"]
    assert "unreachable: connection refused" in record.getMessage()


# --- lifecycle --------------------------------------------------------------------------------------------------


def test_close_leaves_no_threads(server: KubeAPIServer, kubeconfig: str) -> None:
    server.seed(session())
    before = set(threading.enumerate())
    c = Cluster.connect(kubeconfig, environ={})
    c.update_status("BackupSession", NS, "s1", lambda o: {"phase": "Running"})
    c.event(c.get("BackupSession", NS, "s1"), reason="R", message="m")
    c.close()
    c.close()  # idempotent
    lingering = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    # the server's own per-connection threads end when the client's connections close
    deadline = time.monotonic() + 5
    while lingering and time.monotonic() < deadline:
        time.sleep(0.05)
        lingering = [t for t in lingering if t.is_alive()]
    assert lingering == []
