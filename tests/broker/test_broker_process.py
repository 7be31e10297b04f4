"""The start-up check of the open-file limit: how many segment files stay open."""

from __future__ import annotations

import logging
import resource

from shazamq.broker import process


def test_the_segment_file_budget_follows_the_open_file_limit(monkeypatch, caplog) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (20_000, 20_000))
    with caplog.at_level(logging.INFO, logger=process.__name__):
        # more partitions than the budget: served, idle ones have their files closed
        assert process.check_open_file_limit(20_000) == 15_000
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "20000 partitions" in record.message
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=process.__name__):
        assert process.check_open_file_limit(100) == 15_000
        assert process.check_open_file_limit(100, 4_000) == 4_000
    assert not caplog.records


def test_a_budget_or_limit_that_cannot_fit_is_reported(monkeypatch, caplog) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (4096, 4096))
    with caplog.at_level(logging.WARNING, logger=process.__name__):
        assert process.check_open_file_limit(100, 4096) == 3072
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "storage.max_open_segment_files" in record.message and "4096" in record.message
    caplog.clear()
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (128, 128))
    with caplog.at_level(logging.WARNING, logger=process.__name__):
        assert process.check_open_file_limit(10) == 64
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "too low for a broker" in record.message
