"""The three stages as separate processes on the synthetic feed, briefly (bench/orderbook_bench.py
runs the 60 s version): shmpipe capture --feed synthetic -> shmpipe orderbook -> a consumer process
that checks every entry's per-symbol sequence; nothing is lost between the stages."""
from __future__ import annotations

from shmpipe_bench.orderbook_bench import run_pipeline


def test_capture_orderbook_consumer_lose_nothing():
    figures = run_pipeline(rate=20_000, seconds=2.0, symbols=4)
    assert figures["sequence_error"] is None
    assert figures["levels_written"] > 20_000
    assert figures["lost_levels"] == 0 and figures["orderbook_records"] == figures["levels_written"]
    assert figures["lost_entries"] == 0 and figures["entries_verified"] == figures["entries_written"] > 0
    assert figures["ok"]


def test_conflated_entries_are_fewer_and_still_complete():
    figures = run_pipeline(rate=20_000, seconds=2.0, symbols=4, conflate_ms=10.0)
    assert figures["lost_levels"] == 0 and figures["lost_entries"] == 0 and figures["sequence_error"] is None
    # at most one entry per symbol per 10 ms (plus the last owed ones), far fewer than the updates
    assert 0 < figures["entries_written"] <= 4 * (2.0 / 0.010) * 1.5 + 8 < figures["updates"]
