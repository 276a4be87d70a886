"""bench/export_bench.py runs and prints a figure per target (one quick run; the figures themselves
are for bench/README.md, not for asserting here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow  # noqa: F401 - the dev extra installs it: missing, fail

BENCH = Path(__file__).resolve().parent.parent / "bench" / "export_bench.py"


def test_export_bench_quick_run_reports_rows_per_second(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--runs", "1", "--quick", "--targets", "parquet",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert result["dataset"] == "sample" and result["skipped"] is None
    assert result["rows"] == sum(result["rows_by_table"].values()) > 0 and result["rows_per_s"] > 0
    assert "sample" in proc.stdout and "parquet" in proc.stdout
