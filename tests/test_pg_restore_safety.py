"""PostgreSQL restores that cannot silently damage the target (drivers/pgsql.py, drivers/postgres.py), on real
PostgreSQL 15 clusters through the CLI:

- a dump whose databases or tables already exist in the target fails before anything is written, naming them,
  unless --clean (or --pg-args=--clean) drops them first;
- dumps taken with the arguments Stash's docs show (--clean, --no-owner --clean, --clean --if-exists) restore into
  a fresh cluster and over the source cluster itself;
- a restore that fails part-way (a failing statement, psql killed, SIGTERM) says which database it left partly
  restored, in its error, output.json and a RestoreSession's status;
- waiting for the server says what it waits for, and a wrong password ends the wait at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from drivers import pgsql
from drivers.postgres import Connection, PostgresDriver
from stash_runner.errors import DatabaseUnreachable
from stash_runner.units import stash_bytes

from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .pgcluster import PgCluster, free_port, load_bulk, load_sample

NS = ["-n", "demo"]
STASH_ARGS = ["--clean", "--no-owner --clean", "--clean --if-exists"]

# Beyond the sample data: a role that owns a table in `postgres` (a --clean dump's DROP ROLE cannot drop it over
# the source), a second superuser the restore may connect as, and a database whose name needs quoting.
EXTRAS = [
    "CREATE ROLE reporter",
    "CREATE TABLE public.report (id int PRIMARY KEY, what text)",
    "INSERT INTO public.report VALUES (1, 'one'), (2, E'two\\nlines')",
    "ALTER TABLE public.report OWNER TO reporter",
    "GRANT SELECT ON public.notes TO reporter",
    'CREATE DATABASE "Odd ""Name\'s"',
]
WEIRD_DB = 'Odd "Name\'s'


def backup(objects: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", *extra,
                  check=check)


def restore(objects: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return runner("restore", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", *extra,
                  check=check)


def sample(fresh_pg) -> PgCluster:
    c = fresh_pg()
    load_sample(c)
    c.execute(f"CREATE ROLE stash_admin SUPERUSER LOGIN PASSWORD '{c.password}'")  # same password: --user
    for sql in EXTRAS:
        c.execute(sql)
    c.execute("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'quoted \"db\"');", dbname=WEIRD_DB)
    return c


def dumps(cluster: PgCluster, *args: str) -> dict[str, bytes]:
    """Every database's pg_dump (schema, data, owners, grants): what a byte-exact restore must reproduce."""
    out = {}
    for db in ["postgres", *cluster.databases()]:
        out[db] = normalize_dump(subprocess.run(["pg_dump", *args, "--dbname", db], env=cluster.env(), check=True,
                                                capture_output=True).stdout)
    return out


def files_of(repo_dir: str) -> set[tuple[str, str]]:
    return {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs}


def last_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.decode().strip().splitlines()
    return lines[-1] if lines else ""


def output_error(out_dir) -> str:
    host = json.loads((out_dir / "output.json").read_text())["targetStatus"]["stats"][0]
    assert host["phase"] == "Failed"
    return " ".join(host["error"].split())  # as stderr shows it: on one line


# -- the stream, without a server ---------------------------------------------------------------------------------


TRICKY = (
    b"--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict KEY1\n\nSET x = 1;\n\n"
    b"DROP DATABASE shop;\nDROP DATABASE \"We\"\"ird\";\nDROP ROLE app_user;\nDROP ROLE postgres;\n"
    b"DROP ROLE IF EXISTS \"Other\";\nDROP TABLESPACE space;\n\n"
    b"CREATE ROLE app_user;\nALTER ROLE app_user WITH LOGIN PASSWORD 'SCRAM-x';\n"
    b"CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-y';\n\n"
    b"\\unrestrict KEY1\n\\connect template1\n\\restrict KEY2\n"
    b"-- Name: it's; Type: TABLE\n"
    b"CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $_$\n"
    b"DROP DATABASE shop;\n\\connect nowhere\nCOPY x FROM stdin;\nCREATE ROLE fake;\n$_$;\n"
    b"COMMENT ON TABLE public.t IS 'a comment\nDROP ROLE inside_a_string;\n\\connect no';\n"
    b"COMMENT ON TABLE public.u IS E'it\\'s\nDROP ROLE inside_an_e_string;';\n"
    b"CREATE TABLE \"it's\" (a text DEFAULT '$$');\n"
    b"/* a comment\nDROP ROLE in_a_comment;\n*/\n"
    b"COPY public.t (a) FROM stdin;\nDROP DATABASE shop;\n\\connect data\n\\\\.\nCREATE ROLE x;\n\\.\n"
    b"-- PostgreSQL database dump complete\n\n"
    b"\\unrestrict KEY2\n\\connect -reuse-previous=on \"dbname='My \"\"DB\\'s'\"\n"
    b"CREATE TABLE public.t (a int);\nCOPY public.t (a) FROM stdin;\n\\.\n"
    b"-- PostgreSQL database dump complete\n"
)


def test_stream_rewrites_only_statements_outside_quotes_and_data_for_every_chunking():
    plan = pgsql.Plan(keep_roles={"postgres"}, initial_db="postgres")
    expected = TRICKY.replace(
        b"DROP DATABASE shop;\nDROP DATABASE \"We\"\"ird\";\nDROP ROLE app_user;\nDROP ROLE postgres;\n"
        b"DROP ROLE IF EXISTS \"Other\";\nDROP TABLESPACE space;\n",
        b"DROP DATABASE IF EXISTS shop;\nDROP DATABASE IF EXISTS \"We\"\"ird\";\n"
        b"DO $stash_runner$ BEGIN DROP ROLE IF EXISTS app_user; EXCEPTION WHEN dependent_objects_still_exist THEN "
        b"RAISE NOTICE 'stash-runner: %', SQLERRM; END $stash_runner$;\n-- stash-runner: kept role postgres\n"
        b"DO $stash_runner$ BEGIN DROP ROLE IF EXISTS \"Other\"; EXCEPTION WHEN dependent_objects_still_exist THEN "
        b"RAISE NOTICE 'stash-runner: %', SQLERRM; END $stash_runner$;\nDROP TABLESPACE IF EXISTS space;\n",
    ).replace(
        b"CREATE ROLE app_user;\n",
        b"DO $stash_runner$ BEGIN CREATE ROLE app_user; EXCEPTION WHEN duplicate_object THEN NULL; "
        b"END $stash_runner$;\n",
    ).replace(
        b"CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-y';\n",
        b"DO $stash_runner$ BEGIN CREATE ROLE postgres; EXCEPTION WHEN duplicate_object THEN NULL; "
        b"END $stash_runner$;\n-- stash-runner: kept the target's password for role postgres\n",
    )
    reference = None
    for size in (len(TRICKY), 1, 2, 3, 5, 7, 64):
        chunks = [TRICKY[i:i + size] for i in range(0, len(TRICKY), size)]
        stream = pgsql.DumpStream(iter(chunks), plan)
        out = b"".join(stream)
        assert out == expected, size
        assert stream.offset == len(out) and stream.lines == out.count(b"\n") and stream.finished
        events = [(e.kind, e.db, e.line) for e in stream.events]
        reference = reference or events
        assert events == reference
        for e in stream.events:  # each event is at its line, and ends where that line ends
            assert out[:e.end].count(b"\n") == e.line
    lines = expected.split(b"\n")
    assert [(k, d, lines[n - 1][:16]) for k, d, n in reference] == [
        ("drop", "shop", b"DROP DATABASE IF"), ("drop", 'We"ird', b"DROP DATABASE IF"),
        ("start", "template1", b"\\connect templat"), ("done", "template1", b"-- PostgreSQL da"),
        ("start", "My \"DB's", b"\\connect -reuse-"), ("done", "My \"DB's", b"-- PostgreSQL da")]


def test_a_drop_of_the_database_psql_is_in_moves_psql_first_even_inside_restrict():
    dump = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict K\nSET a = 1;\nDROP DATABASE shop;\n"
            b"CREATE DATABASE shop WITH TEMPLATE = template0;\n\\unrestrict K\n\\connect shop\n\\restrict K\n"
            b"CREATE TABLE public.t (a int);\n-- PostgreSQL database dump complete\n\\unrestrict K\n")
    out = b"".join(pgsql.DumpStream([dump], pgsql.Plan(initial_db="shop")))
    assert out == dump.replace(b"DROP DATABASE shop;\n", b'\\unrestrict K\n\\connect "postgres"\n\\restrict K\n'
                                                         b"DROP DATABASE IF EXISTS shop;\n")
    # --clean of an existing database the dump creates without dropping it
    dump = dump.replace(b"DROP DATABASE shop;\n", b"")
    out = b"".join(pgsql.DumpStream([dump], pgsql.Plan(initial_db="postgres", clean_databases={"shop"})))
    assert out == dump.replace(b"CREATE DATABASE", b"DROP DATABASE IF EXISTS shop;\nCREATE DATABASE")


def test_scan_finds_what_a_dump_creates_and_where():
    facts = pgsql.scan([TRICKY], "postgres")
    assert facts.cluster and facts.order == ["template1", "My \"DB's"] and facts.creates == []
    assert facts.contexts["template1"].relations == set()  # "it's" is unqualified: pg_dump always qualifies
    assert facts.contexts["My \"DB's"].relations == {("public", "t")}
    single = (b"--\n-- PostgreSQL database dump\n--\n\nSET a = 1;\nCREATE SCHEMA app;\n"
              b'CREATE TABLE app."Orders" (\n    id integer\n);\nCREATE VIEW public.v AS\n SELECT 1;\n'
              b"CREATE SEQUENCE public.s\n    START WITH 1;\n")
    facts = pgsql.scan([single], "shop")
    assert not facts.cluster and facts.order == ["shop"]
    ctx = facts.contexts[""]
    assert ctx.schemas == {"app"} and ctx.relations == {("app", "Orders"), ("public", "v"), ("public", "s")}
    assert not ctx.drops and pgsql.scan([single + b"DROP TABLE public.x;\n"], "shop").contexts[""].drops


@pytest.mark.parametrize("arg, name", [
    (b"shop", "shop"), (b'"UPPER"', "UPPER"), (b"-reuse-previous=on \"dbname='sp ace'\"", "sp ace"),
    (b"-reuse-previous=on \"dbname='My \"\"DB\\'s'\"", "My \"DB's"), (b"-reuse-previous=on \"dbname=plain\"", "plain"),
])
def test_connect_target(arg, name):
    assert pgsql.connect_target(arg) == name


def test_progress_note_names_the_partly_restored_database():
    dump = (b"--\n-- PostgreSQL database cluster dump\n--\n\nCREATE ROLE a;\n"
            + b"".join(b"\\connect %s\nCOPY t FROM stdin;\n" % d + b"x\n" * 20000 + b"\\.\n"
                       b"-- PostgreSQL database dump complete\n" for d in (b"template1", b"postgres", b"a", b"b"))
            + b"CREATE DATABASE c;\n\\connect c\nCREATE TABLE public.x (a int);\n")
    stream = pgsql.DumpStream([dump], pgsql.Plan())
    out = b"".join(stream)
    at = {e.db: e for e in stream.events if e.kind == "start"}
    note = pgsql.progress_note
    assert note(stream, line=3) == \
        "only the globals (roles, tablespaces) may be partly restored (not started: template1, postgres, a, b, c)"
    assert note(stream, line=at["b"].line + 5) == \
        'database "b" is partly restored (restored completely: template1, postgres, a; not started: c)'
    assert note(stream, line=at["b"].line + 5, order=["template1", "postgres", "a", "b", "c", "d"]) == \
        'database "b" is partly restored (restored completely: template1, postgres, a; not started: c, d)'
    assert note(stream, line=at["c"].line - 1) == \
        "no database is partly restored (restored completely: template1, postgres, a, b; not started: c)"
    assert note(stream, consumed=0) == "nothing was restored"
    # by the bytes psql took: an event within its read-ahead may or may not have happened
    assert note(stream, consumed=at["a"].end + 2 * pgsql.PSQL_READ_AHEAD) == \
        'database "a" is partly restored (restored completely: template1, postgres; not started: b, c)'
    assert note(stream, consumed=at["a"].end + 10) == \
        'database "postgres" or "a" is partly restored (restored completely: template1; not started: b, c)'
    # a stream cut short names the later databases as such
    partial = pgsql.DumpStream(iter([out[:at["b"].end + 100]]), pgsql.Plan())
    next(iter(partial))  # its first chunk through, and no more
    assert pgsql.progress_note(partial) == ('database "b" is partly restored (restored completely: template1, '
                                            "postgres, a; not started: the dump's later databases)")
    # a dropped database that existed is named as such
    clean = b"--\n-- PostgreSQL database cluster dump\n--\n\nDROP DATABASE shop;\nDROP ROLE x;\n"
    stream = pgsql.DumpStream([clean], pgsql.Plan())
    b"".join(stream)
    assert pgsql.progress_note(stream, existing={"shop", "postgres"}) == \
        "only the globals (roles, tablespaces) may be partly restored (dropped and not restored yet: shop)"


# -- B: a target that already has what the dump creates -----------------------------------------------------------


def test_existing_database_fails_before_anything_is_written_and_clean_replaces_it(fresh_pg, tmp_path):
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    backup(objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir))
    target = fresh_pg()
    target.execute("CREATE DATABASE shop")  # owned by postgres: app_user does not exist in the target
    target.execute("CREATE TABLE mine (a int); INSERT INTO mine VALUES (7)", dbname="shop")
    before, repo_before = target.contents(), files_of(repo_dir)
    objects = objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir)
    r = restore(objects, "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    msg = last_error(r)
    assert msg == (f"stash-runner: error: PostgreSQL at 127.0.0.1:{target.port} (AppBinding demo/pg) already has "
                   "what the dump creates: database shop: nothing was restored; restore with --clean to drop it "
                   "first, or into an empty cluster")
    assert target.contents() == before and "app_user" not in before["roles"]  # not even the roles
    assert files_of(repo_dir) == repo_before
    assert output_error(tmp_path / "out") == msg.removeprefix("stash-runner: error: ")
    r = restore(objects, "--clean", "--output-dir", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    assert b"--clean: database shop of PostgreSQL at" in r.stderr
    assert target.contents() == source.contents()
    assert dumps(target) == dumps(source)
    # the dump was read twice (a look, then the restore), but is counted once
    size = len(restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout)
    done = json.loads((tmp_path / "ok" / "output.json").read_text())["targetStatus"]["stats"][0]
    assert done["phase"] == "Succeeded"
    assert re.search(rf"restored snapshot \w+: {re.escape(stash_bytes(size))} in", r.stderr.decode()), r.stderr


def test_a_target_with_only_other_databases_is_scanned_and_restored(fresh_pg, tmp_path):
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    backup(objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir))
    target = fresh_pg()
    target.execute("CREATE DATABASE unrelated")
    target.execute("CREATE TABLE keep (a int); INSERT INTO keep VALUES (1)", dbname="unrelated")
    r = restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir))
    assert r.returncode == 0, r.stderr
    assert b"is not empty (databases unrelated): reading the dump once for what it creates" in r.stderr
    got = target.contents()
    assert got.pop("unrelated:public.keep") == (1, got_digest(target, "unrelated", "public.keep"))
    assert got == source.contents()


def got_digest(cluster: PgCluster, db: str, table: str) -> str:
    with cluster.connect(db) as c:
        return c.execute(f"SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {table} x"
                         ).fetchone()[0]


def test_tables_of_a_pg_dump_that_exist_fail_naming_them_and_clean_drops_them(fresh_pg, tmp_path):
    """A single-database pg_dump without --create restores into the AppBinding's database: tables it creates that
    are there already fail the restore before it starts; unrelated ones stay; --clean drops the clashing ones."""
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    backup(objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir), "--backup-cmd", "pg_dump",
           "--pg-args", "--dbname=shop")
    target = fresh_pg()
    target.execute("CREATE ROLE app_user")
    target.execute("CREATE DATABASE shop")
    target.execute("CREATE TABLE customers (x int); CREATE TABLE mine (a int); INSERT INTO mine VALUES (1);"
                   "CREATE VIEW big_orders AS SELECT 1 AS one; CREATE SCHEMA extra;", dbname="shop")
    url = f"postgresql://127.0.0.1:{target.port}/shop?sslmode=disable"
    objects = objects_yaml(str(tmp_path / "t.yaml"), cluster=target, url=url, repo_dir=repo_dir)
    before = target.contents()
    r = restore(objects)
    assert r.returncode == 2, r.stderr
    assert last_error(r).endswith(
        "already has what the dump creates: in database shop: table public.customers, view public.big_orders: "
        "nothing was restored; restore with --clean to drop it first, or into an empty cluster")
    assert target.contents() == before
    r = restore(objects, "--pg-args=--clean")  # as a RestoreSession passes it: the Task's args param
    assert r.returncode == 0, r.stderr
    got = target.contents()
    assert got.pop("shop:public.mine")[0] == 1
    assert {k: v for k, v in got.items() if k.startswith("shop:")} == \
        {k: v for k, v in source.contents().items() if k.startswith("shop:")}
    with target.connect("shop") as c:  # the unrelated schema stays
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'extra'").fetchone() == (1,)


# -- D: dumps made with Stash's documented arguments ----------------------------------------------------------------


@pytest.mark.parametrize("pg_args", STASH_ARGS)
def test_stash_dumps_restore_into_a_fresh_cluster_and_over_the_source(pg_args, fresh_pg, tmp_path):
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    src_objects = objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir)
    backup(src_objects, "--pg-args", pg_args)
    dump = restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout
    assert b"\nDROP DATABASE " in dump and b"\nDROP ROLE " in dump  # what the rewrites are for
    # a --no-owner dump's objects belong to whoever restores it: compared without owners and grants
    owner_args = ("--no-owner", "--no-privileges") if "--no-owner" in pg_args else ()
    expected, expected_dumps = source.contents(), dumps(source, *owner_args)

    target = fresh_pg()
    r = restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir))
    assert r.returncode == 0, r.stderr
    assert target.contents() == expected
    assert dumps(target, *owner_args) == expected_dumps

    # in place, connected as another superuser (its DROP ROLE is skipped, as postgres's)
    r = restore(src_objects, "--user", "stash_admin")
    assert r.returncode == 0, r.stderr
    assert source.contents() == expected
    assert dumps(source, *owner_args) == expected_dumps
    with source.connect() as c:  # the roles kept their passwords (the connecting user's and postgres's untouched)
        assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname IN ('stash_admin', 'reporter')").fetchone() \
            == (2,)


def test_in_place_clean_restore_while_connected_to_a_database_it_drops(fresh_pg, tmp_path):
    """The AppBinding names `shop`: psql starts there, and the dump's DROP DATABASE shop needs it elsewhere."""
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    url = f"postgresql://127.0.0.1:{source.port}/shop?sslmode=disable"
    objects = objects_yaml(str(tmp_path / "s.yaml"), cluster=source, url=url, repo_dir=repo_dir)
    backup(objects, "--pg-args", "--clean")
    expected = dumps(source)
    r = restore(objects)
    assert r.returncode == 0, r.stderr
    assert dumps(source) == expected
    # a single-database pg_dump --create --clean of shop, restored while connected to shop
    backup(objects, "--backup-cmd", "pg_dump", "--pg-args", "--create --clean --dbname=shop")
    r = restore(objects)
    assert r.returncode == 0, r.stderr
    assert dumps(source) == expected


def test_a_plain_dump_over_its_source_fails_naming_what_exists_and_clean_restores_it(fresh_pg, tmp_path):
    source = sample(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    objects = objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir)
    backup(objects)
    expected = dumps(source)
    r = restore(objects)
    assert r.returncode == 2, r.stderr
    assert (f"already has what the dump creates: databases {WEIRD_DB}, shop; in database postgres: table "
            "public.notes, table public.report: nothing was restored") in last_error(r)
    assert dumps(source) == expected
    r = restore(objects, "--clean")
    assert r.returncode == 0, r.stderr
    assert dumps(source) == expected


# -- C: how far a failed restore got ---------------------------------------------------------------------------------


def failing_source(fresh_pg) -> PgCluster:
    """Databases a, b, c; b's dump fails on restore, after its data: an index on a SQL function that reads a table
    without its schema, which pg_dump's empty search_path breaks (a real pg_dump pitfall)."""
    c = fresh_pg()
    for db in ("a", "b", "c"):
        c.execute(f"CREATE DATABASE {db}")
        c.execute("CREATE TABLE t (a int); INSERT INTO t SELECT g FROM generate_series(1, 100) g", dbname=db)
    c.execute("CREATE TABLE lookup (id int PRIMARY KEY, x int); INSERT INTO lookup VALUES (1, 2);"
              "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x FROM lookup WHERE id = $1';"
              "CREATE INDEX t_f ON t (f(1));", dbname="b")
    return c


def test_a_failing_statement_names_the_partly_restored_database(fresh_pg, tmp_path):
    source = failing_source(fresh_pg)
    repo_dir = str(tmp_path / "repo")
    backup(objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir))
    # a fresh target: not scanned, but this small dump went into psql's pipe whole, so every database is known
    # (pg_dumpall's order: template1, then by name)
    target = fresh_pg()
    r = restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir),
                "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 6, r.stderr
    msg = last_error(r)
    assert msg.startswith("stash-runner: error: psql exited with code 3: psql:<stdin>:") and \
        'relation "lookup" does not exist' in msg
    assert msg.endswith('; database "b" is partly restored (restored completely: template1, a; '
                        "not started: c, postgres)")
    assert output_error(tmp_path / "out") == msg.removeprefix("stash-runner: error: ")
    with target.connect("b") as c:  # b's data went in before the index failed
        assert c.execute("SELECT count(*) FROM t").fetchone() == (100,)
    assert "c" not in target.databases()
    # a target that was scanned first (it has a database): the same
    target = fresh_pg()
    target.execute("CREATE DATABASE other")
    r = restore(objects_yaml(str(tmp_path / "t2.yaml"), cluster=target, repo_dir=repo_dir))
    assert r.returncode == 6, r.stderr
    assert b"is not empty (databases other)" in r.stderr
    assert last_error(r).endswith(
        '; database "b" is partly restored (restored completely: template1, a; not started: c, postgres)')


@pytest.fixture(scope="module")
def bulk_repo(workdir, tmp_path_factory):
    """A snapshot of a cluster whose `bulk` database dumps to ~150 MB, so that a restore can be stopped part-way."""
    c = PgCluster(os.path.join(workdir, "bulk-restore-pg")).start()
    try:
        load_bulk(c, 150)
        d = tmp_path_factory.mktemp("bulk")
        repo_dir = str(d / "repo")
        backup(objects_yaml(str(d / "s.yaml"), cluster=c, repo_dir=repo_dir))
    finally:
        c.destroy()
    return repo_dir


def _start_restore(objects: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stash_runner", "restore", "--objects", objects, *NS,
                             "--appbinding", "pg", "--repository", "repo", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_copy(target: PgCluster, proc: subprocess.Popen) -> None:
    """Until the restore's psql is loading the bulk table's rows (mid-stream)."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        with target.connect() as c:
            rows = c.execute("SELECT 1 FROM pg_stat_activity WHERE datname = 'bulk' AND query LIKE 'COPY %'"
                             " AND state = 'active'").fetchall()
        if rows:
            return
        time.sleep(0.02)


def _children(pid: int, name: str) -> list[int]:
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{p}/comm") as f:
                comm = f.read().strip()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and comm == name:
            found.append(int(p))
    return found


def test_sigterm_mid_restore_names_the_partly_restored_database(bulk_repo, fresh_pg, tmp_path):
    target = fresh_pg()
    proc = _start_restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=bulk_repo),
                          "--output-dir", str(tmp_path / "out"))
    _wait_for_copy(target, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    msg = err.decode().strip().splitlines()[-1]
    # not scanned (a fresh target), and stopped before the end of the dump: the rest is not known by name
    assert msg == ('stash-runner: error: terminated by SIGTERM; database "bulk" is partly restored (restored '
                   "completely: template1; not started: the dump's later databases)")
    assert output_error(tmp_path / "out") == msg.removeprefix("stash-runner: error: ")
    assert not os.listdir(os.path.join(bulk_repo, "locks"))
    deadline = time.monotonic() + 15  # psql was stopped, and with it its session
    while _sessions(target, "bulk") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sessions(target, "bulk")


def _sessions(target: PgCluster, db: str) -> list:
    with target.connect() as c:
        return c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,)).fetchall()


def test_psql_killed_mid_restore_names_the_partly_restored_database(bulk_repo, fresh_pg, tmp_path):
    target = fresh_pg()
    target.execute("CREATE DATABASE other")  # scanned first: the dump's databases are known by name
    proc = _start_restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=bulk_repo))
    _wait_for_copy(target, proc)
    victims = _children(proc.pid, "psql")
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, err
    msg = err.decode().strip().splitlines()[-1]
    assert msg.startswith("stash-runner: error: psql was killed by signal 9")
    assert msg.endswith('; database "bulk" is partly restored (restored completely: template1; not started: '
                        "postgres)")


def test_a_restore_session_reports_the_partly_restored_database(kube, fresh_pg, repo_dir, tmp_path):
    from .test_session import STASH, restore_session, seed

    source = failing_source(fresh_pg)
    runner("backup", "--objects", objects_yaml(str(tmp_path / "s.yaml"), cluster=source, repo_dir=repo_dir,
                                                 namespace=kube.name),
           "-n", kube.name, "--appbinding", "pg", "--repository", "repo", check=True)
    target = fresh_pg()
    kc = seed(kube, tmp_path, restore_session("r1", [], "host-0"), pg=target, repo_dir=repo_dir)
    r = runner("restore", "--restoresession", "r1", "--namespace", kube.name, "--kubeconfig", kc)
    assert r.returncode == 6, r.stderr.decode()
    st = kube.get(*STASH, "restoresessions", "r1")["status"]
    assert st["phase"] == "Failed"
    assert st["stats"][0]["error"].endswith('; database "b" is partly restored (restored completely: template1, '
                                            "a; not started: c, postgres)")


# -- A: waiting for the server --------------------------------------------------------------------------------------


def _driver(port: int, password: str, purpose: str = "restore") -> PostgresDriver:
    return PostgresDriver(Connection(ref="demo/pg", host="127.0.0.1", port=port, user="postgres", password=password,
                                     dbname="postgres", sslmode="disable"), purpose=purpose)


def test_the_wait_says_what_it_waits_for_and_how_long_is_left(caplog):
    port = free_port()
    drv = _driver(port, "x")
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="stash_runner"), pytest.raises(DatabaseUnreachable) as e:
            drv.wait_ready(19)
    finally:
        drv.close()
    assert 18.5 < time.monotonic() - started < 30
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
    target = f"PostgreSQL at 127.0.0.1:{port} (demo/pg)"
    # said at once, then again ~15 s later (checked every 2 s): 19 s, then about 3 s left
    assert len(said) == 2 and said[0].startswith(f"waiting for {target} to accept connections (19 s left): ")
    left = re.match(rf"waiting for {re.escape(target)} to accept connections \((\d+) s left\): ", said[1])
    assert left and 2 <= int(left.group(1)) <= 4, said
    assert "Connection refused" in said[0]
    assert str(e.value).startswith(f"{target} is not accepting connections after 19 s: connection failed: ")


def test_the_wait_ends_when_the_server_comes_up(workdir, caplog):
    cluster = PgCluster(os.path.join(workdir, "late-pg"))
    drv = _driver(cluster.port, cluster.password)
    starter = threading.Timer(3, cluster.start)
    starter.start()
    try:
        with caplog.at_level(logging.INFO, logger="stash_runner"):
            drv.wait_ready(120)
        assert "waiting for PostgreSQL at" in caplog.text and "using psql 15" in caplog.text
    finally:
        starter.join()
        drv.close()
        cluster.destroy()


def test_a_wrong_password_ends_the_wait_at_once(source_pg, fresh_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    backup(objects_yaml(str(tmp_path / "s.yaml"), cluster=source_pg, repo_dir=repo_dir))
    target = fresh_pg()
    started = time.monotonic()
    r = restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, repo_dir=repo_dir, pg_password="wrong-pw-9"),
                "--wait-timeout", "120")
    assert time.monotonic() - started < 30
    assert r.returncode == 6, r.stderr
    assert "password authentication failed" in last_error(r) and b"waiting for" not in r.stderr
    assert b"wrong-pw-9" not in r.stderr
    with pytest.raises(psycopg.OperationalError):  # the target is untouched
        psycopg.connect(host="127.0.0.1", port=target.port, user="app_user", password="app-user-pass",
                        dbname="postgres").close()
    assert REPO_PASSWORD.encode() not in r.stderr
