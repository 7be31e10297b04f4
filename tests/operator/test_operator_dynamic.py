"""The pure halves of dynamic settings and of the operator's credentials.

Covers: `dynamic.classify` sends changed dynamic settings under their Kafka names and
names every other changed key as needing a restart (a dynamic setting going back to unset
included); `restart_part` leaves only what needs a restart; `dynamic_settings` comes from
the config models' markers; `credentials.connection_of` builds the connection of a
plaintext, TLS, SASL and SASL_SSL cluster from its Secrets and names a missing one.
"""

from __future__ import annotations

import base64

import msgspec
import pytest
from operator_support import production, quick_start

from shazamq.broker.cluster.client import SaslLogin
from shazamq.config import BrokerConfig, dynamic_settings
from shazamq.operator.admin import OPERATOR_USER, PLAINTEXT
from shazamq.operator.credentials import CredentialsError, connection_of, secrets_needed
from shazamq.operator.dynamic import classify, desired, restart_part
from shazamq.operator.resources import ClusterModel


def config(**sections: dict) -> BrokerConfig:
    return msgspec.convert(sections, BrokerConfig)


def test_the_dynamic_settings_are_the_marked_fields() -> None:
    names = dynamic_settings()
    assert names["message.max.bytes"] == ("broker", "message_max_bytes")
    assert names["log.retention.hours"] == ("storage", "retention_hours")
    assert names["max.connections"] == ("broker", "max_connections")
    assert "log.dirs" not in names and "num.partitions" not in names
    assert all(section in ("broker", "storage") for section, _ in names.values())


def test_classify_splits_a_change() -> None:
    old = config(storage={"retention_hours": 168}, broker={"default_partitions": 1})
    new = config(
        storage={"retention_hours": 24, "cleanup_policy": "compact"},
        broker={"message_max_bytes": 2000000, "default_partitions": 3, "port": 9999},
    )
    change = classify(old, new)
    assert change.dynamic == {
        "log.retention.hours": "24",
        "log.cleanup.policy": "compact",
        "message.max.bytes": "2000000",
    }
    assert change.restart == ("broker.default_partitions", "broker.port")
    assert classify(old, old).empty


def test_a_dynamic_setting_going_back_to_unset_needs_a_restart() -> None:
    change = classify(config(storage={"retention_ms": 1000}), config())
    assert change.dynamic == {} and change.restart == ("storage.retention_ms",)
    change = classify(config(), config(storage={"retention_ms": 1000}))
    assert change.dynamic == {"log.retention.ms": "1000"} and not change.restart


def test_restart_part_drops_only_dynamic_settings() -> None:
    c = config(storage={"retention_hours": 24}, broker={"default_partitions": 3})
    part = restart_part(c)
    assert part.storage.retention_hours == 168
    assert part.broker.default_partitions == 3
    assert restart_part(config(storage={"retention_hours": 24})) == restart_part(config())
    assert desired(c)["log.retention.hours"] == "24"
    assert "log.retention.ms" not in desired(c)  # unset: nothing to send


def _secret(**data: str) -> dict:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_connection_of_each_listener() -> None:
    plain = ClusterModel.from_resource(quick_start())
    assert secrets_needed(plain) == (None, None)
    assert connection_of(plain, None, None) is PLAINTEXT

    prod = ClusterModel.from_resource(production())  # TLS and SCRAM-SHA-512
    tls_name, auth_name = secrets_needed(prod)
    assert tls_name == prod.spec.security.tls.secret_name
    assert auth_name == "production-cluster-operator-credentials"
    conn = connection_of(prod, _secret(**{"ca.crt": "CA"}), _secret(password="pw"))
    assert conn.protocol == "SASL_SSL" and conn.tls and conn.ca_pem == "CA"
    assert conn.login == SaslLogin("SCRAM-SHA-512", OPERATOR_USER, "pw")
    settings = conn.librdkafka()
    assert settings["sasl.username"] == OPERATOR_USER and settings["ssl.ca.pem"] == "CA"
    assert "pw" not in repr(conn)
    # a self-signed certificate is its own anchor
    assert connection_of(prod, _secret(**{"tls.crt": "SELF"}), _secret(password="p")).ca_pem == (
        "SELF"
    )
    with pytest.raises(CredentialsError, match="operator-credentials"):
        connection_of(prod, _secret(**{"ca.crt": "CA"}), None)
    with pytest.raises(CredentialsError, match=r"neither ca\.crt nor tls\.crt"):
        connection_of(prod, _secret(other="x"), _secret(password="pw"))
    with pytest.raises(CredentialsError, match="no key password"):
        connection_of(prod, _secret(**{"ca.crt": "CA"}), _secret(username="u"))
