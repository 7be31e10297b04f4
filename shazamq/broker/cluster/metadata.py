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
from .metadata_journal import JournalError, encode_header, encode_line, parse_journal

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
    # the generation of the journal that follows this snapshot (metadata_journal)
    journal_generation: int = 0


class _Change(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One journal record: a topic created or changed (whole), a topic deleted, or a
    section (SCRAM credentials, ACLs, quotas) replaced."""

    topic: TopicInfo | None = None
    deleted: str | None = None
    scram: ScramCredentials | None = None
    acls: list[AclBinding] | None = None
    quotas: list[StoredQuota] | None = None


# The journal is compacted into a new snapshot once it is larger than the snapshot and
# than this: every change then costs its own line plus, amortised, about as much again.
COMPACT_MIN_BYTES = 64 * 1024


# written only by their coordinators; clients may not create, delete or produce to them
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state", "__share_group_state"})


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
    """Topics and cluster identity: a snapshot (``topics.json``) plus a journal of the
    changes since (``topics.journal``, see :mod:`.metadata_journal`). A change appends
    and fsyncs one line; the journal is folded into a new snapshot when it outgrows it."""

    def __init__(self, data_dir: str | os.PathLike[str], cluster_id: str | None = None) -> None:
        self.dir = Path(data_dir) / METADATA_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._path = self.dir / "topics.json"
        self._journal_path = self.dir / "topics.journal"
        self.topics: dict[str, TopicInfo] = {}
        self.by_id: dict[uuid.UUID, TopicInfo] = {}
        self.scram: ScramCredentials = {}
        self.acls: set[AclBinding] = set()
        self.quotas: dict[Entity, dict[str, float]] = {}
        self._lock = asyncio.Lock()
        self._generation = 0
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        # bytes written to the snapshot and the journal since opening (tests, metrics)
        self.bytes_written = 0
        if self._path.exists():
            data = self._path.read_bytes()
            doc = msgspec.json.decode(data, type=_Document)
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
            self._generation = doc.journal_generation
            self._snapshot_bytes = len(data)
            self._replay_journal()
        else:
            self.cluster_id = cluster_id or new_cluster_id()
            self._write()

    def _index(self, topic: TopicInfo) -> None:
        self.topics[topic.name] = topic
        self.by_id[topic.uuid] = topic

    def _apply(self, change: _Change) -> None:
        if change.topic is not None:
            old = self.topics.get(change.topic.name)
            if old is not None:
                self.by_id.pop(old.uuid, None)
            self._index(change.topic)
        if change.deleted is not None:
            gone = self.topics.pop(change.deleted, None)
            if gone is not None:
                self.by_id.pop(gone.uuid, None)
        if change.scram is not None:
            self.scram = change.scram
        if change.acls is not None:
            self.acls = set(change.acls)
        if change.quotas is not None:
            self.quotas = from_stored(change.quotas)

    def _replay_journal(self) -> None:
        """Apply the journal that follows the snapshot; cut a torn last line off it.
        A journal of another generation (a crash during compaction) is replaced."""
        try:
            data = self._journal_path.read_bytes()
        except FileNotFoundError:
            data = None
        parsed = None
        if data is not None:
            try:
                parsed = parse_journal(data, where=str(self._journal_path))
            except JournalError as exc:
                raise ValueError(str(exc)) from None
        if parsed is None or parsed.generation != self._generation:
            self._reset_journal()
            return
        for raw in parsed.records:
            self._apply(msgspec.json.decode(raw, type=_Change))
        assert data is not None
        if parsed.good_length < len(data):  # a torn last line: never acknowledged
            os.truncate(self._journal_path, parsed.good_length)
            _fsync_path(self._journal_path)
        self._journal_bytes = parsed.good_length

    def _reset_journal(self) -> None:
        """Replace the journal with an empty one of the current generation (atomic)."""
        header = encode_header(self._generation)
        _replace_file(self._journal_path, header)
        self.bytes_written += len(header)
        self._journal_bytes = len(header)

    def _write(self) -> None:
        """Compact: the whole state as a new snapshot of the next generation, then an
        empty journal of that generation (blocking: an executor thread)."""
        self._generation += 1
        doc = _Document(
            cluster_id=self.cluster_id,
            topics=sorted(self.topics.values(), key=lambda t: t.name),
            scram={user: dict(by_mech) for user, by_mech in sorted(self.scram.items())},
            acls=sorted(self.acls),
            quotas=to_stored(self.quotas),
            journal_generation=self._generation,
        )
        data = msgspec.json.encode(doc)
        _replace_file(self._path, data)
        self.bytes_written += len(data)
        self._snapshot_bytes = len(data)
        self._reset_journal()

    def _append(self, line: bytes) -> None:
        """Append one change and fsync it; compact when the journal outgrew the
        snapshot (blocking: an executor thread)."""
        fd = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self.bytes_written += len(line)
        self._journal_bytes += len(line)
        if self._journal_bytes > max(COMPACT_MIN_BYTES, self._snapshot_bytes):
            self._write()

    async def _save(self, change: _Change | None = None) -> None:
        """Persist a change already applied in memory (None: a full snapshot)."""
        loop = asyncio.get_running_loop()
        if change is None:
            await loop.run_in_executor(None, self._write)
        else:
            line = encode_line(msgspec.json.encode(change))
            await loop.run_in_executor(None, self._append, line)

    def adopt(
        self,
        topics: list[TopicInfo],
        scram: ScramCredentials | None = None,
        acls: list[AclBinding] | None = None,
        quotas: list[StoredQuota] | None = None,
    ) -> None:
        """Take over topics, credentials, ACLs and client quotas as they are (a broker
        restored from its bucket)."""
        for t in topics:
            self._index(t)
        if scram is not None:
            self.scram = scram
        if acls is not None:
            self.acls = set(acls)
        if quotas is not None:
            self.quotas = from_stored(quotas)
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
            await self._save(_Change(topic=topic))
            return topic

    async def delete_topic(self, name: str) -> TopicInfo:
        async with self._lock:
            topic = self.topics.pop(name, None)
            if topic is None:
                raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
            self.by_id.pop(topic.uuid, None)
            await self._save(_Change(deleted=name))
            return topic

    async def set_partitions(self, name: str, count: int) -> TopicInfo:
        async with self._lock:
            topic = self.topics[name]
            topic.partitions = count
            await self._save(_Change(topic=topic))
            return topic

    async def set_configs(self, name: str, configs: dict[str, str]) -> TopicInfo:
        async with self._lock:
            topic = self.topics[name]
            topic.configs = dict(configs)
            await self._save(_Change(topic=topic))
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
            await self._save(_Change(scram=self.scram))

    async def alter_acls(self, add: list[AclBinding], remove: list[AclBinding]) -> None:
        """Add and remove ACLs (validated by the caller), written once for them all."""
        async with self._lock:
            self.acls.difference_update(remove)
            self.acls.update(add)
            await self._save(_Change(acls=sorted(self.acls)))

    async def alter_quotas(
        self, changes: list[tuple[Entity, list[tuple[str, float | None]]]]
    ) -> None:
        """Set (a value) and remove (None) client quotas (validated by the caller), written
        once for them all."""
        async with self._lock:
            for entity, ops in changes:
                apply_ops(self.quotas, entity, ops)
            await self._save(_Change(quotas=to_stored(self.quotas)))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: a temporary file, fsynced,
    renamed over ``path``, then the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)
