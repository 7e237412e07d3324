"""Elasticsearch / OpenSearch test peers: started on free loopback ports, waited for, stopped by PID.

- Elasticsearch 7.17.29 and 8.7.1, OpenSearch 2.19.6: Maven Central's "integ-test-zip" distributions (no
  bundled JDK; only transport-netty4 and, for Elasticsearch, x-pack-core/x-pack-security). Elasticsearch with
  ``security=True``: user ``elastic`` with the keystore's ``bootstrap.password``; with ``tls=True``: HTTPS with
  a certificate for 127.0.0.1/localhost signed by a CA made for this run (``SearchServer.ca_pem``).
- elasticdump 6.125.1 (``elasticdump_bin()``).

All are installed by scripts/install-es-peers.sh into ``$STASH_RUNNER_CACHE`` (default
``~/.cache/stash-runner``), outside the clone.

Elasticsearch refuses to run as root, so when the tests are root the servers run as ``nobody``: the run dir
(config copy, data, logs) belongs to nobody, and the distribution is hard-linked into it, because the cache
usually sits under a 0700 $HOME that nobody cannot traverse.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .pgcluster import free_port

SERVERS: dict[str, tuple[str, str]] = {
    "es7": ("elasticsearch", "7.17.29"),
    "es8": ("elasticsearch", "8.7.1"),
    "os2": ("opensearch", "2.19.6"),
}
ELASTICDUMP_VERSION = "6.125.1"
DEFAULT_PASSWORD = "es-Secret-Pass-42"
INSTALL_HINT = "run `make deps` (scripts/install-es-peers.sh)"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
RUN_USER = "nobody"


def cache_dir() -> str:
    return os.environ.get("STASH_RUNNER_CACHE") or os.path.expanduser("~/.cache/stash-runner")


def distribution_dir(kind: str, version: str) -> str:
    return os.path.join(cache_dir(), f"{kind}-{version}")


def elasticdump_bin(name: str = "multielasticdump") -> str:
    """The cached ``elasticdump``/``multielasticdump`` (npm's .bin link), or a RuntimeError saying how to get it."""
    path = os.path.join(cache_dir(), f"elasticdump-{ELASTICDUMP_VERSION}", "node_modules", ".bin", name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} {ELASTICDUMP_VERSION} missing at {path}: {INSTALL_HINT}")
    return path


def java_home() -> str:
    """A JDK 17..21: the integ-test zips bundle none, and JDK 24+ dropped the SecurityManager these servers
    install (a newer ``java`` on PATH, e.g. a Temurin 25, would make them fail at start)."""
    candidates = [os.environ.get("ES_JAVA_HOME"), os.environ.get("JAVA_HOME"), "/usr/lib/jvm/java-17-openjdk-amd64"]
    java = shutil.which("java")
    if java:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(java))))
    candidates += sorted(glob.glob("/usr/lib/jvm/*"))
    for home in candidates:
        if not home or not os.access(os.path.join(home, "bin", "java"), os.X_OK):
            continue
        try:
            with open(os.path.join(home, "release")) as f:
                m = re.search(r'^JAVA_VERSION="(\d+)', f.read(), re.M)
        except OSError:
            continue
        if m and 17 <= int(m.group(1)) <= 21:
            return home
    raise RuntimeError("no JDK 17..21 found (apt-get install openjdk-17-jdk-headless)")


@dataclass
class SearchServer:
    kind: str  # "elasticsearch" | "opensearch"
    version: str  # "7.17.29"
    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    username: str | None
    password: str | None = field(repr=False)
    ca_pem: bytes | None  # the CA that signed the HTTPS certificate
    pid: int
    run_dir: str
    log_path: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def ca_file(self) -> str | None:
        """The CA as a PEM file in the run dir (for tools that want a path, e.g. elasticdump's ``--ca``)."""
        return os.path.join(self.run_dir, "ca.pem") if self.ca_pem else None

    def client(self, **kw: Any) -> Any:
        """``elasticsearch.Elasticsearch`` or ``opensearchpy.OpenSearch`` for this server, with its credentials
        and CA; keyword arguments override (e.g. ``basic_auth``/``http_auth``, ``ca_certs``)."""
        auth = (self.username, self.password) if self.username else None
        if self.kind == "elasticsearch":
            from elasticsearch import Elasticsearch

            opts: dict[str, Any] = {"request_timeout": 120}
            if auth:
                opts["basic_auth"] = auth
            if self.ca_pem:
                opts["ca_certs"] = self.ca_file
            return Elasticsearch(self.url, **{**opts, **kw})
        from opensearchpy import OpenSearch

        opts = {"timeout": 120}
        if auth:
            opts["http_auth"] = auth
        if self.url.startswith("https:"):
            opts.update(use_ssl=True, verify_certs=True, ca_certs=self.ca_file)
        return OpenSearch(hosts=[self.url], **{**opts, **kw})

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server's process group (Elasticsearch 8's launcher forks the server JVM), SIGKILL
        after 30 s, then the run dir goes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        if not _wait_group_gone(self.pid, self._proc, STOP_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            _wait_group_gone(self.pid, self._proc, 10)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies left to an init that may not reap don't count)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _wait_group_gone(pgid: int, proc: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.poll()  # reap our own child, else its zombie would keep the PID
        if not _group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _run_dir(kind_key: str, base_dir: str | None) -> str:
    """A fresh 0755 dir the server user can reach: under ``base_dir`` when every parent is traversable by
    others, else under /tmp (pytest's tmp_path is under a 0700 /tmp/pytest-of-root)."""
    parent = "/tmp"
    if base_dir:
        os.makedirs(base_dir, exist_ok=True)
        d, ok = os.path.abspath(base_dir), True
        while ok and d != "/":
            ok = bool(os.stat(d).st_mode & 0o001)
            d = os.path.dirname(d)
        if ok:
            parent = base_dir
    run_dir = tempfile.mkdtemp(prefix=f"stash-runner-{kind_key}-", dir=parent)
    os.chmod(run_dir, 0o755)
    return run_dir


def _link_tree(src: str, dst: str) -> None:
    """``cp -al``, or a plain copy across filesystems (e.g. a tmpfs /tmp): the servers only read their home."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def _make_tls(directory: str) -> tuple[bytes, str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca_pem, cert_path, key_path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stash-runner test search CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = {"ca.crt": ca_pem, "http.crt": cert.public_bytes(serialization.Encoding.PEM),
             "http.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())}
    for name, data in paths.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return ca_pem, os.path.join(directory, "http.crt"), os.path.join(directory, "http.key")


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _rewrite_jvm_options(conf: str, run_dir: str) -> None:
    """The shipped jvm.options writes the GC log, error files and heap dumps to paths relative to the working
    directory, and OpenSearch's pins a 1 GB heap: point them into the run dir, leave the heap to *_JAVA_OPTS."""
    path = os.path.join(conf, "jvm.options")
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^(\d+-?\d*:)?-Xm[sx]\S+\n", "", text, flags=re.M)
    text = text.replace("file=logs/", f"file={run_dir}/logs/").replace("ErrorFile=logs/", f"ErrorFile={run_dir}/logs/")
    text = text.replace("HeapDumpPath=data", f"HeapDumpPath={run_dir}/logs")
    with open(path, "w") as f:
        f.write(text)


def _probe(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> dict:
    req = urllib.request.Request(url + "/_cluster/health?wait_for_status=yellow&timeout=1s", headers=headers)
    with urllib.request.urlopen(req, timeout=5, context=context) as r:
        return json.load(r)


def start_search_server(kind_key: str, base_dir: str, *, security: bool = False, tls: bool = False,
                        password: str = DEFAULT_PASSWORD, heap_mb: int = 256,
                        settings: dict[str, str] | None = None) -> SearchServer:
    """One single-node server of ``SERVERS[kind_key]`` on free loopback ports, ready (health yellow or green).

    ``base_dir`` is a hint: the run dir goes there only if the server user can reach it (else under /tmp).
    ``security``/``tls`` (Elasticsearch only: the OpenSearch zip has no security plugin): user ``elastic``
    with ``password``, and HTTPS with a CA of this run's own.
    """
    kind, version = SERVERS[kind_key]
    home_src = distribution_dir(kind, version)
    if not os.access(os.path.join(home_src, "bin", kind), os.X_OK):
        raise RuntimeError(f"{kind} {version} missing under {home_src}: {INSTALL_HINT}")
    if (security or tls) and kind != "elasticsearch":
        raise ValueError(f"security/tls need Elasticsearch: the {kind} integ-test zip has no security plugin")
    jdk = java_home()
    run_dir = _run_dir(kind_key, base_dir)
    try:
        return _start(kind, version, home_src, run_dir, jdk, security=security, tls=tls, password=password,
                      heap_mb=heap_mb, extra=settings or {})
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _start(kind: str, version: str, home_src: str, run_dir: str, jdk: str, *, security: bool, tls: bool,
           password: str, heap_mb: int, extra: dict[str, str]) -> SearchServer:
    home, conf = os.path.join(run_dir, "home"), os.path.join(run_dir, "config")
    _link_tree(home_src, home)
    shutil.copytree(os.path.join(home_src, "config"), conf)
    for d in ("data", "logs", "tmp"):
        os.makedirs(os.path.join(run_dir, d))
    _rewrite_jvm_options(conf, run_dir)
    ca_pem = None
    if tls:
        ca_pem, cert, key = _make_tls(os.path.join(conf, "certs"))  # inside the config dir: the only place
        with open(os.path.join(run_dir, "ca.pem"), "wb") as f:  # the server may read them from
            f.write(ca_pem)

    prefix = "ES" if kind == "elasticsearch" else "OPENSEARCH"
    # A clean environment: no JAVA_HOME pointing at a newer JDK, no test variables leaking into the server.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": run_dir, "LANG": "C.UTF-8",
           f"{prefix}_JAVA_HOME": jdk, f"{prefix}_PATH_CONF": conf, f"{prefix}_TMPDIR": os.path.join(run_dir, "tmp"),
           f"{prefix}_JAVA_OPTS": f"-Xms{heap_mb}m -Xmx{heap_mb}m"}
    as_user: list[str] = []
    if os.geteuid() == 0:  # Elasticsearch refuses root
        pw = pwd.getpwnam(RUN_USER)
        for d in ("config", "data", "logs", "tmp"):
            _chown_tree(os.path.join(run_dir, d), pw.pw_uid, pw.pw_gid)
        # setpriv execs (runuser would stay as a parent): the PID we keep is the server's own launcher.
        as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]

    if security:
        # bootstrap.password gives the built-in `elastic` user its password without any setup API call.
        subprocess.run([*as_user, os.path.join(home, "bin", "elasticsearch-keystore"), "create"], env=env,
                       cwd=run_dir, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        subprocess.run([*as_user, os.path.join(home, "bin", "elasticsearch-keystore"), "add", "-x", "-f",
                        "bootstrap.password"], env=env, cwd=run_dir, check=True, capture_output=True,
                       input=password.encode())

    http_port, transport_port = free_port(), free_port()
    settings = {
        "cluster.name": os.path.basename(run_dir),
        "node.name": "node-1",
        "network.host": "127.0.0.1",
        "http.port": str(http_port),
        "transport.port": str(transport_port),
        "discovery.type": "single-node",
        "path.data": os.path.join(run_dir, "data"),
        "path.logs": os.path.join(run_dir, "logs"),
        # Small CI disks would otherwise turn indices read-only / leave shards unassigned.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        # Lets tests delete indices by wildcard.
        "action.destructive_requires_name": "false",
    }
    if kind == "elasticsearch":
        settings["xpack.security.enabled"] = "true" if security else "false"
        if security:
            settings["xpack.security.transport.ssl.enabled"] = "false"  # single node: nothing to talk to
        if tls:
            settings.update({"xpack.security.http.ssl.enabled": "true",
                             "xpack.security.http.ssl.certificate": "certs/http.crt",
                             "xpack.security.http.ssl.key": "certs/http.key",
                             "xpack.security.http.ssl.certificate_authorities": "certs/ca.crt"})
    settings.update(extra)  # a test's own node settings (a tiny write queue, ...)
    argv = [*as_user, os.path.join(home, "bin", kind), *(f"-E{k}={v}" for k, v in settings.items())]

    log_path = os.path.join(run_dir, "server.log")
    with open(log_path, "wb") as log:
        # Own session: stop() signals the whole group (bash launcher, CLI JVM, server JVM).
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=run_dir, env=env, start_new_session=True)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{http_port}"
    server = SearchServer(kind, version, url, "elastic" if security else None, password if security else None,
                          ca_pem, proc.pid, run_dir, log_path, proc)
    try:
        _wait_ready(server, proc)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: SearchServer, proc: subprocess.Popen) -> None:
    headers = {}
    if server.username:
        token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = ssl.create_default_context(cadata=server.ca_pem.decode()) if server.ca_pem else None
    deadline = time.monotonic() + READY_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.kind} {server.version} exited with {proc.returncode} before it was ready; "
                               f"last lines of {server.log_path}:\n{server.log_tail()}")
        try:
            health = _probe(server.url, headers, context)
            if health.get("status") in ("yellow", "green"):
                return
            last = health
        except urllib.error.HTTPError as e:  # 503 while the node starts, 408 while health waits
            last = f"HTTP {e.code}: {e.read()[:300]!r}"
        except (OSError, ValueError) as e:
            last = repr(e)
        time.sleep(0.25)
    raise RuntimeError(f"{server.kind} {server.version} not ready at {server.url} within {READY_TIMEOUT:.0f} s "
                       f"(last: {last}); last lines of {server.log_path}:\n{server.log_tail()}")
