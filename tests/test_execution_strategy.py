"""The example strategy (examples/bar_breakout.py): a bar closed >= 1 % above its open -> one buy
intent, the same bar always the same intent."""
from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal

import pytest
from shmpipe_examples.bar_breakout import intent_for_bar


def bar(open_: float, close: float, start_ns: int = 1, symbol: str | None = "BTC/USD") -> dict:
    return {"symbol_id": 1, "exchange": "synthetic", "symbol": symbol, "timeframe": "1s", "start_ns": start_ns,
            "end_ns": start_ns + 10**9, "open": open_, "high": max(open_, close), "low": min(open_, close),
            "close": close, "volume": 1.0, "vwap": close, "trades": 1, "first_ns": start_ns, "last_ns": start_ns}


def test_the_rule_at_its_boundary():
    # 101.0 is exactly 1 % above 100.0 as decimals (as floats 100.0 * 1.01 = 101.00000000000001)
    assert intent_for_bar(bar(100.0, 101.0), Decimal(1))["side"] == "buy"
    assert intent_for_bar(bar(100.0, 100.99), Decimal(1)) is None
    assert intent_for_bar(bar(100.0, 99.0), Decimal(1)) is None
    assert intent_for_bar(bar(100.0, 102.0, symbol=None), Decimal(1)) is None


def test_with_limit_bps_the_buy_is_a_limit_that_far_above_the_close_never_more():
    intent = intent_for_bar(bar(100.0, 100.37), Decimal(1), Decimal("0.001"), limit_bps=Decimal(20))
    # 100.37 x 1.002 = 100.57074, floored to the price's 2 decimals: never more through than asked
    assert (intent["type"], intent["limit_price"]) == ("limit", "100.57")
    assert intent_for_bar(bar(100.0, 101.0), Decimal(1), limit_bps=Decimal(0))["limit_price"] == "101.00"
    assert intent_for_bar(bar(100.0, 101.0), Decimal(1))["type"] == "market"
    with pytest.raises(ValueError, match="limit_bps"):
        intent_for_bar(bar(100.0, 101.0), Decimal(1), limit_bps=Decimal(-1))


def test_the_same_bar_is_the_same_intent():
    a, b = intent_for_bar(bar(100.0, 102.0, 7), Decimal(2)), intent_for_bar(bar(100.0, 102.0, 7), Decimal(2))
    assert (a["intent_id"], a["strategy_id"], a["qty"]) == (b["intent_id"], b["strategy_id"], "2")
    assert a["intent_id"] != intent_for_bar(bar(100.0, 102.0, 8), Decimal(2))["intent_id"]


@pytest.mark.timeout(60)
def test_the_strategy_process_publishes_intents_from_bars(private_runtime_dir):
    from shmpipe.signals import SignalBus, SignalPublisher, SignalSubscriber

    bus = SignalBus()
    child = subprocess.Popen([sys.executable, "-m", "shmpipe_examples.bar_breakout", "--qty", "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    intents = SignalSubscriber(None, ["order.intent"])
    bars = SignalPublisher(None, source="test-bars")
    try:
        got = None
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            bars.publish("market.bar.1s", bar(100.0, 99.0, 1))        # no buy
            bars.publish("market.bar.1s", bar(100.0, 101.5, 2))       # buy
            got = intents.recv(timeout=0.3)
        assert got is not None, "no intent from the strategy"
        assert (got.data["symbol"], got.data["side"], got.data["qty"], got.data["intent_id"]) == \
            ("BTC/USD", "buy", "3", "BTC/USD:1s:2")
    finally:
        child.terminate()
        out, err = child.communicate(timeout=10)
        intents.close()
        bars.close()
        bus.close()
    assert child.returncode == 0, err.decode()


def test_a_partial_bar_calls_for_nothing():
    """A bar whose period the bar consumer did not see whole (complete false) is no breakout."""
    partial = {**bar(100.0, 102.0), "complete": False, "partial": ["start"]}
    assert intent_for_bar(partial, Decimal(1)) is None
    assert intent_for_bar({**partial, "complete": True, "partial": []}, Decimal(1))["side"] == "buy"
