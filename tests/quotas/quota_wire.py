"""Raw-protocol helpers for the client quota tests (no client library has these APIs)."""

from __future__ import annotations

from shazamq.protocol.messages.alter_client_quotas_request import (
    AlterClientQuotasRequest,
    EntityData,
    EntryData,
    OpData,
)
from shazamq.protocol.messages.describe_client_quotas_request import (
    ComponentData,
    DescribeClientQuotasRequest,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch

Entity = dict[str, str | None]


def alter_request(
    entries: list[tuple[Entity, dict[str, float | None]]], validate_only: bool = False
) -> AlterClientQuotasRequest:
    """One entry per (entity, {key: value}); a None value removes the key."""
    return AlterClientQuotasRequest(
        entries=[
            EntryData(
                entity=[EntityData(entity_type=t, entity_name=n) for t, n in entity.items()],
                ops=[
                    OpData(key=k, value=0.0 if v is None else v, remove=v is None)
                    for k, v in ops.items()
                ],
            )
            for entity, ops in entries
        ],
        validate_only=validate_only,
    )


def describe_request(
    components: list[tuple[str, int, str | None]], strict: bool = False
) -> DescribeClientQuotasRequest:
    return DescribeClientQuotasRequest(
        components=[
            ComponentData(entity_type=t, match_type=m, match=name) for t, m, name in components
        ],
        strict=strict,
    )


def described(resp) -> dict[tuple[tuple[str, str | None], ...], dict[str, float]]:
    """A DescribeClientQuotas answer as {entity (sorted pairs): {key: value}}."""
    assert resp.error_code == 0, resp.error_message
    return {
        tuple(sorted((e.entity_type, e.entity_name) for e in entry.entity)): {
            v.key: v.value for v in entry.values
        }
        for entry in resp.entries
    }


def produce_request(topic: str, payload: bytes, records: int = 1) -> ProduceRequest:
    batch = build_batch(
        [Record(offset_delta=i, timestamp_delta=0, value=payload) for i in range(records)]
    )
    return ProduceRequest(
        acks=1,
        timeout_ms=10_000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
