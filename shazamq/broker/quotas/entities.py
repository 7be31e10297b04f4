"""Client quota entities, their validation and Kafka's precedence order (pure, no I/O).

A quota entity is what AlterClientQuotas names: a user, a client id, or both, where a
null name is the ``<default>`` entity of that type. It is kept here in one canonical
form, `Entity`: its ``(type, name)`` pairs sorted by type, so ``client-id`` comes before
``user``. The quotas of the cluster are a map ``Entity -> {key: value}``.

Which quota applies to a connection (`resolve`) follows Kafka's order, the first
entity that has the key winning::

    /config/users/<user>/clients/<client-id>
    /config/users/<user>/clients/<default>
    /config/users/<user>
    /config/users/<default>/clients/<client-id>
    /config/users/<default>/clients/<default>
    /config/users/<default>
    /config/clients/<client-id>
    /config/clients/<default>

Each key resolves on its own (a user's produce quota may come from one entity and its
fetch quota from another). The match also says which connections share the rate
measured against that quota (Kafka's metric tags): a quota set on a user (named or
default, without a client id) is shared by all of that user's client ids, one set on a
client id by that client id whatever the user, one set on both by the pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping

import msgspec

from shazamq.protocol.errors import ErrorCode, KafkaError

USER = "user"
CLIENT_ID = "client-id"
IP = "ip"
ENTITY_TYPES = frozenset({USER, CLIENT_ID, IP})

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
REQUEST_PERCENTAGE = "request_percentage"
CONTROLLER_MUTATION_RATE = "controller_mutation_rate"
# Kafka's types: the byte rates are longs, the percentage a double
_LONG_KEYS = frozenset({PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE})
QUOTA_KEYS = frozenset({PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE})

# Describe filters (DescribeClientQuotas ComponentData.match_type)
MATCH_EXACT = 0
MATCH_DEFAULT = 1
MATCH_ANY = 2

Entity = tuple[tuple[str, str | None], ...]
Quotas = Mapping[Entity, Mapping[str, float]]
# (user tag, client-id tag): which connections share one measured rate
Tags = tuple[str, str]


class StoredQuota(msgspec.Struct, kw_only=True, frozen=True):
    """One entity's quotas as persisted (metadata document, snapshot)."""

    entity: list[tuple[str, str | None]]
    values: dict[str, float]


def to_stored(quotas: Quotas) -> list[StoredQuota]:
    return [
        StoredQuota(entity=list(entity), values=dict(sorted(values.items())))
        for entity, values in sorted(quotas.items(), key=lambda kv: _sort_key(kv[0]))
    ]


def from_stored(stored: Iterable[StoredQuota]) -> dict[Entity, dict[str, float]]:
    return {tuple((t, n) for t, n in s.entity): dict(s.values) for s in stored if s.values}


def _sort_key(entity: Entity) -> tuple[tuple[str, bool, str], ...]:
    return tuple((t, n is not None, n or "") for t, n in entity)


def describe_entity(entity: Entity) -> str:
    """Kafka's spelling of an entity, for messages and logs: ``user=alice, client-id=<default>``."""
    return ", ".join(f"{t}={'<default>' if n is None else n}" for t, n in entity)


# -- validation ---------------------------------------------------------------------------


def parse_entity(parts: Iterable[tuple[str, str | None]]) -> Entity:
    """An AlterClientQuotas entity in canonical form; KafkaError if it is not one."""
    seen: dict[str, str | None] = {}
    for etype, name in parts:
        if etype not in ENTITY_TYPES:
            raise KafkaError(
                ErrorCode.INVALID_REQUEST, f"Unhandled client quota entity type: {etype}"
            )
        if etype in seen:
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"Duplicate quota entity type: {etype}")
        if name == "":
            raise KafkaError(
                ErrorCode.INVALID_REQUEST,
                f"The {etype} entity name is empty; a null name is the default entity",
            )
        seen[etype] = name
    if not seen:
        raise KafkaError(ErrorCode.INVALID_REQUEST, "Invalid empty client quota entity")
    if IP in seen:
        if len(seen) > 1:
            raise KafkaError(
                ErrorCode.INVALID_REQUEST,
                "Invalid quota entity combination: an ip entity cannot be combined with "
                "user or client-id",
            )
        raise KafkaError(
            ErrorCode.INVALID_REQUEST,
            "ip quotas (connection_creation_rate) are not enforced by this broker",
        )
    return tuple(sorted(seen.items()))


def check_op(key: str, value: float, remove: bool) -> tuple[int, str] | None:
    """Why setting (or removing) ``key`` is refused, or None."""
    if key == CONTROLLER_MUTATION_RATE:
        if remove:
            return None  # nothing is ever stored under it: removing changes nothing
        return (
            ErrorCode.INVALID_CONFIG,
            "controller_mutation_rate is not enforced by this broker (CreateTopics, "
            "CreatePartitions and DeleteTopics are not throttled); it cannot be set",
        )
    if key not in QUOTA_KEYS:
        return ErrorCode.INVALID_REQUEST, f"Invalid configuration key {key}"
    if remove:
        return None
    if not math.isfinite(value) or value <= 0:
        return ErrorCode.INVALID_CONFIG, f"Quota {key} must be a positive number, got {value}"
    if key in _LONG_KEYS and value != int(value):
        return ErrorCode.INVALID_CONFIG, f"Quota {key} must be a whole number (long), got {value}"
    return None


def check_ops(ops: Iterable[tuple[str, float, bool]]) -> None:
    """KafkaError for the first op of an entry that is refused."""
    seen: set[str] = set()
    for key, value, remove in ops:
        if key in seen:
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"Duplicate quota key {key}")
        seen.add(key)
        problem = check_op(key, value, remove)
        if problem is not None:
            raise KafkaError(*problem)


def check_entity(entity: Entity) -> bool:
    """A stored or replicated entity is canonical and of the types quotas are set on."""
    types = [t for t, _ in entity]
    return (
        bool(types)
        and types == sorted(set(types))
        and set(types) <= {USER, CLIENT_ID}
        and all(n is None or n for _, n in entity)
    )


def apply_ops(
    quotas: MutableMapping[Entity, dict[str, float]],
    entity: Entity,
    ops: Iterable[tuple[str, float | None]],
) -> bool:
    """Set (a value) or remove (None) keys of one entity; True if anything changed.

    An entity left without keys is dropped, so it is no longer described.
    """
    current = dict(quotas.get(entity, {}))
    for key, value in ops:
        if value is None:
            current.pop(key, None)
        else:
            current[key] = float(value)
    before = quotas.get(entity)
    if current:
        quotas[entity] = current
    else:
        quotas.pop(entity, None)
    return before != (current or None)


# -- resolution ---------------------------------------------------------------------------


def precedence(user: str, client_id: str) -> list[tuple[Entity, Tags]]:
    """The entities that may apply to (user, client id), first wins, with their tags."""
    return [
        (((CLIENT_ID, client_id), (USER, user)), (user, client_id)),
        (((CLIENT_ID, None), (USER, user)), (user, client_id)),
        (((USER, user),), (user, "")),
        (((CLIENT_ID, client_id), (USER, None)), (user, client_id)),
        (((CLIENT_ID, None), (USER, None)), (user, client_id)),
        (((USER, None),), (user, "")),
        (((CLIENT_ID, client_id),), ("", client_id)),
        (((CLIENT_ID, None),), ("", client_id)),
    ]


def resolve(quotas: Quotas, key: str, user: str, client_id: str) -> tuple[float, Tags] | None:
    """The quota bound for ``key`` on this connection and the tags its rate is kept
    under, or None (no quota: not measured, never throttled)."""
    for entity, tags in precedence(user, client_id):
        values = quotas.get(entity)
        if values is not None:
            bound = values.get(key)
            if bound is not None:
                return bound, tags
    return None


# -- describe filters ---------------------------------------------------------------------


def check_filter(components: Iterable[tuple[str, int, str | None]]) -> str | None:
    """Why a DescribeClientQuotas filter is refused (INVALID_REQUEST), or None."""
    types: set[str] = set()
    for etype, match_type, match in components:
        if etype not in ENTITY_TYPES:
            return f"Custom entity type '{etype}' not supported"
        if etype in types:
            return f"Duplicate {etype} filter component entity type"
        types.add(etype)
        if match_type == MATCH_EXACT:
            if match is None:
                return f"The {etype} filter component matches exactly but has a null match"
        elif match_type == MATCH_DEFAULT:
            if match is not None:
                return f"The {etype} filter component matches the default but has a match string"
        elif match_type != MATCH_ANY:
            return f"Unexpected match type {match_type} for the {etype} filter component"
    if IP in types and types & {USER, CLIENT_ID}:
        return "An ip filter component cannot be combined with user or client-id components"
    return None


def matches(
    entity: Entity, components: Iterable[tuple[str, int, str | None]], strict: bool
) -> bool:
    """Whether a (checked) filter selects the entity: every component matches one of its
    parts; strict also wants no other parts."""
    parts = dict(entity)
    wanted = 0
    for etype, match_type, match in components:
        wanted += 1
        if etype not in parts:
            return False
        name = parts[etype]
        if match_type == MATCH_EXACT and name != match:
            return False
        if match_type == MATCH_DEFAULT and name is not None:
            return False
    return not strict or wanted == len(parts)
