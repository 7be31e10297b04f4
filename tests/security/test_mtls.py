"""TLS client certificates (mTLS) as principals: Kafka's ssl.principal.mapping.rules.

Unit: RFC 2253 names (order, escaping, multi-valued RDNs), RULE and DEFAULT, L/U, group
references, bad rules refused. Broker process (TLS with ca_file, authorization on):
confluent-kafka with an admin certificate mapped by a RULE to the super user
``User:admin`` creates a topic; a certificate mapped by DEFAULT to
``User:CN=reader,O=Other`` is refused the produce with TOPIC_AUTHORIZATION_FAILED until
an ACL names that principal; with rules that do not match a certificate, its connection
is closed; a bad rule stops the broker at start naming the key.
"""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from tls_helpers import write_certificates, write_client_certificate

from shazamq.broker.security.tls import certificate_principals, distinguished_name, parse_rules
from shazamq.protocol import framing
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest

RULES = ["RULE:^CN=([^,]+),OU=clients,O=Example$/$1/L", "DEFAULT"]


def subject(*pairs: tuple[str, str]) -> tuple:
    return tuple(((k, v),) for k, v in pairs)


def test_distinguished_names() -> None:
    s = subject(("countryName", "US"), ("organizationName", "Example"), ("commonName", "alice"))
    assert distinguished_name(s) == "CN=alice,O=Example,C=US"
    odd = subject(("organizationName", 'A, "B" + C'), ("commonName", " #lead"))
    assert distinguished_name(odd) == 'CN=\\ #lead,O=A\\, \\"B\\" \\+ C'
    multi = ((("commonName", "a"), ("userId", "7")),)
    assert distinguished_name(multi) == "CN=a+UID=7"


def test_rules() -> None:
    principal = certificate_principals(RULES)
    admin = subject(("organizationName", "Example"), ("organizationalUnitName", "clients"))
    assert principal({"subject": (*admin, (("commonName", "Admin"),))}) == "User:admin"
    other = subject(("organizationName", "Other"), ("commonName", "reader"))
    assert principal({"subject": other}) == "User:CN=reader,O=Other"
    upper = certificate_principals(["RULE:^CN=(.*?)(,.*)?$/svc-$1/U"])
    assert upper({"subject": other}) == "User:SVC-READER"
    slash = certificate_principals(["RULE:^CN=([^,]*),O=(.*)$/$2\\/$1/"])
    assert slash({"subject": other}) == "User:Other/reader"
    only = certificate_principals(["RULE:^CN=x$/x/"])
    assert only({"subject": other}) is None  # no rule applies: no principal


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        ([], "no rule"),
        (["RULE:^CN=(.*)$/$2/"], "names a group"),
        (["RULE:(/x/"], "bad pattern"),
        (["RULES:^CN=(.*)$/$1/"], "neither DEFAULT nor RULE"),
        (["RULE:^CN=(.*)$/$1/X"], "neither DEFAULT nor RULE"),
    ],
)
def test_bad_rules(rules: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_rules(rules)


# -- a broker process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    paths = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}
    write_certificates(paths["ca"], paths["cert"], paths["key"], ca_key_path=paths["ca-key"])
    for name, subj in (
        ("admin", [("O", "Example"), ("OU", "clients"), ("CN", "Admin")]),
        ("reader", [("O", "Other"), ("CN", "reader")]),
    ):
        paths[name], paths[f"{name}-key"] = d / f"{name}.pem", d / f"{name}-key.pem"
        write_client_certificate(
            paths["ca"], paths["ca-key"], paths[name], paths[f"{name}-key"], subj
        )
    return paths


def tls_settings(pki: dict[str, Path], rules: list[str]) -> dict[str, Any]:
    return {
        "security__tls__enabled": True,
        "security__tls__cert_file": str(pki["cert"]),
        "security__tls__key_file": str(pki["key"]),
        "security__tls__ca_file": str(pki["ca"]),
        "security__tls__principal_mapping_rules": json.dumps(rules),
        "security__authorization__enabled": True,
        "security__authorization__super_users": '["User:admin"]',
    }


def conf(broker, pki: dict[str, Path], who: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki["ca"]),
        "ssl.certificate.location": str(pki[who]),
        "ssl.key.location": str(pki[f"{who}-key"]),
    }


def produce(broker, pki: dict[str, Path], who: str, topic: str) -> KafkaError | None:
    delivered: list[Any] = []
    p = Producer({**conf(broker, pki, who), "message.timeout.ms": 5000})
    p.produce(topic, value=b"v", on_delivery=lambda err, _m: delivered.append(err))
    p.flush(8)
    assert len(delivered) == 1
    return delivered[0]


def test_certificate_principals_are_authorized(broker_factory, pki) -> None:
    broker = broker_factory(**tls_settings(pki, RULES))
    admin = AdminClient(conf(broker, pki, "admin"))
    topic = f"mtls-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)  # User:admin: super user
    err = produce(broker, pki, "reader", topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    acl = AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        "User:CN=reader,O=Other",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    for f in admin.create_acls([acl]).values():
        f.result(15)
    assert produce(broker, pki, "reader", topic) is None


def test_a_certificate_no_rule_maps_is_closed(broker_factory, pki) -> None:
    broker = broker_factory(**tls_settings(pki, [RULES[0]]))  # no DEFAULT
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    for who, answered in (("admin", True), ("reader", False)):
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.load_cert_chain(str(pki[who]), str(pki[f"{who}-key"]))
        with (
            socket.create_connection(("127.0.0.1", broker.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(framing.encode_request(ApiVersionsRequest(), 0, 1, "mtls"))
            try:
                data = s.recv(4)
            except (ConnectionError, ssl.SSLError):
                data = b""
            assert bool(data) is answered, who


def test_a_bad_rule_stops_the_broker(broker_factory, pki) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        broker_factory(**tls_settings(pki, ["RULE:^CN=(.*)$/$3/"]))
