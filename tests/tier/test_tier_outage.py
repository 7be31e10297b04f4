"""The bucket comes back: many partitions catch up together, and a bucket that turns out
to hold another cluster is left alone.

A broker restarted while its bucket answers only 500s serves its local data; once the
bucket answers again every partition's uploader starts (several at once) and uploads
what the bucket lacks. A broker that reaches the bucket only after its start wait and
finds another cluster's document there says so (log, metric) and never writes to it.
"""

from __future__ import annotations

import urllib.request

from confluent_kafka import Producer
from kafka_helpers import make_topic

from shazamq.broker.tier.manifest import CLUSTER_KEY, PartitionManifest, decode_manifest
from shazamq.broker.tier.s3 import S3Store
from tests.conftest import BrokerProcess

from .tierutil import T0, Bucket, consume_all, produce, wait_for

PARTITIONS = 40
PER_ROUND = 10  # records per partition per round (a few segments of segment.bytes 4000)


def _gauge(b: BrokerProcess, name: str) -> float | None:
    url = f"http://127.0.0.1:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def _produce_all(bootstrap: str, topic: str, start: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for part in range(PARTITIONS):
        for i in range(start, start + PER_ROUND):
            value = f"p{part}-{i:06d}-".encode() + bytes([i % 251]) * 300
            p.produce(topic, value=value, partition=part, timestamp=T0 + i)
    assert p.flush(30) == 0


def _manifests(bucket: Bucket, topic: str) -> dict[int, PartitionManifest]:
    """Every partition's manifest in the bucket, read in one session."""

    async def go(s: S3Store) -> dict[int, PartitionManifest]:
        found = {}
        for o in await s.list("topics/"):
            if o.key.startswith(f"topics/{topic}-") and o.key.endswith("/manifest.json"):
                found[int(o.key.split("/")[-2])] = decode_manifest(await s.get(o.key))
        return found

    return bucket.run(go)


def _ends(bucket: Bucket, topic: str) -> dict[int, int]:
    return {p: m.end_offset for p, m in _manifests(bucket, topic).items()}


def test_many_partitions_catch_up_once_the_bucket_answers(broker_factory, fault_proxy) -> None:
    bucket = Bucket(fault_proxy.endpoint)
    bucket.create()
    b = broker_factory(**bucket.settings())
    topic = "many"
    make_topic(b.bootstrap, topic, PARTITIONS, {"segment.bytes": "4000"})
    _produce_all(b.bootstrap, topic, 0)
    assert b.stop() == 0  # the tails go up at SIGTERM
    before = _manifests(bucket, topic)
    assert _ends(bucket, topic) == dict.fromkeys(range(PARTITIONS), PER_ROUND)

    # restarted with the bucket away: local data is served and grows, nothing goes up
    fault_proxy.mode = "500"
    b.start()
    _produce_all(b.bootstrap, topic, PER_ROUND)
    faults = fault_proxy.faults
    wait_for(lambda: fault_proxy.faults > faults + 2, what="the bucket asked while away")
    assert _gauge(b, "shazamq_tier_bucket_reachable") == 0
    got = consume_all(b.bootstrap, topic, 2 * PER_ROUND, partition=PARTITIONS - 1)
    assert [o for o, _ in got] == list(range(2 * PER_ROUND))

    # back: every partition's manifest reaches its high watermark
    fault_proxy.mode = "ok"
    wait_for(
        lambda: _ends(bucket, topic) == dict.fromkeys(range(PARTITIONS), 2 * PER_ROUND),
        timeout=90,
        what="every partition's manifest to catch up",
    )
    after = _manifests(bucket, topic)
    for p, m in before.items():
        # continued from the manifest read when the bucket came back: nothing uploaded
        # again, nothing lost
        assert after[p].segments[: len(m.segments)] == m.segments
        assert after[p].log_start_offset == 0
    wait_for(lambda: _gauge(b, "shazamq_tier_bucket_reachable") == 1, what="reachable again")
    assert b.log_text().count("the bucket answers again") == 1
    assert "the bucket is not answering" not in b.log_text()  # (the start said so)

    # away again while the broker runs, and a new topic's uploaders cannot start (nor
    # the running ones upload): all of them catch up once it is back, and the broker
    # says the bucket is reachable again
    fault_proxy.mode = "500"
    make_topic(b.bootstrap, "more", PARTITIONS, {"segment.bytes": "4000"})
    _produce_all(b.bootstrap, "more", 0)
    _produce_all(b.bootstrap, topic, 2 * PER_ROUND)
    # (the store's retry schedule runs out first)
    wait_for(
        lambda: b.log_text().count("the bucket is not answering") == 1,
        what="the outage noticed",
    )
    assert _gauge(b, "shazamq_tier_bucket_reachable") == 0
    fault_proxy.mode = "ok"
    for name, end in (("more", PER_ROUND), (topic, 3 * PER_ROUND)):
        wait_for(
            lambda name=name, end=end: _ends(bucket, name) == dict.fromkeys(range(PARTITIONS), end),
            timeout=90,
            what=f"{name}: every partition's manifest to catch up",
        )
    wait_for(lambda: _gauge(b, "shazamq_tier_bucket_reachable") == 1, what="reachable again")
    assert b.log_text().count("the bucket answers again") == 2


def test_bucket_of_another_cluster_found_late_is_left_alone(broker_factory, fault_proxy) -> None:
    """A restart that reaches the bucket only after its start wait, and finds another
    cluster's document there, serves its local data with the tier off: one error in the
    log, shazamq_tier_bucket_refused 1, not one write or deletion in the bucket and no
    request at all once refused, up to and through its clean shutdown."""
    bucket = Bucket(fault_proxy.endpoint)
    bucket.create()
    owner = broker_factory(**bucket.settings())
    make_topic(owner.bootstrap, "theirs", 1, {"segment.bytes": "4000"})
    produce(owner.bootstrap, "theirs", 30)
    assert owner.stop() == 0
    objects = bucket.objects()
    document = bucket.get(CLUSTER_KEY)

    # another cluster's broker, with local data of its own, pointed at that bucket
    other = broker_factory()
    make_topic(other.bootstrap, "ours", 1, {"segment.bytes": "4000", "local.retention.ms": "0"})
    values = produce(other.bootstrap, "ours", 60)
    assert other.stop() == 0
    clash = BrokerProcess(other.data_dir, **bucket.settings())
    fault_proxy.mode = "500"
    clash.start()
    try:
        assert _gauge(clash, "shazamq_tier_bucket_refused") == 0  # not read yet
        seen = len(fault_proxy.seen)
        fault_proxy.mode = "ok"
        wait_for(lambda: _gauge(clash, "shazamq_tier_bucket_refused") == 1, what="refusal")
        refused_at = len(fault_proxy.seen)
        values += produce(clash.bootstrap, "ours", 30, start=60)
        got = consume_all(clash.bootstrap, "ours", 90)
        assert [v for _, v in got] == values  # everything local, none of it deleted
        assert _gauge(clash, "shazamq_tier_bucket_reachable") == 1
    finally:
        assert clash.stop() == 0  # its last supervision round and tail uploads too
    writes = [line for line in fault_proxy.seen[seen:] if not line.startswith(("GET ", "HEAD "))]
    assert writes == []
    assert fault_proxy.seen[refused_at:] == []  # nor any request once refused
    assert bucket.objects() == objects
    assert bucket.get(CLUSTER_KEY) == document
    text = clash.log_text()
    assert text.count("refusing to mix two histories") == 1
    assert "uploads catch up" not in text
