"""The Elasticsearch streaming mode against real servers (Elasticsearch 7.17 and 8.7, OpenSearch 2.19): a dump's
files written into a directory and restored from it, without restic."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from drivers.elasticsearch import stream
from drivers.elasticsearch.connection import SearchClient, SearchError, Server, connect
from drivers.elasticsearch.indices import IndexInfo, list_indices, select
from drivers.elasticsearch.stream import (
    DOCUMENTS_FILE,
    MANIFEST,
    ROOT,
    StreamDump,
    index_file,
    restore_stream,
)
from stash_runner.errors import BadInput, SnapshotNotFound, ToolFailed

from .esservers import start_search_server

BIG_DOCS = 200_000
SMALL = ["articles", "empty", "events"]
ALL = ["articles", "big", "empty", "events"]
HIDDEN = [".stash-dot-index", "hidden-by-setting"]
STRICT_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "title": {"type": "text", "analyzer": "folded", "fields": {"raw": {"type": "keyword"}}},
        "lang": {"type": "keyword"},
        "price": {"type": "double"},
        "views": {"type": "long"},
        "meta": {"properties": {"author": {"properties": {"name": {"type": "keyword"},
                                                          "tags": {"type": "keyword"}}}}},
        "comments": {"type": "nested", "properties": {"user": {"type": "keyword"}, "n": {"type": "integer"}}},
        "extra": {"type": "object", "enabled": False},
    },
}
ANALYSIS = {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase"]}}}


class SnapshotFilesDouble:
    """A test double of the repository's snapshot reader: the snapshot's files are a directory's."""

    def __init__(self, root: str):
        self.root = root
        self.paths = [ROOT]

    def files(self, under: str = "/") -> list[str]:
        out = []
        for d, _, names in os.walk(os.path.join(self.root, under.lstrip("/"))):
            out += ["/" + os.path.relpath(os.path.join(d, n), self.root) for n in names]
        return sorted(out)

    def read(self, path: str) -> Iterator[bytes]:
        full = os.path.join(self.root, path.lstrip("/"))
        if not os.path.isfile(full):
            raise SnapshotNotFound(f"no file {path} in the snapshot")
        return self._chunks(full)

    @staticmethod
    def _chunks(full: str) -> Iterator[bytes]:
        with open(full, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    def extract(self, path: str, target: str) -> None:
        raise NotImplementedError("the streaming mode reads files, never directories")


def write_dump(dump: StreamDump, directory: str) -> list[str]:
    """What the backup does with a dump, into a directory: every item read to its end, then finish()."""
    paths = []
    with dump:
        for item in dump.items():
            dest = os.path.join(directory, item.path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                shutil.copyfileobj(item.stream, f, 1 << 20)
            paths.append(item.path)
        dump.finish()
    return paths


# -- the data --------------------------------------------------------------------------------------


def _compact(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def article(i: int) -> dict:
    return {
        "title": f"Titre {i} Ünïcödé 😀 ñ",
        "lang": "fr" if i % 3 == 0 else "en",
        "price": 3.0 if i % 2 else 10.25 + i,
        "views": 9007199254740993 + i,  # above 2**53: what a JavaScript dumper rounds
        "meta": {"author": {"name": f"author-{i % 7}", "tags": ["a", "b", f"t{i}"]}},
        "comments": [{"user": "u1", "n": i}, {"user": "ü2", "n": -i}],
        "extra": {"huge": 123456789012345678901234567890 + i, "exp": 1.5e300, "neg": -0.0,
                  "deep": {"x": [1, {"y": None}]}},
    }


def event(i: int) -> dict:
    return {"kind": ["click", "view", "buy"][i % 3], "at": f"2024-01-{1 + i % 28:02d}T10:00:00Z", "value": i / 4,
            "user": {"id": i % 50, "name": f"用户{i}", "geo": {"city": "Zürich", "ok": i % 2 == 0}}}


def bulk(client: SearchClient, index: str, lines: list[str]) -> None:
    resp = client.request("POST", f"/{index}/_bulk", body="".join(lines).encode(), ndjson=True,
                          params={"filter_path": "errors,items.*.error"})
    assert not resp["errors"], resp


def load_data(client: SearchClient) -> dict[tuple[str, str], str]:
    """The test indices; returns the compact source text of the articles, by (_id, routing)."""
    client.request("DELETE", "/" + ",".join(ALL + HIDDEN), params={"ignore_unavailable": "true",
                                                                    "expand_wildcards": "all"})
    client.request("PUT", "/articles", body={
        "settings": {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "5s", "analysis": ANALYSIS},
        "mappings": STRICT_MAPPING,
        "aliases": {"articles-en": {"filter": {"term": {"lang": "en"}}, "routing": "r1"},
                    "articles-write": {"is_write_index": True}}})
    sources = {}
    lines = []
    for i in range(300):
        routing = f"r{i % 4}" if i % 5 == 0 else None
        doc_id = f"a-{i}"
        text = _compact(article(i))
        sources[(doc_id, routing)] = text
        action = {"_id": doc_id, **({"routing": routing} if routing else {})}
        lines += [json.dumps({"index": action}) + "\n", text + "\n"]
    bulk(client, "articles", lines)

    client.request("PUT", "/events", body={"settings": {"number_of_shards": 1}})  # replicas: the default (1)
    lines = []
    for i in range(500):
        doc_id = f"ev-{i}-ünï-😀" if i % 10 == 0 else str(i)
        action = {"_id": doc_id, **({"routing": f"user{i % 3}"} if i % 4 == 0 else {})}
        lines += [json.dumps({"index": action}, ensure_ascii=False) + "\n", _compact(event(i)) + "\n"]
    bulk(client, "events", lines)

    client.request("PUT", "/empty", body={"settings": {"number_of_replicas": 0},
                                          "mappings": {"properties": {"x": {"type": "keyword"}}}})

    client.request("PUT", "/big", body={"settings": {"number_of_shards": 2, "number_of_replicas": 0,
                                                     "refresh_interval": "-1"}})
    step = 25_000
    for start in range(0, BIG_DOCS, step):
        bulk(client, "big", [f'{{"index":{{"_id":"{i}"}}}}\n{{"n":{i},"name":"doc {i}","v":{i}.5,"tag":"t{i % 10}"}}\n'
                             for i in range(start, start + step)])
    client.request("PUT", "/big/_settings", body={"index": {"refresh_interval": None}})

    client.request("PUT", "/.stash-dot-index", body={"settings": {"number_of_replicas": 0}})
    client.request("PUT", "/hidden-by-setting", body={"settings": {"number_of_replicas": 0, "index.hidden": True}})
    for name in HIDDEN:
        client.request("PUT", f"/{name}/_doc/1", body={"secret": True})
    client.request("POST", "/" + ",".join(ALL + HIDDEN) + "/_refresh", params={"expand_wildcards": "all"})
    # A block is restored last: the load, the aliases and the final count come before it.
    client.request("PUT", "/empty/_settings", body={"index.blocks.write": True})
    return sources


@dataclass
class State:
    docs: dict[str, dict]  # index -> {(_id, routing): _source}, the small indices
    mappings: dict
    settings: dict
    aliases: dict
    big_count: int
    big_sample: dict
    filtered_alias_count: int


RELEVANT = ("index.analysis.", "index.number_of_shards", "index.number_of_replicas", "index.refresh_interval",
            "index.blocks.")


def state(client: SearchClient) -> State:
    docs = {}
    for name in SMALL:
        resp = client.request("POST", f"/{name}/_search", body={"size": 10000, "sort": ["_doc"]},
                              params={"filter_path": "hits.hits._id,hits.hits._routing,hits.hits._source"})
        docs[name] = {(h["_id"], h.get("_routing")): h["_source"] for h in (resp.get("hits") or {}).get("hits", [])}
    settings = {}
    for name in ALL:
        flat = client.request("GET", f"/{name}/_settings", params={"flat_settings": "true"})[name]["settings"]
        settings[name] = {k: v for k, v in flat.items() if k.startswith(RELEVANT)}
    mappings = client.request("GET", "/" + ",".join(ALL) + "/_mapping")
    aliases = client.request("GET", "/" + ",".join(ALL) + "/_alias")
    big_count = client.request("GET", "/big/_count")["count"]
    sample = client.request("POST", "/big/_mget", body={"ids": [str(i) for i in range(0, BIG_DOCS, 997)]})
    filtered = client.request("POST", "/articles-en/_count", body={"query": {"match_all": {}}})["count"]
    return State(docs, mappings, settings, aliases, big_count, {d["_id"]: d["_source"] for d in sample["docs"]},
                 filtered)


def raw_source(url: str, index: str, doc_id: str, routing: str | None) -> bytes:
    """A document's _source as the server stores it, byte for byte (no client parses it)."""
    query = f"?routing={urllib.parse.quote(routing)}" if routing else ""
    with urllib.request.urlopen(f"{url}/{index}/_source/{urllib.parse.quote(doc_id, safe='')}{query}",
                                timeout=30) as r:
        return r.read()


def _exists_get(client: SearchClient, name: str) -> bool:
    return client.request("GET", f"/{name}/_settings", ignore=(404,)) is not None


def open_contexts(client: SearchClient) -> int:
    resp = client.request("GET", "/_nodes/stats/indices/search",
                          params={"filter_path": "nodes.*.indices.search.open_contexts"})
    return sum(n["indices"]["search"]["open_contexts"] for n in resp["nodes"].values())


def dump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("es-dump-")]


# -- fixtures: one server at a time ----------------------------------------------------------------


@dataclass
class Cluster:
    key: str
    url: str
    client: SearchClient
    sources: dict
    before: State
    full_dump: str  # every non-hidden index, the big one sliced
    small_dump: str  # the small indices only
    dumped: dict


@pytest.fixture(scope="module", params=["es7", "es8", "os2"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp(f"es-stream-{request.param}")
    server = start_search_server(request.param, str(base), heap_mb=512)
    client = connect(Server(url=server.url, ref=f"test {request.param}"))
    try:
        sources = load_data(client)
        before = state(client)
        chosen = select(list_indices(client), "", False, "the test cluster")
        assert [i.name for i in chosen] == ALL  # hidden and dot indices are left out
        full, small = str(base / "full"), str(base / "small")
        dump = StreamDump(client, chosen, slices=3, target=f"test {request.param}")
        started = time.monotonic()
        paths = write_dump(dump, full)
        took = time.monotonic() - started
        big = dump.dumped["big"]
        rate = f"{big.documents / big.seconds:.0f} docs/s, {big.bytes / 1e6 / big.seconds:.1f} MB/s"
        print(f"\n[{request.param}] dump of big: {big.documents} docs, {big.bytes / 1e6:.1f} MB, {big.seconds:.2f} s: "
              f"{rate} ({big.method}, {big.slices} slices); whole dump {took:.2f} s")
        assert paths[-1] == MANIFEST
        assert paths[:4] == [index_file("articles", f) for f in
                             ("settings.json", "mappings.json", "aliases.json", DOCUMENTS_FILE)]
        write_dump(StreamDump(client, [i for i in chosen if i.name in SMALL], target="small"), small)
        yield Cluster(request.param, server.url, client, sources, before, full, small, dump.dumped)
    finally:
        client.close()
        server.stop()


# -- tests ---------------------------------------------------------------------------------------


def test_dump_files(cluster):
    with open(os.path.join(cluster.full_dump, MANIFEST.lstrip("/"))) as f:
        manifest = json.load(f)
    assert manifest["format"] == 1
    assert manifest["distribution"] == ("opensearch" if cluster.key == "os2" else "elasticsearch")
    assert manifest["indices"] == {"articles": {"documents": 300}, "big": {"documents": BIG_DOCS},
                                   "empty": {"documents": 0}, "events": {"documents": 500}}
    snap = SnapshotFilesDouble(cluster.full_dump)
    assert not [p for p in snap.files(ROOT) if any(h in p for h in HIDDEN)]
    # The big index was read in 3 slices, merged: every document exactly once, each as two whole lines.
    assert cluster.dumped["big"].slices == 3
    assert cluster.dumped["big"].method == ("scroll" if cluster.key == "os2" else "pit")
    seen = set()
    lines = 0
    with open(os.path.join(cluster.full_dump, index_file("big", DOCUMENTS_FILE).lstrip("/")), "rb") as f:
        for n, line in enumerate(f):
            lines += 1
            if n % 2 == 0:
                seen.add(json.loads(line)["index"]["_id"])
            else:
                doc = json.loads(line)
                assert doc["name"] == f"doc {doc['n']}"
    assert lines == 2 * BIG_DOCS and seen == {str(i) for i in range(BIG_DOCS)}
    # Aliases keep their filters, routing and write flag; settings are as the cluster returned them.
    with open(os.path.join(cluster.full_dump, index_file("articles", "aliases.json").lstrip("/"))) as f:
        aliases = json.load(f)
    assert aliases["articles-en"]["filter"] == {"term": {"lang": "en"}}
    assert aliases["articles-en"]["index_routing"] == "r1" and aliases["articles-write"]["is_write_index"] is True
    # Routing is kept in the action lines.
    with open(os.path.join(cluster.full_dump, index_file("articles", DOCUMENTS_FILE).lstrip("/")), "rb") as f:
        actions = [json.loads(line)["index"] for n, line in enumerate(f) if n % 2 == 0]
    assert {"_id": "a-5", "routing": "r1"} in actions and {"_id": "a-1"} in actions


def test_round_trip(cluster):
    c = cluster.client
    raw_before = {key: raw_source(cluster.url, "articles", *key) for key in list(cluster.sources)[:40]}
    assert raw_before == {key: cluster.sources[key].encode() for key in raw_before}
    c.request("DELETE", "/" + ",".join(ALL))
    started = time.monotonic()
    restored = restore_stream(c, SnapshotFilesDouble(cluster.full_dump), target=f"test {cluster.key}")
    took = time.monotonic() - started
    size = sum(os.path.getsize(os.path.join(cluster.full_dump, index_file(n, DOCUMENTS_FILE).lstrip("/")))
               for n in ALL)
    print(f"\n[{cluster.key}] restore of {sum(restored.values())} docs, {size / 1e6:.1f} MB in {took:.2f} s: "
          f"{sum(restored.values()) / took:.0f} docs/s, {size / 1e6 / took:.1f} MB/s")
    assert restored == {"articles": 300, "big": BIG_DOCS, "empty": 0, "events": 500}
    after = state(c)
    assert after.docs == cluster.before.docs
    assert after.mappings == cluster.before.mappings
    assert after.settings == cluster.before.settings
    assert after.settings["articles"]["index.refresh_interval"] == "5s"
    assert after.settings["events"]["index.number_of_replicas"] == "1"
    assert after.settings["empty"]["index.blocks.write"] == "true"
    assert "index.refresh_interval" not in after.settings["big"]  # reset to the default, as it was
    assert after.aliases == cluster.before.aliases
    assert after.big_count == BIG_DOCS and after.big_sample == cluster.before.big_sample
    # Byte for byte: 3.0 stays 3.0, integers above 2**53 and 2**64 keep every digit, unicode is not escaped;
    # only an exponent float may be spelled otherwise (1.5e+300 as 1.5e300), its value the same.
    assert {key: _exponents(raw_source(cluster.url, "articles", *key)) for key in raw_before} == \
        {key: _exponents(raw) for key, raw in raw_before.items()}
    # The filtered alias filters as before, the write alias takes writes.
    assert 0 < after.filtered_alias_count == cluster.before.filtered_alias_count < 300
    c.request("PUT", "/articles-write/_doc/new", body={**article(1000)}, params={"refresh": "true"})
    assert c.request("GET", "/articles/_count")["count"] == 301
    c.request("DELETE", "/articles/_doc/new", params={"refresh": "true"})


def _exponents(raw: bytes) -> bytes:
    """A float's exponent in one spelling: e+300 and e300, e-07 and e-7 alike."""
    return re.sub(rb"([0-9])[eE]\+?(-?)0*([0-9])", rb"\1e\2\3", raw)


def test_existing_index_refused_then_overwritten(cluster):
    c = cluster.client
    snap = SnapshotFilesDouble(cluster.small_dump)
    restore_stream(c, snap, overwrite=True, target="t")  # whatever ran before: the small indices as dumped
    c.request("DELETE", "/events,empty")
    with pytest.raises(BadInput) as e:
        restore_stream(c, snap, target=f"test {cluster.key}")
    message = str(e.value)
    assert f"in test {cluster.key}: articles;" in message and "--overwrite" in message
    assert "events" not in message
    assert not _exists_get(c, "events") and not _exists_get(c, "empty")  # nothing was created
    # With --overwrite: replaced, the others created.
    c.request("PUT", "/articles/_doc/extra", body={"lang": "xx"}, params={"refresh": "true"})
    assert restore_stream(c, snap, overwrite=True, target="t") == {"articles": 300, "empty": 0, "events": 500}
    after = state_small(c)
    assert after == {n: cluster.before.docs[n] for n in SMALL}


def state_small(c: SearchClient) -> dict:
    out = {}
    for name in SMALL:
        resp = c.request("POST", f"/{name}/_search", body={"size": 10000},
                         params={"filter_path": "hits.hits._id,hits.hits._routing,hits.hits._source"})
        out[name] = {(h["_id"], h.get("_routing")): h["_source"] for h in (resp.get("hits") or {}).get("hits", [])}
    return out


def test_alias_name_taken_by_an_index(cluster):
    c = cluster.client
    c.request("DELETE", "/articles")
    c.request("PUT", "/articles-en", body={"settings": {"number_of_replicas": 0}})
    try:
        with pytest.raises(BadInput, match=r"articles-en; give --overwrite"):
            restore_stream(c, SnapshotFilesDouble(cluster.small_dump), target="t")
        assert not _exists_get(c, "articles")
    finally:
        c.request("DELETE", "/articles-en")
    restore_stream(c, SnapshotFilesDouble(cluster.small_dump), overwrite=True, target="t")


def test_refused_document_fails_the_load(cluster, tmp_path):
    c = cluster.client
    bad = str(tmp_path / "bad")
    shutil.copytree(cluster.small_dump, bad)
    docs = os.path.join(bad, index_file("articles", DOCUMENTS_FILE).lstrip("/"))
    with open(docs, "ab") as f:
        f.write(b'{"index":{"_id":"bad-doc"}}\n{"title":"x","not_in_mapping":"secret-value-123"}\n')
    with pytest.raises(ToolFailed) as e:
        restore_stream(c, SnapshotFilesDouble(bad), overwrite=True, target=f"test {cluster.key}")
    message = str(e.value)
    assert "index articles" in message and "'bad-doc'" in message and "strict_dynamic_mapping_exception" in message
    assert "secret-value-123" not in message and "\n" not in message
    # A file that ends inside a document is a damaged snapshot.
    with open(docs, "ab") as f:
        f.write(b'{"index":{"_id":"half"}}\n')
    with pytest.raises(ToolFailed, match="ends inside a document"):
        restore_stream(c, SnapshotFilesDouble(bad), overwrite=True, target="t", batch_bytes=1 << 30)
    restore_stream(c, SnapshotFilesDouble(cluster.small_dump), overwrite=True, target="t")


def test_too_many_requests_retries_only_refused_documents(cluster, monkeypatch):
    monkeypatch.setattr(stream, "RETRY_FIRST_DELAY", 0.01)
    real = cluster.client
    bodies: list[bytes] = []

    class ThrottlingClient:
        """The real client, but the cluster answers 429 to the first bulk request and to one document of the
        second."""

        distribution, version = real.distribution, real.version

        def request(self, method, path, **kw):
            if not path.endswith("/_bulk"):
                return real.request(method, path, **kw)
            bodies.append(kw["body"])
            if len(bodies) == 1:
                raise SearchError(f"{method} {path}: HTTP 429: es_rejected_execution_exception", 429, "rejected")
            resp = real.request(method, path, **kw)
            if len(bodies) == 2:
                resp["errors"] = True
                resp["items"][1] = {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception",
                                                                          "reason": "queue full"}}}
            return resp

    snap = SnapshotFilesDouble(cluster.small_dump)
    assert restore_stream(ThrottlingClient(), snap, overwrite=True, workers=1, target="t")["articles"] == 300
    articles = [b for b in bodies if b.count(b"\n") in (600, 2)]
    assert articles[0] == articles[1] and articles[0].count(b"\n") == 600  # the whole batch again after HTTP 429
    second_doc = b"\n".join(articles[0].split(b"\n")[2:4]) + b"\n"
    assert articles[2] == second_doc  # then only the refused document


def pairs(path: str) -> set[tuple[bytes, bytes]]:
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return set(zip(lines[0::2], lines[1::2], strict=False))


def test_scroll_and_sliced_reads_agree(cluster, tmp_path, monkeypatch):
    """The scroll (Elasticsearch before 7.12) and sliced reads of small indices give the same documents, byte for
    byte, as the dump of the fixture."""
    monkeypatch.setattr(stream, "SLICE_MIN_DOCUMENTS", -1)
    infos = [i for i in list_indices(cluster.client) if i.name in ("articles", "events")]
    for method in (stream.SCROLL, None):
        if method:
            monkeypatch.setattr(StreamDump, "_choose_method", lambda self, index: stream.SCROLL)
        dump = StreamDump(cluster.client, infos, slices=5, page_size=37, target="t")
        out = str(tmp_path / f"{method}")
        write_dump(dump, out)
        assert {d.slices for d in dump.dumped.values()} == {5}
        for name in ("articles", "events"):
            path = index_file(name, DOCUMENTS_FILE).lstrip("/")
            assert pairs(os.path.join(out, path)) == pairs(os.path.join(cluster.full_dump, path))


def test_not_a_stream_snapshot(cluster, tmp_path):
    with pytest.raises(SnapshotNotFound, match="--mode interim"):
        restore_stream(cluster.client, SnapshotFilesDouble(str(tmp_path)), target="t")


def test_dump_failures(cluster, tmp_path, monkeypatch):
    c = cluster.client
    infos = {i.name: i for i in list_indices(c)}
    # An index gone since it was listed: the server's error, naming it.
    dump = StreamDump(c, [IndexInfo("no-such-index")], target="t")
    write_dump_no_finish(dump, str(tmp_path / "a"))
    with pytest.raises(SearchError, match=r"^dump of index no-such-index of t: .*HTTP 404"):
        dump.finish()
    # The backup stops reading the big index's documents: finish() raises, every thread ends, the PIT is closed.
    dump = StreamDump(c, [infos["big"]], slices=2, target="t")
    with dump:
        for item in dump.items():
            if item.path.endswith(DOCUMENTS_FILE):
                assert len(item.stream.read(100_000)) == 100_000
                item.stream.close()
            else:
                item.stream.read()
    with pytest.raises(ToolFailed, match="index big of t: the backup stopped reading"):
        dump.finish()
    assert not dump_threads()
    # A slice thread failing fails the dump.
    calls = []
    real_ndjson = stream._ndjson

    def failing(hits, index, fast=True):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real_ndjson(hits, index, fast)

    monkeypatch.setattr(stream, "_ndjson", failing)
    dump = StreamDump(c, [infos["events"]], page_size=50, target="t")
    write_dump_no_finish(dump, str(tmp_path / "b"))
    with pytest.raises(ToolFailed, match="dump of index events of t: RuntimeError: boom"):
        dump.finish()
    monkeypatch.setattr(stream, "_ndjson", real_ndjson)
    # A count that disagrees with the point in time's fails the dump, naming both.
    real_total = stream._total
    monkeypatch.setattr(stream, "_total", lambda resp, index: real_total(resp, index) + 1)
    dump = StreamDump(c, [infos["events"]], target="t")
    write_dump_no_finish(dump, str(tmp_path / "c"))
    with pytest.raises(ToolFailed, match="index events of t: 500 documents written, but the index had 501"):
        dump.finish()
    assert not dump_threads()
    deadline = time.monotonic() + 10
    while open_contexts(c) and time.monotonic() < deadline:  # freed asynchronously on some versions
        time.sleep(0.2)
    assert open_contexts(c) == 0


def write_dump_no_finish(dump: StreamDump, directory: str) -> None:
    with dump:
        for item in dump.items():
            dest = os.path.join(directory, item.path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                shutil.copyfileobj(item.stream, f)


# -- without a server ------------------------------------------------------------------------------


def test_restore_settings_split():
    from drivers.elasticsearch.settings import LOADING, restore_settings

    dumped = {"index": {
        "routing": {"allocation": {"include": {"_tier_preference": "data_content"},
                                   "initial_recovery": {"_id": "x"}}},
        "number_of_shards": "2", "number_of_replicas": "1", "refresh_interval": "5s",
        "blocks": {"write": "true", "read_only_allow_delete": "true"},
        "provided_name": "a", "creation_date": "1", "uuid": "u", "version": {"created": "8070199"},
        "resize": {"source": {"name": "b", "uuid": "c"}}, "history": {"uuid": "h"}, "verified_before_close": "true",
        "analysis": {"analyzer": {"folded": {"tokenizer": "standard", "filter": ["lowercase"]}}},
        "codec": "best_compression", "default_pipeline": "enrich"}}
    split = restore_settings(dumped)
    assert split.create == {
        "index.routing.allocation.include._tier_preference": "data_content", "index.number_of_shards": "2",
        "index.analysis.analyzer.folded.tokenizer": "standard", "index.analysis.analyzer.folded.filter": ["lowercase"],
        "index.codec": "best_compression", **LOADING}
    assert split.after_load == {"index.number_of_replicas": "1", "index.auto_expand_replicas": None,
                                "index.refresh_interval": "5s", "index.default_pipeline": "enrich",
                                "index.final_pipeline": None}
    assert split.blocks == {"index.blocks.write": "true"}


def test_batches_cut_between_documents():
    docs = [(f'{{"index":{{"_id":"{i}"}}}}\n' + json.dumps({"v": "x" * (i * 37 % 500)}) + "\n").encode()
            for i in range(300)]
    docs[100] = b'{"index":{"_id":"huge"}}\n' + json.dumps({"v": "y" * 5000}).encode() + b"\n"
    data = b"".join(docs)
    chunks = [data[i:i + 777] for i in range(0, len(data), 777)]
    batches = list(stream._batches(chunks, 2000, "t"))
    assert b"".join(b for b, _ in batches) == data
    assert sum(n for _, n in batches) == 300
    for batch, n in batches:
        assert batch.count(b"\n") == 2 * n and batch.startswith(b'{"index"')
        assert len(batch) <= 2000 or n == 1  # only a document larger than a batch makes a larger one
    assert any(b'"huge"' in b and n == 1 for b, n in batches)


def test_item_reason_quotes_no_values():
    reason = stream._item_reason({
        "type": "mapper_parsing_exception",
        "reason": "failed to parse field [views] of type [long] in document with id 'x'. Preview of field's value: "
                  "'secret'",
        "caused_by": {"type": "illegal_argument_exception", "reason": 'For input string: "secret"'}})
    assert reason == ("mapper_parsing_exception: failed to parse field [views] of type [long] in document with id "
                      "'x' (caused by illegal_argument_exception)")


def test_fast_json_keeps_every_number_as_the_standard_library():
    """orjson parses and writes a page only when it would keep every number; otherwise the standard library does
    (big integers, exponent floats), and the page is marked so that it is written back the same way."""
    import json as std

    from drivers.elasticsearch.connection import StandardParsed, fast_loads, needs_standard_json

    plain = {"hits": {"hits": [{"_id": "1", "_source": {"a": 3.0, "b": 9007199254740993, "c": "ü 😀", "d": 0.00012,
                                                        "e": -0.0, "f": [1, {"g": None}], "h": "x\u2028\x00"}}]}}
    raw = std.dumps(plain, ensure_ascii=False).encode()
    assert not needs_standard_json(raw)
    parsed = fast_loads(raw, std.loads)
    assert not isinstance(parsed, StandardParsed) and parsed == plain
    fast = stream._ndjson(parsed["hits"]["hits"], "i", fast=True)
    assert fast == stream._ndjson(plain["hits"]["hits"], "i", fast=False)
    for risky in (b'{"v": 123456789012345678901234567890}', b'{"v": -18446744073709551617}', b'{"v": "\\ud800"}'):
        assert isinstance(fast_loads(risky, std.loads), StandardParsed), risky
        assert isinstance(fast_loads(risky.decode(), std.loads), StandardParsed), risky  # opensearch-py's str
    big = fast_loads(b'{"v": 123456789012345678901234567891}', std.loads)
    assert big["v"] == 123456789012345678901234567891
    # An exponent float keeps its value; orjson spells it its own way.
    hits = fast_loads(b'{"hits": {"hits": [{"_id": "e", "_source": {"v": 1.5e+300, "w": 1e-07}}]}}', std.loads)
    line = stream._ndjson(hits["hits"]["hits"], "i", fast=True).split(b"\n")[1]
    assert line == b'{"v":1.5e300,"w":1e-7}' and std.loads(line) == {"v": 1.5e300, "w": 1e-07}
