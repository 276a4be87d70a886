"""Bars from trade Ticks: equal to an independent pandas resample of the same trades (the fixture's
and a synthetic feed's), whatever the batching; closed on time; late trades counted, not merged."""
from __future__ import annotations

import json

import numpy as np
import pytest
from capture_helpers import fixture_lines, run_lines
from shmpipe_services.capture.alpaca import AlpacaParser
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds
from shmpipe_services.capture.synthetic import SyntheticFeed
from shmpipe_services.consumers.bars import BAR, NS, BarAggregator, TimeframeError, parse_timeframes

import shmpipe
from shmpipe.records import TICK, TICK_FLAG_QUOTE, TICK_FLAG_TRADE

pd = pytest.importorskip("pandas")

RULES = {1: "1s", 60: "1min", 300: "5min"}


@pytest.fixture(scope="module")
def alpaca_ticks() -> np.ndarray:
    run = run_lines(AlpacaParser(InMemorySymbolIds()), fixture_lines("alpaca_stream.jsonl"))
    return run.ticks


def synthetic_ticks(n: int = 200_000) -> np.ndarray:
    feed = SyntheticFeed(symbols=5, seed=3, events_per_second=500.0)   # 400 s of events
    ticks, _levels = feed.next_batch(n)
    return ticks


def pandas_bars(ticks: np.ndarray) -> dict[tuple[int, int], pd.DataFrame]:
    """The reference: trades sorted by time (stably: simultaneous trades keep their order), then
    resample(...).agg per symbol; empty intervals dropped (the aggregator emits no empty bar)."""
    trades = ticks[(ticks["flags"] & TICK_FLAG_TRADE) != 0]
    df = pd.DataFrame({"sid": trades["symbol_id"], "price": trades["bid"], "size": trades["volume"].astype("f8")},
                      index=pd.to_datetime(trades["timestamp_ns"].astype("i8"), unit="ns")).sort_index(kind="stable")
    df["notional"] = df["price"].astype("f8") * df["size"]
    out = {}
    for tf, rule in RULES.items():
        for sid, group in df.groupby("sid"):
            ref = group.resample(rule).agg({"price": ["first", "max", "min", "last", "count"],
                                            "size": "sum", "notional": "sum"})
            out[(tf, int(sid))] = ref[ref[("price", "count")] > 0]
    return out


def aggregate(ticks: np.ndarray, batch: int, **kwargs) -> tuple[np.ndarray, BarAggregator]:
    agg = BarAggregator(parse_timeframes("1s,1m,5m"), close_on_trade_time=True, **kwargs)
    parts = [agg.add(ticks[i:i + batch]) for i in range(0, len(ticks), batch)]
    parts.append(agg.flush())
    return np.concatenate(parts), agg


def assert_equal_to_pandas(bars: np.ndarray, ticks: np.ndarray) -> int:
    reference = pandas_bars(ticks)
    compared = 0
    for (tf, sid), ref in reference.items():
        mine = bars[(bars["timeframe_s"] == tf) & (bars["symbol_id"] == sid)]
        mine = mine[np.argsort(mine["start_ns"], kind="stable")]
        assert len(mine) == len(ref), (tf, sid)
        assert np.array_equal(mine["start_ns"].astype("i8"), ref.index.asi8)
        assert np.array_equal(mine["end_ns"] - mine["start_ns"], np.full(len(mine), tf * NS, np.uint64))
        for field, column in (("open", "first"), ("high", "max"), ("low", "min"), ("close", "last")):
            assert np.array_equal(mine[field], ref[("price", column)].to_numpy(np.float32)), (tf, sid, field)
        assert np.array_equal(mine["trades"], ref[("price", "count")].to_numpy())
        # sums of f64 in another order: equal to the last bits or so, not bit for bit
        np.testing.assert_allclose(mine["volume"], ref[("size", "sum")].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(mine["vwap"], (ref[("notional", "sum")] / ref[("size", "sum")]).to_numpy(),
                                   rtol=1e-12)
        compared += len(mine)
    assert compared == len(bars)           # and no bar pandas does not have
    return compared


@pytest.mark.parametrize("batch", [1, 37, 4096])
def test_fixture_trades_equal_a_pandas_resample(alpaca_ticks, batch):
    bars, agg = aggregate(alpaca_ticks, batch)
    n = assert_equal_to_pandas(bars, alpaca_ticks)
    assert n > 200 and set(bars["timeframe_s"]) == {1, 60, 300}
    assert agg.late == {"1s": 0, "1m": 0, "5m": 0} and agg.rejected == 0
    assert agg.trades == np.count_nonzero(alpaca_ticks["flags"] & TICK_FLAG_TRADE)


def test_fixture_trades_through_a_ring_equal_a_pandas_resample(alpaca_ticks, ring_name):
    agg = BarAggregator(parse_timeframes("1s,1m,5m"), close_on_trade_time=True)
    parts = []
    with shmpipe.Ring.create(ring_name, TICK, 256) as ring:
        try:
            with ring.producer() as out:
                stream = shmpipe.batches(ring, max_n=100)
                for i in range(0, len(alpaca_ticks), 200):
                    out.write_batch(alpaca_ticks[i:i + 200])
                    while stream.consumed < min(i + 200, len(alpaca_ticks)):
                        parts.append(agg.add(next(stream)))
            parts.extend(agg.add(batch) for batch in stream)
            parts.append(agg.flush())
        finally:
            ring.unlink()
    assert stream.consumed == len(alpaca_ticks)
    assert_equal_to_pandas(np.concatenate(parts), alpaca_ticks)


def test_synthetic_trades_equal_a_pandas_resample_over_several_5m_bars():
    ticks = synthetic_ticks()
    bars, agg = aggregate(ticks, 5000)
    assert_equal_to_pandas(bars, ticks)
    assert np.count_nonzero(bars["timeframe_s"] == 300) >= 5 * 2   # 5 symbols, 400 s: 2 bars each


def test_out_of_order_trades_give_the_same_bars_however_batched():
    rng = np.random.default_rng(5)
    ticks = synthetic_ticks(50_000)
    # shuffle timestamps locally (by up to 0.1 s, under the grace): arrival order != time order
    ticks["timestamp_ns"] = ticks["timestamp_ns"] + rng.integers(0, 100_000_000, len(ticks)).astype(np.uint64)
    ticks["timestamp_ns"][1::50] = ticks["timestamp_ns"][::50]       # simultaneous trades too
    one, agg_one = aggregate(ticks, len(ticks))
    many, agg_many = aggregate(ticks, 7)
    assert agg_one.late == agg_many.late == {"1s": 0, "1m": 0, "5m": 0}
    one, many = (b[np.lexsort((b["start_ns"], b["symbol_id"], b["timeframe_s"]))] for b in (one, many))
    exact = ["symbol_id", "timeframe_s", "start_ns", "end_ns", "open", "high", "low", "close", "trades",
             "first_ns", "last_ns"]
    assert np.array_equal(one[exact], many[exact])
    np.testing.assert_allclose(one["volume"], many["volume"], rtol=1e-12)
    assert_equal_to_pandas(one, ticks)


def tick(ts_ns: int, price: float, size: float = 1.0, sid: int = 1, flags: int = TICK_FLAG_TRADE) -> np.ndarray:
    t = np.zeros(1, TICK)
    t["timestamp_ns"], t["symbol_id"], t["bid"], t["ask"], t["volume"], t["flags"] = ts_ns, sid, price, price, size, flags
    return t


def test_a_bar_closes_on_the_wall_clock_without_another_trade():
    agg = BarAggregator(parse_timeframes("1s,1m"), grace_s=0.25)
    base = 1_700_000_100 * NS   # a whole minute (and 5 minutes)
    assert len(agg.add(np.concatenate([tick(base + 100, 10.0, 2), tick(base + 900_000_000, 12.0, 1)]))) == 0
    assert len(agg.advance(base + NS + 240_000_000)) == 0          # ended, but still within the grace
    closed = agg.advance(base + NS + 250_000_000)
    assert len(closed) == 1 and closed.dtype == BAR
    bar = closed[0]
    assert (bar["timeframe_s"], bar["start_ns"], bar["end_ns"]) == (1, base, base + NS)
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["trades"]) == (10, 12, 10, 12, 3, 2)
    assert bar["vwap"] == pytest.approx((10 * 2 + 12) / 3)
    assert agg.open_bars == 1                                      # the 1m bar is still open
    assert len(agg.advance(base + 60 * NS + 240_000_000)) == 0
    assert agg.advance(base + 60 * NS + 250_000_000)["timeframe_s"].tolist() == [60] and agg.open_bars == 0


def test_a_late_trade_is_counted_not_merged():
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0)
    base = 1_700_000_000 * NS
    agg.add(tick(base, 10.0))
    closed = agg.advance(base + NS)
    assert closed["close"].tolist() == [10.0]
    agg.add(tick(base + 500, 99.0))                                # for the bar already published
    assert agg.late == {"1s": 1} and agg.open_bars == 0
    assert len(agg.flush()) == 0


def test_trade_time_clock_closes_by_the_next_trade_and_counts_late_ones():
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.5, close_on_trade_time=True)
    base = 1_700_000_000 * NS
    batch = np.concatenate([tick(base, 10.0), tick(base + NS + 400_000_000, 11.0),
                            tick(base + 300, 9.0),                    # late by 1.4 s, within 1 s bar + 0.5 grace
                            tick(base + 2 * NS, 12.0),                # moves the clock past [base, base+1s) + grace
                            tick(base + 400, 8.0)])                   # too late: that bar has closed
    closed = agg.add(batch)
    assert closed["start_ns"].tolist() == [base]
    assert (closed[0]["open"], closed[0]["low"], closed[0]["close"], closed[0]["trades"]) == (10, 9, 9, 2)
    assert agg.late == {"1s": 1}


def test_open_is_the_earliest_trade_and_ties_keep_arrival_order():
    agg = BarAggregator(parse_timeframes("1m"))
    base = 1_700_000_040 * NS    # a whole minute
    agg.add(np.concatenate([tick(base + 5, 20.0), tick(base + 5, 21.0)]))
    agg.add(tick(base + 1, 19.0))            # earlier than the bar's first: the new open
    agg.add(np.concatenate([tick(base + 9, 30.0), tick(base + 9, 31.0)]))
    agg.add(tick(base + 9, 32.0))            # same time as the last, came later: the close
    bar = agg.flush()[0]
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["trades"]) == (19, 32, 19, 32, 6)


def test_quotes_are_ignored_and_bad_trades_rejected():
    agg = BarAggregator(parse_timeframes("1s"))
    base = 1_700_000_000 * NS
    agg.add(np.concatenate([tick(base, 10.0, flags=TICK_FLAG_QUOTE), tick(base + 1, float("nan")),
                            tick(base + 2, -1.0), tick(base + 3, 10.0, size=float("inf")), tick(base + 4, 11.0)]))
    assert agg.rejected == 3 and agg.trades == 1
    assert agg.flush()["open"].tolist() == [11.0]


def test_symbols_are_kept_apart():
    agg = BarAggregator(parse_timeframes("1s"))
    base = 1_700_000_000 * NS
    agg.add(np.concatenate([tick(base, 10.0, sid=2), tick(base + 1, 50.0, sid=1), tick(base + 2, 11.0, sid=2)]))
    bars = agg.flush()
    assert bars["symbol_id"].tolist() == [1, 2] and bars["close"].tolist() == [50.0, 11.0]


@pytest.mark.parametrize("text, message", [("", "bad timeframe"), ("1s,,1m", "bad timeframe"),
                                           ("0s", "bad timeframe"), ("5x", "bad timeframe"),
                                           ("1m,60s", "repeats"), ("1.5s", "bad timeframe")])
def test_bad_timeframes(text, message):
    with pytest.raises(TimeframeError, match=message):
        parse_timeframes(text)


def test_timeframes_parse():
    assert parse_timeframes("1s,1m,5m") == [("1s", 1), ("1m", 60), ("5m", 300)]
    assert parse_timeframes("15s,1h,1d") == [("15s", 15), ("1h", 3600), ("1d", 86400)]


# -- exact bars from the LevelUpdate ring's trade records (issue 21) --------------------------------
def decimal_resample(lines: list[bytes], seconds: int, symbol_ids) -> dict:
    """The fixture's trades as the venue wrote them (Decimal), resampled: (symbol_id, start_ns) ->
    (open, high, low, close, volume, vwap, trades), time order, zero-size trades left out."""
    from decimal import Decimal

    from shmpipe_services.capture.timestamps import rfc3339_ns
    trades = []
    for k, line in enumerate(lines):
        for item in json.loads(line, parse_float=Decimal):
            if isinstance(item, dict) and item.get("T") == "t" and Decimal(item["s"]) > 0:
                trades.append((symbol_ids(item["S"]), rfc3339_ns(item["t"]), k, Decimal(item["p"]), Decimal(item["s"])))
    bars: dict = {}
    for sid, ts, _k, p, s in sorted(trades, key=lambda t: (t[0], t[1], t[2])):
        key = (sid, ts - ts % (seconds * NS))
        b = bars.get(key)
        if b is None:
            bars[key] = [p, p, p, p, s, p * s, 1]
        else:
            b[1], b[2], b[3] = max(b[1], p), min(b[2], p), p
            b[4] += s
            b[5] += p * s
            b[6] += 1
    return {key: (o, h, lo, c, v, n / v, count) for key, (o, h, lo, c, v, n, count) in bars.items()}


@pytest.mark.parametrize("seconds", [1, 60])
def test_bars_from_trade_records_equal_an_exact_decimal_resample(seconds):
    """Issue 21 item 1: from Ticks, the AAPL close is 192.8925018310547 (f32), not the venue's 192.8925."""
    from decimal import Decimal
    parser = AlpacaParser(InMemorySymbolIds())
    lines = fixture_lines("alpaca_stream.jsonl")
    run = run_lines(parser, lines)
    agg = BarAggregator([(f"{seconds}s", seconds)], close_on_trade_time=True)
    bars = np.concatenate([agg.add(run.levels[i:i + 97]) for i in range(0, len(run.levels), 97)] + [agg.flush()])
    want = decimal_resample(lines, seconds, lambda s: parser.instruments[s].symbol_id)
    assert len(bars) == len(want) >= 4
    for bar in bars:
        o, h, lo, c, v, vwap, count = want[(int(bar["symbol_id"]), int(bar["start_ns"]))]
        # exactly the venue's numbers: the doubles their text parses to, so any rounding gives it back
        assert [float(bar[f]) for f in ("open", "high", "low", "close")] == [float(o), float(h), float(lo), float(c)]
        assert Decimal(repr(float(bar["close"]))) == c
        # volume: the f64 sum, exact once rounded to the sizes' decimals (the venue's size precision)
        assert Decimal(float(bar["volume"])).quantize(v) == v and int(bar["trades"]) == count
        assert abs(Decimal(float(bar["vwap"])) - vwap) <= Decimal("1e-12") * vwap


def test_a_zero_size_trade_sets_no_high_and_no_close():
    from shmpipe.records import ACTION_TRADE, LEVEL_UPDATE
    trades = np.zeros(3, LEVEL_UPDATE)
    trades["action"] = ACTION_TRADE
    trades["symbol_id"] = 1
    trades["timestamp_ns"] = [1, 2, 3]
    trades["price"] = [100.0, 250.0, 101.0]
    trades["size"] = [1.0, 0.0, 2.0]            # the 250 print moved nothing
    agg = BarAggregator([("1s", 1)], close_on_trade_time=True)
    agg.add(trades)
    (bar,) = agg.flush()
    assert (bar["high"], bar["close"], bar["volume"], bar["trades"]) == (101.0, 101.0, 3.0, 2)
    assert agg.zero_size == 1 and agg.rejected == 0


# -- bars that did not see their whole period say so (flags; ``complete`` on the bus) -----------------
def test_a_bar_for_a_period_under_way_when_bars_started_is_marked_partial():
    """Wall clock: bars watched from 0.5 s into a second; that second's bar misses what came before."""
    from shmpipe_services.consumers.bars import BAR_FLAG_PARTIAL_START
    base = 1_700_000_100 * NS
    agg = BarAggregator(parse_timeframes("1s,1m"), grace_s=0.0, watching_since_ns=base + 500_000_000)
    agg.add(np.concatenate([tick(base + 600_000_000, 10.0), tick(base + NS + 200_000_000, 11.0)]))
    closed = agg.advance(base + 2 * NS)
    assert closed["start_ns"].tolist() == [base, base + NS]
    assert closed["flags"].tolist() == [BAR_FLAG_PARTIAL_START, 0]
    assert agg.bars_partial == 1
    # the minute bars joined half-way: still partial when it closes
    assert agg.advance(base + 60 * NS)["flags"].tolist() == [BAR_FLAG_PARTIAL_START]


def test_a_trade_from_before_bars_started_does_not_make_its_bar_complete():
    """A trade stamped before bars started (it came late over the wire) is in the ring's backlog:
    the coverage starts at the first record read, and that record's period is partial."""
    from shmpipe_services.consumers.bars import BAR_FLAG_PARTIAL_START
    base = 1_700_000_100 * NS
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0, watching_since_ns=base + 3 * NS)
    agg.add(np.concatenate([tick(base + 300, 10.0), tick(base + NS, 11.0)]))
    closed = agg.advance(base + 3 * NS)
    assert closed["flags"].tolist() == [BAR_FLAG_PARTIAL_START, 0]     # [base+1s) starts at the first record


def test_a_replay_marks_its_first_and_last_periods_partial_and_a_quote_counts_as_seen():
    from shmpipe_services.consumers.bars import BAR_FLAG_PARTIAL_END, BAR_FLAG_PARTIAL_START
    base = 1_700_000_100 * NS
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0, close_on_trade_time=True)
    closed = agg.add(np.concatenate([tick(base + 300, 10.0), tick(base + NS + 5, 11.0), tick(base + 2 * NS + 7, 12.0)]))
    closed = np.concatenate([closed, agg.flush()])
    # the recording began 300 ns into its first second and ended 7 ns into its last
    assert closed["start_ns"].tolist() == [base, base + NS, base + 2 * NS]
    assert closed["flags"].tolist() == [BAR_FLAG_PARTIAL_START, 0, BAR_FLAG_PARTIAL_END]
    # a quote exactly on the boundary, before any trade: bars saw that second from its start
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0, close_on_trade_time=True)
    agg.add(np.concatenate([tick(base, 9.0, flags=TICK_FLAG_QUOTE), tick(base + 300, 10.0)]))
    agg.add(tick(base + NS, 10.5, flags=TICK_FLAG_QUOTE))        # the stream reached the end of that second
    assert agg.flush()["flags"].tolist() == [0]


def test_records_lost_while_a_bar_was_open_mark_it_partial():
    from shmpipe_services.consumers.bars import BAR_FLAG_RECORDS_LOST
    base = 1_700_000_100 * NS
    agg = BarAggregator(parse_timeframes("1s,1m"), grace_s=0.0, watching_since_ns=base)
    agg.add(tick(base + 100, 10.0))
    agg.records_lost_after(base + 100)           # a lapped reader: what came between is gone
    agg.add(tick(base + 2 * NS + 100, 11.0))      # the first record after the loss
    closed = agg.advance(base + 3 * NS)
    by_start = {(int(b["timeframe_s"]), int(b["start_ns"])): int(b["flags"]) for b in closed}
    assert by_start == {(1, base): BAR_FLAG_RECORDS_LOST, (1, base + 2 * NS): BAR_FLAG_RECORDS_LOST}
    agg.add(tick(base + 3 * NS + 1, 12.0))
    assert agg.advance(base + 4 * NS)["flags"].tolist() == [0]
    assert agg.advance(base + 60 * NS)["flags"].tolist() == [BAR_FLAG_RECORDS_LOST]


def test_a_late_trade_for_a_closed_period_never_lands_in_another_bar():
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0, watching_since_ns=0)
    base = 1_700_000_000 * NS
    agg.add(tick(base + 10, 10.0, sid=1))
    agg.advance(base + 2 * NS)                    # [base, base+1s) and [base+1s, base+2s) closed
    agg.add(np.concatenate([tick(base + NS + 5, 50.0, sid=2),     # symbol 2 had no bar there: still late
                            tick(base + 20, 60.0, sid=1), tick(base + 2 * NS + 1, 11.0, sid=1)]))
    assert agg.late == {"1s": 2}
    (bar,) = agg.advance(base + 3 * NS)
    assert (bar["symbol_id"], bar["start_ns"], bar["high"], bar["trades"]) == (1, base + 2 * NS, 11.0, 1)


def test_an_unstamped_record_does_not_open_the_coverage():
    """A record with timestamp 0 (no time) read first must not make every later bar complete."""
    from shmpipe_services.consumers.bars import BAR_FLAG_PARTIAL_START
    base = 1_700_000_100 * NS
    agg = BarAggregator(parse_timeframes("1s"), grace_s=0.0, close_on_trade_time=True)
    (first,) = agg.add(np.concatenate([tick(0, 9.0, flags=TICK_FLAG_QUOTE), tick(base + 300, 10.0),
                                       tick(base + NS, 11.0)]))
    assert (first["start_ns"], first["flags"]) == (base, BAR_FLAG_PARTIAL_START)
