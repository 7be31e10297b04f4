"""The group coordinator: consumer group membership, rebalances and committed offsets.

:class:`GroupCoordinator` is the front. Beneath it: :mod:`.group`, the classic rebalance
state machine; :mod:`.membership`, the JoinGroup/SyncGroup/Heartbeat/LeaveGroup protocol
and its timers; :mod:`.offsets`, commits, fetches and retention; :mod:`.offsets_codec`,
the ``__consumer_offsets`` record formats; :mod:`.offsets_store`, their writing and
loading; :mod:`.internal_topic`, the door to the log both coordinators use; and
:mod:`.partitioning`, Kafka's key-to-partition function.
"""

from .coordinator import GroupCoordinator

__all__ = ["GroupCoordinator"]
