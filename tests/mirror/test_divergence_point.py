"""``truncation_point`` against a model of two logs that share a prefix and then diverge,
and the producer id allocator's floor for copied ids."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from shazamq.broker.txn.producer_ids import ProducerIdAllocator
from shazamq.mirror.divergence import truncation_point


def end_for(log: list[int], epoch: int, current: int = -1) -> tuple[int, int]:
    """OffsetForLeaderEpoch over a log given as the leader epoch of each offset;
    ``current``: the leader's epoch now (a leader knows it from its election on, before
    it wrote anything under it)."""
    starts: list[tuple[int, int]] = []
    for offset, e in enumerate(log):
        if not starts or e > starts[-1][0]:
            starts.append((e, offset))
    if current > (starts[-1][0] if starts else -1):
        starts.append((current, len(log)))
    if not starts or epoch < 0:
        return -1, -1
    if starts[-1][0] == epoch:
        return epoch, len(log)
    higher = next((i for i, (e, _o) in enumerate(starts) if e > epoch), None)
    if higher is None:
        return -1, -1
    if higher == 0:
        return epoch, starts[0][1]
    return starts[higher - 1][0], starts[higher][1]


@st.composite
def diverged(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """(copy, source, length of their common prefix). Each epoch has one leader, so an
    epoch found in both logs past the common prefix is impossible: the tails use
    disjoint epochs, and the last common epoch continues in at most one of them."""
    steps = st.lists(st.integers(0, 2), min_size=0, max_size=6)
    common = []
    epoch = 0
    for step in draw(steps):
        epoch += step
        common.extend([epoch] * draw(st.integers(1, 3)))
    last = common[-1] if common else 0
    pool = list(range(last + 1, last + 12))
    tail_epochs = draw(st.permutations(pool))
    split = draw(st.integers(0, len(pool)))
    copy_pool, source_pool = sorted(tail_epochs[:split]), sorted(tail_epochs[split:])
    copy_pool = draw(st.lists(st.sampled_from(copy_pool), max_size=4)) if copy_pool else []
    source_pool = draw(st.lists(st.sampled_from(source_pool), max_size=4)) if source_pool else []
    copy_tail = [e for e in sorted(copy_pool) for _ in range(draw(st.integers(1, 2)))]
    source_tail = [e for e in sorted(source_pool) for _ in range(draw(st.integers(1, 2)))]
    if common and draw(st.booleans()):
        # the last common epoch went on in one of the logs (its old leader kept writing)
        target = copy_tail if draw(st.booleans()) else source_tail
        target[:0] = [last] * draw(st.integers(1, 2))
    return common + copy_tail, common + source_tail, len(common)


@given(diverged())
def test_cutting_by_epochs_reaches_the_common_prefix(logs) -> None:
    copy, source, common = logs
    current = max(copy + source + [0]) + 1  # the source leader's epoch: the newest
    for _ in range(len(copy) + 2):
        if not copy:
            break
        ask = copy[-1]
        answer = end_for(source, ask, current)
        cut = truncation_point(*answer, len(copy), lambda e: end_for(copy, e))
        assert cut is not None
        assert cut.offset >= common  # never below what both hold
        del copy[cut.offset :]
        if cut.settled:
            break
    else:
        raise AssertionError("did not settle")
    assert len(copy) == common


def test_the_source_knowing_no_such_epoch_decides_nothing() -> None:
    assert truncation_point(-1, -1, 10, lambda e: (e, 10)) is None


def test_copied_producer_ids_are_kept_out_durably(tmp_path: Path) -> None:
    ids = ProducerIdAllocator(tmp_path, block_size=10)
    assert ids.allocate() == 0 and ids.floor == 1
    ids.keep_out(41)
    assert ids.floor == 42 and ids.allocate() == 42
    again = ProducerIdAllocator(tmp_path, block_size=10)
    assert again.floor >= 42 and again.allocate() > 42
    ids.keep_out(5)  # below the floor: nothing changes
    assert ids.allocate() == 43
