"""Group-level settings of consumer groups (Kafka 4's ``consumer.*`` GROUP configs). Pure.

A group may override the broker's ``group.consumer.session.timeout.ms`` and
``group.consumer.heartbeat.interval.ms`` with ``consumer.session.timeout.ms`` and
``consumer.heartbeat.interval.ms`` (DescribeConfigs / IncrementalAlterConfigs on a GROUP
resource). An override must stay within the broker's ``group.consumer.min/max.*`` bounds,
and the heartbeat interval must stay below the session timeout, as Kafka checks. The
overrides are kept with the group's other settings (:mod:`.share_coordinator` stores the
whole set of a group); the consumer group coordinator reads them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "HEARTBEAT_INTERVAL",
    "SESSION_TIMEOUT",
    "SETTING_NAMES",
    "ConsumerDefaults",
    "defaults_as_strings",
    "is_consumer_setting",
    "validate",
]

SESSION_TIMEOUT = "consumer.session.timeout.ms"
HEARTBEAT_INTERVAL = "consumer.heartbeat.interval.ms"
SETTING_NAMES = (HEARTBEAT_INTERVAL, SESSION_TIMEOUT)


class ConsumerSettingError(ValueError):
    """A consumer group setting out of its range or not a number (INVALID_CONFIG)."""


@dataclass(frozen=True, slots=True)
class ConsumerDefaults:
    """The broker's values and the bounds a group's overrides must respect."""

    session_timeout_ms: int = 45000
    min_session_timeout_ms: int = 45000
    max_session_timeout_ms: int = 60000
    heartbeat_interval_ms: int = 5000
    min_heartbeat_interval_ms: int = 5000
    max_heartbeat_interval_ms: int = 15000


def is_consumer_setting(name: str) -> bool:
    return name in SETTING_NAMES


def defaults_as_strings(d: ConsumerDefaults) -> dict[str, str]:
    return {
        SESSION_TIMEOUT: str(d.session_timeout_ms),
        HEARTBEAT_INTERVAL: str(d.heartbeat_interval_ms),
    }


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ConsumerSettingError(f"{name} must be an integer, not {value!r}") from None
    if not lo <= n <= hi:
        raise ConsumerSettingError(f"{name} must be between {lo} and {hi}, not {n}")
    return n


def validate(d: ConsumerDefaults, values: Mapping[str, str]) -> dict[str, str]:
    """The normalized ``consumer.*`` overrides of ``values`` (other names are left to the
    caller); ConsumerSettingError names the first bad one."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if name == SESSION_TIMEOUT:
            out[name] = str(_int(name, value, d.min_session_timeout_ms, d.max_session_timeout_ms))
        elif name == HEARTBEAT_INTERVAL:
            lo, hi = d.min_heartbeat_interval_ms, d.max_heartbeat_interval_ms
            out[name] = str(_int(name, value, lo, hi))
    if out:
        hb, session = interval_ms(d, out), session_ms(d, out)
        if hb >= session:
            raise ConsumerSettingError(
                f"{HEARTBEAT_INTERVAL} ({hb}) must be lower than {SESSION_TIMEOUT} ({session})"
            )
    return out


def session_ms(d: ConsumerDefaults, overrides: Mapping[str, str]) -> int:
    """The session timeout a group's members get."""
    return int(overrides.get(SESSION_TIMEOUT, d.session_timeout_ms))


def interval_ms(d: ConsumerDefaults, overrides: Mapping[str, str]) -> int:
    """The heartbeat interval a group's members are told."""
    return int(overrides.get(HEARTBEAT_INTERVAL, d.heartbeat_interval_ms))
