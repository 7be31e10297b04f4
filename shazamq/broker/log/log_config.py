"""The topic-level settings the log obeys, under their Kafka names.

``LogConfig`` is a frozen value: the broker builds the default one from its own
configuration (the single source of truth for broker-wide defaults), and a topic's
overrides (CreateTopics, AlterConfigs, the stored topic config) are applied with
:meth:`LogConfig.with_overrides`, which parses Kafka's string values, checks them against
:data:`CONFIG_DEFS` and raises :class:`~shazamq.broker.log.errors.InvalidConfigError`
(INVALID_CONFIG, 40) naming the key and the problem. The dataclass defaults are Kafka's
documented defaults, nothing more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import InvalidConfigError

__all__ = ["COMPRESSION_TYPES", "CONFIG_DEFS", "ConfigDef", "LogConfig"]

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

CLEANUP_DELETE = "delete"
CLEANUP_COMPACT = "compact"
CREATE_TIME = "CreateTime"
LOG_APPEND_TIME = "LogAppendTime"


# compression.type: "producer" keeps each batch's codec; the others name the stored codec
COMPRESSION_TYPES = ("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd")
COMPRESSION_CODECS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


class ConfigDef(NamedTuple):
    """One setting: Kafka name, attribute, type, bounds or choices, documentation."""

    name: str
    attr: str
    type: str  # "int", "long", "double", "string", "list"
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    doc: str


def _d(
    name: str,
    type_: str,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> ConfigDef:
    return ConfigDef(name, name.replace(".", "_"), type_, minimum, maximum, choices, doc)


CONFIG_DEFS: dict[str, ConfigDef] = {
    d.name: d
    for d in (
        _d(
            "segment.bytes",
            "int",
            "Size of a segment file; a new segment is rolled when the next batch would exceed it.",
            minimum=14,
        ),
        _d(
            "segment.ms",
            "long",
            "Roll a new segment after this long even if it is not full, so retention and "
            "compaction can act on the data.",
            minimum=1,
        ),
        _d(
            "segment.jitter.ms",
            "long",
            "Random amount subtracted from segment.ms per segment to avoid rolling many "
            "partitions at once.",
            minimum=0,
        ),
        _d(
            "segment.index.bytes",
            "int",
            "Maximum size of a segment's offset index (and bound of its time index); a full "
            "index rolls the segment.",
            minimum=4,
        ),
        _d(
            "retention.ms",
            "long",
            "Delete closed segments whose newest timestamp is older than this; -1 keeps "
            "data forever. Applies with the 'delete' cleanup policy.",
            minimum=-1,
        ),
        _d(
            "local.retention.ms",
            "long",
            "With tiered storage: how long a segment stays on local disk once it is in the "
            "bucket; -2 means retention.ms.",
            minimum=-2,
        ),
        _d(
            "local.retention.bytes",
            "long",
            "With tiered storage: local bytes kept once segments are in the bucket; -2 means "
            "retention.bytes.",
            minimum=-2,
        ),
        _d(
            "retention.bytes",
            "long",
            "Delete the oldest closed segments while the partition is larger than this; -1 "
            "means no size limit. Applies with the 'delete' cleanup policy.",
        ),
        _d(
            "cleanup.policy",
            "list",
            "Comma-separated: 'delete' (retention by time and size), 'compact' (keep the "
            "latest value per key), or both.",
            choices=(CLEANUP_DELETE, CLEANUP_COMPACT),
        ),
        _d(
            "delete.retention.ms",
            "long",
            "How long compaction keeps tombstones (and transaction markers) after first "
            "cleaning them, so consumers can observe deletes.",
            minimum=0,
        ),
        _d(
            "min.compaction.lag.ms",
            "long",
            "A record stays uncompacted for at least this long after it was written.",
            minimum=0,
        ),
        _d(
            "max.compaction.lag.ms",
            "long",
            "A record becomes eligible for compaction at most this long after it was "
            "written, whatever the dirty ratio.",
            minimum=1,
        ),
        _d(
            "min.cleanable.dirty.ratio",
            "double",
            "Compact when the uncompacted share of the log reaches this ratio.",
            minimum=0.0,
            maximum=1.0,
        ),
        _d(
            "index.interval.bytes",
            "int",
            "Bytes of log between two entries of the sparse offset index.",
            minimum=0,
        ),
        _d(
            "max.message.bytes",
            "int",
            "Largest record batch the log accepts (after producer compression).",
            minimum=0,
        ),
        _d(
            "message.timestamp.type",
            "string",
            "CreateTime keeps the producer's timestamps; LogAppendTime stamps every batch "
            "with the broker's clock when appended.",
            choices=(CREATE_TIME, LOG_APPEND_TIME),
        ),
        _d(
            "message.timestamp.before.max.ms",
            "long",
            "With CreateTime, reject batches whose timestamp is further than this in the past.",
            minimum=0,
        ),
        _d(
            "message.timestamp.after.max.ms",
            "long",
            "With CreateTime, reject batches whose timestamp is further than this in the future.",
            minimum=0,
        ),
        _d(
            "flush.messages",
            "long",
            "fsync the log after this many records have been appended since the last flush.",
            minimum=1,
        ),
        _d(
            "flush.ms",
            "long",
            "fsync the log when this long has passed since the last flush.",
            minimum=0,
        ),
        _d(
            "compression.type",
            "string",
            "Codec batches are stored in: 'producer' keeps what the producer sent "
            "(appended as-is); uncompressed, gzip, snappy, lz4 or zstd make the broker "
            "recompress batches that arrive in another codec.",
            choices=COMPRESSION_TYPES,
        ),
        _d(
            "file.delete.delay.ms",
            "long",
            "How long a deleted segment's files stay (renamed *.deleted) so in-flight reads "
            "can finish.",
            minimum=0,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Topic-level log settings; attribute names are the Kafka names with '_' for '.'."""

    segment_bytes: int = 1073741824
    segment_ms: int = 604800000
    segment_jitter_ms: int = 0
    segment_index_bytes: int = 10485760
    retention_ms: int = 604800000
    retention_bytes: int = -1
    local_retention_ms: int = -2
    local_retention_bytes: int = -2
    cleanup_policy: tuple[str, ...] = (CLEANUP_DELETE,)
    delete_retention_ms: int = 86400000
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int = INT64_MAX
    min_cleanable_dirty_ratio: float = 0.5
    index_interval_bytes: int = 4096
    max_message_bytes: int = 1048588
    message_timestamp_type: str = CREATE_TIME
    message_timestamp_before_max_ms: int = INT64_MAX
    message_timestamp_after_max_ms: int = INT64_MAX
    flush_messages: int = INT64_MAX
    flush_ms: int = INT64_MAX
    file_delete_delay_ms: int = 60000
    compression_type: str = "producer"

    def __post_init__(self) -> None:
        for d in CONFIG_DEFS.values():
            _check(d, getattr(self, d.attr))
        if self.min_compaction_lag_ms > self.max_compaction_lag_ms:
            raise InvalidConfigError(
                "min.compaction.lag.ms",
                f"{self.min_compaction_lag_ms} exceeds max.compaction.lag.ms "
                f"{self.max_compaction_lag_ms}",
            )

    # ------------------------------------------------------------------ derived
    @property
    def compact(self) -> bool:
        return CLEANUP_COMPACT in self.cleanup_policy

    @property
    def delete(self) -> bool:
        return CLEANUP_DELETE in self.cleanup_policy

    @property
    def target_codec(self) -> int | None:
        """The codec id batches are recompressed to, or None ('producer': as sent)."""
        return COMPRESSION_CODECS.get(self.compression_type)

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == LOG_APPEND_TIME

    # ---------------------------------------------------------------- overrides
    def with_overrides(
        self, overrides: Mapping[str, Any], *, ignore_unknown: bool = False
    ) -> LogConfig:
        """A copy with Kafka-named settings replaced by the parsed ``overrides``.

        Values are Kafka's strings (numbers and lists as text); Python values of the
        right type are accepted too. Unknown keys raise unless ``ignore_unknown``.
        """
        changes: dict[str, Any] = {}
        for key, raw in overrides.items():
            d = CONFIG_DEFS.get(key)
            if d is None:
                if ignore_unknown:
                    continue
                raise InvalidConfigError(key, "not a topic-level log setting")
            changes[d.attr] = _parse(d, raw)
        if not changes:
            return self
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_kafka(cls, settings: Mapping[str, Any], *, ignore_unknown: bool = False) -> LogConfig:
        """Kafka's defaults with ``settings`` applied."""
        return cls().with_overrides(settings, ignore_unknown=ignore_unknown)

    def to_kafka(self) -> dict[str, str]:
        """Every setting as Kafka's name and string value (DescribeConfigs)."""
        out = {}
        for d in CONFIG_DEFS.values():
            value = getattr(self, d.attr)
            if d.type == "list":
                out[d.name] = ",".join(value)
            elif d.type == "double":
                out[d.name] = repr(float(value))
            else:
                out[d.name] = str(value)
        return out


def _parse(d: ConfigDef, raw: Any) -> Any:
    if raw is None:
        raise InvalidConfigError(d.name, "a value is required")
    if d.type in ("int", "long"):
        if isinstance(raw, bool):
            raise InvalidConfigError(d.name, f"{raw!r} is not an integer")
        if isinstance(raw, int):
            value: Any = raw
        else:
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise InvalidConfigError(d.name, f"{raw!r} is not an integer") from None
    elif d.type == "double":
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise InvalidConfigError(d.name, f"{raw!r} is not a number") from None
    elif d.type == "list":
        if isinstance(raw, list | tuple):
            items = [str(x).strip() for x in raw]
        else:
            items = [x.strip() for x in str(raw).split(",")]
        items = [x for x in items if x]
        value = tuple(dict.fromkeys(x.lower() for x in items))
    else:
        value = str(raw).strip()
    _check(d, value)
    return value


def _check(d: ConfigDef, value: Any) -> None:
    if d.type in ("int", "long"):
        lo, hi = (-(2**31), INT32_MAX) if d.type == "int" else (INT64_MIN, INT64_MAX)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InvalidConfigError(d.name, f"{value!r} is not a valid {d.type}")
    elif d.type == "double" and (not isinstance(value, int | float) or math.isnan(value)):
        raise InvalidConfigError(d.name, f"{value!r} is not a number")
    if d.minimum is not None and value < d.minimum:
        raise InvalidConfigError(d.name, f"{value} is below the minimum {d.minimum}")
    if d.maximum is not None and value > d.maximum:
        raise InvalidConfigError(d.name, f"{value} is above the maximum {d.maximum}")
    if d.choices is not None:
        values = value if d.type == "list" else (value,)
        if not isinstance(values, tuple):
            raise InvalidConfigError(d.name, f"{value!r} is not a list")
        for v in values:
            if v not in d.choices:
                raise InvalidConfigError(d.name, f"{v!r} is not one of {', '.join(d.choices)}")
