"""Group-level consumer settings (``consumer.*`` on GROUP resources), as in Kafka 4.

They are validated against the broker's group.consumer.min/max bounds (INVALID_CONFIG
naming the setting), described next to the share settings, told to members in the
heartbeat answer, used for their session, and kept across a restart.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from kafka_wire import WireClient
from test_consumer_protocol import create_topic, hb, join

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)


def alter(bootstrap: str, group: str, **values: str | None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = [
        ConfigEntry(
            name.replace("_", "."),
            value,
            incremental_operation=(
                AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
            ),
        )
        for name, value in values.items()
    ]
    res = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    admin.incremental_alter_configs([res])[res].result(15)


def describe(bootstrap: str, group: str) -> dict:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ResourceType.GROUP, group)
    return admin.describe_configs([res])[res].result(15)


def test_consumer_settings_validated_described_and_used(broker_factory) -> None:
    broker = broker_factory(
        groups__consumer_min_session_timeout_ms=1000,
        groups__consumer_min_heartbeat_interval_ms=100,
    )
    b = broker.bootstrap
    group = f"g-{uuid.uuid4().hex[:8]}"
    bad = [
        ({"consumer.session.timeout.ms": "500"}, "between 1000 and 60000"),
        ({"consumer.session.timeout.ms": "70000"}, "between 1000 and 60000"),
        ({"consumer.heartbeat.interval.ms": "50"}, "between 100 and 15000"),
        ({"consumer.heartbeat.interval.ms": "soon"}, "integer"),
        (
            {"consumer.session.timeout.ms": "2000", "consumer.heartbeat.interval.ms": "3000"},
            "must be lower than consumer.session.timeout.ms",
        ),
    ]
    for values, words in bad:
        with pytest.raises(KafkaException) as exc:
            alter(b, group, **{k.replace(".", "_"): v for k, v in values.items()})
        assert exc.value.args[0].code() == E.INVALID_CONFIG, values
        assert words in str(exc.value), (values, str(exc.value))

    got = describe(b, group)
    assert got["consumer.session.timeout.ms"].value == "45000"
    assert got["consumer.session.timeout.ms"].is_default
    assert got["consumer.heartbeat.interval.ms"].value == "5000"
    assert "share.record.lock.duration.ms" in got  # one set of settings per group

    alter(b, group, consumer_session_timeout_ms="1500", consumer_heartbeat_interval_ms="200")
    got = describe(b, group)
    assert got["consumer.session.timeout.ms"].value == "1500"
    assert not got["consumer.session.timeout.ms"].is_default
    assert got["consumer.heartbeat.interval.ms"].value == "200"

    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topic(b, topic, 2)
    c = WireClient(b)
    member, r = join(c, group, [topic])
    assert r.error_code == 0 and r.heartbeat_interval_ms == 200
    # the member stops heartbeating: the group's 1.5 s session (not the broker's 45 s)
    # removes it
    deadline = time.monotonic() + 20
    members = [member]
    while members and time.monotonic() < deadline:
        d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
        members = [m.member_id for m in d.members]
        time.sleep(0.2)
    assert members == []
    assert hb(c, group, member, r.member_epoch).error_code == E.UNKNOWN_MEMBER_ID

    # the settings survive a restart; deleting them returns to the broker's values (the
    # interval alone cannot go: 5000 would not be below the group's 1.5 s session)
    broker.restart()
    got = describe(b, group)
    assert got["consumer.session.timeout.ms"].value == "1500"
    with pytest.raises(KafkaException) as exc:
        alter(b, group, consumer_heartbeat_interval_ms=None)
    assert exc.value.args[0].code() == E.INVALID_CONFIG
    alter(b, group, consumer_heartbeat_interval_ms=None, consumer_session_timeout_ms=None)
    got = describe(b, group)
    assert got["consumer.heartbeat.interval.ms"].value == "5000"
    assert got["consumer.heartbeat.interval.ms"].is_default
    c2 = WireClient(b)
    _, r = join(c2, group, [topic])
    assert r.error_code == 0 and r.heartbeat_interval_ms == 5000
