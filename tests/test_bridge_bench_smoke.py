"""Smoke test of the bridge benchmark harness (bench/bridge_bench.py): tiny counts, one run of each
measurement, the JSON shape, and that every record was verified. A failed run fails here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.services


def test_bridge_bench_runs_and_verifies_every_record(tmp_path, redis_url):
    out = tmp_path / "bridge.json"
    cmd = [sys.executable, "-m", "shmpipe_bench.bridge_bench", "--redis", redis_url, "--runs", "1",
           "--batches", "1,64", "--records", "20000", "--records-batch-1", "500", "--rate", "2000",
           "--latency-seconds", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert [(r["batch"], r["records"], r["verified"]) for r in result["throughput"]] == [(1, 500, True), (64, 20000, True)]
    assert all(r["records_per_s"] > 0 for r in result["throughput"])
    assert set(result["throughput_summary"]) == {"1", "64"}
    (lat,) = result["latency"]
    assert lat["records"] == 2000 and lat["verified"]
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert {"cpu_model", "loadavg_before", "loadavg_after"} <= result["machine"].keys()
