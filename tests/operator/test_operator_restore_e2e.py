"""A deleted cluster restored from its bucket, through the running operator, on real brokers.

The operator runs against kmock's emulator with its real probe; the test plays the kubelet
(`kubelet.KubeletLoop`: each pod a broker process started from the rendered StatefulSet,
on its own loopback address) and a real S3 server (SeaweedFS) holds the bucket. The
tiered storage's credentials come from a Secret, as the README's example has them.

A 3-broker ShazamqCluster with tiered storage gets a topic (replication factor 3) and a
consumer group commits offsets. The cluster is then deleted: the resource goes, its
brokers are stopped (SIGTERM: each uploads its tail) and their volumes are removed. A new
ShazamqCluster with the same tiered storage starts three empty brokers.

Covers: the new brokers restore the topic (same id) and the group; the operator follows
it in ``status.restore`` (state Restored with the topics, partitions, bytes and groups the
brokers report, every partition restored), the condition Restored and an event; a
consumer of the group resumes at its committed offsets and reads byte for byte what was
produced.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from kubelet import (
    E2E_MARKS,
    KubeletLoop,
    loopback_addresses,
    post_secret,
    resolving_probe,
    resolving_reassigner,
    until,
)
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import Cluster, OperatorThread

from shazamq.operator.__main__ import parse_options
from tests.tier.conftest import weed_server
from tests.tier.tierutil import Bucket

pytestmark = E2E_MARKS

NS = "messaging"
OLD, NEW = "old-cluster", "restored-cluster"
TOPIC = "orders"
PARTITIONS = 2
PER_PARTITION = 120
GROUP = "billing"
COMMITTED = {0: 47, 1: 85}
TIMEOUT = 180.0


def cluster_body(name: str, endpoint: str, bucket: str, ports: Any) -> dict[str, Any]:
    body = quick_start()
    body["metadata"]["name"] = name
    body["metadata"]["uid"] = str(uuid.uuid4())
    body["spec"]["service"] = {"port": ports.port, "metricsPort": ports.metrics_port}
    body["spec"]["replication"] = {"defaultReplicationFactor": 3, "minInsyncReplicas": 2}
    body["spec"]["tieredStorage"] = {
        "enabled": True,
        "provider": "s3",
        "s3": {
            "bucket": bucket,
            "endpoint": endpoint,
            "prefix": "prod/shazamq",
            "credentialsSecret": "aws-credentials",
        },
    }
    # a small cluster: few offsets partitions to lay out again
    body["spec"]["config"] = {"groups": {"offsets_topic_num_partitions": 3}}
    return body


def produce(bootstrap: str) -> dict[int, list[tuple[bytes, bytes]]]:
    """PER_PARTITION records in each partition, acks=all; (key, value) per partition."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            key = f"k{p}-{i}".encode()
            value = f"value-{p}-{i:05d}-".encode() + bytes([i % 251]) * 200
            producer.produce(TOPIC, key=key, value=value, partition=p, on_delivery=delivered)
            out[p].append((key, value))
        producer.flush(60)
    assert producer.flush(60) == 0 and not failures, failures[:5]
    return out


def create_topic(bootstrap: str) -> str:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"segment.bytes": "6000", "local.retention.ms": "0"}
    try:
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config=config)])[TOPIC].result(60)
    except KafkaException as exc:  # an earlier attempt's answer was lost
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    return topic_id(bootstrap)


def topic_id(bootstrap: str) -> str:
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    return str(admin.describe_topics(TopicCollection([TOPIC]))[TOPIC].result(20).topic_id)


def commit(bootstrap: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    group = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": 0})
    group.commit(
        offsets=[TopicPartition(TOPIC, p, o) for p, o in COMMITTED.items()], asynchronous=False
    )
    group.close()


def in_sync(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=5)
    t = md.topics.get(TOPIC)
    return (
        t is not None
        and t.error is None
        and len(t.partitions) == PARTITIONS
        and all(len(p.isrs) == 3 for p in t.partitions.values())
    )


def resume(bootstrap: str) -> tuple[dict[int, int], dict[int, list[tuple[bytes, bytes, int]]]]:
    """The group's committed offsets, and what a member of the group reads from there."""
    from confluent_kafka import Consumer, TopicPartition

    group = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        committed = group.committed(
            [TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=30
        )
        group.subscribe([TOPIC])
        read: dict[int, list[tuple[bytes, bytes, int]]] = {p: [] for p in range(PARTITIONS)}
        want = sum(PER_PARTITION - o for o in COMMITTED.values())
        deadline = time.monotonic() + 90
        while sum(len(v) for v in read.values()) < want and time.monotonic() < deadline:
            for m in group.consume(500, timeout=1.0):
                if m.error() is None:
                    read[m.partition()].append((m.key(), m.value(), m.offset()))
        return {tp.partition: tp.offset for tp in committed}, read
    finally:
        group.close()


async def test_a_deleted_cluster_is_restored_from_its_bucket(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_addresses = loopback_addresses(3, cluster=0)
    new_addresses = loopback_addresses(3, cluster=1)
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, roll_interval=0.5)
    hosts = {OLD: [a.host for a in old_addresses], NEW: [a.host for a in new_addresses]}
    memo.probe = resolving_probe(memo, hosts)
    memo.reassigner = resolving_reassigner(hosts, NS)
    # for the test's own look at the bucket; the brokers take theirs from the Secret
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "weed").mkdir()
    with weed_server(tmp_path / "weed") as s3_port:
        endpoint = f"http://127.0.0.1:{s3_port}"
        bucket = Bucket(endpoint)
        await asyncio.to_thread(bucket.create)
        bucket_name = bucket.config.bucket
        operator = OperatorThread(options.namespaces, memo)
        await operator.start()
        cluster = Cluster(kmock, operator.memo)
        kubelets: list[KubeletLoop] = []
        try:
            await post_secret(
                kmock,
                NS,
                "aws-credentials",
                {"access-key-id": "testing", "secret-access-key": "testing"},
            )

            # The first cluster: a topic, records, a group's offsets.
            await cluster.create(cluster_body(OLD, endpoint, bucket_name, old_addresses[0]))
            old = KubeletLoop(
                kmock,
                name=OLD,
                namespace=NS,
                root=tmp_path / "old",
                addresses=old_addresses,
                voter_ids=[0, 1, 2],
            )
            kubelets.append(old)
            await old.start()
            bootstrap = old.pods.bootstrap
            old_id = await until(
                lambda: create_topic(bootstrap), TIMEOUT, f"{TOPIC} to be created", old
            )
            await until(lambda: in_sync(bootstrap), TIMEOUT, f"{TOPIC} in sync", old)
            produced = await asyncio.to_thread(produce, bootstrap)
            await until(lambda: commit(bootstrap) or True, 60, "the group's commit", old)

            # Deleted: the resource, the brokers (SIGTERM uploads their tails), the volumes.
            await cluster.delete(f"/apis/shazamq.io/v1alpha1/namespaces/{NS}/shazamqclusters/{OLD}")
            await old.stop()
            for pod in old.pods:
                assert pod.proc is not None and pod.proc.returncode == 0, pod.log_tail()
                shutil.rmtree(pod.data)

            # A new cluster on the same bucket.
            await cluster.create(cluster_body(NEW, endpoint, bucket_name, new_addresses[0]))
            new = KubeletLoop(
                kmock,
                name=NEW,
                namespace=NS,
                root=tmp_path / "new",
                addresses=new_addresses,
                voter_ids=[0, 1, 2],
            )
            kubelets.append(new)
            await new.start()
            bootstrap = new.pods.bootstrap
            seen: list[dict[str, Any]] = []

            def restored() -> dict[str, Any] | None:
                status = (cluster.get(CLUSTERS, NEW) or {}).get("status") or {}
                restore = status.get("restore")
                if restore and (not seen or seen[-1] != restore):
                    seen.append(restore)
                return restore if (restore or {}).get("state") == "Restored" else None

            restore = await until(restored, TIMEOUT, "status.restore to say Restored", new)
            # the topic and the group's offsets (spec.config: 3 partitions)
            assert restore["topics"] == 2, seen
            assert restore["partitions"] == PARTITIONS + 3, seen
            assert restore["partitionsRestored"] == restore["partitions"]
            assert restore["bytes"] > 0
            assert restore["groups"] >= 1
            assert restore["completionTime"]
            status = cluster.get(CLUSTERS, NEW)["status"]
            condition = next(c for c in status["conditions"] if c["type"] == "Restored")
            assert condition["status"] == "True", condition
            assert cluster.events("Restored"), "no Restored event"

            await until(lambda: in_sync(bootstrap), TIMEOUT, f"{TOPIC} in sync again", new)
            assert await asyncio.to_thread(topic_id, bootstrap) == old_id
            committed, read = await asyncio.to_thread(resume, bootstrap)
            assert committed == COMMITTED
            for p, offset in COMMITTED.items():
                got = [(k, v) for k, v, _ in read[p]]
                assert [o for _, _, o in read[p]] == list(range(offset, PER_PARTITION)), p
                assert got == produced[p][offset:], f"partition {p} differs after the restore"
        finally:
            for kubelet in kubelets:
                await kubelet.stop()
            await operator.stop()
