"""Connections cannot exhaust the broker's memory or descriptors (issue 14, item 2).

Against broker processes: 1,000 connections that never authenticate, each announcing a
100 MiB frame, leave the broker's resident memory within a stated bound and another
client keeps producing and consuming; the same flood on a listener without
authentication (frames allowed up to socket.request.max.bytes) is bounded too, because
frames are allocated as their bytes arrive; idle connections are closed after
connections_max_idle_ms and unauthenticated ones after the SASL timeout, even while they
keep sending; connections over max_connections / max_connections_per_ip are closed at once.
No timing is asserted: every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Consumer, Producer
from kafka_helpers import closed_by_peer

from shazamq.protocol import framing
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest

MIB = 1024 * 1024
FLOOD = 1000
ANNOUNCED = 100 * MIB
# What 1,000 connections may add to the broker's peak resident memory, at most. Before
# the fix each one committed its first 1 MiB piece (about 1.1 GiB for the flood).
SASL_RSS_BOUND = 64 * MIB
# Without authentication each connection is served with a 64 KiB receive buffer and
# receives the frame as its bytes arrive (16 KiB here): about 80 MiB for 1,000.
OPEN_RSS_BOUND = 160 * MIB
PASSWORD = "flood-secret"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def _api_versions_frame(corr: int = 1) -> bytes:
    return framing.encode_request(ApiVersionsRequest(), 0, corr, "probe")


def _is_closed(s: socket.socket, timeout: float) -> bool:
    """True when the broker closed the socket; a timeout fails (it is not a close)."""
    return closed_by_peer(s, timeout)


def _answered(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        s.sendall(_api_versions_frame())
        head = s.recv(4)
    except OSError:
        return False
    return len(head) == 4


@contextlib.contextmanager
def _flood(port: int, n: int, payload: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            with contextlib.suppress(OSError):
                s.sendall(struct.pack(">i", ANNOUNCED) + b"\x00" * payload)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _round_trip(config: dict[str, str], topic: str, n: int = 20) -> None:
    p = Producer(config)
    for i in range(n):
        p.produce(topic, value=b"v%d" % i, partition=0)
    assert p.flush(30) == 0
    c = Consumer(
        {**config, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"}
        | {"enable.auto.commit": False}
    )
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 30
    while got < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    c.close()
    assert got == n


def _sasl_config(bootstrap: str) -> dict[str, str]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "flood",
        "sasl.password": PASSWORD,
    }


def test_unauthenticated_flood_of_100_mib_frames_is_bounded(broker_factory, topic_name):
    b = broker_factory(
        security__sasl__enabled=True,
        security__sasl__users=f'{{"flood": "{PASSWORD}"}}',
    )
    assert b.proc is not None
    pid = b.proc.pid
    config = _sasl_config(b.bootstrap)
    _round_trip(config, topic_name)  # warm: the topic and client paths exist
    before = _status_kib(pid, "VmRSS")
    with _flood(b.port, FLOOD, 4096) as socks:
        _round_trip(config, topic_name)  # another client is unaffected meanwhile
        peak = _status_kib(pid, "VmHWM")
        # Each was refused on its announced size (over sasl.server.max.receive.size).
        assert all(_is_closed(s, 15) for s in socks[:50])
    grown = (peak - before) * 1024
    print(f"broker RSS before {before} KiB, peak {peak} KiB: +{grown / MIB:.1f} MiB")
    assert grown < SASL_RSS_BOUND, f"RSS grew by {grown / MIB:.0f} MiB"
    assert "before authentication is over sasl.server.max.receive.size" in b.log_text()


def test_flood_without_authentication_allocates_as_bytes_arrive(broker_factory, topic_name):
    b = broker_factory()
    assert b.proc is not None
    pid = b.proc.pid
    config = {"bootstrap.servers": b.bootstrap}
    _round_trip(config, topic_name)
    before = _status_kib(pid, "VmRSS")
    with _flood(b.port, FLOOD, 1024) as socks:
        _round_trip(config, topic_name)  # small requests of another client still go
        peak = _status_kib(pid, "VmHWM")
        assert not any(s.fileno() < 0 for s in socks)
    grown = (peak - before) * 1024
    print(f"broker RSS before {before} KiB, peak {peak} KiB: +{grown / MIB:.1f} MiB")
    assert grown < OPEN_RSS_BOUND, f"RSS grew by {grown / MIB:.0f} MiB"


def test_idle_connections_are_closed(broker_factory):
    b = broker_factory(broker__connections_max_idle_ms=1000)
    idle = socket.create_connection(("127.0.0.1", b.port), timeout=10)
    assert _answered(idle)
    assert _is_closed(idle, 30)
    idle.close()


def test_unauthenticated_connections_are_closed_after_the_sasl_timeout(broker_factory):
    b = broker_factory(
        security__sasl__enabled=True,
        security__sasl__users=f'{{"flood": "{PASSWORD}"}}',
        security__sasl__authentication_timeout_ms=1500,
    )
    s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
    # Busy but never authenticating: ApiVersions again and again until the broker closes.
    deadline = time.monotonic() + 30
    closed = False
    while time.monotonic() < deadline:
        if not _answered(s):
            closed = True
            break
        time.sleep(0.2)
    s.close()
    assert closed
    assert "not authenticated within 1500 ms" in b.log_text()
    # an authenticated client is not affected by the timeout
    p = Producer(_sasl_config(b.bootstrap))
    p.produce("after-timeout", value=b"x")
    assert p.flush(30) == 0


def test_connection_caps_close_new_connections(broker_factory):
    b = broker_factory(broker__max_connections=6, broker__max_connections_per_ip=4)

    def connect(source: str) -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", b.port))
        return s

    first = [connect("127.0.0.1") for _ in range(4)]
    assert all(_answered(s) for s in first)
    over_ip = connect("127.0.0.1")
    assert _is_closed(over_ip, 15)
    others = [connect("127.0.0.2") for _ in range(2)]
    assert all(_answered(s) for s in others)
    over_total = connect("127.0.0.3")
    assert _is_closed(over_total, 15)
    # a closed connection frees its place
    first.pop().close()
    deadline = time.monotonic() + 15
    while True:
        again = connect("127.0.0.3")
        if _answered(again):
            break
        again.close()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for s in [*first, *others, over_ip, over_total, again]:
        s.close()
    text = b.log_text()
    assert "Traceback" not in text
