"""Which partition of an internal topic owns a group or a transactional id.

Kafka places a consumer group in ``__consumer_offsets`` and a transactional id in
``__transaction_state`` by the Java ``String.hashCode`` of the id, made non-negative the
way Kafka's ``Utils.abs`` does (``Integer.MIN_VALUE`` maps to 0), modulo the partition
count. Using the same function keeps the layout of these topics identical to Kafka's,
so tools that read them, and data moved between the two, agree on where a key lives.
"""

from __future__ import annotations

__all__ = ["coordinator_partition", "java_string_hash"]

_INT32_MIN = -(2**31)


def java_string_hash(value: str) -> int:
    """Java's ``String.hashCode``: ``s[0]*31^(n-1) + ... + s[n-1]`` over UTF-16 code
    units, with 32-bit signed overflow."""
    h = 0
    data = value.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - 0x100000000 if h & 0x80000000 else h


def coordinator_partition(key: str, partitions: int) -> int:
    """The partition of an internal topic with ``partitions`` partitions that owns ``key``."""
    if partitions <= 0:
        raise ValueError(f"partition count must be positive, not {partitions}")
    h = java_string_hash(key)
    return (0 if h == _INT32_MIN else abs(h)) % partitions
