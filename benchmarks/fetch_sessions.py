"""What incremental fetch sessions (KIP-227) save a consumer of many mostly idle partitions.

Starts one broker, creates a topic of ``--partitions`` partitions and fills ``--active`` of
them with ``--rounds`` small batches each; the others stay empty. A raw Fetch client
(v13, topic ids, as current clients send) then reads the topic in rounds, answered at once
(max wait 0), each partition asking for one batch at most, so every round each active
partition returns one batch and the rest return nothing:

  sessionless   every request lists every partition (session id 0, epoch -1) and every
                response answers every partition: what a consumer got before sessions;
  incremental   one full fetch opens a session, then each request lists only the
                partitions whose position moved and each response only the partitions
                with records (or anything else changed).

Each mode runs an "active" phase (``--rounds`` rounds, records in ``--active``
partitions) and an "idle" phase (``--rounds`` more rounds, every partition at its end).
Reported per round: request and response bytes on the wire (frames with their size
prefix) and the broker process's CPU (user + system, from /proc, over the phase).

    python -m benchmarks.fetch_sessions                    # 500 partitions, 5 active
    python -m benchmarks.fetch_sessions --partitions 1000 --rounds 500
    python -m benchmarks.fetch_sessions --json out.json
    python -m benchmarks.fetch_sessions --modes sessionless --broker-cmd "..."   # another build
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.load import (
    BrokerUnderTest,
    add_broker_cmd_option,
    cpu_times,
    create_topic,
    set_broker_cmd,
)

TOPIC = "fetch-sessions"
VALUE = b"v" * 100  # one record per batch, ~170 bytes a batch
VERSION = 13


class Wire:
    """One Kafka connection counting the bytes each way."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.correlation = 0
        self.sent = 0
        self.received = 0

    def request(self, req: Any, version: int) -> Any:
        from shazamq.protocol import framing

        self.correlation += 1
        frame = framing.encode_request(req, version, self.correlation, "bench")
        self.sock.sendall(frame)
        self.sent += len(frame)
        (size,) = struct.unpack(">i", self._recv(4))
        body = self._recv(size)
        self.received += 4 + size
        corr, resp = framing.decode_response(req.API_KEY, version, body)
        assert corr == self.correlation
        return resp

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the broker")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


def topic_id(w: Wire) -> uuid.UUID:
    from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic

    resp = w.request(MetadataRequest(topics=[MetadataRequestTopic(name=TOPIC)]), 12)
    return resp.topics[0].topic_id


def fill(w: Wire, active: int, rounds: int) -> int:
    """`rounds` one-record batches in each of the first `active` partitions; batch size."""
    from shazamq.protocol.messages.produce_request import (
        PartitionProduceData,
        ProduceRequest,
        TopicProduceData,
    )
    from shazamq.protocol.records import Record, build_batch

    batch = build_batch([Record(offset_delta=0, value=VALUE)], base_timestamp=0)
    for _ in range(rounds):
        req = ProduceRequest(
            acks=1,
            timeout_ms=30_000,
            topic_data=[
                TopicProduceData(
                    name=TOPIC,
                    partition_data=[
                        PartitionProduceData(index=p, records=batch) for p in range(active)
                    ],
                )
            ],
        )
        for part in w.request(req, 9).responses[0].partition_responses:
            assert part.error_code == 0, part.error_code
    return len(batch)


class Consumer:
    """A fetcher's view: positions, and the session it holds (if any)."""

    def __init__(self, w: Wire, tid: uuid.UUID, partitions: int, limit: int, session: bool):
        self.w = w
        self.tid = tid
        self.positions = dict.fromkeys(range(partitions), 0)
        self.limit = limit
        self.use_session = session
        self.session_id = 0
        self.epoch = 0 if session else -1
        self.moved: set[int] = set(self.positions)  # all, for the first (full) request
        self.records = 0

    def round(self) -> None:
        from shazamq.protocol.messages.fetch_request import (
            FetchPartition,
            FetchRequest,
            FetchTopic,
        )
        from shazamq.protocol.records import iter_batches

        send = self.moved if self.use_session and self.epoch > 0 else self.positions
        req = FetchRequest(
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=50 << 20,
            session_id=self.session_id,
            session_epoch=self.epoch,
            topics=[
                FetchTopic(
                    topic_id=self.tid,
                    partitions=[
                        FetchPartition(
                            partition=p,
                            fetch_offset=self.positions[p],
                            partition_max_bytes=self.limit,
                        )
                        for p in sorted(send)
                    ],
                )
            ]
            if send
            else [],
        )
        resp = self.w.request(req, VERSION)
        assert resp.error_code == 0, resp.error_code
        self.moved = set()
        for t in resp.responses:
            for pd in t.partitions:
                assert pd.error_code == 0, pd.error_code
                data = bytes(pd.records or b"")
                for _, h in iter_batches(data, allow_partial=True):
                    self.records += h.records_count
                    self.positions[pd.partition_index] = h.base_offset + h.last_offset_delta + 1
                    self.moved.add(pd.partition_index)
        if self.use_session:
            if self.epoch == 0:
                assert resp.session_id != 0, "the broker opened no session"
                self.session_id = resp.session_id
            self.epoch += 1


def phase(b: BrokerUnderTest, c: Consumer, rounds: int) -> dict:
    w = c.w
    sent, received, records = w.sent, w.received, c.records
    user, system = cpu_times(b.pid)
    started = time.monotonic()
    for _ in range(rounds):
        c.round()
    wall = time.monotonic() - started
    user2, system2 = cpu_times(b.pid)
    return {
        "request_bytes": round((w.sent - sent) / rounds, 1),
        "response_bytes": round((w.received - received) / rounds, 1),
        "broker_cpu_ms": round((user2 + system2 - user - system) * 1000 / rounds, 3),
        "wall_ms": round(wall * 1000 / rounds, 3),
        "records": c.records - records,
    }


def run(partitions: int, active: int, rounds: int, modes: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="shazamq-fetch-sessions-"))
    report: dict = {
        "partitions": partitions,
        "active": active,
        "rounds": rounds,
        "loadavg": os.getloadavg(),
    }
    b = BrokerUnderTest(tmp / "data")
    try:
        create_topic(b.bootstrap, TOPIC, partitions)
        w = Wire(b.port)
        tid = topic_id(w)
        limit = fill(w, active, rounds)  # one batch per partition per round
        for mode in modes:
            c = Consumer(w, tid, partitions, limit, session=mode == "incremental")
            first = (w.sent, w.received)
            c.round()  # the first (full) fetch: the same in both modes
            result: dict[str, Any] = {
                "first_request_bytes": w.sent - first[0],
                "first_response_bytes": w.received - first[1],
            }
            result["active"] = phase(b, c, rounds - 1)
            result["idle"] = phase(b, c, rounds)
            result["records"] = c.records
            report[mode] = result
        w.close()
    finally:
        b.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["loadavg_after"] = os.getloadavg()
    return report


def print_table(report: dict) -> None:
    print(
        f"{report['partitions']} partitions, {report['active']} with one batch a round, "
        f"{report['rounds']} rounds a phase; load avg {report['loadavg'][0]:.2f} before, "
        f"{report['loadavg_after'][0]:.2f} after"
    )
    header = (
        f"{'mode':<12} {'phase':<7} {'request B':>10} {'response B':>11} "
        f"{'broker CPU ms':>13} {'wall ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for mode in ("sessionless", "incremental"):
        if mode not in report:
            continue
        for ph in ("active", "idle"):
            r = report[mode][ph]
            print(
                f"{mode:<12} {ph:<7} {r['request_bytes']:>10} {r['response_bytes']:>11} "
                f"{r['broker_cpu_ms']:>13} {r['wall_ms']:>8}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fetch_sessions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--partitions", type=int, default=500)
    parser.add_argument("--active", type=int, default=5, help="partitions with records (default 5)")
    parser.add_argument("--rounds", type=int, default=300, help="fetch rounds a phase")
    parser.add_argument(
        "--modes",
        default="sessionless,incremental",
        help="comma-separated modes to run (sessionless alone also runs against a broker "
        "without sessions, to compare the sessionless path across versions)",
    )
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    add_broker_cmd_option(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.active <= args.partitions or args.rounds < 2:
        parser.error("need 0 <= --active <= --partitions and --rounds >= 2")
    modes = args.modes.split(",")
    if not modes or any(m not in ("sessionless", "incremental") for m in modes):
        parser.error("--modes takes sessionless and/or incremental")
    set_broker_cmd(args.broker_cmd)
    report = run(args.partitions, args.active, args.rounds, modes)
    print_table(report)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
