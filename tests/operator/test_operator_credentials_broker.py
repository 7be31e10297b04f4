"""The operator's own user against a real broker with SASL and ACLs, as the operator renders it.

The broker gets what a pod of a cluster with ``security.auth`` (SCRAM-SHA-512) and
``security.authorization`` gets: the users file's users, the operator's user through the
rendered environment override (its password from the operator's Secret), and the rendered
``[security.authorization]`` whose super users include the operator.

Covers: over that login, each admin path of the operator works: the roll's partition read
(confluent-kafka's AdminClient, Metadata and topic DescribeConfigs), the reassignment
listing and the dynamic broker settings (which then change what the broker does); a user
of the users file without ACLs is refused the same calls with Kafka's authorization error,
and an unauthenticated connection gets nowhere.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from operator_support import quick_start

from shazamq.broker.cluster.client import SaslLogin
from shazamq.operator.admin import (
    OPERATOR_USER,
    PLAINTEXT,
    AdminError,
    Connection,
    alter_broker_configs,
    describe_broker_configs,
)
from shazamq.operator.probe import _admin_read
from shazamq.operator.reassign import list_reassignments
from shazamq.operator.resources import OPERATOR_USER_ENV, ClusterModel

OPERATOR_PASSWORD = "operator-secret-password"
MECHANISM = "SCRAM-SHA-512"


def rendered_security() -> dict:
    body = quick_start()
    body["spec"]["security"] = {
        "auth": {"enabled": True, "mechanism": MECHANISM, "secretName": "users"},
        "authorization": {"enabled": True, "superUsers": ["User:admin"]},
    }
    model = ClusterModel.from_resource(body)
    env = {
        e["name"]: e
        for e in model.generate_statefulset()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    ref = env[OPERATOR_USER_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": model.operator_secret_name, "key": "password"}
    return {
        "authorization": model.config.security.authorization,
        "mechanisms": model.config.security.sasl.mechanisms,
    }


@pytest.fixture
def secure_broker(broker_factory):
    rendered = rendered_security()
    authz = rendered["authorization"]
    assert f"User:{OPERATOR_USER}" in authz.super_users
    settings = {
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": json.dumps(list(rendered["mechanisms"])),
        "security__sasl__users": json.dumps({"alice": "alice-password"}),
        "security__authorization__enabled": authz.enabled,
        "security__authorization__super_users": json.dumps(authz.super_users),
    }
    # the variable exactly as the pod template names it, its value from the Secret
    name = OPERATOR_USER_ENV.removeprefix("SHAZAMQ_").lower()
    settings[name] = OPERATOR_PASSWORD
    return broker_factory(**settings)


def login(user: str, password: str) -> Connection:
    return Connection(login=SaslLogin(MECHANISM, user, password))


def test_the_operator_user_may_do_what_the_operator_does(secure_broker) -> None:
    operator = login(OPERATOR_USER, OPERATOR_PASSWORD)
    alice = login("alice", "alice-password")
    host, port = "127.0.0.1", secure_broker.port
    admin = AdminClient({"bootstrap.servers": secure_broker.bootstrap, **operator.librdkafka()})
    admin.create_topics([NewTopic("orders", 2, 1)])["orders"].result(timeout=20)

    # the roll's read of the partitions
    partitions = _admin_read(secure_broker.bootstrap, 1, operator)
    assert sorted((p.topic, p.index) for p in partitions if p.topic == "orders") == [
        ("orders", 0),
        ("orders", 1),
    ]
    # a scaling's reassignment listing, and the dynamic settings
    assert asyncio.run(list_reassignments([(host, port)], operator)) == set()
    asyncio.run(alter_broker_configs(operator, host, port, 0, {"log.retention.ms": "7200000"}))
    seen = asyncio.run(describe_broker_configs(operator, host, port, 0, ["log.retention.ms"]))
    assert seen == {"log.retention.ms": "7200000"}

    # another user of the cluster, without ACLs: refused
    with pytest.raises(AdminError, match="CLUSTER_AUTHORIZATION_FAILED"):
        asyncio.run(alter_broker_configs(alice, host, port, 0, {"log.retention.ms": "1"}))
    alice_admin = AdminClient({"bootstrap.servers": secure_broker.bootstrap, **alice.librdkafka()})
    hidden = alice_admin.list_topics(timeout=20).topics
    assert "orders" not in hidden  # Metadata hides what alice may not describe
    # without a login the listener answers nothing
    with pytest.raises(AdminError):
        asyncio.run(describe_broker_configs(PLAINTEXT, host, port, 0, ["log.retention.ms"]))
    with pytest.raises(AdminError):
        asyncio.run(alter_broker_configs(login(OPERATOR_USER, "wrong"), host, port, 0, {}))
    seen = asyncio.run(describe_broker_configs(operator, host, port, 0, ["log.retention.ms"]))
    assert seen == {"log.retention.ms": "7200000"}
