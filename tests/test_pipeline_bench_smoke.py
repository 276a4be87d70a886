"""Smoke test of the pipeline soak harness (bench/pipeline_bench.py, issue 24): the demo's pipeline
for two seconds at a low rate, then the JSON shape and figures that must agree with each other; and
a rate the pipeline cannot hold is a failed run (exit 1, the schedule named), never a pass. The
harness runs in a child with a time limit and removes its processes and rings itself; the tests
check that nothing of it is left."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

STAGES = {"capture", "verify", "bars", "orderbook", "features"}


def _run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "pipeline.json"
    cmd = [sys.executable, "-m", "shmpipe_bench.pipeline_bench", *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return proc, json.loads(out.read_text())


def test_pipeline_bench_runs_every_stage_with_zero_loss(tmp_path):
    proc, result = _run(tmp_path, "--rate", "2000", "--seconds", "2", "--conflate-ms", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["problems"] == []
    assert set(result["stages"]) == STAGES
    for name, s in result["stages"].items():
        assert s["records"] > 0 and s["lost"] == 0, (name, s)
        assert s["records_per_s"] > 0 and s["cpu_percent"] is not None
        assert 0 < s["rss_start_mib"] <= s["rss_max_mib"] and s["rss_end_mib"] <= s["rss_max_mib"]
        assert len(s["rss_over_run_mib"]) == 5 and max(s["rss_over_run_mib"]) <= s["rss_max_mib"]
    rings = result["rings"]
    assert set(rings) == {"ticks", "levels", "books"}
    for r in rings.values():
        assert 0 <= r["fill_hwm"] <= r["capacity"] and r["lost"] == 0
    # from the market's opening to the drain after its close, every reader read every record
    # written to its ring in that time, and the window's figures are within those
    st = result["stages"]
    ticks, levels = rings["ticks"]["written_in_run"], rings["levels"]["written_in_run"]
    assert st["verify"]["records_with_drain"] == st["bars"]["records_with_drain"] == ticks
    assert st["orderbook"]["records_with_drain"] == levels
    assert st["features"]["records_with_drain"] == rings["books"]["written_in_run"]
    assert st["capture"]["records_with_drain"] == ticks + levels
    for s in st.values():
        assert s["records"] <= s["records_with_drain"]
    sched = result["capture_schedule"]
    assert 0 < sched["messages_sent"] <= ticks and sched["behind"] <= 0.01
    # with conflation off the order book publishes one entry per message, and this process read
    # and timed every one of them (the start-up snapshots' entries are counted apart)
    lat = result["update_to_entry"]
    assert lat["entries"] > 0 and lat["negative"] == 0
    assert lat["entries"] + lat["before_open"] == rings["books"]["written_in_run"]
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"] <= lat["max_us"]
    assert "log_dir" not in result and "loadavg_before" in result and "loadavg_after" in result
    assert not list(Path("/dev/shm").glob(f"shmpipe.pbench-{_child_pid(result)}.*"))


def _child_pid(result: dict) -> str:
    return str(result["prefix"]).removeprefix("pbench-").rstrip(".")


def test_a_rate_the_pipeline_cannot_hold_fails_the_run(tmp_path):
    proc, result = _run(tmp_path, "--rate", "50000000", "--seconds", "1", "--no-latency")
    # a failed run keeps the stages' logs and names them; this test removes them
    assert Path(result["log_dir"]).is_dir()
    shutil.rmtree(Path(result["log_dir"]).parent)
    assert proc.returncode == 1
    assert any("fewer messages than its schedule" in p for p in result["problems"]), result["problems"]
    assert "PROBLEM: capture sent" in proc.stdout
    assert result["capture_schedule"]["behind"] > 0.01
    assert not list(Path("/dev/shm").glob(f"shmpipe.pbench-{_child_pid(result)}.*"))


def test_an_unknown_process_or_a_bad_rate_is_a_one_line_error(tmp_path):
    proc, result = _run(tmp_path, "--only", "capture,nosuch", "--seconds", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (problem,) = result["problems"]
    assert "--only: no process nosuch" in problem and "orderbook" in problem   # names what there is
    assert "log_dir" not in result          # nothing started, no logs to keep
    out = subprocess.run([sys.executable, "-m", "shmpipe_bench.pipeline_bench", "--rate", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rate" in out.stderr and "Traceback" not in out.stderr


def test_market_ab_times_both_markets_on_the_same_records(tmp_path):
    """--market-ab: the compiled and the reference market, both timed, the same LevelUpdates per
    message (they make the same records), and the figures in the JSON are the printed ones."""
    from shmpipe_bench.pipeline_bench import market_ab

    ab = market_ab(symbols=2, batch=64, runs=1, messages=3000)
    assert ab["compiled"]["us_per_message"] > 0 and ab["reference"]["us_per_message"] > 0
    assert ab["compiled"]["levels_per_message"] > 1.0
    assert ab["speedup"] == round(ab["reference"]["us_per_message"] / ab["compiled"]["us_per_message"], 1)
    cmd = [sys.executable, "-m", "shmpipe_bench.pipeline_bench", "--market-ab", "--batch", "0"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--batch" in bad.stderr and "Traceback" not in bad.stderr
