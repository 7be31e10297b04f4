"""What the bucket holds: object keys, partition manifests and the cluster's metadata.

Pure (no I/O). Layout under the configured prefix::

    cluster/metadata.json                         cluster id, topics, ids, configs,
                                                  SCRAM credentials (salted), ACLs,
                                                  client quotas
    topics/<topic>-<topic id>/<partition>/manifest.json
    topics/<topic>-<topic id>/<partition>/<base offset>-<upload id>.<ext>

Each upload of a segment gets a fresh id, so objects of an upload that crashed half-way
are never the objects a manifest names: they are orphans, deleted by the next uploader.
A segment is referenced only by a manifest written after all its objects were stored and
verified; the manifest is replaced with one PUT, which object stores make atomic.
"""

from __future__ import annotations

import msgspec

from shazamq.broker.cluster.metadata import ScramCredentials
from shazamq.broker.quotas.entities import StoredQuota
from shazamq.broker.security.acl import AclBinding

__all__ = [
    "FILE_EXTS",
    "ClusterMetadata",
    "ManifestError",
    "PartitionManifest",
    "RemoteSegment",
    "RemoteTopic",
    "decode_cluster",
    "decode_manifest",
    "encode_cluster",
    "encode_manifest",
    "manifest_key",
    "partition_prefix",
    "segment_key",
]

MANIFEST_VERSION = 1
CLUSTER_KEY = "cluster/metadata.json"
# the files of one remote segment; txnindex and snapshot are optional
FILE_EXTS = ("log", "index", "timeindex", "txnindex", "snapshot")


class ManifestError(ValueError):
    """Bytes that are not a manifest this broker can use."""


class RemoteSegment(msgspec.Struct, frozen=True, kw_only=True):
    """One segment in the bucket."""

    upload_id: str  # names its objects
    base_offset: int
    last_offset: int  # inclusive
    base_timestamp: int  # first batch's max timestamp (-1: none)
    max_timestamp: int
    offset_of_max_timestamp: int
    size: int  # bytes of the .log object
    crc32c: int  # of the .log object
    # leader epoch -> first offset, for the epochs that wrote into this segment
    epochs: list[tuple[int, int]] = msgspec.field(default_factory=list)
    has_txn_index: bool = False
    has_snapshot: bool = False  # producer state at next_offset
    uploaded_ms: int = 0

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


class PartitionManifest(msgspec.Struct, kw_only=True):
    """Every remote segment of one partition, oldest first."""

    version: int = MANIFEST_VERSION
    topic: str
    topic_id: str
    partition: int
    log_start_offset: int = 0  # first offset readers may see (retention, DeleteRecords)
    segments: list[RemoteSegment] = msgspec.field(default_factory=list)
    # bumped on every write: lets a reader tell two manifests apart
    generation: int = 0
    # the leader epoch of the uploader that wrote it (-1: written before it was recorded);
    # a writer that finds a higher one in the bucket has been deposed
    leader_epoch: int = -1

    @property
    def end_offset(self) -> int:
        """One past the last remote offset (the log start when nothing is remote)."""
        return self.segments[-1].next_offset if self.segments else self.log_start_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def validate(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ManifestError(f"manifest version {self.version} is not {MANIFEST_VERSION}")
        if self.partition < 0 or self.log_start_offset < 0:
            raise ManifestError("manifest has a negative partition or log start offset")
        prev_last = -1
        for s in self.segments:
            if s.base_offset < 0 or s.last_offset < s.base_offset or s.size < 0:
                raise ManifestError(
                    f"segment {s.base_offset}..{s.last_offset} ({s.size} B) is malformed"
                )
            if s.last_offset <= prev_last:
                raise ManifestError(
                    f"segment {s.base_offset}..{s.last_offset} does not follow offset {prev_last}"
                )
            if not s.upload_id or not s.upload_id.isalnum():
                raise ManifestError(f"segment {s.base_offset} has a bad upload id")
            prev_last = s.last_offset

    def find(self, offset: int) -> RemoteSegment | None:
        """The first segment holding an offset >= ``offset`` (binary search)."""
        segs = self.segments
        lo, hi = 0, len(segs)
        while lo < hi:
            mid = (lo + hi) // 2
            if segs[mid].last_offset < offset:
                lo = mid + 1
            else:
                hi = mid
        return segs[lo] if lo < len(segs) else None


class RemoteTopic(msgspec.Struct, kw_only=True):
    name: str
    topic_id: str
    partitions: int
    configs: dict[str, str] = msgspec.field(default_factory=dict)
    internal: bool = False
    replication_factor: int = 0  # 0: unknown (written before it was recorded)


class ClusterMetadata(msgspec.Struct, kw_only=True):
    """What a new broker needs to come back from the bucket alone."""

    version: int = MANIFEST_VERSION
    cluster_id: str
    topics: list[RemoteTopic] = msgspec.field(default_factory=list)
    written_ms: int = 0
    # what a server keeps of each credential (salt, iterations, StoredKey, ServerKey),
    # never a password: a restored cluster accepts the same users
    scram: ScramCredentials = msgspec.field(default_factory=dict)
    acls: list[AclBinding] = msgspec.field(default_factory=list)
    # the client quotas (AlterClientQuotas), so a restored cluster enforces the same ones
    quotas: list[StoredQuota] = msgspec.field(default_factory=list)
    # how far the cluster's metadata log had been applied by the writer (0 on a single
    # broker): a writer whose conditional write loses to a further one leaves it be
    metadata_index: int = 0
    # the cluster's next unallocated producer id when written (0: unknown, a single
    # broker): a restored cluster hands out none below it, nor any in restored snapshots
    next_producer_id: int = 0


def partition_prefix(topic: str, topic_id: str, partition: int) -> str:
    return f"topics/{topic}-{topic_id}/{partition}/"


def manifest_key(topic: str, topic_id: str, partition: int) -> str:
    return partition_prefix(topic, topic_id, partition) + "manifest.json"


def segment_key(prefix: str, base_offset: int, upload_id: str, ext: str) -> str:
    return f"{prefix}{base_offset:020d}-{upload_id}.{ext}"


_manifest_decoder = msgspec.json.Decoder(PartitionManifest)
_cluster_decoder = msgspec.json.Decoder(ClusterMetadata)
_encoder = msgspec.json.Encoder()


def encode_manifest(m: PartitionManifest) -> bytes:
    m.validate()
    return _encoder.encode(m)


def decode_manifest(data: bytes, *, where: str = "manifest") -> PartitionManifest:
    """Parse and check a manifest; raises :class:`ManifestError` saying what is wrong."""
    try:
        m = _manifest_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestError(f"{where} is not a valid partition manifest: {exc}") from None
    try:
        m.validate()
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return m


def encode_cluster(c: ClusterMetadata) -> bytes:
    return _encoder.encode(c)


def decode_cluster(data: bytes, *, where: str = CLUSTER_KEY) -> ClusterMetadata:
    try:
        c = _cluster_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestError(f"{where} is not valid cluster metadata: {exc}") from None
    if c.version != MANIFEST_VERSION:
        raise ManifestError(f"{where}: version {c.version} is not {MANIFEST_VERSION}")
    return c
