"""Client telemetry (KIP-714): an empty subscription, pushes checked as Kafka checks them,
and librdkafka (which pushes by default) logging no error against the broker."""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Producer
from kafka_helpers import RawClient

from shazamq.broker.apis.telemetry import TELEMETRY_MAX_BYTES
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.get_telemetry_subscriptions_request import (
    GetTelemetrySubscriptionsRequest,
)
from shazamq.protocol.messages.push_telemetry_request import PushTelemetryRequest

ZERO = uuid.UUID(int=0)


def test_empty_subscription_and_pushes(shared_broker):
    c = RawClient(shared_broker.port)
    first = c.request(GetTelemetrySubscriptionsRequest(client_instance_id=ZERO), 0)
    assert first.error_code == 0
    instance = first.client_instance_id
    assert instance != ZERO  # assigned to a new client
    assert first.requested_metrics == []  # nothing to push
    assert first.push_interval_ms > 0 and first.telemetry_max_bytes > 0
    assert first.accepted_compression_types
    # a known client gets the same subscription and no new id
    again = c.request(GetTelemetrySubscriptionsRequest(client_instance_id=instance), 0)
    assert (again.error_code, again.client_instance_id) == (0, ZERO)
    assert again.subscription_id == first.subscription_id
    other = c.request(GetTelemetrySubscriptionsRequest(client_instance_id=ZERO), 0)
    assert other.client_instance_id not in (ZERO, instance)

    def push(**kw: object) -> int:
        fields = {
            "client_instance_id": instance,
            "subscription_id": first.subscription_id,
            "terminating": True,
            "compression_type": 0,
            "metrics": b"",
        }
        fields.update(kw)
        return c.request(PushTelemetryRequest(**fields), 0).error_code

    assert push() == 0
    assert push(subscription_id=first.subscription_id ^ 1) == ErrorCode.UNKNOWN_SUBSCRIPTION_ID
    assert push(client_instance_id=ZERO) == ErrorCode.INVALID_REQUEST
    assert push(compression_type=9, metrics=b"x") == ErrorCode.UNSUPPORTED_COMPRESSION_TYPE
    assert push(metrics=bytes(TELEMETRY_MAX_BYTES + 1)) == ErrorCode.TELEMETRY_TOO_LARGE
    c.close()


def test_librdkafka_pushing_metrics_logs_no_error(shared_broker, topic_name):
    logger = logging.getLogger("telemetry-test-librdkafka")
    logger.setLevel(logging.DEBUG)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    p = Producer(
        {
            "bootstrap.servers": shared_broker.bootstrap,
            "enable.metrics.push": True,
            "debug": "telemetry",
            "logger": logger,
        }
    )
    delivered: list[object] = []
    p.produce(topic_name, value=b"v", on_delivery=lambda e, m: delivered.append(e))
    assert p.flush(15) == 0
    # the subscription is asked for once a broker is up; wait for its answer to be handled
    deadline = time.monotonic() + 15
    handled = []
    while time.monotonic() < deadline and not handled:
        p.poll(0.2)
        handled = [r for r in records if "Handled GetTelemetrySubscriptions" in r.getMessage()]
    del p
    assert delivered == [None]
    assert handled and "err = Success" in handled[0].getMessage()
    assert any("requested metrics count 0" in r.getMessage() for r in records)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
