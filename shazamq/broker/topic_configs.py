"""Topic-level settings as Kafka names them: validation and description.

The log owns the settings that change how it stores data (`LogConfig`, `CONFIG_DEFS`).
A few more topic settings that clients routinely send (`min.insync.replicas`,
`unclean.leader.election.enable`, ...) belong to the broker; they are defined here so
CreateTopics, AlterConfigs and DescribeConfigs see one table of everything a topic can be
told. Deprecated settings Kafka still accepts are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from shazamq.broker.log.errors import InvalidConfigError
from shazamq.broker.log.log_config import CONFIG_DEFS, LogConfig

# Kafka's ConfigSource values (DescribeConfigs).
SOURCE_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5

# Kafka's ConfigType values (DescribeConfigs v3+).
CONFIG_TYPES = {"boolean": 1, "string": 2, "int": 3, "short": 4, "long": 5, "double": 6, "list": 7}


@dataclass(frozen=True, slots=True)
class BrokerTopicSetting:
    """A topic setting the broker (not the log) interprets."""

    name: str
    type: str
    default: str
    doc: str
    check: Callable[[str], str | None]  # returns a problem, or None when valid


def _bool(value: str) -> str | None:
    return None if value.lower() in ("true", "false") else "must be true or false"


def _int_at_least(low: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            n = int(value)
        except ValueError:
            return "must be an integer"
        return None if n >= low else f"must be at least {low}"

    return check


def _nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


# Set on a topic the broker mirrors from a foreign cluster (``shazamq.mirror``), naming
# its origin; producers may not write while it is set. Clients cannot set or change it;
# deleting it (IncrementalAlterConfigs DELETE) promotes the topic.
MIRROR_SOURCE = "shazamq.mirror.source"
# A promotion under way: the marker's value gets this suffix (the copy stops at once,
# producers still may not write) until every partition's leader has ended the copy there;
# then the marker goes.
MIRROR_PROMOTING = ";promoting"


# Set on a promoted topic, for good: per partition (comma-separated, by index) the offset
# where its copy ended. Producer state below it is the source producers'; a local producer
# that turns out to hold one of their ids is refused there (see produce).
MIRROR_PROMOTED_AT = "shazamq.mirror.promoted_at"
_CLIENT_READ_ONLY = (MIRROR_SOURCE, MIRROR_PROMOTED_AT)


@lru_cache(maxsize=256)
def promotion_points(value: str) -> tuple[int, ...]:
    """The offsets of a ``shazamq.mirror.promoted_at`` value; ValueError if malformed."""
    points = tuple(int(v) for v in value.split(","))
    if any(p < -1 for p in points):
        raise ValueError(value)
    return points


def _promotion_points(value: str) -> str | None:
    try:
        promotion_points(value)
    except ValueError:
        return "must be offsets separated by commas"
    return None


def is_promoting(mark: str) -> bool:
    return mark.endswith(MIRROR_PROMOTING)


def promoting(mark: str) -> str:
    """The marker of a topic whose promotion is under way."""
    return mark if is_promoting(mark) else mark + MIRROR_PROMOTING


def mirror_read_only_message(topic: str, mark: str) -> str:
    """The error producers get for a mirrored topic."""
    if is_promoting(mark):
        return (
            f"topic {topic} is being promoted from a read-only mirror of "
            f"{mark.removesuffix(MIRROR_PROMOTING)}; it is writable once every partition's "
            "copy has ended"
        )
    return (
        f"topic {topic} is a read-only mirror of {mark}; promote it (delete its "
        f"{MIRROR_SOURCE} setting) to write to it"
    )


def check_client_change(
    name: str,
    old: Mapping[str, str],
    new: Mapping[str, str],
    *,
    replace: bool,
    promote_in_steps: bool = False,
) -> dict[str, str]:
    """The configs to store after a client's change of ``old`` into ``new``.

    A client may delete the mirror marker (promotion) but never set or change it; a whole
    replacement (AlterConfigs, which names every setting) keeps it. With
    ``promote_in_steps`` (a broker that mirrors) the deleted marker turns into its
    promoting form: the mirror service ends the copy of every partition and then removes
    it. The promotion points of a promoted topic are kept the same way, and may be
    deleted (which ends the refusal of producers whose ids the source's used there).
    Raises InvalidConfigError.
    """
    for key in _CLIENT_READ_ONLY:
        after = new.get(key)
        if after is not None and after != old.get(key):
            raise InvalidConfigError(
                key, f"is set by mirroring only, not by clients (topic {name})"
            )
    out = dict(new)
    if replace and MIRROR_PROMOTED_AT in old:
        out[MIRROR_PROMOTED_AT] = old[MIRROR_PROMOTED_AT]
    before = old.get(MIRROR_SOURCE)
    if before is not None and MIRROR_SOURCE not in new and (replace or promote_in_steps):
        out[MIRROR_SOURCE] = before if replace else promoting(before)
    return out


BROKER_TOPIC_SETTINGS: dict[str, BrokerTopicSetting] = {
    s.name: s
    for s in (
        BrokerTopicSetting(
            "min.insync.replicas",
            "int",
            "1",
            "Replicas that must have a batch before an acks=all produce succeeds.",
            _int_at_least(1),
        ),
        BrokerTopicSetting(
            "unclean.leader.election.enable",
            "boolean",
            "false",
            "Whether a replica outside the ISR may become leader (losing data).",
            _bool,
        ),
        BrokerTopicSetting(
            "message.downconversion.enable",
            "boolean",
            "true",
            "Accepted for compatibility; record batches are always served as stored.",
            _bool,
        ),
        BrokerTopicSetting(
            "preallocate",
            "boolean",
            "false",
            "Accepted for compatibility; segment files grow as they are written.",
            _bool,
        ),
        BrokerTopicSetting(
            "remote.storage.enable",
            "boolean",
            "false",
            "Tiered storage for this topic (needs [tiered_storage] enabled on the broker, "
            "where topics without this setting are tiered).",
            _bool,
        ),
        BrokerTopicSetting(
            MIRROR_SOURCE,
            "string",
            "",
            "Set on a mirrored topic by the broker: <source>:<topic>@<source cluster id>. "
            "Producers may not write while it is set; deleting it promotes the topic.",
            _nonempty,
        ),
        BrokerTopicSetting(
            MIRROR_PROMOTED_AT,
            "string",
            "",
            "Set on a promoted mirror by the broker: per partition, the offset where the "
            "copy ended. A local producer whose id a source producer used below it is "
            "refused (UNKNOWN_PRODUCER_ID) and takes a new id.",
            _promotion_points,
        ),
    )
}


# Settings Kafka 3.x/4.x still accepts on a topic though they no longer do anything:
# accepted (CreateTopics, AlterConfigs) and ignored, with a log line; never described.
DEPRECATED_TOPIC_SETTINGS = frozenset(
    {
        "message.format.version",
        "message.timestamp.difference.max.ms",
    }
)


def deprecated_in(overrides: Mapping[str, str]) -> list[str]:
    """The deprecated (ignored) settings among ``overrides``."""
    return sorted(k for k in overrides if k in DEPRECATED_TOPIC_SETTINGS)


def known_names() -> list[str]:
    return sorted({*CONFIG_DEFS, *BROKER_TOPIC_SETTINGS})


def validate(defaults: LogConfig, overrides: Mapping[str, str]) -> LogConfig:
    """Check every override; return the topic's LogConfig. Raises InvalidConfigError."""
    log_overrides = {}
    for key, value in overrides.items():
        setting = BROKER_TOPIC_SETTINGS.get(key)
        if key in DEPRECATED_TOPIC_SETTINGS and setting is None:
            continue
        if setting is not None:
            problem = setting.check(value)
            if problem:
                raise InvalidConfigError(key, problem)
        elif key in CONFIG_DEFS:
            log_overrides[key] = value
        else:
            raise InvalidConfigError(key, "unknown topic configuration")
    return defaults.with_overrides(log_overrides)


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One row of DescribeConfigs."""

    name: str
    value: str | None
    read_only: bool
    config_source: int
    config_type: int
    documentation: str
    is_default: bool


def describe(
    kafka_defaults: LogConfig,
    broker_defaults: LogConfig,
    overrides: Mapping[str, str],
    keys: list[str] | None = None,
) -> list[ConfigEntry]:
    """Every topic setting with its effective value and where that value comes from."""
    effective = validate(broker_defaults, overrides).to_kafka()
    broker_values = broker_defaults.to_kafka()
    kafka_values = kafka_defaults.to_kafka()
    entries = []
    for name in known_names():
        if keys is not None and name not in keys:
            continue
        if name in CONFIG_DEFS:
            d = CONFIG_DEFS[name]
            value = effective[name]
            type_, doc = d.type, d.doc
            if name in overrides:
                source = SOURCE_TOPIC
            elif broker_values[name] != kafka_values[name]:
                source = SOURCE_STATIC_BROKER
            else:
                source = SOURCE_DEFAULT
        else:
            s = BROKER_TOPIC_SETTINGS[name]
            value = overrides.get(name, s.default)
            type_, doc = s.type, s.doc
            source = SOURCE_TOPIC if name in overrides else SOURCE_DEFAULT
        entries.append(
            ConfigEntry(
                name=name,
                value=value,
                read_only=False,
                config_source=source,
                config_type=CONFIG_TYPES.get(type_, 0),
                documentation=doc,
                is_default=source == SOURCE_DEFAULT,
            )
        )
    return entries
