"""The segment log: how the broker stores partitions on disk, laid out like Kafka's.

``data_dir/<topic>-<partition>/`` holds:

* ``<base offset, 20 digits>.log``: record batches exactly as produced (offsets patched).
* ``.index``: sparse relative offset -> file position (8-byte entries, big-endian).
* ``.timeindex``: sparse timestamp -> relative offset (12-byte entries).
* ``.txnindex``: aborted transactions whose ABORT marker lies in the segment.
* ``<offset>.snapshot``: producer (idempotence/transaction) state before that offset.
* ``recovery-point-offset-checkpoint``, ``log-start-offset-checkpoint``,
  ``leader-epoch-checkpoint``, ``cleaner-offset-checkpoint``, ``partition.metadata``.
* ``clean-shutdown``: present only between a clean close and the next change.

Segments being replaced carry ``.cleaned``/``.swap``/``.deleted`` suffixes, so every
replacement on disk is atomic and a crash at any point leaves a loadable log.

Layers, bottom up: :mod:`.index` (sparse indexes), :mod:`.segment` (one segment),
:mod:`.producer_state`, :mod:`.partition_log` (one partition), :mod:`.cleaner`
(compaction), :mod:`.manager` (the data directory). The code is synchronous: appends and
reads are fast calls made on the event loop; fsync and maintenance are meant for an
executor thread, with per-partition locks described in :mod:`.partition_log`.
"""

from .cleaner import CleanerStats, LogCleaner
from .errors import (
    DuplicateSequenceError,
    InconsistentTopicIdError,
    InvalidConfigError,
    InvalidProducerEpochError,
    InvalidTimestampError,
    InvalidTxnStateError,
    KafkaStorageError,
    LogError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    TransactionCoordinatorFencedError,
    UnexpectedAppendOffsetError,
)
from .index import AbortedTxn, OffsetIndex, TimeIndex, TransactionIndex
from .log_config import CONFIG_DEFS, ConfigDef, LogConfig
from .manager import LogManager, MaintenanceReport, count_partition_dirs
from .partition_log import AppendInfo, AppendOrigin, LeaderEpochCache, PartitionLog
from .producer_state import ActiveProducer, ProducerStateManager
from .segment import LogSegment, ReadSlice

__all__ = [
    "CONFIG_DEFS",
    "AbortedTxn",
    "ActiveProducer",
    "AppendInfo",
    "AppendOrigin",
    "CleanerStats",
    "ConfigDef",
    "DuplicateSequenceError",
    "InconsistentTopicIdError",
    "InvalidConfigError",
    "InvalidProducerEpochError",
    "InvalidTimestampError",
    "InvalidTxnStateError",
    "KafkaStorageError",
    "LeaderEpochCache",
    "LogCleaner",
    "LogConfig",
    "LogError",
    "LogManager",
    "LogSegment",
    "MaintenanceReport",
    "OffsetIndex",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionLog",
    "ProducerStateManager",
    "ReadSlice",
    "TimeIndex",
    "TransactionCoordinatorFencedError",
    "TransactionIndex",
    "UnexpectedAppendOffsetError",
    "count_partition_dirs",
]
