"""The start-up check of the open-file limit against the partitions on disk."""

from __future__ import annotations

import logging
import resource

from shazamq.broker import process


def test_a_too_low_open_file_limit_is_reported(monkeypatch, caplog) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (4096, 4096))
    with caplog.at_level(logging.WARNING, logger=process.__name__):
        assert not process.check_open_file_limit(20_000)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "4096" in record.message and "20000 partitions" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=process.__name__):
        assert process.check_open_file_limit(2_000)  # enough to open, not to write all
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    caplog.clear()
    assert process.check_open_file_limit(100)
    assert not caplog.records
