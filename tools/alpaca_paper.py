"""``shmpipe alpaca-paper``: thin argument handling over ``shmpipe_services.alpaca_paper``."""
from __future__ import annotations

import argparse
import sys
from decimal import Decimal

from .arg_types import positive_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "alpaca-paper", help="a local Alpaca paper-trading venue (REST v2 orders + trade_updates) with faults",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serves the subset of Alpaca's Trading API v2 the execution engine uses (POST/GET/DELETE\n"
        "/v2/orders, /v2/orders:by_client_order_id, /v2/positions, /v2/account, the trade_updates\n"
        "websocket at /stream) on HOST:PORT. Orders fill at once at the symbol's price (--price, or the mid\n"
        "of a live books ring with --books); a limit order only when marketable. Keys: the same\n"
        "APCA_API_KEY_ID / APCA_API_SECRET_KEY (or --keys-file) the engine uses. --faults injects\n"
        "rate (429 + Retry-After), error (500, half after accepting), timeout (accepted, answer held\n"
        "--timeout-delay s), drop (stream closed), partial (two fills) and reject (403), each a\n"
        "probability, seeded by --seed. Answers `shmpipe ctl alpaca-paper status|stats|orders|positions|stop`.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default) picks a free port; the line on stderr names it")
    p.add_argument("--keys-file", metavar="PATH", help="0600 TOML file with key_id and secret_key")
    p.add_argument("--price", action="append", default=[], metavar="SYMBOL=DECIMAL",
                   help="a symbol's fill price (repeatable)")
    p.add_argument("--default-price", default=None, metavar="DECIMAL",
                   help="the fill price of symbols without --price (default: none; they stay unfilled)")
    p.add_argument("--books", metavar="RING", help="fill at the mid of this books ring instead")
    p.add_argument("--quotes", metavar="RING", help="or at the mid of the latest quote Tick of this ticks ring")
    p.add_argument("--exchange", default="synthetic", help="the books' exchange in the symbol registry")
    p.add_argument("--stale", type=positive_float, default=2.0, metavar="S",
                   help="with --books: a book older than this gives no price (default 2)")
    p.add_argument("--cash", default="1000000", metavar="DECIMAL", help="the account's starting cash")
    p.add_argument("--faults", default="", metavar="KIND=P,...", help="e.g. rate=0.05,error=0.05,timeout=0.02")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    p.add_argument("--timeout-delay", type=positive_float, default=30.0, metavar="S",
                   help="how long a 'timeout' fault holds the answer back (default 30)")
    p.add_argument("--partial-delay", type=positive_float, default=0.2, metavar="S",
                   help="seconds between the two fills of a 'partial' fault (default 0.2)")
    p.add_argument("--retry-after", type=positive_int, default=1, metavar="S",
                   help="Retry-After of an injected 429 (default 1)")
    p.add_argument("--rate-limit", type=positive_int, default=200, metavar="N",
                   help="requests allowed per --rate-window (default 200, Alpaca's)")
    p.add_argument("--rate-window", type=positive_float, default=60.0, metavar="S", help="default 60")
    p.add_argument("--name", default="alpaca-paper", help="control endpoint name (default alpaca-paper)")
    p.add_argument("--json", action="store_true", help="print the final figures as one JSON object")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"shmpipe alpaca-paper: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401 - the emulator's server, in the trading extra
    except ImportError:
        print("shmpipe alpaca-paper: needs aiohttp: pip install 'shmpipe[trading]'", file=sys.stderr)
        return 2
    from shmpipe_services.alpaca_paper.server import Faults, parse_faults
    from shmpipe_services.alpaca_paper.service import EmulatorError, book_prices, price_table
    from shmpipe_services.alpaca_paper.service import run as run_emulator
    from shmpipe_services.trading.credentials import CredentialsError, load_keys

    if not 0 <= args.port <= 65535:
        return _fail(f"--port must be 0-65535, not {args.port}")
    marks = None
    try:
        keys = load_keys(args.keys_file)
        faults = Faults(**parse_faults(args.faults), timeout_delay_s=args.timeout_delay,
                        partial_delay_s=args.partial_delay, retry_after_s=args.retry_after, seed=args.seed)
        cash = Decimal(args.cash)
        if args.books or args.quotes:
            price_of, marks = book_prices(args.books, args.exchange, args.stale, args.quotes)
        else:
            price_of = price_table(args.price, None if args.default_price is None else Decimal(args.default_price))
        return run_emulator(host=args.host, port=args.port, keys=keys, faults=faults, rate_limit=args.rate_limit,
                            rate_window_s=args.rate_window, price_of=price_of, name=args.name, as_json=args.json,
                            cash=cash, marks=marks.source if marks is not None else "price")
    except (CredentialsError, EmulatorError, ValueError, ArithmeticError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a missing books ring (ShmpipeError) and the like: one line
        from shmpipe.errors import ShmpipeError
        if isinstance(exc, ShmpipeError):
            return _fail(str(exc))
        raise
    finally:
        if marks is not None:
            marks.close()
