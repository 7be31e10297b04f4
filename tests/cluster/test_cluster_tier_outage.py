"""A tiered cluster restarted while its bucket answers only 500s.

Three clustered brokers tier a topic through a fault-injecting proxy in front of
SeaweedFS and are stopped. Started again while every bucket request fails, they form the
cluster and serve in seconds rather than after the store's retry schedule: every local
record reads back byte for byte, new records are acknowledged, nothing leaves the disk,
and each broker reports the bucket unreachable. Once the bucket answers, the uploads
catch up and the brokers report it reachable again.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from tests.tier.conftest import FaultProxy

from .conftest import BrokerProcess, ClusterFactory
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    fully_replicated,
    wait_for,
)
from .test_cluster_tier import (
    TOPIC,
    cluster_bucket,
    consume_all,
    local_start,
    tier_root_config,
)
from .test_cluster_tier import produce as produce_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def reachable(b: BrokerProcess) -> float | None:
    url = f"http://{b.address}:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("shazamq_tier_bucket_reachable "):
                return float(line.split()[-1])
    return None


def test_restart_while_the_bucket_fails_serves_local_data(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster_bucket(tmp_path, monkeypatch) as (s3_port, bucket):
        proxy = FaultProxy(s3_port, bind="0.0.0.0", keep_host=True)
        try:
            root_config = tier_root_config(bucket, proxy.port)

            cluster = cluster_factory.start(
                3, netns=NETNS, extra_config=FAST_CLUSTER, root_config=root_config
            )
            client = admin(cluster.bootstrap)
            client.create_topics(
                [NewTopic(TOPIC, 1, 3, config={"segment.bytes": "4000"})]  # kept locally
            )[TOPIC].result(20)
            wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 30, "replicated")
            values = produce_values(cluster.bootstrap, 0, 100)
            wait_for(
                lambda: (m := bucket.manifest()) is not None and m.end_offset > 0,
                30,
                "an upload",
            )
            for b in cluster:
                assert b.terminate() == 0, b.log_tail()

            proxy.mode = "500"
            began = time.monotonic()
            for b in cluster:
                b.launch()
            cluster.wait_ready()
            wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 30, "a leader")
            assert time.monotonic() - began < 20, "the start waited for the bucket"
            assert [reachable(b) for b in cluster] == [0, 0, 0]
            got = consume_all(cluster.bootstrap, 100)
            assert [o for o, _ in got] == list(range(100))
            assert [v for _, v in got] == values
            values += produce_values(cluster.bootstrap, 100, 20)
            got = consume_all(cluster.bootstrap, 120)
            assert [v for _, v in got] == values
            assert all(local_start(b.data_dir) == 0 for b in cluster)
            assert proxy.faults > 0

            proxy.mode = "ok"
            wait_for(
                lambda: (m := bucket.manifest()) is not None and m.end_offset >= 110,
                90,
                "catch-up once the bucket answers",
            )
            wait_for(lambda: [reachable(b) for b in cluster] == [1, 1, 1], 30, "reachable")
            cluster.stop_all()
        finally:
            proxy.close()
