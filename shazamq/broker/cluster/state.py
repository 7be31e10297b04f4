"""The cluster's metadata as a deterministic state machine over the records of `records.py`.

Every node applies the same committed records in the same order and so holds the same
state: brokers with their incarnations and fencing, topics with ids and configs, for
each partition its replicas, leader, leader epoch, partition epoch and ISR (KRaft's
model), the SCRAM credentials set through AlterUserScramCredentials (salt,
iterations, StoredKey, ServerKey per user and mechanism) and the ACLs (CreateAcls,
DeleteAcls), the client quotas (AlterClientQuotas) and the group settings (GROUP
resources of IncrementalAlterConfigs). Applying never consults a
clock or a random source; a record that is stale when it commits (an ISR change made
under an old epoch, a producer-id block someone else took) is rejected with a Kafka error
code and changes nothing.

The instance also collects what each apply changed (`take_changes`), so the broker can
react to just those partitions.
"""

from __future__ import annotations

import msgspec

from shazamq.protocol.errors import ErrorCode

from ..quotas.entities import (
    Entity,
    StoredQuota,
    apply_ops,
    check_entity,
    check_op,
    from_stored,
    to_stored,
)
from ..security.acl import AclBinding, validate
from ..security.sasl import MAX_ITERATIONS, MIN_ITERATIONS, SCRAM_HASHES
from . import records as r
from .metadata import ScramCredentials, ScramEntry
from .placement import choose_leader

SNAPSHOT_VERSION = 1
# producer ids are handed out in blocks, as KRaft does (AllocateProducerIds)
PRODUCER_ID_BLOCK = 1000


class BrokerInfo(msgspec.Struct, kw_only=True):
    broker_id: int
    incarnation: str
    host: str
    port: int
    rack: str | None = None
    fenced: bool = False
    # set by a controlled shutdown, cleared by the next registration or heartbeat
    shutting_down: bool = False


class PartitionInfo(msgspec.Struct, kw_only=True):
    replicas: list[int]
    isr: list[int]
    leader: int
    leader_epoch: int = 0
    partition_epoch: int = 0
    # an ongoing reassignment: the replicas it ends with (replicas holds old + new), and
    # which of them it added
    target: list[int] | None = None
    adding: list[int] = msgspec.field(default_factory=list)


class TopicState(msgspec.Struct, kw_only=True):
    name: str
    topic_id: str
    configs: dict[str, str] = msgspec.field(default_factory=dict)
    internal: bool = False
    partitions: list[PartitionInfo] = msgspec.field(default_factory=list)
    # partition -> promotion point, for the partitions whose mirror copy was ended by
    # their leader (a promotion under way); defaulted: older snapshots still restore
    mirror_sealed: dict[int, int] = msgspec.field(default_factory=dict)


class Snapshot(msgspec.Struct, kw_only=True):
    version: int = SNAPSHOT_VERSION
    cluster_id: str | None = None
    brokers: list[BrokerInfo] = msgspec.field(default_factory=list)
    topics: list[TopicState] = msgspec.field(default_factory=list)
    next_producer_id: int = 0
    controller_id: int = -1
    controller_epoch: int = 0
    # defaulted: snapshots taken before credentials were replicated still restore
    scram: ScramCredentials = msgspec.field(default_factory=dict)
    # defaulted: snapshots taken before ACLs were replicated still restore
    acls: list[AclBinding] = msgspec.field(default_factory=list)
    # defaulted: snapshots taken before client quotas were replicated still restore
    quotas: list[StoredQuota] = msgspec.field(default_factory=list)
    # defaulted: snapshots taken before group settings were replicated still restore
    group_configs: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    # a restore from the tiered-storage bucket is under way (InitCluster .. FinishRestore)
    restoring: bool = False


class Changes(msgspec.Struct, kw_only=True):
    """What the applied records touched, for the broker to react to."""

    partitions: set[tuple[str, int]] = msgspec.field(default_factory=set)  # (topic id, index)
    deleted_topics: list[TopicState] = msgspec.field(default_factory=list)
    topics: set[str] = msgspec.field(default_factory=set)  # topic ids created/changed
    brokers: set[int] = msgspec.field(default_factory=set)
    cluster_id: bool = False
    scram_users: set[str] = msgspec.field(default_factory=set)  # credentials set or deleted
    acls: bool = False  # an ACL was created or deleted
    quotas: bool = False  # a client quota was set or removed
    group_configs: set[str] = msgspec.field(default_factory=set)  # groups whose settings moved

    def __bool__(self) -> bool:
        return bool(
            self.partitions
            or self.deleted_topics
            or self.topics
            or self.brokers
            or self.cluster_id
            or self.scram_users
            or self.acls
            or self.quotas
            or self.group_configs
        )


def _unclean_allowed(topic: TopicState, default: bool) -> bool:
    value = topic.configs.get("unclean.leader.election.enable")
    return default if value is None else value.lower() == "true"


class ClusterState:
    """One node's copy of the cluster metadata."""

    def __init__(self, *, unclean_default: bool = False) -> None:
        self.unclean_default = unclean_default
        self.cluster_id: str | None = None
        self.brokers: dict[int, BrokerInfo] = {}
        self.topics: dict[str, TopicState] = {}  # by name
        self.by_id: dict[str, TopicState] = {}  # by topic id (hex)
        self.next_producer_id = 0
        self.controller_id = -1
        self.controller_epoch = 0
        # user -> mechanism -> credential; inner dicts are replaced, never mutated, because
        # PLAIN logins read them from a worker thread
        self.scram: ScramCredentials = {}
        self.acls: set[AclBinding] = set()
        self.quotas: dict[Entity, dict[str, float]] = {}
        # group id -> its settings; inner dicts are replaced, never mutated
        self.group_configs: dict[str, dict[str, str]] = {}
        self.restoring = False  # between InitCluster(restore) and FinishRestore
        self.applied = 0  # records applied since start (replay included)
        self._changes = Changes()

    # -- queries -----------------------------------------------------------------------

    def live_brokers(self) -> dict[int, str | None]:
        """Unfenced brokers (id -> rack): where new replicas may go."""
        return {
            b.broker_id: b.rack
            for b in self.brokers.values()
            if not b.fenced and not b.shutting_down
        }

    def is_live(self, broker_id: int) -> bool:
        b = self.brokers.get(broker_id)
        return b is not None and not b.fenced and not b.shutting_down

    def partition(self, topic_id: str, index: int) -> PartitionInfo | None:
        t = self.by_id.get(topic_id)
        if t is None or not 0 <= index < len(t.partitions):
            return None
        return t.partitions[index]

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    # -- snapshot ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            Snapshot(
                cluster_id=self.cluster_id,
                brokers=sorted(self.brokers.values(), key=lambda b: b.broker_id),
                topics=sorted(self.topics.values(), key=lambda t: t.name),
                next_producer_id=self.next_producer_id,
                controller_id=self.controller_id,
                controller_epoch=self.controller_epoch,
                scram={user: dict(by_mech) for user, by_mech in sorted(self.scram.items())},
                acls=sorted(self.acls),
                quotas=to_stored(self.quotas),
                group_configs=dict(sorted(self.group_configs.items())),
                restoring=self.restoring,
            )
        )

    def restore(self, data: bytes) -> None:
        snap = msgspec.msgpack.decode(data, type=Snapshot)
        if snap.version > SNAPSHOT_VERSION:
            raise ValueError(f"metadata snapshot version {snap.version} is newer than this broker")
        old_topics = list(self.topics.values())
        self.cluster_id = snap.cluster_id
        self.brokers = {b.broker_id: b for b in snap.brokers}
        self.topics = {t.name: t for t in snap.topics}
        self.by_id = {t.topic_id: t for t in snap.topics}
        self.next_producer_id = snap.next_producer_id
        self.controller_id = snap.controller_id
        self.controller_epoch = snap.controller_epoch
        old_users = set(self.scram)
        self.scram = snap.scram
        self.acls = set(snap.acls)
        self.quotas = from_stored(snap.quotas)
        old_groups = set(self.group_configs)
        self.group_configs = snap.group_configs
        self.restoring = snap.restoring
        ch = self._changes
        ch.acls = True
        ch.quotas = True
        ch.group_configs.update(old_groups | set(self.group_configs))
        ch.scram_users.update(old_users | set(self.scram))
        ch.cluster_id = True
        ch.brokers.update(self.brokers)
        ch.deleted_topics.extend(t for t in old_topics if t.topic_id not in self.by_id)
        for t in self.topics.values():
            ch.topics.add(t.topic_id)
            ch.partitions.update((t.topic_id, i) for i in range(len(t.partitions)))

    # -- apply -------------------------------------------------------------------------

    def apply(self, data: bytes) -> int:
        """Apply one committed record; 0 or the Kafka error code it was rejected with."""
        self.applied += 1
        try:
            record = r.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # a record from a newer release: skipped the same way on every node
            return ErrorCode.UNSUPPORTED_VERSION
        handler = getattr(self, "_on_" + type(record).__name__)
        return int(handler(record))

    def _on_InitCluster(self, rec: r.InitCluster) -> int:
        if self.cluster_id is not None:
            return 0 if rec.cluster_id == self.cluster_id else ErrorCode.INCONSISTENT_CLUSTER_ID
        self.cluster_id = rec.cluster_id
        self.restoring = rec.restore
        self._changes.cluster_id = True
        return 0

    def _on_FinishRestore(self, rec: r.FinishRestore) -> int:
        if self._stale_controller(rec.controller_epoch):
            return ErrorCode.NOT_CONTROLLER
        self.restoring = False
        return 0

    def _on_ClaimController(self, rec: r.ClaimController) -> int:
        if rec.epoch != self.controller_epoch + 1:
            return ErrorCode.NOT_CONTROLLER
        self.controller_id = rec.node_id
        self.controller_epoch = rec.epoch
        return 0

    def _stale_controller(self, epoch: int) -> bool:
        return epoch >= 0 and epoch != self.controller_epoch

    def _on_RegisterBroker(self, rec: r.RegisterBroker) -> int:
        self.brokers[rec.broker_id] = BrokerInfo(
            broker_id=rec.broker_id,
            incarnation=rec.incarnation,
            host=rec.host,
            port=rec.port,
            rack=rec.rack,
        )
        self._changes.brokers.add(rec.broker_id)
        self._elect_offline(rec.broker_id)
        return 0

    def _on_BrokerHeartbeat(self, rec: r.BrokerHeartbeat) -> int:
        b = self.brokers.get(rec.broker_id)
        if b is None or b.incarnation != rec.incarnation:
            return ErrorCode.STALE_BROKER_EPOCH
        if b.fenced:
            b.fenced = False
            self._changes.brokers.add(rec.broker_id)
            self._elect_offline(rec.broker_id)
        return 0

    def _on_FenceBroker(self, rec: r.FenceBroker) -> int:
        if self._stale_controller(rec.controller_epoch):
            return ErrorCode.NOT_CONTROLLER
        b = self.brokers.get(rec.broker_id)
        if b is None or b.incarnation != rec.incarnation:
            return ErrorCode.STALE_BROKER_EPOCH
        if b.fenced:
            return 0
        b.fenced = True
        self._changes.brokers.add(rec.broker_id)
        self._remove_from_partitions(rec.broker_id)
        return 0

    def _on_ControlledShutdown(self, rec: r.ControlledShutdown) -> int:
        b = self.brokers.get(rec.broker_id)
        if b is None or b.incarnation != rec.incarnation:
            return ErrorCode.STALE_BROKER_EPOCH
        b.shutting_down = True
        self._changes.brokers.add(rec.broker_id)
        self._remove_from_partitions(rec.broker_id)
        return 0

    def _remove_from_partitions(self, broker_id: int) -> None:
        """Leaderships move to another in-sync live replica; the broker leaves the ISRs.

        The last member of an ISR stays in it (Kafka's rule): with no other in-sync
        replica, the partition goes offline rather than electing one that may lack data.
        """
        for t in self.topics.values():
            unclean = _unclean_allowed(t, self.unclean_default)
            for i, p in enumerate(t.partitions):
                if broker_id not in p.replicas:
                    continue
                changed = False
                if broker_id in p.isr and len(p.isr) > 1:
                    p.isr = [b for b in p.isr if b != broker_id]
                    changed = True
                if p.leader == broker_id:
                    leader = choose_leader(
                        p.replicas, p.isr, self._live_except(broker_id), unclean=unclean
                    )
                    if leader >= 0 and leader not in p.isr:
                        p.isr = [leader]  # unclean: the new leader's log is the truth
                    p.leader = leader
                    p.leader_epoch += 1
                    changed = True
                if changed:
                    p.partition_epoch += 1
                    self._changes.partitions.add((t.topic_id, i))

    def _live_except(self, broker_id: int) -> list[int]:
        return [b for b in self.live_brokers() if b != broker_id]

    def _elect_offline(self, broker_id: int) -> None:
        """A broker came back: partitions without a leader that it can lead get it."""
        if not self.is_live(broker_id):
            return
        live = self.live_brokers()
        for t in self.topics.values():
            unclean = _unclean_allowed(t, self.unclean_default)
            for i, p in enumerate(t.partitions):
                if p.leader >= 0 or broker_id not in p.replicas:
                    continue
                leader = choose_leader(p.replicas, p.isr, live, unclean=unclean)
                if leader < 0:
                    continue
                if leader not in p.isr:
                    p.isr = [leader]
                p.leader = leader
                p.leader_epoch += 1
                p.partition_epoch += 1
                self._changes.partitions.add((t.topic_id, i))

    def _new_partition(self, replicas: list[int], leader_epoch: int = 0) -> PartitionInfo:
        live = self.live_brokers()
        isr = [b for b in replicas if b in live] or list(replicas[:1])
        leader = choose_leader(replicas, isr, live)
        return PartitionInfo(
            replicas=list(replicas), isr=isr, leader=leader, leader_epoch=max(leader_epoch, 0)
        )

    def _on_CreateTopic(self, rec: r.CreateTopic) -> int:
        if rec.name in self.topics:
            return ErrorCode.TOPIC_ALREADY_EXISTS
        if rec.topic_id in self.by_id or not rec.assignment:
            return ErrorCode.INVALID_REQUEST
        if any(b not in self.brokers for replicas in rec.assignment for b in replicas):
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT
        t = TopicState(
            name=rec.name,
            topic_id=rec.topic_id,
            configs=dict(rec.configs),
            internal=rec.internal,
            partitions=[self._new_partition(list(a), rec.leader_epoch) for a in rec.assignment],
        )
        self.topics[t.name] = t
        self.by_id[t.topic_id] = t
        self._changes.topics.add(t.topic_id)
        self._changes.partitions.update((t.topic_id, i) for i in range(len(t.partitions)))
        return 0

    def _on_DeleteTopic(self, rec: r.DeleteTopic) -> int:
        t = self.topics.get(rec.name)
        if t is None or t.topic_id != rec.topic_id:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        del self.topics[rec.name]
        del self.by_id[rec.topic_id]
        self._changes.deleted_topics.append(t)
        return 0

    def _on_CreatePartitions(self, rec: r.CreatePartitions) -> int:
        t = self.topics.get(rec.name)
        if t is None or t.topic_id != rec.topic_id:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if any(b not in self.brokers for replicas in rec.assignment for b in replicas):
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT
        first = len(t.partitions)
        t.partitions.extend(self._new_partition(list(a)) for a in rec.assignment)
        self._changes.topics.add(t.topic_id)
        self._changes.partitions.update((t.topic_id, i) for i in range(first, len(t.partitions)))
        return 0

    def _on_SetTopicConfigs(self, rec: r.SetTopicConfigs) -> int:
        t = self.topics.get(rec.name)
        if t is None or t.topic_id != rec.topic_id:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        t.configs = dict(rec.configs)
        self._changes.topics.add(t.topic_id)
        return 0

    def _on_AlterPartition(self, rec: r.AlterPartition) -> int:
        t = self.by_id.get(rec.topic_id)
        if t is None or not 0 <= rec.partition < len(t.partitions):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        p = t.partitions[rec.partition]
        if rec.leader_id != p.leader:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        if rec.leader_epoch != p.leader_epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        if rec.partition_epoch != p.partition_epoch:
            return ErrorCode.INVALID_UPDATE_VERSION
        isr = list(dict.fromkeys(rec.isr))
        if p.leader not in isr or any(b not in p.replicas for b in isr):
            return ErrorCode.INVALID_REQUEST
        added = set(isr) - set(p.isr)
        if any(not self.is_live(b) for b in added):
            return ErrorCode.INELIGIBLE_REPLICA
        p.isr = isr
        p.partition_epoch += 1
        self._changes.partitions.add((t.topic_id, rec.partition))
        self._maybe_complete_reassignment(t, rec.partition)
        return 0

    def _on_ElectLeaders(self, rec: r.ElectLeaders) -> int:
        if self._stale_controller(rec.controller_epoch):
            return ErrorCode.NOT_CONTROLLER
        live = self.live_brokers()
        for topic_id, index in rec.partitions:
            t = self.by_id.get(topic_id)
            if t is None or not 0 <= index < len(t.partitions):
                continue
            p = t.partitions[index]
            preferred = p.replicas[0]
            if rec.unclean and p.leader < 0:
                leader = choose_leader(p.replicas, p.isr, live, unclean=True)
                if leader < 0:
                    continue
                if leader not in p.isr:
                    p.isr = [leader]
            elif preferred != p.leader and preferred in p.isr and preferred in live:
                leader = preferred
            else:
                continue
            p.leader = leader
            p.leader_epoch += 1
            p.partition_epoch += 1
            self._changes.partitions.add((topic_id, index))
        return 0

    def _on_Reassign(self, rec: r.Reassign) -> int:
        t = self.by_id.get(rec.topic_id)
        if t is None or not 0 <= rec.partition < len(t.partitions):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        p = t.partitions[rec.partition]
        if rec.target is None:
            if p.target is None:
                return ErrorCode.NO_REASSIGNMENT_IN_PROGRESS
            # cancel: drop the replicas that were being added
            original = [b for b in p.replicas if b not in p.adding]
            p.target = None
            p.adding = []
            self._set_replicas(t, rec.partition, original)
            return 0
        if any(b not in self.brokers for b in rec.target) or not rec.target:
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT
        if len(set(rec.target)) != len(rec.target):
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT
        current = p.replicas if p.target is None else [b for b in p.replicas if b not in p.adding]
        p.target = list(rec.target)
        p.adding = [b for b in rec.target if b not in current]
        merged = list(rec.target) + [b for b in current if b not in rec.target]
        self._set_replicas(t, rec.partition, merged)
        self._maybe_complete_reassignment(t, rec.partition)
        return 0

    def _set_replicas(self, t: TopicState, index: int, replicas: list[int]) -> None:
        p = t.partitions[index]
        p.replicas = replicas
        isr = [b for b in p.isr if b in replicas]
        if p.leader not in replicas or p.leader not in isr:
            leader = choose_leader(replicas, isr or p.isr, self.live_brokers())
            p.leader = leader
            p.leader_epoch += 1
        p.isr = isr or ([p.leader] if p.leader >= 0 else p.isr)
        p.partition_epoch += 1
        self._changes.partitions.add((t.topic_id, index))

    def _maybe_complete_reassignment(self, t: TopicState, index: int) -> None:
        """Adding replicas are all in sync: drop the removed ones (leader moves if needed)."""
        p = t.partitions[index]
        if p.target is None or any(b not in p.isr for b in p.target):
            return
        target, p.target = p.target, None
        p.adding = []
        self._set_replicas(t, index, target)

    def _on_AllocateProducerIds(self, rec: r.AllocateProducerIds) -> int:
        if rec.start != self.next_producer_id or rec.count < 1:
            return ErrorCode.INVALID_UPDATE_VERSION
        self.next_producer_id = rec.start + rec.count
        return 0

    def _on_SealMirrorPartition(self, rec: r.SealMirrorPartition) -> int:
        t = self.by_id.get(rec.topic_id)
        if t is None or not 0 <= rec.partition < len(t.partitions):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if rec.leader_epoch != t.partitions[rec.partition].leader_epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        if rec.partition not in t.mirror_sealed:
            t.mirror_sealed = {**t.mirror_sealed, rec.partition: rec.offset}
            self._changes.topics.add(t.topic_id)
        return 0

    def _on_UpsertScramCredential(self, rec: r.UpsertScramCredential) -> int:
        # the proposer validated the request; checked again so that a record no broker
        # could use is rejected identically everywhere
        hash_name = SCRAM_HASHES.get(rec.mechanism)
        if hash_name is None:
            return ErrorCode.UNSUPPORTED_SASL_MECHANISM
        if not rec.user or not rec.salt or not MIN_ITERATIONS <= rec.iterations <= MAX_ITERATIONS:
            return ErrorCode.UNACCEPTABLE_CREDENTIAL
        entry = ScramEntry(
            salt=rec.salt,
            iterations=rec.iterations,
            stored_key=rec.stored_key,
            server_key=rec.server_key,
        )
        self.scram[rec.user] = {**self.scram.get(rec.user, {}), rec.mechanism: entry}
        self._changes.scram_users.add(rec.user)
        return 0

    def _on_DeleteScramCredential(self, rec: r.DeleteScramCredential) -> int:
        current = self.scram.get(rec.user, {})
        if rec.mechanism not in current:
            return ErrorCode.RESOURCE_NOT_FOUND
        remaining = {m: e for m, e in current.items() if m != rec.mechanism}
        if remaining:
            self.scram[rec.user] = remaining
        else:
            del self.scram[rec.user]
        self._changes.scram_users.add(rec.user)
        return 0

    def _on_CreateAcl(self, rec: r.CreateAcl) -> int:
        acl = _binding(rec)
        if validate(acl) is not None:  # checked by the proposer; rejected alike everywhere
            return ErrorCode.INVALID_REQUEST
        if acl not in self.acls:
            self.acls.add(acl)
            self._changes.acls = True
        return 0

    def _on_DeleteAcl(self, rec: r.DeleteAcl) -> int:
        acl = _binding(rec)
        if acl in self.acls:  # deleting what is gone already changes nothing, as in Kafka
            self.acls.discard(acl)
            self._changes.acls = True
        return 0

    def _on_AlterClientQuota(self, rec: r.AlterClientQuota) -> int:
        entity = tuple((t, n) for t, n in rec.entity)
        # checked by the proposer; rejected alike everywhere
        if not check_entity(entity) or any(
            check_op(key, value or 0.0, value is None) is not None for key, value in rec.ops
        ):
            return ErrorCode.INVALID_REQUEST
        if apply_ops(self.quotas, entity, rec.ops):
            self._changes.quotas = True
        return 0

    def _on_SetGroupConfigs(self, rec: r.SetGroupConfigs) -> int:
        if not rec.group:
            return ErrorCode.INVALID_GROUP_ID
        if rec.configs:
            self.group_configs[rec.group] = dict(rec.configs)
        elif self.group_configs.pop(rec.group, None) is None:
            return 0
        self._changes.group_configs.add(rec.group)
        return 0


def _binding(rec: r.CreateAcl | r.DeleteAcl) -> AclBinding:
    return AclBinding(
        resource_type=rec.resource_type,
        resource_name=rec.resource_name,
        pattern_type=rec.pattern_type,
        principal=rec.principal,
        host=rec.host,
        operation=rec.operation,
        permission=rec.permission,
    )
