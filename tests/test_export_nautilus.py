"""``shmpipe export nautilus``: the catalog read back with NautilusTrader's own ParquetDataCatalog
(instruments, order_book_deltas, trade_ticks), and a Nautilus OrderBook replaying the deltas ends
with the same top of book as shmpipe's order book over the same frames; trade counts match."""
from __future__ import annotations

import json

import pytest
from export_helpers import PARSERS, ShmpipeBooks, known_top5, recv_ns, run_cli, venue_lines, write_wslog
from shmpipe_services.capture.record_batch import RecordBatch
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds

import nautilus_trader  # noqa: F401 - the dev extra installs it: missing, fail
from nautilus_trader.model.book import OrderBook  # noqa: E402
from nautilus_trader.model.enums import BookAction, BookType, RecordFlag  # noqa: E402
from nautilus_trader.persistence.catalog import ParquetDataCatalog  # noqa: E402

from shmpipe.records import ACTION_TRADE  # noqa: E402

F_LAST, F_SNAPSHOT = int(RecordFlag.F_LAST), int(RecordFlag.F_SNAPSHOT)


def export(tmp_path, capture):
    out = tmp_path / "catalog"
    code, stdout, stderr = run_cli("export", "nautilus", str(capture), "--out", str(out), "--json")
    assert code == 0, stderr
    return out, json.loads(stdout)


def trade_records(venue: str, lines) -> int:
    parser, batch, n = PARSERS[venue](InMemorySymbolIds()), RecordBatch(), 0
    for i, line in enumerate(lines):
        parser.feed(line, batch, recv_ns(i))
        _ticks, levels = batch.take()
        n += int((levels["action"] == ACTION_TRADE).sum())
    return n


@pytest.mark.parametrize("venue", ["kraken", "coinbase"])
def test_catalog_deltas_rebuild_shmpipes_top_of_book_and_trades_match(venue, tmp_path, ring_name):
    lines = venue_lines(venue, extra_trades=6 if venue == "coinbase" else 0)
    capture = write_wslog(tmp_path / f"{venue}.wslog", venue, lines)
    out, summary = export(tmp_path, capture)
    catalog = ParquetDataCatalog(str(out))
    instruments = {str(i.id): i for i in catalog.instruments()}
    venue_name = venue.upper()
    assert set(instruments) == {f"{s}.{venue_name}" for s in known_top5(venue)}
    deltas = catalog.order_book_deltas()
    trades = catalog.trade_ticks()
    assert len(deltas) == summary["rows"]["order_book_deltas"] > 0
    assert len(trades) == summary["rows"]["trade_ticks"] == trade_records(venue, lines)
    if venue == "coinbase":
        assert len(trades) == 6

    books = ShmpipeBooks(venue, lines, ring_name)
    try:
        books.advance_to(recv_ns(len(lines) + 1))
        for iid, instrument in instruments.items():
            symbol = instrument.raw_symbol.value
            mine = [d for d in deltas if str(d.instrument_id) == iid]
            # a CLEAR opens every snapshot; F_LAST closes every venue message; a CLEAR without
            # F_SNAPSHOT is capture's invalidate: Coinbase's fixture has one connection-wide gap
            assert mine[0].action == BookAction.CLEAR
            unvouched = [d for d in mine if d.action == BookAction.CLEAR and not d.flags & F_SNAPSHOT]
            assert len(unvouched) == (1 if venue == "coinbase" else 0), symbol
            assert mine[-1].flags & F_LAST
            assert [d.ts_init for d in mine] == sorted(d.ts_init for d in mine)
            book = OrderBook(instrument.id, BookType.L2_MBP)
            for d in mine:
                book.apply_delta(d)
            want_bid, want_ask = books.best(symbol)
            assert float(book.best_bid_price()) == want_bid, symbol
            assert float(book.best_ask_price()) == want_ask, symbol
            # and the known answer, as the venue's decimal text
            known = known_top5(venue)[symbol]
            assert (book.best_bid_price().as_decimal(), book.best_ask_price().as_decimal()) == \
                (known["bids"][0][0], known["asks"][0][0])
            for levels, want in ((book.bids()[:5], known["bids"]), (book.asks()[:5], known["asks"])):
                # L2 (market by price): one order per level, carrying the level's size
                assert [(lv.price.as_decimal(), lv.orders()[0].size.as_decimal()) for lv in levels] == want
            assert instrument.price_precision == books.registry.facts[books.sid(symbol)].price_decimals
            assert instrument.size_precision == books.registry.facts[books.sid(symbol)].size_decimals
    finally:
        books.close()


def test_f_last_marks_one_delta_per_venue_message(tmp_path):
    lines = venue_lines("kraken")
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", lines)
    out, _summary = export(tmp_path, capture)
    deltas = ParquetDataCatalog(str(out)).order_book_deltas()
    book_messages = sum(1 for line in lines if line.startswith(b'{"channel":"book"'))
    # every Kraken book message names one symbol: one F_LAST each, on the last delta of its sequence
    assert sum(1 for d in deltas if d.flags & F_LAST) == book_messages
    by_message: dict[tuple, list] = {}
    for d in deltas:
        by_message.setdefault((str(d.instrument_id), d.sequence), []).append(d)
    assert len(by_message) == book_messages
    assert all(group[-1].flags & F_LAST and not any(d.flags & F_LAST for d in group[:-1])
               for group in by_message.values())



def test_from_opens_the_catalog_with_a_snapshot_and_ends_with_the_known_book(tmp_path):
    lines = venue_lines("kraken")
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", lines)
    out = tmp_path / "catalog"
    code, stdout, stderr = run_cli("export", "nautilus", str(capture), "--out", str(out), "--json",
                                   "--from", str(recv_ns(2000)))
    assert code == 0, stderr
    catalog = ParquetDataCatalog(str(out))
    for instrument in catalog.instruments():
        deltas = [d for d in catalog.order_book_deltas() if d.instrument_id == instrument.id]
        assert deltas[0].action == BookAction.CLEAR and deltas[0].ts_init == recv_ns(2000)
        book = OrderBook(instrument.id, BookType.L2_MBP)
        for d in deltas:
            book.apply_delta(d)
        known = known_top5("kraken")[instrument.raw_symbol.value]
        assert [(lv.price.as_decimal(), lv.orders()[0].size.as_decimal()) for lv in book.asks()[:5]] == known["asks"]
        assert [(lv.price.as_decimal(), lv.orders()[0].size.as_decimal()) for lv in book.bids()[:5]] == known["bids"]
