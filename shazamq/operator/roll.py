"""Which broker to restart next in a rolling restart, or why to wait: pure, no I/O.

The StatefulSet's update strategy is ``OnDelete``: the StatefulSet controller only records
the new revision, and the operator restarts brokers itself, one at a time, by deleting a
pod whose ``controller-revision-hash`` is not the update revision (the StatefulSet then
recreates it from the new template). A pod being Ready (its Kafka port answers) is not the
same as its partitions being back in sync, so, as Strimzi's KafkaRoller does, every restart
is decided from the cluster's own view of its partitions:

1. The broker restarted last is waited for until its pod is ready, it is back in the ISR of
   every partition it replicates, and it leads again the partitions it is the preferred
   leader of. The controller moves leadership back on its own, at its next imbalance
   check; a wait for that names the partitions in ``Decision.elect`` so the handler asks
   for a preferred-leader election (ElectLeaders) at once instead.
2. Unready outdated brokers go first: they serve nothing, so restarting them costs nothing.
3. Then the ready outdated brokers, highest ordinal first and the active controller last,
   but only while every other broker is ready (never two down at once) and only a broker
   whose restart leaves every partition it is in sync for at ``min.insync.replicas`` or
   more. A partition whose ``min.insync.replicas`` equals its replication factor never
   blocks: any restart stops its acks=all writes, and waiting would never end.
4. When the brokers can only be seen through their metrics (a listener the operator cannot
   log in to), the partitions are known only as cluster-wide counts, and the rule is
   stricter: no under-replicated partition before a restart, none after it.

`RollProgress` is what the handler persists on the ShazamqCluster (an annotation) so that an
operator restarted mid-roll resumes the wait of step 1 and never restarts a broker twice in
one roll.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shazamq.operator.autoscale import BrokerLoad
from shazamq.operator.restore import RestoreProgress

__all__ = [
    "Broker",
    "ClusterView",
    "Decision",
    "Partition",
    "RollProgress",
    "plan",
]


@dataclass(frozen=True)
class Broker:
    """One broker pod: its ordinal, name, and what Kubernetes says of it."""

    id: int
    pod: str
    exists: bool
    ready: bool
    outdated: bool  # its revision is not the StatefulSet's update revision


@dataclass(frozen=True)
class Partition:
    """One partition as the cluster's metadata has it."""

    topic: str
    index: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    min_isr: int

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.index}"


@dataclass(frozen=True)
class ClusterView:
    """What the brokers say of themselves.

    `partitions` is None when only the brokers' metrics could be read; then
    `under_replicated` (the cluster's total of under-replicated partitions) stands in.
    """

    controller: int | None
    partitions: tuple[Partition, ...] | None
    under_replicated: int | None = None
    # each mirror source as the brokers report it (`MirrorSourceStatus` dicts), for the status
    mirror_sources: tuple[dict[str, Any], ...] = ()
    # each broker's load counters, for the autoscaler
    loads: tuple[BrokerLoad, ...] = ()
    # a restore from the bucket as the brokers report it, if they report one
    restore: RestoreProgress | None = None


@dataclass(frozen=True)
class RollProgress:
    """A roll's memory: the revision rolled to, the brokers restarted for it (in order), and
    the broker restarted last (`in_flight`), waited for before anything else."""

    revision: str | None = None
    restarted: tuple[int, ...] = ()
    in_flight: int | None = None

    def for_revision(self, revision: str) -> RollProgress:
        """The progress of a roll to `revision`: a new roll keeps only the broker in flight
        (still waited for); brokers restarted for an older revision are outdated again."""
        if revision == self.revision:
            return self
        return RollProgress(revision, (), self.in_flight)

    def with_restart(self, broker: int) -> RollProgress:
        return RollProgress(self.revision, (*self.restarted, broker), broker)

    def dumps(self) -> str:
        return json.dumps(
            {
                "revision": self.revision,
                "restarted": list(self.restarted),
                "inFlight": self.in_flight,
            }
        )

    @classmethod
    def loads(cls, text: str | None) -> RollProgress:
        """Parse the persisted progress; anything unreadable is no progress."""
        if not text:
            return cls()
        try:
            raw: Any = json.loads(text)
            revision = raw.get("revision")
            restarted = tuple(int(i) for i in raw.get("restarted") or ())
            in_flight = raw.get("inFlight")
            in_flight = None if in_flight is None else int(in_flight)
        except (ValueError, TypeError, AttributeError):
            return cls()
        return cls(revision if isinstance(revision, str) else None, restarted, in_flight)


@dataclass(frozen=True)
class Decision:
    """``restart`` `broker`, ``wait`` (for `reason`), or ``done`` (nothing is outdated)."""

    action: Literal["restart", "wait", "done"]
    broker: int | None = None
    reason: str = ""
    blocked: tuple[str, ...] = field(default=())  # the partitions a wait is about
    # (topic, partition) whose preferred leader is back in sync but does not lead yet
    elect: tuple[tuple[str, int], ...] = field(default=())


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _blockers(broker: int, partitions: Sequence[Partition]) -> list[Partition]:
    """The partitions a restart of `broker` would take below min.insync.replicas."""
    return [
        p
        for p in partitions
        if broker in p.isr and len(p.isr) - 1 < p.min_isr and p.min_isr < len(p.replicas)
    ]


def _wait_for_restarted(
    broker: Broker, view: ClusterView | None, error: str | None
) -> Decision | None:
    """Step 1: the wait for the broker restarted last, or None when it is back."""
    if not broker.exists or not broker.ready:
        return Decision("wait", broker.id, f"{broker.pod} is restarting: its pod is not ready")
    if view is None:
        return Decision("wait", broker.id, f"cannot read the cluster's partitions: {error}")
    if view.partitions is None:
        if view.under_replicated is None or view.under_replicated > 0:
            what = "an unknown number of" if view.under_replicated is None else None
            what = what or str(view.under_replicated)
            return Decision(
                "wait",
                broker.id,
                f"{broker.pod} restarted: {what} partitions are under-replicated",
            )
        return None
    missing = [
        p.name for p in view.partitions if broker.id in p.replicas and broker.id not in p.isr
    ]
    if missing:
        return Decision(
            "wait",
            broker.id,
            f"{broker.pod} is not back in the in-sync replicas of {_few(missing)}",
            tuple(missing),
        )
    not_led = [
        p
        for p in view.partitions
        if p.replicas and p.replicas[0] == broker.id and p.leader != broker.id
    ]
    if not_led:
        names = [p.name for p in not_led]
        return Decision(
            "wait",
            broker.id,
            f"{broker.pod} is not yet the leader again of {_few(names)} (preferred leader)",
            tuple(names),
            tuple((p.topic, p.index) for p in not_led),
        )
    return None


def plan(
    brokers: Sequence[Broker],
    view: ClusterView | None,
    progress: RollProgress,
    *,
    error: str | None = None,
) -> Decision:
    """The next step of the roll (see the module docstring). `view` is None when the
    cluster could not be read (`error` says why)."""
    by_id = {b.id: b for b in brokers}
    last = progress.in_flight
    if last is not None and last in by_id:
        waiting = _wait_for_restarted(by_id[last], view, error)
        if waiting is not None:
            return waiting
    outdated = [b for b in brokers if b.exists and b.outdated and b.id not in progress.restarted]
    if not outdated:
        return Decision("done")
    unready = sorted((b for b in outdated if not b.ready), key=lambda b: -b.id)
    if unready:
        return Decision("restart", unready[0].id, f"{unready[0].pod} is outdated and not ready")
    down = [b.pod for b in brokers if not (b.exists and b.ready)]
    if down:
        return Decision("wait", None, f"{_few(down)} not ready: only one broker down at a time")
    if view is None:
        return Decision("wait", None, f"cannot read the cluster's partitions: {error}")
    controller = view.controller
    candidates = sorted(outdated, key=lambda b: (b.id == controller, -b.id))
    if view.partitions is None:
        if view.under_replicated is None:
            return Decision("wait", None, "cannot tell whether partitions are under-replicated")
        if view.under_replicated > 0:
            return Decision(
                "wait",
                None,
                f"{view.under_replicated} partitions are under-replicated: "
                "a restart could take one below min.insync.replicas",
            )
        first = candidates[0]
        return Decision("restart", first.id, _why(first, controller))
    first_blocked: Decision | None = None
    for broker in candidates:
        blockers = _blockers(broker.id, view.partitions)
        if not blockers:
            return Decision("restart", broker.id, _why(broker, controller))
        if first_blocked is None:
            p = blockers[0]
            names = [b.name for b in blockers]
            first_blocked = Decision(
                "wait",
                broker.id,
                f"restarting {broker.pod} would take {_few(names)} below min.insync.replicas "
                f"({p.name}: {len(p.isr)} in sync, minimum {p.min_isr})",
                tuple(names),
            )
    assert first_blocked is not None
    return first_blocked


def _why(broker: Broker, controller: int | None) -> str:
    role = " (the active controller, last)" if broker.id == controller else ""
    return f"{broker.pod} is outdated{role}"
