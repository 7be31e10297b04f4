"""The fetch session cache without a broker: epochs, updates, and Kafka's eviction rules.

A Hypothesis state machine drives the cache against a plain model of the rules (size bound,
stale-first eviction, the (privileged, size) ranking, the minimum age before displacement)
and checks every answer and the invariants after every step.
"""

from __future__ import annotations

import random
import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shazamq.broker.fetch_sessions import (
    MAX_EPOCH,
    CachedPartition,
    FetchSessionCache,
    next_epoch,
    session_partitions,
)
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchTopic, ForgottenTopic
from shazamq.protocol.messages.fetch_response import (
    FetchableTopicResponse,
    PartitionData,
)

TID = uuid.UUID(int=7)


def parts(n: int, topic: str = "t") -> dict:
    return {
        (topic, i): CachedPartition(topic, TID, FetchPartition(partition=i, fetch_offset=0))
        for i in range(n)
    }


def make(cache: FetchSessionCache, now: int, size: int, privileged: bool = False):
    return cache.create(now, privileged, False, size, lambda: parts(size))


def test_epochs_wrap_to_one():
    assert next_epoch(0) == 1
    assert next_epoch(5) == 6
    assert next_epoch(MAX_EPOCH) == 1


def test_full_fetch_opens_and_incremental_updates():
    cache = FetchSessionCache(10, 1000, random.Random(1))
    ctx = cache.context(0, 0, False, [], [], 0)
    assert ctx.create and ctx.session is None and not ctx.error
    s = make(cache, 0, 3)
    assert s is not None and s.id != 0 and s.epoch == 1
    # incremental: move partition 1, add partition 5, forget partition 2
    ctx = cache.context(
        s.id,
        1,
        False,
        [
            FetchTopic(
                topic="t",
                partitions=[
                    FetchPartition(partition=1, fetch_offset=40, partition_max_bytes=9),
                    FetchPartition(partition=5, fetch_offset=3),
                ],
            )
        ],
        [ForgottenTopic(topic="t", partitions=[2, 17])],
        10,
    )
    assert ctx.session is s and ctx.error == 0 and s.epoch == 2 and s.last_used_ms == 10
    assert list(s.partitions) == [("t", 0), ("t", 1), ("t", 5)]
    assert s.partitions[("t", 1)].fetch_offset == 40
    assert s.partitions[("t", 1)].partition_max_bytes == 9
    assert s.partitions[("t", 5)].sent_high_watermark == -1  # new: sent next response
    # the same epoch again is stale; an unknown id is not found; ids mismatching
    assert cache.context(s.id, 1, False, [], [], 11).error == ErrorCode.INVALID_FETCH_SESSION_EPOCH
    assert cache.context(s.id + 1, 2, False, [], [], 11).error in (
        ErrorCode.FETCH_SESSION_ID_NOT_FOUND,
        ErrorCode.INVALID_FETCH_SESSION_EPOCH,
    )
    assert cache.context(s.id, 2, True, [], [], 11).error == ErrorCode.FETCH_SESSION_TOPIC_ID_ERROR
    assert cache.context(s.id, -5, False, [], [], 11).error == ErrorCode.INVALID_FETCH_SESSION_EPOCH
    # the errors left the session as it was
    assert cache.context(s.id, 2, False, [], [], 12).session is s
    # epoch -1 closes it and reads sessionless
    ctx = cache.context(s.id, -1, False, [], [], 13)
    assert not ctx.create and ctx.session is None and len(cache) == 0
    assert cache.context(s.id, 3, False, [], [], 14).error == ErrorCode.FETCH_SESSION_ID_NOT_FOUND


def test_forgetting_everything_ends_the_session():
    cache = FetchSessionCache(10, 1000)
    s = make(cache, 0, 2)
    assert s is not None
    ctx = cache.context(s.id, 1, False, [], [ForgottenTopic(topic="t", partitions=[0, 1])], 1)
    assert ctx.session is None and not ctx.create and not ctx.error and len(cache) == 0


def test_answered_tracks_sent_state_and_rotates_partitions_with_data():
    cache = FetchSessionCache(10, 1000)
    s = make(cache, 0, 3)
    assert s is not None
    s.answered("t", TID, PartitionData(partition_index=0, high_watermark=5, records=b"x"))
    s.answered("t", TID, PartitionData(partition_index=1, error_code=3, high_watermark=9))
    s.answered("t", TID, PartitionData(partition_index=9, high_watermark=1))  # not cached
    assert list(s.partitions) == [("t", 1), ("t", 2), ("t", 0)]
    assert s.partitions[("t", 0)].sent_high_watermark == 5
    assert s.partitions[("t", 1)].sent_high_watermark == -1  # resent once the error clears
    runs = [(topic, [cp.partition for cp in run]) for topic, _, run in s.groups()]
    assert runs == [("t", [1, 2, 0])]


def test_groups_keep_runs_of_one_topic():
    cache = FetchSessionCache(10, 1000)
    s = cache.create(0, False, False, 4, lambda: {**parts(2, "a"), **parts(2, "b")})
    assert s is not None
    s.answered("a", TID, PartitionData(partition_index=0, records=b"x"))
    assert [(t, [c.partition for c in run]) for t, _, run in s.groups()] == [
        ("a", [1]),
        ("b", [0, 1]),
        ("a", [0]),
    ]


def test_session_partitions_pairs_request_and_response():
    topics = [
        FetchTopic(topic_id=TID, partitions=[FetchPartition(partition=p) for p in (0, 1)]),
    ]
    responses = [
        FetchableTopicResponse(
            topic_id=TID,
            partitions=[
                PartitionData(partition_index=0, high_watermark=4, last_stable_offset=4),
                PartitionData(partition_index=1, error_code=6, high_watermark=2),
            ],
        )
    ]
    got = session_partitions(topics, True, responses)
    assert list(got) == [(TID, 0), (TID, 1)]
    assert got[(TID, 0)].sent_high_watermark == 4
    assert got[(TID, 1)].sent_high_watermark == -1


def test_disabled_cache_never_opens_sessions():
    cache = FetchSessionCache(0, 1000)
    assert not cache.context(0, 0, False, [], [], 0).create
    assert make(cache, 0, 5) is None


def test_eviction_prefers_stale_then_value():
    cache = FetchSessionCache(2, 100)
    a = make(cache, 0, 5)
    b = make(cache, 0, 3)
    assert a is not None and b is not None
    # full, nobody stale or old enough: refused, even for a larger session
    assert make(cache, 50, 50) is None
    # a follower (privileged) may evict a consumer's session at once: the smallest goes
    f = make(cache, 60, 1, privileged=True)
    assert f is not None and b.id not in cache.sessions and cache.evictions == 1
    # a stale session goes first, whatever its size
    cache.context(f.id, 1, False, [], [], 150)  # f used at 150; a last used at 0
    c = make(cache, 150, 1)
    assert c is not None and a.id not in cache.sessions and cache.evictions == 2
    # old enough but not stale: only a more valuable newcomer displaces the least valuable
    cache.context(f.id, 2, False, [], [], 250)
    cache.context(c.id, 1, False, [], [], 250)
    assert make(cache, 260, 1) is None  # same size as c: not worth more
    d = make(cache, 260, 2)
    assert d is not None and c.id not in cache.sessions and f.id in cache.sessions


# -- the state machine -------------------------------------------------------------------


class CacheMachine(RuleBasedStateMachine):
    SLOTS = 3
    EVICTION_MS = 50

    def __init__(self) -> None:
        super().__init__()
        self.cache = FetchSessionCache(self.SLOTS, self.EVICTION_MS, random.Random(0))
        self.now = 0
        # model: id -> [privileged, size, created, last_used, epoch]
        self.model: dict[int, list] = {}
        self.evicted = 0

    def _expected_victim(self, privileged: bool, size: int) -> int | bool | None:
        """The id the rules evict for a newcomer, None if none, True if there is room."""
        if len(self.model) < self.SLOTS:
            return True
        lru = min(self.model, key=lambda i: (self.model[i][3], i))
        if self.now - self.model[lru][3] > self.EVICTION_MS:
            return lru
        candidates = [
            i
            for i, (priv, _, created, _, _) in self.model.items()
            if self.now - created > self.EVICTION_MS or (privileged and not priv)
        ]
        if not candidates:
            return None
        worst = min(candidates, key=lambda i: (self.model[i][0], self.model[i][1], i))
        if (privileged, size) > (self.model[worst][0], self.model[worst][1]):
            return worst
        return None

    @rule(ms=st.integers(0, 80))
    def tick(self, ms):
        self.now += ms

    @rule(privileged=st.booleans(), size=st.integers(0, 6))
    def create(self, privileged, size):
        expect = self._expected_victim(privileged, size) if size else None
        s = make(self.cache, self.now, size, privileged)
        if expect is None:
            assert s is None
            return
        assert s is not None and s.id != 0 and s.id not in self.model
        if expect is not True:
            del self.model[expect]
            self.evicted += 1
        self.model[s.id] = [privileged, size, self.now, self.now, 1]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), right_epoch=st.booleans(), grow=st.integers(-2, 2))
    def incremental(self, data, right_epoch, grow):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        entry = self.model[sid]
        epoch = entry[4] if right_epoch else entry[4] + 1
        size = entry[1]
        topics, forgotten = [], []
        if grow > 0:
            new = [FetchPartition(partition=size + i) for i in range(grow)]
            topics = [FetchTopic(topic="t", partitions=new)]
        elif grow < 0:
            forgotten = [ForgottenTopic(topic="t", partitions=list(range(size + grow, size)))]
        ctx = self.cache.context(sid, epoch, False, topics, forgotten, self.now)
        if not right_epoch:
            assert ctx.error == ErrorCode.INVALID_FETCH_SESSION_EPOCH
            return
        new_size = max(size + grow, 0)
        if new_size == 0:
            assert ctx.session is None and not ctx.error
            del self.model[sid]
            return
        assert ctx.session is not None and ctx.session.id == sid
        entry[1], entry[3], entry[4] = new_size, self.now, next_epoch(epoch)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), reopen=st.booleans())
    def close(self, data, reopen):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        ctx = self.cache.context(sid, 0 if reopen else -1, False, [], [], self.now)
        assert ctx.create == reopen and not ctx.error
        del self.model[sid]

    @rule(sid=st.integers(1, 2**31 - 1))
    def unknown(self, sid):
        if sid not in self.model:
            ctx = self.cache.context(sid, 1, False, [], [], self.now)
            assert ctx.error == ErrorCode.FETCH_SESSION_ID_NOT_FOUND

    @invariant()
    def matches_model(self):
        assert len(self.cache) <= self.SLOTS
        assert set(self.cache.sessions) == set(self.model)
        assert 0 not in self.cache.sessions
        for sid, (priv, size, _, last_used, epoch) in self.model.items():
            s = self.cache.sessions[sid]
            assert (s.privileged, len(s), s.last_used_ms, s.epoch) == (priv, size, last_used, epoch)
        assert self.cache.evictions == self.evicted
        assert self.cache.num_partitions == sum(e[1] for e in self.model.values())


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCacheMachine = CacheMachine.TestCase
