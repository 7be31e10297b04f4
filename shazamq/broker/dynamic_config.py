"""Broker settings changed at run time: IncrementalAlterConfigs on this broker's BROKER resource.

Which settings may change without a restart is `shazamq.config.dynamic_settings()` (the
``dynamic`` markers of the configuration models), under their Kafka names:
``message.max.bytes``, the ``log.*`` topic defaults (retention, segment roll, cleanup
policy, flush, index interval) and the connection caps (``max.connections``,
``max.connections.per.ip``).

The file's configuration stays the base (`static`); the changes are overrides on top of
it, kept in memory (a restart returns to the file, which is why the operator also writes
them to the ConfigMap). SET overrides a setting, DELETE returns it to the file's value.
Every change is validated as a whole configuration by the broker's own model (bounds,
cross-field rules), and against every topic's overrides, before anything is applied, so a
refused change leaves the broker as it was.

Applying: the ``log.*`` settings and ``message.max.bytes`` are the topics' defaults, so
every topic's effective log configuration is recomputed (its own overrides still win) and
pushed to its open logs; new logs take the new defaults. The connection caps replace the
listener's limits, checked at each new connection.

Only this broker's own resource (its id) is changed. Kafka's cluster-wide default (the
resource named ``""``) would have to live in the cluster's metadata; a clustered broker
refuses it rather than apply it to itself alone, while a broker on its own takes it as its
own (it is the whole cluster).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import msgspec

from shazamq.broker import topic_configs
from shazamq.broker.log.errors import InvalidConfigError
from shazamq.config import BrokerConfig, ConfigError, dynamic_settings, parse_config
from shazamq.protocol.errors import ErrorCode, KafkaError

if TYPE_CHECKING:
    from shazamq.broker.app import Broker

__all__ = ["DynamicBrokerConfig", "kafka_value"]


def kafka_value(value: Any) -> str:
    """A setting as Kafka spells it in configs (booleans in lower case)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class DynamicBrokerConfig:
    """The overrides of one broker's dynamic settings, and their application."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.static: BrokerConfig = broker.config
        self.overrides: dict[str, str] = {}  # Kafka name -> value, as SET

    def is_overridden(self, name: str) -> bool:
        return name in self.overrides

    def check_resource(self, name: str) -> None:
        """This broker's resource: its id, or ``""`` on a broker that is not clustered."""
        broker = self.broker
        if name == str(broker.node_id):
            return
        if name == "" and broker.cluster is None:
            return
        if name == "":
            raise KafkaError(
                ErrorCode.INVALID_REQUEST,
                "cluster-wide broker defaults are not stored; alter each broker by its id",
            )
        raise KafkaError(ErrorCode.INVALID_REQUEST, f"broker {name} is not this broker")

    def _config_with(self, overrides: dict[str, str]) -> BrokerConfig:
        known = dynamic_settings()
        tree: dict[str, Any] = msgspec.to_builtins(self.static)
        for name, value in overrides.items():
            section, key = known[name]
            tree.setdefault(section, {})[key] = value
        try:
            return parse_config(tree, source="IncrementalAlterConfigs")
        except ConfigError as exc:
            message = str(exc).removeprefix("IncrementalAlterConfigs: ")
            raise KafkaError(ErrorCode.INVALID_CONFIG, message) from None

    async def alter(self, ops: list[tuple[str, str | None]], validate_only: bool) -> None:
        """Apply SET (value) and DELETE (None) operations, all or nothing."""
        known = dynamic_settings()
        overrides = dict(self.overrides)
        for name, value in ops:
            if name not in known:
                raise KafkaError(
                    ErrorCode.INVALID_CONFIG,
                    f"{name} cannot be changed while the broker runs (dynamic settings: "
                    f"{', '.join(sorted(known))})",
                )
            if value is None:
                overrides.pop(name, None)
            else:
                overrides[name] = value
        config = self._config_with(overrides)
        defaults, topics = self._topic_configs(config)
        if validate_only:
            return
        self.overrides = overrides
        self._apply(config, defaults, topics)

    def _topic_configs(self, config: BrokerConfig) -> tuple[Any, dict[str, Any]]:
        """The new topic defaults and every topic's effective config under them; a topic
        whose own settings no longer fit refuses the change."""
        from shazamq.broker.partitions import default_log_config

        defaults = default_log_config(config)
        parts = self.broker.partitions
        out = {}
        for topic in list(parts.metadata.topics.values()):
            try:
                out[topic.name] = topic_configs.validate(defaults, topic.configs)
            except InvalidConfigError as exc:
                raise KafkaError(
                    ErrorCode.INVALID_CONFIG, f"topic {topic.name}: {exc.message}"
                ) from None
        return defaults, out

    def _apply(self, config: BrokerConfig, defaults: Any, topics: dict[str, Any]) -> None:
        broker = self.broker
        parts = broker.partitions
        parts.defaults = defaults
        parts.logs.default_config = defaults
        for name, cfg in topics.items():
            parts.logs.update_topic_config(name, cfg)
        server = broker.server
        server.limits = dataclasses.replace(
            server.limits,
            max_connections=config.broker.max_connections,
            max_connections_per_ip=config.broker.max_connections_per_ip,
        )
        broker.config = config
