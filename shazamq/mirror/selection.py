"""Which source topics and groups are mirrored, and how a mirrored topic is marked (pure).

A mirrored topic carries the topic setting ``shazamq.mirror.source`` whose value names its
origin: ``<source name>:<source topic>@<source cluster id>``. The source name is a DNS
label and a topic name has no ``:`` or ``@``, so the value parses back unambiguously. The
marker makes the topic read-only to producers and shows in DescribeConfigs; deleting it
(IncrementalAlterConfigs, or ``promoted_topics``) promotes the topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from shazamq.broker.cluster.metadata import MAX_TOPIC_NAME
from shazamq.broker.topic_configs import MIRROR_PROMOTING

__all__ = ["Decision", "GroupSelector", "MirrorMark", "TopicSelector"]


@dataclass(frozen=True, slots=True)
class MirrorMark:
    """Where a mirrored topic comes from."""

    source: str
    topic: str
    cluster_id: str

    def encode(self) -> str:
        return f"{self.source}:{self.topic}@{self.cluster_id}"

    @classmethod
    def parse(cls, value: str) -> MirrorMark:
        """The mark in ``value`` (also in its promoting form); ValueError if it is not
        one."""
        head, at, cluster_id = value.removesuffix(MIRROR_PROMOTING).rpartition("@")
        source, colon, topic = head.partition(":")
        if not (at and colon and source and topic) or "@" in topic:
            raise ValueError(f"{value!r} is not <source>:<topic>@<cluster id>")
        return cls(source, topic, cluster_id)


class Decision(Enum):
    """What becomes of one source topic."""

    MIRROR = "mirrored"
    INTERNAL = "an internal topic"
    NOT_WHITELISTED = "not matched by topic_whitelist"
    BLACKLISTED = "matched by topic_blacklist"
    PROMOTED = "promoted"
    LOOP = "a mirror of this cluster's own topic"
    NAME_TOO_LONG = "too long a name with the topic prefix"


def _compile(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


@dataclass(frozen=True)
class TopicSelector:
    """The topic rules of one source: whitelist minus blacklist, prefix, promotions."""

    whitelist: tuple[str, ...] = (".*",)
    blacklist: tuple[str, ...] = ()
    prefix: str = ""
    promoted: frozenset[str] = frozenset()
    _white: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _black: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_white", _compile(self.whitelist))
        object.__setattr__(self, "_black", _compile(self.blacklist))

    def local_name(self, source_topic: str) -> str:
        return self.prefix + source_topic

    def decide(
        self, source_topic: str, *, source_mark: str | None = None, local_cluster_id: str = ""
    ) -> Decision:
        """Whether to mirror ``source_topic``.

        ``source_mark`` is the topic's own ``shazamq.mirror.source`` at the source (when
        the source is a Shazamq cluster that mirrors it from elsewhere): a topic mirrored
        from this very cluster is never mirrored back.
        """
        if source_topic.startswith("__"):
            return Decision.INTERNAL
        if not any(p.fullmatch(source_topic) for p in self._white):
            return Decision.NOT_WHITELISTED
        if any(p.fullmatch(source_topic) for p in self._black):
            return Decision.BLACKLISTED
        if self.local_name(source_topic) in self.promoted:
            return Decision.PROMOTED
        if len(self.local_name(source_topic)) > MAX_TOPIC_NAME:
            return Decision.NAME_TOO_LONG
        if source_mark and local_cluster_id:
            try:
                origin = MirrorMark.parse(source_mark)
            except ValueError:
                origin = None
            if origin is not None and origin.cluster_id == local_cluster_id:
                return Decision.LOOP
        return Decision.MIRROR


@dataclass(frozen=True)
class GroupSelector:
    """The consumer groups whose committed offsets are synced."""

    whitelist: tuple[str, ...] = (".*",)
    blacklist: tuple[str, ...] = ()
    excluded: frozenset[str] = frozenset()  # the mirror's own group on the source
    _white: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _black: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_white", _compile(self.whitelist))
        object.__setattr__(self, "_black", _compile(self.blacklist))

    def selects(self, group_id: str) -> bool:
        return (
            group_id not in self.excluded
            and any(p.fullmatch(group_id) for p in self._white)
            and not any(p.fullmatch(group_id) for p in self._black)
        )
