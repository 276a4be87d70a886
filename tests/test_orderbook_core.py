"""The compiled book (services/orderbook/_book.pyx) in process: the book rules of DESIGN.md against a
dict reference, Kraken's checksum against the Python reference, the integrity flags, bad records,
and the entries it writes to a books ring."""
from __future__ import annotations

import random

import time

import numpy as np
import pytest
from capture_helpers import KNOWN
from orderbook_helpers import checksum_record, level, levels, snapshot
from shmpipe_services.capture.kraken_checksum import checksum_field, checksum_of_book, checksum_of_text
from shmpipe_services.orderbook._book import BookEngine, checksum_text_digits

import shmpipe
from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_INVALIDATE,
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    BOOK_FLAG_CHECKSUM_FAILED,
    BOOK_FLAG_CROSSED,
    BOOK_FLAG_GAP,
    BOOK_FLAG_INVALID,
    BOOK_FLAG_STALE,
    BOOK_FLAG_UNVERIFIED,
    LEVEL_FLAG_GAP_BEFORE,
    LEVEL_UPDATE,
    ORDERBOOK_ENTRY,
    SIDE_ASK,
    SIDE_BID,
    TICK,
)


def facts(price_decimals=2, size_decimals=8, depth=0):
    return lambda sid: (price_decimals, size_decimals, depth)


# -- the book rules -------------------------------------------------------------------------------
def test_random_streams_rebuild_exactly_the_reference_books():
    rng = random.Random(7)
    engine = BookEngine(facts=facts())
    reference = {}
    rows = []
    for sid in (1, 2, 5, 300):        # sparse ids: the table grows
        book = ({}, {})
        reference[sid] = book
        rows.append(level(ACTION_SNAPSHOT_BEGIN, sid=sid))
        for k in range(40):
            p = round(100 - 0.01 * (k + 1), 2)
            book[0][p] = 1.0 + k
            rows.append(level(ACTION_SET, SIDE_BID, p, 1.0 + k, sid=sid))
            q = round(100 + 0.01 * k, 2)
            book[1][q] = 2.0 + k
            rows.append(level(ACTION_SET, SIDE_ASK, q, 2.0 + k, sid=sid))
        rows.append(level(ACTION_SNAPSHOT_END, sid=sid))
    for ts in range(2, 20000):
        sid = rng.choice((1, 2, 5, 300))
        side = rng.randrange(2)
        price = round(100 + (rng.randrange(1, 120) * 0.01) * (-1 if side == SIDE_BID else 1) - 0.005 + 0.005, 2)
        size = 0.0 if rng.random() < 0.3 else round(rng.uniform(0.00000001, 50), 8)
        rows.append(level(ACTION_SET, side, price, size, sid=sid, ts=ts))
        if size == 0.0:
            reference[sid][side].pop(price, None)
        else:
            reference[sid][side][price] = size
    engine.apply(levels(*rows))
    for sid, (bids, asks) in reference.items():
        assert engine.level_counts(sid) == (len(bids), len(asks))
        assert engine.top(sid, SIDE_BID, 10_000) == sorted(bids.items(), reverse=True)
        assert engine.top(sid, SIDE_ASK, 10_000) == sorted(asks.items())
        assert engine.checksum(sid) == checksum_of_book(bids, asks, 2, 8)
    c = engine.counters()
    assert c["records"] == len(rows) and c["bad_records"] == 0 and c["books"] == 4


def test_snapshot_replaces_the_whole_book_and_trades_change_nothing():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0, 9.0: 2.0}, {11.0: 1.0, 12.0: 3.0})))
    engine.apply(levels(level(ACTION_TRADE, SIDE_ASK, 11.0, 0.5, ts=2),
                        level(ACTION_SET, SIDE_BID, 9.5, 4.0, ts=3)))
    assert engine.top(1, SIDE_BID) == [(10.0, 1.0), (9.5, 4.0), (9.0, 2.0)]
    engine.apply(levels(*snapshot({8.0: 1.0}, {13.0: 2.0}, ts=4)))
    assert engine.top(1, SIDE_BID) == [(8.0, 1.0)] and engine.top(1, SIDE_ASK) == [(13.0, 2.0)]
    c = engine.counters()
    assert c["trades"] == 1 and c["snapshots_completed"] == 2 and engine.flags(1) == 0


def test_delete_of_a_missing_level_is_counted_and_harmless():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}), level(ACTION_SET, SIDE_BID, 9.0, 0.0, ts=2)))
    assert engine.top(1, SIDE_BID) == [(10.0, 1.0)]
    assert engine.counters()["deletes_of_missing_levels"] == 1


# -- the checksum ---------------------------------------------------------------------------------
@pytest.mark.parametrize("decimals", [0, 1, 2, 5, 8])
def test_checksum_digits_equal_python_formatting(decimals):
    rng = random.Random(decimals)
    values = [0.0, 1.0, 0.5, 45285.2, 0.00100000, 67012.84, 1e-8, 123456.789, 0.125, 2.675, 1.005]
    values += [round(rng.uniform(0, 100_000), decimals) for _ in range(3000)]
    values += [rng.uniform(0, 10) for _ in range(500)]      # more decimals than the registry says: ties
    values += [-v for v in values[:50]]
    for x in values:
        assert checksum_text_digits(x, decimals) == checksum_field(f"{x:.{decimals}f}"), (x, decimals)


def test_checksum_of_kraken_documentation_vector():
    vector = KNOWN["kraken_v2.jsonl"]["checksum_doc_vector"]
    assert checksum_of_text(vector["asks"], vector["bids"]) == vector["checksum"]
    engine = BookEngine(facts=facts(5, 8))
    bids = {float(p): float(q) for p, q in vector["bids"]}
    asks = {float(p): float(q) for p, q in vector["asks"]}
    engine.apply(levels(*snapshot(bids, asks), checksum_record(vector["checksum"], ts=2)))
    assert engine.checksum(1) == vector["checksum"]
    assert engine.counters()["checksums_verified"] == 1 and engine.flags(1) == 0


def test_checksum_truncates_to_the_registry_depth_first():
    bids = {100.0 - k: 1.0 for k in range(12)}
    asks = {101.0 + k: 1.0 for k in range(12)}
    engine = BookEngine(facts=facts(1, 8, depth=10))
    engine.apply(levels(*snapshot(bids, asks)))
    assert engine.level_counts(1) == (10, 10)          # a snapshot too is cut to the depth
    # an insert above the best pushes the 10th level out; only the truncated book gives the sum
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 100.5, 2.0, ts=2),
                        level(ACTION_SET, SIDE_BID, 91.0, 0.0, ts=2)))
    assert engine.level_counts(1) == (10, 10)
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 100.7, 2.0, ts=3)))
    assert engine.level_counts(1) == (11, 10)          # until the message's checksum record
    expected_bids = dict(sorted({**{k: v for k, v in bids.items() if k > 91.0}, 100.5: 2.0, 100.7: 2.0}.items(),
                                reverse=True)[:10])
    good = checksum_of_book(expected_bids, dict(sorted(asks.items())[:10]), 1, 8)
    engine.apply(levels(checksum_record(good, ts=3)))
    assert engine.level_counts(1) == (10, 10)
    assert engine.counters()["checksums_verified"] == 1 and engine.counters()["checksum_failures"] == 0


def test_checksum_failure_invalidates_until_the_next_snapshot():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}), checksum_record(12345, ts=2)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_CHECKSUM_FAILED
    assert engine.invalid_symbols() == [1]
    good = checksum_of_book({10.0: 1.0}, {11.0: 1.0}, 2, 8)
    engine.apply(levels(checksum_record(good, ts=3)))
    assert engine.flags(1) & BOOK_FLAG_INVALID          # a later good sum does not make it trusted
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, ts=4)))
    assert engine.flags(1) == 0 and engine.invalid_symbols() == []
    c = engine.counters()
    assert (c["checksum_failures"], c["checksums_verified"], c["invalid_books"], c["repaired"]) == (1, 1, 1, 1)


def test_checksum_without_decimals_truncates_to_the_depth_and_flags_unverified_not_valid():
    """Issue 21 item 4: unknown decimals used to leave the book untruncated and valid (flags 0)."""
    engine = BookEngine(facts=lambda sid: (None, None, 2))
    engine.apply(levels(*snapshot({10.0: 1.0, 9.0: 1.0, 8.0: 1.0}, {11.0: 1.0, 12.0: 1.0, 13.0: 1.0}, last=False),
                        checksum_record(1, ts=2)))
    assert engine.counters()["checksums_unverifiable"] == 1
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_UNVERIFIED
    assert engine.level_counts(1) == (2, 2)


def test_an_unverified_book_is_valid_again_once_a_checksum_verifies():
    known = {}
    engine = BookEngine(facts=lambda sid: known.get(sid))
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, last=False), checksum_record(1, ts=2)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_UNVERIFIED
    known[1] = (1, 1, 0)
    engine.apply(levels(checksum_record(engine.checksum(1), ts=3)))
    assert engine.flags(1) == 0


# -- the other integrity checks --------------------------------------------------------------------
def test_a_crossing_inside_one_message_is_not_flagged_but_one_that_stays_is():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
    # one message (bit4 on its last record): a bid at 11 before the ask at 11 goes: crossed only in between
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 11.0, 1.0, ts=2, last=False),
                        level(ACTION_SET, SIDE_ASK, 11.0, 0.0, ts=2, last=False),
                        level(ACTION_SET, SIDE_ASK, 11.5, 1.0, ts=2), level(ACTION_SET, SIDE_BID, 9.0, 1.0, ts=3)))
    assert engine.flags(1) == 0
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 12.0, 1.0, ts=4)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_CROSSED
    assert engine.counters()["crossed"] == 1


def test_gap_flag_invalidates_except_on_the_snapshot_that_repairs_it():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 9.0, 1.0, ts=2, flags=LEVEL_FLAG_GAP_BEFORE)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_GAP
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, ts=3, flags=LEVEL_FLAG_GAP_BEFORE)))
    assert engine.flags(1) == 0
    assert engine.counters()["gaps"] == 1


def test_changes_to_a_book_never_snapshotted_leave_it_invalid():
    engine = BookEngine(facts=facts())
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 9.0, 1.0)))
    assert engine.flags(1) == BOOK_FLAG_INVALID and engine.invalid_symbols() == [1]
    assert engine.counters()["unsynced"] == 1


@pytest.mark.parametrize("bad", [
    level(ACTION_SET, SIDE_BID, float("nan"), 1.0),
    level(ACTION_SET, SIDE_BID, float("inf"), 1.0),
    level(ACTION_SET, SIDE_BID, 10.0, -1.0),
    level(ACTION_SET, 7, 10.0, 1.0),
    level(9),
    level(ACTION_SNAPSHOT_END),
    level(ACTION_CHECKSUM, price=1.5),
    level(ACTION_CHECKSUM, price=-1.0),
    level(ACTION_CHECKSUM, price=2.0 ** 33),
])
def test_bad_records_are_counted_and_leave_the_book_alone(bad):
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
    engine.apply(levels(bad))
    assert engine.counters()["bad_records"] == 1
    assert engine.top(1, SIDE_BID) == [(10.0, 1.0)] and engine.top(1, SIDE_ASK) == [(11.0, 1.0)]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="conflate_ms"):
        BookEngine(conflate_ms=-1)
    with pytest.raises(ValueError, match="max_levels"):
        BookEngine(max_levels=51)
    with pytest.raises(TypeError, match="LEVEL_UPDATE"):
        BookEngine().apply(np.zeros(3, TICK))
    with pytest.raises(KeyError):
        BookEngine().top(3, SIDE_BID)


def test_rings_of_the_wrong_record_are_refused(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64, broadcast=True) as ring, ring.consumer() as c, \
            ring.producer() as p:
        with pytest.raises(TypeError, match="levels ring"):
            BookEngine(c)
        with pytest.raises(TypeError, match="books ring"):
            BookEngine(None, p)
        ring.unlink()


def test_an_invalidate_record_makes_the_book_stale_until_its_next_snapshot():
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
    engine.apply(levels(level(ACTION_INVALIDATE, ts=2)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_STALE
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 10.5, 1.0, ts=3)))    # still not vouched for
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_STALE
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, ts=4)))
    assert engine.flags(1) == 0 and engine.counters()["invalidations"] == 1


@pytest.mark.parametrize("price", [1e39, 1e300, 1e15])
def test_an_absurd_level_value_is_a_lost_change_not_a_valid_entry(price):
    """Issue 21 item 5: an ask of 1e39 was published as inf in a valid entry."""
    engine = BookEngine(facts=facts())
    engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
    engine.apply(levels(level(ACTION_SET, SIDE_ASK, price, 1.0, ts=2)))
    assert engine.flags(1) == BOOK_FLAG_INVALID | BOOK_FLAG_GAP
    assert engine.top(1, SIDE_ASK) == [(11.0, 1.0)] and engine.counters()["bad_records"] == 1


# -- entries ---------------------------------------------------------------------------------------
@pytest.fixture
def book_rings(ring_name):
    levels_ring = shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 1 << 12, broadcast=True)
    books_ring = shmpipe.Ring.create(ring_name + "-b", ORDERBOOK_ENTRY, 1 << 10, broadcast=True)
    yield levels_ring, books_ring
    for r in (levels_ring, books_ring):
        r.unlink()
        r.close()


def test_entries_carry_the_top_50_best_first_with_counts_flags_and_sequence(book_rings):
    levels_ring, books_ring = book_rings
    bids = {round(100 - 0.01 * k, 2): 1.0 + k for k in range(60)}
    asks = {round(100.01 + 0.01 * k, 2): 2.0 + k for k in range(3)}
    with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
            books_ring.consumer() as reader:
        engine = BookEngine(lc, bp, facts=facts())
        lp.write_batch(levels(*snapshot(bids, asks, sid=4), level(ACTION_SET, SIDE_ASK, 100.02, 0.0, sid=4, ts=2),
                              checksum_record(1, sid=4, ts=2)))
        assert engine.pump() == 60 + 3 + 2 + 2
        entries = reader.read(100, timeout=0)
        assert len(entries) == 3        # snapshot-end, the delete, the checksum's flag change
        last = entries[-1]
        assert last["symbol_id"] == 4 and list(entries["sequence"]) == [1, 2, 3]
        assert last["bid_count"] == 50 and last["ask_count"] == 2
        expected_bids = sorted(bids.items(), reverse=True)[:50]
        # OrderbookEntry v2: the exact f64s the levels carried, not their f32 neighbours.
        np.testing.assert_array_equal(last["bids"], np.array(expected_bids, np.float64))
        np.testing.assert_array_equal(last["asks"][:2], np.array([(100.01, 2.0), (100.03, 4.0)], np.float64))
        assert 0 < last["published_ns"] and abs(int(last["published_ns"]) - time.time_ns()) < 60 * 10**9
        assert not last["asks"][2:].any()
        assert entries[0]["ask_count"] == 3 and entries[0]["flags"] == 0
        assert last["flags"] == BOOK_FLAG_INVALID | BOOK_FLAG_CHECKSUM_FAILED
        assert last["timestamp_ns"] == 2 and last["exchange_id"] == 5
        lp.write_batch(levels(*snapshot({1.0: 1.0}, {2.0: 1.0}, sid=4, ts=3)))
        engine.pump()
        (fresh,) = reader.read(10, timeout=0)
        assert fresh["bid_count"] == 1 and not fresh["bids"][1:].any() and fresh["flags"] == 0
        assert engine.counters()["snapshots_written"] == 4


def test_a_message_is_published_once_at_its_last_record_never_in_between(book_rings):
    """Issue 21 item 2: a Kraken message with one corrupted quantity went out as flags [0, 0, 5]
    (the wrong book twice as valid before its checksum record), and a crossing update as flags 0."""
    levels_ring, books_ring = book_rings
    with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
            books_ring.consumer() as reader:
        engine = BookEngine(lc, bp, facts=facts(1, 1))
        lp.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, last=False), checksum_record(0, ts=1)))
        engine.pump()
        reader.read(100, timeout=0)
        engine.apply(levels(*snapshot({10.0: 1.0}, {11.0: 1.0})))
        reader.read(100, timeout=0)
        good = engine.checksum(1)
        lp.write_batch(levels(level(ACTION_SET, SIDE_BID, 10.0, 2.0, ts=2, last=False),
                              level(ACTION_SET, SIDE_ASK, 11.0, 3.0, ts=2, last=False),
                              checksum_record(good ^ 1, ts=2)))
        engine.pump()
        entries = reader.read(100, timeout=0)
        assert entries["flags"].tolist() == [BOOK_FLAG_INVALID | BOOK_FLAG_CHECKSUM_FAILED]
        lp.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, ts=3),
                              level(ACTION_SET, SIDE_BID, 12.0, 1.0, ts=4)))     # bid 12 over ask 11
        engine.pump()
        entries = reader.read(100, timeout=0)
        assert entries["flags"].tolist() == [0, BOOK_FLAG_INVALID | BOOK_FLAG_CROSSED]


def test_a_conflated_entry_owed_is_not_written_in_the_middle_of_a_message(book_rings):
    levels_ring, books_ring = book_rings
    with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
            books_ring.consumer() as reader:
        engine = BookEngine(lc, bp, conflate_ms=60_000, facts=facts())
        lp.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}), level(ACTION_SET, SIDE_BID, 9.0, 1.0, ts=2)))
        engine.pump()
        assert len(reader.read(10, timeout=0)) == 1
        lp.write_batch(levels(level(ACTION_SET, SIDE_BID, 12.0, 1.0, ts=3, last=False)))   # crosses, for now
        engine.pump()
        assert engine.flush_due(force=True) == 0 and len(reader.read(10, timeout=0)) == 0
        lp.write_batch(levels(level(ACTION_SET, SIDE_BID, 12.0, 0.0, ts=3)))                # message ends
        engine.pump()
        assert engine.flush_due(force=True) == 1
        (owed,) = reader.read(10, timeout=0)
        assert owed["flags"] == 0 and owed["bids"][0].tolist() == [10.0, 1.0]


def test_conflation_writes_at_most_one_entry_per_symbol_per_interval(book_rings):
    levels_ring, books_ring = book_rings
    with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
            books_ring.consumer() as reader:
        engine = BookEngine(lc, bp, conflate_ms=60_000, facts=facts())
        rows = snapshot({10.0: 1.0}, {11.0: 1.0}) + snapshot({20.0: 1.0}, {21.0: 1.0}, sid=2)
        rows += [level(ACTION_SET, SIDE_BID, 9.0 - 0.01 * k, 1.0, ts=2 + k) for k in range(100)]
        lp.write_batch(levels(*rows))
        engine.pump()
        first = reader.read(100, timeout=0)
        assert sorted(first["symbol_id"]) == [1, 2]      # one each: the interval has not passed
        assert engine.flush_due() == 0
        assert engine.flush_due(force=True) == 1          # symbol 1 owes its last state
        (owed,) = reader.read(100, timeout=0)
        assert owed["symbol_id"] == 1 and owed["bid_count"] == 50 and owed["sequence"] == 2


def test_conflation_interval_passes(book_rings):
    levels_ring, books_ring = book_rings
    import time
    with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
            books_ring.consumer() as reader:
        engine = BookEngine(lc, bp, conflate_ms=5, facts=facts())
        lp.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}), level(ACTION_SET, SIDE_BID, 9.0, 1.0, ts=2)))
        engine.pump()
        assert len(reader.read(10, timeout=0)) == 1
        deadline = time.monotonic() + 10
        while engine.flush_due() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        (owed,) = reader.read(10, timeout=0)
        assert owed["bid_count"] == 2


def test_a_venues_change_of_precision_is_followed_not_failed_for_good():
    """Issue 21 item 4: the order book read a symbol's decimals once, so after the venue changed them
    every checksum failed and the book looped through resnapshots for good."""
    facts_now = {1: (2, 8, 0)}
    engine = BookEngine(facts=lambda sid: facts_now[sid])
    engine.apply(levels(*snapshot({10.25: 1.0}, {11.5: 1.0}, last=False), checksum_record(0, ts=1)))
    engine.apply(levels(*snapshot({10.25: 1.0}, {11.5: 1.0}, ts=2, last=False),
                        checksum_record(engine.checksum(1), ts=2)))
    assert engine.flags(1) == 0
    facts_now[1] = (3, 8, 0)                       # the venue now quotes 3 decimals; the registry says so
    good = checksum_of_text([("11.500", "1.00000000")], [("10.250", "1.00000000")])
    engine.apply(levels(*snapshot({10.25: 1.0}, {11.5: 1.0}, ts=3, last=False), checksum_record(good, ts=3)))
    assert engine.flags(1) == 0 and engine.counters()["checksum_failures"] == 1   # only the first, made-up sum
    engine.apply(levels(level(ACTION_SET, SIDE_BID, 10.251, 2.0, ts=4, last=False),
                        checksum_record(checksum_of_text([("11.500", "1.00000000")],
                                                         [("10.251", "2.00000000"), ("10.250", "1.00000000")]),
                                        ts=4)))
    assert engine.flags(1) == 0
