"""Consumer group offsets: the source's commits on mirrored topics, kept here too.

Local offsets equal source offsets, so a committed offset needs no translation: it is
copied as is (under the local topic name), once the copy has reached it. The mirror
commits as an admin would (no member, generation -1) with the metadata
``shazamq-mirror:<source>``, which is how it later recognises its own commits: an offset
committed here by a client (any other metadata) is never overwritten, and neither is
anything of a group that has members here.

In a cluster each broker syncs the groups it coordinates (the leader of the group's
``__consumer_offsets`` partition): that is where the group's state, its members and its
committed offsets are, so the checks above and the commit are local, and a coordinator
moving moves the sync with it. An offset is synced once the copy's high watermark has
passed it (every in-sync replica has the data), as this broker's replica of the
partition knows it; a partition with no replica on the coordinator's broker is not synced
(not built: asking its leader).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from .local import LocalBroker
from .selection import GroupSelector
from .source import SourceCluster
from .stats import SourceStats

__all__ = ["GroupOffsetSync", "sync_tag"]

log = logging.getLogger(__name__)


def sync_tag(source: str) -> str:
    return f"shazamq-mirror:{source}"


class GroupOffsetSync:
    """One source's group offset sync; ``sync_once`` is called on the source's schedule."""

    def __init__(
        self,
        *,
        source: SourceCluster,
        local: LocalBroker,
        selector: GroupSelector,
        topics: Callable[[], Mapping[str, str]],
        stats: SourceStats,
    ) -> None:
        self.source = source
        self.local = local
        self.selector = selector
        self.topics = topics  # source topic -> local topic, of the topics mirrored now
        self.stats = stats
        self.tag = sync_tag(source.name)

    async def sync_once(self) -> int:
        """Copy every selected group's offsets that may be copied; returns how many."""
        mirrored = dict(self.topics())
        if not mirrored:
            return 0
        total = 0
        for group_id in await self.source.list_groups():
            if (
                not self.selector.selects(group_id)
                or not self.local.coordinates(group_id)
                or self.local.group_active(group_id)
            ):
                continue
            offsets = await self.source.group_offsets(group_id)
            total += await self._sync_group(group_id, offsets, mirrored)
        self.stats.offsets_synced += total
        return total

    async def _sync_group(
        self, group_id: str, offsets: Mapping[tuple[str, int], int], mirrored: Mapping[str, str]
    ) -> int:
        wanted: dict[tuple[str, int], int] = {}
        for (topic, index), offset in offsets.items():
            local_topic = mirrored.get(topic)
            if local_topic is None:
                continue
            p = self.local.partition(local_topic, index)
            if p is None or offset > self.local.copied_up_to(p):
                continue  # not copied that far yet: a later round syncs it
            wanted[(local_topic, index)] = offset
        if not wanted:
            return 0
        current = self.local.committed(group_id, list(wanted))
        commits = {}
        for tp, offset in wanted.items():
            have = current.get(tp)
            if have is None or (have[1] == self.tag and have[0] != offset):
                commits[tp] = offset
        if not commits or self.local.group_active(group_id):
            return 0
        result = await self.local.commit(group_id, commits, self.tag)
        failed = {tp: code for tp, code in result.items() if code}
        if failed:
            log.info(
                "mirror %s: group %s: %d offsets not synced (errors %s)",
                self.source.name,
                group_id,
                len(failed),
                sorted(set(failed.values())),
            )
        return len(commits) - len(failed)
