"""The execution engine's kill switch, slippage protection, keys and start-up against a venue it
cannot reach: real processes against the emulator."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest
from execution_helpers import (
    KEYS,
    SHMPIPE,
    BookWriter,
    Listener,
    remove_stats,
    start_emulator,
    start_engine,
    unique,
    wait_until,
)


def answer_of(listener: Listener, publisher, intent, timeout: float = 15.0) -> tuple[str, str]:
    """Publish ``intent`` until the engine says something final about it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish("order.intent", intent.to_data())
        state = listener.states.get(intent.intent_id)
        if state in ("sent", "rejected", "failed"):
            return state, listener.reasons.get(intent.intent_id, "")
        time.sleep(0.1)
    raise AssertionError(f"no final answer for {intent.intent_id} (last: {listener.states.get(intent.intent_id)})")


@pytest.mark.timeout(120)
def test_halt_cancels_open_orders_refuses_new_ones_and_survives_a_restart(private_runtime_dir, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    from shmpipe import control
    from shmpipe.signals import SignalBus, SignalPublisher

    venue_name, engine_name = unique("alpaca-paper"), unique("execute")
    bus = SignalBus()
    emulator, url = start_emulator(tmp_path, name=venue_name)
    args = ("--topics", "order.intent", "--name", engine_name)
    engine = start_engine(tmp_path, url, *args)
    listener = Listener()
    publisher = SignalPublisher(None, source="test")
    try:
        engine.wait_for("reconciled")
        resting = [new_intent("h", f"rest{i}", "AAPL", "buy", "1", type="limit", limit_price="1") for i in range(5)]
        for intent in resting:                      # 1 under the price of 100: they rest, open
            assert answer_of(listener, publisher, intent) == ("sent", "")
        assert control.request(venue_name, "stats")["open_orders"] == 5
        assert control.request(engine_name, "halt")["halted"] is True
        wait_until(lambda: control.request(venue_name, "stats")["open_orders"] == 0, 15, "open orders cancelled")
        wait_until(lambda: listener.messages.get("execution.halted"), 10, "the halt said on the bus")
        halted = listener.messages["execution.halted"][-1]
        assert (halted["halted"], halted["cancelled"]) == (True, 5)
        assert answer_of(listener, publisher, new_intent("h", "after", "AAPL", "buy", "1")) == ("rejected", "halted")
        assert engine.stop() == 0, engine.text()
        engine = start_engine(tmp_path, url, *args, log="engine-2.log")       # still halted after a restart
        engine.wait_for(r"reconciled.*\(halted\)")
        assert answer_of(listener, publisher, new_intent("h", "restart", "AAPL", "buy", "1")) == ("rejected", "halted")
        control.request(engine_name, "release")
        assert answer_of(listener, publisher, new_intent("h", "released", "AAPL", "buy", "1")) == ("sent", "")
        assert control.request(engine_name, "stats")["cancelled"] == 0      # this process cancelled none
        assert engine.stop() == 0, engine.text()
    finally:
        if engine.p.poll() is None:
            engine.kill9()
        emulator.stop()
        listener.close()
        publisher.close()
        bus.close()
        remove_stats(engine_name)


@pytest.mark.timeout(90)
def test_slippage_protection_refuses_a_limit_through_the_mid(private_runtime_dir, ring_name, tmp_path):
    from shmpipe_services.trading.intents import new_intent

    import shmpipe
    from shmpipe import symbols
    from shmpipe.records import ORDERBOOK_ENTRY
    from shmpipe.signals import SignalBus, SignalPublisher

    sid = symbols.id_of("synthetic", "SLP/USD")                 # mid 100.00 (99.99 / 100.01)
    venue_name, engine_name = unique("alpaca-paper"), unique("execute")
    bus = SignalBus()
    ring = shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 256, broadcast=True)
    writer = BookWriter(ring, sid)
    emulator, url = start_emulator(tmp_path, name=venue_name)
    engine = start_engine(tmp_path, url, "--topics", "order.intent", "--name", engine_name, "--books", ring_name,
                          "--slippage-bps", "10")
    listener = Listener()
    publisher = SignalPublisher(None, source="test")
    try:
        engine.wait_for("reconciled")
        ask = lambda i, side, price: answer_of(listener, publisher,
                                               new_intent("slip", i, "SLP/USD", side, "1", type="limit",
                                                          limit_price=price))
        assert ask("b1", "buy", "100.10") == ("sent", "")           # exactly 10 bps through: allowed
        state, reason = ask("b2", "buy", "100.11")
        assert state == "rejected" and reason.startswith("slippage: buy limit 100.11 more than 10 bps above mid 100")
        assert ask("s1", "sell", "99.90") == ("sent", "")
        assert ask("s2", "sell", "99.89")[0] == "rejected"
        writer.live.clear()                                          # no fresh book: no mark, no order
        time.sleep(2.5)
        state, reason = ask("b3", "buy", "100")
        assert state == "rejected" and reason.startswith("slippage: no mark (book stale")
        assert engine.stop() == 0, engine.text()
    finally:
        if engine.p.poll() is None:
            engine.kill9()
        emulator.stop()
        writer.close()
        listener.close()
        publisher.close()
        bus.close()
        ring.unlink()
        ring.close()
        remove_stats(engine_name)


@pytest.mark.timeout(90)
def test_keys_are_never_shown_and_wrong_keys_keep_the_engine_reconciling(private_runtime_dir, tmp_path):
    from shmpipe import control
    from shmpipe import stats as shm_stats
    from shmpipe.signals import SignalBus

    venue_name, engine_name = unique("alpaca-paper"), unique("execute")
    bus = SignalBus()
    emulator, url = start_emulator(tmp_path, name=venue_name)
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('key_id = "wrong-key-id-789"\nsecret_key = "wrong-secret-000"\n')
    os.chmod(keys_file, 0o600)
    engine = start_engine(tmp_path, url, "--name", engine_name, "--keys-file", str(keys_file))
    try:
        engine.wait_for("cannot reconcile.*request is not authorized", 20)
        status = control.request(engine_name, "status")
        assert status["state"].startswith("reconciling") and status["keys"] == "***"
        seen = json.dumps(status) + json.dumps(shm_stats.read(engine_name)) + engine.text()
        assert engine.stop() == 0
        seen += engine.stdout.decode() + engine.text()
    finally:
        if engine.p.poll() is None:
            engine.kill9()
        emulator.stop()
        bus.close()
        remove_stats(engine_name)
    for secret in ("wrong-key-id-789", "wrong-secret-000", *KEYS.values()):
        assert secret not in seen


@pytest.mark.parametrize("mode, words", [(0o644, "must belong to this user and be mode 0600"),
                                         (None, "No such file")])
def test_a_keys_file_open_to_others_or_missing_is_one_line(tmp_path, mode, words):
    import subprocess

    keys_file = tmp_path / "keys.toml"
    if mode is not None:
        keys_file.write_text('key_id = "k-123456"\nsecret_key = "s-654321"\n')
        os.chmod(keys_file, mode)
    done = subprocess.run(SHMPIPE + ["execute", "--journal", str(tmp_path / "j.sqlite"), "--keys-file",
                                     str(keys_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(keys_file) in lines[0], done.stderr
    assert "s-654321" not in done.stderr and "k-123456" not in done.stderr


def test_no_keys_at_all_is_one_line(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    done = subprocess.run(SHMPIPE + ["execute", "--journal", str(tmp_path / "j.sqlite")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "APCA_API_KEY_ID" in done.stderr


@pytest.mark.timeout(60)
def test_an_unreachable_venue_holds_intents_back_and_says_why(private_runtime_dir, tmp_path):
    from shmpipe import control

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]             # closed once the block ends: nobody listens there
    engine_name = unique("execute")
    engine = start_engine(tmp_path, f"http://127.0.0.1:{port}", "--name", engine_name, "--max-retries", "0")
    try:
        engine.wait_for("cannot reconcile with http://127.0.0.1", 30)
        assert control.request(engine_name, "status")["state"].startswith("reconciling: GET /v2/account")
        assert engine.stop() == 0, engine.text()
    finally:
        if engine.p.poll() is None:
            engine.kill9()
        remove_stats(engine_name)
    assert "Traceback" not in engine.text()
