"""Stash's interim-volume flow (drivers/elasticsearch/interim.py) against real servers: Elasticsearch 7.17 and
8.7 (secured, HTTPS) and OpenSearch 2.19, started here one at a time, with elasticdump 6.125.1."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from drivers.base import Item
from drivers.elasticsearch import elasticdump, interim
from drivers.elasticsearch.connection import SearchClient, Server, connect
from drivers.elasticsearch.elasticdump import find_multielasticdump
from drivers.elasticsearch.indices import IndexInfo, list_indices, select
from drivers.elasticsearch.interim import InterimDump, empty_dir, restore_interim
from stash_runner.errors import BadInput, SnapshotNotFound, ToolFailed

from .esservers import SearchServer, elasticdump_bin, start_search_server

pytestmark = [
    pytest.mark.filterwarnings("ignore:index name .* starts with a dot"),  # the sample's dot index, on purpose
    pytest.mark.filterwarnings("ignore:When using `ssl_context`"),  # opensearch-py, for the CA we give it
]

#: a password with what an ini parser, a URL and elasticdump's %XX decoding each treat specially
PASSWORD = 'Pw %41 =#"x; \'y\' %'
STASH_INTERIM = "/stash-tmp/stash-interim-volume/data"
SAMPLE = {"books": 1500, "logs.2024": 2500, "empty-idx": 0}
HIDDEN = (".hidden-stuff", "flagged-hidden")  # a dot name; index.hidden: true


class DirectorySnapshot:
    """Test double of the repository reader (drivers.base.SnapshotFiles): a snapshot's files kept in a plain
    directory tree, ``root`` + the path each had in the snapshot."""

    def __init__(self, root: str, paths: list[str]):
        self.root = root
        self.paths = paths

    def _local(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def files(self, under: str = "/") -> list[str]:
        out = []
        for d, _dirs, names in os.walk(self._local(under)):
            out += ["/" + os.path.relpath(os.path.join(d, n), self.root) for n in names]
        return sorted(out)

    def read(self, path: str):
        try:
            with open(self._local(path), "rb") as f:
                yield f.read()
        except FileNotFoundError:
            raise SnapshotNotFound(path) from None

    def extract(self, path: str, target: str) -> None:
        shutil.copytree(self._local(path), target, dirs_exist_ok=True)

    @classmethod
    def store(cls, root: str, directory: str, at: str | None = None) -> DirectorySnapshot:
        """What `restic backup <directory>` records: its files under their absolute path (or ``at``)."""
        shutil.copytree(directory, os.path.join(root, (at or directory).lstrip("/")))
        return cls(root, [at or directory])


class _OneServer:
    """At most one search server runs: asking for another stops the previous one."""

    def __init__(self, base: str):
        self.base = base
        self.key: tuple | None = None
        self.server: SearchServer | None = None

    def get(self, kind: str, **kw) -> SearchServer:
        key = (kind, tuple(sorted(kw.items())))
        if key != self.key:
            self.stop()
            self.server = start_search_server(kind, self.base, **kw)
            self.key = key
        assert self.server is not None
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server, self.key = None, None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pool = _OneServer(str(tmp_path_factory.mktemp("es-interim")))
    yield pool
    pool.stop()


def _server(s: SearchServer, **kw) -> Server:
    fields = {"url": s.url, "ref": "AppBinding demo/es", "username": s.username, "password": s.password,
              "ca_pem": s.ca_pem, **kw}
    return Server(**fields)


@contextlib.contextmanager
def _client(server: Server):
    c = connect(server)
    try:
        yield c
    finally:
        c.close()


# -- the sample ---------------------------------------------------------------------------------------------


def _reset(c: SearchClient) -> None:
    for info in list_indices(c):
        if info.name in SAMPLE or info.name in HIDDEN or info.name == "broken":
            c.request("DELETE", "/" + info.name)


def _bulk(c: SearchClient, index: str, docs: dict[str, dict]) -> None:
    lines = []
    for i, doc in docs.items():
        lines += [json.dumps({"index": {"_index": index, "_id": i}}), json.dumps(doc)]
    if lines:
        r = c.request("POST", "/_bulk", body=("\n".join(lines) + "\n").encode(), ndjson=True,
                      params={"refresh": "true"})
        assert not r["errors"], r


def _load_sample(c: SearchClient) -> None:
    _reset(c)
    # Built-in parts only (these servers have no analysis-common module): the stop and shingle filters.
    c.request("PUT", "/books", body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "2s",
                     "analysis": {"filter": {"my_stop": {"type": "stop", "stopwords": ["the", "a"]},
                                             "my_shingle": {"type": "shingle", "max_shingle_size": 2}},
                                  "analyzer": {"my_text": {"type": "custom", "tokenizer": "standard",
                                                           "filter": ["my_stop", "my_shingle"]}}}},
        "mappings": {"dynamic": "strict", "properties": {
            "title": {"type": "text", "analyzer": "my_text",
                      "fields": {"raw": {"type": "keyword"}, "std": {"type": "text", "analyzer": "standard"}}},
            "year": {"type": "integer"}, "price": {"type": "double"}, "tags": {"type": "keyword"},
            "published": {"type": "date"}}},
        "aliases": {"library": {}, "recent-books": {"filter": {"range": {"year": {"gte": 2000}}}}},
    })
    c.request("PUT", "/logs.2024", body={
        "settings": {"number_of_shards": 2, "number_of_replicas": 0},
        "mappings": {"properties": {"message": {"type": "text"}, "level": {"type": "keyword"},
                                    "n": {"type": "long"}, "ratio": {"type": "float"}}},
        "aliases": {"logs": {"is_write_index": True}},
    })
    c.request("PUT", "/empty-idx", body={"settings": {"number_of_replicas": 0}})
    c.request("PUT", "/" + HIDDEN[0], body={"settings": {"number_of_replicas": 0}})
    c.request("PUT", "/" + HIDDEN[1], body={"settings": {"number_of_replicas": 0, "index.hidden": True}})
    _bulk(c, "books", {f"b{i}": {"title": f"The tale of a book {i}", "year": 1950 + i % 70,
                                 "price": float(i % 50), "tags": ["x", f"t{i % 7}"],
                                 "published": f"{1950 + i % 70}-01-0{1 + i % 9}"} for i in range(SAMPLE["books"])})
    _bulk(c, "logs.2024", {f"l{i}": {"message": f"line {i} ünïcode ✓", "level": ["info", "warn"][i % 2],
                                     "n": i * 1000, "ratio": i / 8} for i in range(SAMPLE["logs.2024"])})
    for name in HIDDEN:
        _bulk(c, name, {"h1": {"secret": True}})


def _normal(value):
    """elasticdump's JavaScript rewrites numbers in _source: 3.0 comes back as 3. Compare them as equal."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _state(c: SearchClient, names) -> dict:
    out = {}
    for name in sorted(names):
        c.request("POST", f"/{name}/_refresh")
        hits = c.request("POST", f"/{name}/_search", body={"size": 10000, "query": {"match_all": {}}})["hits"]["hits"]
        settings = c.request("GET", f"/{name}/_settings")[name]["settings"]["index"]
        out[name] = {
            "docs": {h["_id"]: _normal(h["_source"]) for h in hits},
            "mappings": c.request("GET", f"/{name}/_mapping")[name]["mappings"],
            "settings": {k: settings.get(k) for k in ("analysis", "number_of_shards", "refresh_interval")},
            "aliases": c.request("GET", f"/{name}/_alias")[name]["aliases"],
        }
    return out


def _listing(d: str) -> list[str]:
    return sorted(os.listdir(d))


def _round_trip(s: SearchServer, tmp, *, snapshot_at: str | None = None, tool: str | None = None,
                scratch: str | None = None) -> None:
    server = _server(s)
    interim_dir = str(tmp / "interim")
    with _client(server) as c:
        _load_sample(c)
        chosen = select(list_indices(c), "", False, "test")
        assert [i.name for i in chosen] == sorted(SAMPLE)  # hidden indices are left out by select()
        before = _state(c, SAMPLE)
        assert {k: len(v["docs"]) for k, v in before.items()} == SAMPLE

        with InterimDump(server, chosen, interim_dir=interim_dir, scratch_dir=scratch, meta="1Gi",
                         target="test", tool=tool) as dump:
            items = list(dump.items())
            dump.finish()
            assert items == [Item(path=interim_dir, directory=interim_dir)]
            written = _listing(interim_dir)
            expected = ["meta.txt"] + [f"{n}{suffix}" for n in SAMPLE for suffix in
                                       (".alias.json", ".analyzer.json", ".json", ".mapping.json", ".settings.json")]
            assert written == sorted(expected)
            with open(os.path.join(interim_dir, "meta.txt")) as f:
                assert f.read() == "1Gi"
            snapshot = DirectorySnapshot.store(str(tmp / "repo"), interim_dir, at=snapshot_at)
        assert _listing(interim_dir) == []  # emptied at the end

        for name in SAMPLE:
            c.request("DELETE", f"/{name}")
        loaded = restore_interim(server, c, snapshot, interim_dir=interim_dir, scratch_dir=scratch,
                                 target="test", tool=tool)
        assert loaded == SAMPLE
        assert _listing(interim_dir) == []
        after = _state(c, SAMPLE)
        for name in SAMPLE:
            assert after[name] == before[name], name
        assert set(HIDDEN) <= {i.name for i in list_indices(c)}  # untouched, never dumped


# -- without servers -----------------------------------------------------------------------------------------


def test_empty_dir_keeps_the_directory_and_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    d = tmp_path / "interim"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "f.json").write_text("{}")
    (d / ".hidden").write_text("")
    os.symlink(outside, d / "link")
    empty_dir(str(d))
    assert d.is_dir() and _listing(str(d)) == []
    assert (outside / "keep").exists()  # a link is removed, not followed
    empty_dir(str(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir()
    with pytest.raises(BadInput):
        empty_dir("/")


def test_find_multielasticdump(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("STASH_RUNNER_CACHE", str(cache))
    with pytest.raises(ToolFailed) as e:
        find_multielasticdump()
    assert "PATH" in str(e.value) and str(cache / "elasticdump-6.125.1") in str(e.value)
    cached = cache / "elasticdump-6.125.1" / "node_modules" / ".bin" / "multielasticdump"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    assert find_multielasticdump() == str(cached)
    on_path = tmp_path / "bin" / "multielasticdump"
    on_path.parent.mkdir()
    shutil.copy(cached, on_path)
    assert find_multielasticdump() == str(on_path)


def test_arguments():
    regex = elasticdump.match_regex(["logs.2024", "a+b", "x-y"])
    assert regex == r"^(?:a\+b|logs\.2024|x\-y)$"
    ours = elasticdump.common_args([], "input", "/t/ca.pem", "/t/auth.txt", interim.DUMP_TYPES)
    assert ours == ["--ignoreTemplate=true", "--ignoreAnalyzer=false", "--ignoreAlias=false", "--limit=5000",
                    "--httpAuthFile=/t/auth.txt", "--input-ca=/t/ca.pem", "--tlsAuth=true"]
    # The user's options win; a user's --includeType gets childerror, else failed indices are ignored.
    user = elasticdump.user_args("--includeType=data,mapping --limit 100 --output-ca=/mine.pem")
    assert elasticdump.common_args(user, "output", "/t/ca.pem", None, interim.DUMP_TYPES) == [
        "--tlsAuth=true", "--includeType=data,mapping,childerror", "--limit", "100", "--output-ca=/mine.pem"]
    assert elasticdump.common_args(["--ignoreType=template"], "input", None, None, interim.DUMP_TYPES) == [
        "--limit=5000", "--ignoreType=template"]
    for reserved in ("--input=http://elsewhere", "--output /x", "--httpAuthFile=/f", "--direction=load"):
        with pytest.raises(BadInput, match="set by stash-runner"):
            elasticdump.user_args(reserved)
    # Every byte percent-encoded twice: what ini, the URL setter and request's two decodings give back intact.
    assert elasticdump.auth_value("a%") == "%2561%2525"
    assert elasticdump.auth_value("ü") == "%25C3%25BC"


def test_leaving_the_dump_stops_the_tool_and_its_children(tmp_path):
    """A stand-in tool that forks a child, as multielasticdump forks its per-index processes, and waits."""
    pid_file = tmp_path / "child.pid"
    tool = tmp_path / "multielasticdump"
    tool.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\nwait\n")
    tool.chmod(0o755)
    server = Server("http://127.0.0.1:9", "test")
    dump = InterimDump(server, [IndexInfo("x")], interim_dir=str(tmp_path / "interim"), scratch_dir=None,
                       meta="1Gi", target="test", tool=str(tool))
    with dump:
        t = threading.Thread(target=lambda: list(dump.items()))
        t.start()
        for _ in range(200):
            if pid_file.exists():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
    t.join(timeout=20)
    assert not t.is_alive() and not _alive(child)
    with pytest.raises(ToolFailed, match=r"^multielasticdump failed \(killed by signal 15\)"):
        dump.finish()
    assert _listing(str(tmp_path / "interim")) == []
    with pytest.raises(BadInput, match="has a path"):
        InterimDump(Server("http://127.0.0.1:9/es", "test"), [], interim_dir=str(tmp_path / "i2"),
                    scratch_dir=None, target="test")._dump()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_dump_indices_names_with_dots(tmp_path):
    for name in ("logs.2024.json", "logs.2024.mapping.json", "logs.2024.settings.json", "a.alias.json",
                 "a.settings.json", "z.json.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    assert interim.dump_indices(str(tmp_path)) == {"logs.2024": str(tmp_path / "logs.2024.json"), "a": None,
                                                   "z": str(tmp_path / "z.json.gz")}


# -- Elasticsearch 7 and OpenSearch 2, without security ------------------------------------------------------


def test_round_trip_es7(servers, tmp_path):
    _round_trip(servers.get("es7"), tmp_path)


def test_interim_volume_too_small(servers, tmp_path, monkeypatch):
    s = servers.get("es7")
    server = _server(s)
    with _client(server) as c:
        _load_sample(c)
        chosen = select(list_indices(c), "", False, "test")
    assert sum(i.store_bytes for i in chosen) > 64 * 1024
    small = tmp_path / "small"
    small.mkdir()
    # A real 64 KiB tmpfs (we are root); a run that may not mount gives the check a 64 KiB figure instead.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    if not mounted:
        real = os.statvfs
        monkeypatch.setattr(interim.os, "statvfs",
                            lambda p: os.statvfs_result((4096, 4096, 16, 16, 16, *real(p)[5:])))
    try:
        (small / "stale.json").write_text("from an earlier run")
        with InterimDump(server, chosen, interim_dir=str(small), scratch_dir=str(tmp_path), target="test",
                         tool=str(tmp_path / "never-run")) as dump:
            assert list(dump.items()) == []
            assert _listing(str(small)) == ["stale.json"]  # checked before anything
            with pytest.raises(BadInput) as e:
                dump.finish()
        msg = str(e.value)
        assert msg.startswith(f"interim volume {small} has ") and "KiB free, the indices to dump hold " in msg
        assert msg.endswith("give a larger interim volume")
        assert os.path.ismount(small) == mounted and _listing(str(small)) == []  # emptied on the way out
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)


def test_existing_index_and_overwrite(servers, tmp_path):
    s = servers.get("es7")
    server = _server(s)
    interim_dir = str(tmp_path / "interim")
    with _client(server) as c:
        _load_sample(c)
        chosen = select(list_indices(c), "books,logs.2024", False, "test")
        with InterimDump(server, chosen, interim_dir=interim_dir, scratch_dir=None, target="test") as dump:
            list(dump.items())
            dump.finish()
            snapshot = DirectorySnapshot.store(str(tmp_path / "repo"), interim_dir)
        c.request("DELETE", "/books")
        _bulk(c, "logs.2024", {"extra": {"message": "added after the backup", "n": 1}})
        with pytest.raises(BadInput) as e:
            restore_interim(server, c, snapshot, interim_dir=interim_dir, scratch_dir=None, target="test")
        assert "logs.2024" in str(e.value) and "books" not in str(e.value)
        assert "books" not in {i.name for i in list_indices(c)}  # nothing was loaded
        assert _listing(interim_dir) == []
        loaded = restore_interim(server, c, snapshot, interim_dir=interim_dir, scratch_dir=None,
                                 overwrite=True, target="test")
        assert loaded == {"books": SAMPLE["books"], "logs.2024": SAMPLE["logs.2024"]}


def test_restore_a_dump_laid_out_as_stash_writes_it(servers, tmp_path):
    """Stash's dump: every index, system and hidden ones too, legacy templates, no analyzer or alias files,
    meta.txt, at /stash-tmp/stash-interim-volume/data. The hidden ones stay out, the rest loads."""
    s = servers.get("es7")
    server = _server(s)
    interim_dir = str(tmp_path / "interim")
    with _client(server) as c:
        _load_sample(c)
        everything = select(list_indices(c), ",".join(["empty-idx", "logs.2024", *HIDDEN]), True, "test")
        with InterimDump(server, everything, interim_dir=interim_dir, scratch_dir=None, meta="1Gi",
                         target="test") as dump:
            list(dump.items())
            dump.finish()
            for name in os.listdir(interim_dir):
                if name.endswith((".alias.json", ".analyzer.json")):
                    os.unlink(os.path.join(interim_dir, name))
            for info in everything:
                with open(os.path.join(interim_dir, f"{info.name}.template.json"), "w") as f:
                    f.write('"{\\"some-template\\":{\\"index_patterns\\":[\\"x-*\\"]}}"\n')
            snapshot = DirectorySnapshot.store(str(tmp_path / "repo"), interim_dir, at=STASH_INTERIM)
        for name in ("empty-idx", "logs.2024"):
            c.request("DELETE", f"/{name}")
        loaded = restore_interim(server, c, snapshot, interim_dir=interim_dir, scratch_dir=None, target="test")
        assert loaded == {"empty-idx": 0, "logs.2024": SAMPLE["logs.2024"]}  # the hidden ones are in the cluster
        assert c.request("GET", "/logs.2024/_alias")["logs.2024"]["aliases"] == {}  # none in the dump
        assert c.request("GET", "/_template/some-template", ignore=(404,)) is None  # not loaded
        assert _listing(interim_dir) == []


def test_failing_load(servers, tmp_path):
    s = servers.get("es7")
    server = _server(s)
    repo = tmp_path / "repo"
    at = repo / STASH_INTERIM.lstrip("/")
    at.mkdir(parents=True)

    def settings(shards: str) -> str:
        return json.dumps(json.dumps({"broken": {"settings": {"index": {"number_of_shards": shards}}}})) + "\n"

    (at / "broken.settings.json").write_text(settings("1"))
    # As multielasticdump writes them: settings as a JSON string of JSON, the mapping as JSON.
    (at / "broken.mapping.json").write_text(json.dumps({"broken": {"mappings": {
        "dynamic": "strict", "properties": {"a": {"type": "long"}}}}}) + "\n")
    doc = '{"_index":"broken","_id":"1","_source":{"a":1}}\n'
    interim_dir = str(tmp_path / "interim")
    snapshot = DirectorySnapshot(str(repo), [STASH_INTERIM])

    def restore(c: SearchClient) -> str:
        c.request("DELETE", "/broken", ignore=(404,))
        with pytest.raises(ToolFailed) as e:
            restore_interim(server, c, snapshot, interim_dir=interim_dir, scratch_dir=None, target="test")
        assert _listing(interim_dir) == []
        assert "\n" not in str(e.value)
        return str(e.value)

    with _client(server) as c:
        _reset(c)
        # A truncated line: elasticdump reports it, loads nothing of the file, and exits 0.
        (at / "broken.json").write_text(doc + '{"_index": "broken", "_id\n')
        msg = restore(c)
        assert msg.startswith("multielasticdump reported errors (exit 0): Error Emitted => "), msg
        # A document the strict mapping rejects: elasticdump ignores it (exit 0); the count check does not.
        (at / "broken.json").write_text(doc + '{"_index":"broken","_id":"2","_source":{"a":2,"b":3}}\n')
        msg = restore(c)
        assert msg.startswith("index broken: 1 documents after the load, its dump holds 2 (multielasticdump: ")
        assert "strict_dynamic_mapping_exception" in msg, msg
        # Settings or a mapping the cluster refuses: elasticdump ignores that too, and the documents create the
        # index with defaults; the loaded index is compared with the dump.
        (at / "broken.json").write_text(doc)
        (at / "broken.settings.json").write_text(settings("zero"))
        msg = restore(c)
        assert msg.startswith('index broken: its settings\' number_of_shards is "1", the dump has "zero": '
                              "multielasticdump did not load it"), msg
        (at / "broken.settings.json").write_text(settings("1"))
        (at / "broken.mapping.json").write_text(json.dumps({"broken": {"mappings": {
            "properties": {"a": {"type": "long"}, "t": {"type": "nonsense"}}}}}) + "\n")
        msg = restore(c)
        assert msg.startswith("index broken: field t is missing, the dump maps it as nonsense: "), msg
        # No mapping file: refused before anything is loaded.
        (at / "broken.mapping.json").unlink()
        assert restore(c) == "the dump is incomplete: no broken.mapping.json"
        c.request("DELETE", "/broken", ignore=(404,))
        # A snapshot without the dump names where it looked.
        with pytest.raises(SnapshotNotFound, match="/a, /b"):
            restore_interim(server, c, DirectorySnapshot(str(repo), ["/a", "/b"]), interim_dir=interim_dir,
                            scratch_dir=None, target="test")


class _AuthProxy:
    """An HTTP proxy in front of a real server that lets through only requests carrying one of ``users``'
    credentials exactly (Basic auth), and records any other: arbitrary user names and passwords against a real
    cluster (the integ-test Elasticsearch cannot create users: its security index needs analysis-common)."""

    def __init__(self, upstream: str, users: dict[str, str]):
        allowed = {"Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in users.items()}
        self.refused: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                auth = self.headers.get("Authorization", "")
                if auth not in allowed:
                    proxy.refused.append(auth)
                    self.send_response(401)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"content-type": self.headers.get("content-type",
                                                                                      "application/json")})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("content-type", "")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("content-type", "")
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_credentials_reach_the_server_intact(servers, tmp_path):
    """User names and passwords that an ini parser, a URL or a percent-decoder would alter, each dumping an
    index through elasticdump's auth file (the parent's and the per-index processes' requests all checked)."""
    s = servers.get("es7")
    users = {"null": "null", "true": "false", "us:er": PASSWORD, "dq": '"quoted pw"', "sq": "'single'",
             "ü": " lead ü€/@[x]\\ %zz;#c trail "}
    with _client(_server(s)) as c:
        _load_sample(c)
        chosen = select(list_indices(c), "empty-idx", False, "test")
    proxy = _AuthProxy(s.url, users)
    errors: dict[str, BaseException] = {}

    def dump(n: int, user: str, pw: str) -> None:
        d = tmp_path / f"u{n}"
        try:
            with InterimDump(Server(proxy.url, "test", user, pw), chosen, interim_dir=str(d / "interim"),
                             scratch_dir=str(d), target="test") as dump:
                list(dump.items())
                dump.finish()
                assert "empty-idx.settings.json" in os.listdir(d / "interim")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[user] = e

    threads = [threading.Thread(target=dump, args=(n, *item)) for n, item in enumerate(users.items())]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proxy.close()
    assert errors == {} and proxy.refused == []


def test_round_trip_os2(servers, tmp_path):
    # Recorded where Stash's pods keep it, restored into another interim dir.
    _round_trip(servers.get("os2"), tmp_path, snapshot_at=STASH_INTERIM)


# -- Elasticsearch 8, secured, over HTTPS --------------------------------------------------------------------


def _recording_tool(tmp_path) -> tuple[str, str]:
    """A stand-in for multielasticdump that records its argv, its auth file's mode and the TLS switch, then
    execs the real tool."""
    record = tmp_path / "record"
    record.mkdir()
    script = tmp_path / "multielasticdump"
    script.write_text(f"""#!/bin/sh
n=$(ls {record} | wc -l)
out={record}/run$n
: > $out.argv
for a in "$@"; do
  printf '%s\\n' "$a" >> $out.argv
  case "$a" in --httpAuthFile=*) stat -c %a "${{a#--httpAuthFile=}}" > $out.mode;; esac
done
echo "${{NODE_TLS_REJECT_UNAUTHORIZED-unset}}" > $out.tls
exec {elasticdump_bin()} "$@"
""")
    script.chmod(0o755)
    return str(script), str(record)


def test_round_trip_es8_secured(servers, tmp_path, caplog):
    s = servers.get("es8", security=True, tls=True, password=PASSWORD)
    tool, record = _recording_tool(tmp_path)
    scratch = tmp_path / "scratch"
    caplog.set_level("DEBUG", logger="stash_runner")
    _round_trip(s, tmp_path, tool=tool, scratch=str(scratch))
    runs = sorted({f.split(".")[0] for f in os.listdir(record)})
    assert len(runs) == 2  # the dump and the load
    for run in runs:
        with open(os.path.join(record, run + ".argv")) as f:
            argv = f.read()
        assert PASSWORD not in argv and "%41" not in argv and "Pw" not in argv
        assert "--tlsAuth=true" in argv and ("--input-ca=" in argv or "--output-ca=" in argv)
        with open(os.path.join(record, run + ".mode")) as f:
            assert f.read().strip() == "400"
        with open(os.path.join(record, run + ".tls")) as f:
            assert f.read().strip() == "unset"  # verified: the CA is given
    assert _listing(str(scratch)) == []  # the auth file and the CA are gone
    assert PASSWORD not in caplog.text and "multielasticdump: " in caplog.text


def _dump_fails(server: Server, tmp_path, chosen: list[IndexInfo]) -> str:
    with InterimDump(server, chosen, interim_dir=str(tmp_path / "interim"), scratch_dir=str(tmp_path),
                     target="test") as dump:
        assert list(dump.items()) == []
        with pytest.raises(ToolFailed) as e:
            dump.finish()
    assert _listing(str(tmp_path / "interim")) == []
    return str(e.value)


def test_es8_without_ca_or_with_a_wrong_password(servers, tmp_path):
    s = servers.get("es8", security=True, tls=True, password=PASSWORD)
    with _client(_server(s)) as c:
        _load_sample(c)
        chosen = select(list_indices(c), "books", False, "test")
    msg = _dump_fails(_server(s, ca_pem=None), tmp_path / "no-ca", chosen)
    assert "certificate" in msg and "caBundle" in msg and "\n" not in msg, msg
    assert PASSWORD not in msg

    wrong = "Wrong %41 pass=#"
    msg = _dump_fails(_server(s, password=wrong), tmp_path / "wrong", chosen)
    assert msg == ("multielasticdump failed (exit 1): GET /_aliases -> 401 Unauthorized (authentication failed: "
                   "check the user and password of the AppBinding's Secret)"), msg

    # insecureSkipTLSVerify: no CA, and the certificate is not checked.
    with InterimDump(_server(s, ca_pem=None, insecure=True), chosen, interim_dir=str(tmp_path / "insecure"),
                     scratch_dir=str(tmp_path), target="test") as dump:
        list(dump.items())
        dump.finish()
        assert "books.json" in os.listdir(tmp_path / "insecure")
    assert not any(stat.S_ISDIR(os.lstat(tmp_path / n).st_mode) and n.startswith("stash-runner-es-")
                   for n in os.listdir(tmp_path))
