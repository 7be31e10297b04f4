"""Produce validation as Kafka's LogValidator does it, and the Kafka behaviours clients check.

* A batch whose CRC is right but whose records are garbage is refused (CORRUPT_MESSAGE).
* A compacted topic refuses records without a key, naming each (KIP-467 record_errors).
* Produce to the internal topics, transactional batches without a transactional id and
  producer ids never issued are refused.
* `compression.type=lz4` on a topic stores lz4 batches whatever the producer sent;
  deprecated topic settings are accepted (and ignored with a log line).
* A Fetch answer stays within max_bytes and partition_max_bytes, except that the first
  batch of the first partition with data comes whole.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.create_topics_request import CreatableTopic, CreateTopicsRequest
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import (
    ATTR_TRANSACTIONAL,
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    HEADER_SIZE,
    POS_ATTRIBUTES,
    POS_CRC,
    Record,
    build_batch,
    compute_crc,
    decode_batch,
    iter_batches,
)


def produce(c: RawClient, topic: str, records: bytes, partition: int = 0, txn_id=None):
    req = ProduceRequest(
        acks=-1,
        timeout_ms=5000,
        transactional_id=txn_id,
        topic_data=[
            TopicProduceData(
                name=topic,
                partition_data=[PartitionProduceData(index=partition, records=records)],
            )
        ],
    )
    return c.request(req, 9).responses[0].partition_responses[0]


def fetch(
    c: RawClient, topic: str, parts: list[int], max_bytes: int, part_max: int, offset: int = 0
):
    req = FetchRequest(
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=0,
        max_bytes=max_bytes,
        isolation_level=0,
        topics=[
            FetchTopic(
                topic=topic,
                partitions=[
                    FetchPartition(partition=i, fetch_offset=offset, partition_max_bytes=part_max)
                    for i in parts
                ],
            )
        ],
    )
    return c.request(req, 11).responses[0].partitions


def recs(n: int, size: int = 10, key: bool = True) -> list[Record]:
    return [
        Record(key=b"k%d" % i if key else None, value=b"v" * size, offset_delta=i) for i in range(n)
    ]


def batch(records: list[Record], **kwargs: object) -> bytes:
    return build_batch(records, base_timestamp=int(time.time() * 1000), **kwargs)


def with_crc(batch: bytearray) -> bytes:
    batch[POS_CRC : POS_CRC + 4] = compute_crc(batch, 0, len(batch)).to_bytes(4, "big")
    return bytes(batch)


def test_garbage_inside_a_batch_with_a_good_crc_is_refused(shared_broker, topic_name):
    b = shared_broker
    make_topic(b.bootstrap, topic_name, 1)
    c = RawClient(b.port)
    good = bytearray(batch(recs(3)))
    garbage = [
        # the second record's length runs past the batch
        lambda x: x.__setitem__(HEADER_SIZE + 19, 0x7E),
        # the records take fewer bytes than the batch holds
        lambda x: x.extend(b"\x00\x00\x00"),
        # an offset delta out of order
        lambda x: x.__setitem__(HEADER_SIZE + 3, 0x04),
        # random bytes instead of records
        lambda x: x.__setitem__(slice(HEADER_SIZE, None), bytes(range(len(x) - HEADER_SIZE))),
    ]
    for spoil in garbage:
        bad = bytearray(good)
        spoil(bad)
        bad[8:12] = (len(bad) - 12).to_bytes(4, "big")
        resp = produce(c, topic_name, with_crc(bad))
        assert resp.error_code == ErrorCode.CORRUPT_MESSAGE, resp
        assert resp.error_message
    # garbage inside a compressed batch, and a batch lying about its record count
    packed = bytearray(batch(recs(3), compression=COMPRESSION_GZIP))
    packed[-12] ^= 0xFF
    assert produce(c, topic_name, with_crc(packed)).error_code == ErrorCode.CORRUPT_MESSAGE
    assert produce(c, topic_name, bytes(good)).error_code == 0  # still serving
    assert fetch(c, topic_name, [0], 1 << 20, 1 << 20)[0].high_watermark == 3
    c.close()


def test_compacted_topic_refuses_null_keys_per_record(shared_broker, topic_name):
    b = shared_broker
    make_topic(b.bootstrap, topic_name, 1, {"cleanup.policy": "compact"})
    c = RawClient(b.port)
    payload = batch(
        [
            Record(key=b"a", value=b"1", offset_delta=0),
            Record(key=None, value=b"2", offset_delta=1),
            Record(key=b"c", value=b"3", offset_delta=2),
            Record(key=None, value=b"4", offset_delta=3),
        ]
    )
    resp = produce(c, topic_name, payload)
    assert resp.error_code == ErrorCode.INVALID_RECORD
    assert [e.batch_index for e in resp.record_errors] == [1, 3]
    assert all("key" in e.batch_index_error_message for e in resp.record_errors)
    assert resp.error_message and "key" in resp.error_message
    c.close()
    # a real client sees INVALID_RECORD for a null key, and keyed records go through
    p = Producer({"bootstrap.servers": b.bootstrap, "retries": 0})
    errors: list[KafkaError] = []
    p.produce(topic_name, value=b"no key", on_delivery=lambda e, m: errors.append(e))
    p.flush(15)
    p.produce(topic_name, key=b"k", value=b"keyed", on_delivery=lambda e, m: errors.append(e))
    p.flush(15)
    assert errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD
    assert errors[1] is None


def test_refused_producers(broker_factory, topic_name):
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 1)
    c = RawClient(b.port)
    # the internal topics are written by their coordinators only
    for internal in ("__consumer_offsets", "__transaction_state", "__share_group_state"):
        resp = produce(c, internal, batch(recs(1)))
        assert resp.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
    # nor created by a client (Kafka 4 counts the share state topic among its internal ones)
    created = c.request(
        CreateTopicsRequest(
            topics=[
                CreatableTopic(name="__share_group_state", num_partitions=1, replication_factor=1)
            ],
            timeout_ms=5000,
        ),
        5,
    )
    assert created.topics[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
    # a producer id nobody issued
    forged = batch(recs(1), producer_id=123_456_789, producer_epoch=0, base_sequence=0)
    assert produce(c, topic_name, forged).error_code == ErrorCode.UNKNOWN_PRODUCER_ID
    # an idempotent producer with an issued id is fine
    idem = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True})
    delivered: list[object] = []
    idem.produce(topic_name, key=b"k", value=b"v", on_delivery=lambda e, m: delivered.append(e))
    idem.flush(15)
    assert delivered == [None]
    # transactional batches need a transactional id (producer id 0 was issued above)
    txn = bytearray(batch(recs(1), producer_id=0, producer_epoch=0, base_sequence=0))
    attrs = int.from_bytes(txn[POS_ATTRIBUTES : POS_ATTRIBUTES + 2], "big") | ATTR_TRANSACTIONAL
    txn[POS_ATTRIBUTES : POS_ATTRIBUTES + 2] = attrs.to_bytes(2, "big")
    resp = produce(c, topic_name, with_crc(txn))
    assert resp.error_code == ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    # with an id but no transaction of it
    resp = produce(c, topic_name, with_crc(txn), txn_id="nobody")
    assert resp.error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    c.close()


def test_topic_compression_type_recompresses(shared_broker, topic_name):
    b = shared_broker
    make_topic(b.bootstrap, topic_name, 1, {"compression.type": "lz4"})
    c = RawClient(b.port)
    sent = 0
    for codec in (COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_ZSTD, COMPRESSION_LZ4):
        assert produce(c, topic_name, batch(recs(3), compression=codec)).error_code == 0
        sent += 3
    for client_codec in ("none", "snappy"):
        p = Producer(
            {"bootstrap.servers": b.bootstrap, "compression.type": client_codec, "linger.ms": 5}
        )
        for i in range(5):
            p.produce(topic_name, key=b"c%d" % i, value=b"x" * 100)
        assert p.flush(15) == 0
        sent += 5
    codecs = []
    total = 0
    while total < sent:  # a fetch answers from one segment at a time
        data = fetch(c, topic_name, [0], 1 << 20, 1 << 20, offset=total)[0].records
        assert data
        for pos, h in iter_batches(data):
            codecs.append(h.attributes & 7)
            _, rs = decode_batch(data[pos : pos + h.batch_length + 12])
            total += len(rs)
    assert total == sent
    assert set(codecs) == {COMPRESSION_LZ4}, codecs
    # consumers read them as usual
    consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": topic_name})
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    got = 0
    deadline = time.monotonic() + 20
    while got < sent and time.monotonic() < deadline:
        m = consumer.poll(1)
        if m is not None and m.error() is None:
            got += 1
    consumer.close()
    assert got == sent
    c.close()


def test_deprecated_topic_settings_are_accepted(shared_broker, topic_name):
    b = shared_broker
    make_topic(
        b.bootstrap,
        topic_name,
        1,
        {"message.format.version": "3.0-IV1", "message.timestamp.difference.max.ms": "1000"},
    )
    assert "message.format.version=3.0-IV1 is deprecated and ignored" in b.log_text()
    make_topic(b.bootstrap, topic_name + "-gz", 1, {"compression.type": "gzip"})


def test_fetch_stays_within_max_bytes_except_the_first_batch(shared_broker, topic_name):
    b = shared_broker
    make_topic(b.bootstrap, topic_name, 3)
    c = RawClient(b.port)
    big = batch(recs(1, 30_000))
    for part in (0, 1):
        assert produce(c, topic_name, big, partition=part).error_code == 0
    for _ in range(8):
        assert produce(c, topic_name, batch(recs(1, 5_000)), partition=2).error_code == 0
    # partition_max_bytes below one batch: only the first partition's batch comes (whole)
    p0, p1, p2 = fetch(c, topic_name, [0, 1, 2], 1 << 20, 10_000)
    assert len(p0.records) == len(big)
    assert p1.records in (b"", None)
    assert 0 < len(p2.records) <= 10_000
    # max_bytes: the first batch whole, then nothing beyond the request's budget
    parts = fetch(c, topic_name, [2, 0, 1], 12_000, 1 << 20)
    sizes = [len(p.records or b"") for p in parts]
    assert sizes[0] <= 12_000 and sizes[0] > 0
    assert sum(sizes) <= 12_000, sizes
    parts = fetch(c, topic_name, [0, 2, 1], 12_000, 1 << 20)
    sizes = [len(p.records or b"") for p in parts]
    assert sizes == [len(big), 0, 0], sizes
    c.close()


def test_produce_holds_exactly_one_batch_per_partition(broker_factory, topic_name):
    """Produce v3+ carries exactly one batch per partition (Kafka's ProduceRequest rule):
    two batches, or one followed by trailing bytes, are INVALID_RECORD and nothing is
    appended."""
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 1)
    c = RawClient(b.port)
    one = batch(recs(2))
    for payload in (one + batch(recs(3)), one + b"\x00", one + one[:HEADER_SIZE]):
        resp = produce(c, topic_name, payload)
        assert resp.error_code == ErrorCode.INVALID_RECORD, resp
        assert resp.base_offset == -1
        assert resp.error_message and "one record batch" in resp.error_message
    # nothing of those reached the log: the next batch starts at offset 0
    resp = produce(c, topic_name, one)
    assert (resp.error_code, resp.base_offset) == (0, 0)
    got = fetch(c, topic_name, [0], 1 << 20, 1 << 20)[0]
    assert [h.base_offset for _, h in iter_batches(got.records)] == [0]
    c.close()
