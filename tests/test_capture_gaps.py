"""Gap detection (sequence, heartbeat, trade ids, reconnects), trades, timestamps, the staleness
watchdog and the symbol-id hook."""
from __future__ import annotations

import json

import numpy as np
import pytest
from shmpipe_services.capture.coinbase import CoinbaseParser, subscribe_messages
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.record_batch import RecordBatch, spread_tenth_bps
from shmpipe_services.capture.staleness import StalenessWatchdog
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds
from shmpipe_services.capture.timestamps import rfc3339_ns
from test_capture_bad_input import FakeClock, cb_snapshot, cb_update, coinbase_frame, kraken_book

from shmpipe.records import (
    ACTION_INVALIDATE,
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_TRADE,
    LEVEL_FLAG_GAP_BEFORE,
    LEVEL_FLAG_LAST,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_COINBASE,
    SOURCE_KRAKEN,
    TICK_FLAG_GAP_BEFORE,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)


def heartbeat(seq: int, counter: int) -> bytes:
    return coinbase_frame("heartbeats", seq, [{"current_time": "2024-06-11 14:30:01.12 +0000 UTC m=+1.5",
                                               "heartbeat_counter": counter}])


def test_coinbase_heartbeat_counter_jump_is_a_connection_gap():
    parser = CoinbaseParser()
    parser.parse(cb_snapshot(0))
    parser.parse(heartbeat(1, 10))
    parser.parse(heartbeat(2, 11))
    parser.parse(heartbeat(3, 13))
    assert [(g.kind, g.detail) for g in parser.gaps] == [("heartbeat", "heartbeat_counter 13 after 11")]
    # the frame that revealed the gap carries one invalidate per book (gap-before: its own symbol)
    _, levels = parser.parse(heartbeat(4, 14))
    _, levels = parser.parse(cb_update(5, "BTC-USD"))
    assert levels["flags"].tolist() == [LEVEL_FLAG_LAST]       # the next update speaks for itself only
    assert parser.take_resync() == {"BTC-USD"}


def test_a_connection_wide_gap_invalidates_every_book_ahead_of_the_frames_records():
    """Issue 21 item 3: the gap flag used to land on the next record whatever its symbol, so dropping
    a BTC-USD update flagged ETH-USD and left BTC-USD valid with the wrong best bid."""
    parser = CoinbaseParser()
    parser.parse(cb_snapshot(0, "BTC-USD"))
    parser.parse(cb_snapshot(1, "ETH-USD"))
    _, levels = parser.parse(cb_update(3, "ETH-USD"))          # sequence 2 (say, a BTC-USD update) lost
    ids = {s: parser.instruments[s].symbol_id for s in ("BTC-USD", "ETH-USD")}
    assert levels["action"].tolist() == [ACTION_INVALIDATE, ACTION_INVALIDATE, ACTION_SET]
    assert sorted(levels["symbol_id"][:2].tolist()) == sorted(ids.values())
    assert levels["flags"].tolist() == [LEVEL_FLAG_GAP_BEFORE | LEVEL_FLAG_LAST] * 2 + [LEVEL_FLAG_LAST]


def test_coinbase_string_heartbeat_counter_is_accepted():
    parser = CoinbaseParser()
    parser.parse(coinbase_frame("heartbeats", 0, [{"current_time": "x", "heartbeat_counter": "3049"}]))
    assert parser.last_heartbeat == 3049 and not parser.errors


def test_coinbase_repeated_sequence_is_reported():
    parser = CoinbaseParser()
    parser.parse(cb_snapshot(5))
    parser.parse(cb_update(5, "BTC-USD"))
    assert [g.kind for g in parser.gaps] == ["sequence"] and "repeated" in parser.gaps[0].detail


def test_reconnect_waits_for_new_snapshots_and_flags_the_first_records():
    parser = CoinbaseParser()
    parser.parse(cb_snapshot(0))
    parser.reset_connection()
    _, levels = parser.parse(cb_update(0, "BTC-USD"))   # sequence restarts at 0: no sequence gap
    # the books of the dropped connection are invalidated (stale; if capture did not already) first
    assert levels["action"].tolist() == [ACTION_INVALIDATE] and levels["flags"].tolist() == [LEVEL_FLAG_LAST]
    assert parser.errors == {"update_without_snapshot": 1}
    _, levels = parser.parse(cb_snapshot(1))
    assert levels["action"][0] == ACTION_SNAPSHOT_BEGIN and not levels["flags"][:-1].any()
    assert levels["flags"][-1] == LEVEL_FLAG_LAST
    assert [g.kind for g in parser.gaps] == ["reconnect"]


def test_coinbase_market_trades():
    parser = CoinbaseParser()
    frame = coinbase_frame("market_trades", 7, [{"type": "update", "trades": [
        {"trade_id": "1", "product_id": "ETH-USD", "price": "3500.5", "size": "0.25", "side": "BUY",
         "time": "2024-06-11T14:30:01.000001Z"},
        {"trade_id": "2", "product_id": "ETH-USD", "price": "3500.25", "size": "1", "side": "SELL",
         "time": "2024-06-11T14:30:01.5Z"}]}])
    ticks, levels = parser.parse(frame)
    assert ticks["flags"].tolist() == [TICK_FLAG_TRADE] * 2
    assert ticks["bid"].tolist() == ticks["ask"].tolist() == [3500.5, 3500.25]
    assert ticks["volume"].tolist() == [0.25, 1.0] and ticks["sequence"].tolist() == [7, 7]
    assert ticks["timestamp_ns"].tolist() == [1718116201000001000, 1718116201500000000]
    assert levels["action"].tolist() == [ACTION_TRADE] * 2 and levels["side"].tolist() == [SIDE_BID, SIDE_ASK]
    assert levels["price"].tolist() == [3500.5, 3500.25] and set(levels["source"]) == {SOURCE_COINBASE}
    assert parser.instruments["ETH-USD"].last_price == "3500.25"


def kraken_trade(trade_id: int, side: str = "buy", kind: str = "update") -> bytes:
    return json.dumps({"channel": "trade", "type": kind, "data": [
        {"symbol": "BTC/USD", "side": side, "price": 67000.1, "qty": 0.0125, "ord_type": "market",
         "trade_id": trade_id, "timestamp": "2024-06-11T14:30:02.123456Z"}]}).encode()


def test_kraken_trades_and_trade_id_gaps():
    parser = KrakenParser()
    ticks, levels = parser.parse(kraken_trade(100, "buy", "snapshot"))
    assert ticks["flags"].tolist() == [TICK_FLAG_TRADE] and ticks["sequence"].tolist() == [100]
    assert levels["action"].tolist() == [ACTION_TRADE] and levels["side"].tolist() == [SIDE_ASK]
    assert levels["price"].tolist() == [67000.1] and levels["size"].tolist() == [0.0125]
    assert set(levels["source"]) == {SOURCE_KRAKEN}
    parser.parse(kraken_trade(101, "sell"))
    assert not parser.gaps
    ticks, levels = parser.parse(kraken_trade(105, "sell"))
    assert [(g.kind, g.symbol) for g in parser.gaps] == [("trade_id", "BTC/USD")]
    assert ticks["flags"].tolist() == [TICK_FLAG_TRADE | TICK_FLAG_GAP_BEFORE]
    # A missed trade does not make the book wrong (issue 21 item 5: it used to flag the symbol's next
    # LevelUpdate, a book update, invalidating an intact book): only the trade Tick says so.
    assert levels["flags"].tolist() == [LEVEL_FLAG_LAST] and levels["side"].tolist() == [SIDE_BID]
    _, book = parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":67000.1,"qty":1.5}]'))
    assert not (book["flags"] & LEVEL_FLAG_GAP_BEFORE).any()
    assert parser.take_resync() == set()


def test_kraken_snapshot_time_comes_from_recv_ns():
    parser = KrakenParser()
    _, levels = parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":100.0,"qty":1.0}]'),
                             recv_ns=1_718_116_200_000_000_123)
    assert set(levels["timestamp_ns"]) == {1_718_116_200_000_000_123}


def test_feed_appends_to_a_caller_batch():
    parser, batch = KrakenParser(), RecordBatch()
    parser.feed(kraken_book("BTC/USD", "snapshot", '[{"price":100.0,"qty":1.0}]'), batch)
    parser.feed(kraken_book("BTC/USD", "update", '[{"price":100.0,"qty":0.0}]'), batch)
    assert (batch.n_ticks, batch.n_levels) == (0, 6)   # begin, set, end, checksum; set, checksum
    _ticks, levels = batch.take()
    assert len(levels) == 6 and batch.n_levels == 0


def test_symbol_ids_are_injected_and_hear_the_facts():
    calls = []

    def symbol_id(exchange, symbol, price_decimals=None, size_decimals=None, depth=None):
        calls.append((exchange, symbol, price_decimals, size_decimals, depth))
        return 42

    parser = KrakenParser(symbol_id)
    parser.parse(b'{"method":"subscribe","result":{"channel":"book","depth":25,"snapshot":true,'
                 b'"symbol":"BTC/USD"},"success":true,"time_in":"x","time_out":"y","req_id":2}')
    _, levels = parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":100.00,"qty":1.0000}]'))
    assert set(levels["symbol_id"]) == {42}
    assert calls == [("kraken", "BTC/USD", None, None, None), ("kraken", "BTC/USD", None, None, 25),
                     ("kraken", "BTC/USD", 2, 4, 25)]


def test_in_memory_symbol_ids():
    ids = InMemorySymbolIds()
    assert ids("kraken", "BTC/USD") == 1 and ids("coinbase", "BTC-USD", 2) == 2
    assert ids("kraken", "BTC/USD", depth=10) == 1 and ids.lookup(2) == ("coinbase", "BTC-USD")
    assert ids.facts[2].price_decimals == 2 and ids.facts[1].depth == 10
    assert ids.id_of("kraken", "BTC/USD") == 1


def test_in_memory_symbol_ids_0_names_no_symbol():
    """Issue 21 item 5: as in the host registry, a zeroed record's symbol_id 0 resolves to no symbol,
    with the error the host registry raises (consumers catch UnknownSymbolError, not KeyError)."""
    from shmpipe.errors import UnknownSymbolError

    ids = InMemorySymbolIds()
    assert ids("kraken", "BTC/USD") == 1
    with pytest.raises(UnknownSymbolError, match="symbol id 0 names no symbol"):
        ids.lookup(0)
    with pytest.raises(UnknownSymbolError, match=r"symbol id 7 is not registered \(1 symbols, ids 1..1\)"):
        ids.lookup(7)


def test_subscribe_messages_name_every_product():
    frames = [json.loads(f) for f in subscribe_messages(["BTC-USD", "ETH-USD"])]
    assert [f["channel"] for f in frames] == ["heartbeats", "level2", "ticker", "market_trades"]
    assert frames[1] == {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD", "ETH-USD"]}


@pytest.mark.parametrize("text,ns", [
    ("2024-06-11T14:30:00.150435272Z", 1718116200150435272),
    ("2024-06-11T14:30:00Z", 1718116200000000000),
    ("2024-06-11T14:30:00.048Z", 1718116200048000000),
    ("2024-06-11T16:30:00.5+02:00", 1718116200500000000),
    ("2024-06-11T14:30:00.1234567891234Z", 1718116200123456789),
    ("1970-01-01T00:00:00Z", 0),
])
def test_rfc3339(text, ns):
    assert rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", ["", "x", "2024-06-11T14:30:00.Z", "2024-06-11T14:30:0a.1Z",
                                  "2024-06-11 14:30:01.12 +0000 UTC", "2024-13-11T14:30:00Z",
                                  "2024-06-11T14:30:00"])
def test_rfc3339_rejects(text):
    with pytest.raises(ValueError):
        rfc3339_ns(text)


def test_spread_in_tenths_of_a_basis_point():
    assert spread_tenth_bps(100.0, 100.01) == 10          # 1 bp
    assert spread_tenth_bps(100.0, 100.0) == 0 and spread_tenth_bps(101.0, 100.0) == 0
    assert spread_tenth_bps(0.0, 100.0) == 0xFFFF and spread_tenth_bps(1.0, 1000.0) == 0xFFFF


def test_staleness_watchdog_reports_each_silence_once():
    clock = FakeClock()
    dog = StalenessWatchdog(5.0, clock=clock, limits={("kraken", "heartbeat", None): 2.0})
    dog.watch(("kraken", "book", "BTC/USD"))
    dog.touch(("kraken", "heartbeat", None))
    clock.now = 2.5
    assert [s.channel for s in dog.check()] == [("kraken", "heartbeat", None)]
    assert dog.check() == []
    dog.touch(("kraken", "heartbeat", None))
    clock.now = 5.5
    assert [(s.channel, s.silent_s) for s in dog.check()] == [(("kraken", "book", "BTC/USD"), 5.5),
                                                               (("kraken", "heartbeat", None), 3.0)]
    dog.touch(("kraken", "book", "BTC/USD"))
    assert [s.channel for s in dog.stale()] == [("kraken", "heartbeat", None)]
    assert [(p.channel[1], p.start, p.end) for p in dog.periods] == \
        [("heartbeat", 0.0, 2.5), ("book", 0.0, 5.5), ("heartbeat", 2.5, None)]


def test_parsers_touch_the_watchdog_per_channel_and_symbol():
    clock = FakeClock()
    dog = StalenessWatchdog(1.0, clock=clock)
    parser = CoinbaseParser(watchdog=dog)
    parser.parse(cb_snapshot(0, "BTC-USD"))
    parser.parse(heartbeat(1, 1))
    clock.now = 3.0
    parser.parse(heartbeat(2, 2))
    assert [s.channel for s in dog.check()] == [("coinbase", "l2_data", "BTC-USD")]


def test_quote_tick_fields():
    parser = CoinbaseParser()
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "67012.31", "best_bid": "67012.31",
              "best_bid_quantity": "0.5", "best_ask": "67012.37", "best_ask_quantity": "0.25"}
    ticks, _ = parser.parse(coinbase_frame("ticker", 3, [{"type": "update", "tickers": [ticker]}]))
    (tick,) = ticks
    assert tick["flags"] == TICK_FLAG_QUOTE and tick["volume"] == 0.75 and tick["sequence"] == 3
    assert tick["spread_bps"] == round(0.06 / 67012.34 * 1e5) and tick["timestamp_ns"] == rfc3339_ns(
        "2024-06-11T14:30:00.5Z")


def test_batch_goes_into_rings_and_keeps_what_a_full_ring_refused(ring_name):
    import shmpipe
    from shmpipe.records import LEVEL_UPDATE, TICK
    parser, batch = KrakenParser(), RecordBatch()
    levels = ",".join(f'{{"price":{100 + i}.0,"qty":1.0}}' for i in range(10))
    parser.feed(kraken_book("BTC/USD", "snapshot", f"[{levels}]"), batch)   # begin, 10 sets, end, checksum
    expected = batch.take()[1]
    parser.feed(kraken_book("BTC/USD", "snapshot", f"[{levels}]"), batch)
    with shmpipe.Ring.create(ring_name + "-t", TICK, 8) as ticks_ring, \
            shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 8) as levels_ring, \
            ticks_ring.producer() as ticks_out, levels_ring.producer() as levels_out, \
            levels_ring.consumer() as levels_in:
        assert batch.write_to(ticks_out, levels_out, timeout=0) == (0, 8)
        got = levels_in.read(8, timeout=0)
        assert batch.n_levels == 5
        assert batch.write_to(ticks_out, levels_out, timeout=0) == (0, 5) and batch.n_levels == 0
        got = np.concatenate([got, levels_in.read(8, timeout=0)])
        ticks_ring.unlink()
        levels_ring.unlink()
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("text,decimals", [("67007.0", 1), ("3500", 0), ("1.5e-3", 4), (b"1.5e-05", 6),
                                           ("1E-8", 8), ("2.50e2", 0), ("1.25e1", 1), (b"0.13047207", 8)])
def test_decimals_of_numbers_in_scientific_notation(text, decimals):
    """Issue 21 item 5: "1.5e-3" used to learn 4 decimals by counting the text after the dot ("5e-3")."""
    from shmpipe_services.capture.feed_parser import decimals_of
    assert decimals_of(text) == decimals


def test_a_kraken_precision_change_reaches_the_registry_with_when_it_took_effect():
    """Issue 21 item 4: a later snapshot written with more decimals is the venue's change, recorded."""
    from test_capture_bad_input import kraken_book
    registry = InMemorySymbolIds()
    parser = KrakenParser(registry)
    parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":67000.1,"qty":1.50000000}]'), 1_000)
    sid = parser.instruments["BTC/USD"].symbol_id
    assert (registry.facts[sid].price_decimals, registry.facts[sid].size_decimals) == (1, 8)
    parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":67000.12,"qty":1.50000000}]'), 2_000)
    assert registry.facts[sid].price_decimals == 2 and parser.facts_changed == 1
    assert registry.changes == [(sid, 2_000, 2, 8, None)]


def test_a_kraken_instrument_announcement_of_a_new_precision_reaches_the_registry():
    """Issue 21 item 4: Kraken announces a pair's precision change on its instrument channel."""
    from test_capture_bad_input import kraken_book
    registry = InMemorySymbolIds()
    parser = KrakenParser(registry)
    parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":67000.1,"qty":1.50000000}]'), 1_000)
    sid = parser.instruments["BTC/USD"].symbol_id
    announce = json.dumps({"channel": "instrument", "type": "update", "data": {"assets": [], "pairs": [
        {"symbol": "BTC/USD", "price_precision": 2, "qty_precision": 8, "status": "online"},
        {"symbol": "DOGE/USD", "price_precision": 7, "qty_precision": 8, "status": "online"}]}})
    parser.parse(announce, 5_000)
    assert not parser.errors and parser.messages["instrument"] == 1
    assert registry.changes == [(sid, 5_000, 2, 8, None)] and parser.facts_changed == 1
    assert "DOGE/USD" not in parser.instruments          # pairs this connection does not follow: no id
