"""Which partitions of an internal topic a coordinator owns in a cluster.

Both coordinators (groups over ``__consumer_offsets``, transactions over
``__transaction_state``) follow Kafka: a key belongs to the broker leading its partition.
A partition becoming led here is read in an executor (its keys answer
COORDINATOR_LOAD_IN_PROGRESS meanwhile) and installed; one that stops being led here is
dropped (its keys answer NOT_COORDINATOR). :class:`OwnedPartitions` holds that life cycle;
each coordinator supplies what a load reads and installs and what an unload tears down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, ValuesView
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from shazamq.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.partitions import Partition

__all__ = ["OwnedPartitions", "Ownership"]

_E = ErrorCode


@dataclass(eq=False, slots=True)
class Ownership:
    """One partition led here.

    The object's identity is the ownership: a write that waited for replication checks
    that the partition's entry is still the same object before changing memory, so a
    lost-and-regained leadership in between is noticed.
    """

    loaded: bool = False
    task: asyncio.Task[None] | None = None


D = TypeVar("D")
O = TypeVar("O", bound=Ownership)  # noqa: E741


class OwnedPartitions(Generic[D, O]):
    """The partitions of ``topic`` led here, by index, and their loading.

    ``read`` runs in an executor and returns what ``install`` puts into the coordinator's
    memory; ``install`` runs before the partition counts as loaded (if it fails, the keys
    stay loading rather than served half-installed), ``then`` right after, still in the
    load's task but no longer cancelled by an unload. ``unload`` drops what the partition
    brought once it stops being led here.
    """

    def __init__(
        self,
        topic: str,
        partition_for: Callable[[str], int],
        *,
        new: Callable[[], O],
        read: Callable[[int], D],
        install: Callable[[int, D], None],
        then: Callable[[int, O, D, float], Awaitable[None]],
        unload: Callable[[int], None],
        log: logging.Logger,
    ) -> None:
        self.topic = topic
        self._partition_for = partition_for
        self._new = new
        self._read = read
        self._install = install
        self._then = then
        self._unload = unload
        # the coordinator's logger, so its records keep their origin
        self._log = log
        self._owned: dict[int, O] = {}

    # -- queries ----------------------------------------------------------------------

    def get(self, index: int) -> O | None:
        return self._owned.get(index)

    def of(self, key: str) -> O | None:
        return self._owned.get(self._partition_for(key))

    def values(self) -> ValuesView[O]:
        return self._owned.values()

    @property
    def loading(self) -> bool:
        return any(not own.loaded for own in self._owned.values())

    def key_error(self, key: str, started: bool) -> int:
        """0 if ``key`` is served here now; else COORDINATOR_LOAD_IN_PROGRESS or
        NOT_COORDINATOR (Kafka's check before every request for a key). ``started``: the
        coordinator itself runs; before, and after its stop, nothing is served."""
        own = self.of(key)
        if own is None or not started:
            return int(_E.NOT_COORDINATOR)
        return 0 if own.loaded else int(_E.COORDINATOR_LOAD_IN_PROGRESS)

    # -- leadership -------------------------------------------------------------------

    def attach(self, cluster: ClusterNode, partitions: Iterable[Partition]) -> None:
        """Follow leadership changes from now on, and take the partitions already led
        here (leadership that arrived before the coordinator started)."""
        cluster.on_partition_role.append(self.on_partition_role)
        for p in partitions:
            if p.topic == self.topic and p.replica is not None and p.replica.is_leader:
                self.on_partition_role(p, True)

    def detach(self, cluster: ClusterNode | None) -> None:
        """Stop following leadership and cancel the loads still reading."""
        if cluster is not None and self.on_partition_role in cluster.on_partition_role:
            cluster.on_partition_role.remove(self.on_partition_role)
        for own in self._owned.values():
            if own.task is not None:
                own.task.cancel()

    def on_partition_role(self, p: Partition, leader: bool) -> None:
        if p.topic != self.topic:
            return
        if leader:
            if p.index not in self._owned:
                own = self._owned[p.index] = self._new()
                own.task = asyncio.get_running_loop().create_task(
                    self._load(p.index, own), name=f"load {self.topic}-{p.index}"
                )
        else:
            self._drop(p.index)

    async def _load(self, index: int, own: O) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, self._read, index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # stays unowned: the next leadership change of the partition tries again
            self._log.error("%s-%d: cannot load: %s", self.topic, index, exc)
            if self._owned.get(index) is own:
                del self._owned[index]
            return
        if self._owned.get(index) is not own:
            return  # leadership moved on while the partition was read
        self._install(index, data)
        own.loaded = True
        own.task = None
        await self._then(index, own, data, started)

    def _drop(self, index: int) -> None:
        own = self._owned.pop(index, None)
        if own is None:
            return
        if own.task is not None:
            own.task.cancel()
        self._unload(index)
