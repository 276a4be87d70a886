"""What the export makes of LevelUpdate records capture writes after issue 21 (DESIGN.md): flags bit4
("last record of a venue message") sets F_LAST where capture put it, even inside one frame, and an
invalidate (action 5) empties the book: an ``invalidate`` row, a Nautilus CLEAR, hftbacktest clears.
A stand-in parser turns each frame (JSON: a list of records) into exactly those records."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from export_helpers import T0

from shmpipe.records import ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, SIDE_ASK, SIDE_BID
from shmpipe.wslog import encode_entry
from shmpipe_services.capture.bad_input import BadInputLog
from shmpipe_services.capture.record_batch import pack_level
from shmpipe_services.export.source import ACTION_INVALIDATE, LEVEL_FLAG_LAST, ROW_LAST, CaptureSource

LAST = LEVEL_FLAG_LAST


class RecordsParser:
    """A venue parser stand-in: the frame is a JSON list of [symbol, action, side, price, size, flags]."""

    exchange = "kraken"

    def __init__(self, symbol_id) -> None:
        self.symbol_id = symbol_id
        self.bad_input = BadInputLog("kraken")
        self.errors, self.gap_counts = Counter(), Counter()

    def reset_connection(self) -> None:
        pass

    def feed(self, frame: bytes, batch, recv_ns: int) -> None:
        for symbol, action, side, price, size, flags in json.loads(frame):
            sid = self.symbol_id("kraken", symbol, price_decimals=1, size_decimals=2, depth=0)
            batch.levels += pack_level(recv_ns - 500, price, size, sid, side, action, 5, flags)


def snapshot(symbol, bids, asks, last=True):
    rows = [[symbol, ACTION_SNAPSHOT_BEGIN, 0, 0.0, 0.0, 0]]
    rows += [[symbol, ACTION_SET, SIDE_BID, p, s, 0] for p, s in bids]
    rows += [[symbol, ACTION_SET, SIDE_ASK, p, s, 0] for p, s in asks]
    rows.append([symbol, ACTION_SNAPSHOT_END, 0, 0.0, 0.0, LAST if last else 0])
    return rows


FRAMES = [
    snapshot("BTC/USD", [(100.0, 1.0), (99.5, 2.0)], [(101.0, 1.5)]),
    # one frame, two groups capture marked itself: F_LAST after the first two updates and at the end
    [["BTC/USD", ACTION_SET, SIDE_BID, 100.5, 0.25, 0], ["BTC/USD", ACTION_SET, SIDE_ASK, 101.0, 0.0, LAST],
     ["BTC/USD", ACTION_SET, SIDE_ASK, 102.0, 3.0, 0], ["BTC/USD", ACTION_SET, SIDE_BID, 99.5, 0.0, LAST]],
    # the connection dropped: capture can no longer vouch for the book
    [["BTC/USD", ACTION_INVALIDATE, 0, 0.0, 0.0, LAST]],
    snapshot("BTC/USD", [(98.0, 4.0)], [(98.5, 0.5)]),
]


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "records.wslog"
    with open(path, "wb") as f:
        for i, frame in enumerate(FRAMES):
            f.write(encode_entry(T0 + (i + 1) * 1_000_000, 2, json.dumps(frame).encode()))
    return path


def source_of(path, **options) -> CaptureSource:
    source = CaptureSource([str(path)], **options)
    source._parsers = {"kraken": RecordsParser}
    return source


def test_bit4_marks_the_groups_and_invalidate_is_a_row(capture):
    source = source_of(capture)
    book = np.concatenate([c.book for c in source.chunks()])
    last = book["flags"] & ROW_LAST > 0
    # frame 1: at its snapshot end; frame 2: twice, where capture put bit4; frames 3 and 4: once each
    assert Counter(book["msg"][last].tolist()) == {1: 1, 2: 2, 3: 1, 4: 1}
    assert book["action"][book["msg"] == 3].tolist() == [ACTION_INVALIDATE]
    group_ends = np.flatnonzero(last & (book["msg"] == 2))
    assert book["price"][group_ends].tolist() == [101.0, 99.5]


def test_invalidate_is_a_clear_in_every_target(capture, tmp_path):
    import pandas as pd
    from nautilus_trader.model.book import OrderBook
    from nautilus_trader.model.enums import BookAction, BookType, RecordFlag

    from shmpipe_services.export.nautilus_target import NautilusExport
    from shmpipe_services.export.parquet_target import ParquetExport
    targets = {"parquet": ParquetExport(tmp_path / "pq"), "nautilus": NautilusExport(tmp_path / "nt")}
    for target in targets.values():
        source = source_of(capture)
        for chunk in source.chunks():
            target.add(chunk, source.instruments)
        target.close(source.instruments)
    rows = pd.read_parquet(tmp_path / "pq" / "book_changes")
    assert rows.action.tolist().count("invalidate") == 1
    from nautilus_trader.persistence.catalog import ParquetDataCatalog
    deltas = ParquetDataCatalog(str(tmp_path / "nt")).order_book_deltas()
    clears = [d for d in deltas if d.action == BookAction.CLEAR]
    assert len(clears) == 3                         # two snapshots and the invalidate
    assert sum(1 for d in deltas if d.flags & int(RecordFlag.F_LAST)) == 5
    book = OrderBook(deltas[0].instrument_id, BookType.L2_MBP)
    for d in deltas:
        book.apply_delta(d)
        if d is clears[1]:
            assert book.best_bid_price() is None and book.best_ask_price() is None
    assert (float(book.best_bid_price()), float(book.best_ask_price())) == (98.0, 98.5)


def test_invalidate_clears_both_sides_in_hftbacktest(capture, tmp_path):
    from hftbacktest.types import BUY_EVENT, DEPTH_CLEAR_EVENT, SELL_EVENT

    from shmpipe_services.export.hftbacktest_target import HftbacktestExport
    target = HftbacktestExport(tmp_path / "hbt")
    source = source_of(capture)
    for chunk in source.chunks():
        target.add(chunk, source.instruments)
    target.close(source.instruments)
    data = np.load(tmp_path / "hbt" / "kraken" / "BTC_USD" / "20240611.npz")["data"]
    at_invalidate = data[data["local_ts"] == T0 + 3_000_000]
    assert (at_invalidate["ev"] & 0xFF).tolist() == [DEPTH_CLEAR_EVENT, DEPTH_CLEAR_EVENT]
    # each clear reaches the farthest level held: the book then was bid 100.5/100.0, ask 102.0
    assert [(bool(ev & BUY_EVENT), bool(ev & SELL_EVENT), px) for ev, px in
            zip(at_invalidate["ev"], at_invalidate["px"])] == [(True, False, 100.0), (False, True, 102.0)]


def test_from_opens_with_a_synthetic_snapshot_of_the_book_then(capture):
    source = source_of(capture, start_ns=T0 + 2_500_000)        # after frame 2, before the invalidate
    book = np.concatenate([c.book for c in source.chunks()])
    first = book[book["recv_ns"] == T0 + 2_500_000]
    assert first["action"][0] == ACTION_SNAPSHOT_BEGIN and first["action"][-1] == ACTION_SNAPSHOT_END
    levels = first[first["action"] == ACTION_SET]
    # the book after frames 1-2: bids 100.5, 100.0 (99.5 deleted), asks 102.0 (101.0 deleted)
    assert [(int(s), p) for s, p in zip(levels["side"], levels["price"])] == [(0, 100.5), (0, 100.0), (1, 102.0)]
    assert source.counts.before_window == 2
