"""The container images in the tests: built with podman from images/ (scripts/build-images.sh, cached layers
make a rebuild take seconds) and run as the operator runs them — a non-root UID, a read-only root filesystem,
an emptyDir-like tmpfs at /stash-tmp — with ``--network=host`` so that they reach the test servers on the
host's loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from .pgcluster import SUPERUSER_PASSWORD, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINERS_CONF = os.path.join(ROOT, "images", "containers.conf")
VERSION = "0.1.0"
POD_UID = 65535  # the operator's pod securityContext.runAsUser (Stash's images say 65534)


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 900,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], capture_output=True, env=podman_env(), timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr.decode()[-3000:]}")
    return r


def build_images(suite: str = "bookworm") -> None:
    """scripts/build-images.sh for ``suite`` (and the base images it needs)."""
    for script, env in (("install-image-tools.sh", {}), ("build-images.sh", {"SUITE": suite})):
        r = subprocess.run(["bash", os.path.join(ROOT, "scripts", script)], capture_output=True,
                           env={**podman_env(), **env}, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"{script} (SUITE={suite}) failed:\n{r.stdout.decode()[-2000:]}"
                               f"{r.stderr.decode()[-4000:]}")


def image(family: str = "", suite: str = "bookworm") -> str:
    name = "stash-runner" + (f"-{family}" if family else "")
    return f"localhost/{name}:{VERSION}" + ("" if suite == "bookworm" else f"-{suite}")


def give_to(path: str, uid: int = POD_UID) -> None:
    """A volume the pod's UID may write, as an fsGroup'd volume would be."""
    for d, dirs, files in os.walk(path):
        for n in [d, *(os.path.join(d, x) for x in dirs + files)]:
            os.chown(n, uid, uid)


def run_in(img: str, *args: str, volumes: dict[str, str] | None = None, ro_volumes: dict[str, str] | None = None,
           uid: int = POD_UID, env: dict[str, str] | None = None, entrypoint: str | None = None,
           scratch: str | None = None, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``podman run`` as the operator's Job runs the image: ``uid``, read-only root (no tmpfs at /tmp either:
    Kubernetes' readOnlyRootFilesystem gives none), host network, and at /stash-tmp its emptyDir: a tmpfs, or
    the host directory ``scratch`` when the Job's steps share it."""
    empty_dir = f"--volume={scratch}:/stash-tmp" if scratch else \
        "--mount=type=tmpfs,destination=/stash-tmp,tmpfs-mode=1777"
    argv = ["run", "--rm", "--network=host", "--read-only", "--read-only-tmpfs=false", f"--user={uid}:{uid}",
            empty_dir]
    for host, inside in (volumes or {}).items():
        argv.append(f"--volume={host}:{inside}")
    for host, inside in (ro_volumes or {}).items():
        argv.append(f"--volume={host}:{inside}:ro")
    for k, v in (env or {}).items():
        argv.append(f"--env={k}={v}")
    if entrypoint:
        argv.append(f"--entrypoint={entrypoint}")
    return podman(*argv, img, *args, check=check, timeout=timeout)


@dataclass
class ContainerPostgres:
    """A PostgreSQL server of another major, in a container of the Debian suite that has it (trixie: 17), on a
    free port of the host's loopback. The ``url``/``password`` fields match tests/pgcluster.Cluster's, so the
    objects helpers take it."""

    name: str
    port: int
    major: int
    password: str = SUPERUSER_PASSWORD

    @property
    def url(self) -> str:
        return f"postgresql://127.0.0.1:{self.port}/postgres?sslmode=disable"

    def psql(self, sql: str, db: str = "postgres") -> str:
        r = podman("exec", "--user=postgres", "--env=PGPASSWORD=" + self.password, self.name,
                   "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-XAtqc", sql)
        return r.stdout.decode()

    def stop(self) -> None:
        podman("rm", "-f", "-t", "2", self.name, check=False)


def postgres_server_image(suite: str = "trixie") -> str:
    """tests/peers/postgresql-server.Containerfile on ``suite``'s base: Debian's PostgreSQL server of that suite."""
    tag = f"localhost/stash-runner-test-postgresql:{suite}"
    podman("build", "-q", "--network=host", f"--build-arg=BASE=localhost/stash-runner-base:{suite}",
           "-f", os.path.join(ROOT, "tests", "peers", "postgresql-server.Containerfile"), "-t", tag,
           os.path.join(ROOT, "tests", "peers"), timeout=1200)
    return tag


def start_container_postgres(img: str, name: str, *, timeout: float = 60) -> ContainerPostgres:
    port = free_port()
    shutil.rmtree(f"/dev/shm/{name}", ignore_errors=True)
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name, "--network=host", f"--env=PGPORT={port}",
           f"--env=POSTGRES_PASSWORD={SUPERUSER_PASSWORD}", img)
    pg = ContainerPostgres(name, port, 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = podman("exec", "--user=postgres", name, "pg_isready", "-h", "127.0.0.1", "-p", str(port), check=False)
        if r.returncode == 0:
            pg.major = int(pg.psql("SHOW server_version_num").strip()) // 10000
            return pg
        time.sleep(0.5)
    logs = podman("logs", name, check=False).stderr.decode()[-2000:]
    pg.stop()
    raise RuntimeError(f"PostgreSQL in container {name} did not start within {timeout} s:\n{logs}")
