"""stash_runner.stash.podexec: which pod an AppBinding's exec hooks run in, against the real kube-apiserver
(tests/kubecluster.py: Services, Endpoints and Pods are real objects there, though no pod ever runs), and the exec
stream itself against tests/execdouble.py (the real server answers every exec with 400: no kubelet, no node), plus
that 400 and a real RBAC 403 from the real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import yaml

from stash_runner.errors import ClusterAccessDenied, ClusterError, HookFailed
from stash_runner.stash import objects
from stash_runner.stash.kube import Cluster
from stash_runner.stash.podexec import OUTPUT_CAP, KubePodExec, pod_for_appbinding
from tests.execdouble import ExecDouble
from tests.kubecluster import Namespace, Pki, path_of
from tests.pgcluster import free_port
from tests.test_kube import sa_token, sa_user

NS = "demo"
TOKEN = "double-token-0123456789"


def appbinding(namespace: str, service: str | None = "pg", name: str = "pg") -> dict:
    client = {"service": {"name": service, "port": 5432, "scheme": "postgresql"}} if service else \
        {"url": "postgresql://pg.example.com:5432/"}
    return {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "kubedb.com/postgres", "clientConfig": client}}


def address(ip: str, kind: str | None = "Pod", name: str = "") -> dict:
    return {"ip": ip, **({"targetRef": {"kind": kind, "name": name}} if kind else {})}


def endpoints(namespace: str, *subsets: dict, name: str = "pg") -> dict:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace},
            "subsets": list(subsets)}


def pod(namespace: str, name: str, *containers: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": c, "image": "registry.invalid/db:1"} for c in containers]}}


def write_kubeconfig(path: str, server: str, ca: str, token: str) -> str:
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "t",
           "clusters": [{"name": "t", "cluster": {"server": server, "certificate-authority": ca}}],
           "users": [{"name": "t", "user": {"token": token}}],
           "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


# --- the real kube-apiserver: Endpoints and Pods as the server stores them -------------------------------------


def create(kube: Namespace, plural: str, obj: dict) -> dict:
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": kube.name}}
    return kube.plane.call("POST", path_of("", "v1", plural, kube.name), obj)


@pytest.fixture
def real(kube: Namespace, tmp_path) -> Iterator[Cluster]:
    """The admin's Cluster on the real server, with Service pg and pods db-0, db-1, db-2 (containers db, sidecar)."""
    create(kube, "services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg"},
                              "spec": {"ports": [{"port": 5432}]}})  # no selector: its Endpoints are ours to write
    for name in ("db-0", "db-1", "db-2"):
        create(kube, "pods", pod(kube.name, name, "db", "sidecar"))
    c = Cluster.connect(kube.kubeconfig(str(tmp_path / "kc")), environ={})
    yield c
    c.close()


def test_ready_pod_first_and_non_pod_targets_skipped(kube: Namespace, real: Cluster) -> None:
    create(kube, "endpoints", endpoints(kube.name, {
        "addresses": [address("10.1.0.1", None), address("10.1.0.2", "Node", "node-1"),
                      address("10.1.0.3", "Pod", "db-1")],
        "notReadyAddresses": [address("10.1.0.4", "Pod", "db-0")]}))
    assert pod_for_appbinding(real, kube.name, appbinding(kube.name)) == ("db-1", "db")
    # the same from the AppBinding as the runner reads it (objects.AppBinding keeps the service in its host)
    ab = objects.AppBinding.from_object(appbinding(kube.name), kube.name)
    assert pod_for_appbinding(real, kube.name, ab) == ("db-1", "db")
    assert [(r.verb, r.resource, r.name, r.status) for r in kube.requests(user="admin")] == [
        ("get", "endpoints", "pg", 200), ("get", "pods", "db-1", 200)] * 2


def test_not_ready_pod_when_no_ready_one(kube: Namespace, real: Cluster) -> None:
    create(kube, "endpoints", endpoints(kube.name, {
        "notReadyAddresses": [address("10.1.0.2", "Node", "node-1"), address("10.1.0.4", "Pod", "db-2")]}))
    assert pod_for_appbinding(real, kube.name, appbinding(kube.name)) == ("db-2", "db")


def test_subsets_in_order_as_stash_does(kube: Namespace, real: Cluster) -> None:
    # Stash looks at each subset's ready and then not-ready addresses before the next subset: a not-ready pod of
    # the first subset wins over a ready pod of the second.
    create(kube, "endpoints", endpoints(kube.name, {"notReadyAddresses": [address("10.1.0.4", "Pod", "db-0")]},
                                        {"addresses": [address("10.1.0.3", "Pod", "db-1")],
                                         "ports": [{"port": 5433}]}))
    stored = kube.plane.call("GET", path_of("", "v1", "endpoints", kube.name, "pg"))
    assert [list(s) for s in stored["subsets"]][0] == ["notReadyAddresses"]  # the server kept both subsets apart
    assert pod_for_appbinding(real, kube.name, appbinding(kube.name))[0] == "db-0"


def test_no_service_no_pod(kube: Namespace, real: Cluster) -> None:
    with pytest.raises(HookFailed) as e:
        pod_for_appbinding(real, kube.name, appbinding(kube.name, service=None, name="ext"))
    assert str(e.value).startswith(f"no pod found for AppBinding {kube.name}/ext")
    assert e.value.exit_code == 11
    assert kube.requests(user="admin") == []  # nothing to ask the server
    ab = objects.AppBinding.from_object(appbinding(kube.name, service=None, name="ext"), kube.name)
    with pytest.raises(HookFailed, match=f"^no pod found for AppBinding {kube.name}/ext"):
        pod_for_appbinding(real, kube.name, ab)


def test_endpoints_without_pods_or_missing(kube: Namespace, real: Cluster) -> None:
    with pytest.raises(HookFailed) as e:
        pod_for_appbinding(real, kube.name, appbinding(kube.name))
    assert str(e.value) == (f"no pod found for AppBinding {kube.name}/pg: Endpoints {kube.name}/pg: "
                            f"not found in the cluster ({real.server})")
    create(kube, "endpoints", endpoints(kube.name, {"addresses": [address("10.1.0.2", "Node", "node-1")]}))
    with pytest.raises(HookFailed) as e:
        pod_for_appbinding(real, kube.name, appbinding(kube.name))
    assert str(e.value) == f"no pod found for AppBinding {kube.name}/pg: Endpoints {kube.name}/pg lists no pod"


def test_exec_on_the_real_server_is_its_400(kube: Namespace, real: Cluster) -> None:
    # No kubelet runs here: the server refuses the exec of a pod without a node, and that is our one line.
    with pytest.raises(ClusterError) as e:
        KubePodExec(real, kube.name, "db-0", "db").run(["sh", "-c", "true"], "", 10)
    assert type(e.value) is ClusterError and e.value.exit_code == 9
    assert str(e.value) == f"Pod {kube.name}/db-0: exec failed: 400 pod db-0 does not have a host assigned"
    # one request, which the audit log records twice (a long-running request: ResponseStarted, ResponseComplete)
    reqs = [(r.verb, r.resource, r.name, r.status, r.query) for r in kube.requests() if r.subresource == "exec"]
    assert reqs == [("get", "pods", "db-0", 400,
                     "command=sh&command=-c&command=true&container=db&stdout=true&stderr=true")] * 2


def role(kube: Namespace, *exec_verbs: str) -> None:
    """Role stash-runner (sa_token made it): get endpoints and pods, and ``exec_verbs`` on pods/exec."""
    rules = [{"apiGroups": [""], "resources": ["endpoints", "pods"], "verbs": ["get"]}]
    if exec_verbs:
        rules.append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": list(exec_verbs)})
    kube.plane.call("PUT", path_of("rbac.authorization.k8s.io", "v1", "roles", kube.name, "stash-runner"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "stash-runner"},
        "rules": rules})


def exec_error(c: Cluster, kube: Namespace, unlike: str) -> ClusterError:
    """The error of an exec, once it is no longer the one starting with ``unlike`` (RBAC is served from a watch
    cache: a changed Role takes effect a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        with pytest.raises(ClusterError) as e:
            KubePodExec(c, kube.name, "db-1", "db").run(["true"], "", 10)
        if not (unlike and str(e.value).startswith(unlike)) or time.monotonic() > deadline:
            return e.value
        time.sleep(0.1)


def test_rbac_on_pods_exec(kube: Namespace, real: Cluster, tmp_path) -> None:
    create(kube, "endpoints", endpoints(kube.name, {"addresses": [address("10.1.0.3", "Pod", "db-1")]}))
    # Stash's backup job RBAC minus pods/exec: the pod is found, the exec refused by the server's RBAC filter
    token = sa_token(kube, ("get", "", "endpoints"), ("get", "", "pods"))
    with Cluster.connect(kube.kubeconfig(str(tmp_path / "sa"), token=token), environ={}) as c:
        ex = KubePodExec.for_appbinding(c, kube.name, appbinding(kube.name))
        with pytest.raises(ClusterAccessDenied) as e:
            ex.run(["true"], "", 10)
        assert e.value.exit_code == 10
        assert str(e.value) == (f'Pod {kube.name}/db-1: forbidden: pods "db-1" is forbidden: User "{sa_user(kube)}" '
                                f'cannot get resource "pods/exec" in API group "" in the namespace "{kube.name}"')
        assert token not in str(e.value)
        # get only: the exec handler's own check for create refuses it, in words that name nothing
        role(kube, "get")
        err = exec_error(c, kube, str(e.value))
        assert type(err) is ClusterAccessDenied
        assert str(err) == (f'Pod {kube.name}/db-1: forbidden: pods "db-1" is forbidden: an exec needs get and '
                            f'create on pods/exec')
        # get and create, as Stash's job Role has them: the server goes on to its 400
        role(kube, "get", "create")
        err = exec_error(c, kube, f"Pod {kube.name}/db-1: forbidden")
        assert type(err) is ClusterError
        assert str(err) == f"Pod {kube.name}/db-1: exec failed: 400 pod db-1 does not have a host assigned"


# --- the exec stream, against the double -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki.make(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def double(pki: Pki) -> Iterator[ExecDouble]:
    with ExecDouble(cert=pki.cert, key=pki.key, token=TOKEN) as d:
        d.seed(endpoints(NS, {"addresses": [address("10.1.0.3", "Pod", "db-0")]}), pod(NS, "db-0", "db", "sidecar"))
        yield d


@pytest.fixture
def cluster(double: ExecDouble, pki: Pki, tmp_path) -> Iterator[Cluster]:
    c = Cluster.connect(write_kubeconfig(str(tmp_path / "kc"), double.url, pki.ca, TOKEN), environ={})
    yield c
    c.close()


def exec_queries(double: ExecDouble) -> list[dict]:
    return [q for path, q in double.requests if path.endswith("/exec")]


def test_exit_zero_with_output(double: ExecDouble, cluster: Cluster) -> None:
    ex = KubePodExec.for_appbinding(cluster, NS, appbinding(NS))
    assert (ex.pod, ex.default_container) == ("db-0", "db")
    assert ex.run(["sh", "-c", "echo hello; printf 'wor ld'"], "", 10) == (0, "hello\nwor ld")
    assert exec_queries(double) == [{"command": ["sh", "-c", "echo hello; printf 'wor ld'"], "container": ["db"],
                                     "stdout": ["true"], "stderr": ["true"]}]
    assert ex.check(["true"], "", 10) == ""


def test_container_name_or_the_first_container(double: ExecDouble, cluster: Cluster) -> None:
    ex = KubePodExec(cluster, NS, "db-0")  # no default given: the pod is read for its first container
    assert ex.run(["true"], "sidecar", 10)[0] == 0
    assert ex.run(["true"], "", 10)[0] == 0
    assert [q["container"] for q in exec_queries(double)] == [["sidecar"], ["db"]]
    assert [p for p, _ in double.requests].count(f"/api/v1/namespaces/{NS}/pods/db-0") == 1
    with pytest.raises(ClusterError) as e:
        ex.run(["true"], "nope", 10)
    assert str(e.value) == f"Pod {NS}/db-0: exec failed: 400 container nope is not valid for pod db-0"


def test_non_zero_exit_and_stderr(cluster: Cluster) -> None:
    ex = KubePodExec(cluster, NS, "db-0", "db")
    script = "echo out1; sleep 0.05; echo err1 >&2; sleep 0.05; echo out2; echo 'last words' >&2; exit 3"
    assert ex.run(["sh", "-c", script], "", 10) == (3, "out1\nerr1\nout2\nlast words\n")  # in the order written
    with pytest.raises(HookFailed) as e:
        ex.check(["sh", "-c", script], "", 10)
    assert str(e.value) == f"exec in pod {NS}/db-0, container db: exit code 3: last words"
    assert e.value.exit_code == 11
    with pytest.raises(HookFailed, match=r"container db: exit code 1 \(no output\)$"):
        ex.check(["false"], "", 10)


def test_output_capped_keeps_the_end(cluster: Cluster) -> None:
    ex = KubePodExec(cluster, NS, "db-0", "db")
    code, out = ex.run(["seq", "1", "20000"], "", 20)
    full = "".join(f"{i}\n" for i in range(1, 20001))
    assert code == 0 and len(full) > 10 * OUTPUT_CAP
    assert out == full[-OUTPUT_CAP:]
    # a cut inside a UTF-8 character drops its stray bytes instead of showing a replacement character
    code, out = ex.run(["python3", "-c", "print('é' * 10000)"], "", 20)
    assert (code, out) == (0, "é" * 5119 + "\n")


def test_timeout(double: ExecDouble, cluster: Cluster) -> None:
    ex = KubePodExec(cluster, NS, "db-0", "db")
    start = time.monotonic()
    with pytest.raises(HookFailed) as e:
        ex.run(["sh", "-c", "echo started; sleep 30"], "", 1.5)
    assert 1.5 <= time.monotonic() - start < 5
    assert str(e.value) == f"exec in pod {NS}/db-0, container db: did not finish within the timeout of 1.5s"
    (proc,) = double.procs
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:  # the double saw the close (see its docstring)
        time.sleep(0.05)
    assert proc.returncode is not None


def test_command_that_cannot_start(cluster: Cluster) -> None:
    with pytest.raises(HookFailed) as e:
        KubePodExec(cluster, NS, "db-0", "db").run(["/no/such/tool", "--flag"], "", 10)
    assert str(e.value) == (f"exec in pod {NS}/db-0, container db: Internal error occurred: error executing command "
                            f'in container: exec: "/no/such/tool": No such file or directory')


@pytest.mark.parametrize("verb", ["get", "create"])
def test_forbidden_exec(double: ExecDouble, cluster: Cluster, verb: str) -> None:
    double.forbid_exec = verb
    with pytest.raises(ClusterAccessDenied) as e:
        KubePodExec(cluster, NS, "db-0", "db").run(["true"], "", 10)
    assert e.value.exit_code == 10
    why = (f'User "{double.user}" cannot get resource "pods/exec" in API group "" in the namespace "{NS}"'
           if verb == "get" else "an exec needs get and create on pods/exec")
    assert str(e.value) == f'Pod {NS}/db-0: forbidden: pods "db-0" is forbidden: {why}'
    assert not double.procs


def test_refused_token_and_no_server(double: ExecDouble, pki: Pki, tmp_path) -> None:
    with Cluster.connect(write_kubeconfig(str(tmp_path / "kc"), double.url, pki.ca, "wrong"), environ={}) as c, \
            pytest.raises(ClusterAccessDenied, match=r"the credentials were refused \(401 Unauthorized\)"):
        KubePodExec(c, NS, "db-0", "db").run(["true"], "", 10)
    assert exec_queries(double) and not double.procs  # refused before anything ran
    url = f"https://127.0.0.1:{free_port()}"
    with Cluster.connect(write_kubeconfig(str(tmp_path / "kc2"), url, pki.ca, TOKEN), environ={}) as c, \
            pytest.raises(ClusterError, match=f"^Kubernetes API at {url} unreachable: connection refused$"):
        KubePodExec(c, NS, "db-0", "db").run(["true"], "", 10)
