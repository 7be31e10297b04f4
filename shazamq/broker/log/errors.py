"""Typed failures of the log, each carrying the Kafka error code the broker answers with.

The record-format checks raise :class:`shazamq.protocol.records.RecordError` subclasses;
everything the log itself decides (offsets, producer state, configuration, the disk)
raises a :class:`LogError`. Both expose ``error_code`` and ``message``, so an API handler
can map either to its response with one ``except`` clause.
"""

from __future__ import annotations

__all__ = [
    "DuplicateSequenceError",
    "InconsistentTopicIdError",
    "InvalidConfigError",
    "InvalidProducerEpochError",
    "InvalidTimestampError",
    "InvalidTxnStateError",
    "KafkaStorageError",
    "LogError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "TransactionCoordinatorFencedError",
    "UnexpectedAppendOffsetError",
]


class LogError(Exception):
    """A refusal by the log; ``error_code`` is the Kafka error code."""

    error_code: int = -1  # UNKNOWN_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OffsetOutOfRangeError(LogError):
    """OFFSET_OUT_OF_RANGE (1): below the log start offset or beyond the log end."""

    error_code = 1


class InvalidTimestampError(LogError):
    """INVALID_TIMESTAMP (32): a CreateTime batch outside the allowed time window."""

    error_code = 32


class InvalidConfigError(LogError):
    """INVALID_CONFIG (40): ``key`` names the offending setting."""

    error_code = 40

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"invalid value for {key}: {problem}")
        self.key = key
        self.problem = problem


class OutOfOrderSequenceError(LogError):
    """OUT_OF_ORDER_SEQUENCE_NUMBER (45): a gap in an idempotent producer's sequence."""

    error_code = 45


class DuplicateSequenceError(LogError):
    """DUPLICATE_SEQUENCE_NUMBER (46): a retried batch mixed with new ones in one payload."""

    error_code = 46


class NotLeaderError(LogError):
    """NOT_LEADER_OR_FOLLOWER (6): a client's (or a coordinator's) append queued while
    this broker led the partition, refused by the writer because the leadership (or its
    epoch) changed before the append's turn came. Coordinators answer it NOT_COORDINATOR."""

    error_code = 6


class InvalidProducerEpochError(LogError):
    """INVALID_PRODUCER_EPOCH (47): a batch from an older epoch of the producer id."""

    error_code = 47


class InvalidTxnStateError(LogError):
    """INVALID_TXN_STATE (48): a non-transactional write inside an open transaction."""

    error_code = 48


class TransactionCoordinatorFencedError(LogError):
    """TRANSACTION_COORDINATOR_FENCED (52): a marker from an older coordinator epoch."""

    error_code = 52


class KafkaStorageError(LogError):
    """KAFKA_STORAGE_ERROR (56): the disk failed under the log, or the log is closed."""

    error_code = 56


class InconsistentTopicIdError(LogError):
    """INCONSISTENT_TOPIC_ID (103): the partition directory belongs to another topic id."""

    error_code = 103


class UnexpectedAppendOffsetError(LogError):
    """A replicated batch whose offset is below the log end (UNKNOWN_SERVER_ERROR, -1)."""

    error_code = -1
