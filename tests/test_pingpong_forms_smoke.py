"""Smoke test of bench/pingpong_forms.py: every read form completes its round trips across two
processes and reports a figure; bad arguments are one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_every_form_round_trips_and_reports(tmp_path):
    out = tmp_path / "forms.json"
    proc = subprocess.run([sys.executable, "-m", "shmpipe_bench.pingpong_forms", "--runs", "1",
                           "--messages", "300", "--warmup", "30", "--wait", "block", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["form"] for r in result["runs"]] == ["read", "read_out", "read_into"]
    assert all(0 < r["p50_ns"] <= r["p99_ns"] for r in result["runs"])
    assert "read_into" in proc.stdout
    assert not [p for p in Path("/dev/shm").glob("shmpipe.ppf-*")]


def test_bad_arguments_are_one_line_errors():
    for args in (["--forms", "nope"], ["--cores", "0"], ["--runs", "0"]):
        proc = subprocess.run([sys.executable, "-m", "shmpipe_bench.pingpong_forms", *args],
                              check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
