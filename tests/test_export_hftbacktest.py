"""``shmpipe export hftbacktest``: hftbacktest's own HashMapMarketDepthBacktest (no orders) over the
exported .npz sees, at sampled receive times and at the end, the same best bid and ask as shmpipe's
order book over the same frames."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from export_helpers import FIXTURES, STEP_NS, ShmpipeBooks, recv_ns, run_cli, venue_lines, write_wslog

import hftbacktest  # noqa: F401 - the dev extra installs it: missing, fail
from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest  # noqa: E402
from hftbacktest.data.validation import validate_event_order  # noqa: E402
from hftbacktest.types import (  # noqa: E402
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EXCH_EVENT,
    LOCAL_EVENT,
    TRADE_EVENT,
)

SAMPLES = 12


def export(tmp_path, capture):
    out = tmp_path / "hbt"
    code, stdout, stderr = run_cli("export", "hftbacktest", str(capture), "--out", str(out), "--json")
    assert code == 0, stderr
    return out, json.loads(stdout)


def backtest(out, entry: dict):
    asset = (BacktestAsset()
             .data([str(out / entry["folder"] / name) for name in entry["files"] if "snapshot" not in name])
             .linear_asset(1.0)
             .constant_order_latency(0, 0)
             .risk_adverse_queue_model()
             .no_partial_fill_exchange()
             .trading_value_fee_model(0.0, 0.0)
             .tick_size(entry["tick_size"])
             .lot_size(entry["lot_size"])
             .last_trades_capacity(0))
    return HashMapMarketDepthBacktest([asset])


def hbt_best(hbt) -> tuple[float, float]:
    depth = hbt.depth(0)
    bid, ask = depth.best_bid, depth.best_ask
    return (bid if math.isfinite(bid) and bid > 0 else float("nan"),
            ask if math.isfinite(ask) and ask > 0 else float("nan"))


def rounded(pair, decimals):
    """As decimal text at the symbol's decimals (hftbacktest gives price ticks * tick size)."""
    return tuple(f"{x:.{decimals}f}" for x in pair)


@pytest.mark.parametrize("venue", ["kraken", "coinbase"])
def test_backtest_sees_the_same_best_bid_and_ask_as_shmpipes_order_book(venue, tmp_path, ring_name):
    lines = venue_lines(venue)
    capture = write_wslog(tmp_path / f"{venue}.wslog", venue, lines)
    out, summary = export(tmp_path, capture)
    listing = json.loads((out / "instruments.json").read_text())
    assert {e["symbol"] for e in listing} == _book_symbols(venue)
    book_channel = b'{"channel":"book"' if venue == "kraken" else b'{"channel":"l2_data"'
    first_book = next(i for i, line in enumerate(lines) if line.startswith(book_channel))
    # sample between frames (never on a receive time), from just after the first snapshot to the end
    samples = [recv_ns(i) + STEP_NS // 2 for i in np.linspace(first_book + 2, len(lines) - 2, SAMPLES).astype(int)]
    for entry in listing:
        data = np.load(out / entry["folder"] / entry["files"][0])["data"]
        validate_event_order(data)
        assert (data["ev"] & (EXCH_EVENT | LOCAL_EVENT)).all()
        assert ((data["ev"] & 0xFF) == DEPTH_CLEAR_EVENT).any() and ((data["ev"] & 0xFF) == DEPTH_SNAPSHOT_EVENT).any()
        assert entry["tick_size"] == 10.0 ** -entry["price_decimals"]
        books = ShmpipeBooks(venue, lines, f"{ring_name}-{len(entry['folder'])}")
        hbt = backtest(out, entry)
        try:
            assert hbt.elapse(1) == 0     # the clock starts at the first event (before: int64 max)
            for when in samples:
                while hbt.current_timestamp < when:
                    if hbt.elapse(when - hbt.current_timestamp) != 0:
                        break
                books.advance_to(when)
                want = books.best(entry["symbol"])
                got = hbt_best(hbt)
                assert not any(map(math.isnan, want)), "sampled before the book existed"
                assert rounded(got, entry["price_decimals"]) == rounded(want, entry["price_decimals"]), \
                    (entry["symbol"], when, got, want)
            books.advance_to(recv_ns(len(lines) + 1))
            hbt.elapse(10 * STEP_NS)
            assert rounded(hbt_best(hbt), entry["price_decimals"]) == \
                rounded(books.best(entry["symbol"]), entry["price_decimals"])
        finally:
            hbt.close()
            books.close()
    assert summary["rows"]["depth_events"] > 0


def _book_symbols(venue: str) -> set[str]:
    from capture_helpers import KNOWN
    return set(KNOWN[FIXTURES[venue]]["books"])


def test_trades_are_trade_events_with_the_aggressor_side(tmp_path):
    lines = venue_lines("coinbase", extra_trades=6)
    capture = write_wslog(tmp_path / "cb.wslog", "coinbase", lines)
    out, summary = export(tmp_path, capture)
    assert summary["rows"]["trade_events"] == 6
    data = np.load(out / "coinbase" / "BTC-USD" / "20240611.npz")["data"]
    trades = data[(data["ev"] & 0xFF) == TRADE_EVENT]
    # frames k = 1, 2, 4, 5 are BTC-USD; odd k are BUY on Coinbase's side field: the maker bought,
    # so the aggressor sold (no BUY_EVENT); even k the other way
    assert len(trades) == 4
    assert [bool(ev & BUY_EVENT) for ev in trades["ev"]] == [False, True, True, False]
    assert trades["px"].tolist() == [67001.15, 67000.5, 67000.5, 67001.15]


def test_a_capture_across_midnight_is_one_file_per_day_and_day_two_starts_from_its_snapshot(tmp_path, ring_name):
    """Receive times from 23:59:50 UTC: the Kraken fixture's frames from the 1000th on fall on the next
    day. Day two's backtest, given its _snapshot.npz as initial_snapshot, starts from shmpipe's book
    after the first 1000 frames and ends with the known top of book."""
    from capture_helpers import KNOWN

    from shmpipe.wslog import encode_entry
    from shmpipe.wslog.format import marker_payload
    midnight = 1718150400_000_000_000          # 2024-06-12T00:00:00Z
    start = midnight - 10_000_000_000
    lines = venue_lines("kraken")
    capture = tmp_path / "kraken.wslog"
    with open(capture, "wb") as f:
        f.write(encode_entry(start, 0, marker_payload(2, "connect", "ws://x")))
        for i, line in enumerate(lines):
            f.write(encode_entry(start + 1000 + i * STEP_NS, 2, line))
    out, summary = export(tmp_path, capture)
    assert summary["rows"]["snapshot_files"] == 2          # one per symbol, for the second day
    listing = {e["symbol"]: e for e in json.loads((out / "instruments.json").read_text())}
    books = ShmpipeBooks("kraken", lines, ring_name)
    try:
        books.advance_to(recv_ns(1000))                   # the frames of the first day
        for symbol, entry in listing.items():
            assert entry["files"] == ["20240611.npz", "20240612_snapshot.npz", "20240612.npz"]
            day1 = np.load(out / entry["folder"] / "20240611.npz")["data"]
            day2 = np.load(out / entry["folder"] / "20240612.npz")["data"]
            assert day1["local_ts"].max() < midnight <= day2["local_ts"].min()
            asset = (BacktestAsset()
                     .data([str(out / entry["folder"] / "20240612.npz")])
                     .initial_snapshot(str(out / entry["folder"] / "20240612_snapshot.npz"))
                     .linear_asset(1.0).constant_order_latency(0, 0).risk_adverse_queue_model()
                     .no_partial_fill_exchange().trading_value_fee_model(0.0, 0.0)
                     .tick_size(entry["tick_size"]).lot_size(entry["lot_size"]).last_trades_capacity(0))
            hbt = HashMapMarketDepthBacktest([asset])
            decimals = entry["price_decimals"]
            try:
                # the clock starts at the first exchange time (14:30 on the 11th, ~9.5 h before these
                # receive times); just after midnight, before day two's first frame, the book is the snapshot
                assert hbt.elapse(1) == 0
                while hbt.current_timestamp < midnight + 500:
                    assert hbt.elapse(midnight + 500 - hbt.current_timestamp) == 0
                assert rounded(hbt_best(hbt), decimals) == rounded(books.best(symbol), decimals), symbol
                while hbt.elapse(3600 * 1_000_000_000) == 0:
                    pass
                book = KNOWN[FIXTURES["kraken"]]["books"][symbol]
                want = tuple(f"{float(book[key][0][0]):.{decimals}f}" for key in ("top5_bids", "top5_asks"))
                assert rounded(hbt_best(hbt), decimals) == want, symbol
            finally:
                hbt.close()
    finally:
        books.close()
