"""Smoke test of bench/parse_bench.py: one quick run of two choices, every feed has its rows."""
from __future__ import annotations

import json
import subprocess
import sys

from capture_helpers import CAPTURE_FIXTURES


def test_parse_bench_quick(tmp_path):
    out = tmp_path / "parse.json"
    proc = subprocess.run([sys.executable, "-m", "shmpipe_bench.parse_bench", "--quick", "--only", "msgspec",
                           "--only", "decode-only/msgspec", "--fixtures", str(CAPTURE_FIXTURES),
                           "--json", str(out)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["feed"], r["messages"], r["choice"]) for r in result["rows"]}
    assert ("kraken", "book update", "msgspec") in rows
    assert ("coinbase", "l2_data update (book)", "msgspec") in rows
    assert {r["feed"] for r in result["rows"]} == {"coinbase", "kraken", "alpaca"}
    assert all(r["us_per_msg"] > 0 and len(r["per_run"]) == 1 for r in result["rows"])
    assert all(0 < r["cpu_us_per_msg"] and len(r["cpu_per_run"]) == 1 for r in result["rows"])
    assert result["machine"]["runs"] == 1
