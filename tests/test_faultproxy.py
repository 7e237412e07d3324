"""FaultProxy against a real moto S3 server, with boto3 as the client (no mocks)."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .faultproxy import FaultProxy, Faults

MiB = 1024 * 1024
# For raw requests: moto wants an Authorization header on GETs but does not check the signature.
FAKE_AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, "
                              "SignedHeaders=host, Signature=00"}


def s3_client(url: str, *, retries: dict[str, Any] | None = None, read_timeout: float = 2) -> Any:
    config = botocore.config.Config(s3={"addressing_style": "path"},
                                    retries=retries or {"total_max_attempts": 1},
                                    read_timeout=read_timeout, connect_timeout=2)
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1", config=config)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def proxy(moto_server) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.url) as p:
        yield p


@pytest.fixture
def bucket(proxy: FaultProxy) -> str:
    name = f"fp-{uuid.uuid4().hex[:12]}"
    s3_client(proxy.url).create_bucket(Bucket=name)
    return name


def test_no_faults_round_trip(proxy: FaultProxy, bucket: str) -> None:
    s3 = s3_client(proxy.url, read_timeout=30)
    before = proxy.counts["forwarded"]
    data = payload(20 * MiB, 1)
    s3.put_object(Bucket=bucket, Key="big", Body=data)  # boto3 sends Expect: 100-continue here
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == data
    got = s3.get_object(Bucket=bucket, Key="big", Range="bytes=10485000-10486999")
    assert got["ContentLength"] == 2000 and got["Body"].read() == data[10485000:10487000]
    assert s3.head_object(Bucket=bucket, Key="big")["ContentLength"] == len(data)
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("big", len(data))]
    counts = proxy.counts
    assert counts["forwarded"] >= before + 5
    assert counts["errors"] == counts["drops"] == counts["stalls"] == 0


def test_chunked_request_keep_alive_and_expect(proxy: FaultProxy, bucket: str) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    data = payload(300_000, 2)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    # A chunked request body is forwarded de-chunked (moto gets a Content-Length).
    conn.request("PUT", f"/{bucket}/chunked", body=iter([data[:100_000], data[100_000:]]),
                 headers={"Transfer-Encoding": "chunked", **FAKE_AUTH}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    sock = conn.sock
    conn.request("GET", f"/{bucket}/chunked", headers=FAKE_AUTH)  # the same client connection: keep-alive
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == data and conn.sock is sock
    conn.close()

    # Expect: 100-continue gets its 100 before the body is sent, then the real answer.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"PUT /{bucket}/expect HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 5\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert s3_client(proxy.url).get_object(Bucket=bucket, Key="expect")["Body"].read() == b"hello"


def test_error_rate(proxy: FaultProxy, bucket: str) -> None:
    proxy.faults = Faults(error_rate=1.0)
    forwarded = proxy.counts["forwarded"]
    with pytest.raises(ClientError) as e:
        s3_client(proxy.url).put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert proxy.counts["errors"] == 1 and proxy.counts["forwarded"] == forwarded


def test_drop_get_never_returns_short_data(proxy: FaultProxy, bucket: str) -> None:
    s3 = s3_client(proxy.url)
    data = payload(MiB, 3)
    proxy.faults = Faults(drop_rate=1.0, only_methods=("GET",), seed=1)
    s3.put_object(Bucket=bucket, Key="k", Body=data)  # a PUT: not faulted
    for _ in range(10):
        # An early drop fails get_object(); a late one fails read(), never silently short.
        with pytest.raises((ConnectionClosedError, ResponseStreamingError, IncompleteReadError)):
            s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    counts = proxy.counts
    assert counts["drops"] == 10 and counts["drops_before"] > 0 and counts["drops_after"] > 0
    proxy.faults = Faults()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data


def test_stall_times_out_and_stop_releases_stalled_clients(proxy: FaultProxy, bucket: str) -> None:
    proxy.faults = Faults(stall_rate=1.0, stall_seconds=10)
    start = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        s3_client(proxy.url, read_timeout=1).head_bucket(Bucket=bucket)
    assert time.monotonic() - start < 4
    assert proxy.counts["stalls"] == 1

    # A stalled client sees the connection close as soon as the proxy stops.
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET /{bucket} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())  # stalled: no auth needed
        threading.Timer(0.3, proxy.stop).start()
        start = time.monotonic()
        assert s.recv(4096) == b""
        assert time.monotonic() - start < 3


def test_mixed_faults_with_sdk_retries(proxy: FaultProxy, bucket: str) -> None:
    s3 = s3_client(proxy.url, retries={"mode": "standard", "max_attempts": 10})
    proxy.faults = Faults(error_rate=0.1, drop_rate=0.1, stall_rate=0.1, stall_seconds=0.5, seed=7)
    blobs = {f"obj-{i}": payload(MiB, 100 + i) for i in range(20)}

    def round_trip(key: str) -> bytes:
        s3.put_object(Bucket=bucket, Key=key, Body=blobs[key])
        # A drop half-way through a GET body surfaces in read(), after botocore's retries: retry here.
        for _ in range(10):
            try:
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except BotoCoreError:
                continue
        raise AssertionError(f"{key}: no clean GET in 10 tries")

    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(blobs, pool.map(round_trip, blobs), strict=True))
    assert all(got[k] == blobs[k] for k in blobs)
    counts = proxy.counts
    # ~57 requests at 30%: expect ~17 faults (each kind on its own is tested above).
    assert counts["errors"] + counts["drops"] + counts["stalls"] > 5, counts


class _PlainUpstream(BaseHTTPRequestHandler):
    """A real upstream for what moto can't show: GET answers in chunks (moto sends Content-Length),
    PUT echoes the request headers it received as JSON."""

    protocol_version = "HTTP/1.1"
    body = payload(200_000, 4)

    def do_GET(self) -> None:
        if self.path == "/hangup":
            # Answers, then closes the kept-alive connection without saying so (as idle timeouts do).
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(self.body), 70_000):
            part = self.body[i:i + 70_000]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def do_PUT(self) -> None:
        received = len(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"headers": self.headers.items(), "received": received}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Keep-Alive", "timeout=5")  # hop-by-hop: must not reach the client
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def plain_proxy() -> Iterator[FaultProxy]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _PlainUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as p:
            yield p
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_forwarded_headers(plain_proxy: FaultProxy) -> None:
    host, port = plain_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("PUT", "/b/k?x=1", body=iter([b"a" * 10, b"b" * 20]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Expect": "100-continue", "Connection": "keep-alive, X-Hop",
                          "X-Hop": "1", "X-Amz-Meta-Foo": "bar", "TE": "trailers"})
    resp = conn.getresponse()
    echoed = json.loads(resp.read())
    got = {k.lower(): v for k, v in echoed["headers"]}
    assert got["host"] == f"{host}:{port}"  # as the client signed it
    assert got["x-amz-meta-foo"] == "bar" and got["content-length"] == "30" and echoed["received"] == 30
    assert not {"transfer-encoding", "expect", "connection", "x-hop", "te"} & got.keys()
    assert resp.getheader("Keep-Alive") is None
    conn.close()


def test_chunked_upstream_response(plain_proxy: FaultProxy) -> None:
    host, port = plain_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(2):  # keep-alive after a chunked response
        conn.request("GET", "/x")
        resp = conn.getresponse()
        assert resp.chunked and resp.read() == _PlainUpstream.body
    plain_proxy.faults = Faults(drop_rate=1.0, seed=3)  # seed 3: the first drop is a late one
    conn.request("GET", "/x")
    with pytest.raises(http.client.IncompleteRead):
        conn.getresponse().read()
    assert plain_proxy.counts["drops_after"] == 1
    conn.close()


def test_upstream_closing_kept_alive_connection(plain_proxy: FaultProxy) -> None:
    host, port = plain_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(3):  # the proxy notices the dead upstream connection and retries on a fresh one
        conn.request("GET", "/hangup")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok")
        time.sleep(0.05)  # let the upstream's close arrive first
    conn.close()
