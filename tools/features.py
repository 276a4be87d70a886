"""``shmpipe features``: thin argument handling over ``shmpipe_services.consumers.feature_service``."""
from __future__ import annotations

import argparse

from .arg_types import positive_int
from .consumer_args import add_loop_arguments, loop_options, non_negative_float, run_service


def top_n(text: str) -> int:
    from shmpipe.records import ORDERBOOK_DEPTH
    value = positive_int(text)
    if value > ORDERBOOK_DEPTH:
        raise argparse.ArgumentTypeError(f"must be 1..{ORDERBOOK_DEPTH} (the book's depth), got {value}")
    return value


def vol_window(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 returns, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "features", help="OrderbookEntry ring -> mid, spread, microprice, imbalance, volatility (signal.features)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads books (shmpipe.records.ORDERBOOK_ENTRY) in numpy batches and computes, per valid\n"
        "book: mid, spread (absolute and bps), microprice, top-N size imbalance and the rolling\n"
        "volatility of mid log returns per symbol. Books flagged invalid or with an empty side are\n"
        "skipped and counted. Publishes each symbol's latest features on topic signal.features once\n"
        "per batch, at most every --min-interval seconds per symbol. Ends when the producer has gone\n"
        "and the ring is drained, on 'stop' or SIGTERM/SIGINT, then prints its counters.")
    p.add_argument("--books", required=True, metavar="RING", help="ring of shmpipe.records.ORDERBOOK_ENTRY")
    p.add_argument("--top-n", type=top_n, default=5, metavar="N", help="levels per side in the imbalance (default 5)")
    p.add_argument("--vol-window", type=vol_window, default=100, metavar="N",
                   help="mid log returns in the rolling volatility (default 100)")
    p.add_argument("--min-interval", type=non_negative_float, default=0.0, metavar="S",
                   help="at most one message per symbol per S seconds (default 0: one per batch)")
    add_loop_arguments(p, "features")
    p.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from shmpipe_services.consumers.feature_service import FeatureService
    from shmpipe_services.consumers.features import FeatureEngine
    engine = FeatureEngine(top_n=args.top_n, vol_window=args.vol_window)
    service = FeatureService(loop_options(args, args.books), engine, min_interval_s=args.min_interval)
    return run_service("features", service, args.json)
