"""``shmpipe assets sync | serve | watch``: the asset-sync pipeline from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from shmpipe.asset_codec import AssetFormatError

from .http_fetch import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_BYTES,
    FetchError,
    RetryPolicy,
    check_base_url,
    fetch_assets_body,
)
from .listing import Listing, parse_listing
from .removal_guard import DEFAULT_MAX_REMOVALS, DEFAULT_MAX_SHARE, MassRemovalRefused, RemovalGuard
from .service import SyncError
from .store import DEFAULT_DB_TIMEOUT, StoreError
from .store_factory import default_sqlite_path, open_store
from .transport import DEFAULT_SOCKET, TransportError
from .watch import CONNECT_WAIT, run_watch
from .zmq_pubsub import DEFAULT_PUB_ENDPOINT, EndpointError

# Rejected assets named one per line on stderr, at most this many per cycle, then a count.
REJECTED_LINES = 10

# Errors that end a cycle, or a command, with their one-line message rather than a traceback:
# bad input, network, database, endpoints, the removal guard. (ValueError: a bad option value
# the parser could not judge, such as a write method the database lacks.)
CYCLE_ERRORS = (
    AssetFormatError,
    FetchError,
    TransportError,
    StoreError,
    MassRemovalRefused,
    SyncError,
    OSError,
)
COMMAND_ERRORS = (*CYCLE_ERRORS, EndpointError, ValueError)
# Set to see the traceback of an error nobody expected (a bug), instead of its one line.
DEBUG_ENV = "SHMPIPE_DEBUG"

DB_HELP = (
    f"database: postgresql://user@host/db, or an SQLite path / sqlite:///path "
    f"(default: SQLite at $XDG_DATA_HOME/shmpipe/assets.sqlite, now {default_sqlite_path()})"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "assets",
        help="sync the Alpaca asset list into a database and publish changes",
        description="Asset sync: fetch /v2/assets, diff, upsert into PostgreSQL or SQLite, "
        "publish changed assets as Asset AoS on ZeroMQ topic 'assets.changed'.",
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    commands = p.add_subparsers(dest="assets_command", metavar="{sync,serve,watch}")

    s = commands.add_parser(
        "sync",
        help="fetch, diff, write and publish (one cycle, or every --interval seconds)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Without --to-service the whole cycle runs in this process: fetch, diff against the\n"
        "database, write the changed rows, publish them on --pub. With --to-service SOCKET\n"
        "this process is only the fetcher: it keeps the last listing in memory and sends\n"
        "just the new, changed and removed assets (one Asset AoS delta) to a running\n"
        "'shmpipe assets serve --listen SOCKET'; the service writes and publishes.\n"
        "Credentials for --base-url come from APCA_API_KEY_ID / APCA_API_SECRET_KEY.",
    )
    source = s.add_mutually_exclusive_group()
    source.add_argument("--from-file", type=Path, metavar="PATH", help="read the asset list from a JSON file")
    source.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help=f"API base URL (default {DEFAULT_BASE_URL})"
    )
    s.add_argument(
        "--status",
        choices=("active", "inactive"),
        help="server-side filter; a filtered listing never marks assets removed",
    )
    s.add_argument(
        "--asset-class",
        choices=("us_equity", "crypto", "us_option"),
        help="server-side filter; removals are then judged within that class only",
    )
    s.add_argument("--interval", type=float, metavar="S", help="repeat the cycle every S seconds")
    s.add_argument("--cycles", type=int, metavar="N", help="with --interval: stop after N cycles")
    s.add_argument(
        "--timeout", type=float, default=10.0, help="HTTP connect/read timeout, seconds (default 10)"
    )
    s.add_argument(
        "--retries",
        type=int,
        default=5,
        help="HTTP attempts on 429/5xx/network errors and broken responses (default 5)",
    )
    s.add_argument(
        "--deadline",
        type=float,
        default=RetryPolicy.deadline,
        metavar="S",
        help=f"seconds one fetch may take in all, retries included (default {RetryPolicy.deadline:g})",
    )
    s.add_argument(
        "--max-response-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"refuse a response body larger than N bytes (default {DEFAULT_MAX_BYTES}, 64 MiB)",
    )
    s.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow an http:// --base-url (and redirects to http), which sends the API keys in "
        "clear text: for a local test server only",
    )
    s.add_argument(
        "--to-service",
        metavar="SOCKET",
        nargs="?",
        const=DEFAULT_SOCKET,
        help=f"send deltas to 'shmpipe assets serve' on this Unix socket (default {DEFAULT_SOCKET})",
    )
    _add_service_options(s)
    s.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line per cycle: fetched, added, changed, removed, written, published, "
        "seconds (plus republished, only in a cycle that published assets left pending earlier, "
        "and rejected, only in a cycle whose listing had invalid assets, left out)",
    )
    s.set_defaults(func=_command(_run_sync))

    v = commands.add_parser(
        "serve", help="run the sync service: receive deltas on a Unix socket, write, publish"
    )
    v.add_argument(
        "--listen",
        default=DEFAULT_SOCKET,
        metavar="SOCKET",
        help=f"Unix socket to receive deltas on (default {DEFAULT_SOCKET})",
    )
    _add_service_options(v)
    v.add_argument("--json", action="store_true", help="print each delta's summary as a JSON line")
    v.set_defaults(func=_command(_run_serve))

    w = commands.add_parser(
        "watch",
        help="subscribe to assets.changed, keep a cache, print and store features",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Subscribe to assets.changed and keep a cache of the assets, keyed by id.\n"
        "Warm start (the default): the cache first loads every row of the database's assets\n"
        "table (--db, or the default SQLite file the other commands use), removed assets\n"
        "flagged as in a message, and its features are printed once (not stored); then each\n"
        "message is applied on top, so the cache equals the database, not just the changes\n"
        "seen since this process joined. The subscription is made before the database is\n"
        "read (watch waits for the connection to a running publisher, up to "
        f"{CONNECT_WAIT:g} s), and\n"
        "messages arriving meanwhile are applied after the snapshot: messages are upserts by\n"
        "id, so one whose change the snapshot already holds changes nothing. A publisher that\n"
        "starts later should use --wait-subscribers, as ZeroMQ drops what it published before\n"
        "a subscriber joined. Features are written to the asset_features table per message.",
    )
    w.add_argument(
        "--sub",
        default=DEFAULT_PUB_ENDPOINT,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to connect to (default {DEFAULT_PUB_ENDPOINT})",
    )
    w.add_argument("--db", help=DB_HELP + "; features go to its asset_features table")
    w.add_argument("--schema", help="PostgreSQL schema (default public)")
    _add_db_timeout(w)
    w.add_argument("--messages", type=int, metavar="N", help="exit after N messages")
    w.add_argument("--idle-timeout", type=float, metavar="S", help="exit after S seconds without a message")
    w.add_argument(
        "--no-warm-start",
        action="store_true",
        help="do not load the database's assets first: the cache holds only what arrives as "
        "messages after this process joined (the database is still where features go)",
    )
    w.add_argument(
        "--json",
        action="store_true",
        help="print features as one JSON line per message (received: its asset count), after "
        "one for the warm start (warm_start: the assets loaded, received: 0)",
    )
    w.set_defaults(func=_command(lambda args: run_watch(args, _error)))
    return p


def _add_db_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db-timeout",
        type=float,
        default=DEFAULT_DB_TIMEOUT,
        metavar="S",
        help="seconds one database statement may take, waiting for locks included "
        f"(PostgreSQL statement_timeout, SQLite busy timeout; default {DEFAULT_DB_TIMEOUT:g})",
    )


def _add_service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--schema", help="PostgreSQL schema for the tables (default public)")
    _add_db_timeout(p)
    p.add_argument(
        "--pub",
        default=DEFAULT_PUB_ENDPOINT,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind and publish assets.changed on (default {DEFAULT_PUB_ENDPOINT})",
    )
    p.add_argument("--batch-size", type=int, default=500, help="rows per write transaction (default 500)")
    guard = p.add_argument_group(
        "mass-removal guard",
        "a cycle that would mark more assets removed than the larger of SHARE of the listed ones "
        "and N is refused whole (nothing written or published, exit 1), and so is an empty "
        "listing: an API hiccup or a truncated file looks exactly like a mass delisting",
    )
    guard.add_argument(
        "--max-removal-share",
        type=_fraction,
        default=DEFAULT_MAX_SHARE,
        metavar="SHARE",
        help=f"fraction of the listed assets one cycle may remove (default {DEFAULT_MAX_SHARE})",
    )
    guard.add_argument(
        "--max-removals",
        type=_count,
        default=DEFAULT_MAX_REMOVALS,
        metavar="N",
        help=f"removals one cycle may always make (default {DEFAULT_MAX_REMOVALS})",
    )
    guard.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="apply the listing even so (with sync --to-service, the running service lets "
        "this fetcher's deltas through)",
    )
    p.add_argument(
        "--write-method",
        choices=("upsert", "copy"),
        help="PostgreSQL: INSERT..ON CONFLICT from unnest, or COPY to a temp table + merge "
        "(default: the faster one in bench/asset_upsert_bench.py); SQLite: upsert only",
    )
    p.add_argument(
        "--wait-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="before the first publish, wait until N subscribers are connected (ZeroMQ drops "
        "messages published before a subscriber joined); see --wait-timeout",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up waiting for subscribers after S seconds and go on (default 10)",
    )


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1 (5 % is 0.05)")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _error(message: str) -> None:
    print(f"shmpipe assets: {message}", file=sys.stderr, flush=True)


def _command(run):
    """``run(args)`` under asyncio, with every error as one line on stderr and exit status 1."""

    def main(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(run(args))
        except COMMAND_ERRORS as exc:
            _error(str(exc))
        except Exception as exc:  # a bug: still one line for the user, the traceback on request
            if os.environ.get(DEBUG_ENV):
                raise
            _error(f"unexpected {type(exc).__name__}: {exc} ({DEBUG_ENV}=1 shows the traceback)")
        return 1

    return main


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary), flush=True)
    else:
        republished = summary.get("republished")
        rejected = summary.get("rejected")
        print(
            (f"{republished} pending from earlier republished; " if republished else "")
            + "fetched {fetched}: {added} added, {changed} changed, {removed} removed; "
            "{written} rows written, {published} published in {seconds:.3f} s".format(**summary)
            + (f"; {rejected} invalid assets left out" if rejected else ""),
            flush=True,
        )


def _report_rejected(listing: Listing) -> None:
    """One line per invalid asset (the cycle goes on without them), then how many more."""
    for problem in listing.rejected[:REJECTED_LINES]:
        _error(f"{problem}; left out, its stored row is kept")
    if len(listing.rejected) > REJECTED_LINES:
        _error(f"... and {len(listing.rejected) - REJECTED_LINES} more invalid assets left out")


async def _start_service(args: argparse.Namespace):
    from .service import SyncService
    from .zmq_pubsub import AssetPublisher

    store = open_store(args.db, schema=args.schema, timeout=args.db_timeout)
    publisher = AssetPublisher(args.pub)
    try:
        service = SyncService(
            store,
            publisher,
            batch_size=args.batch_size,
            write_method=args.write_method,
            removal_guard=RemovalGuard(args.max_removal_share, args.max_removals, args.allow_mass_removal),
        )
        # Assets an earlier run committed but did not publish go out only after the wait below
        # (a message published before a subscriber joined is lost to it): serve publishes them
        # right after, sync at the start of its first cycle.
        await service.start(publish_pending=False)
    except BaseException:
        publisher.close()
        await store.close()
        raise
    if args.wait_subscribers and not await asyncio.to_thread(
        publisher.wait_for_subscribers, args.wait_subscribers, args.wait_timeout
    ):
        _error(
            f"only {publisher.subscribers} of {args.wait_subscribers} subscribers after "
            f"{args.wait_timeout} s; going on"
        )
    return service, publisher


async def _run_sync(args: argparse.Namespace) -> int:
    from .source_map import SourceMap
    from .transport import InProcessSink, UnixSocketSink

    policy = RetryPolicy(attempts=max(1, args.retries), timeout=args.timeout, deadline=args.deadline)
    if not args.from_file:
        check_base_url(args.base_url, insecure_http=args.insecure_http)  # before any cycle

    def fetch() -> bytes:
        if args.from_file:
            return args.from_file.read_bytes()
        return fetch_assets_body(
            args.base_url,
            status=args.status,
            asset_class=args.asset_class,
            policy=policy,
            max_bytes=args.max_response_bytes,
            insecure_http=args.insecure_http,
        )

    service = publisher = None
    if args.to_service:
        sink = UnixSocketSink(args.to_service)
    else:
        service, publisher = await _start_service(args)
        sink = InProcessSink(service)

    source_map = SourceMap()
    scope = {"asset_class": args.asset_class} if args.asset_class and not args.from_file else {}
    status = 0
    cycle = 0
    try:
        while True:
            cycle += 1
            try:
                body = await asyncio.to_thread(fetch)
                listing = parse_listing(body)
                _report_rejected(listing)
                delta = source_map.delta(
                    listing.docs,
                    complete=args.from_file is not None or args.status is None,
                    scope=scope,
                    held=listing.held_ids,
                    fetched=listing.fetched,
                )
                delta.allow_mass_removal = args.allow_mass_removal
                summary = await sink.send(delta)
                source_map.commit(delta)  # only now: an unacknowledged delta is resent next cycle
                if listing.rejected:
                    summary["rejected"] = len(listing.rejected)
                _print_summary(summary, args.json)
                status = 0
            except CYCLE_ERRORS as exc:
                _error(str(exc))
                status = 1
            except Exception as exc:  # a bug: report it in one line, keep the loop alive
                if os.environ.get(DEBUG_ENV):
                    raise
                _error(f"unexpected {type(exc).__name__}: {exc}")
                status = 1
            if args.interval is None or (args.cycles and cycle >= args.cycles):
                return status
            await asyncio.sleep(args.interval)
    finally:
        await sink.close()
        if service:
            await service.close()
        if publisher:
            publisher.close()


async def _run_serve(args: argparse.Namespace) -> int:
    from .delta_wire import decode_delta
    from .transport import serve_unix

    service, publisher = await _start_service(args)
    try:
        republished = await service.publish_pending()
    except Exception as exc:  # the service still runs; every delta retries the pending ones first
        _error(f"{type(exc).__name__}: {exc}")
        republished = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handle(frame: bytes) -> dict[str, Any]:
        try:
            result = await service.apply(decode_delta(frame))
        except Exception as exc:
            _error(f"delta rejected: {type(exc).__name__}: {exc}")
            raise
        _print_summary(result.summary(), args.json)
        return result.summary()

    def ready() -> None:
        print(
            json.dumps(
                {
                    "ready": True,
                    "listen": args.listen,
                    "pub": args.pub,
                    "write_method": service.write_method,
                    "cached": len(service.cache),
                    "republished": republished,
                }
            ),
            flush=True,
        )

    try:
        await serve_unix(args.listen, handle, ready=ready, stop=stop)
    finally:
        await service.close()
        publisher.close()
    return 0
