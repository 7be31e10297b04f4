"""SASL and TLS on the listener, with real clients against a broker process.

Covers: confluent-kafka producing and consuming over SASL_PLAINTEXT with PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512; a wrong password reported by the client as an
authentication error with nothing produced; aiokafka and kafka-python with SCRAM; at the
wire (raw client): an unauthenticated connection may send ApiVersions but is closed on
Metadata, the handshake refuses unknown mechanisms with the enabled list (SaslHandshake v0
and re-authentication: tests/security/test_reauthentication.py), SaslAuthenticate before
the handshake closes, a malformed token is a SASL_AUTHENTICATION_FAILED answer (and the
connection is then done), after success the
principal's requests work and further SASL requests get ILLEGAL_SASL_STATE; the
authentication metrics; a broker with a missing users file exits naming the key; TLS
(`security.protocol=SSL`) and SASL_SSL with SCRAM-SHA-512 (the production example's
listener) with a certificate made here.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import RawClient
from prometheus_client.parser import text_string_to_metric_families

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
FILE_USERS = {"alice": "alice-secret", "svc.orders": "orders=secret,with,commas"}
INLINE_USERS = {"carol": "carol-secret"}


def _write_users(path: Path, users: dict[str, str]) -> Path:
    lines = ["[users]"] + [f'"{name}" = "{password}"' for name, password in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _sasl_settings(users_file: Path, mechanisms: list[str] = MECHANISMS) -> dict[str, Any]:
    quoted = ",".join(f'"{m}"' for m in mechanisms)
    return {
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": f"[{quoted}]",
        "security__sasl__users_file": str(users_file),
        "security__sasl__users": '{"carol": "carol-secret"}',
    }


@pytest.fixture(scope="module")
def sasl_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One broker with every mechanism enabled, users from a file and from the config."""
    root_conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    harness = request.config.pluginmanager.get_plugin(str(root_conftest))
    base = tmp_path_factory.mktemp("sasl")
    broker = harness.BrokerProcess(
        base / "data", **_sasl_settings(_write_users(base / "users.toml", FILE_USERS))
    )
    broker.start()
    yield broker
    try:
        broker.stop(timeout=15)
    except Exception:
        broker.kill()


def client_config(
    broker, mechanism: str, user: str = "alice", password: str | None = None, **extra: Any
) -> dict[str, Any]:
    password = password if password is not None else {**FILE_USERS, **INLINE_USERS}[user]
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        **extra,
    }


def new_topic(conf: dict[str, Any], partitions: int = 1) -> str:
    name = f"sasl-{uuid.uuid4().hex[:10]}"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)
    return name


def produce_and_consume(conf: dict[str, Any], topic: str, n: int = 20) -> list[bytes]:
    producer = Producer(conf)
    for i in range(n):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(15) == 0
    consumer = Consumer(
        {**conf, "group.id": f"g-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
    finally:
        consumer.close()
    return got


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def auth_count(broker, mechanism: str, result: str) -> float:
    for s in scrape(broker.metrics_port).get("shazamq_sasl_authentications", []):
        if s.name.endswith("_total") and s.labels == {"mechanism": mechanism, "result": result}:
            return s.value
    return 0.0


# -- real clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_produces_and_consumes(sasl_broker, mechanism: str) -> None:
    before = auth_count(sasl_broker, mechanism, "success")
    user = "svc.orders" if mechanism == "SCRAM-SHA-512" else "alice"
    conf = client_config(sasl_broker, mechanism, user)
    topic = new_topic(conf)
    got = produce_and_consume(conf, topic)
    assert got == [f"m{i}".encode() for i in range(20)]
    assert auth_count(sasl_broker, mechanism, "success") > before


def test_inline_users_authenticate_too(sasl_broker) -> None:
    conf = client_config(sasl_broker, "SCRAM-SHA-256", "carol")
    topic = new_topic(conf)
    assert len(produce_and_consume(conf, topic, n=3)) == 3


def test_wrong_password_is_an_authentication_error_and_produces_nothing(sasl_broker) -> None:
    good = client_config(sasl_broker, "SCRAM-SHA-256")
    topic = new_topic(good)
    failures_before = auth_count(sasl_broker, "SCRAM-SHA-256", "failure")
    errors: list[KafkaError] = []
    delivered: list[Any] = []
    producer = Producer(
        client_config(
            sasl_broker,
            "SCRAM-SHA-256",
            password="not-the-password",
            error_cb=errors.append,
            **{"message.timeout.ms": 2000},
        )
    )
    producer.produce(topic, value=b"must not arrive", on_delivery=lambda e, m: delivered.append(e))
    producer.flush(5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    message = next(e.str() for e in errors if e.code() == KafkaError._AUTHENTICATION)
    assert "Authentication failed" in message and "SCRAM-SHA-256" in message
    assert delivered and all(e is not None for e in delivered)  # the record failed
    consumer = Consumer({**good, "group.id": "check"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 0)
    assert auth_count(sasl_broker, "SCRAM-SHA-256", "failure") > failures_before


async def test_aiokafka_with_scram(sasl_broker) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = new_topic(client_config(sasl_broker, "SCRAM-SHA-512"))
    auth = {
        "bootstrap_servers": sasl_broker.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc.orders",
        "sasl_plain_password": FILE_USERS["svc.orders"],
    }
    producer = AIOKafkaProducer(**auth)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"a{i}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, group_id="aio", auto_offset_reset="earliest", **auth)
    await consumer.start()
    try:
        got: list[bytes] = []
        async with asyncio.timeout(30):
            async for msg in consumer:
                got.append(msg.value)
                if len(got) == 5:
                    break
    finally:
        await consumer.stop()
    assert got == [f"a{i}".encode() for i in range(5)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # kafka-python's schema loading
def test_kafka_python_with_scram(sasl_broker) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = new_topic(client_config(sasl_broker, "SCRAM-SHA-256"))
    auth = {
        "bootstrap_servers": sasl_broker.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "alice",
        "sasl_plain_password": FILE_USERS["alice"],
    }
    producer = KafkaProducer(**auth)
    for i in range(5):
        producer.send(topic, f"k{i}".encode()).get(timeout=15)
    producer.close()
    consumer = KafkaConsumer(
        topic, group_id="kp", auto_offset_reset="earliest", consumer_timeout_ms=15000, **auth
    )
    got = []
    for msg in consumer:
        got.append(msg.value)
        if len(got) == 5:
            break
    consumer.close()
    assert got == [f"k{i}".encode() for i in range(5)]


# -- the wire -----------------------------------------------------------------------------------


def _closed(client: RawClient, request: Any, version: int) -> bool:
    return client.request_closes(request, version)


def test_unauthenticated_metadata_closes_the_connection(sasl_broker) -> None:
    client = RawClient(sasl_broker.port)
    try:
        versions = client.request(ApiVersionsRequest(), 3)
        keys = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
        assert keys[17] == (0, 1) and keys[36] == (0, 2)
        assert _closed(client, MetadataRequest(topics=None), 1)
    finally:
        client.close()


def test_handshake_answers(sasl_broker) -> None:
    client = RawClient(sasl_broker.port)
    try:
        resp = client.request(SaslHandshakeRequest(mechanism="GSSAPI"), 1)
        assert resp.error_code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
        assert resp.mechanisms == MECHANISMS
        assert _closed(client, SaslHandshakeRequest(mechanism="PLAIN"), 1)  # failed: done
    finally:
        client.close()
    client = RawClient(sasl_broker.port)
    try:
        assert _closed(client, SaslAuthenticateRequest(auth_bytes=b"\0alice\0x"), 2)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("mechanism", "token"),
    [
        ("SCRAM-SHA-256", b"x,,n=alice,r=abc"),
        ("SCRAM-SHA-512", b"n,,n=alice"),
        ("SCRAM-SHA-256", b"\xff\xfe\x00garbage"),
        ("PLAIN", b"no separators"),
        ("PLAIN", b"\0nobody\0alice-secret"),
    ],
)
def test_malformed_tokens_fail_cleanly(sasl_broker, mechanism: str, token: bytes) -> None:
    client = RawClient(sasl_broker.port)
    try:
        assert client.request(SaslHandshakeRequest(mechanism=mechanism), 1).error_code == 0
        resp = client.request(SaslAuthenticateRequest(auth_bytes=token), 2)
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert resp.error_message.startswith("Authentication failed")
        # The broker disconnects after a failure: even ApiVersions gets no answer.
        assert _closed(client, ApiVersionsRequest(), 3)
    finally:
        client.close()
    # the broker is unharmed
    client = RawClient(sasl_broker.port)
    try:
        assert client.request(ApiVersionsRequest(), 3).error_code == 0
    finally:
        client.close()


@pytest.mark.parametrize("version", [0, 1, 2])
def test_plain_at_the_wire_then_requests_work(sasl_broker, version: int) -> None:
    client = RawClient(sasl_broker.port)
    try:
        assert client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
        resp = client.request(SaslAuthenticateRequest(auth_bytes=b"\0carol\0carol-secret"), version)
        assert resp.error_code == 0 and resp.auth_bytes == b""
        assert resp.session_lifetime_ms == 0
        assert client.request(MetadataRequest(topics=None), 1).brokers
        again = client.request(SaslAuthenticateRequest(auth_bytes=b"x"), version)
        assert again.error_code == ErrorCode.ILLEGAL_SASL_STATE
        handshake = client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1)
        assert handshake.error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert client.request(MetadataRequest(topics=None), 1).brokers  # still open
    finally:
        client.close()


# -- start-up -------------------------------------------------------------------------------------


def test_missing_users_file_stops_the_broker(broker_factory, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        broker_factory(
            security__sasl__enabled=True,
            security__sasl__users_file=str(tmp_path / "missing.toml"),
        )
    log = (tmp_path / "broker-0-broker.log").read_text()
    assert "security.sasl.users_file" in log and "file not found" in log


# -- TLS ------------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key)."""
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    try:
        _certificates_with_cryptography(ca_path, cert_path, key_path)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        _certificates_with_openssl(directory, ca_path, cert_path, key_path)
    return ca_path, cert_path, key_path


def _certificates_with_cryptography(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    from tls_helpers import write_certificates

    write_certificates(ca_path, cert_path, key_path)


def _certificates_with_openssl(d: Path, ca_path: Path, cert_path: Path, key_path: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(ca_path), "-days", "1",
        "-subj", "/CN=shazamq test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", str(key_path), "-out", str(d / "server.csr"),
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(ca_path),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(cert_path), "-days", "1",
        "-extfile", str(d / "san.cnf"))  # fmt: skip


@pytest.fixture
def certificates(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    d = tmp_path / "certs"
    d.mkdir()
    yield _certificates(d)


def _tls_settings(cert: Path, key: Path) -> dict[str, Any]:
    return {
        "security__tls__enabled": True,
        "security__tls__cert_file": str(cert),
        "security__tls__key_file": str(key),
    }


def test_tls_produce_and_consume(broker_factory, certificates) -> None:
    ca, cert, key = certificates
    broker = broker_factory(**_tls_settings(cert, key))
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
    }
    topic = new_topic(conf)
    assert produce_and_consume(conf, topic, n=10) == [f"m{i}".encode() for i in range(10)]
    # a plaintext client gets nowhere
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=2)


def test_sasl_ssl_with_scram_sha512(broker_factory, certificates, tmp_path: Path) -> None:
    """The production example's listener: TLS, and SCRAM-SHA-512 users from a file."""
    ca, cert, key = certificates
    users = _write_users(tmp_path / "users.toml", {"alice": "secret"})
    settings = {
        **_tls_settings(cert, key),
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": '["SCRAM-SHA-512"]',
        "security__sasl__users_file": str(users),
    }
    broker = broker_factory(**settings)
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "secret",
    }
    topic = new_topic(conf)
    assert produce_and_consume(conf, topic, n=10) == [f"m{i}".encode() for i in range(10)]
