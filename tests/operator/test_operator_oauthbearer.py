"""OAUTHBEARER through the CRD: ``spec.security.auth.mechanism: OAUTHBEARER`` with its
``oauthbearer`` settings, rendered into the brokers' ``[security.sasl]``.

Covers: the CRD's schema accepts it; the rendered listener offers OAUTHBEARER and
SCRAM-SHA-512 (a cluster needs a password mechanism: the brokers' own logins and the
operator's user), with the token validation settings (JWKS url, issuer, audience, scopes)
under their broker names; a password mechanism with ``oauthbearer`` offers both; the
operator still logs in with SCRAM as its own user; OAUTHBEARER without settings, or a
JWKS validator without its url, is refused naming the field; every rendered object passes
kubernetes-validate. Against a real broker given the rendered settings: a client logs in
with a token (the unsecured validator, for development) and produces, while the operator's
SCRAM login reads the partitions as the roll does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from operator_support import quick_start, validate_manifest
from test_operator_crd import VALIDATOR
from test_operator_manifests import rendered

from shazamq.operator.admin import OPERATOR_USER
from shazamq.operator.credentials import connection_of
from shazamq.operator.probe import _admin_read
from shazamq.operator.resources import OPERATOR_USER_ENV, ClusterModel, ModelError

OAUTH = {
    "jwksUrl": "https://login.example.com/.well-known/jwks.json",
    "expectedIssuer": "https://login.example.com/",
    "expectedAudience": ["shazamq"],
    "requiredScopes": ["kafka"],
    "clockSkewSeconds": 10,
}


def body(auth: dict[str, Any]) -> dict[str, Any]:
    b = quick_start()
    b["spec"]["security"] = {"auth": {"enabled": True, "secretName": "users", **auth}}
    return b


def operator_secret(password: str) -> dict[str, Any]:
    return {"data": {"password": base64.b64encode(password.encode()).decode()}}


def test_oauthbearer_is_rendered_beside_scram_for_the_operator() -> None:
    b = body({"mechanism": "OAUTHBEARER", "oauthbearer": OAUTH})
    assert not list(VALIDATOR.iter_errors(b))
    model = ClusterModel.from_resource(b)
    sasl = model.config.security.sasl
    assert sasl.enabled
    assert sasl.mechanisms == ("OAUTHBEARER", "SCRAM-SHA-512")
    assert sasl.users_file == "/etc/shazamq/auth/users.toml"
    oauth = sasl.oauthbearer
    assert oauth is not None
    assert (oauth.validator, oauth.jwks_url, oauth.expected_issuer) == (
        "jwks",
        OAUTH["jwksUrl"],
        OAUTH["expectedIssuer"],
    )
    assert oauth.expected_audience == ("shazamq",)
    assert oauth.required_scopes == ("kafka",)
    assert oauth.clock_skew_seconds == 10
    assert "[security.sasl.oauthbearer]" in model.config_toml()
    # the operator's own connection: its SCRAM user, whatever the clients use
    connection = connection_of(model, None, operator_secret("pw"))
    assert connection.login is not None
    assert (connection.login.mechanism, connection.login.user) == ("SCRAM-SHA-512", OPERATOR_USER)
    for obj in rendered(b):
        validate_manifest(obj)


def test_a_password_mechanism_with_oauthbearer_offers_both() -> None:
    model = ClusterModel.from_resource(body({"mechanism": "SCRAM-SHA-256", "oauthbearer": OAUTH}))
    assert model.config.security.sasl.mechanisms == ("SCRAM-SHA-256", "OAUTHBEARER")
    login = connection_of(model, None, operator_secret("pw")).login
    assert login is not None and login.mechanism == "SCRAM-SHA-256"
    plain = ClusterModel.from_resource(body({"mechanism": "PLAIN"}))
    assert plain.config.security.sasl.mechanisms == ("PLAIN",)
    assert plain.config.security.sasl.oauthbearer is None


@pytest.mark.parametrize(
    ("auth", "field", "problem"),
    [
        ({"mechanism": "OAUTHBEARER"}, "spec.security.auth", "needs oauthbearer"),
        (
            {"mechanism": "OAUTHBEARER", "oauthbearer": {"expectedIssuer": "x"}},
            "spec.security.auth.oauthbearer",
            "jwks_url",
        ),
        (
            {"mechanism": "OAUTHBEARER", "oauthbearer": {"jwksUrl": "ftp://keys"}},
            "spec.security.auth.oauthbearer.jwksUrl",
            "",
        ),
    ],
)
def test_bad_oauthbearer_settings_name_the_field(auth: dict, field: str, problem: str) -> None:
    with pytest.raises(ModelError) as info:
        ClusterModel.from_resource(body(auth))
    assert field in str(info.value) and problem in str(info.value)


def test_the_schema_refuses_an_unknown_validator() -> None:
    b = body({"mechanism": "OAUTHBEARER", "oauthbearer": {**OAUTH, "validator": "magic"}})
    assert list(VALIDATOR.iter_errors(b))


@pytest.mark.slow
def test_a_broker_given_the_rendered_settings_takes_tokens_and_the_operator(
    broker_factory,
) -> None:
    model = ClusterModel.from_resource(
        body({"mechanism": "OAUTHBEARER", "oauthbearer": {"validator": "unsecured"}})
    )
    sasl = model.config.security.sasl
    assert sasl.oauthbearer is not None
    settings: dict[str, Any] = {
        "security__sasl__enabled": True,
        "security__sasl__mechanisms": json.dumps(list(sasl.mechanisms)),
        # the users file of the Secret (here: one user), and the operator's user through the
        # environment override the pod template names
        "security__sasl__users": json.dumps({"alice": "alice-password"}),
        "security__sasl__oauthbearer__validator": sasl.oauthbearer.validator,
        OPERATOR_USER_ENV.removeprefix("SHAZAMQ_").lower(): "operator-password",
    }
    broker = broker_factory(**settings)

    operator = connection_of(model, None, operator_secret("operator-password"))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, **operator.librdkafka()})
    admin.create_topics([NewTopic("tokens", 1, 1)])["tokens"].result(timeout=30)

    # a client with a token (librdkafka's unsecured JWT, principal "carol")
    errors: list[Any] = []
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "enable.sasl.oauthbearer.unsecure.jwt": True,
            "sasl.oauthbearer.config": "principal=carol",
            "message.timeout.ms": 20000,
        }
    )
    for i in range(5):
        producer.produce("tokens", f"v{i}".encode(), on_delivery=lambda e, _m: errors.append(e))
    assert producer.flush(30) == 0
    assert errors == [None] * 5

    # the operator's SCRAM login reads what the roll reads
    partitions = _admin_read(broker.bootstrap, 1, operator)
    assert [(p.topic, p.index) for p in partitions if p.topic == "tokens"] == [("tokens", 0)]
