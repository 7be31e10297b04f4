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

log = logging.getLogger(__name__)

# open files kept for connections, internal topics and the process itself
_HEADROOM = 1024


def raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit.

    Each partition keeps its active segment open (1,000 partitions plus the internal
    topics pass the common 1,024 soft limit), and every client connection is one more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


def check_open_file_limit(partitions: int) -> bool:
    """Say clearly, before the logs open, when the open-file limit is too low for the
    partitions on disk. Each partition keeps its active segment's log open (its two
    indexes too while it is written), and connections need files as well. Returns
    whether the limit looks sufficient; the broker starts either way, and partitions
    that cannot be opened go offline while the others serve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return True
    needed = partitions + _HEADROOM
    comfortable = 3 * partitions + _HEADROOM
    if soft < needed:
        log.error(
            "the open-file limit (RLIMIT_NOFILE) is %d, too low for the %d partitions on "
            "disk: at least %d are needed (%d to write to all of them), or partitions "
            "will go offline and connections be refused; raise it (ulimit -n, "
            "LimitNOFILE=, the container's nofile limit)",
            soft,
            partitions,
            needed,
            comfortable,
        )
        return False
    if soft < comfortable:
        log.warning(
            "the open-file limit (RLIMIT_NOFILE) is %d for %d partitions on disk; writing "
            "to all of them at once needs about %d",
            soft,
            partitions,
            comfortable,
        )
    return True


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
