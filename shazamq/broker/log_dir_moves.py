"""Moving a partition to another log dir of this broker (AlterReplicaLogDirs).

One task per moving partition copies its log into a future log in the target dir while
the partition keeps serving (copy rounds in an executor thread), then, once a round finds
little left, switches over on a writer thread in turn with the partition's appends (so
none falls between; log/writer.py) and completes the swap off the loop; see the log
manager for the steps on disk and what a restart finds at each point. A move asked to
another dir replaces the running one; a partition deleted or moved away from this broker
mid-move drops its copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from shazamq.broker.log.errors import LogError
from shazamq.broker.log.writer import in_turn
from shazamq.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from shazamq.broker.log import PartitionLog
    from shazamq.broker.partitions import Partition, PartitionManager

log = logging.getLogger(__name__)

# bytes per copy round in the executor; a round that copies less has caught up
COPY_CHUNK = 8 << 20


class LogDirMover:
    """The partition moves in progress on this broker."""

    def __init__(self, partitions: PartitionManager) -> None:
        self.partitions = partitions
        self.logs = partitions.logs
        self._moves: dict[tuple[str, int], tuple[str, asyncio.Task[None]]] = {}

    def target_of(self, topic: str, index: int) -> str | None:
        """The log dir a partition is moving to, if it is."""
        found = self._moves.get((topic, index))
        return found[0] if found is not None else None

    def request(self, topic: str, index: int, path: str) -> int:
        """Start moving a hosted partition to the log dir ``path``; the error code of the
        request (0: moving, or there already)."""
        target = os.path.normpath(os.path.abspath(path)) if path else ""
        if target not in self.logs.dirs:
            return int(ErrorCode.LOG_DIR_NOT_FOUND)
        if target in self.logs.offline_dirs:
            return int(ErrorCode.KAFKA_STORAGE_ERROR)
        key = (topic, index)
        p = self.partitions.get(topic, index)
        if p is None:
            if key in self.partitions.offline:
                return int(ErrorCode.KAFKA_STORAGE_ERROR)
            if self.partitions.metadata.get(topic) is None:
                return int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            return int(ErrorCode.REPLICA_NOT_AVAILABLE)
        running = self._moves.get(key)
        previous = None
        if running is not None:
            if running[0] == target:
                return 0
            previous = running[1]
            previous.cancel()  # Kafka: a new destination replaces the move under way
        elif self.logs.dir_of(p.log) == target:
            return 0
        task = asyncio.get_running_loop().create_task(
            self._run(topic, index, target, previous), name=f"move {topic}-{index}"
        )
        self._moves[key] = (target, task)
        task.add_done_callback(lambda t, key=key: self._forget(key, t))
        return 0

    def _forget(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        running = self._moves.get(key)
        if running is not None and running[1] is task:
            del self._moves[key]

    async def _run(
        self, topic: str, index: int, target: str, previous: asyncio.Task[None] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        logs = self.logs
        if previous is not None:  # the move this one replaces drops its copy first
            await asyncio.gather(previous, return_exceptions=True)
        p = self.partitions.get(topic, index)
        if p is None or logs.dir_of(p.log) == target:
            return
        source = p.log
        started = True  # from here the copy, once made, is dropped unless it took over
        try:
            begin = loop.run_in_executor(None, logs.begin_move, topic, index, target)
            try:
                future = await asyncio.shield(begin)
            except asyncio.CancelledError:
                # the copy is being created in its thread: let it be, so it is dropped
                await asyncio.gather(begin, return_exceptions=True)
                raise
            log.info("moving %s-%d from %s to %s", topic, index, logs.dir_of(source), target)
            while True:  # copy while it serves, until a round finds little left
                if self.partitions.get(topic, index) is not p or p.log is not source:
                    return
                copied = await loop.run_in_executor(
                    None, logs.copy_to_future, source, future, COPY_CHUNK
                )
                if copied < COPY_CHUNK:
                    break
            await loop.run_in_executor(None, future.flush)
            await loop.run_in_executor(None, logs.copy_to_future, source, future, COPY_CHUNK)
            if self.partitions.get(topic, index) is not p or p.log is not source:
                return
            # from here the switch and the swap complete even if the move is cancelled
            # (a cancelled move waits for them; its copy is then the partition's log)
            switching = asyncio.ensure_future(self._switch(p, source, topic, index))
            try:
                await asyncio.shield(switching)
            except asyncio.CancelledError:
                await asyncio.gather(switching, return_exceptions=True)
                raise
            started = False
            log.info("moved %s-%d to %s", topic, index, target)
        except asyncio.CancelledError:
            raise
        except (LogError, OSError) as exc:
            log.error("moving %s-%d to %s failed: %s", topic, index, target, exc)
            self._offline_if_broken(topic, index, str(exc))
        except Exception:
            log.exception("moving %s-%d to %s failed", topic, index, target)
            self._offline_if_broken(topic, index, "the move to another log dir failed")
        finally:
            if started:
                await asyncio.shield(loop.run_in_executor(None, logs.abort_move, topic, index))

    async def _switch(self, p: Partition, source: PartitionLog, topic: str, index: int) -> None:
        """Make the copy the partition's log, then complete the swap on disk.

        The switch (the last copy, then the old log forwarding to the new) runs on a
        writer thread in turn with the partition's appends: those queued before it are
        copied, those queued after it are forwarded in order. The partition names the new
        log only once nothing is queued for the old one, so no append to the new log can
        overtake one still forwarded."""
        logs = self.logs
        writer = self.partitions.writer
        old, new = await in_turn(
            writer, source, lambda: logs.switch_to_future(topic, index, source)
        )
        if writer is not None:
            await writer.settled(source)
        if p.log is source:
            p.log = new
        await self._complete(topic, index, old, new)

    async def _complete(self, topic: str, index: int, old: PartitionLog, new: PartitionLog) -> None:
        """Rename the old folder away, then give the new log its plain name."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.logs.retire, old)
        final = await loop.run_in_executor(None, self.logs.finish_move, topic, index)
        writer = self.partitions.writer
        if final is not None and writer is not None:
            # appends queued for the renamed log are forwarded to the reopened one; the
            # partition names it once none is left (as in _switch)
            await writer.settled(new)
        p = self.partitions.get(topic, index)
        if final is not None and p is not None and p.log is new:
            p.log = final

    def _offline_if_broken(self, topic: str, index: int, reason: str) -> None:
        """A swap that failed half-way leaves a closed log with no successor: the
        partition goes offline (KAFKA_STORAGE_ERROR) until a restart settles the move."""
        p = self.partitions.get(topic, index)
        if p is not None and p.log.closed and p.log.successor is None:
            self.partitions.take_offline(p.log, reason)

    async def stop(self) -> None:
        """Cancel the moves under way (their copies are dropped; a restart would too)."""
        tasks = [task for _t, task in self._moves.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
