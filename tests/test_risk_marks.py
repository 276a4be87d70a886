"""Marks from the books ring: a book whose flags say it cannot be trusted (stale, invalid,
crossed, checksum failed, unverified) gives no mark, and the reason names the bits; a valid book
gives its exact decimal mid. The emulator's account says which held symbols it could not mark."""
from __future__ import annotations

import time
from decimal import Decimal as D

import numpy as np
import pytest

from shmpipe.records import (
    BOOK_FLAG_CHECKSUM_FAILED,
    BOOK_FLAG_CROSSED,
    BOOK_FLAG_GAP,
    BOOK_FLAG_INVALID,
    BOOK_FLAG_STALE,
    BOOK_FLAG_UNVERIFIED,
    ORDERBOOK_ENTRY,
)

QUANTUM = D("0.00000001")


def latest(bid: float, ask: float, flags: int = 0, age_s: float = 0.0):
    from shmpipe_services.trading.book_marks import _Latest
    return _Latest(np.float64(bid), np.float64(ask), flags, time.time_ns() - int(age_s * 1e9))


@pytest.mark.parametrize("flags, why, words", [
    (BOOK_FLAG_INVALID | BOOK_FLAG_STALE, "stale", "stale (capture invalidated it)"),
    (BOOK_FLAG_INVALID | BOOK_FLAG_CROSSED, "invalid", "crossed"),
    (BOOK_FLAG_INVALID | BOOK_FLAG_CHECKSUM_FAILED | BOOK_FLAG_GAP, "invalid", "checksum failed, gap"),
    (BOOK_FLAG_INVALID, "invalid", "no reason bit"),
    (BOOK_FLAG_UNVERIFIED, "unverified", "checksums could not be checked"),
])
def test_a_flagged_book_gives_no_mark_and_names_why(flags, why, words):
    from shmpipe_services.trading.book_marks import mark_of
    mark = mark_of(latest(99.99, 100.01, flags), 2.0, QUANTUM)
    assert mark.mid is None and mark.why == why and words in mark.reason, mark
    assert f"{flags:#x}" in mark.reason


def test_old_crossed_and_one_sided_books_give_no_mark():
    from shmpipe_services.trading.book_marks import mark_of
    assert mark_of(None, 2.0, QUANTUM).why == "no_book"
    assert mark_of(latest(99.99, 100.01, age_s=3.0), 2.0, QUANTUM).why == "stale"
    assert mark_of(latest(100.02, 100.01), 2.0, QUANTUM).why == "crossed"     # flags clear, prices crossed
    assert mark_of(latest(100.01, 100.01), 2.0, QUANTUM).why == "crossed"     # locked is no mid either
    assert mark_of(latest(0.0, 100.01), 2.0, QUANTUM).why == "one_sided"


def test_a_valid_book_marks_at_its_exact_decimal_mid():
    from shmpipe_services.trading.book_marks import mark_of
    mark = mark_of(latest(97000.12, 97000.13), 2.0, QUANTUM)
    assert mark.mid == D("97000.125") and mark.reason == "" and mark.why == ""


@pytest.mark.timeout(30)
def test_book_marks_read_the_latest_entry_of_a_live_ring(ring_name):
    import shmpipe
    from shmpipe_services.trading.book_marks import BookMarks

    ring = shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 64, broadcast=True)
    marks = BookMarks(ring_name, stale_s=5.0)
    producer = ring.producer()
    entry = np.zeros(1, ORDERBOOK_ENTRY)
    entry["symbol_id"] = 7
    entry["bids"][0, 0] = (99.99, 1.0)
    entry["asks"][0, 0] = (100.01, 1.0)
    entry["bid_count"] = entry["ask_count"] = 1

    def wait_for(predicate):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            mark = marks.mark(7)
            if predicate(mark):
                return mark
            time.sleep(0.01)
        raise AssertionError(f"mark still {marks.mark(7)}")
    try:
        assert marks.source == "books" and marks.mark(7).why == "no_book"
        producer.write_batch(entry)
        assert wait_for(lambda m: m.mid is not None).mid == D("100")
        entry["flags"] = BOOK_FLAG_INVALID | BOOK_FLAG_STALE
        producer.write_batch(entry)
        assert wait_for(lambda m: m.mid is None).why == "stale"
        entry["flags"] = 0
        producer.write_batch(entry)
        assert wait_for(lambda m: m.mid is not None).mid == D("100")
        assert marks.mark(None).why == "unknown_symbol"
    finally:
        marks.close()
        producer.close()
        ring.unlink()
        ring.close()


def test_the_emulators_account_says_which_held_symbols_it_could_not_mark():
    from shmpipe_services.alpaca_paper.venue import Venue

    prices = {"AAA": D("10"), "BBB": D("20")}
    venue = Venue(lambda s: prices.get(s), cash=D("1000"))
    for symbol in ("AAA", "BBB"):
        order = venue.submit({"symbol": symbol, "side": "buy", "qty": "1", "type": "market",
                              "client_order_id": f"c-{symbol}"})
        assert venue.try_fill(order)
    assert venue.account_json()["equity"] == "1000" and venue.account_json()["unmarked_symbols"] == []
    del prices["BBB"]                        # BBB's book goes stale: no price, not a price of 0
    account = venue.account_json()
    assert account["unmarked_symbols"] == ["BBB"] and account["long_market_value"] == "10"


@pytest.mark.timeout(30)
def test_quote_marks_stay_an_option_and_say_so(ring_name):
    import shmpipe
    from shmpipe.records import TICK, TICK_FLAG_QUOTE, TICK_FLAG_TRADE
    from shmpipe_services.trading.book_marks import open_marks

    ring = shmpipe.Ring.create(ring_name, TICK, 64, broadcast=True)
    marks = open_marks(None, ring_name, 5.0)
    producer = ring.producer()
    ticks = np.zeros(2, TICK)
    ticks["symbol_id"] = 9
    ticks["bid"], ticks["ask"] = (49.5, 50.0), (50.5, 50.0)
    ticks["flags"] = (TICK_FLAG_QUOTE, TICK_FLAG_TRADE)       # a trade Tick is no quote: not a mark
    try:
        assert marks.source == "quotes"
        producer.write_batch(ticks)
        deadline = time.monotonic() + 10
        while marks.mark(9).mid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marks.mark(9).mid == D("50")
    finally:
        marks.close()
        producer.close()
        ring.unlink()
        ring.close()
    with pytest.raises(shmpipe.ShmpipeError, match="not both"):
        open_marks("a", "b", 1.0)
