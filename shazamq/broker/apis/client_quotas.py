"""DescribeClientQuotas (key 48) and AlterClientQuotas (49), and the quota manager's wiring.

The quotas live in the cluster metadata, as the ACLs do: in a cluster as
`AlterClientQuota` records of the replicated log (every broker applies them and
enforces them at once), on a single broker in its metadata document. Entities and keys
are Kafka's (see `quotas.entities`): ``user``, ``client-id`` or both, a null name the
default entity; ``producer_byte_rate``, ``consumer_byte_rate``, ``request_percentage``.
``controller_mutation_rate`` is refused (INVALID_CONFIG): this broker does not throttle
topic creation and deletion, so accepting it would promise what is not done; ``ip``
entities (connection_creation_rate) likewise (INVALID_REQUEST).

AlterClientQuotas answers per entry (INVALID_REQUEST for a bad entity or key,
INVALID_CONFIG for a bad value, each with a message); an entry's ops apply together,
and ``validate_only`` checks without applying. DescribeClientQuotas takes Kafka's
filter: per component an entity type matched EXACT (a name), DEFAULT or ANY, ``strict``
wanting entities with no other types.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.alter_client_quotas_request import AlterClientQuotasRequest
from shazamq.protocol.messages.alter_client_quotas_response import (
    AlterClientQuotasResponse,
)
from shazamq.protocol.messages.alter_client_quotas_response import (
    EntityData as AlterEntity,
)
from shazamq.protocol.messages.alter_client_quotas_response import (
    EntryData as AlterEntry,
)
from shazamq.protocol.messages.describe_client_quotas_request import (
    DescribeClientQuotasRequest,
)
from shazamq.protocol.messages.describe_client_quotas_response import (
    DescribeClientQuotasResponse,
    EntityData,
    EntryData,
    ValueData,
)

from ..cluster.metadata import MetadataStore
from ..quotas.entities import (
    Entity,
    check_filter,
    check_ops,
    describe_entity,
    matches,
    parse_entity,
)
from ..quotas.manager import QuotaManager
from ..security import INTERNAL_USER

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

log = logging.getLogger(__name__)

DESCRIBE_KEY = 48
ALTER_KEY = 49


def stored_quotas(broker: Broker) -> dict[Entity, dict[str, float]]:
    """The client quotas in the metadata as they are now."""
    if broker.cluster is not None:
        return broker.cluster.state.quotas
    store = broker.metadata
    assert isinstance(store, MetadataStore)
    return store.quotas


def register(d: Dispatcher, broker: Broker) -> None:
    cfg = broker.config.quotas
    manager = QuotaManager(
        samples=cfg.window_num,
        window_seconds=float(cfg.window_size_seconds),
        throttle_time=broker.metrics.quota_throttle_time,
        internal_principal=f"User:{INTERNAL_USER}",
    )

    def refresh() -> None:
        """Enforce the quotas now in the metadata; with none, the dispatcher skips it all."""
        manager.update(stored_quotas(broker))
        d.quotas = manager if manager.active else None

    refresh()
    if broker.cluster is not None:
        broker.cluster.on_quotas_changed.append(refresh)

    async def describe(
        ctx: RequestContext, req: DescribeClientQuotasRequest
    ) -> DescribeClientQuotasResponse:
        components = [(c.entity_type, c.match_type, c.match) for c in req.components]
        problem = check_filter(components)
        if problem is not None:
            return DescribeClientQuotasResponse(
                error_code=ErrorCode.INVALID_REQUEST, error_message=problem, entries=None
            )
        entries = [
            EntryData(
                entity=[EntityData(entity_type=t, entity_name=n) for t, n in entity],
                values=[ValueData(key=k, value=v) for k, v in sorted(values.items())],
            )
            for entity, values in sorted(
                stored_quotas(broker).items(), key=lambda kv: describe_entity(kv[0])
            )
            if matches(entity, components, req.strict)
        ]
        return DescribeClientQuotasResponse(error_code=0, error_message=None, entries=entries)

    async def alter(
        ctx: RequestContext, req: AlterClientQuotasRequest
    ) -> AlterClientQuotasResponse:
        results: list[AlterEntry] = []
        valid: list[tuple[int, Entity, list[tuple[str, float | None]]]] = []
        for i, entry in enumerate(req.entries):
            echo = [
                AlterEntity(entity_type=e.entity_type, entity_name=e.entity_name)
                for e in entry.entity
            ]
            try:
                entity = parse_entity((e.entity_type, e.entity_name) for e in entry.entity)
                check_ops((op.key, op.value, op.remove) for op in entry.ops)
            except KafkaError as exc:
                results.append(
                    AlterEntry(error_code=exc.code, error_message=exc.message, entity=echo)
                )
                continue
            results.append(AlterEntry(error_code=0, error_message=None, entity=echo))
            valid.append(
                (i, entity, [(op.key, None if op.remove else op.value) for op in entry.ops])
            )
        if valid and not req.validate_only:
            node = broker.cluster
            if node is None:
                store = broker.metadata
                assert isinstance(store, MetadataStore)
                await store.alter_quotas([(entity, ops) for _, entity, ops in valid])
                refresh()
            else:
                for i, entity, ops in valid:
                    try:
                        code = await node.alter_client_quota(entity, ops)
                    except KafkaError as exc:
                        results[i].error_code = exc.code
                        results[i].error_message = exc.message
                        continue
                    if code:
                        results[i].error_code = code
                        results[i].error_message = "the cluster metadata rejected the quota"
            for i, entity, ops in valid:
                if results[i].error_code == 0:
                    log.info(
                        "%s altered client quotas of %s: %s",
                        ctx.session.principal,
                        describe_entity(entity),
                        ", ".join(f"{k}={'<removed>' if v is None else v}" for k, v in ops),
                    )
        return AlterClientQuotasResponse(entries=results)

    d.register(DESCRIBE_KEY, 0, 1, describe)
    d.register(ALTER_KEY, 0, 1, alter)
