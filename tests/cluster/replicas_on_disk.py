"""Reading every replica of a partition straight from the brokers' data directories.

Fault tests stop the brokers and then read each replica's log from disk, byte for byte,
so the checker compares what each broker really holds, not what a leader chooses to
serve.
"""

from __future__ import annotations

from pathlib import Path

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.protocol.records import decode_batch, iter_batches

from .checker import ReplicaRead


def read_replica(data_dir: Path, topic: str, partition: int) -> tuple[ReplicaRead, list[bytes]]:
    """The data records (offset, value) of one replica, and its raw batches.

    Control batches (transaction markers) are skipped for the records but kept in the
    raw batches, so byte equality covers them too.
    """
    directory = data_dir / f"{topic}-{partition}"
    if not directory.exists():
        return ReplicaRead(records=[], high_watermark=0), []
    plog = PartitionLog.open(str(directory), LogConfig(), topic=topic, partition=partition)
    try:
        records: list[tuple[int, bytes]] = []
        raw: list[bytes] = []
        offset = plog.log_start_offset
        end = plog.log_end_offset
        while offset < end:
            data = plog.read(offset, 1 << 20, upper_bound=end)
            if not data:
                break
            view = memoryview(data)
            moved = False
            for pos, header in iter_batches(view, allow_partial=True):
                if header.next_offset <= offset:
                    continue
                batch = bytes(view[pos : pos + header.size])
                # the partition leader epoch is part of the bytes; so is everything else
                raw.append(batch)
                offset = header.next_offset
                moved = True
                if header.is_control:
                    continue
                _h, recs = decode_batch(batch)
                for rec in recs:
                    records.append((header.base_offset + rec.offset_delta, bytes(rec.value or b"")))
            if not moved:
                break
        read = ReplicaRead(
            records=records, high_watermark=end, log_start_offset=plog.log_start_offset
        )
        return read, raw
    finally:
        plog.close()
