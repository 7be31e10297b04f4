"""Client quotas in the replicated metadata: altered through one broker, enforced by another.

Three brokers. A ``producer_byte_rate`` quota on a client id is set through broker 0;
broker 2 describes it once the record has applied there, and throttles that client id's
produce requests to a partition it leads (throttle_time_ms > 0) while another client id
producing to the same partition is never throttled. Removing the quota through broker 1
ends the throttling on broker 2.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.groups.kafka_wire import WireClient
from tests.quotas.quota_wire import alter_request, describe_request, described, produce_request

from . import netns as netns_mod
from .conftest import ClusterFactory, deep_merge
from .test_cluster_basic import FAST_CLUSTER, wait_for

pytestmark = pytest.mark.slow

NETNS = netns_mod.available() is None
QUOTA_CLUSTER: dict[str, Any] = deep_merge(
    FAST_CLUSTER,
    {
        "replication": {"default_replication_factor": 1, "min_insync_replicas": 1},
        "quotas": {"window_num": 3},
    },
)
CAPPED = {"client-id": "capped"}


def throttles(bootstrap: str, client_id: str, topic: str, partition_data: Any, n: int) -> list[int]:
    """Produce up to ``n`` requests of 10 KB, stopping at the first throttled answer."""
    got: list[int] = []
    with WireClient(bootstrap, client_id=client_id) as c:
        for _ in range(n):
            resp = c.call(partition_data, 9)
            assert resp.responses[0].partition_responses[0].error_code == 0
            got.append(resp.throttle_time_ms)
            if resp.throttle_time_ms:
                break
    return got


def test_a_quota_altered_through_one_broker_is_enforced_by_another(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory.start(3, netns=NETNS, extra_config=QUOTA_CLUSTER)
    b0, b1, b2 = cluster
    admin = AdminClient({"bootstrap.servers": b0.bootstrap})
    wait_for(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 40, "3 brokers")
    topic = f"quota-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(20)

    def led_by_each() -> list[Any] | None:
        parts = list(admin.list_topics(topic, timeout=5).topics[topic].partitions.values())
        return parts if {p.leader for p in parts} == {0, 1, 2} else None

    partitions = wait_for(led_by_each, 40, "a partition led by each broker")
    on_b2 = next(p.id for p in partitions if p.leader == b2.node_id)
    req = produce_request(topic, b"c" * 10_000)
    req.topic_data[0].partition_data[0].index = on_b2

    with WireClient(b0.bootstrap, client_id="quota-admin") as c:
        resp = c.call(alter_request([(CAPPED, {"producer_byte_rate": 20_000.0})]), 1)
        assert resp.entries[0].error_code == 0, resp.entries[0].error_message

    def seen_on_b2() -> bool:
        with WireClient(b2.bootstrap, client_id="quota-admin") as c:
            return bool(described(c.call(describe_request([("client-id", 0, "capped")]), 1)))

    wait_for(seen_on_b2, 30, "broker 2 to apply the quota record")
    assert any(t > 0 for t in throttles(b2.bootstrap, "capped", topic, req, 10))
    assert all(t == 0 for t in throttles(b2.bootstrap, "free", topic, req, 10))

    with WireClient(b1.bootstrap, client_id="quota-admin") as c:
        resp = c.call(alter_request([(CAPPED, {"producer_byte_rate": None})]), 1)
        assert resp.entries[0].error_code == 0

    def gone_on_b2() -> bool:
        with WireClient(b2.bootstrap, client_id="quota-admin") as c:
            return not described(c.call(describe_request([]), 1))

    wait_for(gone_on_b2, 30, "broker 2 to apply the removal")
    assert all(t == 0 for t in throttles(b2.bootstrap, "capped", topic, req, 5))
