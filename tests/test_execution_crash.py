"""The execution engine killed with SIGKILL at random points, against the venue emulator with its
faults on: afterwards the venue holds each intended order exactly once, nothing else, and the
engine's positions equal the venue's."""
from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest
from execution_helpers import Listener, remove_stats, start_emulator, start_engine, unique, wait_until

INTENTS = 1000
KILLS = 20
FINAL = ("sent", "rejected", "failed")


def journal_rows(path) -> dict[str, tuple[str, str, str]]:
    db = sqlite3.connect(path)
    try:
        return {cid: (intent_id, state, reason) for cid, intent_id, state, reason in
                db.execute("SELECT client_order_id, intent_id, state, reason FROM orders")}
    finally:
        db.close()


@pytest.mark.timeout(240)
def test_kill_9_twenty_times_leaves_each_order_once_and_positions_equal(private_runtime_dir, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    from shmpipe import control
    from shmpipe.signals import SignalBus, SignalPublisher

    rng = random.Random(27)
    venue_name, engine_name = unique("alpaca-paper"), unique("execute")
    bus = SignalBus()
    emulator, url = start_emulator(
        tmp_path, "--faults", "rate=0.03,error=0.03,timeout=0.02,drop=0.01,partial=0.1,reject=0.01",
        "--seed", "27", "--timeout-delay", "1.0", "--partial-delay", "0.1",
        "--rate-limit", "100000", "--rate-window", "1", name=venue_name)
    listener = Listener()
    publisher = SignalPublisher(None, source="test-strategy")
    symbols = ["AAPL", "MSFT", "XYZ"]
    intents = [new_intent("crash-test", f"i{i}", symbols[i % 3], "buy" if i % 4 else "sell", str(1 + i % 5))
               for i in range(INTENTS)]
    by_id = {it.intent_id: it for it in intents}
    fast = ("--topics", "order.intent", "--rate-limit", "100000", "--rate-window", "1", "--name", engine_name)
    engine = start_engine(tmp_path, url, *fast, "--seed", "1", log="engine-0.log")
    stop_publishing = threading.Event()

    def republish() -> None:
        # The bus drops what a dead engine would have read: the strategy side re-publishes every
        # intent without a final answer; the engine's journal makes a repeat harmless.
        while not stop_publishing.is_set():
            for intent_id, intent in by_id.items():
                if listener.states.get(intent_id) not in FINAL:
                    publisher.publish("order.intent", intent.to_data())
            stop_publishing.wait(0.5)

    publishing = threading.Thread(target=republish, daemon=True)
    kills = 0
    try:
        engine.wait_for("reconciled", 30)
        publishing.start()
        while kills < KILLS:
            time.sleep(rng.uniform(0.05, 0.5))
            engine.kill9()
            kills += 1
            engine = start_engine(tmp_path, url, *fast, "--seed", str(kills + 1), log=f"engine-{kills}.log")
            if kills % 4 != 3:
                engine.wait_for("reconciled", 30)
            # else: the next kill may land while it starts or reconciles
        engine.wait_for("reconciled", 30)
        answered = lambda: sum(listener.states.get(i) in FINAL for i in by_id) == INTENTS
        wait_until(answered, 120, "every intent answered sent, rejected or failed")
        stop_publishing.set()
        publishing.join(5)
        # The engine's positions settle once every fill (a partial's second half too) is in.
        last: list = []

        def settled() -> tuple[dict, dict] | None:
            # Two reads of each side, equal, around a comparison the engine made itself: no fill
            # was in flight (a partial's second half, one a dropped stream lost) while reading.
            try:
                engine_positions = {s: Decimal(q) for s, q in control.request(engine_name, "positions").items()}
                venue_positions = {p["symbol"]: Decimal(p["qty"])
                                   for p in control.request(venue_name, "positions")["positions"]}
                last[:] = [engine_positions, venue_positions]
                mismatches = control.request(engine_name, "compare_positions", timeout=10)["mismatches"]
                if mismatches:
                    last.append(mismatches)
                    return None
            except control.ControlError as exc:     # the venue's answer was a fault this time
                last[:] = [str(exc)]
                return None
            again = {s: Decimal(q) for s, q in control.request(engine_name, "positions").items()}
            return (engine_positions, venue_positions) if again == engine_positions else None

        try:
            engine_positions, venue_positions = wait_until(settled, 30, "the engine's positions settle")
        except AssertionError:
            raise AssertionError(f"the engine's positions did not settle to the venue's: {last}\n"
                                 f"{engine.text()[-3000:]}") from None
        venue_orders = control.request(venue_name, "orders", timeout=10)["orders"]
        assert engine.stop() == 0, engine.text()
    finally:
        stop_publishing.set()
        if engine.p.poll() is None:
            engine.kill9()
        emulator_rc = emulator.stop()
        listener.close()
        publisher.close()
        bus.close()
        remove_stats(engine_name)
    assert emulator_rc == 0, emulator.text()
    assert kills == KILLS

    rows = journal_rows(tmp_path / "journal.sqlite")
    assert len(rows) == INTENTS, f"{len(rows)} intents journaled"
    per_client_id = Counter(order["client_order_id"] for order in venue_orders)
    states = Counter(state for _, state, _ in rows.values())
    for intent in intents:
        cid = intent.client_order_id
        intent_id, state, reason = rows[cid]
        assert intent_id == intent.intent_id
        assert state in FINAL, f"{intent.intent_id} left {state}"
        expected = 1 if state == "sent" else 0
        assert per_client_id[cid] == expected, f"{intent.intent_id} ({state}: {reason}) is {per_client_id[cid]} " \
                                               f"times at the venue"
    assert sum(per_client_id.values()) == states["sent"], "the venue holds orders no intent asked for"
    assert {s: q for s, q in engine_positions.items()} == venue_positions
    # the faults did happen, and the engine met them as designed
    emulator_figures = json.loads(emulator.stdout)
    print(f"\nkill -9 x{kills}: journal {dict(states)}; venue {emulator_figures}")
    assert emulator_figures["fault_timeout"] > 0 and emulator_figures["fault_error_after"] > 0
    assert emulator_figures["duplicates_refused"] > 0     # retries re-sent the same id and were refused
    assert states["sent"] > INTENTS * 0.9
