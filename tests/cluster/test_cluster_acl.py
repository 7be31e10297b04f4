"""ACLs in the replicated metadata: created through one broker, enforced by every broker.

Three brokers with SASL SCRAM-SHA-512 and authorization on. The brokers replicate to each
other as the internal principal (a super user), so a topic of replication factor 3 stays
fully in sync while its users are denied or allowed. An ACL created through broker 0 lets
a user produce to partitions led by every broker; one deleted through broker 2 stops it
everywhere, and nothing a denied produce sent reaches any log.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from . import netns as netns_mod
from .conftest import ClusterFactory, deep_merge
from .test_cluster_basic import FAST_CLUSTER, wait_for
from .test_cluster_scram import ADMIN, ADMIN_PASSWORD, conf

pytestmark = pytest.mark.slow

NETNS = netns_mod.available() is None
USER, USER_PASSWORD = "erin", "erin-secret"
ACL_CLUSTER: dict[str, Any] = deep_merge(
    FAST_CLUSTER,
    {
        "replication": {"default_replication_factor": 3, "min_insync_replicas": 2},
        "security": {
            "sasl": {
                "enabled": True,
                "mechanisms": ["SCRAM-SHA-512"],
                "users": {ADMIN: ADMIN_PASSWORD, USER: USER_PASSWORD},
            },
            "authorization": {"enabled": True, "super_users": [f"User:{ADMIN}"]},
        },
    },
)


def produce_all(bootstrap_conf: dict[str, Any], topic: str, partitions: int) -> list[Any]:
    """One record to each partition; the delivery error of each (None when stored)."""
    errors: list[Any] = []
    producer = Producer(
        {**bootstrap_conf, "message.timeout.ms": 10000, "message.send.max.retries": 0}
    )
    for i in range(partitions):
        producer.produce(
            topic, value=b"v%d" % i, partition=i, on_delivery=lambda e, _m: errors.append(e)
        )
    producer.flush(20)
    return errors


def log_ends(admin_conf: dict[str, Any], topic: str, partitions: int) -> list[int]:
    c = Consumer({**admin_conf, "group.id": f"ends-{uuid.uuid4().hex[:6]}"})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)[1]
            for i in range(partitions)
        ]
    finally:
        c.close()


def test_acls_created_through_one_broker_are_enforced_by_every_broker(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory.start(3, netns=NETNS, extra_config=ACL_CLUSTER)
    b0, b1, b2 = cluster
    admin0 = AdminClient(conf(b0, ADMIN, ADMIN_PASSWORD))
    wait_for(
        lambda: len(admin0.list_topics(timeout=5).brokers) == 3, 40, "broker 0 to see 3 brokers"
    )
    topic = f"acl-{uuid.uuid4().hex[:8]}"
    admin0.create_topics([NewTopic(topic, 3, 3)])[topic].result(20)
    wait_for(
        lambda: (
            {
                p.leader
                for p in admin0.list_topics(topic, timeout=5).topics[topic].partitions.values()
            }
            == {0, 1, 2}
        ),
        40,
        "a partition led by each broker",
    )
    # replication runs as the internal principal, authorized although no ACL names it
    wait_for(
        lambda: all(
            sorted(p.isrs) == [0, 1, 2]
            for p in admin0.list_topics(topic, timeout=5).topics[topic].partitions.values()
        ),
        40,
        "replicas in sync under authorization",
    )

    user_conf = conf(b1, USER, USER_PASSWORD)
    denied = produce_all(user_conf, topic, 3)
    assert [e.code() if e else None for e in denied] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
    assert log_ends(conf(b0, ADMIN, ADMIN_PASSWORD), topic, 3) == [0, 0, 0]

    # allowed through broker 0, by a prefixed ACL: every broker lets erin write
    allow = AclBinding(
        ResourceType.TOPIC,
        "acl-",
        ResourcePatternType.PREFIXED,
        f"User:{USER}",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    assert admin0.create_acls([allow])[allow].result(20) is None
    admin2 = AdminClient(conf(b2, ADMIN, ADMIN_PASSWORD))
    described = wait_for(
        lambda: admin2.describe_acls(
            AclBindingFilter(
                ResourceType.ANY,
                None,
                ResourcePatternType.ANY,
                None,
                None,
                AclOperation.ANY,
                AclPermissionType.ANY,
            )
        ).result(10),
        20,
        "broker 2 to describe the ACL",
    )
    assert described == [allow]
    delivered = wait_for(
        lambda: (lambda errs: errs if all(e is None for e in errs) else None)(
            produce_all(user_conf, topic, 3)
        ),
        20,
        "erin's produce to be allowed on every leader",
    )
    assert len(delivered) == 3
    ends = log_ends(conf(b0, ADMIN, ADMIN_PASSWORD), topic, 3)
    assert all(end >= 1 for end in ends), ends

    # deleted through broker 2: refused again everywhere, and nothing more is stored
    deleted = admin2.delete_acls(
        [
            AclBindingFilter(
                ResourceType.TOPIC,
                "acl-",
                ResourcePatternType.PREFIXED,
                f"User:{USER}",
                "*",
                AclOperation.WRITE,
                AclPermissionType.ALLOW,
            )
        ]
    )
    assert [list(r.result(20)) for r in deleted.values()] == [[allow]]
    wait_for(
        lambda: all(
            e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
            for e in produce_all(user_conf, topic, 3)
        ),
        20,
        "erin refused again on every leader",
    )
    assert log_ends(conf(b0, ADMIN, ADMIN_PASSWORD), topic, 3) == ends
