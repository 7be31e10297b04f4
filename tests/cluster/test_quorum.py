"""The metadata quorum over pysyncobj: election, replication to voters and observers, loss
of voters, restarts from the journal and from a snapshot, and the shared secret.

Several quorum members share one event loop here (pysyncobj runs each in its own threads);
one test runs real processes and kills them. This file is also the node those processes run:
`python test_quorum.py node CONFIG.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from shazamq.broker.cluster.quorum import (
    JOURNAL_FILE,
    SNAPSHOT_FILE,
    MetadataQuorum,
    QuorumUnavailable,
    decode_snapshot,
)
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)

SECRET = "quorum-test-secret"
KEY_EXISTS = 36  # TOPIC_ALREADY_EXISTS: the test machine's answer to setting a key twice
ROOT = pathlib.Path(__file__).resolve().parents[2]


class Put(msgspec.Struct, array_like=True):
    key: str
    value: str


def put(key: str, value: str = "v") -> bytes:
    return msgspec.msgpack.encode(Put(key, value))


class KeyValues:
    """The test StateMachine: each key is set once; setting it again is an error."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.restores = 0

    def apply(self, record: bytes) -> int:
        entry = msgspec.msgpack.decode(record, type=Put)
        if entry.key in self.data:
            return KEY_EXISTS
        self.data[entry.key] = entry.value
        return 0

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.data)

    def restore(self, data: bytes) -> None:
        self.data = msgspec.msgpack.decode(data, type=dict[str, str])
        self.restores += 1


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.05)


class Member:
    """One quorum member and everything its callbacks saw on the event loop."""

    def __init__(
        self,
        node_id: int,
        voters: dict[int, tuple[str, int]],
        journal_dir: pathlib.Path,
        secret: str,
    ) -> None:
        self.node_id = node_id
        self.journal_dir = journal_dir
        self.machine = KeyValues()  # applied in pysyncobj's thread
        self.view = KeyValues()  # the event loop's copy, fed only by the callbacks
        self.applied: list[bytes] = []
        self.restored: list[bytes] = []
        self.leadership: list[bool] = []
        self.quorum = MetadataQuorum(
            node_id=node_id,
            voters=voters,
            bind_host="127.0.0.1",
            journal_dir=journal_dir,
            secret=secret,
            machine=self.machine,
            on_apply=self._on_apply,
            on_restore=self._on_restore,
            on_leadership=self.leadership.append,
        )

    def _on_apply(self, record: bytes) -> None:
        self.applied.append(record)
        self.view.apply(record)

    def _on_restore(self, data: bytes) -> None:
        self.restored.append(data)
        self.view.restore(data)


class Cluster:
    """Voters 1..3 on loopback; members come and go, their journal dirs stay."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.voters = {nid: ("127.0.0.1", free_port()) for nid in (1, 2, 3)}
        self.members: dict[int, Member] = {}

    async def start(self, node_id: int, secret: str = SECRET) -> Member:
        member = Member(node_id, self.voters, self.root / f"node-{node_id}", secret)
        await member.quorum.start()
        self.members[node_id] = member
        return member

    async def stop(self, node_id: int) -> Member:
        member = self.members.pop(node_id)
        await member.quorum.stop()
        return member

    async def stop_all(self) -> None:
        await asyncio.gather(*(m.quorum.stop() for m in self.members.values()))
        self.members.clear()

    async def leader(self, among: list[int] | None = None, timeout: float = 10.0) -> Member:
        """Wait until exactly one voter leads and every member `among` names it."""
        members = [self.members[nid] for nid in among or list(self.members)]

        def agreed() -> bool:
            leaders = [m for m in members if m.quorum.is_leader]
            return len(leaders) == 1 and all(
                m.quorum.leader_id == leaders[0].node_id for m in members
            )

        await eventually(agreed, f"one leader that {[m.node_id for m in members]} agree on")
        return next(m for m in members if m.quorum.is_leader)

    def converged(self, members: list[Member] | None = None) -> bool:
        members = members or list(self.members.values())
        first = members[0].view.data
        return all(m.view.data == first and m.machine.data == first for m in members)


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.stop_all()


async def test_three_voters_elect_and_replicate_in_one_order(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)

    assert await follower.quorum.propose(put("a", "1")) == 0
    # propose returns only after on_apply for the record has run on this node's loop
    assert follower.view.data == {"a": "1"}
    assert await leader.quorum.propose(put("b", "2")) == 0
    assert leader.view.data["b"] == "2"
    # the result is the machine's own answer, not just "committed"
    assert await follower.quorum.propose(put("a", "other")) == KEY_EXISTS
    assert follower.view.data["a"] == "1"

    expected = [put("a", "1"), put("b", "2"), put("a", "other")]
    await eventually(
        lambda: all(m.applied == expected for m in cluster.members.values()),
        "every node applied the same records in the same order",
    )
    assert cluster.converged()
    assert all(m.quorum.is_voter for m in cluster.members.values())

    # a loaded machine may have re-elected meanwhile: check against whoever leads now
    leader = await cluster.leader()

    def settled() -> bool:
        statuses = [m.quorum.status() for m in cluster.members.values()]
        # on_leadership arrives through the loop a tick after is_leader changes
        told = [
            m.leadership[-1:] == ([True] if m is leader else [False])
            or (m is not leader and not m.leadership)
            for m in cluster.members.values()
        ]
        return all(told) and all(
            s["lag"] == 0 and s["leader_id"] == leader.node_id and s["voters_connected"] == 3
            for s in statuses
        )

    await eventually(settled, "every node names the leader, sees all voters and has no lag")
    assert leader.leadership[-1] is True
    for m in cluster.members.values():
        status = m.quorum.status()
        assert status["term"] is not None and status["term"] >= 1
        assert status["commit_index"] == status["last_applied"] >= 3


async def test_observer_receives_everything_and_can_propose(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    observer = await cluster.start(10)  # not in voters: a read-only pysyncobj node
    assert not observer.quorum.is_voter
    leader = await cluster.leader()

    assert await leader.quorum.propose(put("from-leader")) == 0
    assert await observer.quorum.propose(put("from-observer")) == 0
    assert observer.view.data == {"from-leader": "v", "from-observer": "v"}
    assert await observer.quorum.propose(put("from-leader")) == KEY_EXISTS

    expected = [put("from-leader"), put("from-observer"), put("from-leader")]
    await eventually(
        lambda: all(m.applied == expected for m in cluster.members.values()),
        "voters and observer applied the same records in the same order",
    )
    assert cluster.converged()
    assert observer.leadership == []
    await eventually(
        lambda: (
            observer.quorum.leader_id is not None
            and observer.quorum.leader_id
            == next(m.node_id for m in cluster.members.values() if m.quorum.is_leader)
            and observer.quorum.status()["voters_connected"] == 3
        ),
        "the observer names the leader and reaches every voter",
    )


async def test_losing_voters_then_restarting_them(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader()
    assert await leader.quorum.propose(put("before")) == 0

    # One voter of three gone (the leader, to force an election): still a majority.
    first_down = await cluster.stop(leader.node_id)
    assert first_down.leadership[-1] is False
    survivor, other = list(cluster.members.values())
    assert await survivor.quorum.propose(put("one-down"), timeout=10) == 0
    await eventually(lambda: cluster.converged(), "the two survivors agree")

    # Two of three gone: no majority, so a proposal fails within its timeout.
    second_down = await cluster.stop(other.node_id)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(QuorumUnavailable, match="of 3 voters reachable") as failure:
        await survivor.quorum.propose(put("no-quorum"), timeout=1.5)
    assert loop.time() - began < 2.5, failure.value
    assert survivor.view.data == {"before": "v", "one-down": "v"}

    # Both come back as new instances on their old journals and catch up.
    for down in (first_down, second_down):
        await cluster.start(down.node_id)
    await cluster.leader()
    await eventually(cluster.converged, "all three converge after the restarts")
    state = survivor.view.data
    # "no-quorum" may have been left in a lone leader's log and committed later, but then
    # it is everywhere (converged), and the committed records are never lost.
    assert {"before", "one-down"} <= set(state) <= {"before", "one-down", "no-quorum"}

    restarted = cluster.members[first_down.node_id]
    assert await restarted.quorum.propose(put("after"), timeout=10) == 0
    await eventually(
        lambda: cluster.converged() and "after" in survivor.view.data, "the new record everywhere"
    )
    # proposals retried across the failover were still applied once each
    assert all(len(set(m.applied)) == len(m.applied) for m in cluster.members.values())


async def test_restart_of_all_voters_from_journal_and_from_snapshot(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    await cluster.leader()
    members = list(cluster.members.values())
    for i in range(10):
        assert await members[i % 3].quorum.propose(put(f"k{i}", str(i))) == 0
    await eventually(cluster.converged, "ten records everywhere")
    from_journal = dict(members[0].view.data)
    assert len(from_journal) == 10

    # Everyone down at once, everyone back: the journals alone rebuild the state.
    await cluster.stop_all()
    for nid in (1, 2, 3):
        await cluster.start(nid)
    await eventually(
        lambda: all(m.view.data == from_journal for m in cluster.members.values()),
        "state rebuilt from the journals",
    )
    assert all(m.restored == [] and m.machine.restores == 0 for m in cluster.members.values())
    await cluster.leader()

    # Compact every node's log into a snapshot, then add records that live only in the log.
    for m in cluster.members.values():
        m.quorum.request_snapshot()
    await eventually(
        lambda: all((m.journal_dir / SNAPSHOT_FILE).exists() for m in cluster.members.values()),
        "a snapshot on every node",
    )
    for m in cluster.members.values():
        header, state = decode_snapshot((m.journal_dir / SNAPSHOT_FILE).read_bytes())
        # the snapshot holds exactly machine.snapshot(): our msgpack state, no pickle
        assert msgspec.msgpack.decode(state, type=dict[str, str]) == from_journal
        assert header.last.index > header.previous.index
    first = next(iter(cluster.members.values()))
    for i in range(5):
        assert await first.quorum.propose(put(f"later{i}")) == 0
    await eventually(cluster.converged, "the later records everywhere")
    everything = dict(first.view.data)
    assert len(everything) == 15

    await cluster.stop_all()
    for nid in (1, 2, 3):
        await cluster.start(nid)
    await eventually(
        lambda: all(m.view.data == everything for m in cluster.members.values()),
        "state rebuilt from snapshot plus journal",
    )
    for m in cluster.members.values():
        assert m.machine.restores >= 1
        assert msgspec.msgpack.decode(m.restored[0], type=dict[str, str]) == from_journal
        # after the snapshot, only the later records were replayed from the journal
        assert {msgspec.msgpack.decode(r, type=Put).key for r in m.applied} <= {
            f"later{i}" for i in range(5)
        }
    leader = await cluster.leader()
    assert await leader.quorum.propose(put("k0")) == KEY_EXISTS


async def _submit(member: Member, record: bytes, token: bytes) -> tuple[int, int]:
    """Call the replicated method directly, as propose() does on each of its attempts."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, int]] = loop.create_future()
    raft = member.quorum._raft
    assert raft is not None
    raft.apply_record(
        record,
        token,
        callback=lambda result, error: loop.call_soon_threadsafe(done.set_result, (result, error)),
    )
    return await asyncio.wait_for(done, 5)


async def test_a_repeated_proposal_token_is_applied_once(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)
    token = b"t" * 16

    assert await _submit(follower, put("once", "1"), token) == (0, 0)
    # what a retry after an ambiguous failure looks like: same token, same record
    assert await _submit(leader, put("once", "1"), token) == (0, 0)
    await eventually(
        lambda: all(m.view.data == {"once": "1"} for m in cluster.members.values()),
        "the record everywhere",
    )

    # the tokens travel in snapshots: still recognised after every node restores from one
    for m in cluster.members.values():
        m.quorum.request_snapshot()
    await eventually(
        lambda: all((m.journal_dir / SNAPSHOT_FILE).exists() for m in cluster.members.values()),
        "a snapshot on every node",
    )
    await cluster.stop_all()
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader()
    assert await _submit(leader, put("other", "2"), token) == (0, 0)
    assert await leader.quorum.propose(put("fresh")) == 0
    await eventually(
        lambda: all(
            m.view.data == {"once": "1", "fresh": "v"} and m.restored
            for m in cluster.members.values()
        ),
        "the repeat skipped and the fresh record applied everywhere",
    )
    assert all(m.applied == [put("fresh")] for m in cluster.members.values())


async def test_lagging_voter_catches_up_from_the_leaders_snapshot(cluster: Cluster) -> None:
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)
    assert await leader.quorum.propose(put("early")) == 0
    await eventually(lambda: "early" in follower.view.data, "the follower has the first record")
    await cluster.stop(follower.node_id)

    for i in range(8):
        assert await leader.quorum.propose(put(f"missed{i}")) == 0
    survivors = list(cluster.members.values())
    await eventually(lambda: cluster.converged(survivors), "both survivors have every record")
    # both, so whichever of them leads when the follower returns has a compacted log
    for m in survivors:
        m.quorum.request_snapshot()
    await eventually(
        lambda: all(
            (m.journal_dir / SNAPSHOT_FILE).exists()
            and (m.quorum.status()["log_entries"] or 99) <= 3
            for m in survivors
        ),
        "the survivors compacted their logs",
    )

    back = await cluster.start(follower.node_id)
    await eventually(cluster.converged, "the restarted follower converges")
    assert len(back.view.data) == 9
    # its journal lacked the compacted entries, so it had to install the leader's snapshot
    assert back.restored and back.machine.restores >= 1
    header, state = decode_snapshot((back.journal_dir / SNAPSHOT_FILE).read_bytes())
    assert msgspec.msgpack.decode(state, type=dict[str, str]) == leader.view.data
    assert header.last.index >= 10


async def test_wrong_secret_cannot_join_or_inject(cluster: Cluster) -> None:
    await cluster.start(1)
    await cluster.start(2)
    impostor = await cluster.start(3, secret="not-the-secret")  # a listed voter, wrong secret
    # an observer with yet another secret (with the same one it would reach the impostor)
    outsider = await cluster.start(9, secret="another-wrong-secret")
    good = [cluster.members[1], cluster.members[2]]
    leader = await cluster.leader(among=[1, 2])

    assert await leader.quorum.propose(put("real")) == 0
    for intruder in (impostor, outsider):
        with pytest.raises(QuorumUnavailable):
            await intruder.quorum.propose(put(f"forged-{intruder.node_id}"), timeout=1.0)
    assert await good[0].quorum.propose(put("real-2")) == 0
    await eventually(lambda: cluster.converged(good), "the two honest voters agree")

    assert good[0].view.data == {"real": "v", "real-2": "v"}
    for intruder in (impostor, outsider):
        assert intruder.applied == [] and intruder.view.data == {} and intruder.machine.data == {}
        assert intruder.quorum.leader_id is None and not intruder.quorum.is_leader
        assert intruder.leadership == []
    assert impostor.quorum.status()["voters_connected"] == 1  # only itself
    assert outsider.quorum.status()["voters_connected"] == 0
    assert all(m.quorum.status()["voters_connected"] == 2 for m in good)
    # the impostor never even reached a peer to start an election with
    assert impostor.quorum.status()["term"] == 0


# --- real processes ---------------------------------------------------------------------


def _spawn(config: dict[str, object], workdir: pathlib.Path) -> subprocess.Popen[bytes]:
    path = workdir / f"node-{config['node_id']}.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    stderr = open(workdir / f"node-{config['node_id']}.log", "ab")  # noqa: SIM115
    with stderr:
        return subprocess.Popen(
            [sys.executable, __file__, "node", str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _state(path: pathlib.Path) -> dict[str, str] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


async def test_processes_killed_and_restarted_keep_committed_records(
    tmp_path: pathlib.Path,
) -> None:
    voters = {nid: ["127.0.0.1", free_port()] for nid in (1, 2, 3)}
    outputs = {nid: tmp_path / f"state-{nid}.json" for nid in voters}

    def config(nid: int, propose: list[str]) -> dict[str, object]:
        return {
            "node_id": nid,
            "voters": voters,
            "journal_dir": str(tmp_path / f"journal-{nid}"),
            "out": str(outputs[nid]),
            "propose": propose,
        }

    first = [f"a{i}" for i in range(10)]
    procs = [_spawn(config(nid, first if nid == 1 else []), tmp_path) for nid in voters]
    try:
        await eventually(
            lambda: all(set(_state(p) or {}) == set(first) for p in outputs.values()),
            "ten records in every process",
            timeout=25,
        )
        for proc in procs:
            proc.kill()  # no graceful stop: only what reached the journal survives
        for proc in procs:
            await asyncio.to_thread(proc.wait, 10)

        later = [f"b{i}" for i in range(5)]
        procs = [_spawn(config(nid, later if nid == 3 else []), tmp_path) for nid in voters]
        await eventually(
            lambda: all(set(_state(p) or {}) == set(first + later) for p in outputs.values()),
            "old and new records in every restarted process",
            timeout=25,
        )
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 10) for proc in procs]
        assert codes == [0, 0, 0], (tmp_path / "node-1.log").read_text()
        assert all((tmp_path / f"journal-{nid}" / JOURNAL_FILE).exists() for nid in voters)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def _run_node(config: dict[str, object]) -> None:
    out = pathlib.Path(str(config["out"]))
    out.unlink(missing_ok=True)
    view = KeyValues()

    def publish() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(view.data))
        os.replace(tmp, out)

    def on_apply(record: bytes) -> None:
        view.apply(record)
        publish()

    def on_restore(data: bytes) -> None:
        view.restore(data)
        publish()

    voters = config["voters"]
    assert isinstance(voters, dict)
    quorum = MetadataQuorum(
        node_id=int(str(config["node_id"])),
        voters={int(nid): (host, int(port)) for nid, (host, port) in voters.items()},
        bind_host="127.0.0.1",
        journal_dir=pathlib.Path(str(config["journal_dir"])),
        secret=SECRET,
        machine=KeyValues(),
        on_apply=on_apply,
        on_restore=on_restore,
        on_leadership=lambda _leading: None,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await quorum.start()
    proposals = config["propose"]
    assert isinstance(proposals, list)
    for key in proposals:
        while True:
            try:
                await quorum.propose(put(key), timeout=5.0)
                break
            except QuorumUnavailable:
                await asyncio.sleep(0.1)
    await stop.wait()
    await quorum.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["node"]:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_node(json.loads(pathlib.Path(sys.argv[2]).read_text())))
