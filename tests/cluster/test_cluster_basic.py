"""Three brokers as separate processes form one Kafka cluster that every client sees as such.

Each test starts real broker processes (in their own network namespaces where the machine
allows it, else on loopback) and talks to them with confluent-kafka, kafka-python and
aiokafka. Replicas are finally read from every broker's disk and checked byte for byte.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from shazamq.broker.cluster.client import BrokerClient
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.metadata_response import MetadataResponse

from . import netns as netns_mod
from .checker import check
from .conftest import Cluster, ClusterFactory
from .replicas_on_disk import read_replica

pytestmark = pytest.mark.slow

NETNS = netns_mod.available() is None
FAST_CLUSTER: dict[str, Any] = {
    # quick failure detection for tests; production defaults are Kafka's
    "cluster": {"heartbeat_interval_ms": 300, "session_timeout_ms": 3000},
    "replication": {
        "replica_lag_time_max_ms": 4000,
        "default_replication_factor": 3,
        "min_insync_replicas": 2,
    },
}


def deep_merge_configs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except (KafkaException, KeyError) as exc:
            # a broker mid-restart may fail a metadata request or answer without a partition
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})


def topic_state(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    md = admin(bootstrap).list_topics(topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in t.partitions.values()}


def fully_replicated(bootstrap: str, topic: str, partitions: int) -> bool:
    state = topic_state(bootstrap, topic)
    return len(state) == partitions and all(
        leader >= 0 and sorted(isr) == sorted(replicas) for leader, replicas, isr in state.values()
    )


def create_topic(cluster: Cluster, name: str, partitions: int, rf: int = 3) -> None:
    client = admin(cluster.bootstrap)  # alive until the future resolves
    futures = client.create_topics(
        [NewTopic(name, partitions, rf, config={"min.insync.replicas": "2"})]
    )
    futures[name].result(timeout=20)
    wait_for(
        lambda: fully_replicated(cluster.bootstrap, name, partitions),
        30,
        f"{name} fully replicated",
    )


def raw_metadata(address: tuple[str, int], topic: str) -> MetadataResponse:
    """Metadata v12 for one topic, auto-creation allowed, over the broker's own client."""

    async def go() -> MetadataResponse:
        client = BrokerClient(*address)
        try:
            req = MetadataRequest(
                topics=[MetadataRequestTopic(name=topic)], allow_auto_topic_creation=True
            )
            return await client.request(3, 12, req, timeout=30)
        finally:
            await client.close()

    return asyncio.run(go())


def start_cluster(cluster_factory: ClusterFactory, n: int = 3) -> Cluster:
    cluster = cluster_factory.start(n, netns=NETNS, extra_config=FAST_CLUSTER)
    for b in cluster:
        wait_for(
            lambda b=b: len(admin(b.bootstrap).list_topics(timeout=5).brokers) == n,
            40,
            f"broker {b.node_id} to see {n} brokers",
        )
    return cluster


def test_three_brokers_form_one_cluster(cluster_factory: ClusterFactory) -> None:
    cluster = start_cluster(cluster_factory)
    # every broker tells the same story: all brokers, one controller, one cluster id
    views = []
    for b in cluster:
        md = admin(b.bootstrap).list_topics(timeout=5)
        views.append((sorted(md.brokers), md.cluster_id))
        # as in KRaft, a broker names a live broker (itself) as the controller for admin
        # requests, which it forwards to the metadata quorum
        assert md.controller_id in (0, 1, 2)
    assert views[0][0] == [0, 1, 2]
    assert all(v == views[0] for v in views), views
    assert views[0][1]

    # a topic created through one broker is served by all, leaders spread
    client = admin(cluster[1].bootstrap)
    create = client.create_topics([NewTopic("orders", 6, 3)])
    create["orders"].result(timeout=20)
    wait_for(lambda: fully_replicated(cluster.bootstrap, "orders", 6), 30, "orders replicated")
    states = [topic_state(b.bootstrap, "orders") for b in cluster]
    assert all(s == states[0] for s in states)
    leaders = {leader for leader, _, _ in states[0].values()}
    assert len(leaders) == 3, states[0]
    assert all(sorted(replicas) == [0, 1, 2] for _, replicas, _ in states[0].values())

    # Metadata auto-creating an internal topic's name creates it as its coordinator would
    # (its partition count, three replicas, marked internal), not as a client's topic
    md = raw_metadata((cluster[2].address, cluster[2].port), "__share_group_state")
    [state_topic] = md.topics
    assert (state_topic.error_code, state_topic.is_internal) == (0, True), state_topic
    wanted = cluster[0].config.groups.share_state_topic_num_partitions
    wait_for(
        lambda: fully_replicated(cluster.bootstrap, "__share_group_state", wanted),
        30,
        "__share_group_state created by Metadata",
    )
    assert all(
        sorted(replicas) == [0, 1, 2]
        for _, replicas, _ in topic_state(cluster.bootstrap, "__share_group_state").values()
    )

    # RF larger than the cluster is refused with Kafka's error
    bad = client.create_topics([NewTopic("too-wide", 1, 4)])
    with pytest.raises(KafkaException) as err:
        bad["too-wide"].result(timeout=20)
    assert err.value.args[0].name() == "INVALID_REPLICATION_FACTOR"

    # produce acks=all through the cluster, read back with all three client libraries
    acked: dict[int, list[tuple[bytes, int]]] = defaultdict(list)

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        acked[msg.partition()].append((msg.value(), msg.offset()))

    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    for i in range(600):
        producer.produce("orders", value=b"v-%05d" % i, partition=i % 6, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert sum(len(v) for v in acked.values()) == 600
    expected = {v for vals in acked.values() for v, _ in vals}

    consumer = Consumer(
        {
            "bootstrap.servers": cluster[2].bootstrap,
            "group.id": "g-confluent",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition("orders", p, 0) for p in range(6)])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 600 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
    consumer.close()
    assert sorted(got) == sorted(expected)

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    kc = KafkaConsumer(
        bootstrap_servers=cluster[0].bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000
    )
    kc.assign([KTP("orders", p) for p in range(6)])
    kc.seek_to_beginning()
    got_kp = [m.value for m in kc]
    kc.close()
    assert sorted(got_kp) == sorted(expected)

    async def aiokafka_read() -> list[bytes]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition as ATP

        c = AIOKafkaConsumer(bootstrap_servers=cluster[1].bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            c.assign([ATP("orders", p) for p in range(6)])
            await c.seek_to_beginning()
            out: list[bytes] = []
            end = time.monotonic() + 20
            while len(out) < 600 and time.monotonic() < end:
                batch = await c.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(m.value for m in msgs)
            return out
        finally:
            await c.stop()

    assert sorted(asyncio.run(aiokafka_read())) == sorted(expected)

    # the internal topics appear on first use, replicated on min(3, brokers), with
    # Kafka's settings, shown as internal
    assert "__transaction_state" not in admin(cluster.bootstrap).list_topics(timeout=5).topics
    txn = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": "t-first-use"})
    txn.init_transactions(30)
    wait_for(
        lambda: fully_replicated(cluster.bootstrap, "__transaction_state", 4),
        30,
        "__transaction_state replicated",
    )
    state = topic_state(cluster.bootstrap, "__transaction_state")
    assert all(sorted(replicas) == [0, 1, 2] for _, replicas, _ in state.values()), state
    res = ConfigResource(ConfigResource.Type.TOPIC, "__transaction_state")
    configs_client = admin(cluster.bootstrap)  # alive until the future resolves
    described = configs_client.describe_configs([res])[res].result(timeout=15)
    configs = {k: v.value for k, v in described.items()}
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.insync.replicas"] == "2"  # transaction.state.log.min.isr
    assert configs["unclean.leader.election.enable"] == "false"
    assert configs["compression.type"] == "uncompressed"
    txn.begin_transaction()
    txn.produce("orders", value=b"in a transaction", partition=0)
    txn.commit_transaction(30)


class AckingProducer:
    """A background idempotent acks=all producer that records every acknowledgement."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.acked: dict[tuple[str, int], dict[str, list[tuple[bytes, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 120000,
                "request.timeout.ms": 10000,
                "retry.backoff.ms": 100,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        self.acked[(self.topic, msg.partition())]["p"].append((msg.value(), msg.offset()))

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            part = i % self.partitions
            try:
                self._producer.produce(
                    self.topic,
                    value=b"p%d-%07d" % (part, i),
                    partition=part,
                    on_delivery=self._on_delivery,
                )
                i += 1
            except BufferError:
                self._producer.poll(0.05)
                continue
            if i % 20 == 0:
                self._producer.poll(0.01)
                time.sleep(0.005)
        self.sent = i

    def start(self) -> AckingProducer:
        self._thread.start()
        return self

    def count(self) -> int:
        return sum(len(v["p"]) for v in self.acked.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        remaining = self._producer.flush(120)
        assert remaining == 0, f"{remaining} records never acknowledged nor failed"


def leader_of(cluster: Cluster, topic: str, partition: int) -> int:
    state = wait_for(
        lambda: topic_state(cluster.bootstrap, topic).get(partition),
        10,
        f"metadata of {topic}-{partition}",
    )
    return state[0]


def check_replicas(cluster: Cluster, topic: str, partitions: int, acked: Any) -> None:
    """Stop every broker and prove the acknowledged history from every replica on disk."""
    cluster.stop_all()
    replicas: dict[tuple[str, int], dict[int, Any]] = {}
    raw: dict[tuple[str, int], dict[int, list[bytes]]] = {}
    for p in range(partitions):
        tp = (topic, p)
        replicas[tp] = {}
        raw[tp] = {}
        for b in cluster:
            read, batches = read_replica(b.data_dir, topic, p)
            replicas[tp][b.node_id] = read
            raw[tp][b.node_id] = batches
    result = check(acked, replicas)
    assert result.ok, result.summary()
    assert result.replica_reads == partitions * len(cluster)
    assert result.acked_records == sum(len(v) for per in acked.values() for v in per.values())
    for tp, per_broker in raw.items():
        # fully replicated at the end: every replica holds the same batches, byte for byte
        first = next(iter(per_broker.values()))
        for node, batches in per_broker.items():
            assert batches == first, f"{tp} replica on broker {node} differs"


def test_acks_all_survives_leader_kill9_and_restart(cluster_factory: ClusterFactory) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, "ledger", 3)
    producer = AckingProducer(cluster.bootstrap, "ledger", 3).start()
    wait_for(lambda: producer.count() >= 300, 30, "first acknowledgements")
    victim = leader_of(cluster, "ledger", 0)
    cluster.broker(victim).kill9()
    before = producer.count()
    # the cluster fences the dead leader and a new one takes over from the ISR
    wait_for(lambda: leader_of(cluster, "ledger", 0) not in (victim, -1), 30, "a new leader")
    wait_for(lambda: producer.count() >= before + 300, 60, "acknowledgements after the kill")
    cluster.broker(victim).restart()
    wait_for(
        lambda: fully_replicated(cluster.bootstrap, "ledger", 3),
        60,
        "the restarted broker back in every ISR",
    )
    mark = producer.count()
    wait_for(lambda: producer.count() >= mark + 200, 30, "acknowledgements after the restart")
    producer.stop()
    assert not producer.errors, producer.errors[:5]
    wait_for(lambda: fully_replicated(cluster.bootstrap, "ledger", 3), 30, "final ISR")
    time.sleep(1.0)  # followers fetch the last high watermark
    check_replicas(cluster, "ledger", 3, producer.acked)


def test_controlled_shutdown_of_each_broker_under_load(cluster_factory: ClusterFactory) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, "rolling", 3)
    producer = AckingProducer(cluster.bootstrap, "rolling", 3).start()
    wait_for(lambda: producer.count() >= 200, 30, "first acknowledgements")
    for b in cluster:
        code = b.terminate(timeout=40)
        assert code == 0, b.log_tail()
        assert "leaderships moved away" in b.log_text()
        mark = producer.count()
        wait_for(
            lambda mark=mark: producer.count() >= mark + 100,
            30,
            f"acknowledgements with broker {b.node_id} down",
        )
        b.restart()
        wait_for(
            lambda: fully_replicated(cluster.bootstrap, "rolling", 3),
            60,
            f"broker {b.node_id} back in every ISR",
        )
    producer.stop()
    assert not producer.errors, producer.errors[:5]
    time.sleep(1.0)
    check_replicas(cluster, "rolling", 3, producer.acked)
