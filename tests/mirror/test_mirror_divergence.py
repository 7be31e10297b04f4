"""A source whose log diverges from the copy at offsets already copied, and producer ids of
copied data kept out of local allocation.

The source is a small in-process Kafka leader (``fake_source``) whose log the test
rewrites as an unclean election would: same offsets, other batches, a higher epoch.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fake_source import FakeSource, make_batches
from kafka_helpers import RawClient, make_topic
from mirror_helpers import batches, mirror_settings, wait_until
from test_mirror_ops import metric

from shazamq.protocol.messages import InitProducerIdRequest
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.records import iter_batches

pytestmark = pytest.mark.timeout(240)


def _mirror_of(broker_factory, source: FakeSource, **extra):
    return broker_factory(
        **mirror_settings(
            bootstrap_servers=f"127.0.0.1:{source.port}", topic_whitelist=[source.topic], **extra
        )
    )


@pytest.mark.parametrize(
    ("how", "diverging_epoch", "report_epochs"),
    [
        # a Kafka 2.7+ leader: Fetch answers diverging_epoch; its metadata hides the epoch
        # change here, so only that answer can reveal the divergence
        ("fetch", True, False),
        # a source whose Fetch ignores last_fetched_epoch: OffsetForLeaderEpoch on the
        # leader epoch change finds it
        ("epoch check", False, True),
    ],
)
def test_source_diverging_at_copied_offsets_is_cut_back_and_recopied(
    broker_factory, how: str, diverging_epoch: bool, report_epochs: bool
) -> None:
    source = FakeSource("div", diverging_epoch=diverging_epoch, report_epochs=report_epochs)
    source.start()
    try:
        source.append(make_batches(0, 5, epoch=0, tag="old"))  # offsets 0-9
        mirror = _mirror_of(broker_factory, source)
        wait_until(lambda: batches(mirror.port, "div", 0) == source.log(), 60, "first copy")
        # unclean election: offsets 4-9 are rewritten under epoch 3, the end stays at 10
        # (a fetch at 10 finds nothing new: without epochs the copy would keep old 4-9)
        source.rewrite(4, 3, make_batches(4, 3, epoch=3, tag="new"))
        wait_until(lambda: batches(mirror.port, "div", 0) == source.log(), 60, "recopied")
        got = batches(mirror.port, "div", 0)
        assert [b for b, _ in got] == [0, 2, 4, 6, 8]
        assert b"new-4" in got[2][1] and b"old-2" in got[1][1]
        labels = {"source": "src", "topic": "div", "partition": "0"}
        assert metric(mirror.metrics_port, "shazamq_mirror_divergences_total", **labels) == 1
        text = mirror.log_text()
        assert "diverges from the copy at offset 4" in text
        assert f"found by {how}" in text
        # copying continues after the cut, at the source's offsets
        source.append(make_batches(10, 2, epoch=3, tag="more"))
        wait_until(lambda: batches(mirror.port, "div", 0) == source.log(), 60, "continued")
        # read_committed sees the new records (the LSO followed the cut)
        got_committed = batches(mirror.port, "div", 0, isolation=1)
        assert got_committed == source.log()
    finally:
        source.stop()


def _init_producer_id(port: int) -> int:
    c = RawClient(port)
    try:
        resp = c.request(
            InitProducerIdRequest(
                transactional_id=None,
                transaction_timeout_ms=60000,
                producer_id=-1,
                producer_epoch=-1,
            ),
            4,
        )
        assert resp.error_code == 0, resp.error_code
        return resp.producer_id
    finally:
        c.close()


def test_producer_ids_of_copied_data_are_never_handed_out_locally(broker_factory) -> None:
    """Copied batches carry the source's producer ids (0 and 1 here, as a fresh Kafka
    hands out). A local producer must never get one: after promotion its sequences would
    be checked against the source producer's (and its first record dropped as a
    duplicate, or refused)."""
    source = FakeSource("pids").start()
    try:
        source.append(make_batches(0, 2, epoch=0, tag="p0", producer_id=0))
        source.append(make_batches(4, 2, epoch=0, tag="p1", producer_id=1))
        mirror = _mirror_of(broker_factory, source)
        wait_until(lambda: batches(mirror.port, "pids", 0) == source.log(), 60, "copy")
        assert _init_producer_id(mirror.port) > 1
        # recorded durably: a restart does not hand them out either
        mirror.restart()
        assert _init_producer_id(mirror.port) > 1
        # promoted, the topic takes an idempotent local producer's records after the copy's
        mirror.stop()
        mirror.settings.update(
            mirror_settings(
                bootstrap_servers=f"127.0.0.1:{source.port}",
                topic_whitelist=["pids"],
                promoted_topics=["pids"],
            )
        )
        mirror.start()
        wait_until(lambda: "topic pids promoted" in mirror.log_text(), 60, "promotion")
        p = Producer({"bootstrap.servers": mirror.bootstrap, "enable.idempotence": True})
        p.produce("pids", value=b"local-0", partition=0)
        assert p.flush(30) == 0
        c = Consumer(
            {
                "bootstrap.servers": mirror.bootstrap,
                "group.id": "pid-check",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        c.assign([TopicPartition("pids", 0, 0)])
        values = []
        deadline_polls = 100
        while len(values) < 9 and deadline_polls:
            deadline_polls -= 1
            m = c.poll(0.5)
            if m is not None and not m.error():
                values.append((m.offset(), m.value()))
        c.close()
        assert values[-1] == (8, b"local-0")
    finally:
        source.stop()


def _fetch_v12(port: int, topic: str, offset: int, last_epoch: int):
    c = RawClient(port)
    try:
        req = FetchRequest(
            replica_id=-1,
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=1 << 20,
            isolation_level=0,
            topics=[
                FetchTopic(
                    topic=topic,
                    partitions=[
                        FetchPartition(
                            partition=0,
                            fetch_offset=offset,
                            last_fetched_epoch=last_epoch,
                            partition_max_bytes=1 << 20,
                        )
                    ],
                )
            ],
        )
        return c.request(req, 12).responses[0].partitions[0]
    finally:
        c.close()


def test_a_shazamq_source_answers_diverging_epoch(shared_broker, topic_name: str) -> None:
    """As a Kafka 2.7+ leader does, so a mirror of a Shazamq cluster (and its own
    followers) learn at the next fetch where their log parted from this one."""
    make_topic(shared_broker.bootstrap, topic_name, 1)
    p = Producer({"bootstrap.servers": shared_broker.bootstrap})
    for i in range(3):
        p.produce(topic_name, value=b"v%d" % i, partition=0)
        p.flush(30)
    epoch = _headers(shared_broker, topic_name)[-1][1].partition_leader_epoch
    assert epoch >= 0
    # in step: records from the position
    pd = _fetch_v12(shared_broker.port, topic_name, 1, epoch)
    assert pd.error_code == 0 and pd.diverging_epoch.end_offset == -1 and pd.records
    # a log that holds this epoch past where this one's ends: parted at this one's end
    pd = _fetch_v12(shared_broker.port, topic_name, 7, epoch)
    assert pd.error_code == 0 and not pd.records
    assert (pd.diverging_epoch.epoch, pd.diverging_epoch.end_offset) == (epoch, 3)
    # no epoch given: as before (out of range)
    pd = _fetch_v12(shared_broker.port, topic_name, 7, -1)
    assert pd.error_code == 1 and pd.diverging_epoch.end_offset == -1
    # an epoch newer than any here: this leader cannot tell, and serves as before
    assert _fetch_v12(shared_broker.port, topic_name, 3, epoch + 5).diverging_epoch.end_offset == -1


def _headers(broker, topic: str):
    return [(b, next(iter_batches(raw))[1]) for b, raw in batches(broker.port, topic, 0)]
