"""The copy: a second Shazamq broker as the source, real clients, byte-level assertions.

Every test starts a source broker, produces to it with confluent-kafka (every codec,
idempotent and transactional producers with aborts, a compacted topic), starts a broker
with ``[mirror]`` pointing at it, and asserts on the mirror's bytes and offsets: the same
batches at the same offsets, read_committed results equal, topic ids and configs kept.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kafka_helpers import make_topic
from mirror_helpers import batches, mirror_settings, same_copy, topics, wait_until

from shazamq.protocol.records import ATTR_CONTROL, iter_batches

pytestmark = pytest.mark.timeout(300)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce_mix(bootstrap: str, topic: str, partitions: int, n: int = 50) -> None:
    """Every codec, idempotent, keyed so every partition gets data."""
    for codec in CODECS:
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": codec,
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        for i in range(n):
            p.produce(
                topic,
                key=f"k{i % 7}".encode(),
                value=f"{codec}-{i}".encode() * 3,
                partition=i % partitions,
            )
        assert p.flush(30) == 0


def produce_transactions(bootstrap: str, topic: str, partitions: int) -> None:
    """Three transactions, the middle one aborted."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:6]}"})
    p.init_transactions(30)
    for t, commit in enumerate((True, False, True)):
        p.begin_transaction()
        for i in range(20):
            p.produce(topic, value=f"txn{t}-{i}".encode(), partition=i % partitions)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)


def read_committed(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, bytes]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out = []
        eof: set[int] = set()
        while len(eof) < partitions:
            m = c.poll(5)
            assert m is not None, "no end of partition reached"
            if m.error():
                assert m.error().code() == -191, m.error()  # _PARTITION_EOF
                eof.add(m.partition())
                continue
            out.append((m.partition(), m.offset(), m.value()))
        return sorted(out)
    finally:
        c.close()


def describe(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(15)
    return {k: e.value for k, e in entries.items()}


def produce_one(bootstrap: str, topic: str) -> int:
    """Produce one record; its offset, or raises KafkaException with the broker's error."""
    p = Producer({"bootstrap.servers": bootstrap, "message.send.max.retries": 0})
    result: list = []
    p.produce(topic, value=b"local", partition=0, on_delivery=lambda e, m: result.append((e, m)))
    p.flush(15)
    err, msg = result[0]
    if err is not None:
        raise KafkaException(err)
    return msg.offset()


def test_verbatim_copy_at_source_offsets(broker_factory) -> None:
    source = broker_factory()
    make_topic(source.bootstrap, "orders", 3)
    make_topic(source.bootstrap, "events.debug", 1)
    make_topic(
        source.bootstrap,
        "state",
        2,
        {"cleanup.policy": "compact", "retention.ms": "3600000", "max.message.bytes": "2000000"},
    )
    produce_mix(source.bootstrap, "orders", 3)
    produce_transactions(source.bootstrap, "orders", 3)
    produce_mix(source.bootstrap, "state", 2, n=30)
    # a tombstone in the compacted topic
    p = Producer({"bootstrap.servers": source.bootstrap})
    p.produce("state", key=b"k1", value=None, partition=1)
    p.flush(10)

    mirror = broker_factory(
        **mirror_settings(
            bootstrap_servers=source.bootstrap,
            topic_whitelist=["orders", "state", "events.*"],
            topic_blacklist=["events.debug"],
        )
    )
    wait_until(
        lambda: (
            same_copy(source.port, mirror.port, "orders", 3)
            and same_copy(source.port, mirror.port, "state", 2)
        ),
        what="identical copy",
    )
    # byte-identical batches at the same offsets, transaction markers among them
    orders = [batches(mirror.port, "orders", i) for i in range(3)]
    assert sum(len(b) for b in orders) > 15
    controls = [
        h
        for part in orders
        for _, raw in part
        for _, h in iter_batches(raw)
        if h.attributes & ATTR_CONTROL
    ]
    assert len(controls) >= 6  # commit and abort markers
    codecs = {
        h.attributes & 0x7 for part in orders for _, raw in part for _, h in iter_batches(raw)
    }
    assert codecs >= {0, 1, 2, 3, 4}
    # topic ids kept, blacklisted and internal topics not copied
    src_topics, dst_topics = topics(source.port), topics(mirror.port)
    assert dst_topics["orders"] == src_topics["orders"]
    assert dst_topics["state"] == src_topics["state"]
    assert "events.debug" not in dst_topics
    # the configs that matter, and the marker naming the origin
    cfg = describe(mirror.bootstrap, "state")
    assert cfg["cleanup.policy"] == "compact"
    assert cfg["retention.ms"] == "3600000"
    assert cfg["max.message.bytes"] == "2000000"
    assert cfg["shazamq.mirror.source"].startswith("src:state@")
    # read_committed consumers see the same records at the same offsets on both
    committed = read_committed(source.bootstrap, "orders", 3)
    assert read_committed(mirror.bootstrap, "orders", 3) == committed
    assert not any(v.startswith(b"txn1-") for _, _, v in committed)
    assert sum(v.startswith(b"txn2-") for _, _, v in committed) == 20

    # mirrored topics are read-only, with a clear error
    with pytest.raises(KafkaException) as e:
        produce_one(mirror.bootstrap, "orders")
    assert "TOPIC_AUTHORIZATION_FAILED" in str(e.value) or "Authorization" in str(e.value)
    # clients cannot mark a topic themselves
    admin = AdminClient({"bootstrap.servers": mirror.bootstrap})
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "state",
        incremental_configs=[
            ConfigEntry(
                "shazamq.mirror.source", "x:y@z", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    with pytest.raises(KafkaException, match="mirroring only"):
        admin.incremental_alter_configs([res])[res].result(15)

    # a new topic and new partitions at the source appear
    make_topic(source.bootstrap, "events.click", 2)
    from confluent_kafka.admin import NewPartitions

    src_admin = AdminClient({"bootstrap.servers": source.bootstrap})
    src_admin.create_partitions([NewPartitions("orders", 5)])["orders"].result(15)
    produce_mix(source.bootstrap, "orders", 5, n=10)
    produce_mix(source.bootstrap, "events.click", 2, n=10)
    wait_until(
        lambda: (
            topics(mirror.port).get("orders", (0, 0))[1] == 5
            and same_copy(source.port, mirror.port, "orders", 5)
            and same_copy(source.port, mirror.port, "events.click", 2)
        ),
        what="new partitions and topic copied",
    )
    assert topics(mirror.port)["events.click"] == topics(source.port)["events.click"]

    # promotion: the marker deleted, mirroring of the topic stops, producers write next
    end = batches(mirror.port, "orders", 0)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "orders",
        incremental_configs=[
            ConfigEntry(
                "shazamq.mirror.source", None, incremental_operation=AlterConfigOpType.DELETE
            )
        ],
    )
    admin.incremental_alter_configs([res])[res].result(15)
    last_base, last_raw = end[-1]
    next_offset = last_base + next(iter_batches(last_raw))[1].last_offset_delta + 1
    assert produce_one(mirror.bootstrap, "orders") == next_offset
    # the source moves on; the promoted copy no longer follows
    produce_mix(source.bootstrap, "orders", 5, n=5)
    produce_mix(source.bootstrap, "events.click", 2, n=5)
    wait_until(
        lambda: same_copy(source.port, mirror.port, "events.click", 2), what="still mirroring"
    )
    mine = batches(mirror.port, "orders", 0)
    assert mine[: len(end)] == end and len(mine) == len(end) + 1
