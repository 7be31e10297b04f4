"""One transactional id's state, and the transitions Kafka's transaction protocol allows.

``TxnMetadata`` is immutable: a change builds the next value with :meth:`TxnMetadata.to`
(which refuses a transition the protocol does not allow), the coordinator writes it to
``__transaction_state``, and only once the write succeeded does it replace the current
value. A failed write therefore leaves the coordinator's memory exactly as the log has it.

Transitions (``next <- allowed previous``)::

    Empty          <- Empty, CompleteCommit, CompleteAbort        (InitProducerId)
    Ongoing        <- Ongoing, Empty, CompleteCommit, CompleteAbort (AddPartitions/Offsets)
    PrepareCommit  <- Ongoing                                      (EndTxn commit)
    PrepareAbort   <- Ongoing, PrepareEpochFence                   (EndTxn abort, fencing,
                                                                    timeout)
    CompleteCommit <- PrepareCommit                                (markers written)
    CompleteAbort  <- PrepareAbort                                 (markers written)
    Dead           <- Empty, CompleteCommit, CompleteAbort         (id expired)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .state_log import TxnLogValue, TxnState

__all__ = ["MAX_EPOCH", "IllegalTxnTransitionError", "TxnMetadata"]

#: Kafka bumps to a new producer id once the epoch reaches Short.MAX_VALUE - 1.
MAX_EPOCH = 32767

_VALID_PREVIOUS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.EMPTY: frozenset({TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT}),
    TxnState.ONGOING: frozenset(
        {TxnState.ONGOING, TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT}
    ),
    TxnState.PREPARE_COMMIT: frozenset({TxnState.ONGOING}),
    TxnState.PREPARE_ABORT: frozenset({TxnState.ONGOING, TxnState.PREPARE_EPOCH_FENCE}),
    TxnState.COMPLETE_COMMIT: frozenset({TxnState.PREPARE_COMMIT}),
    TxnState.COMPLETE_ABORT: frozenset({TxnState.PREPARE_ABORT}),
    TxnState.DEAD: frozenset({TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT}),
    TxnState.PREPARE_EPOCH_FENCE: frozenset({TxnState.ONGOING}),
}


class IllegalTxnTransitionError(Exception):
    """A state change the transaction protocol does not allow (a coordinator bug)."""


TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TxnMetadata:
    """The state of one transactional id."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState
    partitions: frozenset[TopicPartition] = frozenset()
    start_ms: int = -1
    last_update_ms: int = -1
    # the producer id before an epoch-exhaustion rollover, and the epoch before the last
    # bump by a producer recovering its own id (-1 after a new producer's InitProducerId
    # or a fence, as in Kafka): a retried InitProducerId carrying them is answered, not
    # fenced. Both are stored in __transaction_state, so this holds across restarts.
    last_producer_id: int = -1
    last_producer_epoch: int = -1
    # transactions v2 (KIP-890): the id a prepared transaction rolls over to when its
    # end exhausted the epoch, and 2 once the producer ends its transactions with the v2
    # protocol (each end bumps the epoch, so a produce with the current epoch after an end
    # can only come from the live producer and may add its partition implicitly)
    next_producer_id: int = -1
    client_txn_version: int = 0

    @property
    def is_v2(self) -> bool:
        return self.client_txn_version >= 2

    @property
    def epoch_exhausted(self) -> bool:
        return self.producer_epoch >= MAX_EPOCH - 1

    @property
    def in_prepare(self) -> bool:
        return self.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def completed(self) -> bool:
        return self.state in (TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)

    def to(self, state: TxnState, **changes: object) -> TxnMetadata:
        """The next value of this transactional id, in ``state``."""
        if self.state not in _VALID_PREVIOUS[state]:
            raise IllegalTxnTransitionError(
                f"transactional id {self.transactional_id!r}: cannot go from "
                f"{self.state.display_name} to {state.display_name}"
            )
        return dataclasses.replace(self, state=state, **changes)  # type: ignore[arg-type]

    def to_log_value(self) -> TxnLogValue:
        parts: dict[str, list[int]] = {}
        for topic, index in sorted(self.partitions):
            parts.setdefault(topic, []).append(index)
        return TxnLogValue(
            producer_id=self.producer_id,
            producer_epoch=self.producer_epoch,
            timeout_ms=self.timeout_ms,
            state=self.state,
            partitions={t: tuple(ids) for t, ids in parts.items()},
            last_update_ms=self.last_update_ms,
            start_ms=self.start_ms,
            last_producer_id=self.last_producer_id,
            last_producer_epoch=self.last_producer_epoch,
            next_producer_id=self.next_producer_id,
            client_txn_version=self.client_txn_version,
        )

    @classmethod
    def from_log_value(cls, transactional_id: str, value: TxnLogValue) -> TxnMetadata:
        return cls(
            transactional_id=transactional_id,
            producer_id=value.producer_id,
            producer_epoch=value.producer_epoch,
            timeout_ms=value.timeout_ms,
            state=value.state,
            partitions=frozenset((t, i) for t, ids in value.partitions.items() for i in ids),
            start_ms=value.start_ms,
            last_update_ms=value.last_update_ms,
            last_producer_id=value.last_producer_id,
            last_producer_epoch=value.last_producer_epoch,
            next_producer_id=value.next_producer_id,
            client_txn_version=value.client_txn_version,
        )
