"""Smoke test of bench/consumer_bench.py: one quick run writes a row per consumer and batch size."""
from __future__ import annotations

import json
import subprocess
import sys


def test_consumer_bench_quick(tmp_path):
    out = tmp_path / "consumer.json"
    proc = subprocess.run([sys.executable, "-m", "shmpipe_bench.consumer_bench", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["consumer"], r["batch"]) for r in rows} == {(k, b) for k in ("bars", "features")
                                                           for b in (64, 512, 4096)}
    assert all(r["records_per_s"] > 0 for r in rows)
