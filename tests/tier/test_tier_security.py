"""SCRAM credentials, ACLs and client quotas come back with a broker restored from its bucket.

A broker with SASL and ACLs on gets a SCRAM-SHA-512 user and ACLs for it; the bucket's
cluster document then holds the credential as a server keeps it (salted, never the
password) and the ACLs. The broker is deleted; a new one on an empty disk with the same
bucket lets the user log in with the same password, and its ACLs apply. Client quotas
set with AlterClientQuotas are in the document too: a restored broker describes and
enforces them.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from shazamq.broker.tier.manifest import CLUSTER_KEY, decode_cluster
from tests.groups.kafka_wire import WireClient
from tests.kafka_helpers import make_topic
from tests.quotas.quota_wire import alter_request, describe_request, described, produce_request

from .tierutil import Bucket, consume_all, wait_for

ADMIN_PASSWORD = "admin-pw"
PASSWORD = "carol-secret-pw"


def _security() -> dict[str, object]:
    return {
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": '["PLAIN", "SCRAM-SHA-512"]',
        "security__sasl__users": f'{{"admin": "{ADMIN_PASSWORD}"}}',
        "security__authorization__enabled": True,
        "security__authorization__super_users": '["User:admin"]',
    }


def _admin_conf(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "admin",
        "sasl.password": ADMIN_PASSWORD,
    }


def _carol_conf(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "carol",
        "sasl.password": PASSWORD,
    }


def _produce(conf: dict[str, Any], topic: str, value: bytes) -> KafkaError | None:
    delivered: list[Any] = []
    p = Producer({**conf, "message.timeout.ms": 10_000})
    p.produce(topic, value=value, partition=0, on_delivery=lambda e, _m: delivered.append(e))
    p.flush(15)
    assert len(delivered) == 1
    return delivered[0]


def test_scram_users_and_acls_are_restored(broker_factory, bucket: Bucket) -> None:
    settings = {**bucket.settings(), **_security()}
    b = broker_factory(**settings)
    admin = AdminClient(_admin_conf(b.bootstrap))
    for name in ("allowed", "forbidden"):
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upsert = UserScramCredentialUpsertion("carol", info, PASSWORD.encode())
    admin.alter_user_scram_credentials([upsert])["carol"].result(15)
    bindings = [
        AclBinding(
            ResourceType.TOPIC,
            "allowed",
            ResourcePatternType.LITERAL,
            "User:carol",
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for op in (AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE)
    ]
    # the consumer's (random) group names start with g-
    bindings.append(
        AclBinding(
            ResourceType.GROUP,
            "g-",
            ResourcePatternType.PREFIXED,
            "User:carol",
            "*",
            AclOperation.READ,
            AclPermissionType.ALLOW,
        )
    )
    for f in admin.create_acls(bindings).values():
        f.result(15)
    assert _produce(_carol_conf(b.bootstrap), "allowed", b"before") is None

    def in_bucket() -> bool:
        if CLUSTER_KEY not in bucket.objects():
            return False
        doc = decode_cluster(bucket.get(CLUSTER_KEY))
        return "carol" in doc.scram and len(doc.acls) == 4

    wait_for(in_bucket, what="credentials and ACLs in the bucket")
    raw = bucket.get(CLUSTER_KEY)
    assert PASSWORD.encode() not in raw  # what a server keeps, never the password
    doc = decode_cluster(raw)
    entry = doc.scram["carol"]["SCRAM-SHA-512"]
    assert entry.iterations == 4096 and len(entry.salt) >= 16
    b.stop()

    # the cluster is gone; a new broker on an empty disk, same bucket
    fresh = broker_factory(**settings)
    carol = _carol_conf(fresh.bootstrap)
    assert _produce(carol, "allowed", b"after") is None
    err = _produce(carol, "forbidden", b"no")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    got = consume_all(fresh.bootstrap, "allowed", 2, start=0, extra=carol)
    assert [v for _, v in got] == [b"before", b"after"]
    # a wrong password is still refused
    wrong = {**carol, "sasl.password": "not-it"}
    assert _produce(wrong, "allowed", b"x") is not None


QUOTAS = {
    (("client-id", "capped"),): {"producer_byte_rate": 20_000.0},
    (("client-id", None), ("user", "carol")): {"consumer_byte_rate": 1_000_000.0},
}


def _throttled(bootstrap: str, client_id: str, topic: str, n: int) -> list[int]:
    """Produce up to ``n`` requests of 10 KB; their throttle times, up to the first."""
    got: list[int] = []
    req = produce_request(topic, b"q" * 10_000)
    with WireClient(bootstrap, client_id=client_id) as c:
        for _ in range(n):
            resp = c.call(req, 9)
            assert resp.responses[0].partition_responses[0].error_code == 0
            got.append(resp.throttle_time_ms)
            if resp.throttle_time_ms:
                break
    return got


def test_client_quotas_are_restored(broker_factory, bucket: Bucket) -> None:
    settings = {**bucket.settings(), "quotas__window_num": 3}
    b = broker_factory(**settings)
    make_topic(b.bootstrap, "quoted")
    with WireClient(b.bootstrap, client_id="quota-admin") as c:
        entries = [(dict(entity), dict(values)) for entity, values in QUOTAS.items()]
        resp = c.call(alter_request(entries), 1)  # type: ignore[arg-type]
        assert [e.error_code for e in resp.entries] == [0, 0]

    def in_bucket() -> bool:
        if CLUSTER_KEY not in bucket.objects():
            return False
        return len(decode_cluster(bucket.get(CLUSTER_KEY)).quotas) == 2

    wait_for(in_bucket, what="the quotas in the bucket")
    b.stop()

    fresh = broker_factory(**settings)
    with WireClient(fresh.bootstrap, client_id="quota-admin") as c:
        assert described(c.call(describe_request([]), 1)) == QUOTAS
    assert any(t > 0 for t in _throttled(fresh.bootstrap, "capped", "quoted", 10))
    assert all(t == 0 for t in _throttled(fresh.bootstrap, "free", "quoted", 10))
