"""Book features, vectorised over batches, against a straightforward per-book Python reference."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from consumer_workers import random_books
from shmpipe_services.consumers.features import FEATURES, FeatureEngine, latest_per_symbol

from shmpipe.records import BOOK_FLAG_INVALID, ORDERBOOK_DEPTH, ORDERBOOK_ENTRY


class Reference:
    """One book at a time, plain Python floats, the definitions written out."""

    def __init__(self, top_n: int, vol_window: int) -> None:
        self.top_n, self.vol_window = top_n, vol_window
        self.log_mids: dict[int, list[float]] = {}
        self.skipped_invalid = self.skipped_empty = 0

    def feed(self, book) -> dict | None:
        if int(book["flags"]) & BOOK_FLAG_INVALID:
            self.skipped_invalid += 1
            return None
        nb, na = int(book["bid_count"]), int(book["ask_count"])
        if nb == 0 or na == 0:
            self.skipped_empty += 1
            return None
        bid, bsz = float(book["bids"][0][0]), float(book["bids"][0][1])
        ask, asz = float(book["asks"][0][0]), float(book["asks"][0][1])
        mid = (bid + ask) / 2
        b = sum(float(book["bids"][k][1]) for k in range(min(nb, self.top_n)))
        a = sum(float(book["asks"][k][1]) for k in range(min(na, self.top_n)))
        series = self.log_mids.setdefault(int(book["symbol_id"]), [])
        series.append(math.log(mid))
        returns = [y - x for x, y in zip(series, series[1:])]
        vol = statistics.stdev(returns[-self.vol_window:]) if len(returns) >= self.vol_window else math.nan
        return {"symbol_id": int(book["symbol_id"]), "mid": mid, "spread": ask - bid,
                "spread_bps": (ask - bid) / mid * 1e4, "microprice": (bid * asz + ask * bsz) / (bsz + asz),
                "imbalance": (b - a) / (b + a), "volatility": vol}


@pytest.mark.parametrize("batch, top_n, window", [(1, 5, 10), (64, 5, 100), (5000, 1, 2), (333, 50, 20)])
def test_features_equal_the_per_book_reference(batch, top_n, window):
    books = random_books(3000, seed=batch)
    engine = FeatureEngine(top_n=top_n, vol_window=window)
    ref = Reference(top_n, window)
    got = np.concatenate([engine.update(books[i:i + batch]) for i in range(0, len(books), batch)])
    expected = [r for r in (ref.feed(b) for b in books) if r is not None]
    assert got.dtype == FEATURES and len(got) == len(expected) == engine.books
    assert engine.skipped.invalid == ref.skipped_invalid > 0
    assert engine.skipped.empty_side == ref.skipped_empty > 0
    for field in ("mid", "spread", "spread_bps", "microprice", "imbalance", "volatility"):
        np.testing.assert_allclose(got[field], [e[field] for e in expected], rtol=1e-9, atol=1e-15,
                                   equal_nan=True, err_msg=field)
    assert got["symbol_id"].tolist() == [e["symbol_id"] for e in expected]
    assert np.isfinite(got["volatility"]).sum() > len(got) // 2


def test_a_book_with_one_level_per_side():
    book = np.zeros(1, ORDERBOOK_ENTRY)
    book["symbol_id"] = 1
    book["bids"][0, 0] = (99.0, 3.0)
    book["asks"][0, 0] = (101.0, 1.0)
    book["bid_count"], book["ask_count"] = 1, 1
    f = FeatureEngine(top_n=5, vol_window=2).update(book)[0]
    assert (f["mid"], f["spread"], f["spread_bps"]) == (100.0, 2.0, 200.0)
    assert f["microprice"] == (99 * 1 + 101 * 3) / 4          # leans to the ask: more size bid
    assert f["imbalance"] == 0.5 and math.isnan(f["volatility"])


def test_levels_past_the_count_are_not_summed():
    book = np.zeros(1, ORDERBOOK_ENTRY)
    book["bids"][0, :3] = [(10, 1), (9, 1), (8, 100)]           # a stale third level: count says 2
    book["asks"][0, :2] = [(11, 1), (12, 1)]
    book["bid_count"], book["ask_count"] = 2, 2
    assert FeatureEngine(top_n=ORDERBOOK_DEPTH, vol_window=2).update(book)[0]["imbalance"] == 0.0


def test_volatility_is_per_symbol():
    books = np.zeros(6, ORDERBOOK_ENTRY)
    books["symbol_id"] = [1, 2, 1, 2, 1, 2]
    mids = [100, 50, 101, 50, 99, 50]                          # symbol 2 never moves
    books["bids"][:, 0, 0] = np.array(mids) - 0.5
    books["asks"][:, 0, 0] = np.array(mids) + 0.5
    books["bids"][:, 0, 1] = books["asks"][:, 0, 1] = 1
    books["bid_count"] = books["ask_count"] = 1
    got = FeatureEngine(top_n=1, vol_window=2).update(books)
    assert got["volatility"][5] == 0.0
    assert got["volatility"][4] == pytest.approx(statistics.stdev([math.log(101 / 100), math.log(99 / 101)]))


def test_latest_per_symbol():
    rows = np.zeros(5, FEATURES)
    rows["symbol_id"] = [2, 1, 2, 1, 3]
    rows["sequence"] = [0, 1, 2, 3, 4]
    latest = latest_per_symbol(rows)
    assert latest["symbol_id"].tolist() == [1, 2, 3] and latest["sequence"].tolist() == [3, 2, 4]


def test_bad_settings():
    with pytest.raises(ValueError, match="top_n"):
        FeatureEngine(top_n=0)
    with pytest.raises(ValueError, match="top_n"):
        FeatureEngine(top_n=ORDERBOOK_DEPTH + 1)
    with pytest.raises(ValueError, match="vol_window"):
        FeatureEngine(vol_window=1)


def test_a_crossed_or_non_finite_book_with_flags_0_is_not_trusted():
    """Issue 21 item 6: flags == 0 alone is no proof; bid < ask and finite levels are required."""
    books = np.zeros(5, ORDERBOOK_ENTRY)
    books["symbol_id"] = [1, 2, 3, 4, 5]
    books["bid_count"] = books["ask_count"] = 1
    books["bids"][:, 0] = [(102.0, 1), (100.0, 1), (99.0, 1), (99.0, np.nan), (99.0, 1)]
    books["asks"][:, 0] = [(101.0, 1), (100.0, 1), (np.inf, 1), (101.0, 1), (101.0, 1)]
    engine = FeatureEngine(top_n=1, vol_window=2)
    got = engine.update(books)
    assert got["symbol_id"].tolist() == [5]
    assert engine.skipped.crossed == 2 and engine.skipped.not_finite == 2
    assert engine.skipped.as_dict()["crossed"] == 2 and engine.skipped.as_dict()["not_finite"] == 2
    assert engine.skipped.invalid == engine.skipped.empty_side == 0
