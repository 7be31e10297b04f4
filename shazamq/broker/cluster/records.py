"""The records of the replicated metadata log: versioned msgspec structs, never pickles.

Each record is a tagged struct (the tag names the record type, ``v`` its schema version),
encoded with msgspec's MessagePack. A record states an intent with every input its
outcome depends on (the proposer's chosen replica assignment, the epochs it saw, the
broker incarnation), so applying it is deterministic on every node: the state machine in
``state.py`` decides, the controller only proposes.
"""

from __future__ import annotations

import msgspec


class _Record(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False):
    v: int = 1


class InitCluster(_Record, tag="init_cluster"):
    """The cluster id; the first one committed wins, later ones are rejected."""

    cluster_id: str
    # a new cluster coming back from a tiered-storage bucket: the controller recreates
    # the bucket's topics (CreateTopic with their ids), then commits FinishRestore
    restore: bool = False


class FinishRestore(_Record, tag="finish_restore"):
    """The controller recreated every topic of the bucket: topics may be created again."""

    controller_epoch: int = -1


class ClaimController(_Record, tag="claim_controller"):
    """A new Raft leader takes over as active controller under the next controller epoch.

    Controller decisions (fencing, preferred-leader moves) carry the epoch they were made
    under; once a newer controller has claimed, a paused or partitioned old one's decisions
    are rejected even if they still reach the log.
    """

    node_id: int
    epoch: int


class RegisterBroker(_Record, tag="register_broker"):
    """A broker (re)starting: a new incarnation replaces the old one and unfences it."""

    broker_id: int
    incarnation: str
    host: str
    port: int
    rack: str | None = None


class BrokerHeartbeat(_Record, tag="broker_heartbeat"):
    """Proof of life of one incarnation; also unfences a fenced broker that is back."""

    broker_id: int
    incarnation: str


class FenceBroker(_Record, tag="fence_broker"):
    """The controller saw no heartbeat for the session timeout: leaderships move away."""

    broker_id: int
    incarnation: str
    controller_epoch: int = -1


class ControlledShutdown(_Record, tag="controlled_shutdown"):
    """A broker stopping on purpose: its leaderships move first, then it leaves the ISRs."""

    broker_id: int
    incarnation: str


class CreateTopic(_Record, tag="create_topic"):
    name: str
    topic_id: str  # 32 hex digits
    assignment: list[list[int]]  # replicas of each partition, preferred leader first
    configs: dict[str, str] = msgspec.field(default_factory=dict)
    internal: bool = False
    # the first leader epoch of every partition: a topic restored from the bucket
    # continues above the epochs its history was written under
    leader_epoch: int = 0


class DeleteTopic(_Record, tag="delete_topic"):
    name: str
    topic_id: str


class CreatePartitions(_Record, tag="create_partitions"):
    name: str
    topic_id: str
    assignment: list[list[int]]  # replicas of each new partition, in order


class SetTopicConfigs(_Record, tag="set_topic_configs"):
    name: str
    topic_id: str
    configs: dict[str, str]


class SetGroupConfigs(_Record, tag="set_group_configs"):
    """Replace one group's settings (IncrementalAlterConfigs on a GROUP resource), as
    Kafka keeps them: in the metadata log, so every broker sees them and none loses them.
    Empty ``configs`` removes the group's entry."""

    group: str
    configs: dict[str, str]


class AlterPartition(_Record, tag="alter_partition"):
    """The leader's ISR change, valid only at the epochs it was decided under."""

    topic_id: str
    partition: int
    leader_id: int
    leader_epoch: int
    partition_epoch: int
    isr: list[int]


class ElectLeaders(_Record, tag="elect_leaders"):
    """Move leadership to the preferred replica where it is in sync and alive."""

    partitions: list[tuple[str, int]]  # (topic id, partition)
    # unclean elections pick any live replica when none in sync is alive
    unclean: bool = False
    # set when the controller decides on its own (periodic rebalance); -1 for admin requests
    controller_epoch: int = -1


class Reassign(_Record, tag="reassign"):
    """Start (target set) or cancel (target None) moving a partition's replicas."""

    topic_id: str
    partition: int
    target: list[int] | None


class SealMirrorPartition(_Record, tag="seal_mirror_partition"):
    """The leader of a partition of a topic being promoted from a mirror has ended the
    copy there (the source's open transactions aborted, on the in-sync replicas); the
    marker goes once every partition is sealed. Applies only under the leader epoch it
    names, so a deposed leader's seal is refused."""

    topic_id: str
    partition: int
    leader_epoch: int
    # the partition's log end then: below it every batch is the source's (the promotion
    # point, kept with the promoted topic)
    offset: int


class AllocateProducerIds(_Record, tag="allocate_producer_ids"):
    """A block of producer ids for one broker; valid only if `start` is still the next free."""

    broker_id: int
    start: int
    count: int


class UpsertScramCredential(_Record, tag="upsert_scram_credential"):
    """A user's credential for one SCRAM mechanism, set by AlterUserScramCredentials.

    Only what a server keeps: the proposing broker derived StoredKey and ServerKey from the
    request's salted password, which never enters the log.
    """

    user: str
    mechanism: str  # "SCRAM-SHA-256" or "SCRAM-SHA-512"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


class DeleteScramCredential(_Record, tag="delete_scram_credential"):
    """Remove a user's credential for one SCRAM mechanism (RESOURCE_NOT_FOUND if absent)."""

    user: str
    mechanism: str


class CreateAcl(_Record, tag="create_acl"):
    """Add one ACL (CreateAcls); adding an ACL that exists changes nothing."""

    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int


class DeleteAcl(_Record, tag="delete_acl"):
    """Remove one ACL (DeleteAcls, which resolved its filters against the proposer's state)."""

    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int


class AlterClientQuota(_Record, tag="alter_client_quota"):
    """Set and remove quota keys of one client quota entity (AlterClientQuotas), at once.

    ``entity`` is canonical (``(type, name)`` sorted by type, a null name the default);
    an op's value None removes the key.
    """

    entity: list[tuple[str, str | None]]
    ops: list[tuple[str, float | None]]


Record = (
    InitCluster
    | FinishRestore
    | ClaimController
    | RegisterBroker
    | BrokerHeartbeat
    | FenceBroker
    | ControlledShutdown
    | CreateTopic
    | DeleteTopic
    | CreatePartitions
    | SetTopicConfigs
    | AlterPartition
    | ElectLeaders
    | Reassign
    | AllocateProducerIds
    | SealMirrorPartition
    | UpsertScramCredential
    | DeleteScramCredential
    | CreateAcl
    | DeleteAcl
    | AlterClientQuota
    | SetGroupConfigs
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes) -> Record:
    """Raises msgspec.DecodeError / ValidationError for bytes that are not a record."""
    return _decoder.decode(data)
