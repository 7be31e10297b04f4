"""Share groups (KIP-932): membership, assignment and the group-level settings. Pure.

A member joins with epoch 0 and its subscribed topic names, heartbeats with its current
epoch and leaves with -1. The assignment is Kafka's simple assignor for a small group:
every member gets every partition of the topics it subscribes to (share groups let
several members read one partition, the share-partition hands each record to one of
them). The group epoch moves when a member joins, leaves or changes its subscription, or
a subscribed topic's partition count changes; a member's epoch follows the group epoch
whenever it is given a new assignment (there is nothing to revoke in a share group).

Group settings (DescribeConfigs / IncrementalAlterConfigs on a GROUP resource) override
the broker's defaults per group and are validated here, with Kafka's names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "GroupSettingError",
    "ShareDefaults",
    "ShareGroup",
    "ShareMember",
    "ShareSettings",
    "validate_settings",
]

AUTO_OFFSET_RESET = "share.auto.offset.reset"
LOCK_DURATION = "share.record.lock.duration.ms"
DELIVERY_LIMIT = "share.delivery.count.limit"
SESSION_TIMEOUT = "share.session.timeout.ms"
HEARTBEAT_INTERVAL = "share.heartbeat.interval.ms"
ISOLATION_LEVEL = "share.isolation.level"

SETTING_NAMES = (
    AUTO_OFFSET_RESET,
    DELIVERY_LIMIT,
    HEARTBEAT_INTERVAL,
    ISOLATION_LEVEL,
    LOCK_DURATION,
    SESSION_TIMEOUT,
)
# Kafka's group.share.min/max.delivery.count.limit
MIN_DELIVERY_LIMIT, MAX_DELIVERY_LIMIT = 2, 10


class GroupSettingError(ValueError):
    """A group setting that is unknown or out of its range (INVALID_CONFIG)."""


@dataclass(frozen=True, slots=True)
class ShareDefaults:
    """The broker's defaults and the bounds a group's settings must stay within."""

    record_lock_duration_ms: int = 30000
    min_record_lock_duration_ms: int = 15000
    max_record_lock_duration_ms: int = 60000
    delivery_count_limit: int = 5
    session_timeout_ms: int = 45000
    min_session_timeout_ms: int = 6000
    max_session_timeout_ms: int = 1800000
    heartbeat_interval_ms: int = 5000
    max_record_locks: int = 2000


@dataclass(frozen=True, slots=True)
class ShareSettings:
    """A group's effective settings."""

    auto_offset_reset: str
    record_lock_duration_ms: int
    delivery_count_limit: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    isolation_level: str

    @property
    def read_committed(self) -> bool:
        return self.isolation_level == "read_committed"

    @property
    def earliest(self) -> bool:
        return self.auto_offset_reset == "earliest"


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise GroupSettingError(f"{name} must be an integer, not {value!r}") from None
    if not lo <= n <= hi:
        raise GroupSettingError(f"{name} must be between {lo} and {hi}, not {n}")
    return n


def effective(d: ShareDefaults, overrides: Mapping[str, str]) -> ShareSettings:
    """The settings of a group with ``overrides`` (already validated) over the defaults."""
    return ShareSettings(
        auto_offset_reset=overrides.get(AUTO_OFFSET_RESET, "latest"),
        record_lock_duration_ms=int(overrides.get(LOCK_DURATION, d.record_lock_duration_ms)),
        delivery_count_limit=int(overrides.get(DELIVERY_LIMIT, d.delivery_count_limit)),
        session_timeout_ms=int(overrides.get(SESSION_TIMEOUT, d.session_timeout_ms)),
        heartbeat_interval_ms=int(overrides.get(HEARTBEAT_INTERVAL, d.heartbeat_interval_ms)),
        isolation_level=overrides.get(ISOLATION_LEVEL, "read_uncommitted"),
    )


def defaults_as_strings(d: ShareDefaults) -> dict[str, str]:
    return {
        AUTO_OFFSET_RESET: "latest",
        LOCK_DURATION: str(d.record_lock_duration_ms),
        DELIVERY_LIMIT: str(d.delivery_count_limit),
        SESSION_TIMEOUT: str(d.session_timeout_ms),
        HEARTBEAT_INTERVAL: str(d.heartbeat_interval_ms),
        ISOLATION_LEVEL: "read_uncommitted",
    }


def validate_settings(d: ShareDefaults, values: Mapping[str, str]) -> dict[str, str]:
    """The normalized overrides; GroupSettingError names the first bad one."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if name == AUTO_OFFSET_RESET:
            v = value.strip().lower()
            if v not in ("latest", "earliest"):
                raise GroupSettingError(f"{name} must be latest or earliest, not {value!r}")
            out[name] = v
        elif name == ISOLATION_LEVEL:
            v = value.strip().lower()
            if v not in ("read_committed", "read_uncommitted"):
                raise GroupSettingError(
                    f"{name} must be read_committed or read_uncommitted, not {value!r}"
                )
            out[name] = v
        elif name == LOCK_DURATION:
            lo, hi = d.min_record_lock_duration_ms, d.max_record_lock_duration_ms
            out[name] = str(_int(name, value, lo, hi))
        elif name == DELIVERY_LIMIT:
            out[name] = str(_int(name, value, MIN_DELIVERY_LIMIT, MAX_DELIVERY_LIMIT))
        elif name == SESSION_TIMEOUT:
            lo, hi = d.min_session_timeout_ms, d.max_session_timeout_ms
            out[name] = str(_int(name, value, lo, hi))
        elif name == HEARTBEAT_INTERVAL:
            out[name] = str(_int(name, value, 1, d.max_session_timeout_ms))
        else:
            raise GroupSettingError(
                f"{name} is not a share group setting; known: {', '.join(SETTING_NAMES)}"
            )
    hb = int(out.get(HEARTBEAT_INTERVAL, d.heartbeat_interval_ms))
    session = int(out.get(SESSION_TIMEOUT, d.session_timeout_ms))
    if (HEARTBEAT_INTERVAL in out or SESSION_TIMEOUT in out) and hb >= session:
        raise GroupSettingError(
            f"{HEARTBEAT_INTERVAL} ({hb}) must be lower than {SESSION_TIMEOUT} ({session})"
        )
    return out


@dataclass(eq=False, slots=True)
class ShareMember:
    member_id: str
    member_epoch: int = 0
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topic_names: tuple[str, ...] = ()
    assigned: dict[str, frozenset[int]] = field(default_factory=dict)
    last_heartbeat: float = 0.0
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class ShareGroup:
    group_id: str
    group_epoch: int = 0
    assignment_epoch: int = 0
    members: dict[str, ShareMember] = field(default_factory=dict)
    # (topic, partition count) the last assignment was computed from
    subscribed_metadata: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if not self.members:
            return "Empty"
        return "Stable"

    def subscribed_metadata_now(self, topics: Mapping[str, int]) -> dict[str, int]:
        """The partition counts of the subscribed topics that exist (``topics``: name ->
        partition count)."""
        wanted = {t for m in self.members.values() for t in m.subscribed_topic_names}
        return {t: topics[t] for t in sorted(wanted) if t in topics}

    def refresh(self, topics: Mapping[str, int]) -> bool:
        """Bump the group epoch if the subscribed metadata moved; True if it did."""
        now = self.subscribed_metadata_now(topics)
        if now != self.subscribed_metadata:
            self.subscribed_metadata = now
            self.group_epoch += 1
            return True
        return False

    def reconcile(self, member: ShareMember) -> bool:
        """Bring ``member`` to the group epoch with its assignment; True if it changed."""
        target = {
            t: frozenset(range(self.subscribed_metadata[t]))
            for t in member.subscribed_topic_names
            if t in self.subscribed_metadata and self.subscribed_metadata[t] > 0
        }
        self.assignment_epoch = self.group_epoch
        changed = target != member.assigned
        member.assigned = target
        if member.member_epoch != self.group_epoch:
            member.member_epoch = self.group_epoch
            return True
        return changed
