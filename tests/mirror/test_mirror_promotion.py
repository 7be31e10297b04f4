"""Promotion with a source transaction still open in the copy.

The copy holds a transaction's records but never its marker (the source had not ended it
when copying stopped); promoting the topic must abort it here, once, or the last stable
offset stays at its first offset and read_committed consumers of the topic stall.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from fake_source import FakeSource, make_batches
from kafka_helpers import RawClient, make_topic
from mirror_helpers import batches, mirror_settings, wait_until
from test_mirror_divergence import _init_producer_id
from test_mirror_ops import metric

from shazamq.broker.topic_configs import MIRROR_PROMOTED_AT, MIRROR_SOURCE
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import ATTR_CONTROL, Record, build_batch, iter_batches

pytestmark = pytest.mark.timeout(300)

TOPIC = "payments"
LATEST = -1


def _latest(port: int, isolation: int) -> int:
    c = RawClient(port)
    try:
        req = ListOffsetsRequest(
            replica_id=-1,
            isolation_level=isolation,
            topics=[
                ListOffsetsTopic(
                    name=TOPIC,
                    partitions=[ListOffsetsPartition(partition_index=0, timestamp=LATEST)],
                )
            ],
        )
        part = c.request(req, 4).topics[0].partitions[0]
        assert part.error_code == 0, part.error_code
        return part.offset
    finally:
        c.close()


def _committed_values(bootstrap: str, want: int) -> list[tuple[int, bytes]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "promoted-reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(TOPIC, 0, 0)])
        got: list[tuple[int, bytes]] = []
        polls = 60
        while len(got) < want and polls:
            polls -= 1
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append((m.offset(), m.value()))
        return got
    finally:
        c.close()


def _control_batches(port: int) -> list[int]:
    """Base offsets of the control (marker) batches of the partition."""
    out = []
    for base, raw in batches(port, TOPIC, 0):
        h = next(iter_batches(raw))[1]
        if h.attributes & ATTR_CONTROL:
            out.append(base)
    return out


def _mirror_with_open_source_transaction(broker_factory):
    """A source whose transaction stays open, and its mirror holding the open records:
    (source, mirror, the source's transactional producer)."""
    source = broker_factory()
    make_topic(source.bootstrap, TOPIC, 1)
    plain = Producer({"bootstrap.servers": source.bootstrap})
    plain.produce(TOPIC, value=b"before", partition=0)
    assert plain.flush(30) == 0
    # a source transaction begun and never ended (kept open for the whole test)
    txp = Producer(
        {
            "bootstrap.servers": source.bootstrap,
            "transactional.id": "src-open",
            "transaction.timeout.ms": 600_000,
        }
    )
    txp.init_transactions(30)
    txp.begin_transaction()
    for i in range(3):
        txp.produce(TOPIC, value=f"open-{i}".encode(), partition=0)
    assert txp.flush(30) == 0

    settings = mirror_settings(
        bootstrap_servers=f"127.0.0.1:{source.port}", topic_whitelist=[TOPIC]
    )
    mirror = broker_factory(**settings)
    wait_until(
        lambda: (
            batches(mirror.port, TOPIC, 0) == batches(source.port, TOPIC, 0)
            and _latest(mirror.port, 0) == 4
        ),
        60,
        "copy of the open transaction",
    )
    assert _latest(mirror.port, 1) == 1  # the LSO: the open transaction starts at 1
    return source, mirror, txp


def test_open_source_transaction_is_aborted_once_on_promotion(broker_factory) -> None:
    source, mirror, txp = _mirror_with_open_source_transaction(broker_factory)
    mirror.stop()
    mirror.settings.update(
        mirror_settings(
            bootstrap_servers=f"127.0.0.1:{source.port}",
            topic_whitelist=[TOPIC],
            promoted_topics=[TOPIC],
        )
    )
    mirror.start()
    wait_until(lambda: f"topic {TOPIC} promoted" in mirror.log_text(), 60, "promotion")
    local = Producer({"bootstrap.servers": mirror.bootstrap})
    for i in range(2):
        local.produce(TOPIC, value=f"local-{i}".encode(), partition=0)
    assert local.flush(30) == 0

    # not stuck: read_committed reaches the high watermark, the local records come, the
    # open source transaction's do not; its abort marker took offset 4
    high_watermark = _latest(mirror.port, 0)
    assert _latest(mirror.port, 1) == high_watermark
    got = _committed_values(mirror.bootstrap, 3)
    assert [v for _, v in got] == [b"before", b"local-0", b"local-1"]
    assert [o for o, _ in got] == [0, 5, 6]
    assert high_watermark == 7
    assert _control_batches(mirror.port) == [4]
    assert "source producer" in mirror.log_text()
    assert metric(mirror.metrics_port, "shazamq_mirror_promotion_aborts_total", source="src") == 1

    # a local transaction open across a restart is not the mirror's to abort
    ltx = Producer(
        {
            "bootstrap.servers": mirror.bootstrap,
            "transactional.id": "local-tx",
            "transaction.timeout.ms": 600_000,
        }
    )
    ltx.init_transactions(30)
    ltx.begin_transaction()
    ltx.produce(TOPIC, value=b"local-tx", partition=0)
    assert ltx.flush(30) == 0
    mirror.restart()
    wait_until(
        lambda: metric(mirror.metrics_port, "shazamq_mirror_source_state", state="connected"),
        60,
        "mirror service refreshed after the restart",
    )
    # nothing aborted twice, nor the local transaction: still one marker, the LSO at it
    assert metric(mirror.metrics_port, "shazamq_mirror_promotion_aborts_total", source="src") == 0
    assert _control_batches(mirror.port) == [4]
    assert (_latest(mirror.port, 0), _latest(mirror.port, 1)) == (8, 7)
    ltx.commit_transaction(30)
    wait_until(lambda: _latest(mirror.port, 1) == 9, 60, "local commit")
    got = _committed_values(mirror.bootstrap, 4)
    assert got == [(0, b"before"), (5, b"local-0"), (6, b"local-1"), (7, b"local-tx")]
    assert _control_batches(mirror.port) == [4, 8]

    # the source's transaction is untouched there
    assert _latest(source.port, 1) == 1
    txp.abort_transaction(30)


def test_promotion_by_deleting_the_marker_aborts_as_promoted_topics_does(broker_factory):
    """IncrementalAlterConfigs DELETE of the marker is a promotion like ``promoted_topics``:
    the answer comes once the topic is writable, with the source's open transaction
    aborted by one marker; a restart aborts nothing more."""
    _source, mirror, txp = _mirror_with_open_source_transaction(broker_factory)
    admin = AdminClient({"bootstrap.servers": mirror.bootstrap})
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        TOPIC,
        incremental_configs=[
            ConfigEntry(MIRROR_SOURCE, None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(30)
    local = Producer({"bootstrap.servers": mirror.bootstrap})
    local.produce(TOPIC, value=b"local-0", partition=0)
    assert local.flush(30) == 0
    assert (_latest(mirror.port, 0), _latest(mirror.port, 1)) == (6, 6)
    assert _control_batches(mirror.port) == [4]
    got = _committed_values(mirror.bootstrap, 2)
    assert got == [(0, b"before"), (5, b"local-0")]
    assert metric(mirror.metrics_port, "shazamq_mirror_promotion_aborts_total", source="src") == 1
    assert not _topic_configs(admin).get(MIRROR_SOURCE)

    mirror.restart()
    wait_until(
        lambda: metric(mirror.metrics_port, "shazamq_mirror_source_state", state="connected"),
        60,
        "mirror service refreshed after the restart",
    )
    assert metric(mirror.metrics_port, "shazamq_mirror_promotion_aborts_total", source="src") == 0
    assert _control_batches(mirror.port) == [4]
    txp.abort_transaction(30)


def _topic_configs(admin: AdminClient) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    entries = admin.describe_configs([res])[res].result(15)
    return {k: e.value for k, e in entries.items()}


def _produce_raw(port: int, topic: str, producer_id: int, values: list[bytes], sequence: int = 0):
    """One idempotent batch (epoch 0) from ``producer_id``: the partition's answer."""
    batch = build_batch(
        [Record(offset_delta=i, value=v) for i, v in enumerate(values)],
        producer_id=producer_id,
        producer_epoch=0,
        base_sequence=sequence,
        base_timestamp=int(time.time() * 1000),
    )
    c = RawClient(port)
    try:
        req = ProduceRequest(
            acks=-1,
            timeout_ms=10_000,
            topic_data=[
                TopicProduceData(
                    name=topic,
                    partition_data=[PartitionProduceData(index=0, records=memoryview(batch))],
                )
            ],
        )
        return c.request(req, 9).responses[0].partition_responses[0]
    finally:
        c.close()


def test_local_producer_holding_a_copied_producer_id_is_refused_after_promotion(
    broker_factory,
) -> None:
    """A producer id handed out here before the source's producer with the same id was
    copied: after promotion the partition's state for that id is the source producer's
    (its first batch would even pass as their duplicate, and be dropped). The local
    producer is refused with UNKNOWN_PRODUCER_ID and a message, so it takes a new id; the
    promotion points that decide it are kept with the topic, across a restart."""
    source = FakeSource("pids").start()
    try:
        mirror = broker_factory(
            **mirror_settings(
                bootstrap_servers=f"127.0.0.1:{source.port}", topic_whitelist=["pids"]
            )
        )
        mine = _init_producer_id(mirror.port)  # a local idempotent producer's id
        # and a client's (the next id handed out here)
        make_topic(mirror.bootstrap, "local", 1)
        client = Producer({"bootstrap.servers": mirror.bootstrap, "enable.idempotence": True})
        client.produce("local", value=b"x", partition=0)
        assert client.flush(30) == 0
        source.append(make_batches(0, 2, epoch=0, tag="src", producer_id=mine))
        source.append(make_batches(4, 1, epoch=0, tag="src", producer_id=mine + 1))
        wait_until(
            lambda: len(source.log()) == 3 and batches(mirror.port, "pids", 0) == source.log(),
            60,
            "copy",
        )
        admin = AdminClient({"bootstrap.servers": mirror.bootstrap})
        res = ConfigResource(
            ConfigResource.Type.TOPIC,
            "pids",
            incremental_configs=[
                ConfigEntry(MIRROR_SOURCE, None, incremental_operation=AlterConfigOpType.DELETE)
            ],
        )
        admin.incremental_alter_configs([res])[res].result(30)
        entries = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "pids")])
        configs = {k: e.value for k, e in next(iter(entries.values())).result(15).items()}
        assert configs[MIRROR_PROMOTED_AT] == "6"
        # the client's first batch here: refused, it takes a new epoch, and it is written
        client.produce("pids", value=b"client-0", partition=0)
        assert client.flush(30) == 0
        base, raw = batches(mirror.port, "pids", 0)[-1]
        header = next(iter_batches(raw))[1]
        assert base == 6
        assert (header.producer_id, header.producer_epoch) == (mine + 1, 1)

        got = _produce_raw(mirror.port, "pids", mine, [b"local-0", b"local-1"])
        assert got.error_code == ErrorCode.UNKNOWN_PRODUCER_ID, (got.error_code, got.base_offset)
        assert "mirrored source" in got.error_message
        # a fresh id from this broker writes after the copy
        other = _init_producer_id(mirror.port)
        got = _produce_raw(mirror.port, "pids", other, [b"local-2"])
        assert (got.error_code, got.base_offset) == (0, 7)
        assert [b for b, _ in batches(mirror.port, "pids", 0)] == [0, 2, 4, 6, 7]

        mirror.restart()
        got = _produce_raw(mirror.port, "pids", mine, [b"local-0", b"local-1"])
        assert got.error_code == ErrorCode.UNKNOWN_PRODUCER_ID
        # the producers that wrote after the promotion point go on
        got = _produce_raw(mirror.port, "pids", other, [b"local-3"], sequence=1)
        assert (got.error_code, got.base_offset) == (0, 8)
    finally:
        source.stop()
