"""``shmpipe risk``: thin argument handling over ``shmpipe_services.risk``."""
from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation


def add_parser(sub) -> None:
    p = sub.add_parser(
        "risk", help="pre-trade risk: order.intent -> risk.approved / risk.rejected (limits from TOML)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checks every order intent (topic order.intent) against the limits in --limits (a TOML\n"
        "file, see shmpipe_services.risk.limits; every limit is strict: equal is refused) and publishes\n"
        "risk.approved or risk.rejected with the reason. Exposure is marked to the mid of the live\n"
        "books ring (--books); a missing, stale, invalid or crossed book is a rejection, never a guess.\n"
        "Positions and P&L follow the execution engine's execution.fill; crossing the daily loss limit\n"
        "halts new risk (orders that reduce a position still pass) until `shmpipe ctl risk reset` or the\n"
        "next UTC day. `shmpipe ctl risk reload` re-reads the limits (a bad file is refused, the limits in\n"
        "force stay).")
    p.add_argument("--limits", required=True, metavar="PATH", help="TOML file with a [limits] table")
    p.add_argument("--books", metavar="RING", help="books ring (OrderbookEntry) whose mids mark exposure")
    p.add_argument("--quotes", metavar="RING", help="instead of --books: the quote Ticks of this ticks ring "
                   "(a feed whose books cannot be trusted: capture --feed synthetic without --market)")
    p.add_argument("--exchange", default="synthetic", help="the books' exchange in the symbol registry")
    p.add_argument("--price", action="append", default=[], metavar="SYMBOL=DECIMAL",
                   help="without --books: a fixed mark per symbol (tests, dry runs)")
    p.add_argument("--engine", metavar="NAME", help="the execution engine's service name: its positions are "
                   "adopted at start and checked against every --sync s (a difference is counted and said)")
    p.add_argument("--sync", type=float, default=2.0, metavar="S", help="seconds between checks (default 2)")
    p.add_argument("--sub", metavar="ENDPOINT", help="signals endpoint to read (default: the host's bus)")
    p.add_argument("--pub", metavar="ENDPOINT", help="signals endpoint to publish to (default: the host's bus)")
    p.add_argument("--name", default="risk", help="control endpoint and stats name (default risk)")
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shmpipe_services.risk.service import RiskError
    from shmpipe_services.risk.service import run as run_risk

    if sum(map(bool, (args.books, args.quotes, args.price))) != 1:
        print("shmpipe risk: marks come from one of --books RING (the live book), --quotes RING or "
              "--price SYMBOL=DECIMAL", file=sys.stderr)
        return 2
    if not args.sync > 0:
        print("shmpipe risk: --sync must be > 0", file=sys.stderr)
        return 2
    prices = {}
    for pair in args.price:
        symbol, sep, value = pair.partition("=")
        try:
            prices[symbol] = Decimal(value)
        except InvalidOperation:
            sep = ""
        if not sep or not symbol or not prices[symbol].is_finite() or prices[symbol] <= 0:
            print(f"shmpipe risk: --price {pair!r} is not SYMBOL=DECIMAL > 0", file=sys.stderr)
            return 2
    try:
        return run_risk(args.limits, books=args.books, exchange=args.exchange, prices=prices, sub=args.sub,
                        pub=args.pub, name=args.name, as_json=args.json, quotes=args.quotes,
                        engine=args.engine, sync_s=args.sync)
    except RiskError as exc:
        print(f"shmpipe risk: {exc}", file=sys.stderr)
        return 1
