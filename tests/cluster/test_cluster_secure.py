"""A cluster whose listeners require SASL (and TLS) still replicates.

Followers fetching from leaders, and transaction markers between brokers, authenticate as
the brokers' internal principal (its password is the cluster secret, never configured by
hand) over the same TLS the clients use. RF 3 topics reach a full ISR, acks=all produces
succeed, and a user without the secret cannot pose as a broker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tls_helpers import write_certificates

from shazamq.broker.security import INTERNAL_USER

from .conftest import ClusterFactory, deep_merge
from .test_cluster_basic import FAST_CLUSTER, NETNS, wait_for

pytestmark = pytest.mark.slow
USER, PASSWORD = "alice", "alice-secret"


def secure_config(tls: Path | None, *, client_certificates: bool = True) -> dict[str, Any]:
    security: dict[str, Any] = {
        "sasl": {"enabled": True, "mechanisms": ["SCRAM-SHA-512"], "users": {USER: PASSWORD}}
    }
    if tls is not None:
        security["tls"] = {
            "enabled": True,
            "cert_file": str(tls / "cert.pem"),
            "key_file": str(tls / "key.pem"),
        }
        if client_certificates:
            security["tls"]["ca_file"] = str(tls / "ca.pem")
    return deep_merge(FAST_CLUSTER, {"security": security})


def client_config(bootstrap: str, tls: Path | None, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
        **extra,
    }
    if tls is not None:
        conf["ssl.ca.location"] = str(tls / "ca.pem")
        conf["ssl.certificate.location"] = str(tls / "cert.pem")
        conf["ssl.key.location"] = str(tls / "key.pem")
    return conf


@pytest.mark.parametrize(
    ("with_tls", "client_certificates"),
    [(False, False), (True, True), (True, False)],
    # sasl-ssl-no-ca: TLS without a CA file, as the operator renders a listener with
    # SASL logins; brokers verify each other through their shared certificate
    ids=["sasl", "sasl-ssl", "sasl-ssl-no-ca"],
)
def test_replication_through_authenticated_listeners(
    cluster_factory: ClusterFactory, tmp_path: Path, with_tls: bool, client_certificates: bool
) -> None:
    tls = None
    if with_tls:
        tls = tmp_path / "tls"
        tls.mkdir()
        write_certificates(tls / "ca.pem", tls / "cert.pem", tls / "key.pem")
    # TLS certificates name 127.0.0.1: that variant runs on loopback
    cluster = cluster_factory.start(
        3,
        netns=NETNS and not with_tls,
        extra_config=secure_config(tls, client_certificates=client_certificates),
    )
    admin = AdminClient(client_config(cluster.bootstrap, tls))
    wait_for(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 40, "membership")
    admin.create_topics([NewTopic("secured", 3, 3, config={"min.insync.replicas": "2"})])[
        "secured"
    ].result(30)
    wait_for(lambda: fully_replicated_secure(admin, "secured", 3), 40, "a full ISR everywhere")

    acked: list[int] = []
    p = Producer(client_config(cluster.bootstrap, tls, acks="all", **{"enable.idempotence": True}))
    for i in range(300):
        p.produce(
            "secured",
            value=b"s-%04d" % i,
            partition=i % 3,
            on_delivery=lambda err, m: acked.append(m.offset()) if err is None else None,
        )
    assert p.flush(30) == 0
    assert len(acked) == 300

    c = Consumer(client_config(cluster.bootstrap, tls, **{"group.id": "secure-reader"}))
    c.assign([TopicPartition("secured", part, 0) for part in range(3)])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 300 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    assert sorted(got) == [b"s-%04d" % i for i in range(300)]

    # the brokers' principal is nobody's to use without the cluster secret
    impostor = AdminClient(
        {
            **client_config(cluster.bootstrap, tls),
            "sasl.username": INTERNAL_USER,
            "sasl.password": "guess",
        }
    )
    # the broker answers the failed login, then closes: librdkafka reports either
    with pytest.raises(Exception, match=r"uthentication|transport"):
        impostor.list_topics(timeout=5)


def fully_replicated_secure(admin: AdminClient, topic: str, partitions: int) -> bool:
    t = admin.list_topics(topic, timeout=5).topics.get(topic)
    if t is None or t.error is not None or len(t.partitions) != partitions:
        return False
    return all(
        p.leader >= 0 and sorted(p.isrs) == sorted(p.replicas) for p in t.partitions.values()
    )
