"""``shmpipe orderbook``: thin argument handling over ``shmpipe_services.orderbook.process``."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from .arg_types import positive_float


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "orderbook", help="LEVEL_UPDATE ring -> one book per symbol -> ORDERBOOK_ENTRY ring (top 50 levels)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keeps one order book per symbol from the LevelUpdates capture writes and, after each\n"
        "applied update (or at most once per --conflate-ms per symbol), writes an OrderbookEntry with the\n"
        "top 50 levels per side, best first, to the books ring (created as a lossless broadcast ring if\n"
        "missing). Verifies Kraken checksums, crossed books and capture's gap flags; a wrong book is\n"
        "flagged invalid in its entries (flags bit0, and the reason: 2 crossed, 4 checksum failed,\n"
        "8 gap) and a fresh snapshot is asked of capture (control command 'resnapshot') until it is\n"
        "rebuilt. May start before capture: it waits for the levels ring and its first producer, and\n"
        "ends after --seconds, on 'stop' or SIGTERM/SIGINT, or once that producer is gone and the ring\n"
        "is drained; then prints its counters. Control endpoint and live stats: --name.")
    p.add_argument("--levels", required=True, metavar="RING", help="ring of shmpipe.records.LEVEL_UPDATE")
    p.add_argument("--books", required=True, metavar="RING", help="ring of shmpipe.records.ORDERBOOK_ENTRY")
    p.add_argument("--conflate-ms", type=_non_negative_float, default=0.0, metavar="N",
                   help="at most one entry per symbol per N ms (default 0: one per applied update)")
    p.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print the counters as one JSON object")
    p.add_argument("--name", default="orderbook",
                   help="control service name and stats name (default orderbook)")
    p.add_argument("--capture", action="append", default=[], metavar="SERVICE",
                   help="capture service to ask for resnapshots (repeatable; default: every service "
                        "whose status says it writes the levels ring)")
    p.set_defaults(func=run_orderbook)


def run_orderbook(args: argparse.Namespace) -> int:
    from shmpipe_services.orderbook import process as op
    options = op.Options(args.levels, args.books, conflate_ms=args.conflate_ms, seconds=args.seconds,
                         name=args.name, captures=args.capture)
    proc = op.OrderbookProcess(options)

    def on_signal(_sig, _frame):
        proc.ended = proc.ended or "signal"
        proc.request_stop()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        result = proc.run()
    except op.OrderbookError as exc:
        print(f"shmpipe orderbook: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True), flush=True)
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
        sys.stdout.flush()
    return 0
