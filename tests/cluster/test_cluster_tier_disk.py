"""A tiered cluster's broker that lost its disk, and a cluster pointed at another's bucket.

Three clustered brokers tier a topic to SeaweedFS. The partition's preferred leader is
killed and its data directory deleted (metadata journal included); while it is away the
others take more acknowledged records. Started again with the same node id, it lays the
partition out from the manifest (its local log starts where the bucket ends, nothing
older is copied from the leader), catches up from the leader, rejoins the ISR and leads
again: a consumer reads every acknowledged record from offset 0 through it, byte for
byte, and every replica ends at the same offset.

The same brokers, stopped and started on a bucket prefix that holds another cluster's
document, refuse to start with a clear error and leave that document as it was.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from shazamq.broker.tier.manifest import CLUSTER_KEY, ClusterMetadata, encode_cluster
from shazamq.broker.tier.s3 import S3Store
from shazamq.config import dump_toml

from .conftest import BrokerProcess, ClusterFactory
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    deep_merge_configs,
    fully_replicated,
    leader_of,
    topic_state,
    wait_for,
)
from .test_cluster_tier import (
    TOPIC,
    check_no_loss,
    cluster_bucket,
    consume_all,
    local_start,
    tier_root_config,
)
from .test_cluster_tier import produce as produce_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

OTHER_PREFIX = "other/shazamq"


def log_end(b: BrokerProcess) -> int:
    url = f"http://{b.address}:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    want = f'shazamq_log_end_offset{{partition="0",topic="{TOPIC}"}}'
    for line in text.splitlines():
        if line.startswith(want):
            return int(float(line.rsplit(" ", 1)[1]))
    return -1


def test_broker_that_lost_its_disk_and_a_foreign_bucket(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster_bucket(tmp_path, monkeypatch) as (s3_port, bucket):
        root_config = tier_root_config(bucket, s3_port)

        extra = deep_merge_configs(
            FAST_CLUSTER,
            {
                "storage": {"retention_check_interval_ms": 300},
                "replication": {"leader_imbalance_check_interval_ms": 1000},
            },
        )
        cluster = cluster_factory.start(3, netns=NETNS, extra_config=extra, root_config=root_config)
        client = admin(cluster.bootstrap)
        client.create_topics(
            [
                NewTopic(
                    TOPIC,
                    1,
                    3,
                    config={
                        "segment.bytes": "4000",
                        "local.retention.ms": "0",
                        "min.insync.replicas": "2",
                    },
                )
            ]
        )[TOPIC].result(20)
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 30, "replicated")
        values = produce_values(cluster.bootstrap, 0, 200)
        preferred = topic_state(cluster.bootstrap, TOPIC)[0][1][0]
        wait_for(lambda: leader_of(cluster, TOPIC, 0) == preferred, 30, "the preferred leader")
        victim = cluster.broker(preferred)
        wait_for(lambda: local_start(victim.data_dir) > 0, 60, "the leader's deletion")

        # the disk is lost: log, metadata journal, checkpoints, everything
        victim.kill9()
        shutil.rmtree(victim.data_dir)
        wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (preferred, -1), 30, "failover")
        values += produce_values(cluster.bootstrap, 200, 100)

        victim.start()
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 60, "back in the ISR")
        wait_for(lambda: leader_of(cluster, TOPIC, 0) == preferred, 30, "leading again")
        # the partition was laid out from the manifest, its local log where the bucket ends
        assert f"{TOPIC}-0 restored from the bucket" in victim.log_text()
        assert local_start(victim.data_dir) > 0
        check_no_loss(cluster, bucket)
        got = consume_all(cluster.bootstrap, 300)
        assert [o for o, _ in got] == list(range(300))
        assert [v for _, v in got] == values

        values += produce_values(cluster.bootstrap, 300, 20)
        wait_for(lambda: [log_end(b) for b in cluster] == [320] * 3, 30, "every replica at the end")
        got = consume_all(cluster.bootstrap, 320)
        assert [v for _, v in got] == values

        # the same cluster, with its own data, started on another cluster's prefix
        for b in cluster:
            assert b.terminate() == 0, b.log_tail()
        foreign = encode_cluster(ClusterMetadata(cluster_id="AnotherClusterIdAAAAAA"))

        async def plant(store: S3Store) -> None:
            store.prefix = OTHER_PREFIX + "/"
            await store.put(CLUSTER_KEY, foreign)

        bucket._with(plant)
        for b in cluster:
            s3 = b.config.tiered_storage.s3
            assert s3 is not None
            s3.prefix = OTHER_PREFIX
            b.config_path.write_text(dump_toml(b.config), encoding="utf-8")
            b.launch()
        for b in cluster:
            assert b.proc is not None
            assert b.proc.wait(60) == 2, b.log_tail()
            assert "refusing to mix two histories" in b.log_text(), b.log_tail()

        async def read_back(store: S3Store) -> bytes:
            store.prefix = OTHER_PREFIX + "/"
            return await store.get(CLUSTER_KEY)

        assert bucket._with(read_back) == foreign
