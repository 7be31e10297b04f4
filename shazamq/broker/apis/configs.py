"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics, brokers, loggers.

Topic settings are dynamic (stored in the metadata, applied to the live logs). Broker
settings come from the configuration file and are reported under Kafka's names, so admin
tools show what the broker runs with; those marked dynamic in `shazamq.config` can be
changed on this broker's resource without a restart (`shazamq.broker.dynamic_config`), the
others are read-only. Logger levels can be read and changed at run time, as with Kafka's
BROKER_LOGGER resource. GROUP resources carry the group settings: consumer.session.timeout.ms
and consumer.heartbeat.interval.ms of consumer groups, and the share group settings
(share.auto.offset.reset, share.record.lock.duration.ms, ...), stored together by the share
coordinator (in a cluster in the metadata log, as Kafka's GROUP configs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shazamq.broker import topic_configs
from shazamq.broker.dynamic_config import DynamicBrokerConfig, kafka_value
from shazamq.broker.log.errors import InvalidConfigError
from shazamq.broker.log.log_config import LogConfig
from shazamq.config import dynamic_settings
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.alter_configs_request import AlterConfigsRequest
from shazamq.protocol.messages.alter_configs_response import (
    AlterConfigsResourceResponse,
    AlterConfigsResponse,
)
from shazamq.protocol.messages.describe_configs_request import DescribeConfigsRequest
from shazamq.protocol.messages.describe_configs_response import (
    DescribeConfigsResourceResult,
    DescribeConfigsResponse,
    DescribeConfigsResult,
    DescribeConfigsSynonym,
)
from shazamq.protocol.messages.incremental_alter_configs_request import (
    IncrementalAlterConfigsRequest,
)
from shazamq.protocol.messages.incremental_alter_configs_response import (
    AlterConfigsResourceResponse as IncrementalResourceResponse,
)
from shazamq.protocol.messages.incremental_alter_configs_response import (
    IncrementalAlterConfigsResponse,
)

if TYPE_CHECKING:
    from shazamq.broker.cluster.metadata import TopicInfo

    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

TOPIC = 2
BROKER = 4
BROKER_LOGGER = 8
GROUP = 32
SOURCE_GROUP = 8  # Kafka's ConfigSource.GROUP_CONFIG
SOURCE_DYNAMIC_BROKER = 2  # Kafka's ConfigSource.DYNAMIC_BROKER_CONFIG

OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
KAFKA_DEFAULTS = LogConfig()
_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


def describe_topic_configs(
    broker: Broker,
    topic: TopicInfo,
    keys: list[str] | None,
    synonyms: bool,
    docs: bool,
) -> list[topic_configs.ConfigEntry]:
    return topic_configs.describe(KAFKA_DEFAULTS, broker.partitions.defaults, topic.configs, keys)


def broker_settings(broker: Broker) -> dict[str, str]:
    """The broker's file settings under Kafka's names, for DescribeConfigs(BROKER)."""
    c = broker.config
    return {
        "node.id": str(broker.node_id),
        "broker.id": str(broker.node_id),
        "log.dirs": c.broker.data_dir,
        "listeners": f"PLAINTEXT://{c.broker.host}:{broker.server.port}",
        "advertised.listeners": "PLAINTEXT://{}:{}".format(*broker.advertised),
        "num.partitions": str(c.broker.default_partitions),
        "auto.create.topics.enable": str(c.broker.auto_create_topics).lower(),
        "delete.topic.enable": str(c.broker.delete_topic_enable).lower(),
        "message.max.bytes": str(c.broker.message_max_bytes),
        "socket.request.max.bytes": str(c.broker.socket_request_max_bytes),
        "log.segment.bytes": str(c.storage.segment_bytes),
        "log.roll.ms": str(c.storage.segment_ms),
        "log.retention.ms": str(c.storage.effective_retention_ms()),
        "log.retention.bytes": str(c.storage.retention_bytes),
        "log.cleanup.policy": c.storage.cleanup_policy,
        "log.index.interval.bytes": str(c.storage.index_interval_bytes),
        "log.retention.check.interval.ms": str(c.storage.retention_check_interval_ms),
        "default.replication.factor": str(c.replication.default_replication_factor),
        "min.insync.replicas": str(c.replication.min_insync_replicas),
        "offsets.topic.num.partitions": str(c.groups.offsets_topic_num_partitions),
        "offsets.retention.minutes": str(c.groups.offsets_retention_minutes),
        "offsets.retention.check.interval.ms": str(c.groups.offsets_retention_check_interval_ms),
        "offsets.topic.segment.bytes": str(c.groups.offsets_topic_segment_bytes),
        "group.initial.rebalance.delay.ms": str(c.groups.initial_rebalance_delay_ms),
        "group.min.session.timeout.ms": str(c.groups.min_session_timeout_ms),
        "group.max.session.timeout.ms": str(c.groups.max_session_timeout_ms),
        "transaction.max.timeout.ms": str(c.transactions.max_timeout_ms),
        "transaction.state.log.num.partitions": str(c.transactions.state_log_num_partitions),
        "transaction.state.log.segment.bytes": str(c.transactions.state_log_segment_bytes),
        "transaction.state.log.min.isr": str(c.transactions.state_log_min_isr),
        "transactional.id.expiration.ms": str(c.transactions.transactional_id_expiration_ms),
        "producer.id.expiration.ms": str(c.transactions.producer_id_expiration_ms),
        # every dynamic setting, as the broker runs it now
        **{
            name: kafka_value(getattr(getattr(c, section), key))
            for name, (section, key) in dynamic_settings().items()
            if getattr(getattr(c, section), key) is not None
        },
    }


def _logger_levels() -> dict[str, str]:
    names = ["root", *sorted(n for n in logging.root.manager.loggerDict if n.startswith("shazamq"))]
    out = {}
    for name in names:
        logger = logging.getLogger(None if name == "root" else name)
        level = logging.getLevelName(logger.getEffectiveLevel())
        out[name] = {"WARNING": "WARN", "CRITICAL": "FATAL"}.get(level, level)
    return out


def _set_logger_level(name: str, level: str | None) -> None:
    if level is not None and level.upper() not in _LOG_LEVELS:
        raise KafkaError(ErrorCode.INVALID_CONFIG, f"{name}: unknown log level {level!r}")
    logger = logging.getLogger(None if name == "root" else name)
    if level is None:
        logger.setLevel(logging.NOTSET if name != "root" else logging.INFO)
        return
    py = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}.get(level.upper(), level)
    logger.setLevel(py.upper())


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    dynamic = DynamicBrokerConfig(broker)
    dynamic_names = dynamic_settings()

    def check_broker_resource(name: str) -> None:
        if name not in ("", str(broker.node_id)):
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"broker {name} is not this broker")

    def broker_source(resource_type: int, name: str) -> int:
        if resource_type != BROKER:
            return topic_configs.SOURCE_DEFAULT
        if dynamic.is_overridden(name):
            return SOURCE_DYNAMIC_BROKER
        return topic_configs.SOURCE_STATIC_BROKER

    async def describe_configs(
        ctx: RequestContext, req: DescribeConfigsRequest
    ) -> DescribeConfigsResponse:
        version = ctx.api_version
        results = []
        for res in req.resources:
            out = DescribeConfigsResult(
                error_code=0, resource_type=res.resource_type, resource_name=res.resource_name
            )
            results.append(out)
            keys = list(res.configuration_keys) if res.configuration_keys is not None else None
            try:
                if res.resource_type == TOPIC:
                    info = parts.require_topic(res.resource_name)
                    entries = describe_topic_configs(broker, info, keys, False, False)
                    out.configs = [
                        DescribeConfigsResourceResult(
                            name=e.name,
                            value=e.value,
                            read_only=e.read_only,
                            is_default=e.is_default,
                            config_source=e.config_source,
                            is_sensitive=False,
                            synonyms=(
                                [
                                    DescribeConfigsSynonym(
                                        name=e.name, value=e.value, source=e.config_source
                                    )
                                ]
                                if req.include_synonyms and version >= 1
                                else []
                            ),
                            config_type=e.config_type,
                            documentation=e.documentation if req.include_documentation else None,
                        )
                        for e in entries
                    ]
                elif res.resource_type in (BROKER, BROKER_LOGGER):
                    check_broker_resource(res.resource_name)
                    if res.resource_type == BROKER:
                        values = broker_settings(broker)
                    else:
                        values = _logger_levels()
                    out.configs = [
                        DescribeConfigsResourceResult(
                            name=k,
                            value=v,
                            read_only=res.resource_type == BROKER and k not in dynamic_names,
                            is_default=False,
                            config_source=broker_source(res.resource_type, k),
                            is_sensitive=False,
                            config_type=topic_configs.CONFIG_TYPES["string"],
                        )
                        for k, v in sorted(values.items())
                        if keys is None or k in keys
                    ]
                elif res.resource_type == GROUP:
                    out.configs = [
                        DescribeConfigsResourceResult(
                            name=k,
                            value=v,
                            read_only=False,
                            is_default=is_default,
                            config_source=(
                                topic_configs.SOURCE_DEFAULT if is_default else SOURCE_GROUP
                            ),
                            is_sensitive=False,
                            config_type=topic_configs.CONFIG_TYPES[
                                "string" if not v.lstrip("-").isdigit() else "int"
                            ],
                        )
                        for k, v, is_default in broker.share.describe_settings(res.resource_name)
                        if keys is None or k in keys
                    ]
                else:
                    raise KafkaError(
                        ErrorCode.INVALID_REQUEST,
                        f"resource type {res.resource_type} has no configuration here",
                    )
            except KafkaError as exc:
                out.error_code = exc.code
                out.error_message = exc.message
        return DescribeConfigsResponse(throttle_time_ms=0, results=results)

    async def apply(
        resource_type: int,
        name: str,
        new: dict[str, str] | None,
        validate_only: bool,
        logger_ops: list[tuple[str, str | None]],
        *,
        replace: bool = False,
    ) -> None:
        """Shared tail of both alter APIs: validate, then store unless validate_only."""
        if resource_type == TOPIC:
            assert new is not None
            info = parts.require_topic(name)
            mirror = broker.mirror
            promote = (
                not replace
                and topic_configs.MIRROR_SOURCE in info.configs
                and topic_configs.MIRROR_SOURCE not in new
            )
            try:
                new = topic_configs.check_client_change(
                    name, info.configs, new, replace=replace, promote_in_steps=mirror is not None
                )
                topic_configs.validate(parts.defaults, new)
            except InvalidConfigError as exc:
                raise KafkaError(ErrorCode.INVALID_CONFIG, exc.message) from None
            if not validate_only:
                await parts.set_topic_configs(name, new)
                if promote and mirror is not None:
                    await mirror.promoted(name)  # answered once writable
        elif resource_type == BROKER:
            dynamic.check_resource(name)
            if replace:  # AlterConfigs would return every unnamed setting to the file's value
                raise KafkaError(
                    ErrorCode.INVALID_REQUEST,
                    "broker settings change with IncrementalAlterConfigs, not AlterConfigs",
                )
            await dynamic.alter(logger_ops, validate_only)
        elif resource_type == BROKER_LOGGER:
            check_broker_resource(name)
            for logger, level in logger_ops:
                if level is not None and level.upper() not in _LOG_LEVELS:
                    raise KafkaError(ErrorCode.INVALID_CONFIG, f"{logger}: bad level {level!r}")
            if not validate_only:
                for logger, level in logger_ops:
                    _set_logger_level(logger, level)
        elif resource_type == GROUP:
            changes = list(logger_ops)
            if replace:  # AlterConfigs: what is not named returns to its default
                named = {n for n, _ in changes}
                changes = [
                    (n, None)
                    for n, _v, _d in broker.share.describe_settings(name)
                    if n not in named
                ] + changes
            await broker.share.alter_settings(name, changes, validate_only)
        else:
            raise KafkaError(
                ErrorCode.INVALID_REQUEST, f"resource type {resource_type} cannot be altered"
            )

    async def alter_configs(ctx: RequestContext, req: AlterConfigsRequest) -> AlterConfigsResponse:
        responses = []
        for res in req.resources:
            out = AlterConfigsResourceResponse(
                error_code=0, resource_type=res.resource_type, resource_name=res.resource_name
            )
            responses.append(out)
            # AlterConfigs replaces the whole set: unnamed settings return to defaults.
            new = {c.name: c.value for c in res.configs if c.value is not None}
            try:
                await apply(
                    res.resource_type,
                    res.resource_name,
                    new,
                    req.validate_only,
                    [(c.name, c.value) for c in res.configs],
                    replace=True,
                )
            except KafkaError as exc:
                out.error_code = exc.code
                out.error_message = exc.message
        return AlterConfigsResponse(throttle_time_ms=0, responses=responses)

    async def incremental_alter_configs(
        ctx: RequestContext, req: IncrementalAlterConfigsRequest
    ) -> IncrementalAlterConfigsResponse:
        responses = []
        for res in req.resources:
            out = IncrementalResourceResponse(
                error_code=0, resource_type=res.resource_type, resource_name=res.resource_name
            )
            responses.append(out)
            try:
                new: dict[str, str] | None = None
                ops: list[tuple[str, str | None]] = []
                if res.resource_type == TOPIC:
                    info = parts.require_topic(res.resource_name)
                    new = dict(info.configs)
                    current = {
                        e.name: e.value
                        for e in describe_topic_configs(broker, info, None, False, False)
                    }
                    for c in res.configs:
                        new = _incremental(new, current, c.name, c.config_operation, c.value)
                else:
                    for c in res.configs:
                        if c.config_operation not in (OP_SET, OP_DELETE):
                            raise KafkaError(
                                ErrorCode.INVALID_REQUEST,
                                f"{c.name}: APPEND and SUBTRACT apply to list settings only",
                            )
                        ops.append((c.name, c.value if c.config_operation == OP_SET else None))
                await apply(res.resource_type, res.resource_name, new, req.validate_only, ops)
            except KafkaError as exc:
                out.error_code = exc.code
                out.error_message = exc.message
        return IncrementalAlterConfigsResponse(throttle_time_ms=0, responses=responses)

    d.register(32, 0, 4, describe_configs)
    d.register(33, 0, 2, alter_configs)
    d.register(44, 0, 1, incremental_alter_configs)


def _incremental(
    new: dict[str, str], current: dict[str, str | None], name: str, op: int, value: str | None
) -> dict[str, str]:
    if op == OP_SET:
        if value is None:
            raise KafkaError(ErrorCode.INVALID_CONFIG, f"{name}: SET needs a value")
        new[name] = value
    elif op == OP_DELETE:
        new.pop(name, None)
    elif op in (OP_APPEND, OP_SUBTRACT):
        if name != "cleanup.policy":
            raise KafkaError(
                ErrorCode.INVALID_CONFIG, f"{name}: APPEND and SUBTRACT apply to list settings"
            )
        items = [x for x in (new.get(name) or current.get(name) or "").split(",") if x]
        change = [x.strip() for x in (value or "").split(",") if x.strip()]
        if op == OP_APPEND:
            items += [x for x in change if x not in items]
        else:
            items = [x for x in items if x not in change]
        new[name] = ",".join(items)
    else:
        raise KafkaError(ErrorCode.INVALID_REQUEST, f"{name}: unknown operation {op}")
    return new
