"""The broker's view of its data directory: every partition log, opened, maintained, closed.

``LogManager`` opens all ``<topic>-<partition>`` directories at start (after a clean
shutdown each costs a handful of small file reads, no scans), creates and deletes
partition logs, and runs periodic maintenance: retention, compaction, the flush policy
(``flush.messages``/``flush.ms`` and the flush that follows a segment roll), producer id
expiry and the delayed removal of ``*.deleted`` files.

Folder names and what they mean at start:

* ``<topic>-<partition>``: a partition log, opened. With an ``expected`` callback (the
  single broker's metadata), a folder whose topic is unknown, whose index is beyond the
  topic's partitions or whose ``partition.metadata`` names another topic id is not
  opened: it is renamed ``<topic>-<partition>.<topic id>-stray`` and kept for the
  operator, never served. A log that cannot be opened goes offline (:attr:`offline`);
  the others load.
* ``<topic>-<partition>.<topic id>-delete``: a deleted partition. Deleting renames the
  folder at once and fsyncs the data directory, so a topic created again under the same
  name starts in a new folder, even after a crash; the files are removed by the next
  maintenance pass, or at the next start.

Threading: the broker calls :meth:`LogManager.get_or_create`, :meth:`LogManager.get` and
:meth:`LogManager.delete_partition` from the event loop, and
:meth:`LogManager.run_maintenance` / :meth:`LogManager.flush_all` from one executor
thread. The partition table is guarded by a lock; each partition's own lock guards its
segment list (see :mod:`.partition_log`). Overlapping maintenance calls are skipped, not
queued. A partition being deleted is closed for appends at once and its files are removed
by the next maintenance pass, so the maintenance thread never loses a file under it.
:meth:`LogManager.detach` (event loop, no I/O) and :meth:`LogManager.delete_detached`
(executor) split a deletion so that the name is free at once and the renames and the
directory fsync happen off the loop; a :meth:`LogManager.get_or_create` of a detached
name renames the old folder first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shazamq.protocol.records import DEFAULT_MAX_UNCOMPRESSED, iter_batches

from .cleaner import DEFAULT_DEDUPE_BUFFER_BYTES, LogCleaner
from .errors import InconsistentTopicIdError, KafkaStorageError, OffsetOutOfRangeError
from .log_config import LogConfig
from .partition_log import (
    CLEAN_SHUTDOWN_FILE,
    AppendOrigin,
    PartitionLog,
    _as_uuid,
    fsync_dir,
    parse_partition_dir,
    read_topic_id,
    sync_filesystem,
)

__all__ = [
    "DELETE_SUFFIX",
    "FUTURE_SUFFIX",
    "STRAY_SUFFIX",
    "LogDirsError",
    "LogManager",
    "MaintenanceReport",
    "check_log_dirs_in_use",
    "count_partition_dirs",
]

logger = logging.getLogger(__name__)

DELETE_SUFFIX = "-delete"
# a partition being copied to another log dir (AlterReplicaLogDirs), as Kafka names it
FUTURE_SUFFIX = "-future"
STRAY_SUFFIX = "-stray"
_IO_THREADS = 8

# (topic, partition) -> the topic id the metadata has for it, or None when it has none
ExpectedTopicId = Callable[[str, int], uuid.UUID | None]


def count_partition_dirs(*dirs: str) -> int:
    """How many ``<topic>-<partition>`` folders the log dirs hold (0 for a missing or
    unreadable one)."""
    total = 0
    for d in dirs:
        try:
            with os.scandir(d) as it:
                total += sum(
                    1 for e in it if e.is_dir() and parse_partition_dir(e.name) is not None
                )
        except OSError:  # missing, or unusable: the log manager reports it offline
            pass
    return total


class LogDirsError(Exception):
    """The log dirs cannot be used as they are: a partition's folder in two of them (which
    one is current cannot be told), or partitions in a data_dir no longer listed."""


def check_log_dirs_in_use(data_dir: str, log_dirs: Sequence[str]) -> None:
    """Refuse log dirs that leave out a data_dir holding partitions: they would be
    created again, empty, elsewhere."""
    norm = os.path.normpath(os.path.abspath(data_dir))
    if norm in {os.path.normpath(os.path.abspath(d)) for d in log_dirs}:
        return
    found = count_partition_dirs(data_dir)
    if found:
        raise LogDirsError(
            f"data_dir {data_dir} holds {found} partition folders but is not one of the "
            "log dirs; list it in log_dirs (or move its partitions into one)"
        )


def parse_future_dir(name: str) -> tuple[str, int] | None:
    """``"orders-3.<hex>-future"`` -> ``("orders", 3)``; None for anything else."""
    if not name.endswith(FUTURE_SUFFIX):
        return None
    stem, dot, tag = name[: -len(FUTURE_SUFFIX)].rpartition(".")
    if not dot or not tag:
        return None
    return parse_partition_dir(stem)


def _free_name(path: str, topic_id: uuid.UUID | None, suffix: str) -> str:
    """``<path>.<topic id>-delete`` (or ``-stray``), made unique if it exists already."""
    tag = topic_id.hex if topic_id is not None else "unknown"
    target = f"{path}.{tag}{suffix}"
    if os.path.lexists(target):
        target = f"{path}.{tag}.{uuid.uuid4().hex[:8]}{suffix}"
    return target


@dataclass(slots=True)
class MaintenanceReport:
    """What one :meth:`LogManager.run_maintenance` call did."""

    segments_deleted: int = 0
    logs_compacted: int = 0
    logs_flushed: int = 0
    producers_expired: int = 0
    files_removed: int = 0
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    skipped: bool = False


class LogManager:
    """All partition logs under the log dirs (``data_dir`` alone unless ``log_dirs``)."""

    def __init__(
        self,
        data_dir: str,
        default_config: LogConfig,
        *,
        log_dirs: Sequence[str] | None = None,
        topic_configs: Mapping[str, LogConfig] | None = None,
        producer_id_expiration_ms: int = 86_400_000,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        auto_high_watermark: bool = True,
        dedupe_buffer_bytes: int = DEFAULT_DEDUPE_BUFFER_BYTES,
        expected: ExpectedTopicId | None = None,
        cleaner_process: bool = True,
    ) -> None:
        self.dirs = [os.path.normpath(os.path.abspath(d)) for d in (log_dirs or [data_dir])]
        self.data_dir = self.dirs[0]
        # log dirs that cannot be used (created, listed) -> why: KAFKA_STORAGE_ERROR
        self.offline_dirs: dict[str, str] = {}
        # partitions being copied to another log dir -> their future log
        self.futures: dict[tuple[str, int], PartitionLog] = {}
        self.default_config = default_config
        self._topic_configs: dict[str, LogConfig] = dict(topic_configs or {})
        self._expiration_ms = producer_id_expiration_ms
        self._max_uncompressed = max_uncompressed
        self._auto_hw = auto_high_watermark
        self._lock = threading.Lock()
        self._maintenance_lock = threading.Lock()
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._doomed: list[PartitionLog] = []
        # detached (deleted) but their folder not renamed yet
        self._detached: dict[tuple[str, int], PartitionLog] = {}
        # partitions whose log could not be opened -> why; they stay offline until restart
        self.offline: dict[tuple[str, int], str] = {}
        # told (from the thread that saw it) when an open log's storage fails
        self.failure_listener: Callable[[PartitionLog, str], None] | None = None
        # partition folders created since the last sync_new_dirs()
        self._new_dirs: list[str] = []
        self._expected = expected
        # compaction's Python work runs in a worker process, off the broker's GIL
        self.cleaner = LogCleaner(
            max_uncompressed=max_uncompressed,
            dedupe_buffer_bytes=dedupe_buffer_bytes,
            worker_process=cleaner_process,
        )
        self._closed = False
        for d in self.dirs:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                self._dir_failed(d, exc)
        self._load_all()

    # ------------------------------------------------------------------ loading
    def _dir_failed(self, d: str, exc: BaseException) -> None:
        logger.error("log dir %s is offline: %s", d, exc)
        self.offline_dirs[d] = f"{type(exc).__name__}: {exc}"

    def _scan(self, d: str) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        """The partition folders of one log dir, and its future ones; removes deleted
        folders and quarantines strays."""
        found: list[tuple[str, str, int]] = []
        futures: list[tuple[str, str, int]] = []
        moved = False
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name.endswith(DELETE_SUFFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                moved = True
                continue
            future = parse_future_dir(entry.name)
            if future is not None:
                futures.append((entry.path, *future))
                continue
            parsed = parse_partition_dir(entry.name)
            if parsed is None:
                continue
            if self._expected is not None and self._is_stray(entry.path, *parsed):
                moved = True
                continue
            found.append((entry.path, *parsed))
        if moved:
            fsync_dir(d)
        return found, futures

    def _load_all(self) -> None:
        found: list[tuple[str, str, int]] = []
        futures: list[tuple[str, str, int]] = []
        for d in self.dirs:
            if d in self.offline_dirs:
                continue
            try:
                plain, future = self._scan(d)
            except OSError as exc:
                self._dir_failed(d, exc)
                continue
            found += plain
            futures += future
        where: dict[tuple[str, int], str] = {}
        for path, topic, partition in found:
            other = where.setdefault((topic, partition), path)
            if other != path:
                raise LogDirsError(
                    f"partition {topic}-{partition} has a log in both {other} and {path}; "
                    "keep the right one and remove (or rename) the other"
                )
        found += self._settle_futures(futures, where)
        # Cleanly closed partitions load fastest in this thread (pure Python, no fsync);
        # the ones needing recovery go to a few threads (their fsyncs release the GIL).
        clean = [f for f in found if os.path.exists(os.path.join(f[0], CLEAN_SHUTDOWN_FILE))]
        clean_paths = {f[0] for f in clean}
        dirty = [f for f in found if f[0] not in clean_paths]
        for path, topic, partition in clean:
            self._load_one(path, topic, partition)
        if dirty:
            with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(dirty))) as pool:
                list(pool.map(lambda f: self._load_one(*f, defer_sync=True), dirty))
            self._finish_recoveries()
        if self.offline:
            logger.error(
                "%d partitions could not be opened and are offline: %s",
                len(self.offline),
                ", ".join(f"{t}-{p}" for t, p in sorted(self.offline)[:20]),
            )

    def _load_one(self, path: str, topic: str, partition: int, *, defer_sync: bool = False) -> None:
        """Open one partition at start; a failure takes only that partition offline."""
        try:
            log = self._open(path, topic, partition, None, defer_sync=defer_sync)
        except Exception as exc:
            logger.error("partition %s-%d (%s) cannot be opened: %s", topic, partition, path, exc)
            with self._lock:
                self.offline[(topic, partition)] = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._logs[(topic, partition)] = log

    def _finish_recoveries(self) -> None:
        """Make the recoveries of the unclean logs durable with two ``syncfs`` per log
        dir instead of a few fsyncs per partition (most of an unclean start with
        thousands of partitions): one before the recovery points move (every rewritten
        file, its data and its name), one after (the recovery points). If a sync fails,
        each log of that dir syncs its own files, and a log whose fsync fails stays
        offline."""
        by_dir: dict[str, list[PartitionLog]] = {}
        with self._lock:
            for log in self._logs.values():
                if log.recovery_pending:
                    by_dir.setdefault(os.path.dirname(log.directory), []).append(log)
        for d, logs in by_dir.items():
            try:
                sync_filesystem(d)
                for log in logs:
                    log.finish_recovery(synced=True)
                sync_filesystem(d)
            except OSError as exc:
                logger.error("cannot sync log dir %s after recovery (%s): fsync each log", d, exc)
                for log in logs:
                    try:
                        log.finish_recovery()
                    except OSError as exc_one:
                        # a failed fsync may have dropped the pages: serve nothing of it
                        log.fail(f"cannot sync after recovery: {exc_one}")
                continue
            for log in logs:
                log.checkpoints_synced()

    def _settle_futures(
        self, futures: list[tuple[str, str, int]], current: dict[tuple[str, int], str]
    ) -> list[tuple[str, str, int]]:
        """A move to another log dir that a stop interrupted. With the partition's log
        still in place the copy is dropped (the move is asked again); without it the
        swap had begun (the old log was renamed away), so the copy, complete, becomes
        the log: renamed to its plain name. Returns the logs so completed."""
        completed = []
        for path, topic, partition in futures:
            key = (topic, partition)
            if key in current or (self._expected is not None and self._expected(*key) is None):
                logger.warning("dropping %s: the move of %s-%d did not finish", path, *key)
                shutil.rmtree(path, ignore_errors=True)
                fsync_dir(os.path.dirname(path))
                continue
            target = os.path.join(os.path.dirname(path), f"{topic}-{partition}")
            os.replace(path, target)
            fsync_dir(os.path.dirname(path))
            logger.info("completed the move of %s-%d to %s", topic, partition, target)
            current[key] = target
            completed.append((target, topic, partition))
        return completed

    def _is_stray(self, path: str, topic: str, partition: int) -> bool:
        """Quarantine (rename ``-stray``) a folder the metadata does not know."""
        assert self._expected is not None
        want = self._expected(topic, partition)
        have = read_topic_id(path)
        if want is not None and (have is None or have == want):
            return False
        target = _free_name(path, have, STRAY_SUFFIX)
        os.replace(path, target)
        logger.warning(
            "%s is not a partition the metadata knows (topic id on disk %s, expected %s): "
            "quarantined as %s, not served",
            path,
            have,
            want,
            target,
        )
        return True

    def _open(
        self,
        path: str,
        topic: str,
        partition: int,
        topic_id: uuid.UUID | bytes | str | None,
        config: LogConfig | None = None,
        *,
        defer_sync: bool = False,
    ) -> PartitionLog:
        log = PartitionLog.open(
            path,
            config or self.config_for(topic),
            topic=topic,
            partition=partition,
            topic_id=topic_id,
            producer_id_expiration_ms=self._expiration_ms,
            auto_high_watermark=self._auto_hw,
            max_uncompressed=self._max_uncompressed,
            defer_recovery_sync=defer_sync,
        )
        log.on_failure = self._log_failed
        return log

    def _log_failed(self, log: PartitionLog, reason: str) -> None:
        """A log's storage failed (any thread): offline until the next start."""
        logger.error("partition %s-%d is offline: %s", log.topic, log.partition, reason)
        with self._lock:
            if self._logs.get((log.topic, log.partition)) is log:
                self.offline[(log.topic, log.partition)] = reason
        listener = self.failure_listener
        if listener is not None:
            listener(log, reason)

    # --------------------------------------------------------------- partitions
    def config_for(self, topic: str) -> LogConfig:
        return self._topic_configs.get(topic, self.default_config)

    def update_topic_config(self, topic: str, config: LogConfig | None) -> None:
        """Set (or with None, reset to the default) a topic's config on its open logs."""
        with self._lock:
            if config is None:
                self._topic_configs.pop(topic, None)
            else:
                self._topic_configs[topic] = config
            logs = [log for (t, _p), log in self._logs.items() if t == topic]
        effective = self.config_for(topic)
        for log in logs:
            log.update_config(effective)

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def get_or_create(
        self,
        topic: str,
        partition: int,
        topic_id: uuid.UUID | bytes | str | None = None,
        config: LogConfig | None = None,
    ) -> PartitionLog:
        """The partition's log, created empty if absent. ``config`` (if given) becomes
        the topic's config.

        A log on disk that belongs to another topic id (a topic deleted and created again
        while this broker was away) is quarantined and a new, empty log takes its place.
        Raises :class:`KafkaStorageError` for a partition that is offline.
        """
        # only a change is applied: applying walks every open log, and a topic's
        # partitions are opened one by one (O(N^2) for a topic of N partitions)
        if config is not None and self._topic_configs.get(topic) != config:
            self.update_topic_config(topic, config)
        key = (topic, partition)
        want = _as_uuid(topic_id)
        with self._lock:
            if key in self.offline:
                raise KafkaStorageError(
                    f"partition {topic}-{partition} is offline: {self.offline[key]}"
                )
            log = self._logs.get(key)
            if log is not None and want is not None and log.topic_id not in (None, want):
                self._logs.pop(key)
                self._quarantine_open(log)
                log = None
            if log is None:
                detached = self._detached.pop(key, None)
                if detached is not None:  # deleted a moment ago: free the name first
                    self._rename_away(detached)
                    self._doomed.append(detached)
                # a folder laid out since the dirs were scanned (a restore from the
                # bucket) is opened where it is
                path = self._laid_out(topic, partition) or os.path.join(
                    self._dir_for_new(), f"{topic}-{partition}"
                )
                if not os.path.isdir(path):
                    self._new_dirs.append(path)
                try:
                    log = self._open(path, topic, partition, topic_id, config)
                except InconsistentTopicIdError as exc:
                    logger.warning("%s", exc)
                    target = _free_name(path, read_topic_id(path), STRAY_SUFFIX)
                    os.replace(path, target)
                    logger.warning("quarantined %s as %s, not served", path, target)
                    log = self._open(path, topic, partition, topic_id, config)
                self._logs[key] = log
            return log

    def dir_of(self, log: PartitionLog) -> str:
        """The log dir holding ``log``."""
        return os.path.dirname(os.path.normpath(log.directory))

    def partition_counts(self) -> dict[str, int]:
        """Partitions per online log dir, future copies included (Kafka's placement)."""
        counts = {d: 0 for d in self.dirs if d not in self.offline_dirs}
        for log in (*self._logs.values(), *self.futures.values()):
            d = self.dir_of(log)
            if d in counts:
                counts[d] += 1
        return counts

    def _laid_out(self, topic: str, partition: int) -> str | None:
        if len(self.dirs) == 1:
            return None  # the one place a new log goes anyway
        for d in self.dirs:
            path = os.path.join(d, f"{topic}-{partition}")
            if d not in self.offline_dirs and os.path.isdir(path):
                return path
        return None

    def _dir_for_new(self) -> str:
        """The online log dir with the fewest partitions (the first of equals), as Kafka
        places a new partition (caller holds the lock). With one online dir there is
        nothing to count: counting walks every log, which made creating N partitions
        cost O(N^2) (minutes for a topic of thousands on a broker already hosting many)."""
        online = [d for d in self.dirs if d not in self.offline_dirs]
        if len(online) == 1:
            return online[0]
        counts = self.partition_counts()
        if not counts:
            raise KafkaStorageError("every log dir is offline: " + ", ".join(self.offline_dirs))
        return min(counts, key=lambda d: (counts[d], self.dirs.index(d)))

    def sync_new_dirs(self) -> int:
        """fsync the partition folders created since the last call and the data
        directory, so they survive a crash (blocking: an executor thread). Runs with every
        :meth:`flush_due`; creators that answer a client call it before answering."""
        with self._lock:
            new, self._new_dirs = self._new_dirs, []
        if not new:
            return 0
        for path in new:
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(path)
        for parent in {os.path.dirname(path) for path in new}:
            fsync_dir(parent)
        return len(new)

    def _quarantine_open(self, log: PartitionLog) -> None:
        """Close an open log that belongs to another topic id and rename it ``-stray``."""
        log.close()
        target = _free_name(log.directory, log.topic_id, STRAY_SUFFIX)
        os.replace(log.directory, target)
        logger.warning(
            "%s holds topic id %s, not the current one: quarantined as %s, not served",
            log.directory,
            log.topic_id,
            target,
        )

    def quarantine(self, topic: str, partition: int) -> bool:
        """Close the open log of a partition the metadata does not know and rename it
        ``-stray`` (blocking: call from an executor)."""
        with self._lock:
            log = self._logs.pop((topic, partition), None)
            if log is None:
                return False
            self._quarantine_open(log)
        fsync_dir(self.dir_of(log))
        return True

    def detach(self, topic: str, partition: int) -> bool:
        """Forget a deleted partition now (no I/O, callable on the event loop): appends
        are refused from here on; :meth:`delete_detached` renames its folder."""
        with self._lock:
            log = self._logs.pop((topic, partition), None)
            if log is None:
                return False
            self._detached[(topic, partition)] = log
        log.stop()
        return True

    def delete_detached(self) -> int:
        """Rename every detached partition's folder ``<topic>-<partition>.<id>-delete`` and
        fsync the data directory, so no restart can bring it back (blocking). Their files
        go with the next maintenance pass. Returns how many were renamed."""
        with self._lock:
            detached, self._detached = self._detached, {}
            for log in detached.values():
                self._rename_away(log)
                self._doomed.append(log)
        for parent in {self.dir_of(log) for log in detached.values()}:
            fsync_dir(parent)
        return len(detached)

    def _rename_away(self, log: PartitionLog) -> None:
        """Rename a deleted partition's folder out of its name (caller holds the lock)."""
        target = _free_name(log.directory, log.topic_id, DELETE_SUFFIX)
        try:
            os.replace(log.directory, target)
        except FileNotFoundError:
            return
        log.directory = target

    def delete_partition(self, topic: str, partition: int) -> bool:
        """Delete a partition (blocking): :meth:`detach` then :meth:`delete_detached`."""
        if not self.detach(topic, partition):
            return False
        self.delete_detached()
        return True

    # ------------------------------------------------------ moving between log dirs
    # AlterReplicaLogDirs, as Kafka does it: the partition is copied into
    # ``<target>/<topic>-<partition>.<uuid>-future`` while its log serves; once caught up
    # the copy takes over (switch_to_future, in turn with appends), the old folder is renamed
    # away (retire) and the copy gets the plain name (finish_move). A stop at any point
    # leaves one log that start-up recognises (see _settle_futures).

    def begin_move(self, topic: str, partition: int, target_dir: str) -> PartitionLog:
        """Create the partition's future log in ``target_dir`` (blocking)."""
        key = (topic, partition)
        with self._lock:
            source = self._logs.get(key)
            if source is None:
                raise KafkaStorageError(f"partition {topic}-{partition} has no log here")
            if key in self.futures:
                raise KafkaStorageError(f"partition {topic}-{partition} is already moving")
            path = os.path.join(
                target_dir, f"{topic}-{partition}.{uuid.uuid4().hex}{FUTURE_SUFFIX}"
            )
        future = self._open(path, topic, partition, source.topic_id, source.config)
        fsync_dir(target_dir)
        if source.log_start_offset > 0:
            future.truncate_fully_and_start_at(source.log_start_offset)
        with self._lock:
            self.futures[key] = future
        return future

    def abort_move(self, topic: str, partition: int) -> None:
        """Drop the partition's future log (blocking)."""
        with self._lock:
            future = self.futures.pop((topic, partition), None)
        if future is not None:
            future.delete()
            fsync_dir(self.dir_of(future))

    @staticmethod
    def copy_to_future(source: PartitionLog, future: PartitionLog, max_bytes: int) -> int:
        """Append to ``future`` the batches ``source`` has beyond it, about ``max_bytes``
        of them, offsets kept (as a follower appends). Returns the bytes copied."""
        start = future.log_end_offset
        if start < source.log_start_offset:  # retention passed the copy: restart there
            future.truncate_fully_and_start_at(source.log_start_offset)
            start = source.log_start_offset
        end = source.log_end_offset
        if start >= end:
            return 0
        try:
            data = source.read(start, max_bytes, upper_bound=end)
        except OffsetOutOfRangeError:  # retention moved the start meanwhile: next round
            return 0
        view = memoryview(data)
        first = stop = -1
        for pos, header in iter_batches(view, allow_partial=True):
            if header.next_offset <= start:
                continue
            if first < 0:
                first = pos
            stop = pos + header.size
        if first < 0:
            return 0
        future.append(view[first:stop], origin=AppendOrigin.REPLICATION)
        return stop - first

    def switch_to_future(
        self, topic: str, partition: int, source: PartitionLog
    ) -> tuple[PartitionLog, PartitionLog]:
        """Copy the rest of ``source`` into its future and make the future the partition's
        log; the old one stops, forwarding stale callers. Run it in turn with the
        partition's appends (a writer thread) once the future has nearly caught up: it
        writes, never fsyncs. Returns ``(old, new)``; KafkaStorageError when ``source`` is
        no longer the partition's log (deleted or replaced meanwhile)."""
        key = (topic, partition)
        with self._lock:
            if self._logs.get(key) is not source or key not in self.futures:
                raise KafkaStorageError(
                    f"{topic}-{partition}: the log changed before the switch to its copy"
                )
            future = self.futures[key]
        with source.lock:
            while future.log_end_offset < source.log_end_offset:
                if not self.copy_to_future(source, future, 1 << 24):
                    raise KafkaStorageError(
                        f"{topic}-{partition}: the copy stopped at offset "
                        f"{future.log_end_offset}, short of {source.log_end_offset}"
                    )
            if future.log_start_offset < source.log_start_offset:
                future.delete_records_before(source.log_start_offset)
            future.high_watermark = source.high_watermark
            # tiered: the bucket's reach stays what it was (retention keeps below it)
            future.remote_log_end = source.remote_log_end
            source.forward_to(future)
            with self._lock:
                self._logs[key] = future
                del self.futures[key]
        return source, future

    def retire(self, old: PartitionLog) -> None:
        """Rename the replaced log's folder ``-delete`` (blocking); it is removed with the
        next maintenance pass. From here a restart finds only the future log."""
        with self._lock:
            self._rename_away(old)
            self._doomed.append(old)
        fsync_dir(self.dir_of(old))

    def finish_move(self, topic: str, partition: int) -> PartitionLog | None:
        """Give the future log its plain name: closed, renamed and opened again while its
        appends wait (blocking). Returns the partition's log; None when the partition was
        deleted meanwhile (its folder went with it)."""
        key = (topic, partition)
        with self._lock:
            future = self._logs.get(key)
        if future is None or not future.directory.endswith(FUTURE_SUFFIX):
            return None
        final = os.path.join(self.dir_of(future), f"{topic}-{partition}")

        def reopen() -> PartitionLog:
            os.replace(future.directory, final)
            fsync_dir(os.path.dirname(final))
            log = self._open(final, topic, partition, future.topic_id, future.config)
            log.high_watermark = future.high_watermark
            log.remote_log_end = future.remote_log_end
            with self._lock:
                self._logs[key] = log
            return log

        return future.hand_over(reopen)

    def __iter__(self) -> Iterator[PartitionLog]:
        return iter(self.logs())

    def __len__(self) -> int:
        return len(self._logs)

    def logs(self) -> list[PartitionLog]:
        with self._lock:
            return list(self._logs.values())

    def partitions(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._logs)

    # -------------------------------------------------------------- maintenance
    def run_maintenance(self, now_ms: int | None = None) -> MaintenanceReport:
        """Retention, compaction, flush policy, producer expiry and delayed deletions
        for every partition. Blocking; call it from an executor thread."""
        report = MaintenanceReport()
        if not self._maintenance_lock.acquire(blocking=False):
            report.skipped = True
            return report
        try:
            if now_ms is None:
                now_ms = time.time_ns() // 1_000_000
            for log in self.logs():
                if log.closed:
                    continue
                try:
                    self._maintain(log, now_ms, report)
                except Exception as exc:  # one bad partition must not stop the others
                    logger.exception("maintenance of %s failed", log)
                    report.errors.append((f"{log.topic}-{log.partition}", exc))
            self._destroy_doomed(report)
        finally:
            self._maintenance_lock.release()
        return report

    def flush_due(self, now_ms: int | None = None) -> int:
        """fsync the partitions whose flush.messages / flush.ms policy is due (blocking).

        Cheaper than a maintenance pass, so the broker can run it every second for the
        topics that ask for time- or count-based flushing.
        """
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        self.sync_new_dirs()
        flushed = 0
        for log in self.logs():
            if not log.closed and log.maybe_flush(now_ms):
                flushed += 1
        return flushed

    def _maintain(self, log: PartitionLog, now_ms: int, report: MaintenanceReport) -> None:
        report.segments_deleted += log.apply_retention(now_ms)
        if log.config.compact and self.cleaner.clean(log, now_ms) is not None:
            report.logs_compacted += 1
        if log.maybe_flush(now_ms):
            report.logs_flushed += 1
        report.producers_expired += log.expire_producers(now_ms)
        report.files_removed += log.reap_deleted(now_ms)

    def _destroy_doomed(self, report: MaintenanceReport) -> None:
        with self._lock:
            doomed, self._doomed = self._doomed, []
        for log in doomed:
            self.cleaner.forget(log)
            log.delete()
            report.files_removed += 1

    def _each(self, action: Callable[[PartitionLog], None], what: str) -> None:
        """Run ``action`` on every log with a few threads (fsync releases the GIL)."""
        logs = self.logs()

        def run(log: PartitionLog) -> None:
            try:
                action(log)
            except Exception:
                logger.exception("%s %s failed", what, log)

        if len(logs) <= 1:
            for log in logs:
                run(log)
            return
        with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(logs))) as pool:
            list(pool.map(run, logs))

    def flush_all(self) -> None:
        """fsync every partition up to its log end (blocking)."""
        self._each(lambda log: None if log.closed else log.flush(), "flushing")

    def close(self) -> None:
        """Close every log, writing clean-shutdown markers."""
        if self._closed:
            return
        self._closed = True
        with self._maintenance_lock:  # let a running maintenance pass finish first
            self._each(PartitionLog.close, "closing")
            with self._lock:  # unfinished moves: a start drops their copies
                futures, self.futures = list(self.futures.values()), {}
            for future in futures:
                future.close()
            self.delete_detached()
            self._destroy_doomed(MaintenanceReport())
        self.cleaner.close()
