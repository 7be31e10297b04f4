"""The operator's broker-config calls against a real broker process.

Covers: what `shazamq.operator.admin.alter_broker_configs` sends (IncrementalAlterConfigs
SET on the broker's own resource) is accepted and changes what the broker does at once
(a lower message.max.bytes refuses a batch it took before; a new log.retention.ms is the
default of topics without their own), DescribeConfigs reports the new values as dynamic
broker settings, and a setting that needs a restart, a bad value, or another broker's
resource are refused with Kafka's error codes and change nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from shazamq.operator.admin import (
    PLAINTEXT,
    AdminError,
    alter_broker_configs,
    describe_broker_configs,
)


def produce(bootstrap: str, topic: str, size: int) -> KafkaError | None:
    """Produce one record of `size` bytes; the delivery error, if any."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.max.bytes": 10_000_000,
            "message.timeout.ms": 20_000,
            "compression.type": "none",
        }
    )
    errors: list[KafkaError | None] = []
    p.produce(topic, b"x" * size, on_delivery=lambda err, _msg: errors.append(err))
    assert p.flush(30) == 0
    return errors[0]


def topic_config(bootstrap: str, topic: str, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([res])[res].result(timeout=20)[name].value


def test_dynamic_settings_apply_without_a_restart(broker_factory, topic_name) -> None:
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(timeout=20)
    assert produce(broker.bootstrap, topic_name, 50_000) is None  # under the default 1 MB

    async def alter(settings: dict[str, str], broker_id: int = 0) -> None:
        await alter_broker_configs(PLAINTEXT, "127.0.0.1", broker.port, broker_id, settings)

    asyncio.run(alter({"message.max.bytes": "20000", "log.retention.ms": "3600000"}))

    err = produce(broker.bootstrap, topic_name, 50_000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert produce(broker.bootstrap, topic_name, 5_000) is None
    assert topic_config(broker.bootstrap, topic_name, "retention.ms") == "3600000"
    assert topic_config(broker.bootstrap, topic_name, "max.message.bytes") == "20000"

    names = ("message.max.bytes", "log.retention.ms", "log.dirs")
    seen = asyncio.run(describe_broker_configs(PLAINTEXT, "127.0.0.1", broker.port, 0, names))
    assert seen["message.max.bytes"] == "20000"
    assert seen["log.retention.ms"] == "3600000"
    res = ConfigResource(ConfigResource.Type.BROKER, "0")
    entries = admin.describe_configs([res])[res].result(timeout=20)
    assert entries["message.max.bytes"].source == 2  # DYNAMIC_BROKER_CONFIG
    assert not entries["message.max.bytes"].is_read_only
    assert entries["log.dirs"].is_read_only

    # Refused, each naming why, and nothing changes.
    with pytest.raises(AdminError, match=r"INVALID_CONFIG.*log\.dirs cannot be changed"):
        asyncio.run(alter({"log.dirs": "/elsewhere"}))
    with pytest.raises(AdminError, match=r"INVALID_CONFIG.*message_max_bytes"):
        asyncio.run(alter({"message.max.bytes": "-5"}))
    with pytest.raises(AdminError, match="INVALID_REQUEST"):
        asyncio.run(alter({"message.max.bytes": "2000000"}, broker_id=7))
    err = produce(broker.bootstrap, topic_name, 50_000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE

    # Raised again: the broker takes the large batch again.
    asyncio.run(alter({"message.max.bytes": "2000000"}))
    assert produce(broker.bootstrap, topic_name, 50_000) is None
