"""The cluster's metadata: its id, the brokers, and every topic with its partitions.

On a single broker this is a small document kept atomically on disk
(`<data_dir>/__cluster_metadata/`); the replicated metadata log of a multi-broker cluster
will hold the same records. Everything else asks this store which topics exist and what
their ids, partition counts and config overrides are.

The document also holds the SCRAM credentials set through AlterUserScramCredentials
(`ScramEntry`: salt, iterations, StoredKey and ServerKey, never a password), which the
cluster's state machine keeps in the same shape, and the ACLs (CreateAcls, DeleteAcls).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import msgspec

from shazamq.protocol.errors import ErrorCode, KafkaError

from ..quotas.entities import Entity, StoredQuota, apply_ops, from_stored, to_stored
from ..security.acl import AclBinding

METADATA_DIR = "__cluster_metadata"
_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]+$")
MAX_TOPIC_NAME = 249


class TopicInfo(msgspec.Struct, kw_only=True):
    """One topic as the cluster knows it."""

    name: str
    topic_id: str  # 32 hex digits; uuid.UUID(hex=...) for the wire
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = msgspec.field(default_factory=dict)
    internal: bool = False

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(hex=self.topic_id)


class ScramEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One user's credential for one SCRAM mechanism: what a server keeps (RFC 5802 s. 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"ScramEntry(iterations={self.iterations})"


# user -> mechanism name ("SCRAM-SHA-256", "SCRAM-SHA-512") -> credential
ScramCredentials = dict[str, dict[str, ScramEntry]]


class _Document(msgspec.Struct, kw_only=True):
    cluster_id: str
    topics: list[TopicInfo] = msgspec.field(default_factory=list)
    # defaulted: documents written before credentials could be set still load
    scram: ScramCredentials = msgspec.field(default_factory=dict)
    # defaulted: documents written before ACLs existed still load
    acls: list[AclBinding] = msgspec.field(default_factory=list)
    # defaulted: documents written before client quotas existed still load
    quotas: list[StoredQuota] = msgspec.field(default_factory=list)


def validate_topic_name(name: str) -> None:
    """Kafka's rules for topic names; raises INVALID_TOPIC_EXCEPTION."""
    problem = None
    if not name:
        problem = "topic name is empty"
    elif name in (".", ".."):
        problem = f"topic name {name!r} is not allowed"
    elif len(name) > MAX_TOPIC_NAME:
        problem = f"topic name is longer than {MAX_TOPIC_NAME} characters"
    elif not _LEGAL_TOPIC.match(name):
        problem = f"topic name {name!r} has characters other than ASCII letters, digits, . _ -"
    if problem:
        raise KafkaError(ErrorCode.INVALID_TOPIC_EXCEPTION, problem)


def new_cluster_id() -> str:
    """A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class MetadataStore:
    """Topics and cluster identity, persisted with an atomic replace on every change."""

    def __init__(self, data_dir: str | os.PathLike[str], cluster_id: str | None = None) -> None:
        self.dir = Path(data_dir) / METADATA_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._path = self.dir / "topics.json"
        self.topics: dict[str, TopicInfo] = {}
        self.by_id: dict[uuid.UUID, TopicInfo] = {}
        self.scram: ScramCredentials = {}
        self.acls: set[AclBinding] = set()
        self.quotas: dict[Entity, dict[str, float]] = {}
        self._lock = asyncio.Lock()
        if self._path.exists():
            doc = msgspec.json.decode(self._path.read_bytes(), type=_Document)
            if cluster_id is not None and cluster_id != doc.cluster_id:
                raise ValueError(
                    f"{self.dir}: data belongs to cluster {doc.cluster_id}, "
                    f"configured cluster_id is {cluster_id}"
                )
            self.cluster_id = doc.cluster_id
            for t in doc.topics:
                self._index(t)
            self.scram = doc.scram
            self.acls = set(doc.acls)
            self.quotas = from_stored(doc.quotas)
        else:
            self.cluster_id = cluster_id or new_cluster_id()
            self._write()

    def _index(self, topic: TopicInfo) -> None:
        self.topics[topic.name] = topic
        self.by_id[topic.uuid] = topic

    def _write(self) -> None:
        doc = _Document(
            cluster_id=self.cluster_id,
            topics=sorted(self.topics.values(), key=lambda t: t.name),
            scram={user: dict(by_mech) for user, by_mech in sorted(self.scram.items())},
            acls=sorted(self.acls),
            quotas=to_stored(self.quotas),
        )
        tmp = self._path.with_suffix(".json.tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def _save(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write)

    def adopt(self, topics: list[TopicInfo]) -> None:
        """Take over topics as they are (a broker restored from its bucket)."""
        for t in topics:
            self._index(t)
        self._write()

    # -- queries -------------------------------------------------------------------------

    def get(self, name: str) -> TopicInfo | None:
        return self.topics.get(name)

    # -- changes ---------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
        *,
        internal: bool = False,
        topic_id: uuid.UUID | None = None,
    ) -> TopicInfo:
        async with self._lock:
            if name in self.topics:
                raise KafkaError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
            if topic_id is not None and topic_id in self.by_id:
                raise KafkaError(
                    ErrorCode.TOPIC_ALREADY_EXISTS, f"topic id {topic_id} is already in use"
                )
            topic = TopicInfo(
                name=name,
                topic_id=(topic_id or uuid.uuid4()).hex,
                partitions=partitions,
                replication_factor=replication_factor,
                configs=dict(configs or {}),
                internal=internal,
            )
            self._index(topic)
            await self._save()
            return topic

    async def delete_topic(self, name: str) -> TopicInfo:
        async with self._lock:
            topic = self.topics.pop(name, None)
            if topic is None:
                raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
            self.by_id.pop(topic.uuid, None)
            await self._save()
            return topic

    async def set_partitions(self, name: str, count: int) -> TopicInfo:
        async with self._lock:
            topic = self.topics[name]
            topic.partitions = count
            await self._save()
            return topic

    async def set_configs(self, name: str, configs: dict[str, str]) -> TopicInfo:
        async with self._lock:
            topic = self.topics[name]
            topic.configs = dict(configs)
            await self._save()
            return topic

    async def alter_scram(
        self,
        upserts: list[tuple[str, str, ScramEntry]],
        deletions: list[tuple[str, str]],
    ) -> None:
        """Set and delete SCRAM credentials (user, mechanism), written once for them all.

        The caller has validated the request (a deletion names an existing credential).
        Inner dicts are replaced, never mutated, so a login reading them from a worker
        thread sees the old or the new credential, not a half-changed one.
        """
        async with self._lock:
            for user, mechanism in deletions:
                remaining = {m: e for m, e in self.scram.get(user, {}).items() if m != mechanism}
                if remaining:
                    self.scram[user] = remaining
                else:
                    self.scram.pop(user, None)
            for user, mechanism, entry in upserts:
                self.scram[user] = {**self.scram.get(user, {}), mechanism: entry}
            await self._save()

    async def alter_acls(self, add: list[AclBinding], remove: list[AclBinding]) -> None:
        """Add and remove ACLs (validated by the caller), written once for them all."""
        async with self._lock:
            self.acls.difference_update(remove)
            self.acls.update(add)
            await self._save()

    async def alter_quotas(
        self, changes: list[tuple[Entity, list[tuple[str, float | None]]]]
    ) -> None:
        """Set (a value) and remove (None) client quotas (validated by the caller), written
        once for them all."""
        async with self._lock:
            for entity, ops in changes:
                apply_ops(self.quotas, entity, ops)
            await self._save()
