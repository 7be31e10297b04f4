"""Hardening of a single broker: delete and recreate, partition limits, start-up.

* A topic deleted and created again at once (under produce load, or with a kill -9
  between the two) comes back empty: the old partition folders are renamed away at
  delete time and folders the metadata does not know are quarantined at start.
* CreateTopics / CreatePartitions beyond the configured partition limits are refused
  before anything is created.
* A broker with many partitions on disk starts after kill -9 within a modest open-file
  limit, and a partition whose folder cannot be opened goes offline while the rest serve.
"""

from __future__ import annotations

import threading
import time
import urllib.request

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec
from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.create_partitions_request import (
    CreatePartitionsRequest,
    CreatePartitionsTopic,
)
from shazamq.protocol.messages.create_topics_request import CreatableTopic, CreateTopicsRequest


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def _partition_count(admin: AdminClient, topic: str) -> int:
    # all topics: asking for one by name would auto-create it
    md = admin.list_topics(timeout=10).topics.get(topic)
    return 0 if md is None or md.error is not None else len(md.partitions)


def _end_offsets(admin: AdminClient, topic: str, partitions: int) -> list[int]:
    # one ListOffsets request for all partitions, where watermarks ask one at a time
    futures = admin.list_offsets(
        {TopicPartition(topic, i): OffsetSpec.latest() for i in range(partitions)},
        request_timeout=30,
    )
    return [futures[TopicPartition(topic, i)].result().offset for i in range(partitions)]


def _watermarks(
    bootstrap: str, topic: str, partitions: int, only: tuple[int, ...] | None = None
) -> list[tuple[int, int]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm", "enable.auto.commit": False})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)
            for i in (only if only is not None else range(partitions))
        ]
    finally:
        c.close()


def _recreate(bootstrap: str, topic: str, partitions: int, deadline_s: float = 20.0) -> None:
    """Create `topic`, retrying while the broker still reports it (deletion in flight)."""
    admin = _admin(bootstrap)
    deadline = time.monotonic() + deadline_s
    while True:
        fut = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        try:
            fut.result(10)
            return
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _delete(bootstrap: str, topic: str) -> None:
    admin = _admin(bootstrap)  # the handle must outlive its future
    admin.delete_topics([topic])[topic].result(10)


def test_delete_and_recreate_under_load_gives_an_empty_topic(broker_factory, topic_name):
    b = broker_factory(broker__auto_create_topics=False)
    make_topic(b.bootstrap, topic_name, 4)
    stop = threading.Event()

    def produce() -> None:
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 2, "acks": 1})
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic_name, value=b"old-%d" % i)
                i += 1
            except BufferError:
                pass
            p.poll(0.001)
        p.flush(5)

    t = threading.Thread(target=produce)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sum(hi for _lo, hi in _watermarks(b.bootstrap, topic_name, 4)) > 2000:
                break
            time.sleep(0.1)
        _delete(b.bootstrap, topic_name)
        stop.set()
        t.join(10)
        _recreate(b.bootstrap, topic_name, 4)
    finally:
        stop.set()
        t.join(10)
    admin = _admin(b.bootstrap)
    assert _partition_count(admin, topic_name) == 4
    assert _watermarks(b.bootstrap, topic_name, 4) == [(0, 0)] * 4
    p = Producer({"bootstrap.servers": b.bootstrap})
    for i in range(4):
        p.produce(topic_name, value=b"new", partition=i)
    assert p.flush(10) == 0
    assert _watermarks(b.bootstrap, topic_name, 4) == [(0, 1)] * 4
    assert "InconsistentTopicId" not in b.log_text()


def test_delete_kill_9_recreate_never_serves_old_data(broker_factory, topic_name):
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 2)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(500):
        p.produce(topic_name, value=b"old-%d" % i, partition=i % 2)
    assert p.flush(10) == 0
    _delete(b.bootstrap, topic_name)
    b.kill()  # within the window where the old folders used to linger
    b.start()
    _recreate(b.bootstrap, topic_name, 2)
    assert _watermarks(b.bootstrap, topic_name, 2) == [(0, 0)] * 2
    c = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(topic_name, i, 0) for i in range(2)])
        got = [m for m in (c.poll(0.5) for _ in range(4)) if m is not None and not m.error()]
    finally:
        c.close()
    assert got == []
    leftovers = [d.name for d in b.data_dir.iterdir() if d.name.startswith(topic_name + "-")]
    assert sorted(leftovers) == [f"{topic_name}-0", f"{topic_name}-1"]


def test_create_partitions_16_million_is_refused_at_once(broker_factory, topic_name):
    # a client frame with one field changed: no AdminClient lets this through
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 1)
    raw = RawClient(b.port)
    try:
        started = time.monotonic()
        resp = raw.request(
            CreatePartitionsRequest(
                topics=[CreatePartitionsTopic(name=topic_name, count=16_000_000, assignments=None)],
                timeout_ms=10_000,
            ),
            3,
        )
        elapsed = time.monotonic() - started
        huge = raw.request(
            CreateTopicsRequest(
                topics=[
                    CreatableTopic(
                        name=topic_name + "-huge", num_partitions=16_000_000, replication_factor=1
                    )
                ],
                timeout_ms=10_000,
            ),
            5,
        )
    finally:
        raw.close()
    (result,) = resp.results
    assert result.error_code in (ErrorCode.INVALID_PARTITIONS, ErrorCode.POLICY_VIOLATION)
    assert "max_partitions" in (result.error_message or "")
    assert elapsed < 2
    assert huge.topics[0].error_code in (ErrorCode.INVALID_PARTITIONS, ErrorCode.POLICY_VIOLATION)
    admin = _admin(b.bootstrap)
    assert _partition_count(admin, topic_name) == 1
    assert _partition_count(admin, topic_name + "-huge") == 0
    dirs = [d.name for d in b.data_dir.iterdir() if d.name.startswith(topic_name + "-")]
    assert dirs == [f"{topic_name}-0"]
    # and the broker still restarts after a kill -9
    b.kill()
    b.start()
    assert _partition_count(_admin(b.bootstrap), topic_name) == 1


def test_partition_limits_per_request_and_per_broker(broker_factory, topic_name):
    b = broker_factory(broker__max_partitions_per_request=50, broker__max_partitions=120)
    admin = _admin(b.bootstrap)
    too_many = admin.create_topics([NewTopic(topic_name, 51, 1)])[topic_name]
    try:
        too_many.result(10)
        raise AssertionError("51 partitions in one request were accepted")
    except KafkaException as exc:
        assert exc.args[0].name() in ("INVALID_PARTITIONS", "POLICY_VIOLATION")
    assert _partition_count(admin, topic_name) == 0
    make_topic(b.bootstrap, topic_name, 50)
    fut = admin.create_partitions([NewPartitions(topic_name, 100)])[topic_name]
    fut.result(10)
    # internal topics count too: fill up to the broker's 120 exactly, not one more
    hosted = sum(len(t.partitions) for t in admin.list_topics(timeout=10).topics.values())
    room = 120 - hosted
    assert room > 1
    other = topic_name + "-b"
    f2 = admin.create_topics([NewTopic(other, room + 1, 1)])[other]
    try:
        f2.result(10)
        raise AssertionError("the per-broker partition limit was not enforced")
    except KafkaException as exc:
        assert exc.args[0].name() in ("INVALID_PARTITIONS", "POLICY_VIOLATION")
    assert not any(d.name.startswith(other + "-") for d in b.data_dir.iterdir())
    make_topic(b.bootstrap, other, room)


def test_many_partitions_start_after_kill_9_with_a_low_file_limit(broker_factory, topic_name):
    # 1,000 partitions on disk, every one dirty after the kill, 2,048 descriptors at most:
    # enough for one open log per partition plus headroom, far from the three files
    # (log and two indexes) per partition written that a broker without lazy indexes holds
    n = 1000
    b = broker_factory(nofile=2048)
    admin = _admin(b.bootstrap)
    admin.create_topics([NewTopic(topic_name, n, 1)])[topic_name].result(120)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic_name, value=b"x", partition=i)
    assert p.flush(30) == 0
    b.kill()
    b.start(timeout=180)
    admin = _admin(b.bootstrap)
    assert _partition_count(admin, topic_name) == n
    for i in (0, n // 2, n - 1):
        p.produce(topic_name, value=b"y", partition=i)
    assert p.flush(10) == 0
    ends = _end_offsets(admin, topic_name, n)
    assert all(end >= 1 for end in ends)
    assert [ends[i] for i in (0, n // 2, n - 1)] == [2, 2, 2]


def test_a_partition_that_cannot_be_opened_goes_offline(broker_factory, topic_name):
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 3)
    p = Producer({"bootstrap.servers": b.bootstrap})
    for i in range(3):
        p.produce(topic_name, value=b"v", partition=i)
    assert p.flush(10) == 0
    b.stop()
    broken = b.data_dir / f"{topic_name}-1"
    seg = broken / ("0" * 20 + ".log")
    seg.unlink()
    seg.mkdir()  # a segment that cannot be opened as a file
    b.start()
    for i in (0, 2):
        p.produce(topic_name, value=b"w", partition=i)
    assert p.flush(10) == 0
    wm = _watermarks(b.bootstrap, topic_name, 3, only=(0, 2))
    assert wm == [(0, 2), (0, 2)]
    md = _admin(b.bootstrap).list_topics(timeout=10).topics[topic_name].partitions[1]
    assert md.leader == -1
    with urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "shazamq_offline_partitions 1.0" in text
    assert f"{topic_name}-1" in b.log_text()
    assert seg.is_dir()  # left as found, for the operator


def test_auto_creation_is_limited_by_name_and_partition_count(broker_factory):
    from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic

    b = broker_factory(
        broker__auto_create_topics_pattern="auto-[a-z]+",
        broker__auto_create_topics_max_partitions=3,
        broker__default_partitions=2,
    )
    raw = RawClient(b.port)

    def ask(name: str) -> int:
        req = MetadataRequest(
            topics=[MetadataRequestTopic(name=name)], allow_auto_topic_creation=True
        )
        (topic,) = raw.request(req, 9).topics
        return topic.error_code

    try:
        assert ask("other") == ErrorCode.POLICY_VIOLATION  # the name policy
        assert ask("auto-one") == ErrorCode.NONE  # 2 partitions of 3
        assert ask("auto-two") == ErrorCode.POLICY_VIOLATION  # 4 would pass the cap
        assert ask("auto-one") == ErrorCode.NONE  # existing topics are still served
        make_topic(b.bootstrap, "explicit-topic", 1)  # explicit creation is not limited
    finally:
        raw.close()
