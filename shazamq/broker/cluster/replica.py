"""One hosted partition's replication role: leader bookkeeping or follower position.

Attached to a `Partition` as ``partition.replica`` in a cluster (None on a single broker,
so the single broker's hot path never looks at any of this). The leader keeps each
follower's log end offset and the last time it was caught up, advances the high
watermark to what every ISR member has, and resolves `acks=all` produces once the high
watermark passes them. Decisions about ISR membership are returned to the caller as
proposals; only the controller's committed AlterPartition changes the ISR.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from shazamq.protocol.errors import ErrorCode, KafkaError

from .state import PartitionInfo


@dataclass(slots=True)
class FollowerState:
    log_end_offset: int = -1
    # monotonic seconds: when the follower last had everything the leader had
    last_caught_up: float = 0.0
    # the leader's log end at the follower's previous fetch, and when that was
    prev_fetch_leader_leo: int = -1
    prev_fetch_time: float = 0.0


@dataclass(slots=True)
class ReplicaRole:
    """The controller's view of this partition plus this broker's part in it."""

    broker_id: int
    topic_id: str
    replicas: list[int]
    isr: list[int]
    leader: int
    leader_epoch: int
    partition_epoch: int
    followers: dict[int, FollowerState] = field(default_factory=dict)
    # (offset the high watermark must pass, future) of acks=all produces
    waiters: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    # an AlterPartition we proposed and have not seen committed yet
    isr_change_pending: bool = False
    # replicas a reassignment is adding: their catch-up is throttled
    adding: list[int] = field(default_factory=list)

    @property
    def is_leader(self) -> bool:
        return self.leader == self.broker_id

    def leads_at(self, leader_epoch: int) -> bool:
        """Whether this broker still leads at ``leader_epoch``. Asked from a writer thread
        too (log/writer.py): two attribute reads, and a read torn by a concurrent
        ``update`` either answers False or answers as before the update."""
        return self.leader == self.broker_id and self.leader_epoch == leader_epoch

    def update(self, info: PartitionInfo, now: float) -> tuple[bool, bool]:
        """Take the controller's new view; returns (leadership changed, epoch changed)."""
        was_leader = self.is_leader
        epoch_changed = info.leader_epoch != self.leader_epoch
        self.replicas = list(info.replicas)
        self.isr = list(info.isr)
        self.leader = info.leader
        self.leader_epoch = info.leader_epoch
        self.partition_epoch = info.partition_epoch
        self.adding = list(info.adding)
        self.isr_change_pending = False
        if self.is_leader:
            for b in self.replicas:
                if b != self.broker_id and b not in self.followers:
                    # a new follower gets a full lag window before it can be dropped
                    self.followers[b] = FollowerState(last_caught_up=now)
            for b in list(self.followers):
                if b not in self.replicas:
                    del self.followers[b]
            if not was_leader or epoch_changed:
                for f in self.followers.values():
                    f.last_caught_up = now
                    f.log_end_offset = -1
        else:
            self.followers.clear()
        return was_leader != self.is_leader, epoch_changed

    # -- leader ------------------------------------------------------------------------

    def record_fetch(self, follower: int, fetch_offset: int, leader_leo: int, now: float) -> None:
        """A follower fetched from `fetch_offset`: everything below it is on its log.

        Caught up means it asked for the leader's log end, or it asked for at least what
        the leader had at its previous fetch (Kafka's rule, so a steady stream of appends
        does not make a keeping-up follower look behind forever).
        """
        f = self.followers.get(follower)
        if f is None:
            return
        f.log_end_offset = fetch_offset
        if fetch_offset >= leader_leo:
            f.last_caught_up = now
        elif fetch_offset >= f.prev_fetch_leader_leo >= 0:
            f.last_caught_up = max(f.last_caught_up, f.prev_fetch_time)
        f.prev_fetch_leader_leo = leader_leo
        f.prev_fetch_time = now

    def high_watermark(self, leader_leo: int) -> int:
        """The smallest log end among the ISR (the leader's own included)."""
        hw = leader_leo
        for b in self.isr:
            if b == self.broker_id:
                continue
            f = self.followers.get(b)
            if f is None or f.log_end_offset < 0:
                return -1  # unknown yet: do not move
            hw = min(hw, f.log_end_offset)
        return hw

    def isr_to_add(self, hw: int) -> list[int]:
        """Followers outside the ISR that have reached the high watermark."""
        return [
            b
            for b, f in self.followers.items()
            if b not in self.isr and f.log_end_offset >= 0 and f.log_end_offset >= hw
        ]

    def isr_to_drop(self, now: float, max_lag_s: float) -> list[int]:
        return [
            b
            for b in self.isr
            if b != self.broker_id
            and (f := self.followers.get(b)) is not None
            and now - f.last_caught_up > max_lag_s
        ]

    def wait_for_hw(self, offset: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters.append((offset, fut))
        return fut

    def release_waiters(self, hw: int) -> None:
        """Resolve the acks=all produces the high watermark has now passed."""
        if not self.waiters:
            return
        keep = []
        for offset, fut in self.waiters:
            if fut.done():
                continue
            if hw >= offset:
                fut.set_result(0)
            else:
                keep.append((offset, fut))
        self.waiters = keep

    def fail_waiters(self, code: int) -> None:
        waiters, self.waiters = self.waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_result(code)

    def check_leader(self, current_leader_epoch: int = -1) -> None:
        if not self.is_leader:
            raise KafkaError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {self.broker_id} is not the leader"
            )
        if 0 <= current_leader_epoch < self.leader_epoch:
            raise KafkaError(ErrorCode.FENCED_LEADER_EPOCH, "fenced leader epoch")
        if current_leader_epoch > self.leader_epoch:
            raise KafkaError(ErrorCode.UNKNOWN_LEADER_EPOCH, "unknown leader epoch")


def leadership_fence(role: ReplicaRole | None, leader_epoch: int) -> Callable[[], bool] | None:
    """The check a write pool thread makes right before writing an append made while
    leading at ``leader_epoch`` (``still_leads`` of log/writer.py); None on a single
    broker, which has no role to lose."""
    return None if role is None else functools.partial(role.leads_at, leader_epoch)
