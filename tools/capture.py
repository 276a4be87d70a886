"""``shmpipe capture`` and ``shmpipe replay``: thin argument handling over
``shmpipe_services.capture.process`` (where the loop, reconnects and replay live)."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from .arg_types import positive_float, positive_int, speed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "capture", help="exchange websocket (or synthetic feed) -> TICK / LEVEL_UPDATE rings, raw .wslog, journal",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Connects to a venue's websocket, subscribes, parses every frame into Ticks and\n"
        "LevelUpdates and writes them to two broadcast rings (attached if they exist, else created\n"
        "lossless: ticks 65536 records, levels 262144). Reconnects with backoff and jitter on a dropped\n"
        "connection; ends when the feed closes normally, reconnects are exhausted, --seconds pass or on\n"
        "SIGTERM/SIGINT, then prints its counters.\n\n"
        "Control plane (shmpipe.control, service name = --name): status, stats, pause, resume, stop\n"
        "(like SIGTERM) and resnapshot {\"symbol_id\": ID} or {\"exchange\": EX, \"symbol\": SYM}, which\n"
        "resubscribes that one symbol's book channel for a fresh snapshot (synthetic: writes one). E.g.\n"
        "  python -c 'from shmpipe import control; print(control.request(\"ticks.kraken\", \"status\"))'\n"
        "Paused, a websocket capture stops reading the socket (TCP backpressure: nothing dropped; a\n"
        "long pause may make the venue drop the connection, then capture reconnects and flags the gap).")
    p.add_argument("--feed", required=True, choices=("coinbase", "kraken", "alpaca", "synthetic"))
    p.add_argument("--url", help="websocket URL (not for --feed synthetic)")
    p.add_argument("--ticks", required=True, metavar="RING", help="ring of shmpipe.records.TICK")
    p.add_argument("--levels", required=True, metavar="RING", help="ring of shmpipe.records.LEVEL_UPDATE")
    p.add_argument("--symbols", help="comma-separated symbols (default: the fixtures' per venue); "
                                     "--feed synthetic: how many symbols (default 8)")
    p.add_argument("--raw-dir", metavar="DIR", help="write every frame and connect/subscribe/disconnect "
                                                     "markers to DIR/<exchange>/YYYYMMDD_HH.wslog")
    p.add_argument("--journal-dir", metavar="DIR", help="append ticks to DIR/<YYYYMMDD>/<symbol_id>.ticks")
    p.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print the counters as one JSON object")
    p.add_argument("--name", help="publish live counters to /dev/shm/shmpipe-stats.NAME, read with "
                                  "shmpipe.stats.read(NAME), and answer the control plane as service NAME "
                                  "(default: TICKS.FEED, e.g. ticks.kraken: captures of several venues may "
                                  "share the rings; at most 64 of A-Z a-z 0-9 _ . -)")
    p.add_argument("--max-attempts", type=positive_int, default=10,
                   help="reconnect attempts in a row before giving up (default 10)")
    p.add_argument("--backoff", type=positive_float, default=0.5,
                   help="first reconnect delay in seconds, doubled per failed attempt, jittered (default 0.5)")
    p.add_argument("--silence", type=speed, default=5.0, metavar="S",
                   help="Coinbase/Kraken: a connection silent this many seconds (their heartbeats come "
                        "every ~1 s) gets its books invalidated and is replaced; 0 never (default 5)")
    p.add_argument("--rate", type=positive_float, default=100_000.0,
                   help="--feed synthetic: events per second (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="--feed synthetic: random seed (default 0)")
    p.add_argument("--paused", action="store_true",
                   help="--feed synthetic: start paused (answering the control plane); `resume` opens the "
                        "market, as `shmpipe demo` does once every stage is up")
    p.add_argument("--market", action="store_true",
                   help="--feed synthetic: a market model (books that stay valid, trades at the touch, event "
                        "times of now, Kraken checksums; a few µs an event, so rates up to ~50000/s) instead "
                        "of the load generator; answers the control command fault {\"kind\": \"gap\"|"
                        "\"corrupt\"|\"drop\"}")
    p.set_defaults(func=run_capture)


def add_replay_parser(sub) -> None:
    r = sub.add_parser(
        "replay", help="replay .wslog captures through the venue parsers into TICK / LEVEL_UPDATE rings",
        description="Merges the files (and every .wslog/.wslog.zst under directories) by receive time and "
        "feeds each frame to its exchange's parser (1 coinbase, 2 kraken, 3 alpaca) with its receive "
        "time, so the rings get exactly what the live capture wrote. A damaged file replays up to its "
        "last complete entry and the counters say where it stopped.")
    r.add_argument("paths", nargs="+", metavar="PATH")
    r.add_argument("--ticks", metavar="RING", help="ring of TICK (required unless --report)")
    r.add_argument("--levels", metavar="RING", help="ring of LEVEL_UPDATE (required unless --report)")
    r.add_argument("--report", action="store_true",
                   help="no rings: print what the capture lost per exchange and symbol (sequence gaps, "
                        "disconnect spans, stale periods, parse errors)")
    r.add_argument("--stale-after", type=positive_float, default=5.0, metavar="S",
                   help="--report: a channel/symbol silent longer than S seconds is stale (default 5)")
    r.add_argument("--speed", type=speed, default=0.0,
                   help="0 = as fast as possible (default), 1 = recorded pace, 2 = twice as fast")
    r.add_argument("--json", action="store_true", help="print the counters as one JSON object")
    r.set_defaults(func=run_replay)


def _fail(command: str, message: str) -> int:
    print(f"shmpipe {command}: {message}", file=sys.stderr)
    return 1


def _print_counters(counters: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(counters, sort_keys=True), flush=True)
        return
    for key, value in counters.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = "; ".join(value) or "none"
        print(f"{key}: {value}")
    sys.stdout.flush()


def run_capture(args: argparse.Namespace) -> int:
    from shmpipe_services.capture import process as cp
    if args.feed != "synthetic" and not args.url:
        return _fail("capture", f"--feed {args.feed} needs --url")
    if args.feed == "synthetic":
        try:
            n_symbols = int(args.symbols or 8)
        except ValueError:
            return _fail("capture", f"--feed synthetic takes --symbols K, a count, not {args.symbols!r}")
        if n_symbols < 1:
            return _fail("capture", "--symbols must be >= 1")
        if args.raw_dir or args.url:   # said, not silently ignored
            return _fail("capture", "--feed synthetic receives no frames: it takes no --url or --raw-dir "
                                    "(use --journal-dir)")
    else:
        symbols = [s for s in (args.symbols or "").split(",") if s] or cp.DEFAULT_SYMBOLS[args.feed]
    try:
        ticks_ring, levels_ring, _created = cp.open_or_create_rings(args.ticks, args.levels)
    except cp.CaptureError as exc:
        return _fail("capture", str(exc))
    journal = wslog = None
    counters = cp.Counters()
    writer = None
    from shmpipe import stats as shm_stats
    from shmpipe.errors import InvalidNameError
    try:
        publisher = shm_stats.publish(args.name or f"{args.ticks}.{args.feed}", cp.STATS_FIELDS)
    except (shm_stats.StatsBusyError, InvalidNameError) as exc:
        for ring in (ticks_ring, levels_ring):
            if ring.name in _created:
                ring.unlink()
            ring.close()
        return _fail("capture", str(exc))
    stats_feed = cp.StatsFeed(publisher, counters)
    name = args.name or f"{args.ticks}.{args.feed}"
    server = None
    try:
        if args.journal_dir:
            from shmpipe.journal import TickJournal
            journal = TickJournal(args.journal_dir)
        writer = cp.RingWriter(ticks_ring, levels_ring, counters, journal)
        if args.feed == "synthetic":
            stop = [False]

            def on_signal(_sig, _frame):
                stop[0] = True
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            synthetic = cp.SyntheticCapture(writer, rate=args.rate, symbols=n_symbols, seed=args.seed,
                                            seconds=args.seconds, stop_flag=stop, stats=stats_feed,
                                            market=args.market)
            synthetic.paused = args.paused
            server = _serve_control(synthetic, name, args)
            synthetic.run()
            result = counters.as_dict()
        else:
            if args.raw_dir:
                from shmpipe.wslog import WslogWriter
                wslog = WslogWriter(args.raw_dir, {v: k for k, v in cp.EXCHANGE_IDS.items()})
            options = cp.CaptureOptions(args.feed, args.url, symbols, seconds=args.seconds,
                                        max_attempts=args.max_attempts, backoff_s=args.backoff,
                                        silence_s=args.silence or None)
            capture = cp.Capture(options, writer, wslog, stats=stats_feed)
            server = _serve_control(capture, name, args)

            async def main() -> None:
                task = asyncio.current_task()
                cp.install_stop_signals(asyncio.get_running_loop(), task)
                try:
                    await capture.run()
                except asyncio.CancelledError:   # SIGTERM / SIGINT / the stop command: a normal end
                    capture.ended = capture.ended or "signal"
            asyncio.run(main())
            result = counters.as_dict()
            result["ended"] = capture.ended
            result["connections"] = capture.connections
    except (cp.CaptureError, ControlUnavailable) as exc:
        # nothing ran: rings made for this run alone would only be litter in /dev/shm
        for ring in (ticks_ring, levels_ring):
            if ring.name in _created:
                ring.unlink()
        print(f"shmpipe capture: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, ControlUnavailable) else 1
    except OSError as exc:   # a raw or journal directory we cannot write
        return _fail("capture", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    finally:
        if server is not None:
            server.close()   # the endpoint goes with the capture
        publisher.close()   # a clean end removes the segment; only a killed capture leaves one
        if writer is not None:
            writer.close()
        if wslog is not None:
            wslog.close()
        if journal is not None:
            journal.close()
        ticks_ring.close()
        levels_ring.close()
    _print_counters(result, args.json)
    return 0


class ControlUnavailable(Exception):
    """The control endpoint cannot be served: the name is taken (exit 1) or not a service name (2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _serve_control(capture, name: str, args: argparse.Namespace):
    from shmpipe_services.capture.commands import serve

    from shmpipe.control import ControlError
    from shmpipe.errors import InvalidArgumentError
    try:
        return serve(capture, name=name, feed=args.feed, ticks=args.ticks, levels=args.levels)
    except InvalidArgumentError as exc:
        raise ControlUnavailable(f"--name: {exc}", 2) from None
    except ControlError as exc:
        raise ControlUnavailable(str(exc), 1) from None


def run_replay(args: argparse.Namespace) -> int:
    from shmpipe.errors import WslogFormatError
    from shmpipe_services.capture import process as cp
    from shmpipe.wslog import wslog_files
    from pathlib import Path
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _fail("replay", f"no such file or directory: {missing[0]}")
    if not wslog_files(*args.paths):
        return _fail("replay", f"no .wslog or .wslog.zst files in {', '.join(args.paths)}")
    if args.report:
        return _run_report(args)
    if not args.ticks or not args.levels:
        return _fail("replay", "--ticks and --levels are required (or --report, which needs no rings)")
    try:
        ticks_ring, levels_ring, _created = cp.open_or_create_rings(args.ticks, args.levels)
    except cp.CaptureError as exc:
        return _fail("replay", str(exc))
    writer = cp.RingWriter(ticks_ring, levels_ring, cp.Counters())
    try:
        result = cp.replay(args.paths, writer, speed=args.speed)
    except WslogFormatError as exc:   # a corrupt .zst: the message names the file
        for ring in (ticks_ring, levels_ring):
            if ring.name in _created:   # made for this run alone
                ring.unlink()
        return _fail("replay", str(exc))
    finally:
        writer.close()
        ticks_ring.close()
        levels_ring.close()
    out = result.as_dict()
    _print_counters(out, args.json)
    if not args.json:
        for stop in result.stops:
            print(f"stopped early: {stop}", file=sys.stderr)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from shmpipe.errors import WslogFormatError
    from shmpipe_services.capture.gap_report import format_report, gap_report
    if args.ticks or args.levels or args.speed:
        return _fail("replay", "--report reads the files only: it takes no --ticks, --levels or --speed")
    try:
        report = gap_report(args.paths, stale_after_s=args.stale_after)
    except WslogFormatError as exc:
        return _fail("replay", str(exc))
    if args.json:
        print(json.dumps(report, sort_keys=True), flush=True)
    else:
        print("\n".join(format_report(report)), flush=True)
    return 0
