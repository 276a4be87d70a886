"""``shmpipe bars``: thin argument handling over ``shmpipe_services.consumers.bar_service``."""
from __future__ import annotations

import argparse

from .consumer_args import add_loop_arguments, fail, loop_options, non_negative_float, run_service


def timeframes(text: str):
    from shmpipe_services.consumers.bars import TimeframeError, parse_timeframes
    try:
        return parse_timeframes(text)
    except TimeframeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bars", help="trade Ticks ring -> OHLCV bars (1s, 1m, 5m) on the signals bus (market.bar.<tf>)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads trade Ticks (flags bit 0; quotes are ignored) from a TICK ring in numpy batches\n"
        "and builds OHLCV + VWAP + trade-count bars per symbol and timeframe, aligned to the epoch on the\n"
        "trades' exchange time. A bar closes when its interval has ended plus --grace, by the wall clock\n"
        "(default, live feeds: it closes even if no trade follows) or by the trades' own time\n"
        "(--clock trades, for replays); while a backlog is read (full batches) the wall clock waits, up to\n"
        "5 s. Late trades for a closed bar are counted, not merged; a bar\n"
        "without trades is not emitted. Each bar is one message on topic market.bar.<tf> (msgpack\n"
        "envelope, see shmpipe.signals). Ends when the producer has gone and the ring is drained\n"
        "(closing the open bars), on 'stop' or SIGTERM/SIGINT (open bars are not published), then\n"
        "prints its counters. A bar whose period bars did not see whole (under way when it started, cut\n"
        "short when the producer left, records lost) is published with complete false and partial\n"
        "saying why (start, end, lost), and counted in partial_bars.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ticks", metavar="RING", help="ring of shmpipe.records.TICK (f32 trade prices)")
    source.add_argument("--levels", metavar="RING",
                        help="ring of shmpipe.records.LEVEL_UPDATE: bars from its trade records, with the "
                             "venue's exact prices and sizes (f64)")
    p.add_argument("--timeframes", type=timeframes, default="1s,1m,5m", metavar="LIST",
                   help="comma-separated bar lengths, a count and s/m/h/d (default 1s,1m,5m)")
    p.add_argument("--clock", choices=("wall", "trades"), default="wall",
                   help="what closes bars: the wall clock (live) or the latest trade time (replays)")
    p.add_argument("--grace", type=non_negative_float, default=0.5, metavar="S",
                   help="seconds a bar stays open after its interval for late trades (default 0.5)")
    p.add_argument("--sqlite", metavar="PATH", help="also append every bar to table 'bars' of this SQLite file")
    add_loop_arguments(p, "bars")
    p.set_defaults(func=run_bars)


def run_bars(args: argparse.Namespace) -> int:
    from shmpipe_services.consumers.bar_service import BarService
    from shmpipe_services.consumers.bars import BarAggregator, parse_timeframes
    from shmpipe_services.consumers.loop import ConsumerError
    tfs = args.timeframes if isinstance(args.timeframes, list) else parse_timeframes(args.timeframes)
    aggregator = BarAggregator(tfs, grace_s=args.grace, close_on_trade_time=args.clock == "trades")
    try:
        service = BarService(loop_options(args, args.levels or args.ticks), aggregator, sqlite=args.sqlite,
                             exact_trades=args.levels is not None)
    except ConsumerError as exc:
        return fail("bars", str(exc))
    return run_service("bars", service, args.json)
