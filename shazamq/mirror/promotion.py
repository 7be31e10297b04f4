"""Promotion: a mirrored topic becomes an ordinary writable one, on every broker alike.

A promotion is asked for by the topic administrator (``promoted_topics``) or by a client
deleting the marker (IncrementalAlterConfigs); either way the marker first takes its
promoting form (``topic_configs.promoting``). That stops every copy of the topic at once
(the copier compares the marker with no ``await`` before its append) and still refuses
producers, so from then on every transaction open in the topic is one of the source's
that will never get its marker here.

Each partition's leader then ends its copy: it aborts the transactions open there
(``LocalBroker.abort_open_transactions``: an ABORT marker each, on the in-sync replicas)
and records the partition as sealed (single broker: in memory; cluster: a metadata record
under its leader epoch). This is decided from durable state, the promoting marker and the
seals, not from watching the marker change: a broker that leads a partition later, or
restarts, finds the partition unsealed and does it then; an abort already in the log left
nothing open, so nothing is aborted twice. Once every partition is sealed the
administrator removes the marker and producers may write; the copy's open transactions
are gone by then, and later transactions are local ones that no promotion touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shazamq.broker.topic_configs import (
    MIRROR_PROMOTED_AT,
    MIRROR_SOURCE,
    promoting,
)
from shazamq.protocol.errors import ErrorCode, KafkaError

from .selection import MirrorMark

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition

    from .local import LocalBroker
    from .stats import SourceStats

__all__ = ["Promotions"]

log = logging.getLogger(__name__)

# how long an IncrementalAlterConfigs that promotes waits for the topic to be writable
PROMOTION_WAIT_S = 20.0


class Promotions:
    """Carries every promotion under way through to the end (one task per broker)."""

    def __init__(
        self,
        local: LocalBroker,
        *,
        interval_s: float,
        stats_of: Callable[[str], SourceStats | None],
        drop: Callable[[str, int], None],
    ) -> None:
        self.local = local
        self._interval = interval_s
        self._stats_of = stats_of
        self._drop = drop
        self._wake = asyncio.Event()
        self._done = asyncio.Event()  # set after every round
        self._task: asyncio.Task[None] | None = None
        self._notes: dict[str, str] = {}

    def start(self) -> None:
        self.local.on_topics_changed(self.wake)
        self.local.on_partition_role(self._on_partition_role)
        self._task = asyncio.create_task(self._run(), name="mirror-promotions")

    async def stop(self) -> None:
        self.local.forget_partition_role(self._on_partition_role)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    def _on_partition_role(self, p: Partition, leads: bool) -> None:
        if leads:
            self.wake()

    async def request(self, name: str) -> bool:
        """Start promoting ``name`` (the topic administrator); False if it is not a
        mirror (any more)."""
        info = self.local.topic(name)
        mark = None if info is None else info.configs.get(MIRROR_SOURCE)
        if info is None or mark is None:
            return False
        if mark != promoting(mark):
            await self.local.set_configs(name, {**info.configs, MIRROR_SOURCE: promoting(mark)})
            log.info("mirror: promotion of %s begins: its copy stops", name)
        self.wake()
        return True

    async def promoted(self, name: str, timeout: float = PROMOTION_WAIT_S) -> None:
        """Return once ``name`` is no longer a mirror; KafkaError(REQUEST_TIMED_OUT) if
        that takes longer than ``timeout`` (the promotion goes on)."""
        deadline = time.monotonic() + timeout
        while self.local.mark_of(name) is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaError(
                    ErrorCode.REQUEST_TIMED_OUT,
                    f"the promotion of {name} is under way: it becomes writable once the "
                    "leader of every partition has ended its copy",
                )
            self.wake()
            self._done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), min(left, 0.5))

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                self._note("step", f"promotion: {exc}")
            except Exception:
                log.exception("mirror: promotion step failed")
            self._done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

    async def step(self) -> None:
        """One round over every topic being promoted: seal the partitions led here, and
        (the administrator) remove the marker of a topic whose partitions are all
        sealed."""
        local = self.local
        for name in local.promoting_topics():
            info = local.topic(name)
            mark = local.mark_of(name)
            if info is None or mark is None:
                continue
            try:
                source = MirrorMark.parse(mark).source
            except ValueError:
                source = ""
            for index in range(info.partitions):
                if local.sealed(name, index):
                    continue
                p = local.partition(name, index)
                if p is None or not local.leads(p):
                    continue
                self._drop(name, index)
                if await self._abort_open(p, source):
                    await local.seal(p)
                    log.info(
                        "mirror %s: %s-%d: the copy ended at offset %d",
                        source,
                        name,
                        index,
                        p.log.log_end_offset,
                    )
            if not local.manages_topics:
                continue
            info = local.topic(name)
            if info is None or info.configs.get(MIRROR_SOURCE) != mark:
                continue
            if all(local.sealed(name, i) for i in range(info.partitions)):
                points = local.promotion_points(name)
                configs = {k: v for k, v in info.configs.items() if k != MIRROR_SOURCE}
                configs[MIRROR_PROMOTED_AT] = ",".join(
                    str(points.get(i, -1)) for i in range(info.partitions)
                )
                await local.set_configs(name, configs)
                local.forget_seals(name)
                log.info(
                    "mirror %s: topic %s promoted: no longer copied, writable",
                    source,
                    name,
                )

    async def _abort_open(self, p: Partition, source: str) -> bool:
        """Abort the source's transactions open in ``p``; False if a marker could not be
        written (the partition stays unsealed and is tried again)."""
        stats = self._stats_of(source)
        done = True
        for t in await self.local.abort_open_transactions(p):
            if t.error_code:
                done = False
                self._note(
                    f"abort:{p.topic}:{p.index}:{t.producer_id}",
                    f"{p.topic}-{p.index}: cannot abort the open transaction of source "
                    f"producer {t.producer_id} (first offset {t.first_offset}): error "
                    f"{t.error_code}; the topic stays a mirror until it can",
                )
                continue
            if stats is not None:
                stats.promotion_aborts += 1
            log.warning(
                "mirror %s: %s-%d promoted with the transaction of source producer %d "
                "(epoch %d, first offset %d) still open: aborted",
                source,
                p.topic,
                p.index,
                t.producer_id,
                t.producer_epoch,
                t.first_offset,
            )
        return done

    def _note(self, key: str, text: str) -> None:
        if self._notes.get(key) != text:
            self._notes[key] = text
            log.warning("mirror: %s", text)
