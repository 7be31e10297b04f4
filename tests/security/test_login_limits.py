"""Failed-login rate limiting per client address: the limiter alone (a fake clock), then a
broker process refusing a guessing address's logins, even a correct one, with
SASL_AUTHENTICATION_FAILED, counted as result ``throttled``, without disturbing a
connection that is already authenticated."""

from __future__ import annotations

import urllib.request

import pytest
from kafka_helpers import RawClient
from prometheus_client.parser import text_string_to_metric_families

from shazamq.broker.security.limits import FailedLoginLimiter
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_empties_and_refills() -> None:
    clock = Clock()
    limiter = FailedLoginLimiter(6, clock=clock)  # one failure back every 10 s
    for _ in range(6):
        assert limiter.allowed("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    assert limiter.allowed("10.0.0.2")  # per address
    clock.now += 9.9
    assert not limiter.allowed("10.0.0.1")
    clock.now += 0.2
    assert limiter.allowed("10.0.0.1")
    clock.now += 60
    assert limiter.allowed("10.0.0.1") and len(limiter) == 0  # full buckets are dropped


def test_table_is_bounded_and_zero_disables() -> None:
    clock = Clock()
    limiter = FailedLoginLimiter(1, max_addresses=3, clock=clock)
    for i in range(5):
        limiter.failed(f"10.0.0.{i}")
    assert len(limiter) == 3
    assert limiter.allowed("10.0.0.0")  # evicted: the oldest went first
    assert not limiter.allowed("10.0.0.4")
    off = FailedLoginLimiter(0, clock=clock)
    for _ in range(100):
        off.failed("10.0.0.9")
    assert off.allowed("10.0.0.9") and len(off) == 0


def throttled(broker) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10)
    for family in text_string_to_metric_families(text.read().decode()):
        if family.name == "shazamq_sasl_authentications":
            for s in family.samples:
                wanted = {"mechanism": "PLAIN", "result": "throttled"}
                if s.name.endswith("_total") and s.labels == wanted:
                    return s.value
    return 0.0


def login(broker, password: str) -> tuple[RawClient, object]:
    client = RawClient(broker.port)
    assert client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
    token = f"\0alice\0{password}".encode()
    return client, client.request(SaslAuthenticateRequest(auth_bytes=token), 2)


@pytest.fixture
def broker(broker_factory):
    return broker_factory(
        security__sasl__enabled=True,
        security__sasl__users='{"alice": "alice-secret"}',
        security__sasl__max_failed_logins_per_minute=3,
    )


def test_a_guessing_address_is_refused(broker) -> None:
    good, resp = login(broker, "alice-secret")  # authenticated before the guessing
    assert resp.error_code == 0
    try:
        for _ in range(3):
            client, resp = login(broker, "guess")
            client.close()
            assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
            assert "too many" not in resp.error_message
        client, resp = login(broker, "alice-secret")
        client.close()
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "too many failed logins" in resp.error_message
        assert throttled(broker) == 1
        assert good.request(MetadataRequest(topics=None), 1).brokers  # undisturbed
    finally:
        good.close()
