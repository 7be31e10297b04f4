"""The restore's metrics of a clustered broker (`ClusterRestore` with `TierMetrics`).

Each partition is counted once, by the broker that is its first replica, so the operator
can add the brokers' counts up: partitions laid out (with or without a manifest in the
bucket) and the bytes of history behind them. Also, against an in-memory store: the
producer ids a restored cluster reserves, and what makes a start a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

import crc32c
from msgspec.structs import replace
from prometheus_client import CollectorRegistry

from shazamq.broker.cluster.metadata import METADATA_DIR
from shazamq.broker.log.producer_state import ProducerEntry, ProducerStateManager
from shazamq.broker.tier.manifest import (
    ClusterMetadata,
    PartitionManifest,
    RemoteSegment,
    RemoteTopic,
    encode_manifest,
    manifest_key,
    partition_prefix,
    segment_key,
)
from shazamq.broker.tier.metrics import TierMetrics
from shazamq.broker.tier.restore import ClusterRestore, has_local_metadata
from shazamq.broker.tier.store import ObjectInfo, ObjectNotFoundError, ObjectStore

TOPIC = RemoteTopic(name="orders", topic_id="AAAAAAAAAAAAAAAAAAAAAA", partitions=3)


class MemoryStore(ObjectStore):
    def __init__(self) -> None:
        super().__init__("")
        self.objects: dict[str, bytes] = {}

    async def _put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    async def _put_parts(self, key: str, fd: int, size: int) -> int:
        data = os.pread(fd, size, 0)
        self.objects[key] = data
        return crc32c.crc32c(data)

    async def _get(self, key: str, start: int, end: int | None) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        return self.objects[key][start:end]

    async def _head(self, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        return ObjectInfo(key, len(self.objects[key]))

    async def _list(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v)) for k, v in self.objects.items() if k.startswith(prefix)]

    async def _delete(self, key: str) -> None:
        self.objects.pop(key, None)


def segment(base: int, last: int, size: int) -> RemoteSegment:
    return RemoteSegment(
        upload_id="u1",
        base_offset=base,
        last_offset=last,
        base_timestamp=-1,
        max_timestamp=-1,
        offset_of_max_timestamp=base,
        size=size,
        crc32c=0,
        epochs=[(0, base)],
    )


async def test_partitions_and_bytes_are_counted_by_the_first_replica(tmp_path: Path) -> None:
    store = MemoryStore()
    manifest = PartitionManifest(
        topic=TOPIC.name,
        topic_id=TOPIC.topic_id,
        partition=0,
        segments=[segment(0, 9, 1000), segment(10, 19, 234)],
    )
    await store.put(manifest_key(TOPIC.name, TOPIC.topic_id, 0), encode_manifest(manifest))
    registry = CollectorRegistry()
    metrics = TierMetrics(registry)
    restorer = ClusterRestore(
        store, tmp_path, ClusterMetadata(cluster_id="c", topics=[TOPIC]), metrics
    )

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert await restorer.lay_out(TOPIC.name, TOPIC.topic_id, 0, count=True) == 20
    assert (tmp_path / "orders-0" / "leader-epoch-checkpoint").exists()
    assert sample("shazamq_restore_partitions_restored_total") == 1
    assert sample("shazamq_restore_bytes_total") == 1234
    # no manifest: the partition starts empty, and is restored all the same
    assert await restorer.lay_out(TOPIC.name, TOPIC.topic_id, 1, count=True) is None
    assert sample("shazamq_restore_partitions_restored_total") == 2
    # a follower's layout is counted by the partition's first replica, not here
    await restorer.lay_out(TOPIC.name, TOPIC.topic_id, 2, count=False)
    assert sample("shazamq_restore_partitions_restored_total") == 2
    assert sample("shazamq_restore_bytes_total") == 1234


async def test_producer_ids_used_covers_snapshots_and_the_documents_next_id(
    tmp_path: Path,
) -> None:
    """A restored cluster reserves every producer id its data may name: those in each
    partition's producer snapshot at the bucket's end, and below the next id the old
    cluster would have handed out (producers already expired from the snapshots)."""
    store = MemoryStore()
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    state = ProducerStateManager(str(snapshots))
    state.entries = {pid: ProducerEntry(pid, 0, [], 0) for pid in (7, 4242, 12)}
    last = replace(segment(10, 19, 234), has_snapshot=True)
    for i, segs in ((0, [segment(0, 9, 1000), last]), (1, [segment(0, 4, 10)])):
        m = PartitionManifest(topic=TOPIC.name, topic_id=TOPIC.topic_id, partition=i, segments=segs)
        await store.put(manifest_key(TOPIC.name, TOPIC.topic_id, i), encode_manifest(m))
    prefix = partition_prefix(TOPIC.name, TOPIC.topic_id, 0)
    with open(state.take_snapshot(20), "rb") as f:
        await store.put(segment_key(prefix, 10, "u1", "snapshot"), f.read())

    meta = ClusterMetadata(cluster_id="c", topics=[TOPIC])
    assert await ClusterRestore(store, tmp_path, meta).producer_ids_used() == 4243
    # the old cluster's next unallocated id, when above every snapshot's
    meta = ClusterMetadata(cluster_id="c", topics=[TOPIC], next_producer_id=5000)
    assert await ClusterRestore(store, tmp_path, meta).producer_ids_used() == 5000
    # a bucket without producers reserves nothing
    empty = ClusterMetadata(cluster_id="c", topics=[replace(TOPIC, topic_id="B" * 22)])
    assert await ClusterRestore(store, tmp_path, empty).producer_ids_used() == 0


def test_local_metadata_is_a_single_brokers_document_or_a_nodes_journal(tmp_path: Path) -> None:
    """Only these make a start a restart that need not wait for the bucket; a restore
    that stopped before writing the topics document is still a restore."""
    d = tmp_path / METADATA_DIR
    assert not has_local_metadata(tmp_path)
    d.mkdir()
    (d / "topics.json.tmp").write_bytes(b"{}")
    assert not has_local_metadata(tmp_path)
    (d / "quorum").mkdir()
    assert not has_local_metadata(tmp_path)
    (d / "quorum" / "raft.journal").write_bytes(b"")
    assert has_local_metadata(tmp_path)
    (d / "quorum" / "raft.journal").unlink()
    (d / "topics.json").write_bytes(b"{}")
    assert has_local_metadata(tmp_path)
