"""The fault-test harness itself, proven on independent single brokers.

Loopback mode runs anywhere; the netns tests need root and iproute2 (skipped otherwise), and
the netem test a kernel with the netem qdisc. Assertions are on data and error codes; the
only timing assertion is the loose "a 100 ms netem delay shows up in a TCP handshake".
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from shazamq.config import load_config, parse_voter

from . import netns
from .conftest import (
    NETNS_KAFKA_PORT,
    ClusterFactory,
    Endpoint,
    api_versions,
    netns_endpoints,
    render_configs,
    tcp_connect_time,
)

TOPIC = "harness"
LabFactory = Callable[[int], netns.NetnsLab]
UNREACHABLE = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
}


# -- clients -----------------------------------------------------------------------------------


def produce(
    bootstrap: str, values: list[bytes], *, timeout_ms: int = 15_000
) -> list[tuple[KafkaError | None, int]]:
    """Produce `values` to partition 0 of TOPIC with acks=all; (error, offset) of each."""
    results: list[tuple[KafkaError | None, int]] = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": timeout_ms,
            "socket.connection.setup.timeout.ms": min(timeout_ms, 5_000),
            "reconnect.backoff.max.ms": 500,
        }
    )
    for value in values:
        producer.produce(
            TOPIC,
            value=value,
            partition=0,
            on_delivery=lambda err, msg: results.append((err, msg.offset())),
        )
    producer.flush(timeout_ms / 1000 + 10)
    assert len(results) == len(values), "some deliveries were never reported"
    return results


def produce_ok(bootstrap: str, values: list[bytes]) -> list[int]:
    results = produce(bootstrap, values)
    errors = [err for err, _ in results if err is not None]
    assert not errors, errors
    return [offset for _, offset in results]


def consume(bootstrap: str, expected: int, timeout: float = 20.0) -> list[tuple[int, bytes]]:
    """Read partition 0 of TOPIC from offset 0 until `expected` records (no group)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "harness", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            out.append((msg.offset(), value))
    finally:
        consumer.close()
    return out


def values(tag: str, start: int, n: int) -> list[bytes]:
    return [f"{tag}-{i:06d}".encode() for i in range(start, start + n)]


def connect_median(host: str, port: int, n: int = 5) -> float:
    return statistics.median(tcp_connect_time(host, port) for _ in range(n))


# -- configs (no processes) ----------------------------------------------------------------


def test_render_configs_for_a_cluster(tmp_path: Path) -> None:
    endpoints = [Endpoint(f"198.18.9.{i + 1}", 9092, 9093, 9090) for i in range(5)]
    configs = render_configs(
        endpoints,
        tmp_path,
        clustered=True,
        secret="s3cret",
        extra_config=lambda node: {"broker": {"rack": f"rack-{node % 2}"}},
    )
    assert [c.broker.node_id for c in configs] == [0, 1, 2, 3, 4]
    assert len({c.broker.data_dir for c in configs}) == 5
    for c, ep in zip(configs, endpoints, strict=True):
        assert c.broker.advertised_host == c.broker.host == ep.address
        assert c.cluster.secret == "s3cret"
        assert c.cluster.voters == configs[0].cluster.voters
        assert c.broker.rack == f"rack-{c.broker.node_id % 2}"
    voters = [parse_voter(v) for v in configs[0].cluster.voters]
    assert voters == [(i, f"198.18.9.{i + 1}", 9093) for i in range(3)]

    single = render_configs(
        endpoints[:2], tmp_path, clustered=False, extra_config={"storage": {"segment_bytes": 4096}}
    )
    assert all(not c.cluster.enabled for c in single)
    assert all(c.storage.segment_bytes == 4096 for c in single)
    assert single[0].groups.initial_rebalance_delay_ms == 0  # the test defaults stay


# -- loopback mode -------------------------------------------------------------------------------


def test_loopback_independent_brokers(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory.start(2, netns=False, clustered=False)
    assert len({b.port for b in cluster}) == 2
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{b.port}" for b in cluster)
    for b in cluster:
        assert "cluster" not in tomllib.loads(b.config_path.read_text())
        assert load_config(b.config_path, environ={}) == b.config  # what the broker reads
    for b in cluster:
        assert produce_ok(b.bootstrap, values(f"n{b.node_id}", 0, 5)) == [0, 1, 2, 3, 4]
    for b in cluster:  # each broker holds only what was sent to it
        assert consume(b.bootstrap, 5) == list(enumerate(values(f"n{b.node_id}", 0, 5)))


def test_loopback_crash_pause_and_clean_stop(cluster_factory: ClusterFactory) -> None:
    (b,) = cluster_factory.start(1, netns=False)
    assert produce_ok(b.bootstrap, values("a", 0, 3)) == [0, 1, 2]
    assert b.kill9() == -9
    b.restart()
    assert produce_ok(b.bootstrap, values("a", 3, 2)) == [3, 4]
    assert consume(b.bootstrap, 5) == list(enumerate(values("a", 0, 5)))

    b.sigstop()
    with pytest.raises(TimeoutError):
        api_versions(b.address, b.port, timeout=1.0)
    b.sigcont()
    assert b.api_versions() == 0
    assert b.terminate(timeout=30) == 0
    assert "stopped cleanly" in b.log_text()


# -- network namespaces ----------------------------------------------------------------------------


def _connect_from(
    host: netns.NetnsHost, address: str, port: int
) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        f"socket.create_connection(({address!r}, {port}), timeout=1.5).close()\n"
        "print('connected')\n"
    )
    return host.run_capture([sys.executable, "-c", code], timeout=20)


def test_netns_lab_addresses_and_cleanup(netns_lab_factory: LabFactory) -> None:
    lab = netns_lab_factory(2)
    assert lab.subnet is not None and lab.subnet.subnet_of(netns.LAB_RANGE)
    assert [h.address for h in lab] == [str(lab.subnet.network_address + i) for i in (1, 2)]
    assert ipaddress.IPv4Address(lab.root_address) in lab.subnet
    for h in lab:
        routes = subprocess.run(
            ["ip", "-n", h.name, "-4", "route", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "default" not in routes  # nothing leaves the lab
    a, b = lab.hosts
    serve = "import socket, time; s = socket.create_server(('0.0.0.0', 7000)); time.sleep(60)"
    listener = b.run([sys.executable, "-c", serve])
    deadline = time.monotonic() + 10
    while _connect_from(a, b.address, 7000).returncode != 0:  # host to host, over the bridge
        assert time.monotonic() < deadline and listener.poll() is None
        time.sleep(0.1)
    assert tcp_connect_time(b.address, 7000) < 5  # from the root namespace
    names = lab.namespaces
    lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.root_link not in links
    assert listener.poll() is not None  # what ran inside was stopped


def test_stale_labs_are_cleaned_but_live_ones_kept(netns_lab_factory: LabFactory) -> None:
    live = netns_lab_factory(1)
    stale = "shzq-dead00-0"  # no registered owner: left by a crashed run
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        removed = netns.cleanup_stale()
        assert stale in removed
        assert not any(n in removed for n in live.namespaces)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale not in listed
        assert all(n in listed for n in live.namespaces)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_netns_brokers_partition_pause_and_crash(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory.start(2, netns=True, clustered=False)
    b0, b1 = cluster.brokers
    h0, h1 = cluster.host(0), cluster.host(1)
    assert cluster.lab is not None
    assert b0.bootstrap == f"{h0.address}:{NETNS_KAFKA_PORT}"
    assert netns_endpoints(cluster.lab.hosts)[1].address == b1.address == h1.address
    assert produce_ok(b0.bootstrap, values("n0", 0, 3)) == [0, 1, 2]
    assert produce_ok(b1.bootstrap, values("n1", 0, 3)) == [0, 1, 2]

    # Partition host 0 from everyone: the root namespace and host 1 can no longer reach it.
    h0.link_down()
    with pytest.raises(OSError):
        tcp_connect_time(b0.address, b0.port, timeout=1.0)
    failed = produce(b0.bootstrap, values("n0", 3, 1), timeout_ms=2_000)
    assert failed[0][0] is not None and failed[0][0].code() in UNREACHABLE, failed
    assert _connect_from(h1, b0.address, b0.port).returncode != 0
    assert produce_ok(b1.bootstrap, values("n1", 3, 1)) == [3]  # the rest still works
    h0.link_up()
    assert "connected" in _connect_from(h1, b0.address, b0.port).stdout
    # The failed record was never written: offsets continue from the last acknowledged one.
    assert produce_ok(b0.bootstrap, values("n0", 3, 1)) == [3]

    # A frozen broker keeps its port open but answers nothing.
    b1.sigstop()
    with pytest.raises(TimeoutError):
        api_versions(b1.address, b1.port, timeout=1.0)
    b1.sigcont()
    assert b1.api_versions() == 0

    # A crash loses nothing acknowledged; offsets continue after the restart.
    assert b0.kill9() == -9
    b0.restart()
    assert produce_ok(b0.bootstrap, values("n0", 4, 2)) == [4, 5]
    assert consume(b0.bootstrap, 6) == list(enumerate(values("n0", 0, 6)))
    assert consume(b1.bootstrap, 4) == list(enumerate(values("n1", 0, 4)))


def test_netns_netem_delay(cluster_factory: ClusterFactory) -> None:
    reason = netns.netem_available()
    if reason is not None:
        pytest.skip(reason)
    (b,) = cluster_factory.start(1, netns=True)
    host = b.host
    assert host is not None
    host.netem(100)
    try:
        assert connect_median(b.address, b.port) > 0.080
        assert produce_ok(b.bootstrap, values("slow", 0, 2)) == [0, 1]
    finally:
        host.clear_netem()
    assert connect_median(b.address, b.port) < 0.080


def test_netem_arguments() -> None:
    assert netns.NetnsHost.netem_args(100) == ["delay", "100000us"]
    assert netns.NetnsHost.netem_args(50, 5, 1.5) == ["delay", "50000us", "5000us", "loss", "1.5%"]
