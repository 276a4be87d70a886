"""An example strategy: a bar that closed at least 1 % above its open -> buy.

    python -m shmpipe_examples.bar_breakout --timeframe 1s --qty 1 [--limit-bps 20]

Reads ``market.bar.<tf>`` from the signals bus (``shmpipe bars`` publishes them) and publishes one
``order.intent`` (services/trading/intents.py) per such bar. The intent's id is the bar's own
(symbol, timeframe, start): the same bar seen twice (a replay, a restart) is the same intent,
which the engine sends at most once. Prices are compared as the decimals the bars carry.

A market order by default; with ``--limit-bps N`` a limit at the close plus N bps, floored to
``--price-decimals`` (never further through than asked), so the engine's slippage check
(``--slippage-bps``, against the live book's mid) has a price to judge.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from decimal import ROUND_FLOOR, Decimal
from typing import Any

STRATEGY_ID = "bar-breakout"


def intent_for_bar(bar: dict[str, Any], qty: Decimal, threshold: Decimal = Decimal("0.01"), *,
                   limit_bps: Decimal | None = None, price_decimals: int = 2) -> dict | None:
    """The intent this bar calls for, or None. Symbols the registry does not name are skipped, and
    so is a partial bar (``complete`` false: the bar consumer did not see its whole period)."""
    from shmpipe_services.trading.intents import new_intent

    if limit_bps is not None and not (limit_bps.is_finite() and limit_bps >= 0):
        raise ValueError(f"limit_bps must be a decimal >= 0, not {limit_bps}")
    if bar.get("complete") is False:
        return None

    symbol, open_, close = bar.get("symbol"), bar.get("open"), bar.get("close")
    if not symbol or not isinstance(open_, (int, float)) or not isinstance(close, (int, float)) or open_ <= 0:
        return None
    if Decimal(repr(close)) < Decimal(repr(open_)) * (1 + threshold):
        return None
    intent_id = f"{symbol}:{bar.get('timeframe')}:{bar.get('start_ns')}"
    if limit_bps is None:
        return new_intent(STRATEGY_ID, intent_id, symbol, "buy", qty).to_data()
    limit = (Decimal(repr(close)) * (1 + limit_bps / 10_000)).quantize(Decimal(1).scaleb(-price_decimals),
                                                                      rounding=ROUND_FLOOR)
    return new_intent(STRATEGY_ID, intent_id, symbol, "buy", qty, type="limit", limit_price=limit).to_data()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bar_breakout", description=__doc__.split("\n\n")[0])
    p.add_argument("--timeframe", default="1s", help="bars of this timeframe (default 1s)")
    p.add_argument("--qty", default="1", help="quantity of each buy (a decimal, default 1)")
    p.add_argument("--threshold", default="0.01", help="close >= open x (1 + this) buys (default 0.01)")
    p.add_argument("--limit-bps", help="buy with a limit this many bps above the bar's close (a decimal "
                   ">= 0; default: a market order)")
    p.add_argument("--price-decimals", type=int, default=2, help="decimals of a limit price (default 2)")
    p.add_argument("--sub", help="signals endpoint to read (default: the host's bus)")
    p.add_argument("--pub", help="signals endpoint to publish to (default: the host's bus)")
    args = p.parse_args(argv)
    from shmpipe_services.trading.intents import TOPIC_INTENT

    from shmpipe.signals import SignalPublisher, SignalSubscriber

    qty, threshold = Decimal(args.qty), Decimal(args.threshold)
    try:
        limit_bps = None if args.limit_bps is None else Decimal(args.limit_bps)
        if limit_bps is not None and not (limit_bps.is_finite() and limit_bps >= 0):
            raise ArithmeticError
    except ArithmeticError:
        p.error(f"--limit-bps {args.limit_bps!r}: not a decimal >= 0")
    if not 0 <= args.price_decimals <= 10:
        p.error(f"--price-decimals {args.price_decimals}: not 0-10")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    counts = {"bars": 0, "intents": 0, "skipped_unnamed": 0}
    with SignalSubscriber(args.sub, [f"market.bar.{args.timeframe}"]) as sub, \
            SignalPublisher(args.pub, source=STRATEGY_ID) as pub:
        how = "at the market" if limit_bps is None else f"with a limit {limit_bps} bps above the close"
        print(f"bar_breakout: buying {qty} {how} on each {args.timeframe} bar closing >= "
              f"{1 + threshold} x open",
              file=sys.stderr, flush=True)
        while not stop.is_set():
            msg = sub.recv(timeout=0.1)
            if msg is None:
                continue
            counts["bars"] += 1
            if not msg.data.get("symbol"):
                counts["skipped_unnamed"] += 1
                continue
            intent = intent_for_bar(msg.data, qty, threshold, limit_bps=limit_bps,
                                    price_decimals=args.price_decimals)
            if intent is not None:
                pub.publish(TOPIC_INTENT, intent)
                counts["intents"] += 1
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
