"""A consume-transform-produce worker with exactly-once semantics, run as a subprocess.

Reads ``input`` with a read_committed group consumer, writes ``value.upper()`` to
``output`` and commits the consumed offsets in the same transaction
(``send_offsets_to_transaction``). With ``--die-after N`` it SIGKILLs itself after
producing its N-th record, in the middle of a transaction, to test recovery.

Usage: python eos_worker.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID [--die-after N]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def main() -> int:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "input", "output", "group", "txn_id"):
        ap.add_argument(name)
    ap.add_argument("--die-after", type=int, default=-1)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--idle-exit", type=float, default=4.0)
    args = ap.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 300,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.txn_id,
            "transaction.timeout.ms": 30000,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    consumer.subscribe([args.input])
    produced = 0
    last_input = time.monotonic()
    while time.monotonic() - last_input < args.idle_exit:
        msgs = consumer.consume(args.batch, 0.5)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        last_input = time.monotonic()
        producer.begin_transaction()
        for m in msgs:
            producer.produce(args.output, m.value().upper(), key=m.key())
            produced += 1
            if produced == args.die_after:
                producer.flush(10)  # the records are in the log, the transaction is open
                os.kill(os.getpid(), signal.SIGKILL)
        positions: dict[tuple[str, int], int] = {}
        for m in msgs:
            positions[(m.topic(), m.partition())] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in positions.items()],
            consumer.consumer_group_metadata(),
            30,
        )
        producer.commit_transaction(30)
    consumer.close()
    print(f"produced {produced}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as exc:
        print(f"worker failed: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
