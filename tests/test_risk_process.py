"""``shmpipe risk`` as a process: marks from a live books ring (a stale or invalid book is a
rejection), limits reloaded over the control plane (a bad file refused, the limits in force kept),
each intent answered with its reason on the bus."""
from __future__ import annotations

import time

import pytest
from execution_helpers import BookWriter, Proc, remove_stats, unique, wait_until

LIMITS = """[limits]
max_order_value = "{order}"
max_position_value = "1000000"
buying_power = "1000000"
max_daily_loss = "1000"
stale_book_s = 0.5
"""


@pytest.mark.timeout(90)
def test_risk_process_marks_to_the_live_book_and_reloads_limits(private_runtime_dir, ring_name, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    import shmpipe
    from shmpipe import control, symbols
    from shmpipe.records import BOOK_FLAG_INVALID, ORDERBOOK_ENTRY
    from shmpipe.signals import SignalBus, SignalPublisher, SignalSubscriber

    sid = symbols.id_of("synthetic", "RSK/USD")
    limits = tmp_path / "limits.toml"
    limits.write_text(LIMITS.format(order="1000"))
    bus = SignalBus()
    ring = shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 256, broadcast=True)
    writer = BookWriter(ring, sid)
    name = unique("risk")
    risk = Proc(["risk", "--limits", str(limits), "--books", ring_name, "--json", "--name", name],
                tmp_path / "risk.log")
    answers = SignalSubscriber(None, ["risk."])
    publisher = SignalPublisher(None, source="test")
    n = iter(range(1000))

    def ask(qty: str) -> tuple[str, str]:
        intent = new_intent("t", f"r{next(n)}", "RSK/USD", "buy", qty)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # re-published until answered (the bus may be joining)
            publisher.publish("order.intent", intent.to_data())
            msg = answers.recv(timeout=0.3)
            while msg is not None:
                if msg.data["intent"]["intent_id"] == intent.intent_id:
                    return msg.topic, msg.data.get("reason", "")
                msg = answers.recv(timeout=0.05)
        raise AssertionError("no answer from the risk manager")

    try:
        risk.wait_for("answering order.intent", 30)
        # the first intent must not race the first book entry (it would be rightly refused: no book)
        wait_until(lambda: control.request(name, "status")["marks_read"] > 0, 10, "risk read a book entry")
        assert ask("9.99") == ("risk.approved", "")                   # 9.99 x mid 100.00 = 999.00
        assert ask("10") == ("risk.rejected", "max_order_value")      # 1000.00: equal is refused
        writer.live.clear()                                           # the book goes stale
        time.sleep(0.8)
        assert ask("1") == ("risk.rejected", "book")
        writer.flags = BOOK_FLAG_INVALID
        writer.live.set()
        time.sleep(0.2)
        assert ask("1") == ("risk.rejected", "book")
        writer.flags = 0
        time.sleep(0.2)
        assert ask("1") == ("risk.approved", "")
        limits.write_text(LIMITS.format(order="2000"))
        assert control.request(name, "reload")["limits"]["max_order_value"] == "2000"
        assert ask("10") == ("risk.approved", "")
        limits.write_text(LIMITS.format(order="12.5").replace('"12.5"', "12.5"))   # a float: refused
        with pytest.raises(control.ControlError, match="floats are not exact.*unchanged"):
            control.request(name, "reload")
        assert ask("19.99") == ("risk.approved", "")                   # 2000 still in force
        status = control.request(name, "status")
        assert status["rejects"] == {"max_order_value": 1, "book": 2} and status["limits"]["max_order_value"] == "2000"
        assert status["book_rejects"] == {"stale": 1, "invalid": 1} and status["marks"] == "books"
        assert risk.stop() == 0, risk.text()
    finally:
        if risk.p.poll() is None:
            risk.kill9()
        writer.close()
        answers.close()
        publisher.close()
        bus.close()
        ring.unlink()
        ring.close()
        remove_stats(name)
