"""Where a copy stops agreeing with its source, from leader epochs (KIP-101, KIP-320, KIP-595).

The copied batches are the source's own bytes, so the copy's leader epoch cache holds the
source's epochs. The source answers "my log holds epoch E up to offset X" for the copy's
latest epoch (a Fetch ``diverging_epoch``, or OffsetForLeaderEpoch); this module turns
that answer into the offset the copy must be cut back to. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Truncation", "truncation_point"]


class Truncation(NamedTuple):
    offset: int  # cut the copy back to here (== its end: nothing to cut)
    settled: bool  # False: cut, then ask the source again about the copy's new last epoch


def truncation_point(
    source_epoch: int,
    source_end: int,
    local_end: int,
    local_end_for: Callable[[int], tuple[int, int]],
) -> Truncation | None:
    """The cut the source's ``(source_epoch, source_end)`` answer calls for.

    ``local_end_for(epoch)`` is the copy's OffsetForLeaderEpoch: ``(largest epoch <=
    epoch, its end offset)`` or ``(-1, -1)``. None: the source cannot tell (it knows no
    epoch at or below the copy's latest), so nothing can be decided from epochs.
    """
    if source_end < 0:
        return None
    if source_epoch < 0:
        return Truncation(min(source_end, local_end), True)
    ours_epoch, ours_end = local_end_for(source_epoch)
    if ours_epoch < 0 or ours_end < 0:
        # the copy holds no epoch that old: trust the source's end
        return Truncation(min(source_end, local_end), True)
    if ours_epoch != source_epoch:
        # the copy never held the source's epoch: cut to the end of the copy's epoch before
        # it, then compare again from there
        return Truncation(min(ours_end, local_end), False)
    return Truncation(min(ours_end, source_end, local_end), True)
