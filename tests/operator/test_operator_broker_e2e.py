"""End to end: the broker pods the operator renders really run, as ONE cluster clients use.

The test plays the kubelet. For each replica of the StatefulSet rendered for the README's
Quick Start cluster (3 brokers) it writes the ConfigMap and the cluster Secret (as the
operator would create it) where the pod mounts them, builds the pod's environment (downward
API, `$(VAR)` expansion, Secrets), runs the container's command
(`python -m shazamq.broker --config ...`) and waits for the readiness probe's port. Where
the machine allows it (`unshare --uts`), each broker runs with the pod's hostname, so the
broker id really comes from the pod ordinal; elsewhere the id is given explicitly.

Overrides, as a node differs from a pod: data dir, ports and advertised host
(`SHAZAMQ_BROKER__DATA_DIR`, `SHAZAMQ_BROKER__PORT`, `SHAZAMQ_METRICS__PORT`,
`SHAZAMQ_BROKER__ADVERTISED_HOST=127.0.0.1`), and the quorum: the rendered voters
(`<i>@my-cluster-<i>.my-cluster-headless.messaging.svc:9093`, names only cluster DNS
resolves) become `<i>@127.0.0.1:<free port>` (`SHAZAMQ_CLUSTER__VOTERS`, a JSON list), bound
on loopback (`SHAZAMQ_CLUSTER__QUORUM_HOST`), and the rendered `secret_file` is pointed at
the file written where the Secret is mounted (`SHAZAMQ_CLUSTER__SECRET_FILE`). Everything
else is the rendered configuration.

Then, with confluent-kafka: every broker's Metadata lists all three brokers (one cluster
id, one controller); a topic created with replication factor 3 has 3 replicas and an ISR of
3 on every partition, as seen from every broker; records produced with acks=all through one
broker are consumed through another. A failure shows the tail of every broker's log.

Skipped (with the reason) when the broker's entry point does not exist yet.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubelet import Brokers, Pod, PodAddress, decoded, loopback_voters
from operator_support import ROOT, quick_start

from shazamq.config import parse_voter
from shazamq.operator.resources import QUORUM_PORT, ClusterModel
from tests.conftest import free_port

BROKER_MAIN = ROOT / "shazamq" / "broker" / "__main__.py"
CLUSTER_ID = ClusterModel.from_resource(quick_start()).config.broker.cluster_id
SECRET_VALUE = "e2e-cluster-secret-0123456789abcdefghijklmnopqrstuv"

# Generous: three Python brokers start, elect a quorum leader and register on a 2-core box.
READY_TIMEOUT = 60.0
FORM_TIMEOUT = 120.0
REPLICATED_TIMEOUT = 90.0
CLIENT_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BROKER_MAIN.exists(),
        reason="the broker entry point (shazamq/broker/__main__.py) is not written yet",
    ),
]


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1, from this worker's slice."""
    return [free_port() for _ in range(n)]


def loopback_voter_ids(model: ClusterModel) -> list[int]:
    """The rendered voters' ids, checked to be the pods' names on the quorum port."""
    ids = []
    for entry in model.config.cluster.voters:
        node, host, port = parse_voter(entry)
        assert (host, port) == (model.advertised_host(node), QUORUM_PORT), entry
        ids.append(node)
    return ids


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Brokers]:
    model = ClusterModel.from_resource(quick_start())
    # What the operator's handler creates once (with a random value) for this cluster.
    secrets = {model.cluster_secret_name: decoded(model.generate_cluster_secret(SECRET_VALUE))}
    config_maps = {model.config_map_name: model.generate_config_map()}
    pod_spec = model.generate_statefulset()["spec"]["template"]["spec"]
    replicas = model.spec.replicas
    ports = free_ports(3 * replicas)
    started = Brokers(
        Pod(
            f"{model.name}-{i}",
            i,
            model.namespace,
            tmp_path,
            PodAddress("127.0.0.1", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]),
        )
        for i in range(replicas)
    )
    voters = loopback_voters(loopback_voter_ids(model), started)
    assert len(voters) == 3, voters  # the Quick Start's three brokers all vote
    secret_file = model.config.cluster.secret_file
    assert secret_file is not None
    try:
        for pod in started:  # all first, as the StatefulSet's Parallel policy does
            pod.mount(pod_spec, config_maps, secrets)
            pod.start(voters, secret_file)
        deadline = time.monotonic() + READY_TIMEOUT
        for pod in started:
            pod.wait_ready(deadline)
        yield started
    finally:
        started.stop_all()


def metadata(bootstrap: str, topic: str | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    return client.list_topics(topic, timeout=5)


def replication(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """partition -> (leader, replicas, ISR), as the broker at `bootstrap` tells it."""
    t = metadata(bootstrap, topic).topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in t.partitions.values()}


def test_rendered_pods_form_one_cluster_that_clients_use(pods: Brokers) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    admin = pytest.importorskip("confluent_kafka.admin")
    assert len(pods) == 3
    ids = [0, 1, 2]
    for pod in pods:
        assert pod.advertised == f"{pod.name}.my-cluster-headless.messaging.svc"

    # One cluster: every broker's Metadata lists all three, with one id (the rendered one,
    # recorded in the metadata log once the quorum has a leader) and a live controller.
    for pod in pods:
        pods.wait_for(
            lambda pod=pod: sorted(metadata(pod.bootstrap).brokers) == ids,
            FORM_TIMEOUT,
            f"{pod.name}'s Metadata to list brokers {ids} (the cluster to form)",
        )
        pods.wait_for(
            lambda pod=pod: metadata(pod.bootstrap).cluster_id == CLUSTER_ID,
            FORM_TIMEOUT,
            f"{pod.name}'s Metadata to carry the rendered cluster id {CLUSTER_ID}",
        )
    with pods.explained():
        views = []
        for pod in pods:
            md = metadata(pod.bootstrap)
            brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
            # the id is the pod ordinal; the address the one each broker advertises
            assert brokers == {p.ordinal: ("127.0.0.1", p.port) for p in pods}, brokers
            assert md.cluster_id == CLUSTER_ID  # the rendered one, shared by all
            # as in KRaft, the controller a broker names is a live broker that forwards
            # admin requests to the metadata quorum, not necessarily the same one
            assert md.controller_id in ids, f"no controller: {md.controller_id}"
            views.append(md.cluster_id)
        assert all(v == views[0] for v in views), views

    # A topic with replication factor 3: 3 replicas and an ISR of 3 on every partition.
    topic = f"e2e-{uuid.uuid4().hex[:8]}"
    partitions = 3
    creator = admin.AdminClient({"bootstrap.servers": pods[1].bootstrap})
    futures = creator.create_topics([admin.NewTopic(topic, partitions, 3)])
    with pods.explained():
        futures[topic].result(timeout=CLIENT_TIMEOUT)

    def fully_replicated() -> bool:
        states = [replication(pod.bootstrap, topic) for pod in pods]
        return all(
            len(state) == partitions
            and all(
                leader in ids and replicas == ids and isr == ids
                for leader, replicas, isr in state.values()
            )
            for state in states
        )

    pods.wait_for(
        fully_replicated,
        REPLICATED_TIMEOUT,
        f"every broker to show {topic}'s {partitions} partitions with 3 replicas, ISR 3",
    )

    # acks=all through broker 0, read back through broker 2.
    count = 30
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    producer = confluent_kafka.Producer({"bootstrap.servers": pods[0].bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), on_delivery=delivered)
    with pods.explained():
        assert producer.flush(CLIENT_TIMEOUT) == 0, "records left undelivered"
        assert not failures, failures

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": pods[2].bootstrap,
            "group.id": f"e2e-{topic}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
            for p in range(partitions)
        ]
    )
    values: set[bytes] = set()
    errors: list[str] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            errors.append(str(msg.error()))
        else:
            values.add(msg.value())
    consumer.close()
    with pods.explained():
        assert values == {f"v{i}".encode() for i in range(count)}, (
            f"consumed {len(values)} of {count} records; consumer errors: {errors[-5:]}"
        )
    del producer, consumer, creator
