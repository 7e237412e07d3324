"""The Elasticsearch/OpenSearch test peers start, answer their Python clients, and stop completely."""

from __future__ import annotations

import os
import subprocess

import elasticsearch
import pytest

from .esservers import ELASTICDUMP_VERSION, SERVERS, elasticdump_bin, start_search_server


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie left to init is gone too
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("key", sorted(SERVERS))
def test_server_indexes_and_stops(key, tmp_path):
    server = start_search_server(key, str(tmp_path))
    try:
        assert (server.kind, server.version) == SERVERS[key]
        assert server.url.startswith("http://127.0.0.1:") and server.username is None and server.ca_pem is None
        c = server.client()
        assert c.info()["version"]["number"] == server.version
        c.indices.create(index="things", body={"settings": {"number_of_replicas": 0}})
        c.index(index="things", id="a", body={"n": 1, "name": "first"})
        c.indices.refresh(index="things")
        assert c.count(index="things")["count"] == 1
        c.close()
    finally:
        server.stop()
    assert _pid_gone(server.pid)
    assert not os.path.exists(server.run_dir)


@pytest.mark.parametrize("key", ["es8", "es7"])
def test_elasticsearch_security_and_tls(key, tmp_path):
    server = start_search_server(key, str(tmp_path), security=True, tls=True, password="pw-Test-123")
    try:
        assert server.url.startswith("https://127.0.0.1:")
        assert server.username == "elastic" and server.password == "pw-Test-123"
        assert server.ca_pem and server.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        with server.client() as c:
            assert c.cluster.health()["status"] in ("green", "yellow")
            c.index(index="secured", id="1", document={"ok": True}, refresh=True)
            assert c.count(index="secured")["count"] == 1
        with server.client(basic_auth=("elastic", "wrong-password"), max_retries=0) as c, \
                pytest.raises(elasticsearch.AuthenticationException) as e:
            c.info()
        assert e.value.meta.status == 401
        with server.client(basic_auth=None) as c, pytest.raises(elasticsearch.AuthenticationException):
            c.info()
        # No CA: the system trust store does not know ours, verification fails.
        with server.client(ca_certs=None, max_retries=0) as c, pytest.raises(elasticsearch.ConnectionError) as e:
            c.info()
        assert "CERTIFICATE_VERIFY_FAILED" in repr(e.value)  # str() is only "TLS error"
    finally:
        server.stop()
    assert _pid_gone(server.pid)


def test_opensearch_refuses_security():
    with pytest.raises(ValueError, match="security plugin"):
        start_search_server("os2", "/tmp", security=True)


def test_elasticdump_from_cache(monkeypatch, tmp_path):
    out = subprocess.run([elasticdump_bin("elasticdump"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ELASTICDUMP_VERSION
    assert os.path.isfile(elasticdump_bin()) and elasticdump_bin().endswith("multielasticdump")
    monkeypatch.setenv("STASH_RUNNER_CACHE", str(tmp_path))  # an empty cache names the install script
    with pytest.raises(RuntimeError, match="install-es-peers.sh"):
        elasticdump_bin()
