"""The log of one partition: ``data_dir/<topic>-<partition>/``.

``PartitionLog`` owns the ordered segments, assigns offsets, enforces producer state
(idempotence, transactions), serves reads bounded by the high watermark or last stable
offset, applies retention, and keeps the checkpoint files that make a restart cheap:

* ``recovery-point-offset-checkpoint``: everything below this offset was fsynced; after
  an unclean shutdown only segments from the one holding it are re-validated.
* ``log-start-offset-checkpoint``: the first offset readers may see (DeleteRecords).
* ``leader-epoch-checkpoint``: leader epoch -> first offset (OffsetForLeaderEpoch).
* ``partition.metadata``: the topic id.
* ``<offset>.snapshot``: producer state (see :mod:`.producer_state`).
* ``clean-shutdown``: written last by :meth:`PartitionLog.close`; while it exists the
  checkpoints are trusted and nothing is scanned at open. It is removed (and the
  directory fsynced) before the first change after opening.

Hot path: :meth:`PartitionLog.append` validates batch headers and CRCs, checks producer
state on a staged copy, writes base offsets (and the leader epoch) into the headers of a
writable buffer, and appends all batches of the payload with one ``os.write``. Reads
return whole batches via ``os.pread``. Both do O(batches) work, never O(records).

Threading: appends, reads and truncation run on the event loop thread; fsync, retention,
compaction and producer expiry run on an executor thread. Every mutation of the segment
list, offsets and producer state happens under ``self.lock`` (a ``threading.RLock`` held
briefly). The segment list is copy-on-write: readers take the current tuple without the
lock. Segments leaving the log are renamed ``*.deleted`` and closed only after
``file.delete.delay.ms`` (by :meth:`PartitionLog.reap_deleted`), so a read holding one
never sees its descriptor closed. fsync and descriptor closing share ``_io_lock``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import enum
import os
import random
import re
import shutil
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import NamedTuple

from shazamq.protocol.records import (
    ATTR_CONTROL,
    COMPRESSION_MASK,
    DEFAULT_MAX_UNCOMPRESSED,
    LOG_OVERHEAD,
    TIMESTAMP_LOG_APPEND_TIME,
    BatchHeader,
    InvalidRecordsError,
    RecordError,
    batch_records_data,
    check_records,
    control_record_of,
    decode_batch,
    rebuild_batch,
    set_base_offset,
    set_log_append_time,
    set_partition_leader_epoch,
    validate_batches,
)

from .errors import (
    DuplicateSequenceError,
    InconsistentTopicIdError,
    InvalidTimestampError,
    KafkaStorageError,
    OffsetOutOfRangeError,
    UnexpectedAppendOffsetError,
)
from .index import AbortedTxn, IndexCorruptError
from .log_config import INT64_MAX, LogConfig
from .producer_state import ActiveProducer, ProducerStateManager, ProducerStateUpdate
from .segment import (
    CLEANED_SUFFIX,
    DELETED_SUFFIX,
    INDEX_EXT,
    INT32_MAX,
    LOG_EXT,
    SWAP_SUFFIX,
    TIME_INDEX_EXT,
    LogSegment,
    ReadSlice,
)

__all__ = [
    "AppendInfo",
    "AppendOrigin",
    "LeaderEpochCache",
    "PartitionLog",
    "PreparedAppend",
    "fsync_dir",
    "parse_partition_dir",
    "read_topic_id",
    "sync_filesystem",
    "write_file_atomically",
]

RECOVERY_POINT_FILE = "recovery-point-offset-checkpoint"
LOG_START_FILE = "log-start-offset-checkpoint"
LEADER_EPOCH_FILE = "leader-epoch-checkpoint"
PARTITION_METADATA_FILE = "partition.metadata"
CLEAN_SHUTDOWN_FILE = "clean-shutdown"
CLEANER_CHECKPOINT_FILE = "cleaner-offset-checkpoint"

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL_TIMESTAMP = -4

_DIR_RE = re.compile(r"^(?P<topic>.+)-(?P<partition>\d+)$")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_partition_dir(name: str) -> tuple[str, int] | None:
    """``"orders-3"`` -> ``("orders", 3)``; None for anything else."""
    m = _DIR_RE.match(name)
    if m is None:
        return None
    return m.group("topic"), int(m.group("partition"))


class AppendOrigin(enum.Enum):
    """Who is appending: clients are checked strictly, replication keeps offsets."""

    CLIENT = "client"
    # group/transaction coordinators: may write control batches; their data batches are
    # checked for the producer epoch but not for sequences (as in Kafka)
    COORDINATOR = "coordinator"
    REPLICATION = "replication"  # follower fetch or mirroring: offsets come with the batches


class PreparedAppend(NamedTuple):
    """A payload that passed :meth:`PartitionLog.prepare_append`, ready to be appended."""

    data: bytes | bytearray | memoryview
    batches: list[tuple[int, BatchHeader]]
    now_ms: int
    origin: AppendOrigin


class AppendInfo(NamedTuple):
    """Result of an append. ``log_append_time`` is -1 unless the topic uses LogAppendTime.

    ``duplicate`` means an idempotent retry: the offsets are those of the original.
    """

    base_offset: int
    last_offset: int
    log_append_time: int
    duplicate: bool
    log_start_offset: int


# ------------------------------------------------------------------ small files


def write_file_atomically(
    path: str, data: bytes, *, sync: bool = True, sync_dir: bool | None = None
) -> None:
    """Replace ``path`` with ``data``: write ``<path>.tmp``, fsync it, rename it over
    ``path``, fsync the directory. A crash at any point leaves the old or the new content
    whole, never a mix or an empty file; once this returns, the new content is durable.

    With ``sync=False`` the two fsyncs are left to the caller's next flush (the
    replacement is still atomic against a process crash); see ``PartitionLog.flush``.
    ``sync_dir=False`` leaves only the directory fsync to the caller.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync if sync_dir is None else sync_dir:
        fsync_dir(os.path.dirname(path) or ".")


_write_file = write_file_atomically


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def fsync_dir(path: str) -> None:
    """fsync a directory: makes the creations, renames and deletions in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = fsync_dir


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs  # Linux only
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = (ctypes.c_int,)
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def sync_filesystem(path: str) -> None:
    """Write back and commit every change on the filesystem holding ``path``: file data,
    sizes and directory entries (``syncfs(2)``, which waits and reports write-back
    errors since Linux 5.8; ``sync(2)`` where it is missing). What it covers is as
    durable as after an fsync of each file and of each folder."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_topic_id(directory: str) -> uuid.UUID | None:
    """The topic id in a partition folder's ``partition.metadata``, if it has one."""
    text = _read_text(os.path.join(directory, PARTITION_METADATA_FILE))
    if not text:
        return None
    for line in text.split("\n"):
        key, _, value = line.partition(":")
        if key.strip() == "topic_id" and value.strip():
            raw = value.strip()
            with contextlib.suppress(ValueError):
                return uuid.UUID(bytes=base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return None


def _offset_checkpoint_text(topic: str, partition: int, offset: int) -> bytes:
    # Kafka's offset checkpoint format: version, entry count, "topic partition offset".
    return f"0\n1\n{topic} {partition} {offset}\n".encode()


def _read_offset_checkpoint(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    lines = text.split("\n")
    try:
        if lines[0].strip() != "0" or int(lines[1]) != 1:
            return None
        return int(lines[2].split()[-1])
    except (IndexError, ValueError):
        return None


class LeaderEpochCache:
    """Leader epoch -> start offset, persisted as Kafka's ``leader-epoch-checkpoint``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[tuple[int, int]] = self._load()
        # replaced without fsync since the last sync(): the owner's flush syncs it
        self.unsynced = False
        # called before every write: the owner removes its clean-shutdown marker first
        self.before_write: Callable[[], None] | None = None

    def _load(self) -> list[tuple[int, int]]:
        text = _read_text(self.path)
        if not text:
            return []
        lines = [line.split() for line in text.strip().split("\n")]
        try:
            if lines[0] != ["0"] or int(lines[1][0]) != len(lines) - 2:
                return []
            entries = [(int(e), int(o)) for e, o in lines[2:]]
        except (IndexError, ValueError):
            return []
        return entries

    def write(self, *, sync: bool = False) -> None:
        if self.before_write is not None:
            self.before_write()
        body = "".join(f"{e} {o}\n" for e, o in self.entries)
        _write_file(self.path, f"0\n{len(self.entries)}\n{body}".encode(), sync=sync)
        self.unsynced = not sync

    def sync(self) -> None:
        """fsync a checkpoint replaced without it (the caller fsyncs the directory)."""
        if self.unsynced:
            self.unsynced = False
            _fsync_file(self.path)

    @property
    def latest_epoch(self) -> int:
        return self.entries[-1][0] if self.entries else -1

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` starts at ``start_offset`` (if it is new)."""
        if epoch < 0:
            return False
        entries = self.entries
        if entries and entries[-1][0] >= epoch:
            return False
        while entries and entries[-1][1] >= start_offset:
            entries.pop()
        entries.append((epoch, start_offset))
        self.write()
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """``(epoch, end offset)`` as OffsetForLeaderEpoch answers; ``(-1, -1)`` if unknown."""
        entries = self.entries
        if epoch < 0:
            return -1, -1
        if entries and entries[-1][0] == epoch:
            return epoch, log_end_offset
        higher = next((i for i, (e, _o) in enumerate(entries) if e > epoch), None)
        if higher is None:
            return -1, -1
        if higher == 0:
            return epoch, entries[0][1]
        return entries[higher - 1][0], entries[higher][1]

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs starting at or after ``end_offset``."""
        keep = [(e, o) for e, o in self.entries if o < end_offset]
        if len(keep) != len(self.entries):
            self.entries = keep
            self.write()

    def truncate_from_start(self, start_offset: int) -> None:
        """Drop epochs that ended before ``start_offset``; the one covering it starts there."""
        entries = self.entries
        i = 0
        while i + 1 < len(entries) and entries[i + 1][1] <= start_offset:
            i += 1
        keep = entries[i:]
        if keep and keep[0][1] < start_offset:
            keep[0] = (keep[0][0], start_offset)
        if keep != entries:
            self.entries = keep
            self.write()

    def clear(self) -> None:
        self.entries = []
        self.write()


# ------------------------------------------------------------------ the log


class PartitionLog:
    """The segment log of one partition. Build with :meth:`open`."""

    def __init__(
        self,
        directory: str,
        config: LogConfig,
        *,
        topic: str,
        partition: int,
        producer_id_expiration_ms: int,
        auto_high_watermark: bool,
        max_uncompressed: int,
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.lock = threading.RLock()
        self._io_lock = threading.Lock()
        self._config = config
        self._auto_hw = auto_high_watermark
        self.max_uncompressed = max_uncompressed
        self.topic_id: uuid.UUID | None = None
        # (segments, their base offsets): replaced as one tuple so lock-free readers
        # always see a consistent pair.
        self._view: tuple[tuple[LogSegment, ...], tuple[int, ...]] = ((), ())
        self._leo = 0
        self._hw = 0
        self._log_start = 0
        self._recovery_point = 0
        self._producers = ProducerStateManager(directory, expiration_ms=producer_id_expiration_ms)
        self._epochs = LeaderEpochCache(os.path.join(directory, LEADER_EPOCH_FILE))
        self._epochs.before_write = self._mark_dirty
        # checkpoint files replaced without fsync, synced by the next flush
        self._unsynced_files: set[str] = set()
        self._deleted: list[tuple[int, LogSegment]] = []
        self._marker_present = False
        self._closed = False
        # why the log's storage failed (it then refuses appends and reads, is never
        # marked clean and is recovered at the next start); None while healthy
        self.failed: str | None = None
        # told (from whichever thread saw the failure) when the log goes offline
        self.on_failure: Callable[[PartitionLog, str], None] | None = None
        self._unflushed_messages = 0
        self._last_flush_ms = _now_ms()
        self._pending_flush_offset: int | None = None
        # truncations so far: a flush that saw another count does not move the recovery point
        self._truncations = 0
        self._jitter = 0
        self.had_clean_shutdown = False
        # segments recovered at open whose durability finish_recovery still owes
        self._recovered: list[LogSegment] | None = None
        # Tiered storage sets this to the offset below which every segment is durably in
        # the bucket; retention then keeps local.retention.* and never deletes above it.
        self.remote_log_end: int | None = None
        # the log that took over from this one when the partition moved to another log
        # dir: appends and reads made through a stale reference go there
        self.successor: PartitionLog | None = None

    # ================================================================== opening
    @classmethod
    def open(
        cls,
        directory: str,
        config: LogConfig,
        *,
        topic: str | None = None,
        partition: int | None = None,
        topic_id: uuid.UUID | bytes | str | None = None,
        producer_id_expiration_ms: int = 86_400_000,
        auto_high_watermark: bool = True,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        defer_recovery_sync: bool = False,
    ) -> PartitionLog:
        """Open (creating if needed) the log in ``directory``.

        After a clean shutdown this reads only checkpoints, the active segment's index
        tail and the newest producer snapshot. Otherwise segments from the recovery point
        on are re-validated, a torn or corrupt tail is truncated, and indexes, leader
        epochs and producer state are rebuilt; then :meth:`finish_recovery` makes that
        durable and moves the recovery point, at once, or, with
        ``defer_recovery_sync``, when the caller calls it (after one ``syncfs`` for
        every log it opened: see ``LogManager``).
        """
        if topic is None or partition is None:
            parsed = parse_partition_dir(os.path.basename(os.path.normpath(directory)))
            if parsed is None:
                raise ValueError(f"{directory} is not named <topic>-<partition>")
            topic, partition = parsed
        os.makedirs(directory, exist_ok=True)
        log = cls(
            directory,
            config,
            topic=topic,
            partition=partition,
            producer_id_expiration_ms=producer_id_expiration_ms,
            auto_high_watermark=auto_high_watermark,
            max_uncompressed=max_uncompressed,
        )
        log._load(_as_uuid(topic_id))
        if log.recovery_pending and not defer_recovery_sync:
            log.finish_recovery()
        return log

    def _new_segment(self, base_offset: int, *, suffix: str = "", new: bool = True) -> LogSegment:
        cfg = self._config
        return LogSegment(
            self.directory,
            base_offset,
            index_interval_bytes=cfg.index_interval_bytes,
            max_index_entries_bytes=cfg.segment_index_bytes,
            suffix=suffix,
            new=new,
        )

    def _publish(self, segments: Iterable[LogSegment]) -> None:
        segs = tuple(segments)
        self._view = (segs, tuple(s.base_offset for s in segs))

    @property
    def _segments(self) -> tuple[LogSegment, ...]:
        return self._view[0]

    @property
    def _bases(self) -> tuple[int, ...]:
        return self._view[1]

    def _load(self, topic_id: uuid.UUID | None) -> None:
        d = self.directory
        names = set(os.listdir(d))
        clean = CLEAN_SHUTDOWN_FILE in names
        for name in list(names):
            if name.endswith((DELETED_SUFFIX, CLEANED_SUFFIX, ".tmp")):
                _remove(os.path.join(d, name))
                names.discard(name)
        if any(n.endswith(SWAP_SUFFIX) for n in names):
            self._complete_swaps(names)
            names = set(os.listdir(d))

        self._load_topic_id(topic_id)
        bases = sorted(
            int(n[:-4]) for n in names if n.endswith(LOG_EXT) and n[:-4].isdigit() and len(n) == 24
        )
        known = set(bases)
        for n in names:  # index files whose log is gone
            stem, ext = os.path.splitext(n)
            orphan = stem.isdigit() and int(stem) not in known
            if orphan and ext in (INDEX_EXT, TIME_INDEX_EXT, ".txnindex"):
                _remove(os.path.join(d, n))
        stored_log_start = _read_offset_checkpoint(os.path.join(d, LOG_START_FILE))
        log_start = stored_log_start or 0
        stored_epochs = list(self._epochs.entries)
        recovery_point = _read_offset_checkpoint(os.path.join(d, RECOVERY_POINT_FILE))
        marker_leo = _read_marker(os.path.join(d, CLEAN_SHUTDOWN_FILE)) if clean else None
        if not bases:  # a new (or emptied) partition: nothing to recover
            segments = [self._new_segment(log_start)]
            bases = [log_start]
            clean = True
            recovery_point = marker_leo = log_start
        else:
            segments = [self._new_segment(b, new=False) for b in bases]
        if recovery_point is None:
            clean = False
            recovery_point = bases[0]

        def missing_index(b: int) -> bool:
            return f"{b:020d}{INDEX_EXT}" not in names or f"{b:020d}{TIME_INDEX_EXT}" not in names

        recover_from: int | None = None
        if clean:
            try:
                if missing_index(bases[-1]) and segments[-1].size:
                    raise IndexCorruptError("missing index")
                segments[-1].check_clean()
                if segments[-1].next_offset != marker_leo:
                    raise IndexCorruptError("log end disagrees with the clean-shutdown marker")
            except (RecordError, IndexCorruptError, OSError):
                clean = False
                recovery_point = min(recovery_point, bases[-1])
        if not clean:
            i = max(0, bisect_right(bases, recovery_point) - 1)
            recover_from = bases[i]
            for j in range(i, len(segments)):
                truncated = segments[j].recover(self._assign_epoch_from_batch)
                if truncated:
                    for dead in segments[j + 1 :]:
                        dead.delete()
                    del segments[j + 1 :]
                    break
            limit = i
        else:
            limit = len(segments) - 1
        for seg in segments[:limit]:  # sealed segments whose index files went missing
            if missing_index(seg.base_offset):
                seg.recover(reset_txn_index=False)
                seg.seal()
        self._publish(segments)
        self._leo = segments[-1].next_offset
        self._log_start = min(max(log_start, bases[0]), self._leo)
        self._marker_present = CLEAN_SHUTDOWN_FILE in names
        self._epochs.truncate_from_end(self._leo)
        self._epochs.truncate_from_start(self._log_start)
        self._load_producer_state(self._leo if clean else (recover_from or 0), recover_from)
        self._hw = self._leo if self._auto_hw else self._log_start
        self.had_clean_shutdown = clean
        if not clean:
            self._mark_dirty()
            for seg in segments[limit:]:
                if seg is not segments[-1]:
                    seg.seal()
                seg.write_pending_indexes()
            # Rewritten from what recovery found, without fsync, and only if it changed
            # them (each rewrite is a create, a write and a rename): finish_recovery makes
            # them durable, changed or not (an unchanged one may hold bytes written
            # without fsync before the crash), before the recovery point moves.
            self._producers.take_snapshot(self._leo)
            if self._epochs.entries != stored_epochs:
                self._epochs.write()
            else:
                self._unsynced_files.add(self._epochs.path)
            if self._log_start != stored_log_start:
                self._write_log_start()
            else:
                self._unsynced_files.add(os.path.join(d, LOG_START_FILE))
            self._recovered = segments[limit:]
            self._recovery_point = min(recover_from or 0, self._leo)
        else:
            self._recovery_point = self._leo
        for seg in segments:
            # no descriptor for an idle partition: each reopens on use (see .open_files)
            seg.release_files()
        self._jitter = self._new_jitter()

    @property
    def recovery_pending(self) -> bool:
        """Recovered at open, and :meth:`finish_recovery` not yet run."""
        return self._recovered is not None

    def finish_recovery(self, *, synced: bool = False) -> None:
        """Make what recovery rewrote durable, then move the recovery point to the log end.

        ``synced`` says the caller has just synced the filesystem (``syncfs``) after every
        log it opened was recovered, which covers each fsync below in one call; the
        recovery point is then written without fsync, and the caller syncs the
        filesystem once more (then :meth:`checkpoints_synced`). Writing it late only
        ever keeps an older, lower recovery point on disk, which is safe: more is
        re-validated at the next unclean start, nothing is trusted that was not synced.
        """
        recovered = self._recovered
        if recovered is None:
            return
        with self._io_lock:
            if not synced:
                # The recovered segments: their bytes may be only in the page cache (the
                # process died, not the machine), a torn tail was cut, the indexes were
                # rebuilt; the recovery point must not pass them before they are on disk.
                for seg in recovered:
                    seg.sync()
                # The snapshot at the log end, the leader epochs, the log start (and a
                # new partition.metadata): replaced above without fsync; the recovery
                # point trusts them, so their contents must be durable first ...
                self._producers.sync_snapshot(self._leo)
                self._sync_checkpoints()
                # ... and their names: one fsync of the folder for all the renames.
                _fsync_dir(self.directory)
            # Without ``synced``, fsynced and its rename fsynced (two more): after this
            # returns the start is complete and may be trusted by the next one.
            self._write_recovery_point(self._leo, sync=not synced)
            self._recovery_point = self._leo
            self._recovered = None

    def checkpoints_synced(self) -> None:
        """The caller synced the filesystem after :meth:`finish_recovery`: the
        checkpoints it left for the next flush are durable already."""
        with self.lock:
            self._unsynced_files.clear()
            self._epochs.unsynced = False

    def _assign_epoch_from_batch(self, header: BatchHeader, _batch: memoryview) -> None:
        if header.partition_leader_epoch > self._epochs.latest_epoch:
            self._epochs.entries.append((header.partition_leader_epoch, header.base_offset))

    def _load_topic_id(self, topic_id: uuid.UUID | None) -> None:
        path = os.path.join(self.directory, PARTITION_METADATA_FILE)
        stored = read_topic_id(self.directory)
        if stored is not None and topic_id is not None and stored != topic_id:
            raise InconsistentTopicIdError(
                f"{self.directory} holds topic id {stored}, not {topic_id}"
            )
        self.topic_id = stored or topic_id
        if stored is None and topic_id is not None:
            encoded = base64.urlsafe_b64encode(topic_id.bytes).rstrip(b"=").decode()
            _write_file(path, f"version: 0\ntopic_id: {encoded}\n".encode(), sync=False)
            self._unsynced_files.add(path)

    def _complete_swaps(self, names: set[str]) -> None:
        """Finish a compaction interrupted after its ``.swap`` files were complete."""
        d = self.directory
        swap_logs = sorted(n for n in names if n.endswith(LOG_EXT + SWAP_SUFFIX))
        for name in swap_logs:
            base = int(name[:20])
            seg = self._new_segment(base, suffix=SWAP_SUFFIX, new=False)
            try:
                end = base
                for _p, header in seg.iter_headers():
                    end = header.next_offset
            except RecordError:
                seg.delete()
                continue
            for n in names:
                if n.endswith(LOG_EXT) and n[:-4].isdigit():
                    b = int(n[:-4])
                    if base <= b < end:
                        old = self._new_segment(b, new=False)
                        old.delete()
            seg.close()
            seg.change_suffix("")
        for n in os.listdir(d):
            if n.endswith(SWAP_SUFFIX):
                _remove(os.path.join(d, n))

    def _load_producer_state(self, snapshot_limit: int, rebuild_txn_from: int | None) -> None:
        producers = self._producers
        loaded = producers.load_latest(snapshot_limit)  # also drops later snapshots
        start = loaded if loaded is not None else self._bases[0]
        start = max(start, self._bases[0])
        self._replay(start, self._leo, rebuild_txn_from)

    def _replay(self, start: int, end: int, rebuild_txn_from: int | None) -> None:
        """Rebuild producer state from batch headers in ``[start, end)``."""
        if start >= end:
            return
        segs = self._segments
        i = max(0, bisect_right(self._bases, start) - 1)
        producers = self._producers
        for seg in segs[i:]:
            if seg.base_offset >= end:
                break
            _, pos = seg.offset_index.lookup(start)
            for p, header in seg.iter_headers(pos):
                if header.base_offset + header.last_offset_delta < start:
                    continue
                if header.base_offset >= end:
                    break
                if header.producer_id < 0:
                    continue
                control = None
                if header.attributes & ATTR_CONTROL:
                    try:
                        control = control_record_of(seg.read_bytes(p, header.size))
                    except RecordError:
                        continue
                update = producers.begin(validate=False)
                update.append_batch(header, header.base_offset, header.max_timestamp, control)
                for txn, lso in producers.commit(update):
                    if (
                        txn.aborted
                        and rebuild_txn_from is not None
                        and txn.last_offset >= rebuild_txn_from
                    ):
                        seg.append_aborted_txn(
                            AbortedTxn(txn.producer_id, txn.first_offset, txn.last_offset, lso)
                        )

    # ============================================================== properties
    @property
    def config(self) -> LogConfig:
        return self._config

    def update_config(self, config: LogConfig) -> None:
        """Apply new topic settings (takes effect for later appends and maintenance)."""
        with self.lock:
            self._config = config
            for seg in self._segments:
                seg.index_interval_bytes = config.index_interval_bytes

    @property
    def segments(self) -> tuple[LogSegment, ...]:
        """The current segments, oldest first (an immutable snapshot)."""
        return self._segments

    @property
    def active_segment(self) -> LogSegment:
        return self._segments[-1]

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        """The next offset to be assigned."""
        return self._leo

    @property
    def high_watermark(self) -> int:
        return self._hw

    @high_watermark.setter
    def high_watermark(self, offset: int) -> None:
        with self.lock:
            self._hw = min(max(offset, self._log_start), self._leo)

    @property
    def last_stable_offset(self) -> int:
        """The first offset of the earliest open transaction, capped by the high watermark."""
        first = self._producers.first_unstable_offset
        hw = self._hw
        return hw if first is None or first > hw else first

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def producer_state(self) -> ProducerStateManager:
        return self._producers

    def in_open_txn(self, producer_id: int, epoch: int) -> bool:
        """Whether ``producer_id`` has a transaction open here under ``epoch``: its batches
        were verified with the coordinator when the transaction's first one came."""
        entry = self._producers.entries.get(producer_id)
        return entry is not None and entry.epoch == epoch and entry.txn_first_offset >= 0

    def producer_state_below(self, producer_id: int, producer_epoch: int, offset: int) -> bool:
        """Whether a batch of ``producer_id`` at ``producer_epoch`` would be checked against
        sequences written below ``offset`` under an epoch at least as new: the state of
        another producer with the same id (a promoted mirror's source producer)."""
        with self.lock:
            e = self._producers.entries.get(producer_id)
            return (
                e is not None
                and bool(e.batches)
                and e.last_offset < offset
                and producer_epoch <= e.epoch
            )

    def active_producers(self) -> list[ActiveProducer]:
        """A consistent copy of the producer states (for DescribeProducers)."""
        with self.lock:
            return self._producers.active_producers()

    @property
    def leader_epoch_cache(self) -> LeaderEpochCache:
        return self._epochs

    @property
    def latest_epoch(self) -> int:
        return self._epochs.latest_epoch

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """OffsetForLeaderEpoch: ``(largest epoch <= epoch, its end offset)`` or (-1, -1)."""
        with self.lock:
            return self._epochs.end_offset_for(epoch, self._leo)

    # ================================================================== append
    def append(
        self,
        data: bytes | bytearray | memoryview,
        *,
        leader_epoch: int = -1,
        now_ms: int | None = None,
        origin: AppendOrigin = AppendOrigin.CLIENT,
    ) -> AppendInfo:
        """Validate and append every batch in ``data`` (a produce payload).

        All batches are checked before any is written. For clients and coordinators the
        log assigns offsets (and the leader epoch, and LogAppendTime if configured) by
        patching the headers: in place when ``data`` is writable (a ``bytearray`` or a
        writable ``memoryview``), else in a copy. Replicated batches keep their offsets.
        Raises ``RecordError`` or ``LogError`` subclasses; ``error_code`` is Kafka's.
        """
        if now_ms is None:
            now_ms = _now_ms()
        prepared = self.prepare_append(data, now_ms=now_ms, origin=origin)
        return self.append_prepared(prepared, leader_epoch=leader_epoch)

    def prepare_append(
        self,
        data: bytes | bytearray | memoryview,
        *,
        now_ms: int,
        origin: AppendOrigin = AppendOrigin.CLIENT,
    ) -> PreparedAppend:
        """The checks of :meth:`append` that need no lock and touch no file (batch
        headers, CRCs, records, timestamps; recompression): pure CPU, so the event loop
        runs them and only :meth:`append_prepared` goes to a writer thread."""
        cfg = self._config
        batches = validate_batches(
            data,
            max_batch_bytes=cfg.max_message_bytes,
            from_client=origin is AppendOrigin.CLIENT,
        )
        if origin is AppendOrigin.CLIENT:
            data, batches = self._validate_records(data, batches)
        replication = origin is AppendOrigin.REPLICATION
        if not cfg.log_append_time and not replication:
            self._check_timestamps(batches, now_ms)
        return PreparedAppend(data, batches, now_ms, origin)

    def append_prepared(self, prepared: PreparedAppend, *, leader_epoch: int = -1) -> AppendInfo:
        """The locked part of :meth:`append`: offsets, producer state, the write, the
        log end. Safe on any thread (appends of one partition are serialised by the
        lock; readers see the new log end only once the bytes are written)."""
        data, batches, now_ms, origin = prepared
        replication = origin is AppendOrigin.REPLICATION
        log_append_time = self._config.log_append_time and not replication
        view = memoryview(data)
        with self.lock:
            if self._closed or self.failed is not None:
                if self.successor is not None and self.failed is None:
                    return self.successor.append_prepared(prepared, leader_epoch=leader_epoch)
                raise self._refusal()
            next_offset = self._leo
            first_offset = batches[0][1].base_offset if replication else next_offset
            update: ProducerStateUpdate | None = None
            max_ts = -1
            max_ts_offset = first_offset
            records = 0
            for pos, h in batches:
                base = h.base_offset if replication else next_offset
                if base < next_offset:
                    raise UnexpectedAppendOffsetError(
                        f"replicated batch at offset {base} is below the log end {next_offset}"
                    )
                if h.producer_id >= 0:
                    if update is None:
                        update = self._producers.begin(
                            validate=not replication,
                            check_sequences=origin is AppendOrigin.CLIENT,
                        )
                    control = None
                    if h.attributes & ATTR_CONTROL:
                        control = control_record_of(view[pos : pos + h.batch_length + LOG_OVERHEAD])
                    dup = update.append_batch(h, base, now_ms, control)
                    if dup is not None:
                        if len(batches) != 1:
                            raise DuplicateSequenceError(
                                f"producer {h.producer_id} resent sequence {h.base_sequence} "
                                "together with new batches"
                            )
                        return AppendInfo(
                            dup.first_offset, dup.last_offset, -1, True, self._log_start
                        )
                if h.max_timestamp > max_ts:
                    max_ts, max_ts_offset = h.max_timestamp, base
                records += h.records_count
                next_offset = base + h.last_offset_delta + 1
            last_offset = next_offset - 1

            if replication:
                buf: bytes | bytearray | memoryview = data
            else:
                if isinstance(data, bytearray) or (
                    isinstance(data, memoryview) and not data.readonly
                ):
                    buf = data
                else:
                    buf = bytearray(data)
                offset = first_offset
                for pos, h in batches:
                    set_base_offset(buf, pos, offset)  # type: ignore[arg-type]
                    set_partition_leader_epoch(buf, pos, leader_epoch)  # type: ignore[arg-type]
                    if log_append_time:
                        set_log_append_time(buf, pos, now_ms)  # type: ignore[arg-type]
                    offset += h.last_offset_delta + 1
                if log_append_time:
                    max_ts, max_ts_offset = now_ms, first_offset

            seg: LogSegment | None = None
            size_before = -1
            try:
                seg = self._maybe_roll(len(view), max_ts, now_ms, first_offset, last_offset)
                self._mark_dirty()
                size_before = seg.size
                # writes the data, then maybe index entries: a failure of either leaves
                # the log failed (below), so its offsets are never handed out again
                seg.append(buf, last_offset, max_ts, max_ts_offset)
            except (OSError, IndexCorruptError) as exc:
                if seg is not None and size_before >= 0 and seg.size > size_before:
                    self._cut_back(seg, size_before, first_offset)
                raise self._storage_error("cannot append", exc) from exc
            self._leo = next_offset
            if self._auto_hw:
                self._hw = next_offset
            try:
                if update is not None:
                    for txn, lso in self._producers.commit(update):
                        if txn.aborted:
                            seg.append_aborted_txn(
                                AbortedTxn(txn.producer_id, txn.first_offset, txn.last_offset, lso)
                            )
                if replication:
                    for _pos, h in batches:
                        if h.partition_leader_epoch > self._epochs.latest_epoch:
                            self._epochs.assign(h.partition_leader_epoch, h.base_offset)
                elif leader_epoch > self._epochs.latest_epoch:
                    self._epochs.assign(leader_epoch, first_offset)
            except OSError as exc:  # the data is in; its bookkeeping is not: offline
                raise self._storage_error("cannot record the append", exc) from exc
            self._unflushed_messages += records
            return AppendInfo(
                first_offset,
                last_offset,
                now_ms if log_append_time else -1,
                False,
                self._log_start,
            )

    def _validate_records(
        self, data: bytes | bytearray | memoryview, batches: list[tuple[int, BatchHeader]]
    ) -> tuple[bytes | bytearray | memoryview, list[tuple[int, BatchHeader]]]:
        """A client's batches, record by record (Kafka's LogValidator): well-formed
        records (CORRUPT_MESSAGE), keys on a compacted topic (INVALID_RECORD with the
        refused records), and, when the topic's ``compression.type`` names a codec,
        batches recompressed to it. Returns the payload to store and its batches."""
        cfg = self._config
        keys = cfg.compact
        target = cfg.target_codec
        limit = self.max_uncompressed
        refused: list[tuple[int, str]] = []
        index = 0
        recompress = False
        contents: list[bytes] = []
        for pos, h in batches:
            records = batch_records_data(data, pos, h, max_uncompressed=limit)
            refused += check_records(
                records, h.records_count, keys_required=keys, first_index=index
            )
            index += h.records_count
            if target is not None:
                contents.append(records)
                recompress = recompress or (h.attributes & COMPRESSION_MASK) != target
        if refused:
            raise InvalidRecordsError(
                f"{len(refused)} of {index} records refused: {refused[0][1]}", refused
            )
        if not recompress:
            return data, batches
        assert target is not None
        out = bytearray()
        for (pos, h), records in zip(batches, contents, strict=True):
            if h.attributes & COMPRESSION_MASK == target:
                out += memoryview(data)[pos : pos + h.size]
            else:
                out += rebuild_batch(data, pos, h, records, target)
        return out, validate_batches(out, max_batch_bytes=cfg.max_message_bytes)

    # ============================================================ failures
    def fail(self, reason: str) -> None:
        """Take the log offline after a storage error (any thread).

        From now on it refuses appends and reads with KAFKA_STORAGE_ERROR, it is never
        marked clean (the next start recovers it from its data) and ``on_failure`` is
        told once.
        """
        with self.lock:
            if self.failed is not None:
                return
            self.failed = reason
            with contextlib.suppress(OSError):
                self._mark_dirty()
        callback = self.on_failure
        if callback is not None:
            callback(self, reason)

    def _storage_error(self, what: str, exc: BaseException) -> KafkaStorageError:
        reason = f"{what}: {type(exc).__name__}: {exc}"
        self.fail(reason)
        return KafkaStorageError(f"{self.topic}-{self.partition} is offline: {reason}")

    def _refusal(self) -> KafkaStorageError:
        if self.failed is not None:
            return KafkaStorageError(f"{self.topic}-{self.partition} is offline: {self.failed}")
        return KafkaStorageError(f"log {self.directory} is closed")

    def _cut_back(self, seg: LogSegment, size: int, first_offset: int) -> None:
        """After a failed append, remove what reached the segment (best effort: the log
        goes offline either way, and recovery at the next start cuts a torn tail)."""
        with contextlib.suppress(Exception):
            seg.truncate_to(first_offset)
        with contextlib.suppress(Exception):
            if seg.size > size:
                seg.truncate_file(size)

    def _check_timestamps(self, batches: list[tuple[int, BatchHeader]], now_ms: int) -> None:
        cfg = self._config
        before, after = cfg.message_timestamp_before_max_ms, cfg.message_timestamp_after_max_ms
        if before == INT64_MAX and after == INT64_MAX:
            return
        for _pos, h in batches:
            if h.timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
                continue
            for ts in (h.base_timestamp, h.max_timestamp):
                if now_ms - ts > before or ts - now_ms > after:
                    raise InvalidTimestampError(
                        f"timestamp {ts} of the batch is out of range at {now_ms} "
                        f"(before {before} ms, after {after} ms)"
                    )

    def _maybe_roll(
        self, nbytes: int, max_ts: int, now_ms: int, first_offset: int, last_offset: int
    ) -> LogSegment:
        seg = self._segments[-1]
        size = seg.size
        if size == 0:
            if first_offset != seg.base_offset and first_offset - seg.base_offset > INT32_MAX:
                return self._roll(first_offset)
            return seg
        if self._roll_due(seg, size, nbytes, max_ts, now_ms, last_offset):
            return self._roll(first_offset)
        return seg

    def _roll_due(
        self, seg: LogSegment, size: int, nbytes: int, max_ts: int, now_ms: int, last_offset: int
    ) -> bool:
        cfg = self._config
        if (
            size + nbytes > cfg.segment_bytes
            or seg.offset_index.is_full
            or seg.time_index.is_full
            or last_offset - seg.base_offset > INT32_MAX
        ):
            return True
        first_ts = seg.first_batch_timestamp
        if first_ts >= 0 and max_ts >= 0:
            waited = max_ts - first_ts
        else:
            waited = now_ms - seg.created_ms
        return waited > cfg.segment_ms - self._jitter

    def append_is_light(self, prepared: PreparedAppend) -> bool:
        """Whether appending ``prepared`` now would be one write and nothing else: no
        roll due, no lazy index load, no clean-shutdown marker to remove (an fsync).
        A guess without the lock (an append may run meanwhile); wrong only towards
        "not light", or towards a roll the guess did not see, which is still correct,
        only slower. The writer uses it to keep small appends on the loop."""
        if self._marker_present or self._closed or self.failed is not None:
            return False
        seg = self._segments[-1]
        if not seg.files_loaded:
            return False
        data, batches, now_ms, _origin = prepared
        max_ts = max(h.max_timestamp for _p, h in batches)
        last = self._leo + sum(h.last_offset_delta + 1 for _p, h in batches) - 1
        return not self._roll_due(seg, seg.size, len(data), max_ts, now_ms, last)

    def _new_jitter(self) -> int:
        j = self._config.segment_jitter_ms
        return random.randrange(j) if j > 0 else 0

    def _roll(self, base_offset: int) -> LogSegment:
        old = self._segments[-1]
        old.seal()
        new = self._new_segment(base_offset)
        self._publish((*self._segments, new))
        self._producers.take_snapshot(base_offset)
        self._pending_flush_offset = base_offset
        self._jitter = self._new_jitter()
        return new

    def roll(self, now_ms: int | None = None) -> LogSegment:
        """Start a new active segment at the log end (no-op if the active one is empty)."""
        with self.lock:
            if self._segments[-1].size == 0:
                return self._segments[-1]
            self._mark_dirty()
            return self._roll(self._leo)

    # =================================================================== reads
    def read_slice(
        self,
        offset: int,
        max_bytes: int,
        upper_bound: int | None = None,
        *,
        min_one_batch: bool = True,
    ) -> ReadSlice | None:
        """Locate the whole batches a fetch at ``offset`` returns; None when there are none.

        ``upper_bound`` (the high watermark or last stable offset) excludes every batch
        ending at or after it; None means the log end (replication). Raises
        :class:`OffsetOutOfRangeError` for offsets below the log start or beyond the end.
        """
        segs, bases = self._view
        leo = self._leo
        if self._closed or self.failed is not None:
            if self.successor is not None and self.failed is None:
                return self.successor.read_slice(
                    offset, max_bytes, upper_bound, min_one_batch=min_one_batch
                )
            raise self._refusal()
        if offset < self._log_start or offset > leo:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self._log_start}, {leo}] of {self.directory}"
            )
        upper = leo if upper_bound is None else min(upper_bound, leo)
        if offset >= upper:
            return None
        i = max(0, bisect_right(bases, offset) - 1)
        try:
            for seg in segs[i:]:
                if seg.base_offset >= upper:
                    return None
                found = seg.locate(offset, max_bytes, upper, min_one_batch=min_one_batch)
                if found is not None:
                    return found if found.size else None
        except (OSError, IndexCorruptError, RecordError) as exc:
            raise self._read_error(offset, exc) from exc
        return None

    def unloaded_segment_for(self, offset: int) -> LogSegment | None:
        """The segment a read at ``offset`` starts in, when its offset index is not in
        memory yet: loading it reads the index file (megabytes for a full segment), and
        rebuilds it from the log if it is damaged, so the caller runs :meth:`load_index`
        off the event loop first."""
        segs, bases = self._view
        i = bisect_right(bases, offset) - 1
        if i < 0:
            return None
        seg = segs[i]
        return None if seg.offset_index.loaded else seg

    def load_index(self, seg: LogSegment) -> None:
        """Load (or rebuild) ``seg``'s offset index; for an executor thread. Failures are
        left to the read that follows, which reports them as it would have."""
        with contextlib.suppress(OSError, IndexCorruptError, RecordError):
            if seg is self._segments[-1]:  # appends may touch the active one's index
                with self.lock:
                    seg.offset_index.ensure_loaded()
            else:
                seg.offset_index.ensure_loaded()

    def _read_error(self, offset: int, exc: BaseException) -> Exception:
        """What a read that failed under the log answers: a retention pass or
        DeleteRecords that removed the segment meanwhile makes it OFFSET_OUT_OF_RANGE;
        a record that fails its checks is CORRUPT_MESSAGE; anything else the disk says
        takes the log offline (KAFKA_STORAGE_ERROR)."""
        if offset < self._log_start or self._closed:
            return (
                OffsetOutOfRangeError(
                    f"offset {offset} was removed by retention during the read "
                    f"(log start {self._log_start})"
                )
                if not self._closed
                else self._refusal()
            )
        if isinstance(exc, RecordError):
            return exc
        return self._storage_error(f"cannot read at offset {offset}", exc)

    def read(
        self,
        offset: int,
        max_bytes: int,
        upper_bound: int | None = None,
        *,
        min_one_batch: bool = True,
    ) -> bytes:
        """Bytes of whole batches starting at the batch holding ``offset``; see
        :meth:`read_slice`. At least one batch unless ``min_one_batch`` is False."""
        found = self.read_slice(offset, max_bytes, upper_bound, min_one_batch=min_one_batch)
        if found is None:
            return b""
        try:
            return found.read()
        except (OSError, RecordError) as exc:
            raise self._read_error(offset, exc) from exc

    def aborted_transactions(self, fetch_offset: int, upper_offset: int) -> list[tuple[int, int]]:
        """``[(producer_id, first_offset)]`` of aborted transactions overlapping
        ``[fetch_offset, upper_offset)``, for read_committed fetches."""
        segs, bases = self._view
        i = max(0, bisect_right(bases, fetch_offset) - 1)
        out: list[tuple[int, int]] = []
        try:
            for seg in segs[i:]:
                found, complete = seg.txn_index.collect(fetch_offset, upper_offset)
                out.extend((t.producer_id, t.first_offset) for t in found)
                if complete:
                    break
        except (OSError, IndexCorruptError) as exc:
            raise self._read_error(fetch_offset, exc) from exc
        return out

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """ListOffsets by time: ``(offset, timestamp)`` of the first record with a
        timestamp >= ``timestamp``, or None when there is none."""
        return self._lookup(self._offset_for_timestamp, timestamp)

    def _lookup(
        self, find: Callable[[int], tuple[int, int] | None], arg: int
    ) -> tuple[int, int] | None:
        """Run a ListOffsets search over the segments; a retention pass that removes a
        segment meanwhile makes it search again (once) from the new log start, a disk
        error takes the log offline (KAFKA_STORAGE_ERROR)."""
        if self._closed or self.failed is not None:
            raise self._refusal()
        for attempt in range(2):
            start = self._log_start
            try:
                return find(arg)
            except (OSError, IndexCorruptError, RecordError) as exc:
                if attempt == 0 and self._log_start != start and not self._closed:
                    continue
                if isinstance(exc, RecordError):
                    raise
                raise self._storage_error("cannot search the log", exc) from exc
        return None

    def _offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        start = self._log_start
        for seg in self._segments:
            if seg.max_timestamp >= timestamp and seg.size:
                found = seg.find_offset_by_timestamp(
                    timestamp, start, max_uncompressed=self.max_uncompressed
                )
                if found is not None:
                    return found
        return None

    def list_offsets(
        self, timestamp: int, upper_bound: int | None = None
    ) -> tuple[int, int] | None:
        """ListOffsets for one partition: ``(offset, timestamp)`` or None (not found).

        ``timestamp`` is a time in ms or Kafka's specials: -1 latest (``upper_bound``,
        i.e. the high watermark or last stable offset, else the log end), -2 earliest,
        -3 the record with the max timestamp, -4 earliest local (= earliest here).
        Timestamps are -1 for the specials -1, -2 and -4. Results at or beyond
        ``upper_bound`` are not visible and give None.
        """
        upper = self._leo if upper_bound is None else min(upper_bound, self._leo)
        if timestamp == LATEST_TIMESTAMP:
            return upper, -1
        if timestamp in (EARLIEST_TIMESTAMP, EARLIEST_LOCAL_TIMESTAMP):
            return self._log_start, -1
        if timestamp == MAX_TIMESTAMP:
            found = self.max_timestamp_offset()
        elif timestamp >= 0:
            found = self.offset_for_timestamp(timestamp)
        else:
            return None
        if found is None or found[0] >= upper:
            return None
        return found

    def max_timestamp_offset(self) -> tuple[int, int] | None:
        """ListOffsets -3: ``(offset, timestamp)`` of the record with the largest timestamp."""
        return self._lookup(self._max_timestamp_offset, 0)

    def _max_timestamp_offset(self, _unused: int) -> tuple[int, int] | None:
        best: LogSegment | None = None
        for seg in self._segments:
            if seg.size and (best is None or seg.max_timestamp > best.max_timestamp):
                best = seg
        if best is None or best.max_timestamp < 0:
            return None
        ts = best.max_timestamp
        found = best.find_batch(max(best.offset_of_max_timestamp, self._log_start))
        if found is None:
            return None
        for pos, header in best.iter_headers(found[0]):
            if header.max_timestamp != ts:
                continue
            if header.timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
                return max(header.base_offset, self._log_start), ts
            batch = best.read_bytes(pos, header.size)
            _, recs = decode_batch(batch, max_uncompressed=self.max_uncompressed)
            for r in recs:
                if header.base_timestamp + r.timestamp_delta == ts:
                    return header.base_offset + r.offset_delta, ts
        return None

    # ============================================================ maintenance
    def _mark_dirty(self) -> None:
        """Remove the clean-shutdown marker (durably) before the first change."""
        if self._marker_present:
            _remove(os.path.join(self.directory, CLEAN_SHUTDOWN_FILE))
            _fsync_dir(self.directory)
            self._marker_present = False

    def _write_recovery_point(
        self, offset: int, *, sync: bool = True, sync_dir: bool | None = None
    ) -> None:
        """Replace the recovery point; without ``sync`` (a truncation on the event loop,
        which only ever lowers it) the next flush syncs the file and the directory."""
        path = os.path.join(self.directory, RECOVERY_POINT_FILE)
        text = _offset_checkpoint_text(self.topic, self.partition, offset)
        _write_file(path, text, sync=sync, sync_dir=sync_dir)
        if not sync:
            self._unsynced_files.add(path)

    def _write_log_start(self, *, sync: bool = False, sync_dir: bool | None = None) -> None:
        """Replace the log-start checkpoint; without ``sync`` the next flush syncs it
        (before the recovery point moves past it)."""
        path = os.path.join(self.directory, LOG_START_FILE)
        text = _offset_checkpoint_text(self.topic, self.partition, self._log_start)
        _write_file(path, text, sync=sync, sync_dir=sync_dir)
        if sync:
            self._unsynced_files.discard(path)
        else:
            self._unsynced_files.add(path)

    def _sync_checkpoints(self) -> None:
        """fsync the checkpoints replaced without fsync (the caller fsyncs the directory)."""
        with self.lock:
            paths, self._unsynced_files = self._unsynced_files, set()
        for path in paths:
            _fsync_file(path)
        self._epochs.sync()

    def flush(self, up_to: int | None = None, *, now_ms: int | None = None) -> None:
        """fsync everything below ``up_to`` (default: the log end) and advance the
        recovery point. Meant for an executor thread; appends may continue meanwhile.
        A failed fsync or write takes the log offline: after a failed fsync the kernel
        may have dropped the dirty pages, so nothing written since may be trusted."""
        if self.failed is not None:
            return
        try:
            self._flush(up_to, now_ms)
        except OSError as exc:
            raise self._storage_error("cannot flush", exc) from exc

    def _flush(self, up_to: int | None, now_ms: int | None) -> None:
        with self._io_lock:
            with self.lock:
                if self._closed:
                    return
                truncations = self._truncations
                leo = self._leo
                target = leo if up_to is None else min(up_to, leo)
                pending = self._pending_flush_offset
                if pending is not None and pending <= self._recovery_point:
                    self._pending_flush_offset = None
                checkpoints_only = target <= self._recovery_point
                if checkpoints_only and not (self._unsynced_files or self._epochs.unsynced):
                    return
                bases = self._bases
                i = max(0, bisect_right(bases, self._recovery_point) - 1)
                segs = [
                    s
                    for s in self._segments[i:]
                    if s.base_offset < target or s is self._segments[-1]
                ]
                for s in segs:
                    s.write_pending_indexes()
                snapshots = [
                    o for o in self._producers.snapshot_offsets() if o > self._recovery_point
                ]
                messages = self._unflushed_messages
            if checkpoints_only:  # e.g. the recovery point a truncation lowered
                self._sync_checkpoints()
                _fsync_dir(self.directory)
                return
            for s in segs:
                s.sync()
            for o in snapshots:
                self._producers.sync_snapshot(o)
            self._sync_checkpoints()
            _fsync_dir(self.directory)
            # the new recovery point is written and fsynced here, outside the lock an
            # append takes; under it, only renamed into place (and only if no truncation
            # ran meanwhile: then the data below ``target`` is not what was synced)
            rp_path = os.path.join(self.directory, RECOVERY_POINT_FILE)
            staged = rp_path + ".flush.tmp"
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, _offset_checkpoint_text(self.topic, self.partition, target))
                os.fsync(fd)
            finally:
                os.close(fd)
            moved = False
            with self.lock:
                if target > self._recovery_point and truncations == self._truncations:
                    os.replace(staged, rp_path)
                    self._recovery_point = target
                    moved = True
                else:
                    _remove(staged)
                if target >= leo:
                    self._unflushed_messages = max(0, self._unflushed_messages - messages)
                self._last_flush_ms = _now_ms() if now_ms is None else now_ms
                if self._pending_flush_offset is not None and self._pending_flush_offset <= target:
                    self._pending_flush_offset = None
            if moved:
                _fsync_dir(self.directory)

    def flush_due(self, now_ms: int) -> bool:
        """Whether ``flush.messages`` or ``flush.ms`` asks for a flush now."""
        cfg = self._config
        if self._pending_flush_offset is not None:
            return True
        if not self._unflushed_messages:
            return False
        return (
            self._unflushed_messages >= cfg.flush_messages
            or now_ms - self._last_flush_ms >= cfg.flush_ms
        )

    def maybe_flush(self, now_ms: int) -> bool:
        """Flush per the flush policy (and after a roll, up to the new segment)."""
        cfg = self._config
        if self._unflushed_messages and (
            self._unflushed_messages >= cfg.flush_messages
            or now_ms - self._last_flush_ms >= cfg.flush_ms
        ):
            self.flush(now_ms=now_ms)
            return True
        pending = self._pending_flush_offset
        if pending is not None:
            self.flush(pending, now_ms=now_ms)
            return True
        return False

    def delete_records_before(self, offset: int, *, now_ms: int | None = None) -> int:
        """DeleteRecords: move the log start offset up to ``offset`` and delete the
        segments wholly below it. Returns the new log start offset (the low watermark)."""
        with self.lock:
            if self._closed or self.failed is not None:
                raise self._refusal()
            if offset > self._hw or offset < 0:
                raise OffsetOutOfRangeError(
                    f"cannot delete before {offset}: outside [0, high watermark {self._hw}]"
                )
            if offset > self._log_start:
                try:
                    self._mark_dirty()
                    self._log_start = offset
                    self._write_log_start()
                    self._epochs.truncate_from_start(offset)
                except OSError as exc:
                    raise self._storage_error("cannot move the log start", exc) from exc
            start = self._log_start
        self._delete_leading(self._count_below_start(), now_ms)
        return start

    def _count_below_start(self) -> int:
        segs = self._segments
        n = 0
        while n < len(segs) - 1 and segs[n + 1].base_offset <= self._log_start:
            n += 1
        return n

    def apply_retention(self, now_ms: int) -> int:
        """Delete closed segments past ``retention.ms`` / ``retention.bytes`` (with the
        'delete' policy) or wholly below the log start. Returns segments deleted."""
        cfg = self._config
        segs = self._segments
        last = len(segs) - 1
        hw = self._hw
        n = self._count_below_start()
        retention_ms, retention_bytes = cfg.retention_ms, cfg.retention_bytes
        remote_end = self.remote_log_end
        if remote_end is not None:
            # tiered: only what the bucket holds may go, after the local retention
            hw = min(hw, remote_end)
            if cfg.local_retention_ms != -2:
                retention_ms = cfg.local_retention_ms
            if cfg.local_retention_bytes != -2:
                retention_bytes = cfg.local_retention_bytes
        if cfg.delete:
            if retention_ms >= 0:
                k = 0
                while (
                    k < last
                    and segs[k + 1].base_offset <= hw
                    and now_ms - segs[k].largest_timestamp > retention_ms
                ):
                    k += 1
                n = max(n, k)
            if retention_bytes >= 0:
                diff = sum(s.size for s in segs) - retention_bytes
                k = 0
                while k < last and segs[k + 1].base_offset <= hw and diff - segs[k].size >= 0:
                    diff -= segs[k].size
                    k += 1
                n = max(n, k)
        return self._delete_leading(n, now_ms)

    def _delete_leading(self, n: int, now_ms: int | None) -> int:
        if n <= 0:
            return 0
        with self.lock:
            segs = self._segments
            n = min(n, len(segs) - 1)
            if n <= 0:
                return 0
            doomed = segs[:n]
            self._mark_dirty()
            self._publish(segs[n:])
            new_start = max(self._log_start, self._bases[0])
            if new_start != self._log_start:
                self._log_start = new_start
                self._write_log_start()
                self._epochs.truncate_from_start(new_start)
            if self._hw < new_start:
                self._hw = new_start
            self._retire(doomed, now_ms)
            self._producers.delete_snapshots_before(new_start)
            return n

    def _retire(self, doomed: Iterable[LogSegment], now_ms: int | None) -> None:
        """Rename segments to ``*.deleted``; :meth:`reap_deleted` unlinks them later."""
        due = (_now_ms() if now_ms is None else now_ms) + self._config.file_delete_delay_ms
        for seg in doomed:
            with contextlib.suppress(OSError):
                seg.change_suffix(DELETED_SUFFIX)
            self._deleted.append((due, seg))

    def reap_deleted(self, now_ms: int, *, force: bool = False) -> int:
        """Close and unlink ``*.deleted`` segments whose delay has passed."""
        with self._io_lock:
            with self.lock:
                due = [(t, s) for t, s in self._deleted if force or t <= now_ms]
                self._deleted = [(t, s) for t, s in self._deleted if not (force or t <= now_ms)]
            for _t, seg in due:
                with contextlib.suppress(OSError):
                    seg.delete()
        return len(due)

    def expire_producers(self, now_ms: int) -> int:
        with self.lock:
            return self._producers.remove_expired(now_ms)

    def replace_segments(
        self, old: list[LogSegment], new: LogSegment, *, now_ms: int | None = None
    ) -> bool:
        """Atomically swap the consecutive segments ``old`` for ``new`` (compaction).

        ``new`` carries the ``.cleaned`` suffix and covers the offsets of ``old``. It is
        renamed ``.swap``, the old segments ``.deleted``, then ``new`` takes its final
        name. Returns False (and leaves the log alone) if ``old`` is no longer there.
        """
        with self.lock:
            if self._closed:
                return False
            segs = list(self._segments)
            try:
                i = next(k for k, s in enumerate(segs) if s is old[0])
            except StopIteration:
                return False
            if segs[i : i + len(old)] != old or i + len(old) >= len(segs):
                return False
            self._mark_dirty()
            new.write_pending_indexes()
            new.change_suffix(SWAP_SUFFIX)
            self._retire(old, now_ms)
            new.change_suffix("")
            segs[i : i + len(old)] = [new]
            self._publish(segs)
            return True

    def read_cleaner_checkpoint(self) -> int:
        return _read_offset_checkpoint(os.path.join(self.directory, CLEANER_CHECKPOINT_FILE)) or 0

    def write_cleaner_checkpoint(self, offset: int) -> None:
        path = os.path.join(self.directory, CLEANER_CHECKPOINT_FILE)
        _write_file(path, _offset_checkpoint_text(self.topic, self.partition, offset), sync=False)
        self._unsynced_files.add(path)

    # ============================================================== truncation
    def truncate_to(self, offset: int, *, now_ms: int | None = None) -> None:
        """Remove everything at or after ``offset`` (a follower diverging from its leader)."""
        with self.lock:
            if offset >= self._leo:
                return
            if offset < self._log_start or offset <= self._bases[0]:
                self.truncate_fully_and_start_at(offset, now_ms=now_ms)
                return
            self._mark_dirty()
            segs = list(self._segments)
            keep = [s for s in segs if s.base_offset < offset] or segs[:1]
            drop = segs[len(keep) :]
            active = keep[-1]
            active.truncate_to(offset)
            self._retire(drop, now_ms)
            self._publish(keep)
            self._leo = active.next_offset
            self._hw = min(self._hw, self._leo)
            self._truncations += 1
            if self._recovery_point > self._leo:
                self._recovery_point = self._leo
                self._write_recovery_point(self._leo, sync=False)
                self._pending_flush_offset = self._leo  # the next flush pass syncs it
            self._epochs.truncate_from_end(self._leo)
            for seg in keep:
                seg.txn_index.truncate_to(self._leo)
            if self.read_cleaner_checkpoint() > self._leo:
                self.write_cleaner_checkpoint(self._leo)
            self._load_producer_state(self._leo, None)

    def truncate_fully_and_start_at(self, offset: int, *, now_ms: int | None = None) -> None:
        """Drop all data and restart the log empty at ``offset``."""
        with self.lock:
            self._mark_dirty()
            doomed = self._segments
            self._retire(doomed, now_ms)
            self._publish([self._new_segment(offset)])
            self._leo = self._hw = self._log_start = offset
            self._truncations += 1
            self._recovery_point = offset
            self._write_recovery_point(offset, sync=False)
            self._pending_flush_offset = offset  # the next flush pass syncs it
            self._write_log_start()
            self._epochs.clear()
            self._producers.reset()
            self._producers.delete_snapshots_after(-1)
            self.write_cleaner_checkpoint(offset)
            self._unflushed_messages = 0

    # ================================================================ shutdown
    def close(self) -> None:
        """Flush everything, snapshot producer state, write the checkpoints and the
        clean-shutdown marker, and release every file descriptor."""
        with self._io_lock, self.lock:
            self._close_locked()

    def _close_locked(self) -> None:
        """The body of close(), also run by hand_over() under the same locks."""
        if self._closed:
            return
        self._closed = True
        if self.failed is not None:  # no marker: the next start recovers the log
            for seg in (*self._segments, *(s for _t, s in self._deleted)):
                with contextlib.suppress(OSError):
                    seg.close(discard_pending=True)
            self._deleted = []
            return
        if not self._marker_present:
            active = self._segments[-1]
            active.seal()
            for seg in self._segments:
                seg.write_pending_indexes()
                seg.flush()
            self._producers.take_snapshot(self._leo, sync=True)
            self._epochs.write(sync=True)
            self._write_recovery_point(self._leo, sync_dir=False)
            self._write_log_start(sync=True, sync_dir=False)
            self._sync_checkpoints()
            # every checkpoint is durable (data and name) before the marker trusts it
            _fsync_dir(self.directory)
            _write_file(
                os.path.join(self.directory, CLEAN_SHUTDOWN_FILE),
                f"log_end_offset: {self._leo}\n".encode(),
                sync=True,
            )
            self._marker_present = True
        for seg in self._segments:
            seg.close()
        for _t, seg in self._deleted:
            with contextlib.suppress(OSError):
                seg.delete()
        self._deleted = []

    def hand_over(self, reopen: Callable[[], PartitionLog]) -> PartitionLog:
        """Close the log and open its successor (``reopen``: the same files under another
        folder name) while appends wait on the lock, so no append falls between them;
        stale references are forwarded to the successor."""
        with self._io_lock, self.lock:
            self._close_locked()
            self.successor = reopen()
            return self.successor

    def forward_to(self, successor: PartitionLog) -> None:
        """Stop serving (files stay open for reads in flight) and send appends and reads
        made through stale references to ``successor``."""
        with self.lock:
            self._closed = True
            self.successor = successor

    @property
    def closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        """Refuse appends from now on (the partition is being deleted); files stay open."""
        with self.lock:
            self._closed = True

    def delete(self) -> None:
        """Close without a marker and remove the partition directory."""
        with self._io_lock, self.lock:
            self._closed = True
            for seg in self._segments:
                seg.close(discard_pending=True)
            for _t, seg in self._deleted:
                seg.close(discard_pending=True)
            self._deleted = []
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        return (
            f"PartitionLog({self.topic}-{self.partition}, start={self._log_start}, "
            f"end={self._leo}, segments={len(self._segments)})"
        )


def _as_uuid(topic_id: uuid.UUID | bytes | str | None) -> uuid.UUID | None:
    if topic_id is None or isinstance(topic_id, uuid.UUID):
        return topic_id
    if isinstance(topic_id, bytes):
        return uuid.UUID(bytes=topic_id)
    try:
        return uuid.UUID(topic_id)
    except ValueError:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(topic_id + "=" * (-len(topic_id) % 4)))


def _read_marker(path: str) -> int | None:
    text = _read_text(path)
    if not text:
        return None
    key, _, value = text.partition(":")
    try:
        return int(value) if key.strip() == "log_end_offset" else None
    except ValueError:
        return None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
