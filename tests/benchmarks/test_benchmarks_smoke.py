"""The benchmarks still run: a tiny load run end to end, and each hot-path suite once.

Nothing here measures or asserts a speed (benchmarks are run on purpose, see
docs/performance.md); these only keep the benchmark code from rotting.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_load_benchmark_smoke(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--scale",
            "0.01",
            "--no-latency",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    # the JSON line on stdout is the same report
    assert json.loads(proc.stdout.strip().splitlines()[-1])["results"] == report["results"]
    assert [r["load"] for r in report["results"]] == ["1KiB", "100B", "1KiB-zstd"]
    for r in report["results"]:
        assert r["records"] >= 1000
        for phase in ("produce", "consume"):
            assert r[phase]["records_per_s"] > 0
            assert r[phase]["mb_per_s"] > 0
        assert r["broker_rss_mb"] > 0
    assert "produce rec/s" in proc.stdout  # the table


@pytest.mark.skipif(
    importlib.util.find_spec("pytest_benchmark") is None,
    reason="pytest-benchmark is in the 'bench' extra",
)
def test_hot_path_suites_run_once():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-disable",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_load_benchmark_acl_compare_smoke(tmp_path):
    """ACLs off and on, alternated: both runs log in over SASL, the second holds the ACLs."""
    out = tmp_path / "acls.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--scale",
            "0.005",
            "--no-latency",
            "--only",
            "1KiB",
            "--acl-compare",
            "--acls",
            "200",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["security"] for r in report["reports"]] == ["PLAIN, ACLs off", "PLAIN, 200 ACLs"]
    assert report["compare"]["acls"] == 200  # all installed, none a duplicate
    phase = report["compare"]["loads"]["1KiB"]["produce"]
    assert phase["off_records_per_s"] > 0 and phase["on_records_per_s"] > 0


def test_replication_benchmark_smoke(tmp_path):
    out = tmp_path / "replication.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.replication",
            "--scale",
            "0.005",
            "--rate",
            "500",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for rf in ("rf1", "rf3"):
        assert report[rf]["throughput"]["records_per_s"] > 0
        assert report[rf]["throughput"]["failures"] == 0
        assert report[rf]["latency_ms"]["samples"] > 0


def test_mirror_benchmark_smoke(tmp_path):
    out = tmp_path / "mirror.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.mirror",
            "--scale",
            "0.005",
            "--rate",
            "500",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backlog"]["records"] == 1000 and report["backlog"]["mb_per_s"] > 0
    steady = report["steady_lag_ms"]
    assert steady["read"] == steady["sent"] > 0  # every record came through the mirror


def test_fetch_sessions_benchmark_smoke(tmp_path):
    """The issue's case: a consumer of 500 partitions, the request and response sizes
    with and without an incremental fetch session (sizes are exact, not timings)."""
    out = tmp_path / "fetch_sessions.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fetch_sessions",
            "--partitions",
            "500",
            "--active",
            "5",
            "--rounds",
            "3",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("sessionless", "incremental"):
        # each active partition gave one record a round, in both modes
        assert report[mode]["records"] == 5 * 3
        assert report[mode]["idle"]["records"] == 0
        # the first fetch lists and answers all 500 partitions either way
        assert report[mode]["first_request_bytes"] > 500 * 16
    less, more = report["incremental"], report["sessionless"]
    for phase in ("active", "idle"):
        assert less[phase]["request_bytes"] * 10 < more[phase]["request_bytes"]
        assert less[phase]["response_bytes"] * 10 < more[phase]["response_bytes"]
    assert "incremental  idle" in proc.stdout  # the table
