"""The engine's journal: a venue update applied twice, or an older one after a newer, adds no fill;
positions and the replayed book come from the recorded fills exactly."""
from __future__ import annotations

from decimal import Decimal as D

from shmpipe_services.execution.journal import Journal
from shmpipe_services.trading.intents import new_intent
from shmpipe_services.trading.positions import PositionBook


def order(cid: str, status: str, filled: str, avg: str | None) -> dict:
    return {"id": "v-" + cid, "client_order_id": cid, "status": status, "filled_qty": filled,
            "filled_avg_price": avg}


def test_updates_are_idempotent_and_fills_exact(tmp_path):
    journal = Journal(str(tmp_path / "j.sqlite"))
    try:
        buy = new_intent("s", "a", "X", "buy", "3")
        sell = new_intent("s", "b", "X", "sell", "1")
        for it in (buy, sell):
            assert journal.add_intent(it.client_order_id, it.to_data(), "queued", "", 1)
        assert not journal.add_intent(buy.client_order_id, buy.to_data(), "queued", "", 1)    # known: refused
        a, b = buy.client_order_id, sell.client_order_id
        assert journal.apply_venue_order(a, order(a, "partially_filled", "1", "0.1"), "partial_fill") == (D("1"), D("0.1"))
        assert journal.apply_venue_order(a, order(a, "partially_filled", "1", "0.1"), "partial_fill") is None
        # the rest: 2 more at 0.4 -> cumulative 3 at avg 0.3 (0.1 + 0.8 = 0.9 / 3)
        assert journal.apply_venue_order(a, order(a, "filled", "3", "0.3"), "fill") == (D("2"), D("0.4"))
        assert journal.apply_venue_order(a, order(a, "new", "0", None), "new") is None    # older: ignored
        row = journal.get(a)
        assert (row.state, row.venue_status, row.filled_qty) == ("sent", "filled", D("3"))
        assert journal.apply_venue_order(b, order(b, "filled", "1", "0.5"), "fill") == (D("1"), D("0.5"))
        assert journal.positions() == {"X": D("2")}
        book = PositionBook()
        realized = [book.apply_fill(s, side, q, p) for _ts, s, side, q, p in journal.fills()]
        assert realized == [D(0), D(0), D("0.2")]                        # sold 1 at 0.5 against avg 0.3
        assert book.to_json()["positions"] == {"X": {"qty": "2", "avg_price": "0.3"}}
    finally:
        journal.close()


def test_a_journal_that_cannot_be_opened_is_one_line(tmp_path):
    import pytest

    from shmpipe_services.execution.journal import JournalError
    with pytest.raises(JournalError, match=r"journal .*/missing/j.sqlite"):
        Journal(str(tmp_path / "missing" / "j.sqlite"))


def test_a_stream_fill_gives_the_exact_price_where_the_average_is_rounded(tmp_path):
    journal = Journal(str(tmp_path / "j.sqlite"))
    try:
        it = new_intent("s", "c", "X", "buy", "3")
        cid = it.client_order_id
        journal.add_intent(cid, it.to_data(), "queued", "", 1)
        # 1 at 0.1 then 2 at 0.2000000001: the venue's average 0.1666666667 is rounded
        assert journal.apply_venue_order(cid, order(cid, "partially_filled", "1", "0.1"), "partial_fill",
                                         (D("1"), D("0.1"))) == (D("1"), D("0.1"))
        assert journal.apply_venue_order(cid, order(cid, "filled", "3", "0.1666666667"), "fill",
                                         (D("2"), D("0.2000000001"))) == (D("2"), D("0.2000000001"))
        # a fill event that does not account for the whole increase: derived from the average
        it2 = new_intent("s", "d", "X", "buy", "2")
        journal.add_intent(it2.client_order_id, it2.to_data(), "queued", "", 1)
        assert journal.apply_venue_order(it2.client_order_id, order(it2.client_order_id, "filled", "2", "0.5"),
                                         "fill", (D("1"), D("0.4"))) == (D("2"), D("0.5"))
    finally:
        journal.close()
