"""The broker's view of its data directory: every partition log, opened, maintained, closed.

``LogManager`` opens all ``<topic>-<partition>`` directories at start (after a clean
shutdown each costs a handful of small file reads, no scans), creates and deletes
partition logs, and runs periodic maintenance: retention, compaction, the flush policy
(``flush.messages``/``flush.ms`` and the flush that follows a segment roll), producer id
expiry and the delayed removal of ``*.deleted`` files.

Threading: the broker calls :meth:`LogManager.get_or_create`, :meth:`LogManager.get` and
:meth:`LogManager.delete_partition` from the event loop, and
:meth:`LogManager.run_maintenance` / :meth:`LogManager.flush_all` from one executor
thread. The partition table is guarded by a lock; each partition's own lock guards its
segment list (see :mod:`.partition_log`). Overlapping maintenance calls are skipped, not
queued. A partition being deleted is closed for appends at once and its files are removed
by the next maintenance pass, so the maintenance thread never loses a file under it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shazamq.protocol.records import DEFAULT_MAX_UNCOMPRESSED

from .cleaner import LogCleaner
from .log_config import LogConfig
from .partition_log import CLEAN_SHUTDOWN_FILE, PartitionLog, parse_partition_dir

__all__ = ["LogManager", "MaintenanceReport"]

logger = logging.getLogger(__name__)

_DELETE_SUFFIX = "-delete"
_IO_THREADS = 8


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
    """All partition logs under ``data_dir``."""

    def __init__(
        self,
        data_dir: str,
        default_config: LogConfig,
        *,
        topic_configs: Mapping[str, LogConfig] | None = None,
        producer_id_expiration_ms: int = 86_400_000,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        auto_high_watermark: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.default_config = default_config
        self._topic_configs: dict[str, LogConfig] = dict(topic_configs or {})
        self._expiration_ms = producer_id_expiration_ms
        self._max_uncompressed = max_uncompressed
        self._auto_hw = auto_high_watermark
        self._lock = threading.Lock()
        self._maintenance_lock = threading.Lock()
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._doomed: list[PartitionLog] = []
        self.cleaner = LogCleaner(max_uncompressed=max_uncompressed)
        self._closed = False
        os.makedirs(data_dir, exist_ok=True)
        self._load_all()

    # ------------------------------------------------------------------ loading
    def _load_all(self) -> None:
        found: list[tuple[str, str, int]] = []
        for entry in sorted(os.scandir(self.data_dir), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name.endswith(_DELETE_SUFFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            parsed = parse_partition_dir(entry.name)
            if parsed is not None:
                found.append((entry.path, *parsed))
        # Cleanly closed partitions load fastest in this thread (pure Python, no fsync);
        # the ones needing recovery go to a few threads (their fsyncs release the GIL).
        clean = [f for f in found if os.path.exists(os.path.join(f[0], CLEAN_SHUTDOWN_FILE))]
        clean_paths = {f[0] for f in clean}
        dirty = [f for f in found if f[0] not in clean_paths]
        for path, topic, partition in clean:
            self._logs[(topic, partition)] = self._open(path, topic, partition, None)
        if dirty:
            with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(dirty))) as pool:
                opened = pool.map(lambda f: self._open(f[0], f[1], f[2], None), dirty)
                for (_path, topic, partition), log in zip(dirty, opened, strict=True):
                    self._logs[(topic, partition)] = log

    def _open(
        self,
        path: str,
        topic: str,
        partition: int,
        topic_id: uuid.UUID | bytes | str | None,
        config: LogConfig | None = None,
    ) -> PartitionLog:
        return PartitionLog.open(
            path,
            config or self.config_for(topic),
            topic=topic,
            partition=partition,
            topic_id=topic_id,
            producer_id_expiration_ms=self._expiration_ms,
            auto_high_watermark=self._auto_hw,
            max_uncompressed=self._max_uncompressed,
        )

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
        the topic's config."""
        if config is not None:
            self.update_topic_config(topic, config)
        with self._lock:
            log = self._logs.get((topic, partition))
            if log is None:
                path = os.path.join(self.data_dir, f"{topic}-{partition}")
                log = self._open(path, topic, partition, topic_id, config)
                self._logs[(topic, partition)] = log
            return log

    def delete_partition(self, topic: str, partition: int) -> bool:
        """Forget the partition now; its directory is renamed ``*-delete`` and removed by
        the next maintenance pass."""
        with self._lock:
            log = self._logs.pop((topic, partition), None)
            if log is None:
                return False
            self._doomed.append(log)
        log.stop()
        return True

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
            target = f"{log.directory}.{uuid.uuid4().hex}{_DELETE_SUFFIX}"
            try:
                os.replace(log.directory, target)
                log.directory = target
            except OSError:
                pass
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
            self._destroy_doomed(MaintenanceReport())
