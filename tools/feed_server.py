"""``shmpipe feed-server``: play recorded exchange frames to websocket clients (see
``shmpipe_services.capture.feed_server`` for pacing and routing)."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .arg_types import positive_int, speed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "feed-server",
        help="play recorded exchange frames (.jsonl) to websocket clients, with injectable faults",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A websocket server on HOST:PORT that sends each client, after the client's first\n"
        "message (its subscribe), every line of FILE as one text frame, then closes the connection.\n"
        "--speed 1 keeps the recorded pace (each line's first RFC 3339 timestamp), 0 sends as fast as\n"
        "possible. With several files, path /1, /2, ... (or /NAME, the file name without extension)\n"
        "picks the file and / the first one. Frame numbers N are 1-based line numbers.\n"
        "Kraken and Coinbase recordings: a client that subscribes a symbol's book again mid-stream\n"
        "(after an unsubscribe or not) gets the venue's ack and a fresh snapshot of that book as\n"
        "played so far (Kraken: with its CRC32 checksum; Coinbase: the connection's next sequence_num,\n"
        "later lines renumbered); the first subscribe is answered by the recording itself.\n"
        "Prints 'listening on ws://HOST:PORT/' once ready (port 0 picks a free port).",
    )
    p.add_argument("files", nargs="+", metavar="FILE.jsonl", help="recordings, one raw frame per line")
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--speed", type=speed, default=1.0,
                   help="1 = recorded pace, 2 = twice as fast, 0 = as fast as possible (default 1)")
    p.add_argument("--disconnect-after", type=positive_int, metavar="N",
                   help="fault: drop the TCP connection (no close frame) after sending N frames")
    p.add_argument("--drop", type=positive_int, action="append", default=[], metavar="N",
                   help="fault: never send line N, a gap (repeatable)")
    p.add_argument("--malformed", type=positive_int, action="append", default=[], metavar="N",
                   help="fault: send line N cut in half, invalid JSON (repeatable)")
    p.add_argument("--corrupt", type=positive_int, action="append", default=[], metavar="N",
                   help="fault: send book line N with one level's size altered (a Kraken checksum no "
                        "longer matches); the server's own book keeps the true size, so a resubscribe "
                        "repairs the client's (repeatable)")
    p.add_argument("--stall-after", type=positive_int, metavar="N",
                   help="fault: after N frames send nothing more but keep the connection open")
    p.add_argument("--faulty-connections", type=int, default=0, metavar="K",
                   help="faults apply to the first K connections per file, later ones are clean "
                        "(to test reconnects; default 0 = every connection)")
    p.add_argument("--exit-after", type=positive_int, metavar="N",
                   help="exit 0 once N connections have finished (default: serve until stopped)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from shmpipe_services.capture.feed_server import Faults, FeedFileError, main_logging, serve_files
    except ImportError as exc:
        print(f"shmpipe feed-server: unavailable here: {exc}; pip install 'shmpipe[services]'",
              file=sys.stderr)
        return 2

    faults = Faults(disconnect_after=args.disconnect_after, drop=frozenset(args.drop),
                    malformed=frozenset(args.malformed), stall_after=args.stall_after,
                    corrupt=frozenset(args.corrupt),
                    connections=args.faulty_connections)

    def ready(server) -> None:
        print(f"listening on ws://{server.host}:{server.port}/ ({len(server.recordings)} file(s), "
              f"speed {args.speed:g})", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await serve_files(args.files, port=args.port, host=args.host, speed=args.speed, faults=faults,
                          exit_after=args.exit_after, ready=ready)

    main_logging()
    try:
        asyncio.run(main())
    except FeedFileError as exc:
        print(f"shmpipe feed-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the address is taken, or not ours to bind
        print(f"shmpipe feed-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    except asyncio.CancelledError:  # SIGTERM
        return 0
    return 0
