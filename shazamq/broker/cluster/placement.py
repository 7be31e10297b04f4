"""Replica placement and leader choice: pure functions, no I/O, no clock.

Placement follows Kafka's rack-aware assignment in spirit: brokers are ordered by
alternating racks, each partition's replica list starts at a rotating position, and the
followers are shifted so consecutive partitions do not share the same follower pairs.
The first replica of each list is the preferred leader, so leaders spread evenly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from shazamq.protocol.errors import ErrorCode, KafkaError


def rack_alternating(brokers: Mapping[int, str | None]) -> list[int]:
    """Broker ids ordered so that neighbours sit on different racks where possible."""
    by_rack: dict[str | None, list[int]] = defaultdict(list)
    for broker_id in sorted(brokers):
        by_rack[brokers[broker_id]].append(broker_id)
    racks = sorted(by_rack, key=lambda r: (r is None, r or ""))
    out: list[int] = []
    depth = max((len(v) for v in by_rack.values()), default=0)
    for i in range(depth):
        for rack in racks:
            members = by_rack[rack]
            if i < len(members):
                out.append(members[i])
    return out


def assign_replicas(
    brokers: Mapping[int, str | None],
    partitions: int,
    replication_factor: int,
    *,
    start: int = 0,
    first_partition: int = 0,
) -> list[list[int]]:
    """Replica lists for `partitions` new partitions over the live `brokers` (id -> rack).

    `start` rotates the first leader (callers pass a random or hashed value, so topics do
    not all lead on the same broker); `first_partition` continues an existing topic.
    Raises INVALID_REPLICATION_FACTOR when there are not enough brokers.
    """
    if replication_factor < 1:
        raise KafkaError(ErrorCode.INVALID_REPLICATION_FACTOR, "replication factor must be >= 1")
    n = len(brokers)
    if replication_factor > n:
        raise KafkaError(
            ErrorCode.INVALID_REPLICATION_FACTOR,
            f"replication factor {replication_factor} is larger than the {n} available "
            f"broker{'s' if n != 1 else ''}",
        )
    order = rack_alternating(brokers)
    racks = {brokers[b] for b in order}
    out: list[list[int]] = []
    for k in range(first_partition, first_partition + partitions):
        first = (start + k) % n
        shift = 1 + ((start + k) // n) % max(n - 1, 1)
        replicas = [order[first]]
        used_racks = {brokers[order[first]]}
        j = 0
        while len(replicas) < replication_factor:
            candidate = order[(first + shift + j) % n]
            j += 1
            if candidate in replicas:
                continue
            # prefer a rack not used yet while some remain; fall back to any broker
            if len(used_racks) < len(racks) and brokers[candidate] in used_racks and j <= 2 * n:
                continue
            replicas.append(candidate)
            used_racks.add(brokers[candidate])
        out.append(replicas)
    return out


def validate_assignment(assignment: Sequence[Sequence[int]], known_brokers: Iterable[int]) -> None:
    """Explicit replica assignments (CreateTopics, CreatePartitions, reassignment)."""
    known = set(known_brokers)
    sizes = {len(replicas) for replicas in assignment}
    if len(sizes) > 1:
        raise KafkaError(
            ErrorCode.INVALID_REPLICA_ASSIGNMENT, "all partitions need the same replica count"
        )
    for replicas in assignment:
        if not replicas:
            raise KafkaError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, "empty replica list")
        if len(set(replicas)) != len(replicas):
            raise KafkaError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"duplicate broker in {list(replicas)}"
            )
        unknown = [b for b in replicas if b not in known]
        if unknown:
            raise KafkaError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"unknown broker(s) {unknown}")


def choose_leader(
    replicas: Sequence[int],
    isr: Sequence[int],
    live: Iterable[int],
    *,
    unclean: bool = False,
) -> int:
    """The first replica (preferred order) that is in sync and alive; -1 for none.

    With `unclean`, a live out-of-sync replica is taken when no in-sync one is alive.
    """
    alive = set(live)
    in_sync = set(isr)
    for b in replicas:
        if b in in_sync and b in alive:
            return b
    if unclean:
        for b in replicas:
            if b in alive:
                return b
    return -1
