"""Moving partitions and leaders: AlterPartitionReassignments, ListPartitionReassignments
for a scaling, and ElectLeaders (preferred) for a roll.

confluent-kafka's AdminClient (2.16) has none of the reassignment calls, so the operator
speaks them (and ElectLeaders) with the project's own Kafka client
(`shazamq.broker.cluster.client.BrokerClient`, the one brokers use between themselves),
over the operator's `admin.Connection` (TLS and its own SASL user where the listener has
them), to any live broker: the broker forwards the change to the metadata quorum, and the
copy is throttled by the brokers'
``replication.reassignment_throttle_bytes_per_second``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shazamq.broker.cluster.client import BrokerConnectionError
from shazamq.operator.admin import PLAINTEXT, Connection
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_partition_reassignments_request import (
    AlterPartitionReassignmentsRequest,
    ReassignablePartition,
    ReassignableTopic,
)
from shazamq.protocol.messages.elect_leaders_request import ElectLeadersRequest, TopicPartitions
from shazamq.protocol.messages.list_partition_reassignments_request import (
    ListPartitionReassignmentsRequest,
)

__all__ = ["ReassignError", "alter_reassignments", "elect_preferred_leaders", "list_reassignments"]

TIMEOUT = 30.0
_ALTER_KEY = 45
_LIST_KEY = 46
_ELECT_KEY = 43
# answers to a preferred election that only say there is nothing to do yet
_ELECTION_SETTLED = {ErrorCode.ELECTION_NOT_NEEDED, ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE}


class ReassignError(Exception):
    """A reassignment could not be submitted or listed; the message says why."""


async def _ask(
    brokers: Sequence[tuple[str, int]], api_key: int, message: object, connection: Connection
) -> object:
    """The answer of the first live broker of `brokers` that answers."""
    failures = []
    for host, port in brokers:
        client = connection.client(host, port)
        try:
            return await client.request(api_key, 0, message, timeout=TIMEOUT)
        except (BrokerConnectionError, OSError) as exc:
            failures.append(str(exc))
        finally:
            await client.close()
    raise ReassignError("no broker answered: " + "; ".join(failures or ["no broker"]))


async def list_reassignments(
    brokers: Sequence[tuple[str, int]], connection: Connection = PLAINTEXT
) -> set[tuple[str, int]]:
    """The partitions whose reassignment is in progress."""
    request = ListPartitionReassignmentsRequest(topics=None)
    resp = await _ask(brokers, _LIST_KEY, request, connection)
    code = getattr(resp, "error_code", 0)
    if code:
        raise ReassignError(f"ListPartitionReassignments: {ErrorCode(code).name}")
    return {(t.name, p.partition_index) for t in getattr(resp, "topics", []) for p in t.partitions}


async def alter_reassignments(
    brokers: Sequence[tuple[str, int]],
    moves: Mapping[tuple[str, int], Sequence[int]],
    connection: Connection = PLAINTEXT,
) -> None:
    """Submit `moves` (partition -> its new replica list); raise on any refusal."""
    by_topic: dict[str, list[ReassignablePartition]] = {}
    for (topic, index), replicas in sorted(moves.items()):
        by_topic.setdefault(topic, []).append(
            ReassignablePartition(partition_index=index, replicas=list(replicas))
        )
    request = AlterPartitionReassignmentsRequest(
        timeout_ms=int(TIMEOUT * 1000),
        topics=[ReassignableTopic(name=t, partitions=ps) for t, ps in by_topic.items()],
    )
    resp = await _ask(brokers, _ALTER_KEY, request, connection)
    problems = []
    if getattr(resp, "error_code", 0):
        problems.append(f"{ErrorCode(resp.error_code).name}: {resp.error_message}")  # type: ignore[attr-defined]
    for t in getattr(resp, "responses", []):
        for p in t.partitions:
            if p.error_code:
                problems.append(f"{t.name}-{p.partition_index}: {ErrorCode(p.error_code).name}")
    if problems:
        raise ReassignError("AlterPartitionReassignments refused " + ", ".join(problems))


async def elect_preferred_leaders(
    brokers: Sequence[tuple[str, int]],
    partitions: Sequence[tuple[str, int]],
    connection: Connection = PLAINTEXT,
) -> set[tuple[str, int]]:
    """Ask for a preferred-leader election of `partitions` (ElectLeaders v0 is PREFERRED);
    the partitions whose leader changed. A partition whose preferred leader is not in sync
    yet, or already leads, is not an error; any other refusal raises."""
    by_topic: dict[str, list[int]] = {}
    for topic, index in sorted(partitions):
        by_topic.setdefault(topic, []).append(index)
    request = ElectLeadersRequest(
        topic_partitions=[TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()],
        timeout_ms=int(TIMEOUT * 1000),
    )
    resp = await _ask(brokers, _ELECT_KEY, request, connection)
    elected: set[tuple[str, int]] = set()
    problems = []
    for t in getattr(resp, "replica_election_results", []):
        for p in t.partition_result:
            if p.error_code == 0:
                elected.add((t.topic, p.partition_id))
            elif p.error_code not in _ELECTION_SETTLED:
                problems.append(f"{t.topic}-{p.partition_id}: {ErrorCode(p.error_code).name}")
    if problems:
        raise ReassignError("ElectLeaders refused " + ", ".join(problems))
    return elected
