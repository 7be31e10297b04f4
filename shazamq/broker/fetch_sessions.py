"""Incremental fetch sessions (KIP-227): the partitions a fetcher reads, kept between fetches.

A client opens a session with a full fetch at epoch 0; the broker answers with a session
id. Later fetches name the session and its next epoch and carry only the partitions whose
fetch position changed (added or updated) and the ones to drop (forgotten topics); the
broker reads every partition of the session and answers only those with something new:
records, a changed high watermark, last stable offset or log start, or an error. For a
consumer of hundreds of mostly idle partitions both directions shrink to a few bytes.

The cache is bounded (`max_incremental_fetch_session_cache_slots`). When it is full a new
session may take a slot by evicting, in this order of preference:
  1. the least recently used session idle for longer than the eviction time;
  2. otherwise the least valuable evictable session, if the newcomer is worth more.
Value is (privileged, size): a follower's session (privileged) outranks any consumer's,
then more partitions outrank fewer. A session is evictable by a newcomer of its own rank
only once it has lived past the eviction time, so a young session is not displaced by a
slightly larger one as soon as it is made; a privileged newcomer may also evict any
unprivileged session at once. These are Kafka's rules, decided here when a slot is wanted.

Nothing here does I/O; times are passed in (milliseconds).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from shazamq.protocol.errors import ErrorCode

INITIAL_EPOCH = 0
FINAL_EPOCH = -1
MAX_EPOCH = 0x7FFFFFFF
NO_SESSION = 0

# A cached partition is keyed by (topic name, index) in sessions made by Fetch v12 and
# lower, by (topic id, index) from v13 on.
Key = tuple[Any, int]


def next_epoch(epoch: int) -> int:
    """The epoch after `epoch`: epochs wrap past the int32 maximum to 1 (0 is initial)."""
    return 1 if epoch >= MAX_EPOCH else epoch + 1


class CachedPartition:
    """One partition of a session: the fetcher's position and what it was last sent.

    The request fields carry FetchPartition's names, so a fetch reads a session's
    partitions and a sessionless request's alike. `sent_*` are the values the fetcher
    last received; -1 for a high watermark means "send this partition next time".
    """

    __slots__ = (
        "current_leader_epoch",
        "fetch_offset",
        "last_fetched_epoch",
        "log_start_offset",
        "partition",
        "partition_max_bytes",
        "sent_high_watermark",
        "sent_last_stable_offset",
        "sent_log_start",
        "topic",
        "topic_id",
    )

    def __init__(self, topic: str, topic_id: uuid.UUID, fp: Any) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.partition: int = fp.partition
        self.sent_high_watermark = -1
        self.sent_last_stable_offset = -1
        self.sent_log_start = -1
        self.update(fp)

    def update(self, fp: Any) -> None:
        """Take the fetcher's new position and limits from a request's FetchPartition."""
        self.fetch_offset: int = fp.fetch_offset
        self.partition_max_bytes: int = fp.partition_max_bytes
        self.current_leader_epoch: int = fp.current_leader_epoch
        self.last_fetched_epoch: int = fp.last_fetched_epoch
        self.log_start_offset: int = fp.log_start_offset

    def sent(self, error_code: int, high_watermark: int, lso: int, log_start: int) -> None:
        """Remember what the fetcher was told; after an error, resend once it clears."""
        self.sent_high_watermark = -1 if error_code else high_watermark
        self.sent_last_stable_offset = lso
        self.sent_log_start = log_start


class FetchSession:
    """A fetcher's partitions in fetch order, and the epoch its next request must carry."""

    __slots__ = (
        "created_ms",
        "epoch",
        "id",
        "last_used_ms",
        "partitions",
        "privileged",
        "uses_topic_ids",
    )

    def __init__(
        self,
        session_id: int,
        privileged: bool,
        uses_topic_ids: bool,
        partitions: dict[Key, CachedPartition],
        now_ms: int,
    ) -> None:
        self.id = session_id
        self.privileged = privileged
        self.uses_topic_ids = uses_topic_ids
        # insertion order is the read order: partitions that returned data move to the
        # end, so a small response budget does not always go to the same partitions
        self.partitions = partitions
        self.epoch = next_epoch(INITIAL_EPOCH)
        self.created_ms = now_ms
        self.last_used_ms = now_ms

    def __len__(self) -> int:
        return len(self.partitions)

    def key(self, topic: str, topic_id: uuid.UUID, index: int) -> Key:
        return (topic_id if self.uses_topic_ids else topic, index)

    def update(self, topics: list[Any], forgotten: list[Any]) -> None:
        """Apply an incremental request: add or update its partitions, drop the forgotten."""
        parts = self.partitions
        by_id = self.uses_topic_ids
        for ft in topics:
            tkey = ft.topic_id if by_id else ft.topic
            for fp in ft.partitions:
                cached = parts.get((tkey, fp.partition))
                if cached is None:
                    parts[(tkey, fp.partition)] = CachedPartition(ft.topic, ft.topic_id, fp)
                else:
                    cached.update(fp)
        for ft in forgotten:
            tkey = ft.topic_id if by_id else ft.topic
            for index in ft.partitions:
                parts.pop((tkey, index), None)

    def groups(self) -> Iterator[tuple[str, uuid.UUID, list[CachedPartition]]]:
        """The partitions in read order, runs of one topic together (a topic whose
        partitions are not adjacent forms several runs, as Kafka's responses do)."""
        run: list[CachedPartition] = []
        current: Any = None
        for (tkey, _), cp in self.partitions.items():
            if tkey != current and run:
                yield run[0].topic, run[0].topic_id, run
                run = []
            current = tkey
            run.append(cp)
        if run:
            yield run[0].topic, run[0].topic_id, run

    def answered(self, topic: str, topic_id: uuid.UUID, pd: Any) -> None:
        """Record a partition of the response; one that carried records goes to the back."""
        key = (topic_id if self.uses_topic_ids else topic, pd.partition_index)
        cached = self.partitions.get(key)
        if cached is None:  # forgotten by a later request while this one waited
            return
        cached.sent(pd.error_code, pd.high_watermark, pd.last_stable_offset, pd.log_start_offset)
        if pd.records:
            self.partitions[key] = self.partitions.pop(key)


def session_partitions(
    topics: list[Any], uses_topic_ids: bool, responses: list[Any]
) -> dict[Key, CachedPartition]:
    """A new session's partitions from a full request and the response it was given.

    The response holds one partition per requested partition in request order (the fetch
    reads them in that order), so the two are walked together.
    """
    out: dict[Key, CachedPartition] = {}
    for ft, rt in zip(topics, responses, strict=False):
        tkey = ft.topic_id if uses_topic_ids else ft.topic
        for fp, pd in zip(ft.partitions, rt.partitions, strict=False):
            cp = CachedPartition(ft.topic, ft.topic_id, fp)
            cp.sent(pd.error_code, pd.high_watermark, pd.last_stable_offset, pd.log_start_offset)
            out[(tkey, fp.partition)] = cp
    return out


class Context(NamedTuple):
    """How to serve one fetch request with respect to sessions.

    error: a top-level error to answer with at once (no partitions read).
    session: the incremental session to read (its partitions replace the request's).
    create: a full request asking for a new session once it has been read.
    """

    error: int
    session: FetchSession | None
    create: bool


SESSIONLESS = Context(0, None, False)
FULL = Context(0, None, True)


class FetchSessionCache:
    """The broker's sessions, bounded by `max_slots`, evicted by Kafka's rules."""

    def __init__(
        self,
        max_slots: int,
        eviction_ms: int,
        rng: random.Random | None = None,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self.max_slots = max_slots
        self.eviction_ms = eviction_ms
        self.sessions: dict[int, FetchSession] = {}
        self.evictions = 0
        self._rng = rng or random.Random()
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def num_partitions(self) -> int:
        return sum(len(s.partitions) for s in self.sessions.values())

    # -- requests ------------------------------------------------------------------------

    def context(
        self,
        session_id: int,
        epoch: int,
        uses_topic_ids: bool,
        topics: list[Any],
        forgotten: list[Any],
        now_ms: int,
    ) -> Context:
        """Decide how a fetch is served, applying an incremental request to its session.

        Epoch 0 is a full fetch that (re)opens a session, replacing the one it names;
        -1 is a full fetch without a session, closing the one it names; a positive epoch
        is incremental and must name a cached session at exactly its expected epoch.
        """
        if epoch in (INITIAL_EPOCH, FINAL_EPOCH):
            if session_id != NO_SESSION:
                self.remove(session_id)
            if epoch == FINAL_EPOCH or self.max_slots == 0:
                return SESSIONLESS
            return FULL
        if epoch < FINAL_EPOCH:
            return Context(ErrorCode.INVALID_FETCH_SESSION_EPOCH, None, False)
        session = self.sessions.get(session_id)
        if session is None:
            return Context(ErrorCode.FETCH_SESSION_ID_NOT_FOUND, None, False)
        if session.epoch != epoch:
            return Context(ErrorCode.INVALID_FETCH_SESSION_EPOCH, None, False)
        if session.uses_topic_ids != uses_topic_ids:
            return Context(ErrorCode.FETCH_SESSION_TOPIC_ID_ERROR, None, False)
        session.update(topics, forgotten)
        if not session.partitions:
            # nothing left to fetch: the session ends and the fetcher starts over
            self.remove(session.id)
            return SESSIONLESS
        session.last_used_ms = now_ms
        session.epoch = next_epoch(session.epoch)
        return Context(0, session, False)

    def create(
        self,
        now_ms: int,
        privileged: bool,
        uses_topic_ids: bool,
        size: int,
        partitions: Callable[[], dict[Key, CachedPartition]],
    ) -> FetchSession | None:
        """A new session of `size` partitions if a slot is free or can be freed, else None.

        `partitions` is called only once a slot is granted, so a refused fetcher (it
        retries on every full fetch) costs no copy of its partition list.
        """
        if self.max_slots == 0 or size == 0:
            return None
        if len(self.sessions) >= self.max_slots and not self._evict_for(privileged, size, now_ms):
            return None
        session_id = self._new_id()
        session = FetchSession(session_id, privileged, uses_topic_ids, partitions(), now_ms)
        self.sessions[session_id] = session
        return session

    def remove(self, session_id: int) -> FetchSession | None:
        return self.sessions.pop(session_id, None)

    # -- eviction ------------------------------------------------------------------------

    def _evict_for(self, privileged: bool, size: int, now_ms: int) -> bool:
        """Free one slot for a new session of (privileged, size), or say it cannot."""
        sessions = self.sessions.values()
        stale = min(sessions, key=lambda s: (s.last_used_ms, s.id), default=None)
        if stale is not None and now_ms - stale.last_used_ms > self.eviction_ms:
            self._evict(stale)
            return True
        victim: FetchSession | None = None
        for s in sessions:
            old = now_ms - s.created_ms > self.eviction_ms
            if not (old or (privileged and not s.privileged)):
                continue
            if victim is None or (s.privileged, len(s), s.id) < (
                victim.privileged,
                len(victim),
                victim.id,
            ):
                victim = s
        # the newcomer must be worth strictly more than what it displaces
        if victim is None or (privileged, size) <= (victim.privileged, len(victim)):
            return False
        self._evict(victim)
        return True

    def _evict(self, session: FetchSession) -> None:
        del self.sessions[session.id]
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict()

    def _new_id(self) -> int:
        while True:
            session_id = self._rng.randint(1, MAX_EPOCH)
            if session_id not in self.sessions:
                return session_id
