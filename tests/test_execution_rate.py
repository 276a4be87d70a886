"""A burst of 1,000 intents never exceeds the venue's rate limit at the emulator, and each intent
is answered: sent, or rejected with the reason (here: the engine's queue was full)."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from execution_helpers import Listener, remove_stats, start_emulator, start_engine, unique, wait_until

BURST = 1000
LIMIT, WINDOW_S = 100, 1.0
MAX_QUEUE = 400


@pytest.mark.timeout(120)
def test_burst_of_1000_keeps_the_rate_limit_and_answers_each(private_runtime_dir, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    from shmpipe import control
    from shmpipe import stats as shm_stats
    from shmpipe.signals import SignalBus, SignalPublisher

    venue_name, engine_name = unique("alpaca-paper"), unique("execute")
    bus = SignalBus()
    emulator, url = start_emulator(tmp_path, "--rate-limit", str(LIMIT), "--rate-window", str(WINDOW_S),
                                   name=venue_name)
    engine = start_engine(tmp_path, url, "--topics", "order.intent", "--rate-limit", str(LIMIT),
                          "--rate-window", str(WINDOW_S), "--max-queue", str(MAX_QUEUE), "--refresh", "60", "--name", engine_name)
    listener = Listener()
    publisher = SignalPublisher(None, source="test-strategy")
    try:
        engine.wait_for("reconciled", 30)
        wait_until(lambda: control.ping(engine_name), 10, "the engine answers")
        # the bus is subscribed end to end once a probe intent comes back answered
        probe = new_intent("burst", "probe", "AAPL", "buy", "1")
        wait_until(lambda: publisher.publish("order.intent", probe.to_data()) or "probe" in listener.states,
                   10, "a first answer")
        intents = [new_intent("burst", f"b{i}", "AAPL", "buy", "1") for i in range(BURST)]
        for intent in intents:
            publisher.publish("order.intent", intent.to_data())
        first_words = wait_until(lambda: all(i.intent_id in listener.states for i in intents) and
                                 Counter(listener.states[i.intent_id] for i in intents), 30, "each intent answered")
        wait_until(lambda: all(listener.states[i.intent_id] in ("sent", "rejected") for i in intents), 60,
                   "each queued intent sent")
        figures = control.request(engine_name, "stats")
        # the same counters reach `shmpipe metrics` through the engine's stats segment
        live = wait_until(lambda: (c := shm_stats.read(engine_name)["counters"])["orders_sent"] ==
                          figures["orders_sent"] and c, 5, "the stats segment caught up")
        assert live["rejected"] == figures["rejected"] and "signal_to_sent_p99_us" in live
        assert engine.stop() == 0, engine.text()
    finally:
        if engine.p.poll() is None:
            engine.kill9()
        emulator.stop()
        listener.close()
        publisher.close()
        bus.close()
        remove_stats(engine_name)
    venue = json.loads(emulator.stdout)
    assert venue["rate_limited"] == 0, f"{venue['rate_limited']} requests over the venue's limit"
    assert venue["max_requests_in_window"] <= LIMIT
    final = Counter(listener.states[i.intent_id] for i in intents)
    reasons = Counter(listener.reasons[i.intent_id] for i in intents if listener.states[i.intent_id] == "rejected")
    assert final["sent"] + final["rejected"] == BURST
    assert set(reasons) <= {f"queue full ({MAX_QUEUE})"}
    assert final["rejected"] > 0 and final["sent"] >= MAX_QUEUE    # the queue filled, and drained
    assert venue["orders"] == final["sent"] + 1                      # + the probe
    assert figures["rate_limit_waits"] > 0                           # the engine's bucket did the limiting
    assert first_words["queued"] + first_words["rejected"] + first_words["sent"] == BURST
