"""The replicas' high watermarks on disk, so a restarted broker does not start from zero.

A replica's high watermark lives in memory; after a restart the log knows its end but not
how much of it was committed. Kafka keeps a `replication-offset-checkpoint` file for this;
ours has the same text layout (version, count, then "topic partition offset" lines) and
is replaced atomically. A restarted leader starts from the checkpoint instead of the log
start, so consumers and ListOffsets do not see the high watermark fall back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shazamq.broker.log.partition_log import write_file_atomically

FILE_NAME = "replication-offset-checkpoint"
VERSION = 0


def read(data_dir: Path) -> dict[tuple[str, int], int]:
    """The checkpointed high watermarks; empty when the file is missing or not understood."""
    try:
        lines = (data_dir / FILE_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    if len(lines) < 2 or lines[0].strip() != str(VERSION):
        return {}
    out: dict[tuple[str, int], int] = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) != 3:
            return {}
        topic, partition, offset = parts
        try:
            out[(topic, int(partition))] = int(offset)
        except ValueError:
            return {}
    return out


def write(data_dir: Path, marks: Mapping[tuple[str, int], int]) -> None:
    """Replace the checkpoint with `marks`: write a temporary file, fsync it, rename it,
    fsync the directory (blocking: the caller runs it in an executor)."""
    body = [str(VERSION), str(len(marks))]
    body += [f"{t} {p} {o}" for (t, p), o in sorted(marks.items())]
    write_file_atomically(str(data_dir / FILE_NAME), ("\n".join(body) + "\n").encode())
