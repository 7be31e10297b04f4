"""Total retention counts the bucket: past retention.bytes the oldest remote segments
leave the manifest first and the bucket after, and the log start follows."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition
from kafka_helpers import make_topic

from .tierutil import Bucket, consume_all, local_segments, produce, wait_for

RETENTION_BYTES = 12_000


def test_retention_bytes_deletes_remote_segments(broker_factory, bucket: Bucket) -> None:
    b = broker_factory(**bucket.settings())
    topic = "bounded"
    make_topic(
        b.bootstrap,
        topic,
        1,
        {
            "segment.bytes": "4000",
            "local.retention.ms": "0",
            "local.retention.bytes": "-1",
            "retention.bytes": str(RETENTION_BYTES),
        },
    )
    # ~70 kB: far more than retention.bytes, all of it uploaded before retention runs
    values = produce(b.bootstrap, topic, 200)

    def trimmed():  # type: ignore[no-untyped-def]
        m = bucket.manifest(topic)
        return m and m.end_offset >= 180 and m.log_start_offset > 0 and m

    m = wait_for(trimmed, what="remote retention")

    def settled():  # type: ignore[no-untyped-def]
        m = bucket.manifest(topic)
        local = sum(
            p.stat().st_size
            for p in (b.data_dir / f"{topic}-0").glob("*.log")
            if int(p.name[:20]) >= m.end_offset
        )
        total = m.size_bytes + local
        # Kafka's rule: delete the oldest while what stays is still at least the limit
        return total - m.segments[0].size < RETENTION_BYTES and m

    m = wait_for(settled, what="the whole log within retention.bytes")
    # within one segment of the limit, far below the ~70 kB produced
    assert m.size_bytes < RETENTION_BYTES + max(s.size for s in m.segments)
    assert m.log_start_offset == m.segments[0].base_offset > 0
    # the deleted segments' objects are gone from the bucket: only referenced ones remain.
    # The objects are listed before the manifest is read, so one listed is referenced by
    # then unless its upload is still in flight (its objects are written before the
    # manifest names them: the last segment, rolled by max_upload_interval): wait for that
    prefix = f"topics/{topic}-{m.topic_id}/0/"

    def unreferenced() -> list[str]:
        objects = [k for k in bucket.objects() if k.startswith(prefix)]
        now = bucket.manifest(topic)
        assert now is not None
        referenced = {f"{prefix}{s.base_offset:020d}-{s.upload_id}" for s in now.segments}
        return [
            k
            for k in objects
            if k != prefix + "manifest.json" and k.rsplit(".", 1)[0] not in referenced
        ]

    wait_for(lambda: unreferenced() == [], what="only referenced objects in the bucket")
    assert not any(k.startswith(f"{prefix}{0:020d}-") for k in bucket.objects())
    m2 = bucket.manifest(topic)
    assert m2 is not None

    # the log now starts at the manifest's start; reading from there gives the same bytes
    start = m2.log_start_offset
    assert local_segments(b.data_dir, topic)[0] >= start
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "lo"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()
    assert (low, high) == (start, 200)
    got = consume_all(b.bootstrap, topic, 200 - start, start=start)
    assert [o for o, _ in got] == list(range(start, 200))
    assert [v for _, v in got] == values[start:]
