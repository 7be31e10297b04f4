"""The share-partition leader's side of durable state in a cluster.

The share coordinator (:mod:`.share_coordinator`) keeps each share-partition's in-flight
window on the leader of its topic partition. In a cluster this module is what makes that
window durable across brokers (see :mod:`.share_state_coordinator` for the other side):

* before a share-partition is first served here it is read from its share coordinator
  (ReadShareGroupState with the partition's leader epoch, which fences the previous
  leader); a key without state starts by ``share.auto.offset.reset`` as on one broker;
* a change is written as the whole window (WriteShareGroupState); acknowledgements are
  answered once the write is replicated, other changes (expired locks, released
  records, archived markers) are written in the background; writes of one key go one
  at a time, each with the window as it is when it is sent, so a later write never
  carries older state;
* when leadership of a topic partition moves (or its leader epoch does), its
  share-partitions are dropped from memory: a broker leading it again reads the state
  afresh, and acquisitions, which are never persisted, end with the old leader, so the
  new one redelivers exactly the records not acknowledged;
* a write refused with FENCED_LEADER_EPOCH / FENCED_STATE_EPOCH (a newer leader, or an
  offsets reset) drops the share-partition, so it is read again before it is served;
  when a share session opens, the share-partitions it names are checked against their
  coordinator's state epoch (an offsets reset or deletion needs an empty group, whose
  next member opens a session), and dropped if it moved.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode

from .share_persister import SharePersister
from .share_state_store import SHARE_STATE_TOPIC, Snapshot

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition

    from .share_coordinator import ShareCoordinator

__all__ = ["ShareLeaderState"]

log = logging.getLogger(__name__)
_E = ErrorCode

PartKey = tuple[str, uuid.UUID, int]
_FENCED = (int(_E.FENCED_LEADER_EPOCH), int(_E.FENCED_STATE_EPOCH))


class ShareLeaderState:
    """Reads and writes of the share-partitions led here, through a persister."""

    def __init__(self, share: ShareCoordinator, persister: SharePersister) -> None:
        self.share = share
        self.persister = persister
        self.fresh: set[PartKey] = set()  # read, and the coordinator has no state for them
        self.state_epochs: dict[PartKey, int] = {}
        # the coordinator had a state for these when last read or written
        self.known: set[PartKey] = set()
        self._loading: dict[PartKey, asyncio.Future[tuple[int, str | None]]] = {}
        self._write_locks: dict[PartKey, asyncio.Lock] = {}
        self._background: set[asyncio.Task[int]] = set()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- which share-partitions are ready -----------------------------------------

    def ready(self, key: PartKey) -> bool:
        """Whether the state of ``key`` is known here (read, or being served)."""
        s = self.share
        return key in s.partitions or key in s._snapshots or key in self.fresh

    def drop(self, key: PartKey) -> None:
        s = self.share
        s.partitions.pop(key, None)
        s._snapshots.pop(key, None)
        s._snapshot_epochs.pop(key, None)
        self.fresh.discard(key)
        self.state_epochs.pop(key, None)
        self.known.discard(key)

    def on_partition_role(self, p: Partition, leader: bool) -> None:
        """Leadership of ``p`` moved (or its epoch did): forget its share-partitions."""
        if p.topic == SHARE_STATE_TOPIC:
            return
        tid = p.topic_info.uuid
        keys = [k for k in (*self.share.partitions, *self.share._snapshots, *self.fresh)]
        for key in {k for k in keys if k[1] == tid and k[2] == p.index}:
            self.drop(key)
        p.notify()

    async def revalidate(self, group_id: str, tps: Iterable[tuple[uuid.UUID, int]]) -> None:
        """A share session opens: share-partitions whose state was reset or deleted at
        their share coordinator since it was read here (an offsets administration, which
        needs an empty group) are dropped, so they are read again before being served."""
        for tid, index in dict.fromkeys(tps):
            key = (group_id, tid, index)
            if key not in self.share.partitions and key not in self.share._snapshots:
                continue
            lock = self._write_locks.get(key)
            sp = self.share.partitions.get(key)
            if (lock is not None and lock.locked()) or (sp is not None and sp.dirty):
                continue  # a write of ours is due: the coordinator will fence it if stale
            answer = await self.persister.read(key, -1)
            if answer.error:
                continue
            if answer.state is None:
                stale = key in self.known
            else:
                stale = answer.state.state_epoch != self.state_epochs.get(key, 0)
            if stale and self.share.partitions.get(key) is sp:
                log.info("share-partition %s: reset at its share coordinator; reading it", key)
                self.drop(key)

    # -- reading ------------------------------------------------------------------------

    async def load(
        self, group_id: str, tps: Iterable[tuple[uuid.UUID, int]]
    ) -> dict[tuple[uuid.UUID, int], tuple[int, str]]:
        """Read the share-partitions of ``tps`` led here that are not ready; the ones
        that could not be read, with the error to answer."""
        waits: dict[tuple[uuid.UUID, int], asyncio.Future[tuple[int, str | None]]] = {}
        for tid, index in dict.fromkeys(tps):
            key = (group_id, tid, index)
            if self.ready(key):
                continue
            p, code, _m = self.share._resolve(tid, index)
            if p is None:
                continue  # answered by the caller's own resolution
            fut = self._loading.get(key)
            if fut is None:
                fut = self._loading[key] = asyncio.get_running_loop().create_future()
                task = asyncio.get_running_loop().create_task(self._read(key, p, fut))
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            waits[(tid, index)] = fut
        failed = {}
        for tp, fut in waits.items():
            code, message = await asyncio.shield(fut)
            if code:
                failed[tp] = (code, message or "the share-partition state cannot be read")
        return failed

    async def _read(
        self, key: PartKey, p: Partition, fut: asyncio.Future[tuple[int, str | None]]
    ) -> None:
        epoch = p.leader_epoch
        try:
            answer = await self.persister.read(key, epoch)
            if answer.error:
                code = answer.error
                if code in _FENCED:  # a newer leader read it: this one is stale
                    code = int(_E.NOT_LEADER_OR_FOLLOWER)
                elif code != _E.NOT_LEADER_OR_FOLLOWER:
                    code = int(_E.COORDINATOR_NOT_AVAILABLE)
                log.info("share-partition %s: state not read: %s", key, answer.message or code)
                fut.set_result((code, answer.message))
                return
            if not p.is_leader or p.leader_epoch != epoch:
                fut.set_result((int(_E.NOT_LEADER_OR_FOLLOWER), "leadership moved"))
                return
            if not self.ready(key):
                if answer.state is None:
                    self.fresh.add(key)
                    self.state_epochs[key] = 0
                else:
                    self.share._snapshots[key] = answer.state
                    self.state_epochs[key] = answer.state.state_epoch
                    self.known.add(key)
            fut.set_result((0, None))
        except Exception as exc:  # a bug or a cancelled stop: never leave waiters hanging
            if not fut.done():
                fut.set_result((int(_E.UNKNOWN_SERVER_ERROR), str(exc)))
            raise
        finally:
            if self._loading.get(key) is fut:
                del self._loading[key]

    def delete_soon(self, keys: Iterable[PartKey]) -> None:
        """Delete the states of ``keys`` at their share coordinators (a deleted group)."""
        doomed = list(keys)
        for key in doomed:
            self.drop(key)

        async def go() -> int:
            for key in doomed:
                code, message = await self.persister.delete(key)
                if code:
                    log.warning("share-partition %s: state not deleted: %s", key, message or code)
            return 0

        task = asyncio.get_running_loop().create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- writing ------------------------------------------------------------------------

    async def write(self, keys: Iterable[PartKey]) -> int:
        """Write the changed share-partitions of ``keys``; 0 or the first error."""
        codes = await asyncio.gather(*(self._write_one(k) for k in dict.fromkeys(keys)))
        return next((c for c in codes if c), 0)

    def write_soon(self, keys: Iterable[PartKey]) -> None:
        wanted = [k for k in keys if (sp := self.share.partitions.get(k)) is not None and sp.dirty]
        if not wanted:
            return
        task = asyncio.get_running_loop().create_task(self.write(wanted))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_one(self, key: PartKey) -> int:
        lock = self._write_locks.setdefault(key, asyncio.Lock())
        async with lock:
            sp = self.share.partitions.get(key)
            if sp is None or not sp.dirty:
                return 0
            info = self.share.broker.metadata.by_id.get(key[1])
            p = None if info is None else self.share.broker.partitions.get(info.name, key[2])
            if p is None or not p.is_leader:
                return int(_E.NOT_LEADER_OR_FOLLOWER)
            start, batches = sp.snapshot()
            snap = Snapshot(0, self.state_epochs.get(key, 0), start, tuple(batches))
            code, message = await self.persister.write(key, snap, p.leader_epoch)
            if code in _FENCED:
                log.info("share-partition %s: %s; reading it again", key, message or code)
                if self.share.partitions.get(key) is sp:
                    self.drop(key)
                return int(_E.NOT_LEADER_OR_FOLLOWER)
            if code:
                log.warning("share-partition %s: state not written: %s", key, message or code)
                sp.dirty = True  # the next write carries it
            elif self.share.partitions.get(key) is sp:
                self.known.add(key)
            return code
