from __future__ import annotations

import os
import secrets
import shutil
import tempfile

import pytest

from . import mongoservers, servers
from .kubecluster import ControlPlane, Namespace
from .pgcluster import PgCluster, load_sample
from .pushgateway import start_pushgateway


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [t for t in ("restic", "pg_dumpall", "psql", "pg_isready", "runuser") if not shutil.which(t)]
    if missing:
        raise pytest.UsageError(f"missing tools {missing}: run `make deps` (scripts/install-deps.sh)")


@pytest.fixture(scope="session")
def workdir():
    # Not under /root: the postgres OS user must be able to reach its cluster directories.
    d = tempfile.mkdtemp(prefix="stash-runner-tests-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def source_pg(workdir):
    """A cluster with sample data: roles, a database with several column types, a view."""
    c = PgCluster(os.path.join(workdir, "source-pg")).start()
    load_sample(c)
    yield c
    c.destroy()


@pytest.fixture
def fresh_pg(workdir):
    """A factory of empty clusters, destroyed after the test."""
    made: list[PgCluster] = []

    def make() -> PgCluster:
        c = PgCluster(tempfile.mkdtemp(prefix="pg-", dir=workdir)).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.destroy()


@pytest.fixture
def repo_dir(tmp_path):
    return str(tmp_path / "repo")


def _server(start, workdir: str, name: str):
    s = start(os.path.join(workdir, name))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def moto_server(workdir):
    """moto's S3 server on a free loopback port; ``.env`` has its credentials."""
    yield from _server(servers.start_moto, workdir, "moto")


@pytest.fixture(scope="session")
def gcs_server(workdir):
    """fake-gcs-server; ``.env`` has STORAGE_EMULATOR_HOST."""
    yield from _server(servers.start_fake_gcs, workdir, "fake-gcs")


@pytest.fixture(scope="session")
def azurite_server(workdir):
    """Azurite's blob service; ``.env`` has the dev account, key and AZURE_ENDPOINT."""
    yield from _server(servers.start_azurite, workdir, "azurite")


@pytest.fixture(scope="module")
def gateway(workdir, request):
    """Debian's Pushgateway, one per test module (each module reads back only what it pushed)."""
    yield from _server(start_pushgateway, workdir, f"pushgateway-{request.module.__name__}")


def _start_ferretdb_with_auth(replica_set: str | None = None):
    # A fresh random password per session; it reaches FerretDB through its environment only.
    return lambda d: mongoservers.start_ferretdb(d, username="stash-admin", password=secrets.token_urlsafe(18),
                                                 replica_set=replica_set)


@pytest.fixture(scope="session")
def ferretdb(workdir):
    """FerretDB (SQLite), standalone, SCRAM auth: ``.url`` (no credentials), ``.username``, ``.password``
    (user in ``admin``), ``.client()`` (authenticated pymongo client)."""
    yield from _server(_start_ferretdb_with_auth(), workdir, "ferretdb")


@pytest.fixture(scope="session")
def ferretdb_rs(workdir):
    """FerretDB as replica set ``rs0`` (always primary) keeping ``local.oplog.rs``; SCRAM auth as ``ferretdb``."""
    yield from _server(_start_ferretdb_with_auth("rs0"), workdir, "ferretdb-rs")


@pytest.fixture(scope="session")
def mongo_java(workdir):
    """mongo-java-server (memory backend): no auth, wire version 8; BSON types and index kinds round-trip."""
    yield from _server(mongoservers.start_mongo_java_server, workdir, "mongo-java-server")


@pytest.fixture(scope="session")
def control_plane():
    """A real etcd + kube-apiserver (TLS, RBAC, tokens, audit log, deploy/crds applied), one per test session."""
    plane = ControlPlane().start()
    yield plane
    plane.stop()


@pytest.fixture
def kube(control_plane) -> Namespace:
    """A namespace of its own on the real control plane, for one test."""
    return control_plane.namespace()
