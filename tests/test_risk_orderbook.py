"""Risk marked by a real ``shmpipe orderbook``: the books ring's flags, as the order book sets them,
decide. A valid book is approved at its mid; a book that capture invalidated (a dropped
connection) or that crossed is refused with that reason (``book_rejects`` stale / invalid, the
detail naming the bits), never marked at its last good price; a fresh snapshot makes it valid again."""
from __future__ import annotations

import time

import pytest
from execution_helpers import Proc, remove_stats, unique, wait_until
from orderbook_helpers import level, levels, snapshot

LIMITS = """[limits]
max_order_value = "1000"
max_position_value = "1000000"
buying_power = "1000000"
max_daily_loss = "1000"
stale_book_s = 60
"""


@pytest.mark.timeout(90)
def test_risk_refuses_the_books_the_order_book_flags_and_says_why(private_runtime_dir, ring_name, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    import shmpipe
    from shmpipe import control, symbols
    from shmpipe.records import (
        ACTION_INVALIDATE,
        ACTION_SET,
        LEVEL_UPDATE,
        ORDERBOOK_ENTRY,
        SIDE_BID,
        SOURCE_SYNTHETIC,
    )
    from shmpipe.signals import SignalBus, SignalPublisher, SignalSubscriber

    sid = symbols.id_of("synthetic", "OBK/USD")
    limits = tmp_path / "limits.toml"
    limits.write_text(LIMITS)
    bus = SignalBus()
    levels_ring = shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 1 << 12, broadcast=True)
    books_ring = shmpipe.Ring.create(ring_name + "-b", ORDERBOOK_ENTRY, 1 << 10, broadcast=True)
    producer = levels_ring.producer()
    book_name, risk_name = unique("orderbook"), unique("risk")
    orderbook = Proc(["orderbook", "--levels", ring_name + "-l", "--books", ring_name + "-b", "--name", book_name],
                     tmp_path / "orderbook.log")
    risk = None
    answers = SignalSubscriber(None, ["risk."])
    publisher = SignalPublisher(None, source="test")
    n = iter(range(1000))
    ts = iter(range(1, 10**6))

    def write(rows) -> None:
        producer.write_batch(levels(*[r[:6] + (SOURCE_SYNTHETIC,) + r[7:] for r in rows]))

    def entries() -> int:
        return control.request(risk_name, "status")["marks_read"]

    def ask() -> tuple[str, str, str]:
        intent = new_intent("t", f"o{next(n)}", "OBK/USD", "buy", "1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # re-published until answered (the bus may be joining)
            publisher.publish("order.intent", intent.to_data())
            msg = answers.recv(timeout=0.3)
            while msg is not None:
                if msg.data["intent"]["intent_id"] == intent.intent_id:
                    return msg.topic, msg.data.get("reason", ""), msg.data.get("detail", "")
                msg = answers.recv(timeout=0.05)
        raise AssertionError("no answer from the risk manager")

    def then_ask(rows) -> tuple[str, str, str]:
        """Write one venue message, wait until risk has read the entry it makes, then ask."""
        seen = entries()
        write(rows)
        wait_until(lambda: entries() > seen, 10, "risk read the order book's new entry")
        return ask()

    try:
        wait_until(lambda: any(c["alive"] for c in levels_ring.stats()["consumers"]), 30, "the order book joined")
        risk = Proc(["risk", "--limits", str(limits), "--books", ring_name + "-b", "--json", "--name", risk_name],
                    tmp_path / "risk.log")
        risk.wait_for("answering order.intent", 30)
        assert then_ask(snapshot({99.99: 1.0}, {100.01: 1.0}, sid=sid, ts=next(ts)))[:2] == ("risk.approved", "")
        # capture lost its connection: the book is unknown until the next snapshot, whatever it was
        topic, reason, detail = then_ask([level(ACTION_INVALIDATE, sid=sid, ts=next(ts))])
        assert (topic, reason) == ("risk.rejected", "book") and "stale (capture invalidated it)" in detail, detail
        assert then_ask(snapshot({99.99: 1.0}, {100.01: 1.0}, sid=sid, ts=next(ts)))[:2] == ("risk.approved", "")
        # a bid through the ask: the order book flags the book crossed (and invalid)
        topic, reason, detail = then_ask([level(ACTION_SET, SIDE_BID, 100.02, 1.0, sid=sid, ts=next(ts))])
        assert (topic, reason) == ("risk.rejected", "book") and "crossed" in detail, detail
        status = control.request(risk_name, "status")
        assert status["book_rejects"] == {"stale": 1, "invalid": 1} and status["approved"] == 2, status
        assert risk.stop() == 0, risk.text()
        assert orderbook.stop() == 0, orderbook.text()
    finally:
        for proc in (risk, orderbook):
            if proc is not None and proc.p.poll() is None:
                proc.kill9()
        answers.close()
        publisher.close()
        bus.close()
        producer.close()
        for ring in (levels_ring, books_ring):
            ring.unlink()
            ring.close()
        remove_stats(book_name, risk_name)
