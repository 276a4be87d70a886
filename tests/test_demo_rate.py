"""``shmpipe demo --rate N`` (issue 24): the synthetic market sends N venue messages per second
instead of the pipeline file's 20,000 (one Tick each, so capture's tick count follows the rate), and
a rate with a feed that has no synthetic market is a one-line error, not a run."""
from __future__ import annotations

import json
import subprocess
import sys

from demo_helpers import cleanup_demo, left_behind


def _demo(tmp_path, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "shmpipe_tools.cli", "demo", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        assert left_behind(proc.pid) == ([], [])
        return proc.returncode, out, err
    finally:
        cleanup_demo(proc)


def test_demo_rate_sets_the_synthetic_markets_messages_per_second(tmp_path):
    code, out, err = _demo(tmp_path, "--rate", "2000", "--seconds", "3", "--json")
    assert code == 0, err
    summary = json.loads(out)
    ticks = summary["capture"]["ticks"]
    # one Tick per message: ~6,000 in 3 s (the default 20,000/s would give ~60,000); generous bounds
    assert 2000 * 3 * 0.4 <= ticks <= 2000 * 3 * 2.5, ticks
    assert summary["orderbook"]["lost"] == 0 and summary["orderbook"]["records_per_s"] > 0


def test_demo_rate_with_the_fixtures_feed_is_a_one_line_error(tmp_path):
    code, out, err = _demo(tmp_path, "--rate", "2000", "--feed", "fixtures", "--seconds", "1", timeout=60)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("shmpipe demo:")]
    assert any("--rate" in line and "fixtures" in line for line in lines), err
    assert "Traceback" not in err


def test_a_rate_the_pipeline_cannot_hold_fails_the_demo_and_says_by_how_much(tmp_path):
    """A lossless pipeline that cannot keep up slows capture down instead of losing records: the
    demo must not call that run ok at the rate asked."""
    code, out, err = _demo(tmp_path, "--rate", "50000000", "--seconds", "2", "--json")
    assert code == 1, err
    summary = json.loads(out)
    assert summary["ok"] is False
    assert any("--rate" in r and "behind" in r for r in summary["reasons"]), summary["reasons"]
    held = summary["capture"]["rate"]
    assert held["asked"] == 50_000_000 and 0 < held["messages_per_s"] < held["asked"]
    assert "Traceback" not in err
