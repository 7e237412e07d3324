"""Debian's Prometheus Pushgateway for the tests: started on a free loopback port, stopped by PID.

Installed by ``apt-get install prometheus-pushgateway`` (no service is auto-started).
"""

from __future__ import annotations

import json
import os
import urllib.request

from .pgcluster import free_port
from .servers import Server, _start

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"


def start_pushgateway(workdir: str) -> Server:
    if not os.access(PUSHGATEWAY, os.X_OK):
        raise RuntimeError(f"{PUSHGATEWAY} missing: apt-get install -y prometheus-pushgateway")
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    argv = [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={os.path.join(workdir, 'pgw.db')}"]
    return _start("pushgateway", argv, workdir, port, "/-/ready")


def groups(server: Server) -> list[dict]:
    """``GET /api/v1/metrics``: one entry per group, with its grouping labels and metric families."""
    with urllib.request.urlopen(server.url + "/api/v1/metrics", timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]


def exposition(server: Server) -> str:
    """``GET /metrics``: what Prometheus scrapes."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        return r.read().decode()
