"""The tier as the broker sees it: built and started by ``app.py``, nothing else.

:class:`TierManager` opens the store, writes the cluster metadata to the bucket, runs one
:class:`~.uploader.PartitionUploader` per tiered partition this broker leads (a
supervisor adds and removes them as partitions and leadership come and go), serves reads
below the local log start through :class:`~.reader.RemoteReader`, and uploads the tail
at a clean shutdown. The broker keeps serving everything local while the bucket is away,
from its start on (the supervisor's rounds run in the background, the first of them
checking that the bucket's cluster document names this cluster before anything else);
the condition is logged once per change and shown in metrics.

The bucket away is one state of the manager, not of each partition: the first request
that fails for want of an answer (a 5xx, throttling, a timeout, a dropped connection)
puts the manager in it; then only a cheap probe (one request, no retries, with backoff)
goes to the bucket, uploaders wait for its answer instead of retrying on their own, and
once it answers the uploaders not started yet start together (a bounded number at once)
and the others resume at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from prometheus_client.core import GaugeMetricFamily, Metric

from shazamq.broker.quotas.entities import to_stored
from shazamq.config import TieredStorageConfig
from shazamq.protocol.records import iter_batches

from .manifest import (
    CLUSTER_KEY,
    ClusterMetadata,
    PartitionManifest,
    RemoteTopic,
    decode_cluster,
    encode_cluster,
    manifest_key,
    partition_prefix,
)
from .metrics import TierMetrics
from .reader import RemoteReader
from .store import ObjectStore, PreconditionFailedError, StoreError, StoreErrorKind
from .uploader import (
    PROBE_KEY,
    LeadershipLost,
    ManifestChanged,
    PartitionUploader,
    read_manifest,
)

if TYPE_CHECKING:
    from shazamq.broker.metrics import BrokerMetrics
    from shazamq.broker.partitions import Partition, PartitionManager

log = logging.getLogger(__name__)

SUPERVISE_SECONDS = 1.0
# while the bucket is away it is probed after PROBE_MIN_S, then ever less often
PROBE_MIN_S = 0.5
PROBE_MAX_S = 8.0
# uploaders started at once (each reads its manifest and lists its objects)
START_CONCURRENCY = 8
# how long start waits for the first round when the bucket has answered so far
FIRST_ROUND_WAIT_S = 5.0
CACHE_DIR = ".tier-cache"
# a follower's copy of the leader's manifest is read again when a read misses it and it
# is older than this
FOLLOWER_MANIFEST_TTL = 2.0

# the failures that say the bucket is away, rather than that one request is wrong
_AWAY = {
    StoreErrorKind.SERVER,
    StoreErrorKind.THROTTLED,
    StoreErrorKind.TIMEOUT,
    StoreErrorKind.CONNECTION,
}


def tiered(p: Partition) -> bool:
    """Topics are tiered unless they say remote.storage.enable=false."""
    return p.topic_info.configs.get("remote.storage.enable", "true").lower() != "false"


async def open_store(config: TieredStorageConfig, metrics: TierMetrics | None) -> ObjectStore:
    """The configured store, opened."""

    def on_error(kind: StoreErrorKind) -> None:
        if metrics is not None:
            metrics.errors.labels(kind.value).inc()

    store: ObjectStore
    timeout = config.request_timeout_ms / 1000
    if config.provider == "s3":
        from .s3 import S3Store

        if config.s3 is None:
            raise ValueError("tiered_storage.provider is s3 but [tiered_storage.s3] is missing")
        s3 = S3Store(config.s3, on_error=on_error, request_timeout=timeout)
        await s3.open()
        store = s3
    else:
        from .gcs import GcsStore

        if config.gcs is None:
            raise ValueError("tiered_storage.provider is gcs but [tiered_storage.gcs] is missing")
        gcs = GcsStore(config.gcs, on_error=on_error, request_timeout=timeout)
        await gcs.open()
        store = gcs
    store.part_bytes = config.upload_part_size_bytes
    return store


class TokenBucket:
    """Bytes per second over all uploads; 0 means unlimited."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._allowance = float(rate)
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._at) * self.rate)
            self._at = now
            self._allowance -= n
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)


class TierManager:
    def __init__(
        self,
        config: TieredStorageConfig,
        partitions: PartitionManager,
        tier_metrics: TierMetrics,
        metrics: BrokerMetrics,
        data_dir: Path,
        on_bucket_cluster: Callable[[ClusterMetadata | None], None] | None = None,
    ) -> None:
        self.config = config
        self.partitions = partitions
        self.data_dir = data_dir
        self.metrics = tier_metrics
        self.store: ObjectStore
        self.reader: RemoteReader
        self.uploaders: dict[tuple[str, int], PartitionUploader] = {}
        # the manifest of every tiered partition hosted here (readers use it)
        self.manifests: dict[tuple[str, int], PartitionManifest] = {}
        self.upload_slots = asyncio.Semaphore(config.upload_concurrency)
        self.bandwidth = TokenBucket(config.upload_bytes_per_second)
        self._task: asyncio.Task[None] | None = None
        # the document last written (without its metadata index), and the bucket's
        # version of it where the store honours conditional writes
        self._metadata_written: bytes | None = None
        self._metadata_version: str | None = None
        self._conditional_known = False
        # partitions whose uploader's last round (or start) failed
        self._failing: set[tuple[str, int]] = set()
        # set while the bucket answers; cleared from a failure that says it is away
        # until the probe hears from it again (uploaders wait on it meanwhile)
        self.answering = asyncio.Event()
        self.answering.set()
        self._reported_down = False
        # the leader epoch each led partition's uploader was last started under (tried,
        # whether or not the bucket answered)
        self._started_at: dict[tuple[str, int], int] = {}
        self._broker_metrics = metrics
        # followers' copies of their leaders' manifests (read on demand, for consumers
        # that fetch from a follower below its local log start) and when each was read
        self._followed: dict[tuple[str, int], tuple[PartitionManifest, float]] = {}
        self._refreshing: dict[tuple[str, int], asyncio.Task[None]] = {}
        # the bucket is used only once its cluster document was read and names this
        # cluster (or none): read at start before a restore, else by the first round
        # that reaches it; `refused` says why a bucket of another cluster is left alone
        self._bucket_checked = False
        self.refused: str | None = None
        self._on_bucket_cluster = on_bucket_cluster
        self._rounds_failing = False
        self._first_round = asyncio.Event()

    async def start(self, store: ObjectStore | None = None) -> None:
        self.store = store if store is not None else await open_store(self.config, self.metrics)
        self.reader = RemoteReader(
            self.store,
            self.data_dir / CACHE_DIR,
            cache_bytes=self.config.read_cache_bytes,
            chunk_bytes=self.config.read_chunk_bytes,
            metrics=self.metrics,
        )
        await self.reader.open()
        if not self.store.answering:
            # it failed at start (logged then): probed before anything else
            self.answering.clear()
            self._reported_down = True
        # the first round runs in the background: a bucket that does not answer keeps
        # nothing local from being served (hosted tiered partitions delete nothing
        # until their uploader has read the manifest). One that answered so far is
        # given a moment, so clients rarely meet a manifest not read yet.
        self._task = asyncio.create_task(self._supervise(), name="tier-supervisor")
        if self.store.answering:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_round.wait(), FIRST_ROUND_WAIT_S)
        self._broker_metrics.add_probe(self.probe)
        log.info(
            "tiered storage on (%s), max upload interval %.0fs",
            self.config.provider,
            self.config.max_upload_interval_ms / 1000,
        )

    async def stop(self, grace_s: float) -> None:
        """Upload every tail within ``grace_s``, then stop everything."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        deadline = time.monotonic() + grace_s
        # one last round first: a partition created since the previous one (an internal
        # topic created on first use, moments ago) gets its uploader, and so its tail
        # uploaded, and the bucket's cluster metadata names its topic. Not while the
        # bucket is away: it would spend the grace on retries the tails may need
        try:
            if not self.away:
                await asyncio.wait_for(self._supervise_once(), max(grace_s, 0.001))
        except (StoreError, TimeoutError) as exc:
            log.warning("tier: last supervision round at stop failed: %s", exc)
        except Exception:
            log.exception("tier: last supervision round at stop failed")
        await asyncio.gather(
            *(u.stop(upload_tail_by=deadline) for u in list(self.uploaders.values())),
            return_exceptions=True,
        )
        self.uploaders.clear()
        for t in list(self._refreshing.values()):
            t.cancel()
        await self.reader.close()
        await self.store.close()

    # -- which partitions are uploaded here ------------------------------------------

    @property
    def away(self) -> bool:
        """The bucket is away: probed, and nothing else is asked of it."""
        return not self.answering.is_set()

    def went_away(self, exc: StoreError) -> None:
        """A request failed; one that says the bucket is away starts the probing."""
        if exc.kind in _AWAY:
            self.answering.clear()

    async def _supervise(self) -> None:
        wait = PROBE_MIN_S
        while True:
            if self.away:
                if not await self.store.answers(CLUSTER_KEY):
                    self._first_round.set()
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, PROBE_MAX_S)
                    continue
                # uploaders waiting on it resume; those not started yet start below
                self.answering.set()
            wait = PROBE_MIN_S
            try:
                await self._supervise_once()
            except StoreError as exc:
                self._rounds_failing = True
                self.went_away(exc)
                self._log_change(exc)
            except Exception:
                log.exception("tier supervisor failed")
            else:
                self._rounds_failing = False
                self._log_change()
            self._first_round.set()
            await asyncio.sleep(SUPERVISE_SECONDS)

    async def _check_bucket(self) -> bool:
        """Whether the bucket may be used: its cluster document names this cluster, or
        there is none. Another cluster's bucket is refused for good (logged, metric)."""
        if self._bucket_checked:
            return True
        if self.refused is not None:
            return False
        try:
            raw: bytes | None = await self.store.get(CLUSTER_KEY)
        except StoreError as exc:
            if exc.kind is not StoreErrorKind.NOT_FOUND:
                raise
            raw = None
        meta = None if raw is None else decode_cluster(raw)
        ours = self.partitions.metadata.cluster_id
        if ours and meta is not None and meta.cluster_id != ours:
            self.refused = (
                f"the bucket holds cluster {meta.cluster_id} but this is cluster {ours}: "
                "refusing to mix two histories; nothing is uploaded or read remotely"
            )
            log.error("tiered storage: %s", self.refused)
            return False
        if self._on_bucket_cluster is not None:
            # once: a cluster node that did not reach the bucket at start learns what it
            # holds (a restore to finish, partitions to lay out) before it names itself
            hand, self._on_bucket_cluster = self._on_bucket_cluster, None
            hand(meta)
        if not ours:
            return False  # compared again once the metadata log names this cluster
        self._bucket_checked = True
        return True

    async def _supervise_once(self) -> None:
        """Start uploaders for tiered partitions led here; stop the others."""
        if not await self._check_bucket():
            return
        if not self._conditional_known:
            with contextlib.suppress(StoreError):  # unreachable: asked again next round
                conditional = await self.store.probe_conditional(PROBE_KEY)
                self._conditional_known = True
                if not conditional:
                    log.warning(
                        "the bucket's server does not honour conditional writes: manifests "
                        "are fenced only by each broker's own leader epoch check"
                    )
        wanted = {
            key: p
            for key, p in list(self.partitions.partitions.items())
            if p.is_leader and tiered(p)
        }
        for key in [k for k in self._started_at if k not in wanted]:
            del self._started_at[key]
        self._failing &= wanted.keys()
        for key in [k for k in self.uploaders if k not in wanted]:
            u = self.uploaders.pop(key)
            await u.stop()
            self.manifests.pop(key, None)
            still = self.partitions.partitions.get(key)
            # a follower now: it deletes nothing on its own (see _hold_followers)
            u.log.remote_log_end = 0 if still is u.partition and tiered(still) else None
        self._hold_followers(wanted)
        hosted = self.partitions.partitions
        for key in [k for k in self._followed if k in wanted or k not in hosted]:
            del self._followed[key]
        to_start = [
            (key, p)
            for key, p in wanted.items()
            # (a new epoch gets a new uploader, which reads the manifest)
            if (u := self.uploaders.get(key)) is None
            or u.partition is not p
            or u.leader_epoch != p.leader_epoch
        ]
        slots = asyncio.Semaphore(START_CONCURRENCY)

        async def start(key: tuple[str, int], p: Partition) -> None:
            async with slots:
                if not self.away:  # else started once the bucket answers again
                    await self._start_uploader(key, p)

        await asyncio.gather(*(start(key, p) for key, p in to_start))
        if not self.away:
            await self.write_cluster_metadata()

    async def _start_uploader(self, key: tuple[str, int], p: Partition) -> None:
        old = self.uploaders.get(key)
        if old is not None:
            await old.stop()
        u = PartitionUploader(self, p)
        try:
            await u.start()
        except StoreError as exc:
            self.report_failure(u, exc)
            return
        except LeadershipLost:
            pass  # deposed already (logged): kept, not started again at this epoch
        except Exception:
            log.exception("%r: the uploader did not start", u)
            return
        finally:
            # marked once tried, not before: while the manifest is being read, reads
            # below the local log start must wait (retriable) rather than be told the
            # local log start is the log's, which makes a consumer skip the bucket
            self._started_at[key] = u.leader_epoch
        self.uploaders[key] = u
        if key in self._failing:
            self.report_ok(u)

    def _hold_followers(self, led: dict[tuple[str, int], Partition]) -> None:
        """Tiered partitions hosted but not led here delete nothing by their own retention.

        A follower's local log only shrinks by following the leader's log start (the
        replica fetcher does that), and the leader moves its log start only below what
        its manifest holds; so no replica ever deletes what the bucket lacks, without
        followers reading manifests. A follower that becomes leader reads the manifest
        first (its uploader's start) and from then on applies ``local.retention.*``.
        """
        for key, p in list(self.partitions.partitions.items()):
            if key not in led and p.log.remote_log_end is None and tiered(p):
                p.log.remote_log_end = 0

    async def write_cluster_metadata(self) -> None:
        """The topics, ids and configs, so a new broker can come back from the bucket."""
        cluster = self.partitions.cluster
        if cluster is not None and cluster.state.restoring:
            return  # the topics are being recreated from this very document
        topics = [
            RemoteTopic(
                name=t.name,
                topic_id=t.topic_id,
                partitions=t.partitions,
                configs=dict(t.configs),
                internal=t.internal,
                replication_factor=t.replication_factor,
            )
            for t in sorted(self.partitions.metadata.topics.values(), key=lambda t: t.name)
        ]
        # read now: a cluster is named by its metadata log after the manager is built
        cluster_id = self.partitions.metadata.cluster_id
        if not cluster_id:
            return
        security = cluster.state if cluster is not None else self.partitions.metadata
        index = 0
        if cluster is not None:
            index = cluster.quorum.status().get("last_applied") or 0
        doc = ClusterMetadata(
            cluster_id=cluster_id,
            topics=topics,
            scram={user: dict(m) for user, m in sorted(security.scram.items())},
            acls=sorted(security.acls),
            quotas=to_stored(security.quotas),
            next_producer_id=0 if cluster is None else cluster.state.next_producer_id,
        )
        data = encode_cluster(doc)
        if data == self._metadata_written:
            return
        store = self.store
        if not await store.probe_conditional(PROBE_KEY):
            await store.put(CLUSTER_KEY, data)
            self._metadata_written = data
            return
        data = encode_cluster(msgspec.structs.replace(doc, metadata_index=index))
        try:
            self._metadata_version = await store.put_if(CLUSTER_KEY, data, self._metadata_version)
        except PreconditionFailedError:
            # another broker wrote it: written again next round against its version,
            # unless it reflects more of the metadata log than this broker has applied
            got = await store.get_versioned(CLUSTER_KEY)
            self._metadata_version = None if got is None else got[1]
            if got is not None and decode_cluster(got[0]).metadata_index > index:
                self._metadata_written = encode_cluster(doc)
            return
        self._metadata_written = encode_cluster(doc)

    # -- reads -----------------------------------------------------------------------

    def manifest(self, p: Partition) -> PartitionManifest | None:
        """The manifest a read of ``p`` uses: the uploader's on the leader, the last one
        read from the bucket on a follower."""
        key = (p.topic, p.index)
        m = self.manifests.get(key)
        if m is not None or p.is_leader:
            return m
        entry = self._followed.get(key)
        return entry[0] if entry is not None else None

    def log_start(self, p: Partition) -> int:
        """The first offset of the whole log, the bucket included."""
        m = self.manifest(p)
        local = p.log.log_start_offset
        if m is None or not m.segments:
            return local
        return min(m.log_start_offset, local)

    def manifest_pending(self, p: Partition) -> bool:
        """A tiered partition led here whose uploader has not started yet (a new leader,
        until the supervisor's next round): what lies below the local log start, and
        where the whole log starts, are not known yet. Once tried, a bucket that does not
        answer (or one left alone) leaves reads local as before."""
        key = (p.topic, p.index)
        return (
            p.is_leader
            and tiered(p)
            and key not in self.manifests
            and self._started_at.get(key) != p.leader_epoch
            and self.store.answering
            and not self.away
            and not self._rounds_failing
            and self.refused is None
        )

    def follower_pending(self, p: Partition) -> bool:
        """A consumer fetched a follower (KIP-392) below its local log start and the
        follower's copy of the manifest does not cover the offset: unless that copy is
        recent and reaches the local log start, a fresh one is read in the background
        and the fetch answers a retriable error (True). Otherwise the offset is below
        the bucket's start: out of range (False)."""
        if p.is_leader or not tiered(p) or self.refused is not None:
            return False  # (a bucket left alone: the log is what is local)
        if not self._bucket_checked:
            return True  # not one manifest is read before the bucket's cluster document
        key = (p.topic, p.index)
        entry = self._followed.get(key)
        if (
            entry is not None
            and time.monotonic() - entry[1] < FOLLOWER_MANIFEST_TTL
            # the bucket holds everything below the local log start: a copy that ends
            # below it is older than this log, however recent
            and entry[0].end_offset >= p.log.log_start_offset
        ):
            return False
        if key not in self._refreshing:
            task = asyncio.create_task(self._read_followed(p), name=f"tier-follow-{key}")
            self._refreshing[key] = task
        return True

    async def _read_followed(self, p: Partition) -> None:
        key = (p.topic, p.index)
        info = p.topic_info
        try:
            m = await read_manifest(self.store, manifest_key(info.name, info.topic_id, p.index))
            if m is None:
                m = PartitionManifest(topic=info.name, topic_id=info.topic_id, partition=p.index)
            self._followed[key] = (m, time.monotonic())
        except StoreError as exc:
            log.debug("%s-%d: the leader's manifest cannot be read: %s", p.topic, p.index, exc)
        finally:
            self._refreshing.pop(key, None)

    def forget_followed(self, p: Partition) -> None:
        """A follower's copy named an object that is gone (remote retention since):
        the next read below its local log start reads the manifest again."""
        self._followed.pop((p.topic, p.index), None)

    def remote_covers(self, p: Partition, offset: int) -> PartitionManifest | None:
        m = self.manifest(p)
        if m is None or not m.segments:
            return None
        if m.log_start_offset <= offset < m.end_offset:
            return m
        return None

    def last_tiered_offset(self, p: Partition) -> int:
        """ListOffsets -5 (KIP-1005): the last offset in the bucket, or -1."""
        m = self.manifests.get((p.topic, p.index))
        return m.end_offset - 1 if m is not None and m.segments else -1

    async def read(
        self,
        p: Partition,
        m: PartitionManifest,
        offset: int,
        max_bytes: int,
        upper: int,
        committed: bool,
    ) -> tuple[bytes, list[tuple[int, int]]]:
        """Fetch below the local log: batches from the bucket, and for read_committed the
        aborted transactions among them."""
        prefix = partition_prefix(m.topic, m.topic_id, m.partition)
        data = b""
        at = offset
        while at < upper and (seg := m.find(at)) is not None:
            data = await self.reader.read(prefix, seg, at, max_bytes, upper)
            if data:
                break
            at = seg.next_offset  # compaction left nothing from ``at`` to its end
        if not data and m.end_offset <= at < upper:
            # the rest of the range is local (a compacted tail emptied in the bucket)
            at = max(at, p.log.log_start_offset)
            data = p.log.read(at, max_bytes, upper_bound=upper) if at < upper else b""
        if not committed or not data:
            return data, []
        end = offset
        for _pos, header in iter_batches(data):
            end = header.base_offset + header.last_offset_delta + 1
        found, complete = await self.reader.aborted_transactions(prefix, m, offset, end)
        aborted = [(t.producer_id, t.first_offset) for t in found]
        if not complete:
            aborted.extend(p.log.aborted_transactions(max(offset, p.log.log_start_offset), end))
        return data, aborted

    async def offset_for_timestamp(self, p: Partition, timestamp: int) -> tuple[int, int] | None:
        """ListOffsets by time over the bucket; None when the answer is local (or absent)."""
        m = self.manifests.get((p.topic, p.index))
        if m is None or not m.segments or max(s.max_timestamp for s in m.segments) < timestamp:
            return None
        if p.log.log_start_offset <= m.log_start_offset:
            return None  # everything remote is on disk too
        prefix = partition_prefix(m.topic, m.topic_id, m.partition)
        return await self.reader.offset_for_timestamp(prefix, m, timestamp, p.log.max_uncompressed)

    async def delete_records(self, p: Partition, offset: int) -> None:
        u = self.uploaders.get((p.topic, p.index))
        if u is None:
            return
        for _ in range(3):
            try:
                await u.delete_records(offset)
                return
            except ManifestChanged:
                continue  # again, against the manifest another writer left
            except LeadershipLost:
                return  # the next leader's manifest is not this broker's to change

    # -- conditions ------------------------------------------------------------------

    def _down(self) -> bool:
        return bool(self._failing) or self._rounds_failing or self.away

    def _log_change(self, exc: StoreError | None = None) -> None:
        """Once per change of the condition, not per failed call."""
        down = self._down()
        if down == self._reported_down:
            return
        self._reported_down = down
        if down:
            log.warning("the bucket is not answering (%s): uploads wait, reads stay local", exc)
        elif self.refused is None:  # else its error said what becomes of the tier
            log.info("the bucket answers again: uploads catch up")

    def report_failure(self, u: PartitionUploader, exc: StoreError) -> None:
        self._failing.add((u.partition.topic, u.partition.index))
        self.went_away(exc)
        self._log_change(exc)

    def report_ok(self, u: PartitionUploader) -> None:
        self._failing.discard((u.partition.topic, u.partition.index))
        self._log_change()

    def probe(self) -> Iterable[Metric]:
        lag_offsets = GaugeMetricFamily(
            "shazamq_tier_upload_lag_offsets",
            "Offsets below the high watermark not yet in the bucket.",
            labels=["topic", "partition"],
        )
        lag_seconds = GaugeMetricFamily(
            "shazamq_tier_upload_lag_seconds",
            "Seconds since the bucket last had everything, while it lacks something.",
            labels=["topic", "partition"],
        )
        remote_bytes = GaugeMetricFamily(
            "shazamq_tier_remote_size_bytes",
            "Bytes of the partition in the bucket.",
            labels=["topic", "partition"],
        )
        for (topic, index), u in list(self.uploaders.items()):
            offsets, seconds = u.lag()
            labels = [topic, str(index)]
            lag_offsets.add_metric(labels, offsets)
            lag_seconds.add_metric(labels, seconds)
            remote_bytes.add_metric(labels, u.manifest.size_bytes)
        reachable = GaugeMetricFamily(
            "shazamq_tier_bucket_reachable",
            "1 while the bucket answers and uploads succeed, 0 while they fail.",
        )
        down = self._down() or not self.store.answering
        reachable.add_metric([], 0 if down else 1)
        refused = GaugeMetricFamily(
            "shazamq_tier_bucket_refused",
            "1 when the bucket holds another cluster's data and is left alone.",
        )
        refused.add_metric([], 0 if self.refused is None else 1)
        return [lag_offsets, lag_seconds, remote_bytes, reachable, refused]
