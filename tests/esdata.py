"""Test data for Elasticsearch/OpenSearch, written and read back over plain HTTP (urllib), independently of the
runner's clients: several indices with multi-fields, ``dynamic: strict``, custom settings and analyzers, routing,
filtered and write aliases, and a hidden index the default backup leaves out."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from .esservers import SearchServer

# A page of documents; the search_after key makes the read complete whatever the shard count.
_PAGE = 5000


def http(server: SearchServer, method: str, path: str, body: Any = None, *, ndjson: bool = False) -> Any:
    data = None
    headers = {"Accept": "application/json"}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/x-ndjson" if ndjson else "application/json"
    if server.username:
        token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    ctx = None
    if server.url.startswith("https"):
        ctx = ssl.create_default_context(cadata=server.ca_pem.decode() if server.ca_pem else None)
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=120) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
    return json.loads(raw) if raw else None


def bulk(server: SearchServer, index: str, docs: list[tuple[str, dict, str | None]]) -> None:
    """(id, source, routing) documents, in requests of a few MB."""
    lines: list[bytes] = []
    for i, (doc_id, src, routing) in enumerate(docs, 1):
        action: dict = {"_id": doc_id}
        if routing:
            action["routing"] = routing
        lines.append(json.dumps({"index": action}).encode())
        lines.append(json.dumps(src, ensure_ascii=False).encode())
        if i % 20000 == 0 or i == len(docs):
            r = http(server, "POST", f"/{index}/_bulk", b"\n".join(lines) + b"\n", ndjson=True)
            assert not r["errors"], [it for it in r["items"] if "error" in next(iter(it.values()))][:3]
            lines = []


def seed(server: SearchServer, big: int = 50_000) -> dict[str, int]:
    """The indices the round trips compare; returns their document counts."""
    http(server, "PUT", "/products", {
        "settings": {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "5s",
                     "analysis": {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard",
                                                          "filter": ["lowercase"]}}}},
        "mappings": {"dynamic": "strict", "properties": {
            "name": {"type": "text", "analyzer": "folded", "fields": {"raw": {"type": "keyword"}}},
            "price": {"type": "double"}, "qty": {"type": "long"}, "tags": {"type": "keyword"},
            "meta": {"properties": {"origin": {"type": "keyword"}, "made": {"type": "date"}}}}},
    })
    products = [(f"p{i}", {"name": f"Ünïcode prodüct {i} ✓", "price": 3.0 if i % 7 == 0 else i / 8, "qty": 2**53 + i,
                           "tags": ["a", f"t{i % 5}"], "meta": {"origin": "ꙮ", "made": "2026-11-26T10:00:00Z"}},
                 f"r{i % 3}" if i % 2 else None) for i in range(1500)]
    bulk(server, "products", products)
    http(server, "PUT", "/logs-2026.11", {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"level": {"type": "keyword"}, "msg": {"type": "text"}, "n": {"type": "long"}}},
        "aliases": {"logs": {"is_write_index": True},
                    "errors": {"filter": {"term": {"level": "error"}}, "routing": "1"}},
    })
    bulk(server, "logs-2026.11", [(str(i), {"level": "error" if i % 10 == 0 else "info", "msg": f"line {i}",
                                            "n": i}, None) for i in range(big)])
    http(server, "PUT", "/.internal-state", {"settings": {"number_of_replicas": 0}})
    bulk(server, ".internal-state", [("x", {"secret": "cluster-own"}, None)])
    http(server, "POST", "/_refresh")
    return {"products": len(products), "logs-2026.11": big}


def documents(server: SearchServer, index: str) -> dict[str, Any]:
    """_id -> (_routing, _source) of every document, read with search_after on _id-free sort (_doc + shard)."""
    out: dict[str, Any] = {}
    body: dict = {"size": _PAGE, "sort": ["_doc"], "query": {"match_all": {}}}
    r = http(server, "POST", f"/{index}/_search?scroll=1m", body)
    while True:
        hits = r["hits"]["hits"]
        for h in hits:
            out[h["_id"]] = (h.get("_routing"), h["_source"])
        if not hits:
            break
        r = http(server, "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": r["_scroll_id"]})
    return out


def state(server: SearchServer, index: str) -> dict[str, Any]:
    """What a restore must bring back of an index, without what the cluster sets by itself."""
    settings = http(server, "GET", f"/{index}/_settings")[index]["settings"]["index"]
    kept = {k: settings.get(k) for k in ("number_of_shards", "analysis", "refresh_interval", "number_of_replicas")}
    return {
        "mappings": http(server, "GET", f"/{index}/_mapping")[index]["mappings"],
        "settings": kept,
        "aliases": http(server, "GET", f"/{index}/_alias")[index]["aliases"],
        "count": http(server, "GET", f"/{index}/_count")["count"],
    }


def indices(server: SearchServer) -> set[str]:
    return {row["index"] for row in http(server, "GET", "/_cat/indices?format=json&expand_wildcards=all")}


def delete(server: SearchServer, *names: str) -> None:
    for name in names:
        http(server, "DELETE", f"/{name}")
