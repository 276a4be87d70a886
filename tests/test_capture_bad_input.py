"""Bad input never raises out of a parser, is counted per kind, and spoils only what it names."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from capture_helpers import KNOWN, fixture_lines, run_lines
from shmpipe_services.capture import bad_input as bad
from shmpipe_services.capture.alpaca import AlpacaParser
from shmpipe_services.capture.bad_input import BadInputLog
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds

from shmpipe.records import ACTION_SNAPSHOT_BEGIN, LEVEL_FLAG_LAST, TICK_FLAG_GAP_BEFORE

TS = "2024-06-11T14:30:00.5Z"


def coinbase_frame(channel: str, seq: int, events: list) -> bytes:
    return json.dumps({"channel": channel, "client_id": "", "timestamp": TS, "sequence_num": seq,
                       "events": events}).encode()


def cb_level(side: str, price: str, qty: str) -> dict:
    return {"side": side, "event_time": TS, "price_level": price, "new_quantity": qty}


def cb_snapshot(seq: int, product: str = "BTC-USD") -> bytes:
    return coinbase_frame("l2_data", seq, [{"type": "snapshot", "product_id": product, "updates": [
        cb_level("bid", "100.5", "1.25"), cb_level("offer", "101", "2")]}])


def cb_update(seq: int, product: str, price: str = "100.5", qty: str = "3") -> bytes:
    return coinbase_frame("l2_data", seq, [{"type": "update", "product_id": product,
                                             "updates": [cb_level("bid", price, qty)]}])


def kraken_book(symbol: str, kind: str, bids: str, asks: str = "[]", checksum: int = 1) -> bytes:
    ts = "" if kind == "snapshot" else f',"timestamp":"{TS}"'
    return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":{bids},"asks":{asks},'
            f'"checksum":{checksum}{ts}}}]}}').encode()


def test_invalid_json_line_is_counted_and_the_other_lines_pass():
    parser = CoinbaseParser()
    run = run_lines(parser, fixture_lines("bad/invalid_json_line.jsonl"))
    known = KNOWN["bad"]["invalid_json_line.jsonl"]
    assert parser.errors == {bad.INVALID_JSON: 1}
    assert known["bad_line"] not in set(run.level_lines) | set(run.tick_lines)
    assert sum(parser.messages[c] for c in ("l2_data", "ticker", "heartbeats", "subscriptions")) == \
        known["valid_lines"]
    # the cut message's sequence_num was never read, so the next one reveals the loss
    assert [g.frame for g in parser.gaps if g.kind == "sequence"] == [known["bad_line"] + 1]


def test_update_for_an_unknown_symbol_is_an_error_and_never_snapshotted():
    registry = InMemorySymbolIds()
    parser = CoinbaseParser(registry)
    run = run_lines(parser, fixture_lines("bad/coinbase_update_unknown_symbol.jsonl"))
    known = KNOWN["bad"]["coinbase_update_unknown_symbol.jsonl"]
    assert parser.errors == {bad.UPDATE_WITHOUT_SNAPSHOT: 1}
    assert known["bad_line"] not in set(run.level_lines)
    assert known["product_id"] not in parser.instruments
    assert {registry.lookup(int(s))[1] for s in run.levels["symbol_id"]} == {"BTC-USD"}
    assert np.count_nonzero(run.levels["action"] == ACTION_SNAPSHOT_BEGIN) == 1


@pytest.mark.parametrize("price,qty", [("NaN", "1"), ("nan", "1"), ("inf", "1"), ("-100.5", "1"), ("0", "1"),
                                       ("100.5", "-1"), ("100.5", "NaN"), ("100.5", "1e999"), ("abc", "1")])
def test_coinbase_bad_values_are_rejected_and_the_book_is_queued_for_resync(price, qty):
    parser = CoinbaseParser()
    parser.parse(cb_snapshot(0, "BTC-USD"))
    parser.parse(cb_snapshot(1, "ETH-USD"))
    _ticks, levels = parser.parse(cb_update(2, "BTC-USD", price, qty))
    # text that is no number ("abc", "1e999": out of range) fails the schema; NaN or a negative, the check
    assert len(levels) == 0 and parser.errors.total() == 1
    assert set(parser.errors) == ({bad.SCHEMA} if "abc" in price or "e999" in qty else {bad.BAD_VALUE})
    assert parser.take_resync() == {"BTC-USD"}
    # ETH-USD is untouched: its next update carries no gap flag; BTC-USD's next one does
    _, eth = parser.parse(cb_update(3, "ETH-USD"))
    _, btc = parser.parse(cb_update(4, "BTC-USD"))
    assert eth["flags"].tolist() == [LEVEL_FLAG_LAST]
    assert btc["flags"].tolist() == [TICK_FLAG_GAP_BEFORE | LEVEL_FLAG_LAST]
    assert parser.gap_counts == {"rejected": 1}


def test_a_value_too_large_for_a_tick_is_a_bad_value_not_a_crash():
    parser = CoinbaseParser()
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "1", "best_bid": "1e39",
              "best_bid_quantity": "1", "best_ask": "2e39", "best_ask_quantity": "1"}
    ticks, _ = parser.parse(coinbase_frame("ticker", 0, [{"type": "update", "tickers": [ticker]}]))
    assert len(ticks) == 0 and parser.errors == {bad.BAD_VALUE: 1}


@pytest.mark.parametrize("parser_class", [CoinbaseParser, KrakenParser, AlpacaParser])
@pytest.mark.parametrize("frame,kind", [
    (b"\xff\xfe{}", bad.NOT_UTF8),
    (b'{"channel":"l2_data","timestamp":"\xc3\x28"}', bad.NOT_UTF8),
    (b"{not json", bad.INVALID_JSON),
    (b"", bad.INVALID_JSON),
    ("[1,", bad.INVALID_JSON),
    (b'{"channel":"candles","type":"update","data":[]}', bad.UNKNOWN_TYPE),
    (b'[{"T":"zz"}]', bad.UNKNOWN_TYPE),
])
def test_malformed_frames_are_counted_by_kind(parser_class, frame, kind):
    parser = parser_class()
    ticks, levels = parser.parse(frame)
    assert len(ticks) == len(levels) == 0
    if kind == bad.UNKNOWN_TYPE:  # an object for an array venue, or the reverse, fails the schema instead
        assert sum(parser.errors.values()) == 1 and set(parser.errors) <= {bad.UNKNOWN_TYPE, bad.SCHEMA}
    else:
        assert parser.errors == {kind: 1}


@pytest.mark.parametrize("parser_class,frame", [
    (CoinbaseParser, coinbase_frame("l2_data", 0, [{"type": "snapshot", "product_id": "X", "updates": [
        {"side": "middle", "event_time": TS, "price_level": "1", "new_quantity": "1"}]}])),
    (CoinbaseParser, coinbase_frame("ticker", 0, [{"type": "update", "tickers": [{"product_id": "X"}]}])),
    (KrakenParser, kraken_book("BTC/USD", "snapshot", '[{"price":1.0,"qty":1}]').replace(b'"checksum"', b'"c"')),
    (KrakenParser, b'{"channel":"ticker","type":"update","data":[{"symbol":"X","bid":"1"}]}'),
    (AlpacaParser, b'[{"T":"q","S":"AAPL","bp":"193.05"}]'),
])
def test_wrong_types_fail_the_schema(parser_class, frame):
    parser = parser_class()
    ticks, levels = parser.parse(frame)
    assert len(ticks) == len(levels) == 0 and parser.errors == {bad.SCHEMA: 1}


@pytest.mark.parametrize("parser_class", [CoinbaseParser, KrakenParser, AlpacaParser])
def test_oversized_frame_is_rejected_before_decoding(parser_class):
    parser = parser_class(max_frame_bytes=64)
    parser.parse(b"[" + b" " * 100 + b"]")
    assert parser.errors == {bad.OVERSIZED: 1}


def test_kraken_bad_book_values_gap_only_that_symbol():
    parser = KrakenParser()
    parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":100.0,"qty":1.00000000}]'))
    parser.parse(kraken_book("ETH/USD", "snapshot", '[{"price":10.00,"qty":1.00000000}]'))
    for bad_level in ('[{"price":-100.0,"qty":1.0}]', '[{"price":100.0,"qty":-1.0}]',
                      '[{"price":"100.0","qty":1.0}]', '[{"price":1e999,"qty":1.0}]'):
        _, levels = parser.parse(kraken_book("BTC/USD", "update", bad_level))
        assert len(levels) == 0
    assert parser.errors == {bad.BAD_VALUE: 4}
    assert parser.take_resync() == {"BTC/USD"}
    _, eth = parser.parse(kraken_book("ETH/USD", "update", '[{"price":10.00,"qty":2.00000000}]'))
    _, btc = parser.parse(kraken_book("BTC/USD", "update", '[{"price":100.0,"qty":2.00000000}]'))
    assert eth["flags"].tolist() == [0, LEVEL_FLAG_LAST]
    assert btc["flags"].tolist() == [TICK_FLAG_GAP_BEFORE, LEVEL_FLAG_LAST]  # the set, then the checksum record


def test_kraken_update_before_any_snapshot_is_counted():
    parser = KrakenParser()
    _, levels = parser.parse(kraken_book("BTC/USD", "update", '[{"price":100.0,"qty":1.0}]'))
    assert len(levels) == 0 and parser.errors == {bad.UPDATE_WITHOUT_SNAPSHOT: 1}
    assert "BTC/USD" not in parser.instruments


def test_kraken_failed_subscribe_is_a_venue_error():
    parser = KrakenParser()
    parser.parse(b'{"method":"subscribe","error":"Currency pair not supported","success":false,'
                 b'"time_in":"2024-06-11T14:30:00.1Z","time_out":"2024-06-11T14:30:00.2Z"}')
    assert parser.errors == {bad.VENUE_ERROR: 1}
    parser.parse(b'{"method":"pong","time_in":"2024-06-11T14:30:00.1Z","time_out":"2024-06-11T14:30:00.2Z"}')
    assert parser.messages["pong"] == 1 and parser.errors == {bad.VENUE_ERROR: 1}


def test_alpaca_one_bad_item_spoils_only_itself():
    parser = AlpacaParser()
    good = '{"T":"q","S":"AAPL","bp":1,"bs":1,"ap":2,"as":1,"t":"2024-06-11T14:30:00Z"}'
    for bad_item, kind in (('{"T":"q","S":"MSFT","bp":-1,"bs":1,"ap":2,"as":1,"t":"2024-06-11T14:30:00Z"}',
                            bad.BAD_VALUE),
                           ('{"T":"t","S":"MSFT","p":"1","s":1,"t":"2024-06-11T14:30:00Z"}', bad.SCHEMA),
                           ('{"T":"q","S":"MSFT","bp":1,"bs":1,"ap":2,"as":1,"t":"noon"}', bad.BAD_VALUE),
                           ('{"T":"newtype"}', bad.UNKNOWN_TYPE)):
        ticks, _ = parser.parse(f"[{bad_item},{good}]")
        assert parser.instruments["AAPL"].symbol_id in ticks["symbol_id"].tolist() and len(ticks) == 1
        assert parser.errors[kind] >= 1
    assert parser.errors.total() == 4


def test_alpaca_error_item_is_a_venue_error():
    parser = AlpacaParser()
    parser.parse(b'[{"T":"error","code":406,"msg":"connection limit exceeded"}]')
    assert parser.errors == {bad.VENUE_ERROR: 1} and parser.messages["error"] == 1


def test_parser_bug_is_counted_not_raised(monkeypatch):
    parser = KrakenParser()
    monkeypatch.setattr(parser, "_on_book", lambda *a: 1 / 0)
    parser.parse(kraken_book("BTC/USD", "snapshot", '[{"price":100.0,"qty":1.0}]'))
    assert parser.errors == {bad.INTERNAL: 1}


def test_empty_fixture_parses_to_nothing():
    assert fixture_lines("bad/empty.jsonl") == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bad_input_log_logs_the_first_n_in_full_then_rate_limits(caplog):
    clock = FakeClock()
    log = BadInputLog("test", full_logs=3, report_interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="shmpipe.capture"):
        for i in range(50):
            log.record(bad.SCHEMA, f"frame {i} " + "x" * 10, f"detail {i}")
        assert [r.getMessage() for r in caplog.records][:3] == [
            f"test: bad input #{i + 1} of kind schema: detail {i}; frame (18 bytes): frame {i} xxxxxxxxxx"
            for i in range(3)]
        assert len(caplog.records) == 3   # the rest wait for the interval
        clock.now = 10.0
        log.record(bad.SCHEMA, "frame 50", "detail 50")
        assert caplog.records[-1].getMessage() == \
            "test: 48 more bad input of kind schema (51 in all; latest: detail 50)"
        log.record(bad.NOT_UTF8, b"\xff", "bad byte")    # each kind has its own first N
        assert "of kind not_utf8" in caplog.records[-1].getMessage()
        log.record(bad.SCHEMA, "frame 51", "detail 51")
        log.flush()
        assert caplog.records[-1].getMessage() == \
            "test: 1 more bad input of kind schema (52 in all; latest: detail 51)"
    assert log.counts == {bad.SCHEMA: 52, bad.NOT_UTF8: 1}


def test_a_huge_frame_is_logged_cut_short(caplog):
    log = BadInputLog("test", max_logged_chars=10)
    with caplog.at_level(logging.WARNING, logger="shmpipe.capture"):
        log.record(bad.OVERSIZED, b"y" * 1000, "too big")
    assert caplog.records[0].getMessage().endswith("yyyyyyyyyy ... (990 more)")


@pytest.mark.parametrize("parser_class", [CoinbaseParser, KrakenParser, AlpacaParser])
def test_deeply_nested_frame_is_counted_not_raised(parser_class):
    parser = parser_class()
    ticks, levels = parser.parse(b"[" * 100_000 + b"]" * 100_000)
    assert len(ticks) == len(levels) == 0 and parser.errors.total() == 1


def test_a_failing_error_path_is_still_counted(monkeypatch):
    parser = KrakenParser()
    monkeypatch.setattr(parser, "_classify", lambda obj: 1 / 0)
    parser.parse(b'{"channel":"book","type":"update","data":"not a list"}')
    assert parser.errors == {bad.INTERNAL: 1}
