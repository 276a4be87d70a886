"""``shmpipe export {parquet,hftbacktest,nautilus} INPUT... --out DIR``: thin argument handling over
``shmpipe_services.export`` (where the replay and the three writers live)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

EXIT_PARTIAL = 3   # exported, but part of the input could not be read (a damaged file, an unknown venue)


def _time(text: str) -> int:
    from shmpipe_services.export.exporter import parse_time
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="raw .wslog captures and tick journals -> Parquet, hftbacktest or NautilusTrader",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replays the captures through the same venue parsers as live capture (gap flags,\n"
        "invalidations and all) and writes what they produce for another tool:\n"
        "  parquet      typed tables partitioned by venue, instrument and UTC date (pyarrow)\n"
        "  hftbacktest  event arrays (.npz), one per symbol per day, and instruments.json\n"
        "  nautilus     a NautilusTrader ParquetDataCatalog: instruments, OrderBookDelta, TradeTick\n"
        "INPUT: .wslog / .wslog.zst files, tick journal .ticks files, or folders holding them.\n"
        "Needs pip install 'shmpipe[export]'. Exit 0: done; 1: nothing written (the line says why);\n"
        "3: written, but part of the input could not be read (a damaged file, an unknown venue).")
    p.add_argument("target", choices=("parquet", "hftbacktest", "nautilus"))
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create")
    p.add_argument("--from", dest="start", type=_time, metavar="TIME",
                   help="first receive time to export (ISO 8601, UTC unless it says, or ns); the books as "
                        "they stand then open the export as one snapshot per symbol")
    p.add_argument("--until", dest="end", type=_time, metavar="TIME", help="receive time to stop before")
    p.add_argument("--symbols", help="comma-separated symbols (BTC-USD) or venue:symbol (kraken:BTC/USD)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"shmpipe export: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from shmpipe_services.export.exporter import ExportError, parse_symbols, run_export
    # the reader logs where a damaged file stops; the export says it once, below, with what it means
    logging.getLogger("shmpipe.wslog").setLevel(logging.ERROR)
    try:
        summary = run_export(args.target, args.inputs, args.out, start_ns=args.start, end_ns=args.end,
                             symbols=parse_symbols(args.symbols), overwrite=args.overwrite,
                             progress=args.progress)
    except ExportError as exc:
        return _fail(str(exc))
    except OSError as exc:    # an output folder we cannot write
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    if args.json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    else:
        _print_summary(summary)
    status = 0
    for stop in summary["stopped_early"]:
        print(f"shmpipe export: stopped early, exported up to the last complete entry: {stop}", file=sys.stderr)
        status = EXIT_PARTIAL
    for exchange_id, count in summary["unknown_exchange"].items():
        print(f"shmpipe export: unknown venue: {count} entries of exchange id {exchange_id} skipped "
              f"(shmpipe parses 1 coinbase, 2 kraken, 3 alpaca)", file=sys.stderr)
        status = EXIT_PARTIAL
    for symbol in summary["unmatched_symbols"]:
        print(f"shmpipe export: --symbols {symbol}: no such symbol in the input", file=sys.stderr)
    return status


def _print_summary(summary: dict) -> None:
    print(f"exported {summary['target']} to {summary['out']}: {summary['messages']} messages "
          f"from {summary['inputs']} input file(s)")
    for table, rows in summary["rows"].items():
        print(f"  {table:<20} {rows:>12,}")
    for key in ("instruments", "files", "inexact_decimals", "journal_ticks", "gap_flagged_book_records",
                "reconnects", "messages_before_window"):
        if summary.get(key):
            print(f"  {key}: {summary[key]}")
    for key in ("parse_errors", "gaps", "not_exported"):
        if summary.get(key):
            value = summary[key]
            text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else ", ".join(value)
            print(f"  {key}: {text}")
    sys.stdout.flush()
