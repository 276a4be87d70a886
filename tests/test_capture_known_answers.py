"""Known answers (tests/fixtures/capture/known_answers.json): each venue fixture through its parser."""
from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

import numpy as np
import pytest
from capture_helpers import (
    KNOWN,
    SIDE_ASK,
    SIDE_BID,
    ReferenceBooks,
    as_decimal_pairs,
    fixture_lines,
    float_pairs_as_decimals,
    run_lines,
)
from shmpipe_services.capture.alpaca import AlpacaParser
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.kraken_checksum import checksum_of_book, checksum_of_text
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_INVALIDATE,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    LEVEL_FLAG_LAST,
    SOURCE_ALPACA,
    SOURCE_COINBASE,
    SOURCE_KRAKEN,
    TICK_FLAG_GAP_BEFORE,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)


def ticks_per_symbol(ticks, registry, flag) -> dict[str, int]:
    chosen = ticks[(ticks["flags"] & flag) != 0]
    return {registry.lookup(int(sid))[1]: int(n) for sid, n in
            zip(*np.unique(chosen["symbol_id"], return_counts=True))}


# -- Coinbase ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coinbase():
    registry = InMemorySymbolIds()
    parser = CoinbaseParser(registry)
    lines = fixture_lines("coinbase_advanced.jsonl")
    return parser, registry, run_lines(parser, lines), lines


def test_coinbase_counts_per_channel_and_type(coinbase):
    parser, registry, run, _ = coinbase
    known = KNOWN["coinbase_advanced.jsonl"]
    assert parser.frames == known["lines"]
    by_channel = known["message_counts_by_channel"]
    assert {c: parser.messages[c] for c in by_channel} == by_channel
    assert {t: parser.messages["l2_data." + t] for t in known["l2_data_events_by_type"]} == \
        known["l2_data_events_by_type"]
    assert ticks_per_symbol(run.ticks, registry, TICK_FLAG_QUOTE) == known["ticker_messages_by_product"]
    assert len(run.ticks) == known["message_counts_by_channel"]["ticker"]
    assert set(run.ticks["source"]) == {SOURCE_COINBASE} and set(run.levels["source"]) == {SOURCE_COINBASE}
    assert parser.errors == Counter()


def test_coinbase_snapshots_on_their_lines(coinbase):
    _, registry, run, _ = coinbase
    begins = run.levels["action"] == ACTION_SNAPSHOT_BEGIN
    assert {registry.lookup(int(s))[1]: int(line) for s, line in
            zip(run.levels["symbol_id"][begins], run.level_lines[begins])} == \
        KNOWN["coinbase_advanced.jsonl"]["snapshot_lines"]
    assert np.count_nonzero(run.levels["action"] == ACTION_SNAPSHOT_END) == 2


def test_coinbase_last_prices_and_sequence(coinbase):
    parser, _, run, lines = coinbase
    known = KNOWN["coinbase_advanced.jsonl"]
    assert {s: Decimal(i.last_price) for s, i in parser.instruments.items()} == \
        {s: Decimal(p) for s, p in known["last_trade_price"].items()}
    # Tick.sequence is the exchange's own sequence_num of the frame it came from
    expected = [json.loads(lines[n - 1])["sequence_num"] for n in run.tick_lines]
    assert run.ticks["sequence"].tolist() == expected
    assert parser.next_sequence == known["sequence_num"]["last"] + 1


def test_coinbase_gap_flagged_on_the_first_records_after_it(coinbase):
    parser, _, run, _ = coinbase
    (gap,) = KNOWN["coinbase_advanced.jsonl"]["sequence_num"]["gaps"]
    assert [(g.kind, g.frame) for g in parser.gaps] == [("sequence", gap["line"])]
    # LevelUpdates: a gap-before flag speaks for its own symbol only, so the connection-wide gap is one
    # invalidate record (gap-before, last) per book, ahead of the gap line's own records.
    flagged_levels = np.flatnonzero(run.levels["flags"] & TICK_FLAG_GAP_BEFORE)
    first_level_of_gap_line = np.flatnonzero(run.level_lines == gap["line"])[0]
    assert flagged_levels.tolist() == [first_level_of_gap_line, first_level_of_gap_line + 1]
    invalidates = run.levels[flagged_levels]
    assert (invalidates["action"] == ACTION_INVALIDATE).all() and (invalidates["flags"] & LEVEL_FLAG_LAST).all()
    assert sorted(invalidates["symbol_id"].tolist()) == sorted(parser.instruments[s].symbol_id
                                                              for s in ("BTC-USD", "ETH-USD"))
    flagged_ticks = np.flatnonzero(run.ticks["flags"] & TICK_FLAG_GAP_BEFORE)
    first_tick_after = np.flatnonzero(run.tick_lines >= gap["line"])[0]
    assert flagged_ticks.tolist() == [first_tick_after]
    # the lost message could have been about either product: both books are queued for a resnapshot
    assert parser.resync_needed == {"BTC-USD", "ETH-USD"}


def test_coinbase_heartbeats_continuous(coinbase):
    parser, *_ = coinbase
    assert parser.last_heartbeat == KNOWN["coinbase_advanced.jsonl"]["heartbeats"]["last_counter"]
    assert parser.gap_counts["heartbeat"] == 0


def test_coinbase_books_rebuilt_from_records(coinbase):
    parser, _registry, run, _ = coinbase
    books = ReferenceBooks()
    for record in run.levels:
        books.apply(record)
    for symbol, known in KNOWN["coinbase_advanced.jsonl"]["books"].items():
        inst = parser.instruments[symbol]
        sid = inst.symbol_id
        assert (len(books.books[sid][SIDE_BID]), len(books.books[sid][SIDE_ASK])) == \
            (known["bid_levels"], known["ask_levels"])
        for side, key in ((SIDE_BID, "top5_bids"), (SIDE_ASK, "top5_asks")):
            top5 = books.top(sid, side, 5)
            assert float_pairs_as_decimals(top5, inst.price_decimals, inst.size_decimals) == \
                as_decimal_pairs(known[key])
    assert {s: (i.price_decimals, i.size_decimals) for s, i in parser.instruments.items()} == \
        {"BTC-USD": (2, 8), "ETH-USD": (2, 8)}


# -- Kraken --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kraken():
    registry = InMemorySymbolIds()
    parser = KrakenParser(registry)
    return parser, registry, run_lines(parser, fixture_lines("kraken_v2.jsonl"))


def test_kraken_counts(kraken):
    parser, registry, run = kraken
    known = KNOWN["kraken_v2.jsonl"]
    assert parser.frames == known["lines"]
    assert {c: parser.messages[c] for c in known["message_counts"]} == known["message_counts"]
    by_type = known["book_messages_by_type"]
    assert {t: parser.messages["book." + t] for t in by_type} == by_type
    assert ticks_per_symbol(run.ticks, registry, TICK_FLAG_QUOTE) == known["ticker_messages_by_symbol"]
    assert np.count_nonzero(run.levels["action"] == ACTION_CHECKSUM) == known["message_counts"]["book"]
    assert set(run.ticks["source"]) == {SOURCE_KRAKEN} and set(run.levels["source"]) == {SOURCE_KRAKEN}
    assert parser.errors == Counter() and not parser.gaps


def test_kraken_instrument_facts_reach_the_registry(kraken):
    _, registry, _ = kraken
    facts = {f.symbol: (f.price_decimals, f.size_decimals, f.depth) for f in registry.facts.values()}
    depth = KNOWN["kraken_v2.jsonl"]["subscription_depth"]
    assert facts == {"BTC/USD": (1, 8, depth), "ETH/USD": (2, 8, depth)}


def test_kraken_last_prices_and_snapshot_checksums(kraken):
    parser, _registry, run = kraken
    known = KNOWN["kraken_v2.jsonl"]
    assert {s: Decimal(i.last_price) for s, i in parser.instruments.items()} == \
        {s: Decimal(p) for s, p in known["last_trade_price"].items()}
    checksums = run.levels[run.levels["action"] == ACTION_CHECKSUM]
    lines = run.level_lines[run.levels["action"] == ACTION_CHECKSUM]
    for symbol, snap in known["snapshots"].items():
        sid = parser.instruments[symbol].symbol_id
        at_line = checksums[(lines == snap["line"]) & (checksums["symbol_id"] == sid)]
        assert at_line["price"].tolist() == [snap["checksum"]]
        last = checksums[checksums["symbol_id"] == sid][-1]
        assert int(last["price"]) == known["final_checksum"][symbol]


def verify_kraken_checksums(run, registry):
    """Rebuild each book from the emitted records only; at every checksum record, truncate to the
    registry's depth and compute the CRC32. Returns (verified, [(line, carried, computed)...], books)."""
    books = ReferenceBooks()
    verified, mismatches = 0, []
    for record, line in zip(run.levels, run.level_lines):
        if record["action"] != ACTION_CHECKSUM:
            books.apply(record)
            continue
        sid = int(record["symbol_id"])
        facts = registry.facts[sid]
        books.truncate(sid, facts.depth)
        bids, asks = books.books[sid]
        computed = checksum_of_book(bids, asks, facts.price_decimals, facts.size_decimals)
        if computed == int(record["price"]):
            verified += 1
        else:
            mismatches.append((int(line), int(record["price"]), computed))
    return verified, mismatches, books


def test_every_kraken_checksum_is_computable_from_the_levels_emitted(kraken):
    parser, registry, run = kraken
    verified, mismatches, books = verify_kraken_checksums(run, registry)
    assert mismatches == []
    assert verified == KNOWN["kraken_v2.jsonl"]["checksums_verified"]
    for symbol, known in KNOWN["kraken_v2.jsonl"]["books"].items():
        inst = parser.instruments[symbol]
        assert (len(books.books[inst.symbol_id][SIDE_BID]), len(books.books[inst.symbol_id][SIDE_ASK])) == \
            (known["bid_levels"], known["ask_levels"])
        for side, key in ((SIDE_BID, "top10_bids"), (SIDE_ASK, "top10_asks")):
            assert float_pairs_as_decimals(books.top(inst.symbol_id, side, 10), inst.price_decimals,
                                           inst.size_decimals) == as_decimal_pairs(known[key])


def test_kraken_bad_checksum_is_carried_for_the_order_book_to_catch():
    registry = InMemorySymbolIds()
    run = run_lines(KrakenParser(registry), fixture_lines("bad/kraken_bad_checksum.jsonl"))
    known = KNOWN["bad"]["kraken_bad_checksum.jsonl"]
    verified, mismatches, _ = verify_kraken_checksums(run, registry)
    assert mismatches == [(known["bad_line"], known["checksum_in_file"], known["correct_checksum"])]
    assert verified > 0


def test_kraken_checksum_reproduces_the_documented_vector():
    vector = KNOWN["kraken_v2.jsonl"]["checksum_doc_vector"]
    assert checksum_of_text(vector["asks"], vector["bids"]) == vector["checksum"] == 974947235


# -- Alpaca --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alpaca():
    registry = InMemorySymbolIds()
    parser = AlpacaParser(registry)
    return parser, registry, run_lines(parser, fixture_lines("alpaca_stream.jsonl"))


def test_alpaca_counts_per_type_and_symbol(alpaca):
    parser, registry, run = alpaca
    known = KNOWN["alpaca_stream.jsonl"]
    assert parser.frames == known["lines"]
    assert {t: parser.messages[t] for t in known["items_by_type"]} == known["items_by_type"]
    assert ticks_per_symbol(run.ticks, registry, TICK_FLAG_QUOTE) == \
        {s: v["quotes"] for s, v in known["by_symbol"].items()}
    assert ticks_per_symbol(run.ticks, registry, TICK_FLAG_TRADE) == \
        {s: v["trades"] for s, v in known["by_symbol"].items()}
    assert set(run.ticks["source"]) == {SOURCE_ALPACA}
    # each trade is also a LevelUpdate trade record with the exact f64 numbers (issue 21), none else
    trades = run.ticks[run.ticks["flags"] & TICK_FLAG_TRADE != 0]
    assert len(run.levels) == len(trades) and (run.levels["action"] == ACTION_TRADE).all()
    np.testing.assert_array_equal(run.levels["price"].astype(np.float32), trades["bid"])
    assert parser.errors == Counter()


def test_alpaca_last_trade_and_quote(alpaca):
    parser, _, run = alpaca
    for symbol, known in KNOWN["alpaca_stream.jsonl"]["by_symbol"].items():
        inst = parser.instruments[symbol]
        assert Decimal(inst.last_price) == Decimal(known["last_trade_price"])
        mine = run.ticks[run.ticks["symbol_id"] == inst.symbol_id]
        trade = mine[(mine["flags"] & TICK_FLAG_TRADE) != 0][-1]
        assert trade["bid"] == trade["ask"] == np.float32(float(known["last_trade_price"]))
        quote = mine[(mine["flags"] & TICK_FLAG_QUOTE) != 0][-1]
        q = known["last_quote"]
        assert (quote["bid"], quote["ask"]) == (np.float32(float(q["bp"])), np.float32(float(q["ap"])))
        assert quote["volume"] == np.float32(float(q["bs"]) + float(q["as"]))
        bid, ask = float(q["bp"]), float(q["ap"])
        assert quote["spread_bps"] == round((ask - bid) / ((ask + bid) / 2) * 1e5)
