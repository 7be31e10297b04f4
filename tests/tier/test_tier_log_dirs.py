"""Tiering on a broker with several log dirs (``broker.log_dirs``).

Partitions spread over two dirs are uploaded, leave their disks, and are read back from
the bucket; a partition moved to the other dir (AlterReplicaLogDirs) while tiered keeps
the bucket's reach (nothing not in the bucket leaves the disk), goes on uploading from
its new dir and reads across both; a broker restored from the bucket onto two empty
dirs spreads the partitions over them and serves everything.
"""

from __future__ import annotations

import json
from pathlib import Path

from kafka import KafkaAdminClient
from kafka_helpers import make_topic

from .tierutil import TOPIC_CONFIG, Bucket, consume_all, produce, wait_for

TOPIC = "spread"


def _where(dirs: list[Path], partition: int) -> Path | None:
    found = [d for d in dirs if (d / f"{TOPIC}-{partition}").is_dir()]
    assert len(found) <= 1, found
    return found[0] if found else None


def _local_start(d: Path, partition: int) -> int:
    return min(int(p.name[:20]) for p in (d / f"{TOPIC}-{partition}").glob("*.log"))


def _tiered(bucket: Bucket, dirs: list[Path], partition: int, end: int) -> bool:
    """The bucket holds up to ``end`` and the disk lost what is below its local start."""
    m = bucket.manifest(TOPIC, partition)
    d = _where(dirs, partition)
    return (
        m is not None
        and m.end_offset >= end - 20
        and d is not None
        and (0 < _local_start(d, partition) <= m.end_offset)
    )


def test_tiering_over_two_log_dirs_a_move_and_a_restore(
    broker_factory, bucket: Bucket, tmp_path: Path
) -> None:
    dirs = [tmp_path / "disk-a", tmp_path / "disk-b"]
    b = broker_factory(**bucket.settings(), broker__log_dirs=json.dumps([str(d) for d in dirs]))
    make_topic(b.bootstrap, TOPIC, 2, TOPIC_CONFIG)
    sent = {p: produce(b.bootstrap, TOPIC, 60, partition=p) for p in (0, 1)}
    assert {_where(dirs, 0), _where(dirs, 1)} == set(dirs)  # one in each
    for p in (0, 1):
        wait_for(lambda p=p: _tiered(bucket, dirs, p, 60), what=f"partition {p} tiered")
        got = consume_all(b.bootstrap, TOPIC, 60, partition=p)
        assert [v for _, v in got] == sent[p]

    # partition 0 moves to the other dir while tiered
    source = _where(dirs, 0)
    target = next(d for d in dirs if d != source)
    admin = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        result = admin.alter_replica_log_dirs({(TOPIC, 0, 0): str(target)})
    finally:
        admin.close()
    assert [e.errno for e in result.values()] == [0]
    wait_for(
        lambda: (
            _where(dirs, 0) == target
            and not [n for n in (target.iterdir()) if n.name.endswith("-future")]
        ),
        what="the move",
    )
    sent[0] += produce(b.bootstrap, TOPIC, 60, start=60, partition=0)
    wait_for(lambda: _tiered(bucket, dirs, 0, 120), what="partition 0 tiered from its new dir")
    m = bucket.manifest(TOPIC, 0)
    assert m is not None and m.segments[0].base_offset == 0
    got = consume_all(b.bootstrap, TOPIC, 120, partition=0)
    assert [o for o, _ in got] == list(range(120))
    assert [v for _, v in got] == sent[0]
    assert b.stop() == 0

    # restored onto two empty dirs: the partitions are spread over them and served
    fresh_dirs = [tmp_path / "new-a", tmp_path / "new-b"]
    fresh = broker_factory(
        **bucket.settings(), broker__log_dirs=json.dumps([str(d) for d in fresh_dirs])
    )
    assert _where(fresh_dirs, 0) is not None and _where(fresh_dirs, 1) is not None
    assert not (fresh.data_dir / f"{TOPIC}-0").exists()
    for p in (0, 1):
        got = consume_all(fresh.bootstrap, TOPIC, len(sent[p]), partition=p)
        assert [v for _, v in got] == sent[p]
    sent[1] += produce(fresh.bootstrap, TOPIC, 1, start=60, partition=1)
    got = consume_all(fresh.bootstrap, TOPIC, 1, start=60, partition=1)
    assert [o for o, _ in got] == [60]
