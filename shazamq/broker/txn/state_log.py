"""The record format of ``__transaction_state`` and the transaction states it stores.

The transaction coordinator keeps one record per transactional id in this compacted
topic, rewritten at every state change, so that a restarted broker knows each
transaction's producer id, epoch, timeout, state and partitions, and can finish what the
crash interrupted. The format is Kafka's (big-endian, strings int16-length-prefixed):

Key: ``version i16 (0), transactional_id string``.

Value: ``version i16, producer_id i64, producer_epoch i16, transaction_timeout_ms i32,
status i8, partitions nullable [topic string, partition_ids [i32]],
last_update_timestamp_ms i64, start_timestamp_ms i64``. Version 1 is the same in the
flexible encoding (compact strings and arrays) with top-level tagged fields: Kafka's tag 0
PreviousProducerId (i64, the producer id before an epoch-exhaustion rollover), tag 1
NextProducerId (i64, the id a transactions-v2 end rolls over to when the epoch runs out)
and tag 2 ClientTransactionVersion (i16, 2 once the producer ended a transaction with the
v2 protocol, which bumps the epoch), and this broker's own tag
:data:`LAST_PRODUCER_EPOCH_TAG` (i16, the epoch before the last InitProducerId bump, so a
retried InitProducerId is still recognised after a restart; Kafka keeps it in memory
only, and its readers skip a tag they do not know). A value with none of these is
written as v0, byte for byte what Kafka writes; one with any is written as v1.

Status bytes: 0 Empty, 1 Ongoing, 2 PrepareCommit, 3 PrepareAbort, 4 CompleteCommit,
5 CompleteAbort, 6 Dead, 7 PrepareEpochFence (never written). A null value is a
tombstone: the transactional id expired. Malformed bytes raise :class:`TxnRecordError`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shazamq.protocol import primitives as p
from shazamq.protocol.errors import DecodeError

__all__ = [
    "LAST_PRODUCER_EPOCH_TAG",
    "TxnLogValue",
    "TxnRecordError",
    "TxnState",
    "decode_txn_key",
    "decode_txn_value",
    "encode_txn_key",
    "encode_txn_value",
]

KEY_VERSION = 0
VALUE_VERSION = 0
FLEXIBLE_VALUE_VERSION = 1

PREVIOUS_PRODUCER_ID_TAG = 0
NEXT_PRODUCER_ID_TAG = 1
CLIENT_TXN_VERSION_TAG = 2
#: A tag far above Kafka's (0-2), for the producer epoch before the last bump.
LAST_PRODUCER_EPOCH_TAG = 10_000

_I64 = struct.Struct(">q")
_I16 = struct.Struct(">h")


class TxnRecordError(DecodeError):
    """A ``__transaction_state`` record whose bytes do not form a known key or value."""


class TxnState(enum.IntEnum):
    """Kafka's transaction states, with the byte each is stored as."""

    EMPTY = 0
    ONGOING = 1
    PREPARE_COMMIT = 2
    PREPARE_ABORT = 3
    COMPLETE_COMMIT = 4
    COMPLETE_ABORT = 5
    DEAD = 6
    PREPARE_EPOCH_FENCE = 7

    @property
    def display_name(self) -> str:
        """The name Kafka's tools show (DescribeTransactions, ListTransactions)."""
        return _DISPLAY[self]

    @classmethod
    def from_display_name(cls, name: str) -> TxnState | None:
        return _BY_DISPLAY.get(name)


_DISPLAY = {
    TxnState.EMPTY: "Empty",
    TxnState.ONGOING: "Ongoing",
    TxnState.PREPARE_COMMIT: "PrepareCommit",
    TxnState.PREPARE_ABORT: "PrepareAbort",
    TxnState.COMPLETE_COMMIT: "CompleteCommit",
    TxnState.COMPLETE_ABORT: "CompleteAbort",
    TxnState.DEAD: "Dead",
    TxnState.PREPARE_EPOCH_FENCE: "PrepareEpochFence",
}
_BY_DISPLAY = {v: k for k, v in _DISPLAY.items()}


@dataclass(frozen=True, slots=True)
class TxnLogValue:
    """One transactional id's state as stored."""

    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState
    partitions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    last_update_ms: int = -1
    start_ms: int = -1
    last_producer_id: int = -1
    last_producer_epoch: int = -1
    next_producer_id: int = -1
    client_txn_version: int = 0


Reader = Callable[[Any, int], tuple[Any, int]]


def _guard(what: str, fn: Callable[[memoryview], Any], data: bytes | memoryview) -> Any:
    view = data if isinstance(data, memoryview) else memoryview(data)
    try:
        return fn(view)
    except TxnRecordError:
        raise
    except (DecodeError, struct.error, IndexError) as exc:
        raise TxnRecordError(f"malformed {what}: {exc}") from None


def _end(what: str, buf: memoryview, o: int) -> None:
    if o != len(buf):
        raise TxnRecordError(f"{len(buf) - o} unexpected trailing bytes after the {what}")


def encode_txn_key(transactional_id: str) -> bytes:
    out = bytearray()
    p.write_int16(out, KEY_VERSION)
    p.write_string(out, transactional_id)
    return bytes(out)


def decode_txn_key(data: bytes | memoryview) -> str:
    """The transactional id of a ``__transaction_state`` key."""

    def run(buf: memoryview) -> str:
        version, o = p.read_int16(buf, 0)
        if version != KEY_VERSION:
            raise TxnRecordError(f"unknown transaction log key version {version}")
        txn_id, o = p.read_string(buf, o)
        _end("transaction log key", buf, o)
        return str(txn_id)

    return _guard("transaction log key", run, data)


def encode_txn_value(value: TxnLogValue) -> bytes:
    """v0, or v1 when there is a previous producer id or a last epoch to keep."""
    tags: list[tuple[int, bytes]] = []
    if value.last_producer_id >= 0:
        tags.append((PREVIOUS_PRODUCER_ID_TAG, _I64.pack(value.last_producer_id)))
    if value.next_producer_id >= 0:
        tags.append((NEXT_PRODUCER_ID_TAG, _I64.pack(value.next_producer_id)))
    if value.client_txn_version > 0:
        tags.append((CLIENT_TXN_VERSION_TAG, _I16.pack(value.client_txn_version)))
    if value.last_producer_epoch >= 0:
        tags.append((LAST_PRODUCER_EPOCH_TAG, _I16.pack(value.last_producer_epoch)))
    flexible = bool(tags)
    out = bytearray()
    p.write_int16(out, FLEXIBLE_VALUE_VERSION if flexible else VALUE_VERSION)
    p.write_int64(out, value.producer_id)
    p.write_int16(out, value.producer_epoch)
    p.write_int32(out, value.timeout_ms)
    p.write_int8(out, int(value.state))
    parts = value.partitions
    if flexible:
        p.write_uvarint(out, len(parts) + 1 if parts else 0)  # compact nullable array
        for topic in sorted(parts):
            p.write_compact_string(out, topic)
            ids = parts[topic]
            p.write_compact_array_length(out, len(ids))
            for i in ids:
                p.write_int32(out, i)
            p.write_uvarint(out, 0)  # no tagged fields in a partition entry
    elif not parts:
        p.write_int32(out, -1)
    else:
        p.write_int32(out, len(parts))
        for topic in sorted(parts):
            p.write_string(out, topic)
            ids = parts[topic]
            p.write_int32(out, len(ids))
            for i in ids:
                p.write_int32(out, i)
    p.write_int64(out, value.last_update_ms)
    p.write_int64(out, value.start_ms)
    if flexible:
        p.write_tagged_fields(out, tags)
    return bytes(out)


_TAG_READERS: dict[int, tuple[str, Reader]] = {
    PREVIOUS_PRODUCER_ID_TAG: ("last_producer_id", p.read_int64),
    NEXT_PRODUCER_ID_TAG: ("next_producer_id", p.read_int64),
    CLIENT_TXN_VERSION_TAG: ("client_txn_version", p.read_int16),
    LAST_PRODUCER_EPOCH_TAG: ("last_producer_epoch", p.read_int16),
}


def _read_value_tags(buf: memoryview, o: int) -> tuple[dict[str, int], int]:
    """The top-level tagged fields of a v1 value this broker knows, and the offset after."""
    found: dict[str, int] = {}
    n, o = p.read_uvarint(buf, o)
    tag = -1
    for _ in range(n):
        tag, start, end = p.read_tag_header(buf, o, tag)
        known = _TAG_READERS.get(tag)
        if known is not None:
            name, read = known
            found[name], at = read(buf, start)
            p.check_tag_end(at, end, tag)
        o = end
    return found, o


def decode_txn_value(data: bytes | memoryview) -> TxnLogValue:
    """Decode a transaction log value of version 0 or 1."""

    def run(buf: memoryview) -> TxnLogValue:
        version, o = p.read_int16(buf, 0)
        if version not in (0, 1):
            raise TxnRecordError(f"unknown transaction log value version {version}")
        flexible = version == 1
        read_str: Reader = p.read_compact_string if flexible else p.read_string
        read_len: Reader = (
            p.read_compact_nullable_array_length if flexible else p.read_nullable_array_length
        )
        read_count: Reader = p.read_compact_array_length if flexible else p.read_array_length
        producer_id, o = p.read_int64(buf, o)
        epoch, o = p.read_int16(buf, o)
        timeout, o = p.read_int32(buf, o)
        status, o = p.read_int8(buf, o)
        try:
            state = TxnState(status)
        except ValueError:
            raise TxnRecordError(f"unknown transaction status {status}") from None
        partitions: dict[str, tuple[int, ...]] = {}
        n, o = read_len(buf, o)
        for _ in range(max(n, 0)):
            topic, o = read_str(buf, o)
            count, o = read_count(buf, o)
            ids, o = p.read_fixed_array(buf, o, count, "i", 4)
            if flexible:
                o = p.skip_tagged_fields(buf, o)
            partitions[topic] = tuple(ids)
        last_update, o = p.read_int64(buf, o)
        start, o = p.read_int64(buf, o)
        tags: dict[str, int] = {}
        if flexible:
            tags, o = _read_value_tags(buf, o)
        _end("transaction log value", buf, o)
        return TxnLogValue(
            producer_id, epoch, timeout, state, partitions, last_update, start, **tags
        )

    return _guard("transaction log value", run, data)
