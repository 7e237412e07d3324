"""Throw-away PostgreSQL clusters from Debian's server, on free loopback ports, stopped by PID."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import psycopg

SUPERUSER_PASSWORD = "pg-Secret-Pass-42"


def _port_candidates() -> Iterator[int]:
    # Below the kernel's ephemeral range (32768-60999), so no client socket of this machine can take
    # the port between our check and the server's bind; a random start keeps concurrent test runs apart.
    low, high = 20000, 32000
    start = low + int.from_bytes(os.urandom(2), "big") % (high - low)
    for i in range(high - low):
        yield low + (start + i) % (high - low)


_PORTS = _port_candidates()


def free_port() -> int:
    """A loopback port nobody listens on, never handed out twice in this test run."""
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port left in 20000-32000")


def pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server not installed: run `make deps`")
    return os.path.dirname(found[-1])


def _as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:  # initdb refuses root
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


class PgCluster:
    def __init__(self, base: str, password: str = SUPERUSER_PASSWORD):
        self.base = base
        self.data = os.path.join(base, "data")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.password = password
        self.bindir = pg_bindir()
        self.pid: int | None = None

    def start(self) -> PgCluster:
        os.makedirs(self.base, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            # every parent must be traversable by postgres
            d = self.base
            while d not in ("/", ""):
                d = os.path.dirname(d)
                st = os.stat(d)
                if not st.st_mode & 0o001:
                    os.chmod(d, st.st_mode | 0o011)
        if not os.path.exists(self.data):
            _as_postgres([f"{self.bindir}/initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        _as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-w",
                      "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
                            "-c full_page_writes=off -c synchronous_commit=off", "start"])
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        with psycopg.connect(host=self.base, port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as c:
            c.execute(f"ALTER ROLE postgres PASSWORD '{self.password}'")
        return self

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGINT)  # fast shutdown
        except ProcessLookupError:
            self.pid = None
            return
        for _ in range(300):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://{self.host}:{self.port}/postgres?sslmode=disable"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user="postgres", password=self.password,
                               dbname=dbname, autocommit=True)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as c:
            c.execute(sql)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": "postgres",
                "PGPASSWORD": self.password}

    def pg_dumpall(self) -> bytes:
        return subprocess.run(["pg_dumpall"], env=self.env(), check=True, capture_output=True).stdout

    def databases(self) -> list[str]:
        with self.connect() as c:
            return [r[0] for r in c.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1")]

    def contents(self) -> dict:
        """Every user table of every database, as an order-independent digest; roles too."""
        out: dict = {}
        with self.connect() as c:
            out["roles"] = sorted(r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'"))
        for db in ["postgres", *self.databases()]:
            with self.connect(db) as c:
                tables = [r[0] for r in c.execute(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")]
                for t in tables:
                    count, digest = c.execute(
                        f"SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
                        f"FROM {t} x").fetchone()
                    out[f"{db}:{t}"] = (count, digest)
        return out


SAMPLE_SQL = r"""
CREATE ROLE app_user LOGIN PASSWORD 'app-user-pass';
CREATE DATABASE shop OWNER app_user;
"""

SHOP_SQL = r"""
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, note text, created timestamptz);
INSERT INTO customers (name, email, note, created)
  SELECT 'customer ' || g, 'c' || g || '@example.com',
         CASE WHEN g % 7 = 0 THEN NULL WHEN g % 5 = 0 THEN E'tab\there\nnew line ünïcödé' ELSE repeat('x', g % 50) END,
         timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
  FROM generate_series(1, 5000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), amount numeric(12,2),
                     items jsonb, blob bytea);
INSERT INTO orders (customer_id, amount, items, blob)
  SELECT (g % 5000) + 1, (g * 1.37)::numeric(12,2), jsonb_build_object('sku', g, 'qty', g % 9),
         decode(md5(g::text), 'hex')
  FROM generate_series(1, 20000) g;
CREATE INDEX ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 1000;
ALTER TABLE customers OWNER TO app_user;
"""


def load_sample(cluster: PgCluster) -> None:
    cluster.execute(SAMPLE_SQL.split(";")[0])
    cluster.execute("CREATE DATABASE shop OWNER app_user")
    cluster.execute(SHOP_SQL, dbname="shop")
    cluster.execute("CREATE TABLE notes (id int PRIMARY KEY, body text); "
                    "INSERT INTO notes SELECT g, 'CREATE ROLE ' || g || ';' FROM generate_series(1, 10) g;")


def load_bulk(cluster: PgCluster, megabytes: int, dbname: str = "bulk") -> None:
    """A database whose dump is about ``megabytes`` MB (random-ish text, compresses ~2x)."""
    cluster.execute(f"CREATE DATABASE {dbname}")
    rows = megabytes * 1_000_000 // 110
    cluster.execute(
        "CREATE TABLE payload (id bigint, a text, b text, c int);"
        f"INSERT INTO payload SELECT g, md5(g::text), md5((g * 31)::text) || md5((g * 17)::text), g % 1000 "
        f"FROM generate_series(1, {rows}) g;", dbname=dbname)


def bulk_cluster(workdir: str, name: str, megabytes: int) -> Iterator[PgCluster]:
    """For a fixture: a cluster whose bulk database dumps to about ``megabytes`` MB, destroyed afterwards."""
    c = PgCluster(os.path.join(workdir, name)).start()
    try:
        load_bulk(c, megabytes)
        yield c
    finally:
        c.destroy()
