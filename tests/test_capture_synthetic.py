"""The synthetic feed: deterministic for a seed however it is sliced, snapshots first, sane records."""
from __future__ import annotations

import numpy as np
import pytest
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds
from shmpipe_services.capture.synthetic import BLOCK, SyntheticFeed

from shmpipe.records import (
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    SOURCE_SYNTHETIC,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)


def stream(feed: SyntheticFeed, sizes: list[int]):
    parts = [feed.next_batch(n) for n in sizes]
    return np.concatenate([t for t, _ in parts]), np.concatenate([lv for _, lv in parts])


def test_same_seed_same_records_however_sliced():
    total = 2 * BLOCK + 123
    whole_ticks, whole_levels = stream(SyntheticFeed(5, seed=7), [total])
    sliced_ticks, sliced_levels = stream(SyntheticFeed(5, seed=7), [1, 999, BLOCK, 17, total - BLOCK - 1017])
    assert whole_ticks.tobytes() == sliced_ticks.tobytes()
    assert whole_levels.tobytes() == sliced_levels.tobytes()
    other_ticks, _ = stream(SyntheticFeed(5, seed=8), [total])
    assert other_ticks.tobytes() != whole_ticks.tobytes()


def test_snapshot_of_every_symbol_comes_first():
    registry = InMemorySymbolIds()
    feed = SyntheticFeed(3, seed=1, symbol_id=registry, depth=4)
    ticks, levels = feed.next_batch(1000)
    assert len(ticks) == 1000 and len(levels) == 1000 + 3 * (2 * 4 + 2)
    prefix = levels[:30].reshape(3, 10)
    assert (prefix["action"][:, 0] == ACTION_SNAPSHOT_BEGIN).all()
    assert (prefix["action"][:, -1] == ACTION_SNAPSHOT_END).all()
    assert (prefix["action"][:, 1:-1] == ACTION_SET).all() and (prefix["size"][:, 1:-1] > 0).all()
    assert prefix["symbol_id"][:, 0].tolist() == feed.symbol_ids.tolist()
    bids, asks = prefix[:, 1:5], prefix[:, 5:9]
    assert (bids["price"].max(axis=1) < asks["price"].min(axis=1)).all()
    assert {registry.lookup(int(s)) for s in feed.symbol_ids} == {("synthetic", f"SYN{k:04d}") for k in range(3)}
    assert registry.facts[int(feed.symbol_ids[0])].depth == 4
    _, later = feed.next_batch(10)
    assert not (later["action"] == ACTION_SNAPSHOT_BEGIN).any()


def test_records_are_well_formed():
    ticks, levels = SyntheticFeed(8, seed=3, events_per_second=1e6).next_batch(50_000)
    levels = levels[8 * 22:]
    trade = (ticks["flags"] & TICK_FLAG_TRADE) != 0
    assert ((ticks["flags"] == TICK_FLAG_TRADE) | (ticks["flags"] == TICK_FLAG_QUOTE)).all()
    assert 0.1 < trade.mean() < 0.3
    quotes = ticks[~trade]
    assert (quotes["bid"] < quotes["ask"]).all() and (quotes["spread_bps"] > 0).all()
    assert (ticks["bid"][trade] == ticks["ask"][trade]).all() and (ticks["spread_bps"][trade] == 0).all()
    assert (ticks["volume"] > 0).all() and set(ticks["source"]) == {SOURCE_SYNTHETIC}
    assert ticks["sequence"].tolist() == list(range(50_000))
    assert (np.diff(ticks["timestamp_ns"].astype(np.int64)) == 1000).all()
    assert ((levels["action"] == ACTION_TRADE) == trade).all()
    assert (levels["price"] > 0).all() and (levels["size"] >= 0).all() and (levels["size"] == 0).any()


@pytest.mark.parametrize("kwargs", [{"symbols": 0}, {"events_per_second": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticFeed(**{"symbols": 2, **kwargs})
