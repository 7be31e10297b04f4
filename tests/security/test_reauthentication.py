"""KIP-368 re-authentication and the legacy SaslHandshake v0 flow, against a broker process.

Re-authentication (``security.sasl.connections_max_reauth_ms``): SaslAuthenticate v1+
answers carry the session lifetime (v0 carries none, the session expires all the same);
an expired connection that sends anything but a SASL request is closed and counted; a
live connection re-authenticates with the same principal and mechanism, and is closed
when the principal changes, the mechanism changes, the user was deleted, or it sends
another request mid-way; two re-authentications within a second are refused with
ILLEGAL_SASL_STATE; confluent-kafka and kafka-python keep producing across several
session lifetimes without being cut off.

SaslHandshake v0: raw size-prefixed SASL tokens without Kafka headers, PLAIN (an empty
answer) and SCRAM-SHA-512, then ordinary requests; a wrong password ends the connection
without an answer; kafka-python negotiating v0.
"""

from __future__ import annotations

import struct
import time
import urllib.request
import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka_helpers import RawClient
from prometheus_client.parser import text_string_to_metric_families

from shazamq.broker.security.sasl_client import SaslClient
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
LIFETIME_MS = 2000
PLAIN_OK = {"mechanism": "PLAIN", "result": "success"}
PLAIN_FAILED = {"mechanism": "PLAIN", "result": "failure"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    users = ", ".join(f'"{u}": "{p}"' for u, p in USERS.items())
    b = BrokerProcess(
        tmp_path_factory.mktemp("reauth"),
        security__sasl__enabled=True,
        security__sasl__mechanisms='["PLAIN", "SCRAM-SHA-512"]',
        security__sasl__users=f"{{{users}}}",
        security__sasl__connections_max_reauth_ms=LIFETIME_MS,
    ).start()
    yield b
    b.stop()


def metric(broker, name: str, labels: dict[str, str] | None = None) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10)
    for family in text_string_to_metric_families(text.read().decode()):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels == (labels or {}):
                return s.value
    return 0.0


def closed(client: RawClient, request: Any, version: int) -> bool:
    try:
        client.request(request, version)
    except (ConnectionError, OSError):
        return True
    return False


def plain(client: RawClient, user: str, password: str | None = None, version: int = 2) -> Any:
    handshake = client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1)
    assert handshake.error_code == 0
    token = f"\0{user}\0{password or USERS[user]}".encode()
    return client.request(SaslAuthenticateRequest(auth_bytes=token), version)


def scram(client: RawClient, user: str, password: str) -> Any:
    assert client.request(SaslHandshakeRequest(mechanism="SCRAM-SHA-512"), 1).error_code == 0
    sasl = SaslClient("SCRAM-SHA-512", user, password)
    resp = client.request(SaslAuthenticateRequest(auth_bytes=sasl.first()), 2)
    if resp.error_code:
        return resp
    final = sasl.step(resp.auth_bytes)
    assert final is not None
    resp = client.request(SaslAuthenticateRequest(auth_bytes=final), 2)
    if resp.error_code == 0:
        assert sasl.step(resp.auth_bytes) is None  # the server proved it knows the key
    return resp


# -- session lifetime and expiry ----------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
def test_expired_session_is_closed_on_its_next_request(broker, version: int) -> None:
    before = metric(broker, "shazamq_sasl_expired_connections_closed")
    client = RawClient(broker.port)
    try:
        resp = plain(client, "alice", version=version)
        assert resp.error_code == 0
        assert resp.session_lifetime_ms == (LIFETIME_MS if version >= 1 else 0)
        assert client.request(MetadataRequest(topics=None), 1).brokers
        time.sleep(LIFETIME_MS / 1000 + 0.3)
        assert closed(client, MetadataRequest(topics=None), 1)
    finally:
        client.close()
    assert metric(broker, "shazamq_sasl_expired_connections_closed") == before + 1


def test_reauthentication_renews_the_session(broker) -> None:
    before = metric(broker, "shazamq_sasl_reauthentications", PLAIN_OK)
    client = RawClient(broker.port)
    try:
        assert plain(client, "bob").error_code == 0
        time.sleep(1.2)  # at most one re-authentication a second
        resp = plain(client, "bob")
        assert (resp.error_code, resp.session_lifetime_ms) == (0, LIFETIME_MS)
        time.sleep(1.2)  # past the first session's end, inside the second's
        assert client.request(MetadataRequest(topics=None), 1).brokers
        assert reauth_refused_too_soon(client)
    finally:
        client.close()
    after = metric(broker, "shazamq_sasl_reauthentications", PLAIN_OK)
    assert after == before + 2  # the one above and the one in reauth_refused_too_soon


def reauth_refused_too_soon(client: RawClient) -> bool:
    """A second re-authentication within a second of the last is ILLEGAL_SASL_STATE."""
    resp = client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1)
    assert resp.error_code == 0
    token = b"\0bob\0bob-secret"
    assert client.request(SaslAuthenticateRequest(auth_bytes=token), 2).error_code == 0
    again = client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1)
    return again.error_code == ErrorCode.ILLEGAL_SASL_STATE


def test_reauthentication_as_another_principal_closes(broker) -> None:
    client = RawClient(broker.port)
    try:
        assert plain(client, "alice").error_code == 0
        resp = plain(client, "bob")
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "Cannot change principals" in resp.error_message
        assert closed(client, ApiVersionsRequest(), 3)
    finally:
        client.close()


def test_reauthentication_with_another_mechanism_closes(broker) -> None:
    client = RawClient(broker.port)
    try:
        assert plain(client, "alice").error_code == 0
        resp = scram(client, "alice", USERS["alice"])
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "re-authentication of mechanism 'PLAIN'" in resp.error_message
        assert closed(client, ApiVersionsRequest(), 3)
    finally:
        client.close()


def test_other_requests_during_reauthentication_close(broker) -> None:
    client = RawClient(broker.port)
    try:
        assert plain(client, "alice").error_code == 0
        assert client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
        assert closed(client, MetadataRequest(topics=None), 1)
    finally:
        client.close()


def test_a_deleted_user_cannot_reauthenticate(broker) -> None:
    admin = AdminClient(
        {
            "bootstrap.servers": broker.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
            "sasl.password": USERS["alice"],
        }
    )
    sha512 = ScramMechanism.SCRAM_SHA_512
    info = ScramCredentialInfo(sha512, 8192)
    upsert = UserScramCredentialUpsertion("dave", info, b"dave-secret")
    admin.alter_user_scram_credentials([upsert])["dave"].result(15)
    client = RawClient(broker.port)
    try:
        assert scram(client, "dave", "dave-secret").error_code == 0
        deletion = UserScramCredentialDeletion("dave", sha512)
        admin.alter_user_scram_credentials([deletion])["dave"].result(15)
        assert client.request(MetadataRequest(topics=None), 1).brokers  # until it expires
        resp = scram(client, "dave", "dave-secret")
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert closed(client, ApiVersionsRequest(), 3)
    finally:
        client.close()


def _produce_for(conf: dict[str, Any], topic: str, seconds: float) -> tuple[int, list[Any]]:
    errors: list[Any] = []
    delivered: list[Any] = []
    producer = Producer({**conf, "error_cb": errors.append, "linger.ms": 0})
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        producer.produce(topic, value=b"x%d" % sent, on_delivery=lambda e, _m: delivered.append(e))
        sent += 1
        producer.poll(0.1)
    assert producer.flush(15) == 0
    return sent, [e for e in delivered if e is not None] + errors


def test_confluent_kafka_reauthenticates_and_is_never_cut_off(broker) -> None:
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bob",
        "sasl.password": USERS["bob"],
    }
    topic = f"reauth-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(conf)  # alive until the future resolves
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    labels = {"mechanism": "SCRAM-SHA-512", "result": "success"}
    reauth_before = metric(broker, "shazamq_sasl_reauthentications", labels)
    expired_before = metric(broker, "shazamq_sasl_expired_connections_closed")
    sent, problems = _produce_for(conf, topic, 3 * LIFETIME_MS / 1000)
    assert sent > 20 and problems == [], problems
    assert metric(broker, "shazamq_sasl_reauthentications", labels) >= reauth_before + 2
    assert metric(broker, "shazamq_sasl_expired_connections_closed") == expired_before
    assert not [p for p in problems if isinstance(p, KafkaError)]


def test_kafka_python_reauthenticates(broker) -> None:
    from kafka import KafkaProducer

    topic = f"reauth-kp-{uuid.uuid4().hex[:8]}"
    labels = {"mechanism": "PLAIN", "result": "success"}
    reauth_before = metric(broker, "shazamq_sasl_reauthentications", labels)
    expired_before = metric(broker, "shazamq_sasl_expired_connections_closed")
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="alice",
        sasl_plain_password=USERS["alice"],
    )
    try:
        deadline = time.monotonic() + 3 * LIFETIME_MS / 1000
        while time.monotonic() < deadline:
            producer.send(topic, b"v").get(timeout=15)
            time.sleep(0.05)
    finally:
        producer.close()
    assert metric(broker, "shazamq_sasl_reauthentications", labels) >= reauth_before + 2
    assert metric(broker, "shazamq_sasl_expired_connections_closed") == expired_before


# -- SaslHandshake v0: raw tokens ---------------------------------------------------------


class LegacyClient:
    """SaslHandshake v0, then SASL tokens as bare size-prefixed frames."""

    def __init__(self, port: int, mechanism: str) -> None:
        self.raw = RawClient(port)
        resp = self.raw.request(SaslHandshakeRequest(mechanism=mechanism), 0)
        assert resp.error_code == 0 and mechanism in resp.mechanisms

    def token(self, data: bytes) -> bytes:
        self.raw.sock.sendall(struct.pack(">i", len(data)) + data)
        size = int.from_bytes(self.raw._recv(4), "big")
        return self.raw._recv(size)

    def close(self) -> None:
        self.raw.close()


def test_legacy_plain_then_requests_work(broker) -> None:
    c = LegacyClient(broker.port, "PLAIN")
    try:
        assert c.token(b"\0alice\0alice-secret") == b""
        assert c.raw.request(MetadataRequest(topics=None), 1).brokers
    finally:
        c.close()


def test_legacy_scram_then_requests_work(broker) -> None:
    c = LegacyClient(broker.port, "SCRAM-SHA-512")
    try:
        sasl = SaslClient("SCRAM-SHA-512", "bob", USERS["bob"])
        final = sasl.step(c.token(sasl.first()))
        assert final is not None
        assert sasl.step(c.token(final)) is None
        assert c.raw.request(MetadataRequest(topics=None), 1).brokers
    finally:
        c.close()


@pytest.mark.parametrize("token", [b"\0alice\0wrong", b"\0nobody\0x", b"garbage", b""])
def test_legacy_failure_closes_without_an_answer(broker, token: bytes) -> None:
    before = metric(broker, "shazamq_sasl_authentications", PLAIN_FAILED)
    c = LegacyClient(broker.port, "PLAIN")
    try:
        with pytest.raises((ConnectionError, OSError)):
            c.token(token)
    finally:
        c.close()
    after = metric(broker, "shazamq_sasl_authentications", PLAIN_FAILED)
    assert after == before + 1


def test_legacy_oversized_token_closes(broker) -> None:
    """The frame bound before authentication holds for raw tokens too."""
    c = LegacyClient(broker.port, "PLAIN")
    try:
        c.raw.sock.sendall(struct.pack(">i", 64 * 1024 * 1024))
        c.raw.sock.settimeout(5)
        try:
            data = c.raw.sock.recv(1)
        except ConnectionError:
            data = b""
        assert data == b""
    finally:
        c.close()


def test_legacy_handshake_is_not_a_reauthentication(broker) -> None:
    client = RawClient(broker.port)
    try:
        assert plain(client, "alice").error_code == 0
        time.sleep(1.1)
        again = client.request(SaslHandshakeRequest(mechanism="PLAIN"), 0)
        assert again.error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert client.request(MetadataRequest(topics=None), 1).brokers
    finally:
        client.close()


def test_raw_frames_are_only_taken_after_a_v0_handshake(broker) -> None:
    """Without the v0 handshake, a bare token is a malformed request header: closed."""
    client = RawClient(broker.port)
    try:
        client.sock.sendall(struct.pack(">i", 3) + b"\0a\0")
        client.sock.settimeout(5)
        assert client.sock.recv(1) == b""
    finally:
        client.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_kafka_python_with_the_legacy_handshake(broker, mechanism: str) -> None:
    """kafka-python told the broker is 0.10.1 uses SaslHandshake v0 and raw tokens."""
    from kafka import KafkaConsumer

    labels = {"mechanism": mechanism, "result": "success"}
    before = metric(broker, "shazamq_sasl_authentications", labels)
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username="alice",
        sasl_plain_password=USERS["alice"],
        api_version=(0, 10, 1),
    )
    try:
        assert isinstance(consumer.topics(), set)
    finally:
        consumer.close()
    assert metric(broker, "shazamq_sasl_authentications", labels) > before
