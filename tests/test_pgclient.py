"""Choosing pg_dump/pg_dumpall/psql by the server's major version (drivers/pgclient.py), on the real PostgreSQL 15 peer.

This host has only PostgreSQL 15. The choice between majors is tested on temporary trees whose ``<major>/bin``
directories hold symlinks to the host's 15 binaries: their directory names are what is tested, the binaries are
never run under another major's name. The real cross-version run (a newer server than the client) is tested
elsewhere, against a PostgreSQL 17 server in a container.
"""

from __future__ import annotations

import logging
import os
import shutil

import psycopg
import pytest

from backends.local import LocalBackend
from drivers import pgclient
from drivers.pgclient import Client, choose, find_clients, format_version, major_of, server_version
from drivers.postgres import Connection, PostgresDriver
from stash_runner.errors import ToolFailed
from stash_runner.flows.backup import BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore

from .helpers import REPO_PASSWORD, objects_yaml, restic, runner
from .pgcluster import pg_bindir

HOST_BINDIR = "/usr/lib/postgresql/15/bin"
NS = ["-n", "demo"]


def fake_tree(root, layout: dict[str, tuple[str, ...]]) -> str:
    """``root/<name>/bin/<tool>`` for each name -> tools, each a symlink to the host's 15 binary of that tool."""
    for name, tools in layout.items():
        bindir = root / name / "bin"
        bindir.mkdir(parents=True)
        for tool in tools:
            (bindir / tool).symlink_to(os.path.join(pg_bindir(), tool))
    return str(root)


ALL = pgclient.TOOLS


@pytest.fixture
def tree(tmp_path):
    """Majors 13, 15, 16 with every tool; 17 with psql only; and entries that are not clients."""
    root = fake_tree(tmp_path / "pg", {"13": ALL, "15": ALL, "16": ALL, "17": ("psql",), "14": (), "9.6": ALL})
    (tmp_path / "pg" / "18" / "bin").mkdir(parents=True)
    (tmp_path / "pg" / "18" / "bin" / "pg_dump").write_text("not executable")
    (tmp_path / "pg" / "README").write_text("a file, not a directory")
    return root


def test_find_clients_on_this_host():
    clients = find_clients()
    assert [c.major for c in clients] == [15]  # /usr/bin/pg_dump is Debian's pg_wrapper: not another client
    assert clients[0].bindir == HOST_BINDIR and clients[0].tools == frozenset(ALL)
    assert clients[0].path("pg_dumpall") == HOST_BINDIR + "/pg_dumpall"


def test_find_clients_in_a_tree(tree, tmp_path):
    clients = find_clients(tree, path="")
    assert [(c.major, sorted(c.tools)) for c in clients] == [
        (13, sorted(ALL)), (15, sorted(ALL)), (16, sorted(ALL)), (17, ["psql"])]
    assert clients[0].bindir == os.path.join(tree, "13", "bin")
    assert find_clients(str(tmp_path / "missing"), path="") == []


def test_find_clients_adds_the_pg_dump_on_path_when_it_is_another_one(tmp_path):
    root = fake_tree(tmp_path / "pg", {"13": ALL, "16": ALL})
    # A directory on PATH with its own client (as /usr/bin on Alpine): major from `pg_dump --version` (15). A copy,
    # not a symlink: the tree's symlinks resolve to the host's binary, and a pg_dump that is one of those is skipped.
    own = tmp_path / "bin"
    own.mkdir()
    for tool in ("pg_dump", "psql"):
        shutil.copy2(os.path.join(HOST_BINDIR, tool), own / tool)
    clients = find_clients(root, path=f"{tmp_path / 'empty'}:{own}")
    assert [(c.major, c.bindir) for c in clients] == [
        (13, f"{root}/13/bin"), (15, str(own)), (16, f"{root}/16/bin")]
    assert clients[1].tools == frozenset({"pg_dump", "psql"})
    # Not added: Debian's pg_wrapper (/usr/bin), a tree directory itself, or a major the tree already has.
    assert [c.major for c in find_clients(root, path="/usr/bin:/bin")] == [13, 16]
    assert [c.major for c in find_clients(root, path=f"{root}/16/bin")] == [13, 16]
    with_15 = fake_tree(tmp_path / "pg15", {"15": ALL})
    assert [(c.major, c.bindir) for c in find_clients(with_15, path=str(own))] == [(15, f"{with_15}/15/bin")]


def test_choose_same_major_else_newest_newer(tree):
    clients = find_clients(tree, path="")
    for tool in ("pg_dump", "pg_dumpall"):
        c = choose(15, clients, tool)
        assert (c.client.major, c.reason, c.warn) == (15, "same major", False)
        assert c.path == os.path.join(tree, "15", "bin", tool)
        c = choose(14, clients, tool)  # 15 and 16 are newer: the newest
        assert (c.client.major, c.warn) == (16, False) and "newest newer" in c.reason
        assert choose(11, clients, tool).client.major == 16
        assert choose(13, clients, tool).client.major == 13
    # 17 has psql but no pg_dump: only psql is taken from it
    assert choose(17, clients, "psql").client.major == 17
    assert choose(16, clients, "psql").client.major == 16
    # the version could not be read: the newest, with a warning
    c = choose(None, clients, "pg_dump")
    assert (c.client.major, c.warn) == (16, True)


def test_choose_fails_naming_both_versions_when_every_client_is_older(tree):
    clients = find_clients(tree, path="")
    with pytest.raises(ToolFailed) as e:
        choose(17, clients, "pg_dump", server_version="17.2", target="PostgreSQL at h:5432 (demo/pg)")
    msg = str(e.value)
    assert msg == (f"PostgreSQL at h:5432 (demo/pg) is version 17.2 but the newest pg_dump here is 16 (from "
                   f"{tree}/16/bin; majors found: 13, 15, 16): a dump needs a pg_dump of major 17 or newer; "
                   "use an image with postgresql-client-17")
    assert e.value.exit_code == 6 and "\n" not in msg
    with pytest.raises(ToolFailed, match=r"is version 18\.0 but the newest pg_dumpall here is 16 .*major 18 or"):
        choose(18, clients, "pg_dumpall", server_version="18.0")
    # psql: an older one is used, with a warning
    c = choose(18, clients, "psql")
    assert (c.client.major, c.warn) == (17, True) and "older psql" in c.reason


def test_choose_fails_when_no_client_has_the_tool():
    with pytest.raises(ToolFailed) as e:
        choose(15, [], "pg_dumpall", server_version="15.13", target="PostgreSQL at h:1 (demo/pg)")
    assert str(e.value) == (
        "PostgreSQL at h:1 (demo/pg) is version 15.13 but no pg_dumpall is installed here (looked in "
        "/usr/lib/postgresql/<major>/bin and on PATH): a dump needs a pg_dumpall of major 15 or newer; "
        "use an image with postgresql-client-15")
    only_psql = [Client(16, "/x", frozenset({"psql"}))]
    with pytest.raises(ToolFailed, match="no pg_dump is installed here"):
        choose(16, only_psql, "pg_dump", server_version="16.1")
    with pytest.raises(ToolFailed, match=r"^the server is version 15\.13 but no psql .*a restore needs psql; use"):
        choose(15, [], "psql", server_version="15.13")
    with pytest.raises(ToolFailed, match="^no psql is installed here .* to reach the server"):
        choose(None, [], "psql")


def test_versions():
    assert (major_of(170002), format_version(170002)) == (17, "17.2")
    assert (major_of(150013), format_version(150013)) == (15, "15.13")
    assert (major_of(90624), format_version(90624)) == (9, "9.6.24")


def test_server_version_of_the_real_server(source_pg):
    env = {"PGHOST": source_pg.host, "PGPORT": str(source_pg.port), "PGUSER": "postgres",
           "PGPASSWORD": source_pg.password, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    v = server_version(env)
    assert 150000 <= v < 160000
    with source_pg.connect() as c:
        shown = c.execute("SHOW server_version").fetchone()[0]
    assert shown.startswith(format_version(v))
    # the driver's own environment (the one its tools get) reaches the same server
    drv = PostgresDriver(_conn(source_pg))
    try:
        assert server_version(drv._env) == v
    finally:
        drv.close()
    with pytest.raises(psycopg.OperationalError) as e:
        server_version({**env, "PGPASSWORD": "wrong-Secret-99"})
    assert "password authentication failed" in str(e.value) and "wrong-Secret-99" not in str(e.value)


def _conn(cluster, password: str | None = None) -> Connection:
    return Connection(ref="demo/pg", host=cluster.host, port=cluster.port, user="postgres",
                      password=cluster.password if password is None else password, sslmode="disable")


def test_backup_and_restore_log_the_chosen_client(source_pg, fresh_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    r = runner("backup", "--objects", objects_yaml(str(tmp_path / "s.yaml"), cluster=source_pg, repo_dir=repo_dir),
               *NS, "--appbinding", "pg", "--repository", "repo", check=True)
    log = r.stderr.decode()
    with source_pg.connect() as c:
        version = format_version(int(c.execute("SHOW server_version_num").fetchone()[0]))
    assert f"server PostgreSQL {version}; using pg_dumpall 15 from {HOST_BINDIR} (same major)" in log
    assert f"with {HOST_BINDIR}/pg_dumpall" in log  # called by absolute path
    restic(repo_dir, "check", "--read-data")
    target = fresh_pg()
    r = runner("restore", "--objects", objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir),
               *NS, "--appbinding", "pg", "--repository", "repo", check=True)
    assert f"using psql 15 from {HOST_BINDIR} (same major)" in r.stderr.decode()
    assert target.contents() == source_pg.contents()
    assert source_pg.password.encode() not in r.stderr


@pytest.fixture
def no_tool_started(monkeypatch):
    """Fails the test when the driver starts a dump or restore tool."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a tool was started: {args[:1]}")
    monkeypatch.setattr("drivers.postgres.DumpProcess", refuse)
    monkeypatch.setattr("drivers.postgres.feed", refuse)


def test_no_usable_client_fails_before_anything_is_dumped(source_pg, tmp_path, no_tool_started, caplog):
    """The driver with no client (as in an image without postgresql-client), then with only an older one: the
    backup fails after wait_ready, with one line naming both versions and exit code 6; no dump starts, and the
    repository is not created, or, when it exists, gains no snapshot, pack or lock. (The client labelled 13 is
    this host's 15 binaries under another major's name: only the choice is tested, nothing is run from it.)"""
    repo_dir = str(tmp_path / "repo")
    drv = PostgresDriver(_conn(source_pg), clients=[])
    try:
        with pytest.raises(ToolFailed) as e:
            run_backup(BackupPlan(driver=drv, backend=LocalBackend(repo_dir), password=REPO_PASSWORD))
    finally:
        drv.close()
    msg = str(e.value)
    assert e.value.exit_code == 6 and "\n" not in msg
    assert msg.startswith(f"PostgreSQL at 127.0.0.1:{source_pg.port} (demo/pg) is version 15.")
    assert "but no pg_dumpall is installed here" in msg and "use an image with postgresql-client-15" in msg
    assert not os.path.exists(repo_dir)

    restic(repo_dir, "init")
    before = {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs}
    older = [Client(13, HOST_BINDIR)]
    drv = PostgresDriver(_conn(source_pg), backup_cmd="pg_dump", clients=older)
    try:
        with caplog.at_level(logging.INFO, logger="stash_runner"), pytest.raises(ToolFailed) as e:
            run_backup(BackupPlan(driver=drv, backend=LocalBackend(repo_dir), password=REPO_PASSWORD))
    finally:
        drv.close()
    assert "is version 15." in str(e.value) and "the newest pg_dump here is 13" in str(e.value)
    assert "a dump needs a pg_dump of major 15 or newer" in str(e.value)
    assert {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs} == before
    assert source_pg.password not in caplog.text + str(e.value)


def test_no_psql_fails_a_restore_before_the_repository_is_locked(source_pg, tmp_path, no_tool_started):
    repo_dir = str(tmp_path / "repo")
    runner("backup", "--objects", objects_yaml(str(tmp_path / "s.yaml"), cluster=source_pg, repo_dir=repo_dir),
           *NS, "--appbinding", "pg", "--repository", "repo", check=True)
    before = {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs}
    drv = PostgresDriver(_conn(source_pg), purpose="restore", clients=[Client(16, HOST_BINDIR, frozenset({"pg_dump"}))])
    try:
        with pytest.raises(ToolFailed, match=r"is version 15\.\d+ but no psql is installed here"):
            run_restore(RestorePlan(driver=drv, backend=LocalBackend(repo_dir), password=REPO_PASSWORD))
    finally:
        drv.close()
    assert {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs} == before


def test_unreadable_server_version_falls_back_to_the_newest_client(source_pg, tmp_path, caplog):
    """A wrong password: the version cannot be read, the newest client runs and reports the error itself."""
    drv = PostgresDriver(_conn(source_pg, password="wrong-Secret-77"))
    try:
        with caplog.at_level(logging.INFO, logger="stash_runner"):
            drv.wait_ready(10)
    finally:
        drv.close()
    assert "could not read the server version" in caplog.text and "password authentication failed" in caplog.text
    assert f"server version unknown; using pg_dumpall 15 from {HOST_BINDIR} (the newest here)" in caplog.text
    assert "wrong-Secret-77" not in caplog.text
