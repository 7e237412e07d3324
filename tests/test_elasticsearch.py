"""Elasticsearch end to end: the CLI (backup/restore in stream mode, Stash's backup-es/restore-es in interim mode)
against real Elasticsearch 7.17 and 8.7 and OpenSearch 2.19 servers started here, with restic judging every
repository, a snapshot made the way Stash makes it (multielasticdump, then ``restic backup <interim dir>``)
restored by our restore-es, and ours restored the way Stash restores it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .esdata import delete, documents, http, indices, seed, state
from .esservers import SearchServer, elasticdump_bin, start_search_server
from .helpers import b64, database_objects, restic, runner

NS = ("-n", "demo")
ES_PASSWORD = "es pa%ss=wo#rd \"q\" 7"
SEEDED = ("products", "logs-2026.11")


def es_objects(path: str, server: SearchServer, *, repo_dir: str, password: str | None = None,
               kubedb_keys: bool = False, url: str | None = None) -> str:
    """AppBinding (kubedb.com/elasticsearch) with the CA as caBundle, its Secret, and a local Repository."""
    client_config: dict = {"url": url or server.url}
    if server.ca_pem:
        client_config["caBundle"] = b64(server.ca_pem.decode())
    auth = None
    if server.username:
        user_key, pass_key = ("ADMIN_USERNAME", "ADMIN_PASSWORD") if kubedb_keys else ("username", "password")
        auth = {user_key: server.username, pass_key: password if password is not None else server.password}
    return database_objects(path, app_type="kubedb.com/elasticsearch", client_config=client_config, name="es",
                            auth=auth, repo_dir=repo_dir)


def cli(command: str, objects: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return runner(command, "--objects", objects, *NS, "--appbinding", "es", "--repository", "repo", *extra,
                  check=check)


def stash_args(command: str, objects: str, repo_dir: str, interim: str, output_dir: str) -> list[str]:
    """A Stash Function's args for backup-es/restore-es (catalog elasticsearch-backup-8.2.0), env resolved."""
    args = [command, "--provider=local", f"--bucket={repo_dir}", "--endpoint=", "--region=", "--path=",
            "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo", "--scratch-dir=/tmp",
            "--enable-cache=true", "--max-connections=0", "--hostname=", f"--interim-data-dir={interim}",
            "--namespace=demo", "--appbinding=es", "--appbinding-namespace=demo", "--es-args=",
            f"--output-dir={output_dir}", "--license-apiservice=", "--objects", objects]
    if command == "backup-es":
        args += ["--backupsession=", "--wait-timeout=300", "--retention-keep-last=5", "--retention-prune=false",
                 "--enable-dashboard-backup=false"]
    else:
        args += ["--source-hostname=", "--snapshot=", "--enable-dashboard-restore=false"]
    return args


def _numbers_as_floats(value):
    """elasticdump parses _source with JavaScript: 3.0 comes back 3, integers above 2^53 lose precision. Its
    round trips are compared with every number as a float, as JavaScript holds them."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return {k: _numbers_as_floats(v) for k, v in value.items()}


def _before(server: SearchServer) -> dict:
    return {name: (state(server, name), documents(server, name)) for name in SEEDED}


def _assert_same(server: SearchServer, before: dict, *, exact: bool = True) -> None:
    for name, (st, docs) in before.items():
        after_state, after_docs = state(server, name), documents(server, name)
        assert after_state == st, name
        if exact:
            assert after_docs == docs, name
        else:
            assert {k: (r, _numbers_as_floats(s)) for k, (r, s) in after_docs.items()} == \
                   {k: (r, _numbers_as_floats(s)) for k, (r, s) in docs.items()}, name


@pytest.fixture(scope="module")
def es8(tmp_path_factory):
    server = start_search_server("es8", str(tmp_path_factory.mktemp("es8")), security=True, tls=True,
                                 password=ES_PASSWORD)
    try:
        seed(server, big=200_000)
        yield server
    finally:
        server.stop()


def _restic_files(repo_dir: str) -> list[str]:
    out = restic(repo_dir, "ls", "--json", "latest").stdout.decode().splitlines()
    return [json.loads(line)["path"] for line in out[1:] if json.loads(line).get("type") == "file"]


def test_stream_backup_and_restore_over_https_with_the_ca_and_kubedb_keys(es8, tmp_path):
    """Security on, HTTPS verified against the AppBinding's caBundle, KubeDB's ADMIN_USERNAME/ADMIN_PASSWORD keys:
    200k documents and every index's mappings, settings and aliases come back byte-exact; the hidden index stays
    out; restic reads and checks what we wrote."""
    repo = str(tmp_path / "repo")
    objects = es_objects(str(tmp_path / "o.yaml"), es8, repo_dir=repo, kubedb_keys=True)
    before = _before(es8)
    r = cli("backup", objects)
    assert ES_PASSWORD.encode() not in r.stderr
    files = _restic_files(repo)
    assert "/elasticsearch/manifest.json" in files
    assert "/elasticsearch/indices/products/documents.ndjson" in files
    assert not any(".internal-state" in f for f in files)
    restic(repo, "check", "--read-data")
    snap = json.loads(restic(repo, "snapshots", "--json").stdout)[-1]
    assert snap["paths"] == ["/elasticsearch"] and snap["hostname"] == "host-0"

    # into a cluster that has the indices: refused before anything is written
    r = cli("restore", objects, check=False)
    assert r.returncode == 2, r.stderr
    assert b"already exist" in r.stderr and b"--overwrite" in r.stderr and b"Traceback" not in r.stderr
    delete(es8, *SEEDED)
    cli("restore", objects)
    _assert_same(es8, before)
    # --overwrite replaces them
    http(es8, "POST", "/products/_doc/extra?refresh=true", {"name": "x", "price": 1.0, "qty": 1, "tags": []})
    cli("restore", objects, "--overwrite")
    _assert_same(es8, before)


def test_stash_addon_interim_flow_both_ways(es8, tmp_path):
    """backup-es/restore-es with a Stash Function's args: our snapshot is a directory snapshot at the interim
    path under host-0, restored by Stash's own steps (restic restore --target / + multielasticdump load), and a
    snapshot Stash made (multielasticdump + restic backup <dir>) restored by our restore-es."""
    repo = str(tmp_path / "repo")
    interim = str(tmp_path / "stash-tmp" / "stash-interim-volume" / "data")
    os.makedirs(interim)
    objects = es_objects(str(tmp_path / "o.yaml"), es8, repo_dir=repo)
    before = _before(es8)
    out = tmp_path / "out"
    r = runner(*stash_args("backup-es", objects, repo, interim, str(out)), check=True)
    assert ES_PASSWORD.encode() not in r.stderr
    assert os.listdir(interim) == [], "the interim dir is emptied after the backup"
    output = json.loads((out / "output.json").read_text())
    assert output["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    snap = json.loads(restic(repo, "snapshots", "--json").stdout)[-1]
    assert snap["paths"] == [interim] and snap["hostname"] == "host-0"
    files = _restic_files(repo)
    assert f"{interim}/products.mapping.json" in files and f"{interim}/logs-2026.11.json" in files
    assert f"{interim}/logs-2026.11.alias.json" in files
    restic(repo, "check", "--read-data")

    # Stash's restore-es steps on our snapshot: restic restore to /, then multielasticdump --direction=load
    delete(es8, *SEEDED)
    restic(repo, "restore", "latest", "--path", interim, "--host", "host-0", "--target", "/")
    auth = tmp_path / "auth.txt"
    # Stash writes the password %q-quoted, which elasticdump's ini parsing breaks for this one (quotes, #, %, =);
    # every byte percent-encoded twice survives it (see drivers/elasticsearch/interim.py).
    encoded = "".join(f"%{b:02X}" for b in ES_PASSWORD.encode()).replace("%", "%25")
    auth.write_text(f"user={es8.username}\npassword={encoded}\n")
    subprocess.run([elasticdump_bin(), "--direction=load", f"--input={interim}", f"--output={es8.url}",
                    f"--httpAuthFile={auth}", f"--output-ca={es8.ca_file}", "--tlsAuth=true",
                    "--includeType=data,mapping,analyzer,alias,settings"], check=True, capture_output=True)
    _assert_same(es8, before, exact=False)

    # a snapshot made Stash's way, restored by our restore-es
    stash_repo = str(tmp_path / "stash-repo")
    for entry in os.listdir(interim):
        os.remove(os.path.join(interim, entry))
    subprocess.run([elasticdump_bin(), "--direction=dump", f"--input={es8.url}", f"--output={interim}",
                    f"--httpAuthFile={auth}", f"--input-ca={es8.ca_file}", "--tlsAuth=true",
                    "--match=^(products|logs-2026.11)$", "--includeType=data,mapping,analyzer,alias,settings"],
                   check=True, capture_output=True)
    with open(os.path.join(interim, "meta.txt"), "w") as f:
        f.write("1Gi")
    restic(stash_repo, "init")
    restic(stash_repo, "backup", interim, "--host", "host-0")
    for entry in os.listdir(interim):
        os.remove(os.path.join(interim, entry))
    delete(es8, *SEEDED)
    objects2 = es_objects(str(tmp_path / "o2.yaml"), es8, repo_dir=stash_repo)
    runner(*stash_args("restore-es", objects2, stash_repo, interim, str(tmp_path / "out2")), check=True)
    assert os.listdir(interim) == []
    _assert_same(es8, before, exact=False)


def test_failures_are_one_line_and_leave_nothing(es8, tmp_path):
    repo = str(tmp_path / "repo")
    # wrong password: exit 2, the password nowhere, no repository written
    objects = es_objects(str(tmp_path / "bad.yaml"), es8, repo_dir=repo, password="wrong-%-pw")
    r = cli("backup", objects, "--wait-timeout", "5", check=False)
    assert r.returncode == 2, r.stderr
    assert b"authentication failed" in r.stderr and b"wrong-%-pw" not in r.stderr and b"Traceback" not in r.stderr
    assert b"Secret demo/es-auth" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(repo, "snapshots"))
    # unreachable: exit 5 after the wait, naming what it waited for
    objects = es_objects(str(tmp_path / "down.yaml"), es8, repo_dir=repo, url="https://127.0.0.1:9")
    r = cli("backup", objects, "--wait-timeout", "3", check=False)
    assert r.returncode == 5, r.stderr
    assert b"waiting for Elasticsearch at https://127.0.0.1:9" in r.stderr and b"Traceback" not in r.stderr
    assert b"Connection refused" in r.stderr.splitlines()[-1]
    # a failing load (a document the strict mapping refuses) in interim mode: exit 6, interim dir emptied
    interim = tmp_path / "interim"
    interim.mkdir()
    objects = es_objects(str(tmp_path / "o.yaml"), es8, repo_dir=repo)
    cli("backup", objects, "--mode", "interim", "--interim-data-dir", str(interim), "--indices", "products")
    dump_dir = tmp_path / "edit"
    dump_dir.mkdir()
    restic(repo, "restore", "latest", "--target", str(dump_dir))
    data = dump_dir / str(interim).lstrip("/") / "products.json"
    with open(data, "a") as f:
        f.write(json.dumps({"_index": "products", "_id": "bad", "_source": {"unknown_field": 1}}) + "\n")
    restic(repo, "backup", str(dump_dir / str(interim).lstrip("/")), "--host", "host-0")
    delete(es8, "products")
    edited = json.loads(restic(repo, "snapshots", "--json").stdout)[-1]["short_id"]
    r = cli("restore", objects, "--mode", "interim", "--interim-data-dir", str(interim), "--snapshot", edited,
            check=False)
    assert r.returncode == 6, r.stderr
    assert b"Traceback" not in r.stderr and len(r.stderr.strip().splitlines()[-1]) < 600
    assert os.listdir(interim) == []
    restic(repo, "check", "--read-data")
    # put it back for the other tests
    cli("restore", objects, "--mode", "interim", "--interim-data-dir", str(interim), "--snapshot",
        json.loads(restic(repo, "snapshots", "--json").stdout)[0]["short_id"], "--overwrite")
    assert "products" in indices(es8)


@pytest.mark.parametrize("kind_key", ["es7", "os2"])
def test_stream_and_interim_round_trips_on_7_17_and_opensearch(kind_key, tmp_path):
    server = start_search_server(kind_key, str(tmp_path))
    try:
        seed(server, big=100_000)
        before = _before(server)
        repo = str(tmp_path / "repo")
        objects = es_objects(str(tmp_path / "o.yaml"), server, repo_dir=repo)
        cli("backup", objects)
        interim = tmp_path / "interim"
        interim.mkdir()
        cli("backup", objects, "--mode", "interim", "--interim-data-dir", str(interim), "--hostname", "interim")
        restic(repo, "check", "--read-data")
        delete(server, *SEEDED)
        cli("restore", objects)
        _assert_same(server, before)
        cli("restore", objects, "--mode", "interim", "--interim-data-dir", str(interim),
            "--source-hostname", "interim", "--overwrite")
        _assert_same(server, before, exact=False)
        assert os.listdir(interim) == []
    finally:
        server.stop()


@pytest.mark.parametrize("root, message", [
    ({"version": {"number": "6.8.0"}, "tagline": "You Know, for Search"},
     b"Elasticsearch 6.8.0 at http://127.0.0.1:PORT is not supported (supported: Elasticsearch 7.x to 8.x)"),
    ({"version": {"number": "3.1.0", "distribution": "opensearch"}},
     b"OpenSearch 3.1.0 at http://127.0.0.1:PORT is not supported (supported: OpenSearch 1.x to 2.x)"),
])
def test_an_unsupported_server_version_is_one_line(root, message, tmp_path):
    """A protocol test double that answers only ``GET /`` as an old Elasticsearch or a newer OpenSearch does:
    the version is read from the server and refused in one line (exit 2), before the repository is created."""
    import http.server
    import threading

    class Root(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            body = json.dumps(root).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Root)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        repo = str(tmp_path / "repo")
        objects = database_objects(str(tmp_path / "o.yaml"), app_type="kubedb.com/elasticsearch",
                                   client_config={"url": url}, name="es", repo_dir=repo)
        r = cli("backup", objects, "--wait-timeout", "5", check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            b"stash-runner: error: AppBinding demo/es: " + message.replace(b"PORT", str(httpd.server_port).encode())]
        assert not os.path.exists(repo)
    finally:
        httpd.shutdown()


def test_a_throttling_cluster_is_waited_for_not_failed(tmp_path):
    """Elasticsearch with one write thread and a write queue of one: parallel bulk requests get real 429s
    (es_rejected_execution_exception); the restore sends the refused documents again, says so, and completes.
    The big index makes several ~8 MiB bulk requests, so that they overlap on the one write thread."""
    server = start_search_server("es7", str(tmp_path), settings={"thread_pool.write.size": "1",
                                                                 "thread_pool.write.queue_size": "1"})
    try:
        seed(server, big=400_000)
        # Every index's state (mappings, settings, aliases, count) and the small index's documents: the
        # documents' bytes are compared in the other round trips.
        before = {name: state(server, name) for name in SEEDED}
        products = documents(server, "products")
        repo = str(tmp_path / "repo")
        objects = es_objects(str(tmp_path / "o.yaml"), server, repo_dir=repo)
        cli("backup", objects)
        restic(repo, "check", "--read-data")
        delete(server, *SEEDED)
        r = cli("restore", objects, "--max-concurrency", "8")
        assert b"too many requests (HTTP 429): waiting" in r.stderr
        assert {name: state(server, name) for name in SEEDED} == before
        assert documents(server, "products") == products
    finally:
        server.stop()
