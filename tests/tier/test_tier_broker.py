"""A tiered broker, observed through real clients and the bucket itself.

Produce past many small segments; the segments go to the bucket with a manifest, leave
the disk, and consumers still read everything from offset 0, byte for byte. A kill -9
mid-upload leaves no referenced half-object; SIGTERM uploads the tail; a fresh broker on
an empty disk with the same bucket serves all of it and the group resumes.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka_helpers import make_topic

from shazamq.broker.tier.manifest import CLUSTER_KEY, PartitionManifest, decode_cluster

from .tierutil import (
    T0,
    TOPIC_CONFIG,
    Bucket,
    consume_all,
    local_segments,
    produce,
    wait_for,
)


@pytest.fixture(params=["seaweedfs", "moto", "gcs"])
def any_bucket(request: pytest.FixtureRequest) -> Bucket:
    """A bucket on each server the tests start: SeaweedFS and moto (S3), the GCS emulator."""
    if request.param == "gcs":
        b = Bucket(request.getfixturevalue("gcs_endpoint"), provider="gcs")
    else:
        name = "seaweed_endpoint" if request.param == "seaweedfs" else "moto_endpoint"
        b = Bucket(request.getfixturevalue(name))
    b.create()
    return b


def test_upload_local_deletion_remote_reads_and_restore(
    broker_factory, any_bucket: Bucket, tmp_path: Path
) -> None:
    bucket = any_bucket
    b = broker_factory(**bucket.settings())
    topic = "orders"
    make_topic(b.bootstrap, topic, 1, TOPIC_CONFIG)
    values = produce(b.bootstrap, topic, 200)

    # the segments reach the bucket with a manifest, and leave the disk
    m = wait_for(
        lambda: (m := bucket.manifest(topic)) and len(m.segments) >= 10 and m,
        what="segments in the bucket",
    )
    assert m.log_start_offset == 0 and m.segments[0].base_offset == 0
    keys = bucket.objects()
    for s in m.segments:
        stem = f"topics/{topic}-{m.topic_id}/0/{s.base_offset:020d}-{s.upload_id}"
        assert keys[stem + ".log"] == s.size
        assert stem + ".index" in keys and stem + ".timeindex" in keys
    wait_for(lambda: local_segments(b.data_dir, topic)[0] > 0, what="local deletion")
    first_local = local_segments(b.data_dir, topic)[0]
    # nothing left the disk that the bucket lacks: the manifest is read after the disk, as
    # uploads go on meanwhile and `m` above may already be older than the local deletion
    manifest = bucket.manifest(topic)
    assert manifest is not None and first_local <= manifest.end_offset

    # consumers read from 0 transparently: the same bytes at the same offsets
    got = consume_all(b.bootstrap, topic, 200)
    assert [o for o, _ in got] == list(range(200))
    assert [v for _, v in got] == values

    # ListOffsets: earliest is the bucket's start, by time finds remote records
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "lo"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 200)
        found = c.offsets_for_times([TopicPartition(topic, 0, T0 + 7)], 10)
        assert found[0].offset == 7
    finally:
        c.close()

    # a group commits; SIGTERM uploads the tail (the bucket then has every offset)
    consume_all(b.bootstrap, topic, 120, group="resume-me", start=None)
    more = produce(b.bootstrap, topic, 5, start=200)
    assert b.stop() == 0
    final = bucket.manifest(topic)
    assert final is not None and final.end_offset == 205
    meta = decode_cluster(bucket.get(CLUSTER_KEY))
    assert topic in {t.name for t in meta.topics}

    # restore: a new broker, empty disk, same bucket
    fresh = broker_factory(**bucket.settings())
    assert not local_segments(fresh.data_dir, topic) or local_segments(fresh.data_dir, topic) == [
        205
    ]
    got = consume_all(fresh.bootstrap, topic, 205)
    assert [o for o, _ in got] == list(range(205))
    assert [v for _, v in got] == values + more
    c = Consumer({"bootstrap.servers": fresh.bootstrap, "group.id": "resume-me"})
    try:
        committed = c.committed([TopicPartition(topic, 0)], timeout=15)
        assert committed[0].offset == 120
    finally:
        c.close()
    # and new records continue the offsets
    produce(fresh.bootstrap, topic, 3, start=205)
    got = consume_all(fresh.bootstrap, topic, 3, start=205)
    assert [o for o, _ in got] == [205, 206, 207]


def test_restore_refuses_another_clusters_data(
    broker_factory, bucket: Bucket, tmp_path: Path
) -> None:
    b = broker_factory(**bucket.settings())
    make_topic(b.bootstrap, "x", 1)
    wait_for(lambda: CLUSTER_KEY in bucket.objects(), what="cluster metadata")
    b.stop()
    other = broker_factory()  # a plain broker: another cluster's data dir
    other.stop()
    from tests.conftest import BrokerProcess

    clash = BrokerProcess(other.data_dir, **bucket.settings())
    with pytest.raises(RuntimeError):
        clash.start(timeout=20)
    assert "refusing to mix two histories" in clash.log_text()


def test_kill_during_uploads_leaves_no_half_object(broker_factory, bucket: Bucket) -> None:
    import crc32c

    # a slow upload budget keeps uploads in flight when the broker is killed
    b = broker_factory(**bucket.settings(tiered_storage__upload_bytes_per_second=20_000))
    topic = "crashy"
    make_topic(b.bootstrap, topic, 1, TOPIC_CONFIG)
    values = produce(b.bootstrap, topic, 300)
    wait_for(lambda: (m := bucket.manifest(topic)) and len(m.segments) >= 2, what="uploads")
    b.kill()
    before = bucket.manifest(topic)
    assert before is not None

    def check_referenced(m: PartitionManifest) -> None:
        objects = bucket.objects()
        prev_end = m.segments[0].base_offset
        for s in m.segments:
            stem = f"topics/{topic}-{m.topic_id}/0/{s.base_offset:020d}-{s.upload_id}"
            assert s.base_offset == prev_end  # no gap
            prev_end = s.next_offset
            assert objects[stem + ".log"] == s.size
            assert crc32c.crc32c(bucket.get(stem + ".log")) == s.crc32c

    check_referenced(before)
    # restart on the same disk: uploads resume from the manifest, now at full speed (the
    # budget only kept uploads in flight for the kill)
    del b.settings["tiered_storage__upload_bytes_per_second"]
    b.start()
    after = wait_for(
        lambda: (m := bucket.manifest(topic)) and m.end_offset == 300 and m,
        timeout=90,
        what="uploads to resume",
    )
    check_referenced(after)
    assert after.segments[: len(before.segments)] == before.segments  # nothing re-uploaded
    # orphans of the killed upload are gone: every segment object is referenced
    referenced = {
        f"topics/{topic}-{after.topic_id}/0/{s.base_offset:020d}-{s.upload_id}"
        for s in after.segments
    }
    for key in bucket.objects():
        if key.startswith(f"topics/{topic}-") and not key.endswith("manifest.json"):
            assert key.rsplit(".", 1)[0] in referenced, key
    got = consume_all(b.bootstrap, topic, 300)
    assert [v for _, v in got] == values


def test_bucket_outage_keeps_local_data_and_catches_up(broker_factory, fault_proxy) -> None:
    """500s and throttling from the bucket: produce and consume go on, nothing leaves
    the disk that the bucket lacks, and uploads catch up once it answers again."""
    bucket = Bucket(fault_proxy.endpoint)
    bucket.create()
    b = broker_factory(**bucket.settings())
    topic = "outage"
    make_topic(b.bootstrap, topic, 1, TOPIC_CONFIG)
    fault_proxy.mode = "500"
    values = produce(b.bootstrap, topic, 150)
    fault_proxy.mode = "slowdown"
    values += produce(b.bootstrap, topic, 50, start=150)
    time.sleep(2)
    assert local_segments(b.data_dir, topic)[0] == 0  # nothing deleted: not in the bucket
    got = consume_all(b.bootstrap, topic, 200)
    assert [v for _, v in got] == values
    fault_proxy.mode = "ok"
    m = wait_for(
        lambda: (m := bucket.manifest(topic)) and m.end_offset == 200 and m,
        timeout=90,
        what="catch-up",
    )
    assert m.segments[0].base_offset == 0
    wait_for(lambda: local_segments(b.data_dir, topic)[0] > 0, what="local deletion after")
    got = consume_all(b.bootstrap, topic, 200)
    assert [v for _, v in got] == values
    assert fault_proxy.faults > 0


def _gauge(b, name: str) -> float | None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def test_restart_with_an_unreachable_bucket_serves_local_data_at_once(
    broker_factory, fault_proxy
) -> None:
    """A broker with local data restarted while the bucket answers only 500s starts in
    seconds (not after the store's retry schedule), serves every local record and new
    ones, reports the bucket unreachable, and uploads what it lacks once it is back."""
    bucket = Bucket(fault_proxy.endpoint)
    bucket.create()
    b = broker_factory(**bucket.settings())
    topic = "bucket-away"
    make_topic(b.bootstrap, topic, 1, {"segment.bytes": "4000"})  # kept locally (24 h)
    values = produce(b.bootstrap, topic, 100)
    wait_for(lambda: (m := bucket.manifest(topic)) and m.end_offset > 0, what="an upload")
    assert b.stop() == 0

    fault_proxy.mode = "500"
    began = time.monotonic()
    b.start()
    assert time.monotonic() - began < 12, "the start waited for the bucket"
    assert _gauge(b, "shazamq_tier_bucket_reachable") == 0
    got = consume_all(b.bootstrap, topic, 100)
    assert [v for _, v in got] == values
    values += produce(b.bootstrap, topic, 20, start=100)
    got = consume_all(b.bootstrap, topic, 120)
    assert [o for o, _ in got] == list(range(120))
    assert [v for _, v in got] == values
    assert local_segments(b.data_dir, topic)[0] == 0
    assert _gauge(b, "shazamq_tier_bucket_reachable") == 0

    fault_proxy.mode = "ok"
    wait_for(
        lambda: (m := bucket.manifest(topic)) and m.end_offset >= 110,
        timeout=90,
        what="catch-up once the bucket answers",
    )
    wait_for(lambda: _gauge(b, "shazamq_tier_bucket_reachable") == 1, what="reachable again")
    assert _gauge(b, "shazamq_tier_bucket_refused") == 0
