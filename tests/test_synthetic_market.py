"""The synthetic market (services/capture/synthetic_market.py): books that a consumer rebuilds
valid from its records, message boundaries, Kraken checksums the compiled order book verifies,
snapshots that are the feed's true book, trades that take from the level they hit, event times of
now, and the faults it injects on purpose."""
from __future__ import annotations

import time

import numpy as np
import pytest
import test_capture_process
from shmpipe_services.capture.kraken_checksum import checksum_of_book
from shmpipe_services.capture.synthetic_market import BLOCK, SyntheticMarket
from shmpipe_services.orderbook._book import BookEngine

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    BOOK_FLAG_INVALID,
    LEVEL_FLAG_GAP_BEFORE,
    SIDE_ASK,
    SIDE_BID,
    TICK_FLAG_TRADE,
)

LAST = 16   # LevelUpdate flags bit4 (DESIGN.md): the last record of one venue message
# the rings and registry fixtures test_capture_process defines, used here too
registry = test_capture_process.registry
rings = test_capture_process.rings


def facts(market: SyntheticMarket):
    return lambda sid: (market.price_decimals, market.size_decimals, market.depth)


def replay(levels: np.ndarray, market: SyntheticMarket, books=None):
    """A dict reference book per symbol id, judged at every LAST record: yields what it found."""
    books = {} if books is None else books
    crossed = checksums = mismatched = 0
    trades_checked = 0
    for r in levels.tolist():
        _ts, price, size, sid, side, action, _src, flags = r
        bids, asks = books.setdefault(sid, ({}, {}))
        if action == ACTION_SNAPSHOT_BEGIN:
            bids.clear()
            asks.clear()
        elif action == ACTION_SET:
            book = bids if side == SIDE_BID else asks
            if size == 0:
                book.pop(price, None)
            else:
                book[price] = size
        elif action == ACTION_TRADE:
            book = bids if side == SIDE_BID else asks
            touch = max(book) if side == SIDE_BID else min(book)
            assert price == touch, "a trade is at the touch"
            assert 0 < size <= book[touch] + 1e-9, "it takes no more than the level holds"
            trades_checked += 1
        elif action == ACTION_CHECKSUM:
            checksums += 1
            if checksum_of_book(bids, asks, market.price_decimals, market.size_decimals) != int(price):
                mismatched += 1
        if flags & LAST and bids and asks and max(bids) >= min(asks):
            crossed += 1
    return books, crossed, checksums, mismatched, trades_checked


def test_every_message_leaves_an_uncrossed_book_whose_checksums_match():
    market = SyntheticMarket(4, seed=11, start_ns=1_000, events_per_second=1e6)
    ticks, levels = market.next_batch(30_000)
    books, crossed, checksums, mismatched, trades = replay(levels, market)
    assert crossed == 0 and mismatched == 0
    assert checksums > 30_000 // 10 and trades > 3000
    for k, sid in enumerate(market.symbol_ids.tolist()):    # the rebuilt book is the feed's true book
        bids, asks = market.book(k)
        assert sorted(books[sid][0].items(), reverse=True) == bids
        assert sorted(books[sid][1].items()) == asks
        assert len(bids) == len(asks) == market.depth
    # every message ends with a LAST record: one per event (a lost one would not), plus the snapshots
    assert int(np.count_nonzero(levels["flags"] & LAST)) == 30_000 + 4
    # the mid moved: a walk, not a fixed book
    first_bid = {k: None for k in range(4)}
    quotes = ticks[(ticks["flags"] & TICK_FLAG_TRADE) == 0]
    for k, sid in enumerate(market.symbol_ids.tolist()):
        bids = quotes["bid"][quotes["symbol_id"] == sid]
        first_bid[k] = bids[0]
        assert len(np.unique(bids)) > 5


def test_the_compiled_order_book_finds_every_entry_valid_and_verifies_checksums():
    market = SyntheticMarket(3, seed=2, start_ns=1_000, events_per_second=1e6)
    engine = BookEngine(facts=facts(market))
    for _ in range(5):
        _ticks, levels = market.next_batch(4000)
        engine.apply(levels)
    c = engine.counters()
    assert c["checksum_failures"] == 0 and c["crossed"] == 0 and c["invalid_books"] == 0
    assert c["checksums_verified"] > 1000 and c["deletes_of_missing_levels"] == 0
    for k, sid in enumerate(market.symbol_ids.tolist()):
        assert engine.flags(sid) == 0
        bids, asks = market.book(k)
        assert [tuple(x) for x in engine.top(sid, SIDE_BID, market.depth)] == bids
        assert [tuple(x) for x in engine.top(sid, SIDE_ASK, market.depth)] == asks


def test_same_seed_same_records_however_sliced():
    def stream(sizes):
        m = SyntheticMarket(5, seed=7, start_ns=10**18, events_per_second=1e5)
        parts = [m.next_batch(n) for n in sizes]
        return (np.concatenate([t for t, _ in parts]).tobytes(), np.concatenate([lv for _, lv in parts]).tobytes())

    total = 2 * BLOCK + 123
    assert stream([total]) == stream([1, 999, BLOCK, 17, total - BLOCK - 1017])


def test_event_times_are_now_and_never_go_back():
    market = SyntheticMarket(2, seed=1)
    before = time.time_ns()
    ticks, levels = market.next_batch(500)
    time.sleep(0.01)
    ticks2, levels2 = market.next_batch(500)
    after = time.time_ns()
    ts = np.concatenate([levels["timestamp_ns"], levels2["timestamp_ns"]]).astype(np.int64)
    assert before - 10**9 < ts.min() and ts.max() <= after
    assert (np.diff(ts) >= 0).all()
    assert ticks2["timestamp_ns"].min() >= ticks["timestamp_ns"].max()


def test_a_resnapshot_is_the_true_book():
    market = SyntheticMarket(2, seed=5, start_ns=1_000)
    market.next_batch(3000)
    snap = market.snapshot(1)
    assert snap["action"][0] == ACTION_SNAPSHOT_BEGIN and snap["action"][-1] == ACTION_SNAPSHOT_END
    assert snap["flags"][-1] & LAST and not (snap["flags"][:-1] & LAST).any()
    bids, asks = market.book(1)
    body = snap[1:-1]
    assert list(zip(body["price"][body["side"] == SIDE_BID], body["size"][body["side"] == SIDE_BID])) == bids
    assert list(zip(body["price"][body["side"] == SIDE_ASK], body["size"][body["side"] == SIDE_ASK])) == asks


def test_a_gap_is_flagged_and_a_snapshot_repairs_it():
    market = SyntheticMarket(2, seed=3, start_ns=1_000)
    engine = BookEngine(facts=facts(market))
    engine.apply(market.next_batch(2000)[1])
    sid = int(market.symbol_ids[0])
    market.inject("gap", 0, messages=20)
    _t, levels = market.next_batch(2000)
    mine = levels[levels["symbol_id"] == sid]
    assert int(np.count_nonzero(mine["flags"] & LEVEL_FLAG_GAP_BEFORE)) == 1
    engine.apply(levels)
    assert engine.flags(sid) & BOOK_FLAG_INVALID
    assert engine.flags(int(market.symbol_ids[1])) == 0     # the other symbol is untouched
    engine.apply(market.snapshot(0))
    failed_before = engine.counters()["checksum_failures"]   # the gapped book may fail its checksums
    engine.apply(market.next_batch(2000)[1])
    assert engine.flags(sid) == 0 and engine.counters()["checksum_failures"] == failed_before


def test_a_corrupted_level_fails_the_checksum_of_its_own_message():
    market = SyntheticMarket(2, seed=4, start_ns=1_000)
    engine = BookEngine(facts=facts(market))
    engine.apply(market.next_batch(1000)[1])
    sid = int(market.symbol_ids[1])
    market.inject("corrupt", 1)
    engine.apply(market.next_batch(1000)[1])
    assert engine.counters()["checksum_failures"] >= 1 and engine.flags(sid) & BOOK_FLAG_INVALID
    engine.apply(market.snapshot(1))
    engine.apply(market.next_batch(1000)[1])
    assert engine.flags(sid) == 0


@pytest.mark.parametrize("kwargs", [{"symbols": 0}, {"events_per_second": 0}, {"depth": 0},
                                    {"checksum_every": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticMarket(**{"symbols": 2, **kwargs})


def test_an_unknown_fault_names_the_kinds():
    with pytest.raises(ValueError, match="gap, corrupt"):
        SyntheticMarket(1).inject("flood", 0)


# -- capture --market: the faults on request ---------------------------------------------------------
def test_capture_refuses_a_fault_it_cannot_inject():
    from shmpipe_services.capture.commands import CaptureCommands

    from shmpipe.control import CommandRefused

    class Venue:           # a real venue's capture has no faults to inject
        exchange = "kraken"

    with pytest.raises(CommandRefused, match="real venue"):
        CaptureCommands(Venue(), name="x", feed="kraken", ticks="t", levels="l").fault({"kind": "gap"})

    class LoadFeed:        # the load generator (no --market)
        exchange = "synthetic"

        def inject_fault(self, kind, symbol=None):
            raise ValueError("faults are injected into the synthetic market only (capture --market)")

    with pytest.raises(CommandRefused, match="--market"):
        CaptureCommands(LoadFeed(), name="x", feed="synthetic", ticks="t", levels="l").fault({"kind": "gap"})


@pytest.mark.usefixtures("private_runtime_dir")
def test_capture_injects_each_fault_on_request(rings, registry):
    """A gap (gap-before on the symbol's next record), a corrupted level (its message's checksum
    fails), a dropped connection (one invalidate per symbol, then gap-before on each symbol's next
    record); the tick stream stays whole; a fault it does not know is refused in one line."""
    import json
    import uuid

    from test_asset_sync import _stop, spawn_cli

    from shmpipe import control
    from shmpipe.records import ACTION_INVALIDATE

    def wait_levels(n):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if control.request(name, "stats").get("levels_written", 0) > n:
                    return control.request(name, "stats")["levels_written"]
            except control.ControlError:
                pass
            time.sleep(0.02)
        pytest.fail(f"capture did not write {n} levels")

    live, name = rings(), f"cap-{uuid.uuid4().hex[:8]}"
    proc = spawn_cli("capture", "--feed", "synthetic", "--market", "--rate", "20000", "--symbols", "3",
                     *live.args(), "--name", name, "--json")
    try:
        seen = wait_levels(2000)
        before = time.time_ns()
        gap = control.request(name, "fault", {"kind": "gap"})
        assert before <= gap["injected_ns"] <= time.time_ns() and gap["symbols"] == ["SYN0001"]
        seen = wait_levels(seen + 2000)
        corrupt = control.request(name, "fault", {"kind": "corrupt"})
        assert corrupt["symbols"] == ["SYN0002"]
        seen = wait_levels(seen + 2000)
        drop = control.request(name, "fault", {"kind": "drop"})
        assert drop["symbols"] == ["SYN0000", "SYN0001", "SYN0002"]
        with pytest.raises(control.ControlError, match="gap, corrupt, drop"):
            control.request(name, "fault", {"kind": "flood"})
        wait_levels(seen + 2000)        # written after the connection came back
        control.request(name, "stop")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err
        counters = json.loads(out)
    finally:
        _stop(proc)
    ticks, levels = live.read_all()
    assert (len(ticks), len(levels)) == (counters["ticks_written"], counters["levels_written"])
    assert (ticks["sequence"] == np.arange(len(ticks))).all()
    ids = dict(zip(["SYN0000", "SYN0001", "SYN0002"], drop["symbol_ids"]))
    invalidates = np.flatnonzero(levels["action"] == ACTION_INVALIDATE)
    assert sorted(levels["symbol_id"][invalidates].tolist()) == sorted(ids.values())
    assert (levels["flags"][invalidates] & LAST).all()
    gapped = levels[(levels["flags"] & LEVEL_FLAG_GAP_BEFORE) != 0]
    # SYN0001: the gap, then the drop; the others: the drop only, each after the invalidates
    assert sorted(gapped["symbol_id"].tolist()) == sorted([ids["SYN0001"], *ids.values()])
    after_drop = np.flatnonzero(levels["flags"] & LEVEL_FLAG_GAP_BEFORE)
    assert (after_drop[-3:] > invalidates.max()).all()
    # the corrupted level: the checksum of SYN0002's own message fails against the levels handed out
    market = SyntheticMarket(1)   # decimals only
    mine = levels[:invalidates.min()]
    mine = mine[mine["symbol_id"] == ids["SYN0002"]]
    _books, crossed, _checksums, mismatched, _trades = replay(mine, market)
    assert mismatched >= 1 and crossed == 0


def test_after_a_pause_event_times_are_not_spread_back_over_it():
    clock = [10**18]
    market = SyntheticMarket(2, seed=1, events_per_second=1000.0, clock=lambda: clock[0])
    market.next_batch(10)
    clock[0] += 5 * 10**9                      # paused 5 s
    ticks, _levels = market.next_batch(10)     # ten events due in the last 10 ms
    ts = ticks["timestamp_ns"].astype(np.int64)
    assert ts[-1] == clock[0] and ts[0] == clock[0] - 9 * 10**6


# -- the compiled market is the reference market, byte for byte ------------------------------------
def _both(**kwargs):
    from shmpipe_services.capture.synthetic_market_reference import ReferenceSyntheticMarket
    return SyntheticMarket(**kwargs), ReferenceSyntheticMarket(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"symbols": 4, "seed": 11},
    {"symbols": 1, "seed": 3, "depth": 1, "checksum_every": 1},
    {"symbols": 3, "seed": 9, "depth": 25, "price_decimals": 1, "size_decimals": 8, "start_price": 5.0,
     "trade_fraction": 0.5, "move_fraction": 0.4},
    {"symbols": 2, "seed": 5, "depth": 12, "start_price": 97_000.0, "price_decimals": 1, "size_decimals": 8},
])
def test_the_compiled_market_makes_the_reference_markets_records(kwargs):
    """Same seed, same bytes (ticks and levels), across blocks, with every fault the market injects;
    the true books and their checksums agree after each batch."""
    fast, ref = _both(start_ns=10**18, events_per_second=1e6, **kwargs)
    for step, n in enumerate([1, 700, BLOCK, 3, 2 * BLOCK + 5, 0, 999]):
        if step == 2:
            for m in (fast, ref):
                m.inject("gap", 0, messages=7)
                m.inject("corrupt", m.symbols - 1)
        if step == 4:
            for m in (fast, ref):
                m.lose_everything_until_snapshot()
        if step == 5:
            assert fast.snapshot(0).tobytes() == ref.snapshot(0).tobytes()
        (ft, fl), (rt, rl) = fast.next_batch(n), ref.next_batch(n)
        assert ft.tobytes() == rt.tobytes(), f"ticks differ at batch {step}"
        assert fl.tobytes() == rl.tobytes(), f"levels differ at batch {step}"
        for k in range(fast.symbols):
            assert fast.book(k) == ref.book(k) and fast.checksum(k) == ref.checksum(k)
    assert fast.events == ref.events


def test_the_compiled_market_stamps_live_batches_as_the_reference_does():
    clock = [10**18]
    fast, ref = _both(symbols=2, seed=1, events_per_second=1000.0, clock=lambda: clock[0])
    for n in (10, 256, 0, 5):
        clock[0] += 3 * 10**6
        (ft, fl), (rt, rl) = fast.next_batch(n), ref.next_batch(n)
        assert ft.tobytes() == rt.tobytes() and fl.tobytes() == rl.tobytes()
