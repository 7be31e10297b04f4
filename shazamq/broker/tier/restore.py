"""A new broker from the bucket: topics, ids, configs, log starts and group offsets.

Runs before the logs open, when ``[tiered_storage]`` is on. With an empty data directory
and cluster metadata in the bucket, it writes the topics (same names, ids and configs)
and, for every partition, an empty local log that starts where the bucket ends, with the
producer state and leader epochs of the last remote segment: older offsets are then read
from the bucket like any tiered data. The internal topics (``__consumer_offsets``,
``__transaction_state``) are downloaded whole, because their coordinators replay them
from disk: consumer groups resume at their committed offsets. SCRAM credentials (as a
server keeps them: salted, never a password) and ACLs come back with the topics, so the
same users log in with the same rights.

A data directory that holds another cluster's data is refused with a clear error rather
than mixing two histories; one of the same cluster is simply a restart.

In a cluster (``[cluster] voters``) the same happens through the metadata log:
:func:`read_cluster` gives the bucket's document to the cluster node, whose first
``InitCluster`` takes the bucket's cluster id and marks a restore; the active controller
recreates every topic (same id and configs, leader epochs above the restored ones) and
commits ``FinishRestore``. Each replica of a restored partition lays out its local log
from the manifest (:class:`ClusterRestore`) before it hosts it, so leader and followers
start where the bucket ends, with the same producer state and leader epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from pathlib import Path

import msgspec

from shazamq.broker.cluster.metadata import INTERNAL_TOPICS, METADATA_DIR, MetadataStore, TopicInfo
from shazamq.broker.log.producer_state import (
    CorruptSnapshotError,
    ProducerStateManager,
    snapshot_file_name,
)
from shazamq.broker.log.segment import INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, TXN_INDEX_EXT
from shazamq.broker.txn.producer_ids import ProducerIdAllocator
from shazamq.config import ConfigError

from .manifest import (
    CLUSTER_KEY,
    ClusterMetadata,
    PartitionManifest,
    RemoteTopic,
    decode_cluster,
    decode_manifest,
    manifest_key,
    partition_prefix,
    segment_key,
)
from .metrics import TierMetrics
from .store import ObjectStore, StoreError, StoreErrorKind

__all__ = [
    "ClusterRestore",
    "RestoreError",
    "dir_for",
    "has_local_metadata",
    "read_cluster",
    "restore_if_empty",
]

log = logging.getLogger(__name__)

_EXTS = {"log": LOG_EXT, "index": INDEX_EXT, "timeindex": TIME_INDEX_EXT, "txnindex": TXN_INDEX_EXT}


class RestoreError(ConfigError):
    """The data directory and the bucket cannot be brought together."""


class _LocalCluster(msgspec.Struct):
    cluster_id: str


async def _get_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return await store.get(key)
    except StoreError as exc:
        if exc.kind is StoreErrorKind.NOT_FOUND:
            return None
        raise


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def has_local_metadata(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a broker's metadata already (a single broker's topics
    document, a cluster node's metadata journal): a restart, which needs no bucket to
    start, rather than a restore."""
    d = data_dir / METADATA_DIR
    quorum = d / "quorum"
    return (d / "topics.json").exists() or (quorum.is_dir() and any(quorum.iterdir()))


def dir_for(log_dirs: list[Path], name: str, index: int) -> Path:
    """Where a restored partition's folder goes among the log dirs: spread by a hash of
    its name, the same on every broker and at every retry."""
    return log_dirs[zlib.crc32(f"{name}-{index}".encode()) % len(log_dirs)]


async def restore_if_empty(
    store: ObjectStore,
    data_dir: Path,
    configured_cluster_id: str | None = None,
    log_dirs: list[Path] | None = None,
) -> int:
    """Restore from the bucket into an empty ``data_dir`` (partition folders spread over
    ``log_dirs``, by default ``data_dir``); returns partitions restored."""
    dirs = log_dirs or [data_dir]
    raw = await _get_or_none(store, CLUSTER_KEY)
    if raw is None:
        return 0
    meta = decode_cluster(raw)
    local_doc = data_dir / METADATA_DIR / "topics.json"
    loop = asyncio.get_running_loop()
    if local_doc.exists():
        try:
            local = msgspec.json.decode(local_doc.read_bytes(), type=_LocalCluster)
        except msgspec.DecodeError as exc:
            raise RestoreError(f"{local_doc} cannot be read: {exc}") from None
        if local.cluster_id != meta.cluster_id:
            raise RestoreError(
                f"broker.data_dir {data_dir} holds cluster {local.cluster_id} but the bucket "
                f"holds cluster {meta.cluster_id}: refusing to mix two histories (use an "
                "empty data directory to restore, or another bucket prefix)"
            )
        return 0  # a restart of the same cluster
    if configured_cluster_id is not None and configured_cluster_id != meta.cluster_id:
        raise RestoreError(
            f"broker.cluster_id is {configured_cluster_id} but the bucket holds cluster "
            f"{meta.cluster_id}: refusing to restore another cluster's data"
        )
    for d in dirs:
        names = os.listdir(d) if d.is_dir() else []
        leftovers = [n for n in names if (d / n).is_dir() and "-" in n]
        if leftovers:
            raise RestoreError(
                f"{d} has partition directories ({leftovers[0]}, ...) but {data_dir} has no "
                "cluster metadata: refusing to restore over them"
            )
    restored = 0
    top_pid = meta.next_producer_id - 1
    for t in meta.topics:
        for i in range(t.partitions):
            raw_m = await _get_or_none(store, manifest_key(t.name, t.topic_id, i))
            if raw_m is None:
                continue
            m = decode_manifest(raw_m, where=manifest_key(t.name, t.topic_id, i))
            pdir = dir_for(dirs, t.name, i) / f"{t.name}-{i}"
            files = await _partition_files(store, m, download_all=t.name in INTERNAL_TOPICS)
            await loop.run_in_executor(None, _lay_out, pdir, m, files)
            top_pid = max(top_pid, await loop.run_in_executor(None, _top_producer_id, pdir))
            restored += 1
    topics = [
        TopicInfo(
            name=t.name,
            topic_id=t.topic_id,
            partitions=t.partitions,
            configs=dict(t.configs),
            internal=t.internal,
        )
        for t in meta.topics
    ]

    def adopt() -> None:
        MetadataStore(data_dir, meta.cluster_id).adopt(topics, meta.scram, meta.acls, meta.quotas)
        if top_pid >= 0:
            # the restored producers' ids were handed out: never again (their retries
            # are recognised, a new producer does not inherit their sequences)
            ProducerIdAllocator(data_dir).keep_out(top_pid)

    await loop.run_in_executor(None, adopt)
    log.info(
        "restored cluster %s from the bucket: %d topics, %d partitions, %d SCRAM users, "
        "%d ACLs, %d client quota entities",
        meta.cluster_id,
        len(topics),
        restored,
        len(meta.scram),
        len(meta.acls),
        len(meta.quotas),
    )
    return restored


async def _partition_files(
    store: ObjectStore, m: PartitionManifest, *, download_all: bool
) -> dict[str, bytes]:
    """File name -> bytes of what the new local log starts from."""
    prefix = partition_prefix(m.topic, m.topic_id, m.partition)
    out: dict[str, bytes] = {}
    if not m.segments:
        return out
    last = m.segments[-1]
    if last.has_snapshot:
        data = await _get_or_none(
            store, segment_key(prefix, last.base_offset, last.upload_id, "snapshot")
        )
        if data:
            out[snapshot_file_name(last.next_offset)] = data
    if download_all:
        for s in m.segments:
            for ext, suffix in _EXTS.items():
                if ext == "txnindex" and not s.has_txn_index:
                    continue
                data = await store.get(segment_key(prefix, s.base_offset, s.upload_id, ext))
                out[f"{s.base_offset:020d}{suffix}"] = data
    return out


def _top_producer_id(pdir: Path) -> int:
    """The highest producer id in the partition's producer snapshots, or -1."""
    top = -1
    for snap in pdir.glob("*.snapshot"):
        with contextlib.suppress(CorruptSnapshotError):
            top = max([top, *ProducerStateManager.read_snapshot(str(snap))])
    return top


def _lay_out(pdir: Path, m: PartitionManifest, files: dict[str, bytes]) -> None:
    pdir.mkdir(parents=True, exist_ok=True)
    end = m.end_offset
    local_start = m.log_start_offset if any(n.endswith(LOG_EXT) for n in files) else end
    for name, data in files.items():
        _write(pdir / name, data)
    if any(n.endswith(LOG_EXT) for n in files):
        _write(pdir / f"{end:020d}{LOG_EXT}", b"")  # the active segment starts at the end
    topic_partition = f"{m.topic} {m.partition}"
    _write(
        pdir / "log-start-offset-checkpoint", f"0\n1\n{topic_partition} {local_start}\n".encode()
    )
    epochs: list[tuple[int, int]] = []
    for s in m.segments:
        for e, o in s.epochs:
            if not epochs or e > epochs[-1][0]:
                epochs.append((e, o))
    body = "".join(f"{e} {o}\n" for e, o in epochs)
    _write(pdir / "leader-epoch-checkpoint", f"0\n{len(epochs)}\n{body}".encode())


# -- a cluster restored through its metadata log ----------------------------------------


async def read_cluster(
    store: ObjectStore, configured_cluster_id: str | None = None
) -> ClusterMetadata | None:
    """The bucket's cluster document, or None; refuses a configured id that differs."""
    raw = await _get_or_none(store, CLUSTER_KEY)
    if raw is None:
        return None
    meta = decode_cluster(raw)
    if configured_cluster_id is not None and configured_cluster_id != meta.cluster_id:
        raise RestoreError(
            f"broker.cluster_id is {configured_cluster_id} but the bucket holds cluster "
            f"{meta.cluster_id}: refusing to mix two histories (use another bucket prefix)"
        )
    return meta


def check_same_cluster(meta: ClusterMetadata, cluster_id: str | None) -> None:
    """A cluster whose metadata log names another cluster than the bucket is refused."""
    if cluster_id is not None and cluster_id != meta.cluster_id:
        raise RestoreError(
            f"this cluster is {cluster_id} but the bucket holds cluster {meta.cluster_id}: "
            "refusing to mix two histories (restore into a new cluster with empty data "
            "directories, or use another bucket prefix)"
        )


class ClusterRestore:
    """The bucket as a clustered broker restores from it.

    ``meta`` is the bucket's cluster document read at start. A partition of one of its
    topics (same id) that has no folder here is laid out from its manifest before it is
    hosted: a new cluster's replicas, or a broker that lost its disk.
    """

    def __init__(
        self,
        store: ObjectStore,
        data_dir: Path,
        meta: ClusterMetadata,
        metrics: TierMetrics | None = None,
        log_dirs: list[Path] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.data_dir = data_dir
        self.log_dirs = log_dirs or [data_dir]
        self.meta = meta
        self.topics: dict[str, RemoteTopic] = {t.topic_id: t for t in meta.topics}
        # partitions looked up already (those without a manifest leave no folder)
        self._done: set[tuple[str, int]] = set()
        self._manifests_read: dict[str, list[PartitionManifest]] = {}

    def needs_layout(self, name: str, topic_id: str, index: int) -> bool:
        t = self.topics.get(topic_id)
        if t is None or t.name != name or not 0 <= index < t.partitions:
            return False
        if (topic_id, index) in self._done:
            return False
        return not any((d / f"{name}-{index}").exists() for d in self.log_dirs)

    async def lay_out(
        self, name: str, topic_id: str, index: int, *, count: bool = False
    ) -> int | None:
        """Write the partition's folder from its manifest; its log start, or None when
        the bucket holds nothing of it (it starts empty). `count`: this broker is the
        partition's first replica, and counts it in the restore's metrics."""
        key = manifest_key(name, topic_id, index)
        raw = await _get_or_none(self.store, key)
        if raw is None:
            self._done.add((topic_id, index))
            if count and self.metrics is not None:
                self.metrics.restored_partitions.inc()
            return None
        m = decode_manifest(raw, where=key)
        files = await _partition_files(self.store, m, download_all=name in INTERNAL_TOPICS)
        pdir = dir_for(self.log_dirs, name, index) / f"{name}-{index}"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _lay_out, pdir, m, files)
        if count and self.metrics is not None:
            self.metrics.restored_partitions.inc()
            self.metrics.restored_bytes.inc(m.size_bytes)
        log.info(
            "%s-%d restored from the bucket: offsets %d..%d remote, local log from %d",
            name,
            index,
            m.log_start_offset,
            m.end_offset,
            m.log_start_offset if files and name in INTERNAL_TOPICS else m.end_offset,
        )
        return m.end_offset

    async def _manifests(self, t: RemoteTopic) -> list[PartitionManifest]:
        """The topic's manifests in the bucket, read once (the controller asks twice)."""
        got = self._manifests_read.get(t.topic_id)
        if got is None:
            got = []
            for i in range(t.partitions):
                key = manifest_key(t.name, t.topic_id, i)
                raw = await _get_or_none(self.store, key)
                if raw is not None:
                    got.append(decode_manifest(raw, where=key))
            self._manifests_read[t.topic_id] = got
        return got

    async def producer_ids_used(self) -> int:
        """One above every producer id the restored data may name: the bucket document's
        next unallocated id, and the ids in each partition's producer snapshot at the
        bucket's end (a retrying producer must be recognised, never impersonated)."""
        top = self.meta.next_producer_id - 1
        for t in self.meta.topics:
            for m in await self._manifests(t):
                last = m.segments[-1] if m.segments else None
                if last is None or not last.has_snapshot:
                    continue
                prefix = partition_prefix(m.topic, m.topic_id, m.partition)
                key = segment_key(prefix, last.base_offset, last.upload_id, "snapshot")
                data = await _get_or_none(self.store, key)
                if not data:
                    continue
                try:
                    top = max([top, *ProducerStateManager.parse_snapshot(data, key)])
                except CorruptSnapshotError as exc:
                    log.warning("restore: %s; its producer ids are not reserved", exc)
        return top + 1

    async def first_leader_epoch(self, t: RemoteTopic) -> int:
        """One above every leader epoch the topic's remote segments and manifests were
        written under: the new leaders' manifest writes must not look deposed."""
        top = -1
        for m in await self._manifests(t):
            top = max(top, m.leader_epoch)
            for s in m.segments:
                for epoch, _ in s.epochs:
                    top = max(top, epoch)
        return top + 1
