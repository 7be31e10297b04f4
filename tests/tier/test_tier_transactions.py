"""read_committed over the bucket: aborted transactions whose segments left the disk.

The aborted transactions of remote segments come from their uploaded transaction
indexes; a read_committed consumer reading from offset 0 gets exactly the committed
records, and nothing past the last stable offset while a transaction is open.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_helpers import make_topic

from .tierutil import TOPIC_CONFIG, Bucket, local_segments, read_until, wait_for


def _txn_producer(bootstrap: str, tid: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 0})
    p.init_transactions(30)
    return p


def test_read_committed_from_the_bucket(broker_factory, bucket: Bucket) -> None:
    b = broker_factory(**bucket.settings())
    topic = "txn-tiered"
    make_topic(b.bootstrap, topic, 1, TOPIC_CONFIG)
    p = _txn_producer(b.bootstrap, "tier-tx")
    committed: list[bytes] = []
    everything: list[bytes] = []
    # 12 transactions of 8 records (~300 B each): many segments, the aborted ones
    # spread over segment boundaries
    for t in range(12):
        p.begin_transaction()
        for i in range(8):
            v = f"t{t:02d}-{i}-".encode() + bytes([t]) * 300
            p.produce(topic, value=v, partition=0)
            everything.append(v)
            if t % 3 != 1:
                committed.append(v)
        p.flush(10)
        if t % 3 == 1:
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
    # 12 x 8 records + 12 markers
    end = 12 * 9

    def gone() -> bool:
        m = bucket.manifest(topic)
        segs = local_segments(b.data_dir, topic)
        return bool(m and m.end_offset >= end - 9 and segs and segs[0] >= end - 20)

    wait_for(gone, what="the transactions to leave the disk")
    m = bucket.manifest(topic)
    assert m is not None and any(s.has_txn_index for s in m.segments)
    assert local_segments(b.data_dir, topic)[0] > 9  # the first abort is remote only

    got = read_until(b.bootstrap, topic, "read_committed", end)
    assert [v for _, v in got] == committed
    # offsets: transaction t's records are at t*9 .. t*9+7, its marker at t*9+8
    assert [o for o, _ in got] == [t * 9 + i for t in range(12) if t % 3 != 1 for i in range(8)]
    raw = read_until(b.bootstrap, topic, "read_uncommitted", end)
    assert [v for _, v in raw] == everything

    # an open transaction holds the last stable offset: read_committed stops before it
    p.begin_transaction()
    p.produce(topic, value=b"open-1", partition=0)
    p.flush(10)
    c = Consumer(
        {"bootstrap.servers": b.bootstrap, "group.id": "lso", "isolation.level": "read_committed"}
    )
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, end)
    finally:
        c.close()
    got = read_until(b.bootstrap, topic, "read_committed", end)
    assert [v for _, v in got] == committed
    p.commit_transaction(30)
    got = read_until(b.bootstrap, topic, "read_committed", end + 2)
    assert [v for _, v in got] == [*committed, b"open-1"]
    assert got[-1][0] == end
