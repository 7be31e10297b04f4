"""The mirror under operations: kill -9 mid-copy, group offsets, SASL_SSL, a source outage."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import make_topic
from mirror_helpers import batches, mirror_settings, same_copy, wait_until

pytestmark = pytest.mark.timeout(300)


def produce(
    conf: dict,
    topic: str,
    partitions: int,
    n: int,
    size: int = 100,
    tag: str = "",
    batch_size: int = 1_000_000,
) -> None:
    p = Producer({**conf, "linger.ms": 2, "enable.idempotence": True, "batch.size": batch_size})
    for i in range(n):
        p.produce(topic, value=f"{tag}{i}:".encode().ljust(size, b"x"), partition=i % partitions)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def metric(port: int, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_kill_9_mid_copy_resumes_without_duplicates_or_holes(broker_factory) -> None:
    source = broker_factory()
    conf = {"bootstrap.servers": source.bootstrap}
    make_topic(source.bootstrap, "load", 3)
    # thousands of small batches and one batch per fetch: the copy takes a while
    produce(conf, "load", 3, 30_000, size=200, batch_size=1000)
    source_end = sum(
        metric(source.metrics_port, "shazamq_log_end_offset", topic="load", partition=str(p)) or 0
        for p in range(3)
    )
    mirror = broker_factory(
        **mirror_settings(bootstrap_servers=source.bootstrap, fetch_max_bytes=1024)
    )
    # the source keeps taking writes while the mirror copies
    writer = threading.Thread(target=produce, args=(conf, "load", 3, 5_000, 200, "w", 1000))
    writer.start()

    def partly_copied() -> bool:
        copied = sum(
            metric(mirror.metrics_port, "shazamq_log_end_offset", topic="load", partition=str(p))
            or 0
            for p in range(3)
        )
        return 0 < copied < source_end

    wait_until(partly_copied, what="copy under way")
    mirror.kill()  # mid-copy
    writer.join()
    mirror.start()
    wait_until(lambda: same_copy(source.port, mirror.port, "load", 3), 120, "identical copy")
    # offsets are contiguous and unique: no batch twice, no hole
    for p in range(3):
        seen = batches(mirror.port, "load", p)
        bases = [b for b, _ in seen]
        assert bases == sorted(set(bases))
    assert "mirror src" in mirror.log_text()


def test_group_moves_from_source_to_mirror_exactly(broker_factory) -> None:
    source = broker_factory()
    make_topic(source.bootstrap, "jobs", 2)
    produce({"bootstrap.servers": source.bootstrap}, "jobs", 2, 200)
    mirror = broker_factory(**mirror_settings(bootstrap_servers=source.bootstrap))
    group = f"app-{uuid.uuid4().hex[:6]}"

    def consume(bootstrap: str, limit: int) -> list[bytes]:
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        c.subscribe(["jobs"])
        got: list[bytes] = []
        idle = time.monotonic()
        try:
            while len(got) < limit and time.monotonic() - idle < 15:
                m = c.poll(0.5)
                if m is None or m.error():
                    continue
                idle = time.monotonic()
                got.append(m.value())
                c.commit(m, asynchronous=False)
        finally:
            c.close()
        return got

    first = consume(source.bootstrap, 100)
    assert len(first) == 100
    src_admin = AdminClient({"bootstrap.servers": source.bootstrap})
    dst_admin = AdminClient({"bootstrap.servers": mirror.bootstrap})
    from confluent_kafka import ConsumerGroupTopicPartitions

    def committed(admin: AdminClient) -> dict[int, int]:
        req = [
            ConsumerGroupTopicPartitions(
                group, [TopicPartition("jobs", 0), TopicPartition("jobs", 1)]
            )
        ]
        res = admin.list_consumer_group_offsets(req)[group].result(10)
        return {tp.partition: tp.offset for tp in res.topic_partitions}

    source_offsets = committed(src_admin)
    assert any(v > 0 for v in source_offsets.values())
    wait_until(lambda: committed(dst_admin) == source_offsets, 60, "offsets synced")
    rest = consume(mirror.bootstrap, 1000)
    everything = sorted(first + rest)
    expected = sorted(f"{i}:".encode().ljust(100, b"x") for i in range(200))
    assert everything == expected  # nothing missed, nothing twice

    # offsets committed here are the group's own: the sync never moves them back
    time.sleep(1.5)
    assert committed(dst_admin) != source_offsets
    here = committed(dst_admin)
    assert all(here[p] >= source_offsets[p] for p in here)
    assert sum(max(v, 0) for v in here.values()) == 200


def _write_users(path: Path, users: dict[str, str]) -> Path:
    path.write_text("[users]\n" + "".join(f'"{u}" = "{p}"\n' for u, p in users.items()))
    return path


def test_sasl_ssl_scram_sha512_source(broker_factory, tmp_path: Path) -> None:
    from tls_helpers import write_certificates

    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    write_certificates(ca, cert, key)
    users = _write_users(tmp_path / "users.toml", {"mirror": "s3cret", "app": "app-secret"})
    source = broker_factory(
        security__tls__enabled=True,
        security__tls__cert_file=str(cert),
        security__tls__key_file=str(key),
        security__sasl__enabled=True,
        security__sasl__mechanisms='["SCRAM-SHA-512"]',
        security__sasl__users_file=str(users),
    )
    conf = {
        "bootstrap.servers": source.bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app",
        "sasl.password": "app-secret",
    }
    admin = AdminClient(conf)  # kept alive until the future is answered
    admin.create_topics([NewTopic("secure", 2, 1)])["secure"].result(15)
    produce(conf, "secure", 2, 300)
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    mirror = broker_factory(
        **mirror_settings(
            bootstrap_servers=source.bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="mirror",
            sasl_password_file=str(password_file),
            ssl_ca_file=str(ca),
        )
    )

    def values(c: dict) -> list[tuple[int, int, bytes]]:
        consumer = Consumer({**c, "group.id": f"v-{uuid.uuid4().hex[:6]}"})
        try:
            consumer.assign([TopicPartition("secure", p, 0) for p in range(2)])
            out = []
            idle = time.monotonic()
            while time.monotonic() - idle < 3:
                m = consumer.poll(0.5)
                if m is None or m.error():
                    continue
                idle = time.monotonic()
                out.append((m.partition(), m.offset(), m.value()))
            return sorted(out)
        finally:
            consumer.close()

    wait_until(
        lambda: sum(len(batches(mirror.port, "secure", p)) for p in range(2)) > 0,
        60,
        "copy over SASL_SSL",
    )
    expected = values(conf)
    assert len(expected) == 300
    wait_until(
        lambda: values({"bootstrap.servers": mirror.bootstrap}) == expected, 60, "same records"
    )


def test_source_outage_and_return(broker_factory) -> None:
    source = broker_factory()
    make_topic(source.bootstrap, "steady", 1)
    produce({"bootstrap.servers": source.bootstrap}, "steady", 1, 100)
    mirror = broker_factory(**mirror_settings(bootstrap_servers=source.bootstrap))
    wait_until(lambda: same_copy(source.port, mirror.port, "steady", 1), 60, "first copy")
    assert (
        metric(mirror.metrics_port, "shazamq_mirror_source_state", source="src", state="connected")
        == 1
    )
    source.stop()
    wait_until(
        lambda: (
            metric(mirror.metrics_port, "shazamq_mirror_source_state", source="src", state="down")
            == 1
        ),
        60,
        "source reported down",
    )
    # the broker's own clients are unaffected meanwhile
    make_topic(mirror.bootstrap, "local-only", 1)
    source.start()
    produce({"bootstrap.servers": source.bootstrap}, "steady", 1, 100, tag="after")
    wait_until(lambda: same_copy(source.port, mirror.port, "steady", 1), 90, "copy resumed")
    assert (
        metric(
            mirror.metrics_port,
            "shazamq_mirror_lag_offsets",
            source="src",
            topic="steady",
            partition="0",
        )
        == 0
    )
    copied = metric(
        mirror.metrics_port,
        "shazamq_mirror_bytes_copied_total",
        source="src",
        topic="steady",
        partition="0",
    )
    assert copied is not None and copied > 0


def test_source_log_start_passing_the_copy_is_a_recorded_jump(broker_factory) -> None:
    """Records deleted at the source before they were copied: a logged, counted jump."""
    source = broker_factory()
    conf = {"bootstrap.servers": source.bootstrap}
    make_topic(source.bootstrap, "retained", 1)
    produce(conf, "retained", 1, 50)
    mirror = broker_factory(**mirror_settings(bootstrap_servers=source.bootstrap))
    wait_until(lambda: same_copy(source.port, mirror.port, "retained", 1), 60, "first copy")
    mirror.stop()
    produce(conf, "retained", 1, 50, tag="b")
    produce(conf, "retained", 1, 50, tag="c")
    # the source deletes below offset 120 (inside the third 50) before the mirror is back
    admin = AdminClient(conf)
    tp = TopicPartition("retained", 0, 120)
    admin.delete_records([tp])[tp].result(15)
    mirror.start()

    def jumped() -> bool:
        src = [b for b in batches(source.port, "retained", 0)]
        dst = [b for b in batches(mirror.port, "retained", 0)]
        return bool(src) and dst[-len(src) :] == src

    wait_until(jumped, 60, "copy continued from the source's log start")
    dst = batches(mirror.port, "retained", 0)
    bases = [b for b, _ in dst]
    assert bases[0] == 0 and bases[-1] >= 100  # the batch holding the source's log start
    # the copy kept what it had and has nothing the source no longer had to give
    assert not any(50 <= b < 100 for b in bases)
    assert (
        metric(
            mirror.metrics_port,
            "shazamq_mirror_offset_jumps_total",
            source="src",
            topic="retained",
            partition="0",
        )
        == 1
    )
    assert "were deleted at the source before they were copied" in mirror.log_text()


def test_source_losing_records_upstream_cuts_the_copy_s_tail(broker_factory) -> None:
    """The source comes back with fewer records than were copied (its log lost a tail): the
    copy's tail is cut to the source's end, counted and logged, and what the source writes
    next is copied at the same offsets."""
    source = broker_factory()
    conf = {"bootstrap.servers": source.bootstrap}
    make_topic(source.bootstrap, "lossy", 1)
    produce(conf, "lossy", 1, 60, batch_size=1000)  # many small batches
    mirror = broker_factory(**mirror_settings(bootstrap_servers=source.bootstrap))
    wait_until(lambda: same_copy(source.port, mirror.port, "lossy", 1), 60, "first copy")
    before = batches(source.port, "lossy", 0)
    assert len(before) >= 4
    keep = before[: len(before) // 2]
    source.kill()
    # the source's log loses its second half: the file ends at a batch boundary
    segment = source.data_dir / "lossy-0" / "00000000000000000000.log"
    with open(segment, "r+b") as f:
        f.truncate(sum(len(raw) for _, raw in keep))
    source.start()
    assert batches(source.port, "lossy", 0) == keep
    wait_until(lambda: same_copy(source.port, mirror.port, "lossy", 1), 60, "copy cut back")
    assert (
        metric(
            mirror.metrics_port,
            "shazamq_mirror_truncations_total",
            source="src",
            topic="lossy",
            partition="0",
        )
        == 1
    )
    assert "records lost upstream" in mirror.log_text()
    produce(conf, "lossy", 1, 10, tag="new", batch_size=1000)  # written after the loss
    wait_until(lambda: same_copy(source.port, mirror.port, "lossy", 1), 60, "new records")
    assert len(batches(mirror.port, "lossy", 0)) > len(keep)
