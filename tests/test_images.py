"""The container images, built from images/ with podman and run as Stash's operator runs them (UID 65535,
read-only root filesystem, a tmpfs at /stash-tmp, host network to the test servers on the loopback): a real
backup and restore inside each image — PostgreSQL (repository on a mounted volume and on S3), MongoDB
(FerretDB), Elasticsearch (elasticdump into the interim volume) — with restic judging every repository on the
host; the PostgreSQL client matched to the server across Debian suites (a 17 server in a trixie container);
and the README's `podman run` walk-through, run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from . import images
from .esdata import delete, documents, seed, state
from .esservers import start_search_server
from .helpers import database_objects, objects_yaml, restic
from .images import POD_UID, give_to, image, podman, run_in
from .kubecluster import Namespace
from .test_catalog import backup_configuration, catalog, operator_vars, phase, repository
from .test_elasticsearch import ES_PASSWORD, es_objects
from .test_mongodb import drop_all, mongo_objects, raw_documents
from .test_session import manifests, rbac_objects, session, task_steps

ROOT = images.ROOT
AS_STASH = ("-n", "demo")


@pytest.fixture(scope="module")
def built():
    """The bookworm images (make images); seconds when podman's layer cache has them."""
    images.build_images("bookworm")


@pytest.fixture
def volume(tmp_path):
    """A host directory mounted into the container (the repository volume), owned by the pod's UID."""

    def make(name: str) -> str:
        d = tmp_path / name
        d.mkdir()
        give_to(str(d))
        return str(d)

    return make


def assert_one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


# -- what is in each image ------------------------------------------------------------------------------------

def test_image_metadata_user_and_tools(built):
    for family in ("", "postgres", "mongodb", "elasticsearch"):
        img = image(family)
        cfg = json.loads(podman("image", "inspect", img).stdout)[0]["Config"]
        assert cfg["User"] == "65534:65534", img
        assert cfg["Entrypoint"] == ["stash-runner"], img
        assert "/stash-tmp" in cfg["Volumes"], img
        labels = cfg["Labels"]
        assert labels["org.opencontainers.image.version"] == images.VERSION
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert labels["org.opencontainers.image.title"] == "stash-runner" + (f"-{family}" if family else "")
        # runs as the operator's pod UID with nothing writable but /stash-tmp
        r = run_in(img, "--version")
        assert r.returncode == 0 and images.VERSION.encode() in r.stdout, r.stderr
    which = "for t in pg_dump pg_dumpall psql pg_isready mongodump mongorestore node elasticdump multielasticdump; " \
            "do command -v $t >/dev/null && echo $t; done; true"
    have = {f: run_in(image(f), "-c", which, entrypoint="/bin/sh", check=True).stdout.decode().split()
            for f in ("postgres", "mongodb", "elasticsearch")}
    assert have["postgres"] == ["pg_dump", "pg_dumpall", "psql", "pg_isready"]
    assert have["mongodb"] == []  # pymongo does the work: no MongoDB tools
    assert have["elasticsearch"] == ["node", "elasticdump", "multielasticdump"]


def test_root_filesystem_is_read_only_and_only_stash_tmp_is_written(built):
    r = run_in(image(), "-c", "touch /opt/x 2>&1; touch /tmp/x 2>&1; touch /stash-tmp/x && echo wrote; "
               "id -u; echo $HOME $TMPDIR", entrypoint="/bin/sh", check=True)
    out = r.stdout.decode()
    assert out.count("Read-only file system") == 2 and "wrote" in out, out
    assert f"{POD_UID}\n/stash-tmp /stash-tmp" in out
    # and as Stash's image UID too
    assert run_in(image(), "--version", uid=65534).returncode == 0


def test_hadolint_is_clean():
    files = sorted(os.path.join(ROOT, "images", f) for f in os.listdir(os.path.join(ROOT, "images"))
                   if f.endswith(".Containerfile"))
    assert len(files) == 4
    r = subprocess.run(["hadolint", "--config", os.path.join(ROOT, ".hadolint.yaml"), *files], capture_output=True)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


# -- a real backup and restore inside each image ------------------------------------------------------------

def _pg(*args: str, objects: str, repo: str | None = None, env: dict | None = None, uid: int = POD_UID,
        img: str = ""):
    volumes = {repo: "/repo"} if repo else {}
    return run_in(img or image("postgres"), *args, "--objects", "/objects.yaml", *AS_STASH, "--appbinding", "pg",
                  "--repository", "repo", volumes=volumes, ro_volumes={objects: "/objects.yaml"}, env=env, uid=uid)


def test_postgres_backup_and_restore_in_the_image_on_a_volume(built, source_pg, fresh_pg, tmp_path, volume):
    repo = volume("repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir="/repo")
    os.chmod(objects, 0o644)
    r = _pg("backup", objects=objects, repo=repo)
    assert r.returncode == 0, r.stderr.decode()
    assert source_pg.password.encode() not in r.stdout + r.stderr
    restic(repo, "check", "--read-data")
    (snap,) = json.loads(restic(repo, "snapshots", "--json").stdout)
    assert snap["paths"] == ["/dumpfile.sql"]
    target = fresh_pg()
    objects_t = objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir="/repo")
    os.chmod(objects_t, 0o644)
    r = _pg("restore", objects=objects_t, repo=repo)
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()


def test_postgres_backup_and_restore_in_the_image_on_s3(built, source_pg, fresh_pg, moto_server, tmp_path):
    def s3(path, cluster) -> str:
        p = objects_yaml(str(path), cluster=cluster, storage_secret=moto_server.env,
                         backend={"s3": {"endpoint": moto_server.url, "bucket": "images", "prefix": "pg"}})
        os.chmod(p, 0o644)
        return p

    r = _pg("backup", objects=s3(tmp_path / "o.yaml", source_pg))
    assert r.returncode == 0, r.stderr.decode()
    repo = f"s3:{moto_server.url}/images/pg"
    restic(repo, "check", "--read-data", env=moto_server.env)
    target = fresh_pg()
    r = _pg("restore", objects=s3(tmp_path / "t.yaml", target))
    assert r.returncode == 0, r.stderr.decode()
    assert target.contents() == source_pg.contents()


def test_mongodb_backup_and_restore_in_the_image(built, ferretdb, tmp_path, volume):
    client = ferretdb.client()
    drop_all(client)
    client["shop"]["items"].insert_many([{"n": i, "name": f"item {i}", "tags": ["a", "b"][: i % 3]}
                                        for i in range(2000)])
    client["crm"]["people"].insert_one({"name": "Ada", "nested": {"x": 1.5}})
    before = {ns: raw_documents(client, ns) for ns in ("shop.items", "crm.people")}
    repo = volume("repo")
    objects = mongo_objects(str(tmp_path / "o.yaml"), ferretdb)
    storage = database_objects(str(tmp_path / "s.yaml"), app_type="kubedb.com/mongodb",
                               client_config={"url": ferretdb.url}, name="unused", repo_dir="/repo")
    for p in (objects, storage):
        os.chmod(p, 0o644)
    common = ["--objects", "/o.yaml", "--objects", "/s.yaml", "--provider=local", "--path=/repo",
              "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo", "--namespace=demo",
              "--appbinding=mg", "--appbinding-namespace=demo", "--authentication-database=admin",
              "--scratch-dir=/stash-tmp"]
    mounts = dict(volumes={repo: "/repo"}, ro_volumes={objects: "/o.yaml", storage: "/s.yaml"})
    r = run_in(image("mongodb"), "backup-mongo", *common, "--backupsession=", "--output-dir=/stash-tmp/output",
               **mounts)
    assert r.returncode == 0, r.stderr.decode()
    assert ferretdb.password.encode() not in r.stdout + r.stderr
    restic(repo, "check", "--read-data")
    (snap,) = json.loads(restic(repo, "snapshots", "--json").stdout)
    assert snap["paths"] == ["/dump"]
    drop_all(client)
    r = run_in(image("mongodb"), "restore-mongo", *common, "--restoresession=", "--mongo-args=--drop", **mounts)
    assert r.returncode == 0, r.stderr.decode()
    assert {ns: raw_documents(client, ns) for ns in before} == before


@pytest.fixture(scope="module")
def es8(tmp_path_factory):
    server = start_search_server("es8", str(tmp_path_factory.mktemp("es8-images")), security=True, tls=True,
                                 password=ES_PASSWORD)
    try:
        seed(server, big=5000)
        yield server
    finally:
        server.stop()


def test_elasticsearch_backup_es_and_restore_es_with_elasticdump_in_the_image(built, es8, tmp_path, volume):
    """Stash's interim-volume flow inside the image: elasticdump (node) dumps into the interim volume over
    HTTPS with the AppBinding's CA and the password, the runner backs the directory up; restore-es reverses."""
    names = ("products", "logs-2026.11")
    before = {n: (state(es8, n), documents(es8, n)) for n in names}
    repo, interim = volume("repo"), volume("interim")
    objects = es_objects(str(tmp_path / "o.yaml"), es8, repo_dir="/repo")
    os.chmod(objects, 0o644)
    common = ["--objects", "/o.yaml", "--provider=local", "--bucket=/repo", "--path=",
              "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo", "--scratch-dir=/stash-tmp",
              "--interim-data-dir=/interim", "--namespace=demo", "--appbinding=es", "--appbinding-namespace=demo",
              "--es-args=", "--output-dir=/stash-tmp/output"]
    mounts = dict(volumes={repo: "/repo", interim: "/interim"}, ro_volumes={objects: "/o.yaml"})
    r = run_in(image("elasticsearch"), "backup-es", *common, "--backupsession=", **mounts)
    assert r.returncode == 0, r.stderr.decode()
    assert ES_PASSWORD.encode() not in r.stdout + r.stderr
    restic(repo, "check", "--read-data")
    files = restic(repo, "ls", "latest").stdout.decode()
    assert "/interim/products" in files, files[:2000]
    delete(es8, *names)
    r = run_in(image("elasticsearch"), "restore-es", *common, **mounts)
    assert r.returncode == 0, r.stderr.decode()
    after = {n: (state(es8, n), documents(es8, n)) for n in names}
    assert {n: s for n, (s, _) in after.items()} == {n: s for n, (s, _) in before.items()}
    assert {n: len(d) for n, (_, d) in after.items()} == {n: len(d) for n, (_, d) in before.items()}


# -- the PostgreSQL client matched to the server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pg17(built):
    images.build_images("trixie")
    server_image = images.postgres_server_image("trixie")
    servers = [images.start_container_postgres(server_image, f"stash-runner-test-pg17-{i}-{os.getpid()}")
               for i in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_a_postgresql_17_server_needs_a_17_client(pg17, tmp_path, volume):
    """Debian bookworm's image has pg_dump 15 only: against a 17 server it stops before dumping with one line
    naming both versions, and the repository is not even created. The image built on trixie has 17: backup,
    restic check, and a restore into another 17 server give the same data back."""
    source, target = pg17
    assert source.major == target.major == 17
    source.psql("CREATE DATABASE shop")
    source.psql("CREATE TABLE items(id int primary key, name text, price numeric(8,2)); "
                "INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 5000) g", db="shop")
    repo = volume("repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source, repo_dir="/repo")
    os.chmod(objects, 0o644)

    r = _pg("backup", objects=objects, repo=repo)
    line = assert_one_line(r)
    assert r.returncode != 0
    assert re.search(r"\b17\.\d+", line) and "15" in line, line
    assert os.listdir(repo) == [], "nothing is written before the versions are checked"

    trixie = image("postgres", "trixie")
    r = _pg("backup", objects=objects, repo=repo, img=trixie)
    assert r.returncode == 0, r.stderr.decode()
    assert "/usr/lib/postgresql/17/bin" in r.stderr.decode()
    restic(repo, "check", "--read-data")
    objects_t = objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir="/repo")
    os.chmod(objects_t, 0o644)
    r = _pg("restore", objects=objects_t, repo=repo, img=trixie)
    assert r.returncode == 0, r.stderr.decode()
    q = "SELECT count(*), sum(price) FROM items"
    assert target.psql(q, db="shop") == source.psql(q, db="shop") == "5000|15628125.00\n"


def test_a_newer_client_dumps_an_older_server(pg17, source_pg, fresh_pg, tmp_path, volume):
    """No 15 client in the trixie image: the runner takes the newest newer one (17) for the host's 15 server."""
    repo = volume("repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir="/repo")
    os.chmod(objects, 0o644)
    trixie = image("postgres", "trixie")
    r = _pg("backup", objects=objects, repo=repo, img=trixie)
    assert r.returncode == 0, r.stderr.decode()
    assert "/usr/lib/postgresql/17/bin" in r.stderr.decode()
    restic(repo, "check", "--read-data")
    dump = restic(repo, "dump", "latest", "/dumpfile.sql").stdout
    assert b"-- Dumped by pg_dump version 17." in dump


# -- a Job of the catalog, from the image its Functions name, in-cluster ------------------------------------

def _mount_service_account(kube: Namespace, sa) -> None:
    """What a pod has at /var/run/secrets/kubernetes.io/serviceaccount: a token of ServiceAccount stash-runner,
    bound to deploy/rbac.yaml's Role, the cluster's CA and the namespace."""
    (sa / "token").write_text(kube.service_account_token("stash-runner", *rbac_objects(manifests())))
    (sa / "namespace").write_text(kube.name)
    with open(kube.plane.pki.ca) as f:
        (sa / "ca.crt").write_text(f.read())
    for f in sa.iterdir():
        f.chmod(0o644)


def run_job_in_images(kube: Namespace, tmp_path, task_name: str, env: dict[str, str], *, repo: str) -> None:
    """The Job the operator makes of ``task_name``: each step in the image its Function names (the catalog's
    short name, found in local storage as podman and a node's image cache do), its args rendered as the operator
    renders them, the steps sharing /stash-tmp; the cluster found in-cluster, with the token of a ServiceAccount
    bound to deploy/rbac.yaml's Role mounted where a pod has it."""
    functions, tasks = catalog()
    sa = tmp_path / "serviceaccount"
    if not sa.exists():
        sa.mkdir()
        _mount_service_account(kube, sa)
    scratch = tmp_path / f"stash-tmp-{task_name}"
    scratch.mkdir()
    give_to(str(scratch))
    for name, args in task_steps(tasks[("Task", task_name)], functions, env, "/stash-tmp"):
        img = functions[("Function", name)]["spec"]["image"]
        assert "/" not in img.split(":")[0], f"{name}: the catalog names images without a registry: {img}"
        r = run_in(img, *args, scratch=str(scratch), volumes={repo: "/repo"},
                   ro_volumes={str(sa): "/var/run/secrets/kubernetes.io/serviceaccount"},
                   env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.plane.port)})
        assert r.returncode == 0, f"{name} in {img}: {r.stderr.decode()}"


def test_the_catalogs_postgres_tasks_run_in_their_images_in_cluster(built, kube, source_pg, fresh_pg, tmp_path,
                                                                   volume):
    """deploy/catalog's postgres backup and restore Tasks as Jobs: every step in the image its Function names, as
    UID 65535 with a read-only root, in-cluster against the real kube-apiserver with deploy/rbac.yaml's token."""
    repo = volume("repo")
    kube.load_fixtures(objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir="/repo",
                                    namespace=kube.name))
    target = fresh_pg()
    kube.load_fixtures(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, namespace=kube.name,
                                    appbinding="pg-restored"))
    bc = backup_configuration("pg-backup", "stash-runner-postgres-backup", "pg")
    kube.seed(bc, session("s1", invoker_name="pg-backup"))
    env = {**operator_vars(kube, bc, repository(kube)), "BACKUP_SESSION": "s1"}
    run_job_in_images(kube, tmp_path, "stash-runner-postgres-backup", env, repo=repo)
    assert phase(kube, "backupsessions", "s1") == "Succeeded"
    restic(repo, "check", "--read-data")
    (snap,) = json.loads(restic(repo, "snapshots", "--json").stdout)

    rs = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "r1"},
          "spec": {"repository": {"name": "repo"}, "task": {"name": "stash-runner-postgres-restore"},
                   "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                      "name": "pg-restored"},
                              "rules": [{"snapshots": [f"repo-{snap['short_id']}"]}]}}}  # Stash's name for it
    kube.seed(rs)
    run_job_in_images(kube, tmp_path, "stash-runner-postgres-restore", operator_vars(kube, rs, repository(kube)),
                      repo=repo)
    assert target.contents() == source_pg.contents()
    assert phase(kube, "restoresessions", "r1") == "Succeeded"
    sa = f"system:serviceaccount:{kube.name}:stash-runner"
    assert not [q for q in kube.requests(user=sa) if q.status in (401, 403)]


# -- the README's `podman run` walk-through ---------------------------------------------------------------

def readme_block(marker: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(rf"<!-- {marker} -->\s*```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    assert m, f"README has no block marked <!-- {marker} -->"
    return m.group(1)


def test_the_readme_podman_run_walk_through_runs_as_written(built, source_pg, fresh_pg, tmp_path):
    """The README's debugging commands, run by bash as a user would paste them (in an empty directory, with
    the objects file they are told to write)."""
    work = tmp_path / "debug"
    work.mkdir()
    os.chmod(work, 0o755)
    objects_yaml(str(work / "objects.yaml"), cluster=source_pg, repo_dir="/repo")
    script = readme_block("podman-run-walk-through")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True,
                       env=images.podman_env(), timeout=600)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    restic(str(work / "repo"), "check", "--read-data")
    assert "host-0" in out and "/dumpfile.sql" in out  # the snapshots listing
    dump = (work / "restored" / "dumpfile.sql").read_bytes()
    assert b"PostgreSQL database cluster dump complete" in dump
    # and the restore into a database, with an objects file pointing at a fresh cluster
    target = fresh_pg()
    objects_yaml(str(work / "objects.yaml"), cluster=target, repo_dir="/repo")
    # the README says "with RUN and IMAGE as above"
    above = "".join(ln + "\n" for ln in script.splitlines() if ln.startswith(("IMAGE=", "RUN=")))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", above + readme_block("podman-run-restore")], cwd=work,
                       capture_output=True, env=images.podman_env(), timeout=600)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert target.contents() == source_pg.contents()
