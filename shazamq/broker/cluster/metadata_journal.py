"""The single broker's metadata journal: one line per change, appended and fsynced.

The metadata document (``topics.json``) is the snapshot; ``topics.journal`` holds the
changes made since, so creating or deleting a topic writes one line (its own size, not
the size of every topic). When the journal outgrows the snapshot it is compacted: a new
snapshot is written atomically, then an empty journal replaces the old one.

File format (text, one record a line)::

    shazamq-metadata-journal <generation>\\n
    <crc32c of the JSON, 8 hex digits> <JSON record>\\n
    ...

The generation ties a journal to the snapshot it follows (the snapshot stores it too): a
crash between writing a new snapshot and replacing the journal leaves a journal of the
previous generation, whose changes the snapshot already holds, and it is ignored.

Recovery: a last line without its newline, or whose CRC or JSON does not check, is a
write torn by a crash: it was never acknowledged, so it is dropped (and cut from the
file before the next append). A bad line followed by good ones is not a torn write but
damage, and the journal is refused with the line named.
"""

from __future__ import annotations

from typing import NamedTuple

import crc32c
import msgspec

__all__ = [
    "HEADER",
    "JournalError",
    "ParsedJournal",
    "encode_header",
    "encode_line",
    "parse_journal",
]

HEADER = b"shazamq-metadata-journal "


class JournalError(ValueError):
    """A journal that is damaged beyond a torn last line."""


class ParsedJournal(NamedTuple):
    generation: int
    records: list[bytes]  # the JSON of each good record, in order
    good_length: int  # bytes up to the end of the last good line


def encode_header(generation: int) -> bytes:
    return HEADER + str(generation).encode() + b"\n"


def encode_line(record: bytes) -> bytes:
    """One journal line for a JSON ``record`` (which must hold no newline; msgspec's
    JSON never does)."""
    return f"{crc32c.crc32c(record):08x} ".encode() + record + b"\n"


def _check_line(line: bytes) -> bytes | None:
    """The JSON of a good line (without its newline), or None."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    body = line[9:]
    if crc32c.crc32c(body) != crc:
        return None
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return body


def parse_journal(data: bytes, *, where: str = "journal") -> ParsedJournal:
    """Parse a journal file's bytes. A torn header or last line is dropped (see the
    module notes); raises :class:`JournalError` for a damaged line before a good one."""
    end = data.find(b"\n")
    if end < 0 or not data.startswith(HEADER):
        if HEADER.startswith(data[: len(HEADER)]) and end < 0:
            return ParsedJournal(-1, [], 0)  # torn while the header was written
        raise JournalError(f"{where}: not a metadata journal")
    try:
        generation = int(data[len(HEADER) : end])
    except ValueError:
        raise JournalError(f"{where}: bad generation in the header") from None
    if generation < 0:
        raise JournalError(f"{where}: bad generation in the header")
    records: list[bytes] = []
    pos = good = end + 1
    bad_at: int | None = None
    line_no = 1
    while pos < len(data):
        line_no += 1
        nl = data.find(b"\n", pos)
        if nl < 0:  # no newline: the last write was cut short
            bad_at = bad_at if bad_at is not None else line_no
            break
        body = _check_line(data[pos:nl])
        if body is None:
            if bad_at is None:
                bad_at = line_no
        elif bad_at is not None:
            raise JournalError(f"{where}: line {bad_at} is damaged and later lines are not")
        else:
            records.append(body)
            good = nl + 1
        pos = nl + 1
    return ParsedJournal(generation, records, good)
