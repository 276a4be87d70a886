"""`shmpipe metrics`: serve the Prometheus metrics of this host's rings and service counters
(shmpipe.metrics) until SIGINT or SIGTERM."""
from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading

if importlib.util.find_spec("prometheus_client") is None:   # so `shmpipe --help` says what to install
    raise ImportError("No module named 'prometheus_client'")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {port}")
    return port


def add_parser(sub) -> None:
    p = sub.add_parser(
        "metrics",
        help="serve Prometheus metrics of every ring and shmpipe.stats publisher",
        description="Serve /metrics over HTTP for Prometheus: each scrape surveys the rings (written, "
                    "lost, evictions, full waits, fill, capacity, per-consumer lag/position/loss, producer "
                    "alive) and every shmpipe.stats publisher's fields, attaching to nothing. Runs until "
                    "SIGINT or SIGTERM. The metric names are listed in shmpipe.metrics.",
    )
    p.add_argument("names", nargs="*", metavar="RING", help="only these rings (default: every ring)")
    p.add_argument("--port", type=_port, required=True, help="TCP port (0: any free one, printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--service", action="append", metavar="NAME",
                   help="only the stats publishers named NAME or NAME.* (repeatable; default: every one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shmpipe import segments
    from shmpipe.errors import InvalidNameError
    from shmpipe.metrics import MetricsServerError, start_metrics_server

    for name in args.names:
        try:
            segments.validate_name(name)
        except InvalidNameError as exc:
            print(f"shmpipe metrics: {exc}", file=sys.stderr)
            return 2
    try:
        server = start_metrics_server(args.port, args.host, args.names or None, args.service)
    except MetricsServerError as exc:
        print(f"shmpipe metrics: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"serving shmpipe metrics on {server.url} (Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):   # a timed wait: SIGINT gets through to raise KeyboardInterrupt
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    return 0
