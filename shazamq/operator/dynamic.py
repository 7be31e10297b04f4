"""Which configuration changes the brokers take without a restart: pure, no I/O.

The broker's settings marked dynamic in `shazamq.config` (`dynamic_settings()`) can be
changed on a running broker with IncrementalAlterConfigs; every other change of the
rendered ``shazamq.toml`` needs a restart. So:

- `classify(old, new)` splits the difference between two rendered configurations into
  the dynamic settings to send (Kafka name -> value) and the keys that need a roll;
- `restart_part(config)` is the configuration with every dynamic setting at its default:
  the pods' ``shazamq.io/config-checksum`` is taken over it, so a change of dynamic
  settings alone leaves the pod template, and so the pods, as they are (the ConfigMap
  still gets the new values, which a restarted broker then reads);
- `desired(config)` is what every running broker should report for its dynamic settings,
  which the operator compares with what each broker says and sends the difference.

A dynamic setting that goes back to unset (such as ``storage.retention_ms`` removed) cannot
be sent (IncrementalAlterConfigs sets values; its DELETE means "the file's value", which
is the old one on a running broker): it needs a restart, like any other change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from shazamq.broker.dynamic_config import kafka_value
from shazamq.config import BrokerConfig, dynamic_settings

__all__ = ["ConfigChange", "classify", "desired", "restart_part"]


@dataclass(frozen=True)
class ConfigChange:
    """A configuration change: what the brokers take live, and what needs a restart."""

    dynamic: dict[str, str]  # Kafka name -> new value
    restart: tuple[str, ...]  # dotted keys (``broker.port``) that need a roll

    @property
    def empty(self) -> bool:
        return not (self.dynamic or self.restart)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _leaves(config: BrokerConfig) -> dict[str, Any]:
    """Every setting (defaults included) by dotted key; lists are compared whole."""
    tree = {
        f.name: msgspec.structs.asdict(getattr(config, f.name))
        for f in msgspec.structs.fields(config)
    }
    return _flatten(msgspec.to_builtins(tree))


def _dynamic_keys() -> dict[str, str]:
    """Dotted key -> Kafka name of every dynamic setting."""
    return {f"{section}.{key}": name for name, (section, key) in dynamic_settings().items()}


def classify(old: BrokerConfig, new: BrokerConfig) -> ConfigChange:
    """The change from `old` to `new` (both rendered configurations)."""
    before, after = _leaves(old), _leaves(new)
    names = _dynamic_keys()
    dynamic: dict[str, str] = {}
    restart: list[str] = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        name = names.get(key)
        if name is not None and after.get(key) is not None:
            dynamic[name] = kafka_value(after[key])
        else:
            restart.append(key)
    return ConfigChange(dynamic, tuple(restart))


def restart_part(config: BrokerConfig) -> BrokerConfig:
    """`config` with every dynamic setting at its default (what a restart is needed for)."""
    by_section: dict[str, list[str]] = {}
    for section, key in dynamic_settings().values():
        by_section.setdefault(section, []).append(key)
    changes = {}
    for section, keys in by_section.items():
        part = getattr(config, section)
        defaults = type(part)()
        changes[section] = msgspec.structs.replace(part, **{k: getattr(defaults, k) for k in keys})
    return msgspec.structs.replace(config, **changes)


def desired(config: BrokerConfig) -> dict[str, str]:
    """Kafka name -> value of every dynamic setting `config` gives a value."""
    out = {}
    for name, (section, key) in dynamic_settings().items():
        value = getattr(getattr(config, section), key)
        if value is not None:
            out[name] = kafka_value(value)
    return out
