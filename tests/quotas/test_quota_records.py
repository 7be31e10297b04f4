"""Client quotas in the cluster's metadata state machine: records, rejection, snapshots."""

from __future__ import annotations

from shazamq.broker.cluster import records as r
from shazamq.broker.cluster.state import ClusterState
from shazamq.protocol.errors import ErrorCode


def apply(state: ClusterState, record: r.Record) -> int:
    return state.apply(r.encode(record))


def test_quota_records_apply_and_survive_a_snapshot() -> None:
    s = ClusterState()
    alice_default = [("client-id", None), ("user", "alice")]
    assert (
        apply(s, r.AlterClientQuota(entity=alice_default, ops=[("producer_byte_rate", 1e4)])) == 0
    )
    assert s.take_changes().quotas
    assert (
        apply(s, r.AlterClientQuota(entity=[("user", None)], ops=[("request_percentage", 25.0)]))
        == 0
    )
    assert s.quotas == {
        (("client-id", None), ("user", "alice")): {"producer_byte_rate": 1e4},
        (("user", None),): {"request_percentage": 25.0},
    }
    # setting the same value again changes nothing the broker must react to
    s.take_changes()
    assert (
        apply(s, r.AlterClientQuota(entity=[("user", None)], ops=[("request_percentage", 25.0)]))
        == 0
    )
    assert not s.take_changes().quotas

    restored = ClusterState()
    restored.restore(s.snapshot())
    assert restored.quotas == s.quotas
    assert restored.take_changes().quotas
    assert restored.snapshot() == s.snapshot()

    # removing the last key removes the entity
    assert (
        apply(s, r.AlterClientQuota(entity=[("user", None)], ops=[("request_percentage", None)]))
        == 0
    )
    assert (("user", None),) not in s.quotas


def test_invalid_quota_records_are_rejected_alike_everywhere() -> None:
    s = ClusterState()
    bad = [
        r.AlterClientQuota(entity=[], ops=[("producer_byte_rate", 1.0)]),
        r.AlterClientQuota(entity=[("user", "a"), ("client-id", "c")], ops=[]),  # not sorted
        r.AlterClientQuota(entity=[("ip", "1.2.3.4")], ops=[("producer_byte_rate", 1.0)]),
        r.AlterClientQuota(entity=[("user", "")], ops=[("producer_byte_rate", 1.0)]),
        r.AlterClientQuota(entity=[("user", "a")], ops=[("bogus", 1.0)]),
        r.AlterClientQuota(entity=[("user", "a")], ops=[("producer_byte_rate", -1.0)]),
    ]
    for rec in bad:
        assert apply(s, rec) == ErrorCode.INVALID_REQUEST
    assert s.quotas == {}
    assert not s.take_changes()


def test_snapshots_without_quotas_still_restore() -> None:
    import msgspec

    from shazamq.broker.cluster.state import Snapshot

    old = msgspec.msgpack.encode(Snapshot(cluster_id="c"))
    decoded = msgspec.msgpack.decode(old)
    decoded.pop("quotas", None)
    s = ClusterState()
    s.restore(msgspec.msgpack.encode(decoded))
    assert s.quotas == {}
