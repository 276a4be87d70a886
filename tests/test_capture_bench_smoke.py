"""Smoke test of the capture benchmark harness (bench/capture_bench.py, issue 11): tiny counts, one
run of each measurement, then the JSON shape and that both consumers verified every record. A run
that fails is a failure here (the harness exits 1), never a skip."""
from __future__ import annotations

import json
import subprocess
import sys

from capture_helpers import CAPTURE_FIXTURES


def test_capture_bench_runs_and_verifies_zero_loss(tmp_path):
    out = tmp_path / "capture.json"
    cmd = [sys.executable, "-m", "shmpipe_bench.capture_bench", "--runs", "1", "--rate", "20000",
           "--seconds", "1", "--symbols", "3", "--speed", "0", "--latency-seconds", "5",
           "--fixture", str(CAPTURE_FIXTURES / "kraken_v2.jsonl"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert {"cpu_model", "logical_cores", "loadavg_before", "loadavg_after"} <= result["machine"].keys()

    (syn,) = result["synthetic"]
    assert syn["consumers"] == 2 and syn["verified"] is True and syn["loss"] == 0 and syn["errors"] == []
    written = syn["ticks_written"] + syn["levels_written"]
    assert written > 0 and syn["consumer_records"] == [written, written]
    assert syn["records_per_s"] > 0 and result["synthetic_summary"]["records_per_s"]["runs"] == 1

    (lat,) = result["latency"]
    assert lat["ended"] == "feed closed" and lat["loss"] == 0 and lat["records"] > 0
    figures = lat["frame_to_ring_us"]
    assert 0 < figures["p50"] <= figures["p99"] <= figures["p999"] <= figures["max"]
    assert figures["count"] > 0
    assert set(result["latency_summary"]) == {"p50", "p99", "p999", "max"}


def test_the_consumer_check_catches_a_missing_or_reordered_record():
    from shmpipe_bench.capture_bench import _check_levels, _check_ticks
    from shmpipe_services.capture.synthetic import START_NS, SyntheticFeed

    rate, symbols = 20000.0, 3
    ticks, levels = SyntheticFeed(symbols, 5, events_per_second=rate).next_batch(1000)
    interval, prefix, per_symbol = 1e9 / rate, symbols * 22, 22
    assert _check_ticks(ticks, 0, interval, START_NS) is None
    assert _check_levels(levels, 0, prefix, per_symbol, interval, START_NS, 1, 2) is None
    assert _check_ticks(ticks[500:], 499, interval, START_NS) is not None        # repeated
    assert _check_ticks(ticks[501:], 500, interval, START_NS) is not None        # one missing
    swapped = ticks.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    assert _check_ticks(swapped, 0, interval, START_NS) is not None
    missing_level = levels[prefix + 1:]
    assert _check_levels(missing_level, prefix, prefix, per_symbol, interval, START_NS, 1, 2) is not None
    assert _check_levels(levels[1:], 0, prefix, per_symbol, interval, START_NS, 1, 2) is not None


def test_a_failed_run_exits_1_and_is_recorded(tmp_path):
    out = tmp_path / "capture.json"
    cmd = [sys.executable, "-m", "shmpipe_bench.capture_bench", "--runs", "1", "--skip-synthetic",
           "--fixture", str(tmp_path / "no-such-fixture.jsonl"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "FAILED: latency run 1" in proc.stderr
    result = json.loads(out.read_text())
    assert result["latency"] == [] and len(result["failures"]) == 1
