"""``shmpipe execute``: thin argument handling over ``shmpipe_services.execution``."""
from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation

from .arg_types import positive_float, positive_int


def _bps(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of basis points") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "execute", help="approved order intents -> Alpaca orders (journaled, never duplicated, rate-limited)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Takes order intents from the signals bus (risk.approved by default; see\n"
        "shmpipe_services.trading.intents) and sends each as one order to Alpaca's Trading API v2 at\n"
        "--venue (or `shmpipe alpaca-paper`). Each order's client_order_id is derived from its intent, so a\n"
        "retry (429, 5xx, a timeout) re-sends the same id and, when the venue answers that it already\n"
        "holds it, looks it up instead. Every intent, request and answer is committed to --journal\n"
        "(SQLite, WAL) before it is acted on; on start the engine reconciles with the venue before it\n"
        "takes any intent. Keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY or --keys-file (0600); shown\n"
        "as ***. Kill switch: `shmpipe ctl execute halt` (cancel open orders, refuse new ones, durable\n"
        "until `ctl execute release`). Each intent is answered on execution.order: queued, sent,\n"
        "rejected (with a reason) or failed.")
    p.add_argument("--venue", default="https://paper-api.alpaca.markets", metavar="URL",
                   help="the Trading API base URL (default Alpaca paper); the stream is URL/stream")
    p.add_argument("--journal", required=True, metavar="PATH", help="the SQLite journal (created if missing)")
    p.add_argument("--keys-file", metavar="PATH", help="0600 TOML file with key_id and secret_key")
    p.add_argument("--topics", default="risk.approved", metavar="LIST",
                   help="comma-separated topics carrying intents (default risk.approved)")
    p.add_argument("--sub", metavar="ENDPOINT", help="signals endpoint to read (default: the host's bus)")
    p.add_argument("--pub", metavar="ENDPOINT", help="signals endpoint to publish to (default: the host's bus)")
    p.add_argument("--rate-limit", type=positive_int, default=200, metavar="N", help="requests per window (200)")
    p.add_argument("--rate-window", type=positive_float, default=60.0, metavar="S", help="the window (60 s)")
    p.add_argument("--burst", type=positive_int, default=None, metavar="N",
                   help="requests that may leave back to back (default: a twentieth of the limit)")
    p.add_argument("--max-retries", type=int, default=3, metavar="N", help="retries per request (default 3)")
    p.add_argument("--backoff-scale", type=positive_float, default=1.0, metavar="X",
                   help="multiplies the 1, 2, 4 s backoff and Retry-After (tests: 0.01)")
    p.add_argument("--http-timeout", type=positive_float, default=10.0, metavar="S", help="per request (10 s)")
    p.add_argument("--max-queue", type=positive_int, default=10_000, metavar="N",
                   help="intents waiting to be sent before new ones are rejected (default 10000)")
    p.add_argument("--books", metavar="RING", help="books ring for slippage protection (with --slippage-bps)")
    p.add_argument("--quotes", metavar="RING", help="instead of --books: the quote Ticks of this ticks ring")
    p.add_argument("--exchange", default="synthetic", help="the books' exchange in the symbol registry")
    p.add_argument("--stale", type=positive_float, default=2.0, metavar="S", help="a book older is no mark (2 s)")
    p.add_argument("--slippage-bps", type=_bps, default=None, metavar="BPS",
                   help="refuse a limit more than BPS basis points through the mid (needs --books)")
    p.add_argument("--refresh", type=positive_float, default=2.0, metavar="S",
                   help="how often open orders are re-read from the venue (default 2 s)")
    p.add_argument("--no-stream", action="store_true", help="no trade_updates stream: fills from REST only")
    p.add_argument("--seed", type=int, default=None, help="seed of the backoff jitter")
    p.add_argument("--name", default="execute", help="control endpoint and stats name (default execute)")
    p.add_argument("--json", action="store_true", help="print the final figures as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401 - the engine's HTTP client, in the trading extra
    except ImportError:
        print("shmpipe execute: needs httpx: pip install 'shmpipe[trading]'", file=sys.stderr)
        return 2
    from shmpipe_services.execution.engine import EngineOptions
    from shmpipe_services.execution.service import ExecuteError
    from shmpipe_services.execution.service import run as run_engine
    from shmpipe_services.trading.credentials import CredentialsError, load_keys

    if args.slippage_bps is not None and not (args.books or args.quotes):
        print("shmpipe execute: --slippage-bps needs --books (the live book to measure against)", file=sys.stderr)
        return 2
    if args.max_retries < 0:
        print("shmpipe execute: --max-retries must be >= 0", file=sys.stderr)
        return 2
    try:
        keys = load_keys(args.keys_file)
    except CredentialsError as exc:
        print(f"shmpipe execute: {exc}", file=sys.stderr)
        return 1
    options = EngineOptions(base_url=args.venue, journal=args.journal, name=args.name, rate_limit=args.rate_limit,
                            rate_window_s=args.rate_window, burst=args.burst, max_retries=args.max_retries,
                            backoff_scale=args.backoff_scale, http_timeout_s=args.http_timeout,
                            max_queue=args.max_queue, slippage_bps=args.slippage_bps, refresh_s=args.refresh,
                            stream=not args.no_stream, seed=args.seed)
    try:
        return run_engine(options, keys, sub=args.sub, pub=args.pub, topics=[t for t in args.topics.split(",") if t],
                          books=args.books, exchange=args.exchange, stale_s=args.stale, as_json=args.json,
                          quotes=args.quotes)
    except ExecuteError as exc:
        print(f"shmpipe execute: {keys.redact(str(exc))}", file=sys.stderr)
        return 1
