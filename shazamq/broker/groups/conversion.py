"""Converting groups between the classic and the consumer protocol (KIP-848 migration). Pure.

During an online upgrade a classic group with members is joined by a consumer-protocol
member: the group becomes a consumer group (:func:`consumer_from_classic`) in which each
classic member keeps what it had: its generation becomes its member epoch, its last
assignment its current and target assignment, the topics of its subscription (the
embedded ConsumerProtocolSubscription) its subscribed topic names. When the last
consumer-protocol member leaves, the classic members form a classic group again
(:func:`classic_from_consumer`), which starts a rebalance so that its leader assigns
with the client-side assignor once more.

The embedded consumer protocol is decoded and encoded here: a classic member's
subscription (topics, owned partitions) and the assignment it is handed by SyncGroup.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shazamq.protocol.messages.consumer_protocol_assignment import (
    ConsumerProtocolAssignment,
)
from shazamq.protocol.messages.consumer_protocol_assignment import (
    TopicPartition as AssignedTopic,
)
from shazamq.protocol.messages.consumer_protocol_subscription import (
    ConsumerProtocolSubscription,
)

from .assignors import Assignment
from .consumer_group import ConsumerGroup, ConsumerMember, MemberState
from .consumer_records import ClassicMetadata
from .group import CONSUMER_PROTOCOL_TYPE, Group, GroupState, Member

__all__ = [
    "Subscription",
    "classic_from_consumer",
    "common_protocol",
    "consumer_from_classic",
    "decode_assignment",
    "decode_subscription",
    "encode_assignment",
]

TopicPartition = tuple[str, int]
_VERSION = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class Subscription:
    """The embedded consumer protocol subscription of a classic member."""

    topics: tuple[str, ...]
    owned: frozenset[TopicPartition]
    rack_id: str | None


def _version(data: bytes, valid: tuple[int, int]) -> int | None:
    if len(data) < 2:
        return None
    (version,) = _VERSION.unpack_from(data, 0)
    if version < 0:
        return None
    # a newer version is read as the newest known one: its extra fields come last
    return min(version, valid[1])


def decode_subscription(metadata: bytes) -> Subscription | None:
    """The subscription in a JoinGroup protocol's metadata, None if it is not one."""
    version = _version(metadata, ConsumerProtocolSubscription.VALID_VERSIONS)
    if version is None:
        return None
    try:
        sub, _ = ConsumerProtocolSubscription.decode(metadata, 2, version)
    except (ValueError, IndexError, struct.error):
        return None
    owned = frozenset((tp.topic, p) for tp in sub.owned_partitions for p in tp.partitions)
    return Subscription(tuple(sub.topics), owned, sub.rack_id)


def decode_assignment(data: bytes) -> Assignment:
    """The partitions of a SyncGroup assignment; empty if it does not parse."""
    version = _version(data, ConsumerProtocolAssignment.VALID_VERSIONS)
    if version is None:
        return {}
    try:
        a, _ = ConsumerProtocolAssignment.decode(data, 2, version)
    except (ValueError, IndexError, struct.error):
        return {}
    out: dict[str, frozenset[int]] = {}
    for tp in a.assigned_partitions:
        out[tp.topic] = out.get(tp.topic, frozenset()) | frozenset(tp.partitions)
    return out


def encode_assignment(assignment: Assignment) -> bytes:
    """A ConsumerProtocolAssignment (version 0, which every client reads)."""
    body = ConsumerProtocolAssignment(
        assigned_partitions=[
            AssignedTopic(topic=t, partitions=sorted(ps))
            for t, ps in sorted(assignment.items())
            if ps
        ]
    ).encode(0)
    return _VERSION.pack(0) + body


def common_protocol(protocols: list[tuple[tuple[str, bytes], ...]]) -> str | None:
    """The first protocol of the first member that every member supports."""
    if not protocols:
        return None
    shared = set.intersection(*({name for name, _ in ps} for ps in protocols))
    for name, _ in protocols[0]:
        if name in shared:
            return name
    return None


def consumer_from_classic(group: Group, topics: dict[str, int]) -> ConsumerGroup | None:
    """The consumer group a classic group becomes, None if a member's protocol is not
    the consumer protocol (its subscription does not decode). ``topics``: name ->
    partition count, to keep only assigned partitions that exist."""
    if group.protocol_type != CONSUMER_PROTOCOL_TYPE or not group.members:
        return None
    epoch = group.generation_id
    cg = ConsumerGroup(group.group_id)
    cg.group_epoch = cg.target_epoch = epoch
    taken: set[TopicPartition] = set()
    for m in group.members.values():
        metadata = _chosen_metadata(m, group.protocol_name)
        sub = decode_subscription(metadata) if metadata is not None else None
        if sub is None:
            return None
        assigned: dict[str, frozenset[int]] = {}
        for t, ps in decode_assignment(m.assignment).items():
            keep = {p for p in ps if 0 <= p < topics.get(t, 0) and (t, p) not in taken}
            taken.update((t, p) for p in keep)
            if keep:
                assigned[t] = frozenset(keep)
        member = ConsumerMember(
            m.member_id,
            instance_id=m.group_instance_id,
            rack_id=sub.rack_id,
            client_id=m.client_id,
            client_host=m.client_host,
            subscribed_topic_names=sub.topics,
            rebalance_timeout_ms=m.rebalance_timeout_ms,
            classic=ClassicMetadata(m.session_timeout_ms, tuple(m.protocols)),
            member_epoch=epoch,
            previous_member_epoch=epoch,
            state=MemberState.STABLE,
            assigned=assigned,
        )
        cg.add(member)
        cg.target[m.member_id] = dict(assigned)
    return cg


def _chosen_metadata(m: Member, protocol: str | None) -> bytes | None:
    if protocol is not None:
        try:
            return m.metadata_for(protocol)
        except KeyError:
            pass
    return m.protocols[0][1] if m.protocols else None


def classic_from_consumer(cg: ConsumerGroup) -> Group | None:
    """The classic group of a consumer group whose members all speak the classic
    protocol, Stable at generation = group epoch, each member with its current
    assignment; None if they share no protocol. The caller starts a rebalance."""
    members = list(cg.members.values())
    if not members or any(m.classic is None for m in members):
        return None
    protocol = common_protocol([m.classic.protocols for m in members if m.classic])
    if protocol is None:
        return None
    group = Group(cg.group_id)
    group.protocol_type = CONSUMER_PROTOCOL_TYPE
    group.protocol_name = protocol
    group.generation_id = cg.group_epoch
    for m in members:
        assert m.classic is not None
        group.add(
            Member(
                member_id=m.member_id,
                group_instance_id=m.instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                session_timeout_ms=m.classic.session_timeout_ms,
                protocol_type=CONSUMER_PROTOCOL_TYPE,
                protocols=list(m.classic.protocols),
                assignment=encode_assignment(m.assigned),
            )
        )
    # what a finished rebalance leaves; the coordinator moves it on at once
    group.state = GroupState.STABLE
    return group
