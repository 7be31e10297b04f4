"""Client quotas with SASL users and ACLs: who may describe and alter them, and a quota
set on a user (not a client id) applying to that user's connections only.

DescribeClientQuotas needs DESCRIBE_CONFIGS on the cluster and AlterClientQuotas
ALTER_CONFIGS (CLUSTER_AUTHORIZATION_FAILED otherwise), as in Kafka.
"""

from __future__ import annotations

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest
from tests.kafka_helpers import RawClient

from .quota_wire import alter_request, describe_request, described, produce_request

USERS = {"admin": "admin-pw", "alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    users = ", ".join(f'"{u}": "{p}"' for u, p in USERS.items())
    b = BrokerProcess(
        tmp_path_factory.mktemp("quota-authz") / "data",
        security__sasl__enabled=True,
        security__sasl__mechanisms='["PLAIN"]',
        security__sasl__users=f"{{{users}}}",
        security__authorization__enabled=True,
        security__authorization__super_users='["User:admin"]',
        quotas__window_num=3,
    ).start()
    yield b
    b.stop()


def admin(broker) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": broker.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "admin",
            "sasl.password": USERS["admin"],
        }
    )


def allow(broker, rtype, name: str, principal: str, op) -> None:
    binding = AclBinding(
        rtype, name, ResourcePatternType.LITERAL, principal, "*", op, AclPermissionType.ALLOW
    )
    client = admin(broker)  # outlives the futures: a destroyed handle fails them
    for f in client.create_acls([binding]).values():
        f.result(15)


def login(broker, user: str, client_id: str = "quota-test") -> RawClient:
    c = RawClient(broker.port, client_id=client_id)
    c.sock.settimeout(30)
    assert c.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
    token = f"\0{user}\0{USERS[user]}".encode()
    assert c.request(SaslAuthenticateRequest(auth_bytes=token), 2).error_code == 0
    return c


ENTRY = ({"user": "someone"}, {"producer_byte_rate": 1e6})


def test_describe_and_alter_need_their_cluster_operations(broker):
    alice = login(broker, "alice")
    resp = alice.request(describe_request([]), 1)
    assert resp.error_code == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    resp = alice.request(alter_request([ENTRY]), 1)
    assert [e.error_code for e in resp.entries] == [ErrorCode.CLUSTER_AUTHORIZATION_FAILED]
    assert [(x.entity_type, x.entity_name) for x in resp.entries[0].entity] == [("user", "someone")]

    allow(broker, ResourceType.BROKER, "kafka-cluster", "User:alice", AclOperation.DESCRIBE_CONFIGS)
    assert alice.request(describe_request([]), 1).error_code == 0
    resp = alice.request(alter_request([ENTRY]), 1)
    assert [e.error_code for e in resp.entries] == [ErrorCode.CLUSTER_AUTHORIZATION_FAILED]

    allow(broker, ResourceType.BROKER, "kafka-cluster", "User:alice", AclOperation.ALTER_CONFIGS)
    resp = alice.request(alter_request([ENTRY]), 1)
    assert [e.error_code for e in resp.entries] == [0]
    alice.close()
    # the super user may do both
    root = login(broker, "admin")
    assert ("user", "someone") in {
        e for k in described(root.request(describe_request([]), 1)) for e in k
    }
    root.request(alter_request([({"user": "someone"}, {"producer_byte_rate": None})]), 1)
    root.close()


def test_a_user_quota_applies_to_that_user_only(broker):
    topic = "quota-users"
    client = admin(broker)
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    for user in ("alice", "bob"):
        allow(broker, ResourceType.TOPIC, topic, f"User:{user}", AclOperation.WRITE)
    root = login(broker, "admin")
    resp = root.request(alter_request([({"user": "alice"}, {"producer_byte_rate": 20_000.0})]), 1)
    assert resp.entries[0].error_code == 0
    root.close()
    # the same client id for both users: the quota follows the principal
    throttles: dict[str, list[int]] = {}
    req = produce_request(topic, b"q" * 10_000)
    for user in ("alice", "bob"):
        c = login(broker, user, client_id="shared-app")
        got = throttles[user] = []
        for _ in range(8):
            resp = c.request(req, 9)
            assert resp.responses[0].partition_responses[0].error_code == 0
            got.append(resp.throttle_time_ms)
            if resp.throttle_time_ms:
                break
        c.close()
    assert any(t > 0 for t in throttles["alice"])
    assert all(t == 0 for t in throttles["bob"])
