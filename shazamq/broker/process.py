"""Process-wide settings a long-running broker wants, applied by the composition root.

Kept apart from the listener and the log: they concern the whole process (the garbage
collector, the allocator, the open-file limit), and only `app.py` knows when the broker
has finished loading and is about to serve.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import resource

from shazamq.broker.log.open_files import derived_limit

log = logging.getLogger(__name__)

# below this open-file limit a broker cannot keep even a few segments and connections open
_MIN_NOFILE = 256


def raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit.

    The segment files kept open are a share of it (see ``check_open_file_limit``), and
    every client connection needs one more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


def check_open_file_limit(partitions: int, configured: int | None = None) -> int:
    """The number of segment logs to keep open (see ``shazamq.broker.log.open_files``),
    from ``storage.max_open_segment_files`` or the open-file limit, saying clearly, before
    the logs open, when that limit is too low to serve at all or below the configured
    number. Partitions beyond the budget are fine: their files are closed while idle."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    derived = derived_limit(soft)
    limit = derived
    if soft != resource.RLIM_INFINITY and soft < _MIN_NOFILE:
        log.error(
            "the open-file limit (RLIMIT_NOFILE) is %d, too low for a broker: at least %d "
            "are needed for segment files and connections; raise it (ulimit -n, "
            "LimitNOFILE=, the container's nofile limit)",
            soft,
            _MIN_NOFILE,
        )
    if configured is not None:
        if configured > derived:
            log.error(
                "storage.max_open_segment_files is %d, but the open-file limit "
                "(RLIMIT_NOFILE) of %d leaves room for %d once connections have theirs: "
                "keeping %d open; raise the limit or lower the setting",
                configured,
                soft,
                derived,
                derived,
            )
        else:
            limit = configured
    if partitions > limit:
        log.info(
            "%d partitions on disk and %d segment files kept open at once: the files of "
            "idle partitions are closed and reopened on use",
            partitions,
            limit,
        )
    return limit


def tune_for_serving() -> None:
    """Process-wide settings for serving, applied once the broker is loaded.

    * What exists by now (modules, generated protocol classes, every partition log and
      index) lives as long as the broker. ``gc.freeze`` moves it out of the cyclic
      collector's reach, so a full collection no longer pauses every connection for tens
      of ms (about 25 ms with 1,000 partitions) in the middle of serving.
    * Request frames and fetched record batches are buffers of up to several MiB,
      allocated and freed per request. By default glibc serves such sizes with fresh
      ``mmap`` calls or returns them to the kernel on free, so every request page-faults
      its buffers in again (zeroed by the kernel): a fifth of the broker's CPU time when
      consuming, a tenth when producing. Keeping up to 64 MiB of freed memory, and
      serving allocations below 32 MiB from the heap, makes those buffers recycled
      memory. Skipped off glibc, or when the operator tuned malloc through the
      environment.
    """
    gc.freeze()
    tuned = any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
    if tuned or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 64 * 1024 * 1024)
