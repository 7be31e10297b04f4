"""The cluster's topics in the shape the rest of the broker reads: `TopicInfo` by name and id.

On a single broker `MetadataStore` answers "which topics exist"; in a cluster this view
answers the same questions from the replicated state, kept current as records apply, so
handlers and coordinators read topics the same way in both modes. Changes do not go
through here: `PartitionManager` sends them to the controller (`ClusterNode`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from .metadata import TopicInfo
from .node import ClusterNode
from .state import TopicState


def topic_info(t: TopicState) -> TopicInfo:
    return TopicInfo(
        name=t.name,
        topic_id=t.topic_id,
        partitions=len(t.partitions),
        replication_factor=len(t.partitions[0].replicas) if t.partitions else 0,
        configs=dict(t.configs),
        internal=t.internal,
    )


class ClusterMetadataView:
    """Read-only topics of the cluster state, updated on every applied change."""

    def __init__(self, node: ClusterNode, on_configs: Callable[[TopicInfo], None]) -> None:
        self._node = node
        self._on_configs = on_configs
        self.topics: dict[str, TopicInfo] = {}
        self.by_id: dict[uuid.UUID, TopicInfo] = {}
        node.on_topics_changed.append(self._changed)

    @property
    def cluster_id(self) -> str:
        return self._node.state.cluster_id or ""

    def get(self, name: str) -> TopicInfo | None:
        return self.topics.get(name)

    def _changed(self, topic_ids: set[str], deleted: list[TopicState]) -> None:
        for t in deleted:
            old = self.topics.pop(t.name, None)
            if old is not None:
                self.by_id.pop(old.uuid, None)
        state = self._node.state
        for topic_id in topic_ids:
            t = state.by_id.get(topic_id)
            if t is None:
                continue
            info = topic_info(t)
            old = self.topics.get(t.name)
            if old is not None and old.topic_id == info.topic_id:
                # keep the object the hosted partitions hold, so they see the change
                configs_changed = old.configs != info.configs
                old.partitions = info.partitions
                old.replication_factor = info.replication_factor
                old.configs = info.configs
                if configs_changed:
                    self._on_configs(old)
                continue
            self.topics[t.name] = info
            self.by_id[info.uuid] = info
