"""The mirroring service: every configured source, started and stopped by the broker.

Per source, one task keeps the picture current: every ``metadata_refresh_interval_ms``
(sooner when a fetch finds its leader moved) it reads the source's metadata and topic
configs, creates the selected topics locally (source partition count, topic id, the
configs that matter, and the mirror marker that makes them read-only), adds partitions the
source added, applies promotions, and places every partition in a fetch session. There
are ``num_consumers`` sessions slots per source; a partition's slot is a hash of its name,
and within a slot one session per source broker fetches the partitions that broker leads.
Group offsets sync on their own schedule. A source that is down is retried with
exponential backoff; its state is in the metrics, and nothing of it touches the broker's
own clients.

In a cluster every broker runs the service. Topic administration (creating a mirrored
topic through the controller with the source's topic id and the cluster's replication
factor, growing it, copying its configs, promotion) is done by the active controller;
each broker copies only the mirrored partitions it leads, starting and stopping as
leadership moves (the node's partition-role listeners), and the followers replicate the
copy with the ordinary replica fetcher. The position is still the local log end: a new
leader's log is a prefix of the source's (every replica only ever held source batches at
source offsets, and followers truncate to the leader's), so it resumes from its own end
without duplicates or holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from shazamq.broker.cluster.client import BrokerConnectionError, ClientPool
from shazamq.broker.log.log_config import CONFIG_DEFS
from shazamq.broker.tasks import cancel_all
from shazamq.broker.topic_configs import MIRROR_SOURCE, is_promoting
from shazamq.config import MirrorConfig, MirrorSource
from shazamq.protocol.errors import KafkaError

from .copier import Copy, FetchSession
from .groups import GroupOffsetSync
from .local import LocalBroker
from .promotion import PROMOTION_WAIT_S, Promotions
from .selection import Decision, GroupSelector, MirrorMark, TopicSelector
from .source import (
    SourceCluster,
    SourceError,
    SourceMetadata,
    SourceTopic,
    source_sasl_login,
    source_ssl_context,
)
from .stats import PartitionStats, SourceStats, probe

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition

__all__ = ["COPIED_CONFIGS", "MirrorService"]

log = logging.getLogger(__name__)

# The source topic settings a mirror takes over (where this broker knows them).
COPIED_CONFIGS = tuple(
    k
    for k in (
        "cleanup.policy",
        "retention.ms",
        "retention.bytes",
        "delete.retention.ms",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "message.timestamp.type",
        "max.message.bytes",
    )
    if k in CONFIG_DEFS
)
MIN_REFRESH_S = 0.5


class SourceMirror:
    """Mirrors the selected topics of one source cluster."""

    def __init__(
        self,
        config: MirrorSource,
        local: LocalBroker,
        source: SourceCluster,
        promotions: Promotions,
    ) -> None:
        self.config = config
        self.local = local
        self.source = source
        self.promotions = promotions
        self.stats = SourceStats(config.name)
        self.selector = TopicSelector(
            config.topic_whitelist,
            config.topic_blacklist,
            config.topic_prefix,
            frozenset(config.promoted_topics),
        )
        self.copies: dict[tuple[str, int], Copy] = {}
        self.sessions: dict[tuple[int, int], FetchSession] = {}
        self.mirrored: dict[str, str] = {}  # source topic -> local topic
        self._pools: list[ClientPool] = [source.pool() for _ in range(config.num_consumers)]
        self._stale = asyncio.Event()
        self._notes: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.groups = GroupOffsetSync(
            source=source,
            local=local,
            selector=GroupSelector(
                config.group_whitelist,
                config.group_blacklist,
                frozenset({config.consumer_group_id}),
            ),
            topics=lambda: self.mirrored,
            stats=self.stats,
        )

    def start(self) -> None:
        self.local.on_partition_role(self._on_partition_role)
        name = self.config.name
        self._tasks.append(asyncio.create_task(self._run(), name=f"mirror-{name}"))
        if self.config.sync_group_offsets:
            self._tasks.append(
                asyncio.create_task(self._group_loop(), name=f"mirror-{name}-groups")
            )

    async def stop(self) -> None:
        self.local.forget_partition_role(self._on_partition_role)
        await cancel_all(self._tasks)
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        await self.source.close()
        self.stats.state = "stopped"

    # -- the refresh loop ----------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        interval = self.config.metadata_refresh_interval_ms / 1000
        while True:
            self._stale.clear()
            try:
                md = await self.source.metadata()
                await self._reconcile(md)
                if self.stats.state != "connected":
                    log.info(
                        "mirror %s: connected to cluster %s (%d brokers), mirroring %d topics",
                        self.config.name,
                        md.cluster_id,
                        len(md.brokers),
                        len(self.mirrored),
                    )
                self.stats.state, self.stats.error = "connected", ""
                self.stats.last_metadata = time.time()
                failures = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stale.wait(), interval)
                await asyncio.sleep(MIN_REFRESH_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.stats.connect_errors += 1
                delay = min(
                    self.config.retry_backoff_ms / 1000 * 2 ** min(failures - 1, 16),
                    self.config.retry_backoff_max_ms / 1000,
                )
                text = str(exc) or type(exc).__name__
                if self.stats.state != "down" or text != self.stats.error:
                    if isinstance(exc, BrokerConnectionError | SourceError | KafkaError):
                        log.warning(
                            "mirror %s: source unavailable: %s; retrying (backoff up to %.0fs)",
                            self.config.name,
                            text,
                            self.config.retry_backoff_max_ms / 1000,
                        )
                    else:
                        log.exception("mirror %s: refresh failed", self.config.name)
                self.stats.state, self.stats.error = "down", text
                await asyncio.sleep(delay)

    async def _group_loop(self) -> None:
        interval = self.config.sync_group_offsets_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self.stats.state != "connected":
                continue
            try:
                n = await self.groups.sync_once()
                if n:
                    log.debug("mirror %s: synced %d group offsets", self.config.name, n)
            except asyncio.CancelledError:
                raise
            except (BrokerConnectionError, SourceError, KafkaError) as exc:
                self._note("groups", f"group offset sync failed: {exc}")
            except Exception:
                log.exception("mirror %s: group offset sync failed", self.config.name)

    def _note(self, key: str, text: str) -> None:
        """Log a condition once, until it changes."""
        if self._notes.get(key) != text:
            self._notes[key] = text
            log.warning("mirror %s: %s", self.config.name, text)

    def _refresh_soon(self) -> None:
        self._stale.set()

    def _on_partition_role(self, p: Partition, leads: bool) -> None:
        """Leadership moved (cluster): a partition no longer led here stops being copied
        at once; one now led here is picked up by a refresh right away."""
        key = (p.topic, p.index)
        if leads:
            if self.local.mark_of(p.topic) is not None:
                self._refresh_soon()
        elif key in self.copies:
            self._drop(key)

    # -- reconciling with the source -----------------------------------------------------

    async def _reconcile(self, md: SourceMetadata) -> None:
        await self._promote()
        candidates = [n for n in md.topics if self.selector.decide(n) is Decision.MIRROR]
        configs = await self.source.topic_configs(sorted(candidates))
        mirrored: dict[str, str] = {}
        for name in candidates:
            src_configs = configs.get(name)
            if src_configs is None:
                continue  # DescribeConfigs failed for it; try again next round
            decision = self.selector.decide(
                name,
                source_mark=src_configs.get(MIRROR_SOURCE),
                local_cluster_id=self.local.cluster_id,
            )
            if decision is not Decision.MIRROR:
                self._note(
                    f"topic:{name}", f"source topic {name} is not mirrored: {decision.value}"
                )
                continue
            local_name = await self._ensure_topic(md, md.topics[name], src_configs)
            if local_name is not None:
                mirrored[name] = local_name
        for name in set(self.mirrored) - set(mirrored):
            log.info(
                "mirror %s: source topic %s is no longer copied (deleted or deselected at the "
                "source); the local topic %s is kept",
                self.config.name,
                name,
                self.mirrored[name],
            )
        self.mirrored = mirrored
        wanted_topics = set(mirrored.values())
        for key in [k for k in self.copies if k[0] not in wanted_topics]:
            self._drop(key)

    async def _promote(self) -> None:
        """The topic administrator starts the promotion of this source's topics named in
        ``promoted_topics``; ``Promotions`` carries it through on every broker."""
        if not self.local.manages_topics:
            return
        for local_name in self.config.promoted_topics:
            mark = self.local.mark_of(local_name)
            if mark is None or is_promoting(mark):
                continue
            try:
                origin = MirrorMark.parse(mark)
            except ValueError:
                continue
            if origin.source == self.config.name:
                await self.promotions.request(local_name)

    def _copied_configs(self, topic: str, src: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for key in COPIED_CONFIGS:
            value = src.get(key)
            if value is None:
                continue
            try:
                self.local.validate_configs({key: value})
            except KafkaError as exc:
                self._note(f"config:{topic}:{key}", f"{topic}: source setting not kept: {exc}")
                continue
            out[key] = value
        return out

    async def _ensure_topic(
        self, md: SourceMetadata, st: SourceTopic, src_configs: Mapping[str, str]
    ) -> str | None:
        """Create or update the local topic of ``st``; its local name, or None if skipped."""
        local_name = self.selector.local_name(st.name)
        mark = MirrorMark(self.config.name, st.name, md.cluster_id).encode()
        copied = self._copied_configs(local_name, src_configs)
        info = self.local.topic(local_name)
        count = len(st.partitions)
        admin = self.local.manages_topics
        if info is None:
            if not admin:
                return None  # the active controller creates it; copied once it exists
            topic_id = st.topic_id
            if topic_id is not None and self.local.topic_id_in_use(topic_id):
                self._note(
                    f"id:{local_name}",
                    f"{local_name}: the source's topic id {topic_id} is taken here; the copy "
                    "gets a new one",
                )
                topic_id = None
            await self.local.create_topic(
                local_name, count, {**copied, MIRROR_SOURCE: mark}, topic_id
            )
            log.info(
                "mirror %s: created %s (%d partitions, id %s) as a mirror of %s",
                self.config.name,
                local_name,
                count,
                topic_id or "new",
                st.name,
            )
        else:
            have = info.configs.get(MIRROR_SOURCE)
            if have is not None and is_promoting(have):
                for key in [k for k in self.copies if k[0] == local_name]:
                    self._drop(key)
                return None  # its copy is ending (see promotion.py)
            if have is None:
                if local_name not in self.config.promoted_topics:
                    self._note(
                        f"local:{local_name}",
                        f"local topic {local_name} exists and is not a mirror: {st.name} is "
                        "not copied into it",
                    )
                return None
            if have != mark:
                self._note(
                    f"local:{local_name}",
                    f"local topic {local_name} mirrors {have}, not {mark}: not copied (a "
                    "replaced source cluster has different offsets)",
                )
                return None
            if count > info.partitions and admin:
                await self.local.add_partitions(local_name, count)
                log.info(
                    "mirror %s: %s grew from %d to %d partitions at the source",
                    self.config.name,
                    local_name,
                    info.partitions,
                    count,
                )
            if admin and any(info.configs.get(k) != v for k, v in copied.items()):
                await self.local.set_configs(local_name, {**info.configs, **copied})
        for index, sp in st.partitions.items():
            p = self.local.partition(local_name, index)
            key = (local_name, index)
            if p is None or not self.local.leads(p):
                if key in self.copies:  # led elsewhere now: that broker copies it
                    self._drop(key)
                continue
            c = self.copies.get(key)
            if c is None or c.partition is not p or c.mark != mark:
                if c is not None:
                    self._drop(key)
                stats = self.stats.partitions.setdefault(key, PartitionStats(local_name, index))
                c = self.copies[key] = Copy(st.name, index, p, mark, stats)
            c.leader_id, c.leader_epoch = sp.leader_id, sp.leader_epoch
            self._place(c)
        return local_name

    # -- fetch sessions ------------------------------------------------------------------

    def _slot(self, key: tuple[str, int]) -> int:
        return zlib.crc32(f"{key[0]}\0{key[1]}".encode()) % self.config.num_consumers

    def _place(self, c: Copy) -> None:
        want = (self._slot(c.key), c.leader_id) if c.leader_id >= 0 else None
        for sk, session in self.sessions.items():
            if sk != want and c.key in session.copies:
                session.remove(c.key)
        if want is None:
            return
        session = self.sessions.get(want)
        if session is None:
            cfg = self.config
            session = self.sessions[want] = FetchSession(
                source=self.source,
                leader_id=c.leader_id,
                pool=self._pools[want[0]],
                max_bytes=cfg.fetch_max_bytes,
                max_wait_ms=cfg.fetch_max_wait_ms,
                backoff_ms=cfg.retry_backoff_ms,
                backoff_max_ms=cfg.retry_backoff_max_ms,
                still_mirror=self._still_mirror,
                on_stale=self._refresh_soon,
                on_appended=self.local.appended,
                producer_id_floor=self.local.producer_id_floor,
                reserve_producer_ids=self.local.reserve_producer_ids,
                writer=self.local.writer,
            )
        if session.copies.get(c.key) is not c:
            session.add(c)

    def _drop(self, key: tuple[str, int]) -> None:
        self.copies.pop(key, None)
        for session in self.sessions.values():
            session.remove(key)
        self.stats.partitions.pop(key, None)

    def _still_mirror(self, c: Copy) -> bool:
        topic = c.partition.topic
        return (
            self.local.mark_of(topic) == c.mark
            and self.local.partition(topic, c.index) is c.partition
            and self.local.leads(c.partition)
        )


class MirrorService:
    """Every configured source; what the composition root starts and stops."""

    def __init__(self, config: MirrorConfig, local: LocalBroker, *, client_id: str) -> None:
        self.config = config
        self.local = local
        self.client_id = client_id
        self.sources: list[SourceMirror] = []
        self.promotions = Promotions(
            local,
            interval_s=min(
                (s.metadata_refresh_interval_ms / 1000 for s in config.sources), default=5.0
            ),
            stats_of=self._stats_of,
            drop=self._drop,
        )

    async def start(self) -> None:
        """Connect nothing yet, but load every source's TLS files and password first.

        Raises ConfigError for unreadable certificates or missing credentials, so a
        broker with a broken mirror configuration does not start.
        """
        loop = asyncio.get_running_loop()
        for src in self.config.sources:
            ssl_context = await loop.run_in_executor(None, source_ssl_context, src)
            sasl = await loop.run_in_executor(None, source_sasl_login, src)
            cluster = SourceCluster(
                src, ssl_context=ssl_context, sasl=sasl, client_id=self.client_id
            )
            self.sources.append(SourceMirror(src, self.local, cluster, self.promotions))
        self.promotions.start()
        for m in self.sources:
            m.start()
        log.info(
            "mirroring from %d sources: %s",
            len(self.sources),
            ", ".join(f"{s.config.name} ({s.config.bootstrap_servers})" for s in self.sources),
        )

    async def stop(self) -> None:
        await self.promotions.stop()
        await asyncio.gather(*(m.stop() for m in self.sources), return_exceptions=True)

    async def promoted(self, name: str, timeout: float = PROMOTION_WAIT_S) -> None:
        """Wait for a promotion a client asked for (the marker deleted): see
        ``Promotions.promoted``."""
        self.promotions.wake()
        await self.promotions.promoted(name, timeout)

    def _stats_of(self, source: str) -> SourceStats | None:
        return next((m.stats for m in self.sources if m.config.name == source), None)

    def _drop(self, name: str, index: int) -> None:
        for m in self.sources:
            if (name, index) in m.copies:
                m._drop((name, index))

    def probe(self) -> Iterable[Metric]:
        return probe(m.stats for m in self.sources)
