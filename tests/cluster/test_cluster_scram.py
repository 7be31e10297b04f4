"""SCRAM credentials in the replicated metadata: set through one broker, good on every one.

Three brokers with SASL SCRAM-SHA-512 on their listeners and one configured (bootstrap)
admin user. A user created with AlterUserScramCredentials through broker 0 is described by
broker 2 and logs in on brokers 1 and 2 (and produces to a topic with a partition led by
each broker); deleting it through broker 1 makes logins fail everywhere.

Topics have replication factor 1 so that each broker leads one partition the user writes
to; replication through SASL listeners is covered by test_cluster_secure.py. The
credentials themselves travel through the metadata quorum, not the Kafka listener.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from . import netns as netns_mod
from .conftest import BrokerProcess, ClusterFactory, deep_merge
from .test_cluster_basic import FAST_CLUSTER, wait_for

pytestmark = pytest.mark.slow

NETNS = netns_mod.available() is None
ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
SASL_CLUSTER: dict[str, Any] = deep_merge(
    FAST_CLUSTER,
    {
        "replication": {"default_replication_factor": 1, "min_insync_replicas": 1},
        "security": {
            "sasl": {
                "enabled": True,
                "mechanisms": ["SCRAM-SHA-512"],
                "users": {ADMIN: ADMIN_PASSWORD},
            }
        },
    },
)


def conf(broker: BrokerProcess, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
        "socket.timeout.ms": 5000,
    }


def logs_in(broker: BrokerProcess, user: str, password: str) -> bool:
    """Whether `user` authenticates on this broker (a metadata request through it alone)."""
    errors: list[KafkaError] = []
    producer = Producer({**conf(broker, user, password), "error_cb": errors.append})
    try:
        producer.list_topics(timeout=4)
        return True
    except KafkaException:
        producer.poll(0.5)  # error callbacks are served by poll()
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
        return False


def test_a_user_created_through_one_broker_logs_in_on_every_broker(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory.start(3, netns=NETNS, extra_config=SASL_CLUSTER)
    b0, b1, b2 = cluster
    for b in cluster:
        wait_for(
            lambda b=b: (
                len(AdminClient(conf(b, ADMIN, ADMIN_PASSWORD)).list_topics(timeout=5).brokers) == 3
            ),
            40,
            f"broker {b.node_id} to see 3 brokers",
        )

    admin0 = AdminClient(conf(b0, ADMIN, ADMIN_PASSWORD))
    upsert = UserScramCredentialUpsertion(
        "dora", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"dora-pw"
    )
    admin0.alter_user_scram_credentials([upsert])["dora"].result(20)

    # the credential was committed before broker 0 answered; the others apply it at once
    admin2 = AdminClient(conf(b2, ADMIN, ADMIN_PASSWORD))
    described = wait_for(
        lambda: admin2.describe_user_scram_credentials().result(10),
        20,
        "broker 2 to describe dora",
    )
    infos = described["dora"].scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_512, 8192)]
    for b in (b1, b2):
        assert wait_for(lambda b=b: logs_in(b, "dora", "dora-pw"), 20, f"dora on {b}")
        assert not logs_in(b, "dora", "wrong")

    # dora produces to every broker: a partition led by each (RF 1, see the docstring)
    topic = f"scram-{uuid.uuid4().hex[:8]}"
    admin0.create_topics([NewTopic(topic, 6, 1)])[topic].result(20)
    leaders = wait_for(
        lambda: (
            {
                p.leader
                for p in admin0.list_topics(topic, timeout=5).topics[topic].partitions.values()
                if p.leader >= 0
            }
            == {0, 1, 2}
        ),
        30,
        "a partition led by each broker",
    )
    assert leaders
    delivered: list[Any] = []
    producer = Producer({**conf(b1, "dora", "dora-pw"), "message.timeout.ms": 15000})
    for i in range(6):
        producer.produce(
            topic, value=b"x", partition=i, on_delivery=lambda e, _m: delivered.append(e)
        )
    assert producer.flush(20) == 0
    assert len(delivered) == 6 and all(e is None for e in delivered), delivered

    # deleted through broker 1: no broker lets dora in any more
    admin1 = AdminClient(conf(b1, ADMIN, ADMIN_PASSWORD))
    deletion = UserScramCredentialDeletion("dora", ScramMechanism.SCRAM_SHA_512)
    admin1.alter_user_scram_credentials([deletion])["dora"].result(20)
    for b in cluster:
        assert wait_for(lambda b=b: not logs_in(b, "dora", "dora-pw"), 20, f"dora out of {b}")
