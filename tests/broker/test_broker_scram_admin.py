"""SCRAM credentials managed through the Kafka APIs, on a single broker with SASL enabled.

Covers: confluent-kafka's AdminClient creating a user (AlterUserScramCredentials), a
producer then authenticating as that user with SCRAM-SHA-512, describe listing the user
with its mechanisms and iterations (all users, or the named ones), a deletion making new
logins fail with an authentication error; the error codes for too few / too many
iterations, an unknown mechanism, a user altered twice in one request, deleting or
describing a missing credential (at the wire where the client refuses to send the
request); an API credential overriding a configured user's password for that mechanism
and the configured one applying again once it is deleted; the credentials surviving a
broker restart, and being stored (for later) on a broker without SASL.
"""

from __future__ import annotations

import hashlib
import time
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
from kafka_helpers import RawClient

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_user_scram_credentials_request import (
    AlterUserScramCredentialsRequest,
    ScramCredentialDeletion,
    ScramCredentialUpsertion,
)
from shazamq.protocol.messages.describe_user_scram_credentials_request import (
    DescribeUserScramCredentialsRequest,
    UserName,
)
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
SHA256, SHA512 = ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512


def sasl_settings() -> dict[str, Any]:
    return {
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": '["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]',
        "security__sasl__users": f'{{"{ADMIN}": "{ADMIN_PASSWORD}"}}',
    }


@pytest.fixture
def broker(broker_factory):
    return broker_factory(**sasl_settings())


def conf(broker, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def admin(broker) -> AdminClient:
    return AdminClient(conf(broker, ADMIN, ADMIN_PASSWORD))


def upsert(user: str, password: str, mechanism=SHA512, iterations: int = 8192):
    return UserScramCredentialUpsertion(
        user, ScramCredentialInfo(mechanism, iterations), password.encode()
    )


def alter(client: AdminClient, alterations: list) -> dict[str, Any]:
    """User -> None (done) or the Kafka error the broker answered for that user."""
    out: dict[str, Any] = {}
    for user, future in client.alter_user_scram_credentials(alterations).items():
        try:
            future.result(15)
            out[user] = None
        except KafkaException as exc:
            out[user] = exc.args[0]
    return out


def describe_all(client: AdminClient) -> dict[str, dict[ScramMechanism, int]]:
    descriptions = client.describe_user_scram_credentials().result(15)
    return {
        user: {info.mechanism: info.iterations for info in d.scram_credential_infos}
        for user, d in descriptions.items()
    }


def logs_in(broker, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> bool:
    """Whether a fresh confluent-kafka producer authenticates and delivers one record."""
    topic = f"scram-{uuid.uuid4().hex[:8]}"
    client = admin(broker)  # alive until the future resolves
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    errors: list[KafkaError] = []
    delivered: list[Any] = []
    producer = Producer(
        {
            **conf(broker, user, password, mechanism),
            "error_cb": errors.append,
            "message.timeout.ms": 3000,
        }
    )
    producer.produce(topic, value=b"hello", on_delivery=lambda err, _m: delivered.append(err))
    producer.flush(6)
    # `is None`: KafkaError's == against None leaves a TypeError pending in confluent-kafka
    if len(delivered) == 1 and delivered[0] is None:
        return True
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), (errors, delivered)
    return False


def wire_client(broker) -> RawClient:
    """A raw connection authenticated as the admin (PLAIN), for requests clients refuse."""
    client = RawClient(broker.port)
    assert client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
    token = f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode()
    assert client.request(SaslAuthenticateRequest(auth_bytes=token), 2).error_code == 0
    return client


def test_create_login_describe_delete(broker) -> None:
    client = admin(broker)
    assert describe_all(client) == {}  # configured users are not API credentials
    assert alter(client, [upsert("ann", "ann-pw"), upsert("ben", "ben-pw", SHA256, 4096)]) == {
        "ann": None,
        "ben": None,
    }
    assert logs_in(broker, "ann", "ann-pw")
    assert not logs_in(broker, "ann", "wrong-pw")
    assert not logs_in(broker, "ann", "ann-pw", "SCRAM-SHA-256")  # no credential for that one
    assert logs_in(broker, "ben", "ben-pw", "SCRAM-SHA-256")
    assert logs_in(broker, "ben", "ben-pw", "PLAIN")  # PLAIN checks the SHA-256 credential
    assert describe_all(client) == {"ann": {SHA512: 8192}, "ben": {SHA256: 4096}}

    # a second mechanism for the same user, and a new password
    assert alter(client, [upsert("ann", "ann-pw2", SHA256, 16384)]) == {"ann": None}
    assert describe_all(client)["ann"] == {SHA256: 16384, SHA512: 8192}
    named = client.describe_user_scram_credentials(["ben"])
    info = named["ben"].result(15).scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in info] == [(SHA256, 4096)]

    assert alter(client, [UserScramCredentialDeletion("ann", SHA512)]) == {"ann": None}
    assert not logs_in(broker, "ann", "ann-pw")
    assert logs_in(broker, "ann", "ann-pw2", "SCRAM-SHA-256")
    assert alter(client, [UserScramCredentialDeletion("ann", SHA256)]) == {"ann": None}
    assert not logs_in(broker, "ann", "ann-pw2", "SCRAM-SHA-256")
    assert describe_all(client) == {"ben": {SHA256: 4096}}
    assert "deleted the SCRAM-SHA-256 credential of user 'ann'" in broker.log_text()
    assert "ann-pw" not in broker.log_text()


def test_error_codes(broker) -> None:
    client = admin(broker)
    assert alter(client, [upsert("ok", "ok-pw")]) == {"ok": None}
    got = alter(
        client,
        [
            upsert("few", "pw", iterations=4095),
            upsert("many", "pw", iterations=16385),
            UserScramCredentialDeletion("nobody", SHA512),
            UserScramCredentialDeletion("ok", SHA256),  # ok has SHA-512 only
            upsert("twice", "pw", SHA256),
            upsert("twice", "pw", SHA512),
        ],
    )
    assert {user: err.code() for user, err in got.items()} == {
        "few": ErrorCode.UNACCEPTABLE_CREDENTIAL,
        "many": ErrorCode.UNACCEPTABLE_CREDENTIAL,
        "nobody": ErrorCode.RESOURCE_NOT_FOUND,
        "ok": ErrorCode.RESOURCE_NOT_FOUND,
        "twice": ErrorCode.DUPLICATE_RESOURCE,
    }
    assert "iterations" in got["few"].str()
    assert describe_all(client) == {"ok": {SHA512: 8192}}  # nothing else changed
    missing = client.describe_user_scram_credentials(["nobody"])["nobody"]
    with pytest.raises(KafkaException) as err:
        missing.result(15)
    assert err.value.args[0].code() == ErrorCode.RESOURCE_NOT_FOUND

    # what confluent-kafka will not send: an unknown mechanism, empty names and salts, a
    # user named twice in a describe; one user's error does not stop another's change
    wire = wire_client(broker)
    try:
        salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 4096)
        resp = wire.request(
            AlterUserScramCredentialsRequest(
                deletions=[ScramCredentialDeletion(name="ok", mechanism=3)],
                upsertions=[
                    ScramCredentialUpsertion(
                        name="bad-mech",
                        mechanism=0,
                        iterations=4096,
                        salt=b"s",
                        salted_password=b"x",
                    ),
                    ScramCredentialUpsertion(
                        name="", mechanism=1, iterations=4096, salt=b"s", salted_password=b"x"
                    ),
                    ScramCredentialUpsertion(
                        name="no-salt", mechanism=1, iterations=4096, salt=b"", salted_password=b"x"
                    ),
                    ScramCredentialUpsertion(
                        name="wire",
                        mechanism=1,
                        iterations=4096,
                        salt=b"salt",
                        salted_password=salted,
                    ),
                ],
            ),
            0,
        )
        codes = {r.user: r.error_code for r in resp.results}
        assert codes == {
            "ok": ErrorCode.UNSUPPORTED_SASL_MECHANISM,
            "bad-mech": ErrorCode.UNSUPPORTED_SASL_MECHANISM,
            "": ErrorCode.UNACCEPTABLE_CREDENTIAL,
            "no-salt": ErrorCode.UNACCEPTABLE_CREDENTIAL,
            "wire": 0,
        }
        desc = wire.request(
            DescribeUserScramCredentialsRequest(
                users=[UserName(name="ok"), UserName(name="ok"), UserName(name="wire")]
            ),
            0,
        )
        assert desc.error_code == 0
        assert [(r.user, r.error_code) for r in desc.results] == [
            ("ok", ErrorCode.DUPLICATE_RESOURCE),
            ("wire", 0),
        ]
        assert [(i.mechanism, i.iterations) for i in desc.results[1].credential_infos] == [
            (1, 4096)
        ]
    finally:
        wire.close()
    # the salted password the client computed is what the broker derived its keys from
    assert logs_in(broker, "wire", "pw", "SCRAM-SHA-256")


def test_api_credential_overrides_the_configured_user_until_deleted(broker) -> None:
    client = admin(broker)
    assert alter(client, [upsert(ADMIN, "rotated", SHA256)]) == {ADMIN: None}
    assert logs_in(broker, ADMIN, "rotated", "SCRAM-SHA-256")
    assert not logs_in(broker, ADMIN, ADMIN_PASSWORD, "SCRAM-SHA-256")
    assert logs_in(broker, ADMIN, ADMIN_PASSWORD, "SCRAM-SHA-512")  # other mechanism: config
    assert alter(client, [UserScramCredentialDeletion(ADMIN, SHA256)]) == {ADMIN: None}
    assert logs_in(broker, ADMIN, ADMIN_PASSWORD, "SCRAM-SHA-256")
    assert not logs_in(broker, ADMIN, "rotated", "SCRAM-SHA-256")


def test_credentials_survive_a_restart(broker) -> None:
    assert alter(admin(broker), [upsert("kept", "kept-pw", iterations=5000)]) == {"kept": None}
    broker.restart()
    assert describe_all(admin(broker)) == {"kept": {SHA512: 5000}}
    assert logs_in(broker, "kept", "kept-pw")


def test_stored_without_sasl_for_later(broker_factory) -> None:
    plain = broker_factory()
    client = AdminClient({"bootstrap.servers": plain.bootstrap})
    assert alter(client, [upsert("later", "later-pw")]) == {"later": None}
    assert describe_all(client) == {"later": {SHA512: 8192}}
    plain.stop()
    plain.settings.update(sasl_settings())
    plain.start()
    deadline = time.monotonic() + 10
    while not logs_in(plain, "later", "later-pw"):
        assert time.monotonic() < deadline
