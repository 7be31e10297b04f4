"""The coordinators' internal topics: created compacted, written and replayed through the log.

``__consumer_offsets`` and ``__transaction_state`` are ordinary partitions of the segment
log, so their records get the same durability, recovery and compaction as any topic.
This module is the narrow door both coordinators use: create the topic at start (or
adopt the partition count it already has), pick a key's partition the way Kafka does,
append a batch of key/value records (optionally as a transactional batch of a producer,
for TxnOffsetCommit), and scan a partition from its start for the load at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shazamq.broker.log import AppendOrigin
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    BatchHeader,
    ControlRecord,
    Record,
    RecordError,
    build_batch,
    control_record_of,
    decode_batch,
    iter_batches,
)

from .partitioning import coordinator_partition

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition, PartitionManager

__all__ = ["InternalTopic", "ScannedBatch"]

log = logging.getLogger(__name__)

_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ScannedBatch:
    """One batch met while replaying a partition: its records, or its marker."""

    header: BatchHeader
    records: list[tuple[int, bytes | None, bytes | None]]  # (offset, key, value)
    control: ControlRecord | None


class InternalTopic:
    """One internal compacted topic of the broker."""

    def __init__(
        self,
        partitions: PartitionManager,
        name: str,
        num_partitions: int,
        configs: dict[str, str],
    ) -> None:
        self._partitions = partitions
        self.name = name
        self._wanted = num_partitions
        self._configs = configs
        self.count = num_partitions

    async def ensure(self) -> None:
        """Create the topic if it does not exist; adopt its partition count if it does."""
        info = self._partitions.metadata.get(self.name)
        if info is None:
            info = await self._partitions.create_topic(
                self.name, self._wanted, 1, dict(self._configs), internal=True
            )
        elif info.partitions != self._wanted:
            log.warning(
                "%s has %d partitions, not the configured %d: keeping %d (keys are placed "
                "by the partition count the topic was created with)",
                self.name,
                info.partitions,
                self._wanted,
                info.partitions,
            )
        self.count = info.partitions

    def partition_for(self, key: str) -> int:
        return coordinator_partition(key, self.count)

    def partition(self, index: int) -> Partition:
        p = self._partitions.get(self.name, index)
        if p is None:
            raise KafkaError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{self.name}-{index} is not hosted here"
            )
        return p

    def append(
        self,
        index: int,
        records: Sequence[tuple[bytes, bytes | None]],
        *,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        transactional: bool = False,
        now_ms: int | None = None,
    ) -> int:
        """Append ``(key, value)`` records as one batch; returns the first record's offset.

        Raises the log's ``LogError`` / ``RecordError`` (both carry ``error_code``) or
        ``KafkaError`` when the partition is missing.
        """
        p = self.partition(index)
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        # a producer's batch starts at sequence 0, as Kafka's coordinator writes it: the log
        # checks a coordinator's append for the producer epoch only, never for sequences
        sequence = 0 if producer_id >= 0 else -1
        batch = build_batch(
            [Record(offset_delta=i, key=k, value=v) for i, (k, v) in enumerate(records)],
            base_timestamp=now,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=sequence,
            transactional=transactional,
        )
        info = p.log.append(
            bytearray(batch),
            leader_epoch=p.leader_epoch,
            now_ms=now,
            origin=AppendOrigin.COORDINATOR,
        )
        p.notify()
        return info.base_offset

    def scan(self, index: int) -> Iterator[ScannedBatch]:
        """Every batch of partition ``index`` from the log start to the log end, decoded.

        Runs from an executor thread at start-up (log reads are thread-safe). A batch
        that cannot be decoded is logged and skipped, so one bad record never stops a
        coordinator from loading the rest.
        """
        p = self.partition(index)
        plog = p.log
        offset = plog.log_start_offset
        end = plog.log_end_offset
        while offset < end:
            data = plog.read(offset, _SCAN_CHUNK, upper_bound=end)
            if not data:
                break
            view = memoryview(data)
            advanced = False
            for pos, header in iter_batches(view, allow_partial=True):
                if header.next_offset <= offset:
                    continue
                advanced = True
                offset = header.next_offset
                batch = view[pos : pos + header.size]
                try:
                    if header.is_control:
                        yield ScannedBatch(header, [], control_record_of(batch))
                        continue
                    _h, records = decode_batch(batch)
                except (RecordError, ValueError) as exc:
                    log.error(
                        "%s-%d: skipping undecodable batch at offset %d: %s",
                        self.name,
                        index,
                        header.base_offset,
                        exc,
                    )
                    continue
                yield ScannedBatch(
                    header,
                    [(header.base_offset + r.offset_delta, r.key, r.value) for r in records],
                    None,
                )
            if not advanced:
                break
