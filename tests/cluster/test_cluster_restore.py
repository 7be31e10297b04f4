"""A whole cluster restored from its tiered-storage bucket.

Three clustered brokers tier a topic to SeaweedFS while a consumer group commits; the
cluster is stopped (SIGTERM: the tails reach the bucket) and its data directories are
deleted. A new three-broker cluster on the same bucket then recreates the topics with
their ids, serves every offset from 0 byte for byte, resumes the group at its committed
offsets, and continues new records at the restored end on every replica. The brokers'
restore metrics, read with the operator's own parsers, add up to every partition restored.
An idempotent producer of the old cluster that retries its last batch into the new one
is recognised (its original offset, nothing appended) and continues its sequence, and no
new producer is given its id. A client quota set on the old cluster is described by every
new broker and enforced.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import NewTopic

from shazamq.operator.probe import parse_metrics
from shazamq.operator.restore import (
    RESTORE_METRICS,
    RestoreProgress,
    merge,
    progress_of,
    restore_status,
)
from shazamq.protocol.messages.init_producer_id_request import InitProducerIdRequest
from shazamq.protocol.records import Record
from tests.groups.kafka_wire import WireClient
from tests.kafka_helpers import RawClient
from tests.kafka_helpers import send_idempotent as send_one
from tests.quotas.quota_wire import alter_request, describe_request, described, produce_request

from .conftest import BrokerProcess, Cluster, ClusterFactory
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    deep_merge_configs,
    fully_replicated,
    topic_state,
    wait_for,
)
from .test_cluster_tier import cluster_bucket, tier_root_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]

TOPIC = "restored"
PARTITIONS = 2
PER_PARTITION = 150
GROUP = "resumer"
COMMITTED = {0: 97, 1: 120}


def metrics_text(b: BrokerProcess) -> str:
    url = f"http://{b.address}:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def log_end(b: BrokerProcess, partition: int) -> int:
    text = metrics_text(b)
    want = f'shazamq_log_end_offset{{partition="{partition}",topic="{TOPIC}"}}'
    for line in text.splitlines():
        if line.startswith(want):
            return int(float(line.rsplit(" ", 1)[1]))
    return -1


def produce(bootstrap: str, first: int, n: int) -> dict[int, list[tuple[bytes, bytes, int]]]:
    """(key, value, offset) per partition, as acknowledged."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    acked: dict[int, list[tuple[bytes, bytes, int]]] = {i: [] for i in range(PARTITIONS)}

    def done(err: Any, msg: Any) -> None:
        assert err is None, err
        acked[msg.partition()].append((msg.key(), msg.value(), msg.offset()))

    for i in range(first, first + n):
        for part in range(PARTITIONS):
            v = b"v-%d-%06d-" % (part, i) + bytes([i % 251]) * 200
            p.produce(TOPIC, key=b"k-%06d" % i, value=v, partition=part, on_delivery=done)
        if i % 20 == 19:
            p.flush(30)
    assert p.flush(30) == 0
    return acked


def consume_from_zero(bootstrap: str, expect: int) -> dict[int, list[tuple[bytes, bytes, int]]]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    got: dict[int, list[tuple[bytes, bytes, int]]] = {i: [] for i in range(PARTITIONS)}
    try:
        c.assign([TopicPartition(TOPIC, i, 0) for i in range(PARTITIONS)])
        deadline = time.monotonic() + 90
        while sum(len(v) for v in got.values()) < expect and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got[m.partition()].append((m.key(), m.value(), m.offset()))
        return got
    finally:
        c.close()


IDEMPOTENT = "idempotent"
CAPPED = {(("client-id", "capped"),): {"producer_byte_rate": 20_000.0}}


def leader_client(cluster: Cluster, topic: str) -> RawClient:
    """A raw connection to the leader of ``topic``'s partition 0."""
    leader = wait_for(
        lambda: (s := topic_state(cluster.bootstrap, topic).get(0)) and s[0] >= 0 and s[0],
        30,
        f"a leader of {topic}-0",
    )
    b = cluster.broker(leader)
    return RawClient(b.port, host=b.address)


def new_producer_id(cluster: Cluster) -> int:
    client = RawClient(cluster[0].port, host=cluster[0].address)
    try:
        init = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=-1)

        def issued() -> int | None:
            resp = client.request(init, 4)
            return resp.producer_id if resp.error_code == 0 else None

        return int(wait_for(issued, 30, "a producer id"))
    finally:
        client.close()


def send_idempotent(client: RawClient, pid: int, seq: int) -> tuple[int, int]:
    """One batch of one record, sequence ``seq``, acks=all; (error, base offset)."""
    record = Record(offset_delta=0, key=b"k%d" % seq, value=b"idempotent-%06d" % seq)
    return send_one(client, IDEMPOTENT, record, pid, seq)


def topic_id(bootstrap: str) -> str:
    client = admin(bootstrap)
    desc = client.describe_topics(TopicCollection([TOPIC]))[TOPIC].result(20)
    return str(desc.topic_id)


def test_new_cluster_restores_from_the_bucket(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster_bucket(tmp_path, monkeypatch) as (s3_port, bucket):
        root_config = tier_root_config(bucket, s3_port)

        extra = deep_merge_configs(
            FAST_CLUSTER,
            {"storage": {"retention_check_interval_ms": 300}, "quotas": {"window_num": 3}},
        )
        old = cluster_factory.start(3, netns=NETNS, extra_config=extra, root_config=root_config)
        client = admin(old.bootstrap)
        client.create_topics(
            [
                NewTopic(
                    TOPIC,
                    PARTITIONS,
                    3,
                    config={"segment.bytes": "6000", "local.retention.ms": "0"},
                ),
                NewTopic(IDEMPOTENT, 1, 3),
            ]
        )[TOPIC].result(20)
        wait_for(lambda: fully_replicated(old.bootstrap, TOPIC, PARTITIONS), 30, "replicated")
        wait_for(lambda: fully_replicated(old.bootstrap, IDEMPOTENT, 1), 30, "replicated")
        pid = new_producer_id(old)
        raw = leader_client(old, IDEMPOTENT)
        for seq in range(3):
            assert send_idempotent(raw, pid, seq) == (0, seq)
        raw.close()
        with WireClient(old[0].bootstrap, client_id="quota-admin") as c:
            entries = [(dict(e), dict(v)) for e, v in CAPPED.items()]
            assert c.call(alter_request(entries), 1).entries[0].error_code == 0  # type: ignore[arg-type]
        old_id = topic_id(old.bootstrap)
        acked = produce(old.bootstrap, 0, PER_PARTITION)
        group = Consumer(
            {"bootstrap.servers": old.bootstrap, "group.id": GROUP, "enable.auto.commit": False}
        )
        group.commit(
            offsets=[TopicPartition(TOPIC, i, o) for i, o in COMMITTED.items()],
            asynchronous=False,
        )
        group.close()
        for b in old:  # SIGTERM: each uploads its tail; the last one leads everything
            assert b.terminate() == 0, b.log_tail()
        for b in old:
            shutil.rmtree(b.data_dir)

        new = cluster_factory.start(3, netns=NETNS, extra_config=extra, root_config=root_config)
        wait_for(lambda: fully_replicated(new.bootstrap, TOPIC, PARTITIONS), 60, "restored")
        assert topic_id(new.bootstrap) == old_id

        # the old producer retries its last batch: a duplicate at its original offset,
        # and its next sequence follows; a new producer gets an id of its own
        wait_for(lambda: fully_replicated(new.bootstrap, IDEMPOTENT, 1), 60, "restored")
        raw = leader_client(new, IDEMPOTENT)
        try:
            assert send_idempotent(raw, pid, 2) == (0, 2)
            assert send_idempotent(raw, pid, 3) == (0, 3)
        finally:
            raw.close()
        assert new_producer_id(new) > pid

        # the quota is back on every broker, and the leader throttles the capped client
        def quotas_on(b: BrokerProcess) -> object:
            with WireClient(b.bootstrap, client_id="quota-admin") as c:
                return described(c.call(describe_request([]), 1))

        for b in new:
            wait_for(lambda b=b: quotas_on(b) == CAPPED, 30, f"the quota on broker {b.node_id}")
        leader = new.broker(topic_state(new.bootstrap, IDEMPOTENT)[0][0])
        req = produce_request(IDEMPOTENT, b"q" * 10_000)
        throttled = []
        with WireClient(leader.bootstrap, client_id="capped") as c:
            for _ in range(10):
                resp = c.call(req, 9)
                assert resp.responses[0].partition_responses[0].error_code == 0
                throttled.append(resp.throttle_time_ms)
                if resp.throttle_time_ms:
                    break
        assert throttled[-1] > 0, throttled

        got = consume_from_zero(new.bootstrap, PARTITIONS * PER_PARTITION)
        for i in range(PARTITIONS):
            assert got[i] == acked[i], f"partition {i} differs after the restore"

        group = Consumer(
            {
                "bootstrap.servers": new.bootstrap,
                "group.id": GROUP,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            committed = group.committed(
                [TopicPartition(TOPIC, i) for i in range(PARTITIONS)], timeout=30
            )
            assert {tp.partition: tp.offset for tp in committed} == COMMITTED
            group.subscribe([TOPIC])
            first: dict[int, int] = {}
            deadline = time.monotonic() + 60
            while len(first) < PARTITIONS and time.monotonic() < deadline:
                m = group.poll(1.0)
                if m is not None and m.error() is None:
                    first.setdefault(m.partition(), m.offset())
            assert first == COMMITTED
        finally:
            group.close()

        # what the operator reads of it: every partition restored, counted once
        def report() -> RestoreProgress | None:
            return merge(progress_of(parse_metrics(metrics_text(b), RESTORE_METRICS)) for b in new)

        def done() -> bool:
            r = report()
            return r is not None and not r.in_progress and r.restored == r.partitions

        wait_for(done, 60, "the brokers to report the restore done")
        r = report()
        assert r is not None and r.brokers == 3 and r.partitions >= PARTITIONS and r.bytes > 0
        status = restore_status(None, r, expected_brokers=3, now="2026-01-01T00:00:00Z")
        assert status is not None and status["state"] == "Restored"
        assert status["partitionsRestored"] == status["partitions"]

        more = produce(new.bootstrap, PER_PARTITION, 20)
        for i in range(PARTITIONS):
            assert [o for _, _, o in more[i]] == list(range(PER_PARTITION, PER_PARTITION + 20))
        end = PER_PARTITION + 20
        wait_for(
            lambda: all(log_end(b, i) == end for b in new for i in range(PARTITIONS)),
            30,
            "every replica at the new end",
        )
        got = consume_from_zero(new.bootstrap, PARTITIONS * end)
        for i in range(PARTITIONS):
            assert got[i] == acked[i] + more[i]
        new.stop_all()
