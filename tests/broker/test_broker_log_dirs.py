"""Several log dirs on one broker: DescribeLogDirs and AlterReplicaLogDirs.

Two log dirs, topics spread over both; a partition moved to the other dir while a
producer writes to it, every record then consumed at its offset; a restart loads both
dirs; the error codes; an offline dir; a partition in two dirs refusing the start;
malformed frames.
"""

from __future__ import annotations

import json
import os
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient
from kafka_helpers import RawClient, make_topic

from shazamq.config import ConfigError, parse_config
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_replica_log_dirs_request import (
    AlterReplicaLogDir,
    AlterReplicaLogDirsRequest,
    AlterReplicaLogDirTopic,
)
from shazamq.protocol.messages.describe_log_dirs_request import DescribeLogDirsRequest
from tests.broker.test_broker_malformed import connect, frame, header, is_closed


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def placement(bootstrap: str) -> dict[tuple[str, int], tuple[str, bool]]:
    """(topic, partition, is_future) -> log dir, from kafka-python's describe_log_dirs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (broker,) = admin.describe_log_dirs()
    finally:
        admin.close()
    out = {}
    for d in broker["log_dirs"]:
        assert d["error_code"] == 0, d
        assert d["total_bytes"] > 0 and 0 <= d["usable_bytes"] <= d["total_bytes"]
        for t in d["topics"]:
            for p in t["partitions"]:
                out[(t["name"], p["partition_index"], p["is_future_key"])] = d["log_dir"]
    return out


def produce(bootstrap: str, topic: str, partition: int, n: int, tag: str) -> list[bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    values = [f"{tag}-{i}".encode() for i in range(n)]
    for v in values:
        p.produce(topic, value=v, partition=partition)
    assert p.flush(30) == 0
    return values


def consume_all(bootstrap: str, topic: str, partition: int) -> list[tuple[int, bytes]]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "log-dirs", "enable.auto.commit": False}
    )
    try:
        _low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        c.assign([TopicPartition(topic, partition, 0)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while (not got or got[-1][0] < high - 1) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.offset(), msg.value()))
        return got
    finally:
        c.close()


def test_two_dirs_spread_move_and_restart(broker_factory, tmp_path, topic_name):
    dirs = [str(tmp_path / "disk-a"), str(tmp_path / "disk-b")]
    b = broker_factory(broker__log_dirs=json.dumps(dirs))
    make_topic(b.bootstrap, topic_name, 6)
    where = placement(b.bootstrap)
    mine = {k: d for k, d in where.items() if k[0] == topic_name}
    assert len(mine) == 6
    per_dir = [sum(1 for d in where.values() if d == x) for x in dirs]
    assert abs(per_dir[0] - per_dir[1]) <= 1, where  # the fewest-partitions rule
    assert {d for d in mine.values()} == set(dirs)

    sent = produce(b.bootstrap, topic_name, 0, 300, "before")
    source = mine[(topic_name, 0, False)]
    target = next(d for d in dirs if d != source)
    admin = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        result = admin.alter_replica_log_dirs({(topic_name, 0, 0): target})
    finally:
        admin.close()
    assert [e.errno for e in result.values()] == [0]
    sent += produce(b.bootstrap, topic_name, 0, 300, "during")
    moved = os.path.join(target, f"{topic_name}-0")
    wait_for(
        lambda: (
            placement(b.bootstrap).get((topic_name, 0, False)) == target
            and (topic_name, 0, True) not in placement(b.bootstrap)
            and os.path.isdir(moved)  # the copy has its plain name: the swap is over
        ),
        60,
        "the move to finish",
    )
    assert not os.path.exists(os.path.join(source, f"{topic_name}-0"))
    assert not [n for n in os.listdir(target) if n.endswith("-future")]
    sent += produce(b.bootstrap, topic_name, 0, 50, "after")
    got = consume_all(b.bootstrap, topic_name, 0)
    assert got == list(enumerate(sent))

    b.restart()
    # (the consumer's group lookup created __consumer_offsets meanwhile: not compared)
    assert {k: d for k, d in placement(b.bootstrap).items() if k[0] == topic_name} == {
        **{k: d for k, d in mine.items() if k != (topic_name, 0, False)},
        (topic_name, 0, False): target,
    }
    assert consume_all(b.bootstrap, topic_name, 0) == list(enumerate(sent))


def test_log_dir_errors_and_malformed_frames(broker_factory, tmp_path, topic_name):
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")  # a file where a log dir should be: that dir is offline
    dirs = [str(tmp_path / "disk-a"), str(blocked)]
    b = broker_factory(broker__log_dirs=json.dumps(dirs))
    make_topic(b.bootstrap, topic_name, 2)
    c = RawClient(b.port)
    described = c.request(DescribeLogDirsRequest(topics=None), 4)
    by_dir = {r.log_dir: r for r in described.results}
    assert by_dir[dirs[1]].error_code == ErrorCode.KAFKA_STORAGE_ERROR
    assert by_dir[dirs[0]].error_code == 0
    assert {t.name for t in by_dir[dirs[0]].topics} >= {topic_name}

    def alter(path: str, topic: str, partition: int) -> int:
        req = AlterReplicaLogDirsRequest(
            dirs=[
                AlterReplicaLogDir(
                    path=path, topics=[AlterReplicaLogDirTopic(name=topic, partitions=[partition])]
                )
            ]
        )
        return c.request(req, 2).results[0].partitions[0].error_code

    assert alter(str(tmp_path / "elsewhere"), topic_name, 0) == ErrorCode.LOG_DIR_NOT_FOUND
    assert alter(dirs[1], topic_name, 0) == ErrorCode.KAFKA_STORAGE_ERROR
    assert alter(dirs[0], "no-such-topic", 0) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert alter(dirs[0], topic_name, 0) == 0  # already there
    c.close()

    for payload in (
        frame(header(34, 1) + struct.pack(">i", 2**30)),  # more dirs than bytes
        frame(header(34, 1) + struct.pack(">ih", 1, 400) + b"/x"),  # path past the end
        frame(header(35, 1) + struct.pack(">ih", 1, 3) + b"abc" + struct.pack(">i", 2**29)),
    ):
        s = connect(b)
        s.sendall(payload)
        assert is_closed(s)
        s.close()
    produce(b.bootstrap, topic_name, 0, 1, "alive")


def test_a_partition_in_two_dirs_refuses_to_start(broker_factory, tmp_path, topic_name):
    dirs = [str(tmp_path / "disk-a"), str(tmp_path / "disk-b")]
    b = broker_factory(broker__log_dirs=json.dumps(dirs))
    make_topic(b.bootstrap, topic_name, 1)
    produce(b.bootstrap, topic_name, 0, 5, "x")
    b.stop()
    (here,) = [d for d in dirs if os.path.isdir(os.path.join(d, f"{topic_name}-0"))]
    other = next(d for d in dirs if d != here)
    os.makedirs(os.path.join(other, f"{topic_name}-0"))
    with pytest.raises(Exception):  # noqa: B017 - the process exits before it listens
        b.start(timeout=30)
    text = b.log_text()
    assert os.path.join(here, f"{topic_name}-0") in text
    assert os.path.join(other, f"{topic_name}-0") in text


@pytest.mark.parametrize(
    ("dirs", "why"),
    [
        (["/srv/a", "/srv/a/"], "same directory"),
        (["/srv/a", "/srv/a/b"], "nested"),
        (["/srv/a", ""], "empty"),
    ],
)
def test_log_dirs_config_is_validated(dirs, why):
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": {"log_dirs": dirs}})
    assert "log_dirs" in str(info.value) and why in str(info.value)
