"""What ``shmpipe bars`` and ``shmpipe features`` share: the loop's options and running a service."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .arg_types import positive_float, positive_int


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_loop_arguments(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--pub", metavar="ENDPOINT",
                   help="ZeroMQ endpoint to publish signals on, bound here (e.g. ipc:///tmp/bars.pub or "
                        "tcp://127.0.0.1:5556); default: connect to the host's signals bus input")
    p.add_argument("--connect", action="store_true",
                   help="connect to --pub instead of binding it (a SignalBus input owned by another process)")
    p.add_argument("--name", default=default_name,
                   help=f"control endpoint and live-counters name (shmpipe.control.request(NAME, 'status'), "
                        f"shmpipe.stats.read(NAME)); default {default_name}")
    p.add_argument("--start", choices=("oldest", "newest"), default="oldest",
                   help="where a broadcast ring's new cursor starts (default oldest)")
    p.add_argument("--batch", type=positive_int, default=4096, metavar="N",
                   help="records read per batch at most (default 4096)")
    p.add_argument("--follow", action="store_true",
                   help="keep running when the ring's producer has gone (default: end once it has gone "
                        "and every record was read)")
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")


def loop_options(args: argparse.Namespace, ring: str):
    from shmpipe_services.consumers.loop import LoopOptions
    return LoopOptions(ring=ring, pub=args.pub, name=args.name, bind=False if args.connect else None,
                       start=args.start, max_n=args.batch, follow=args.follow)


def fail(command: str, message: str, code: int = 1) -> int:
    print(f"shmpipe {command}: {message}", file=sys.stderr)
    return code


def run_service(command: str, service, as_json: bool) -> int:
    from shmpipe_services.consumers.loop import ConsumerError
    try:
        result = service.run()
    except ConsumerError as exc:
        service.close()
        return fail(command, str(exc))
    except Exception as exc:   # never a traceback for the user; SHMPIPE_DEBUG=1 shows it
        if os.environ.get("SHMPIPE_DEBUG") == "1":
            raise
        service.close()
        return fail(command, f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
    if as_json:
        print(json.dumps(result, sort_keys=True), flush=True)
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
        sys.stdout.flush()
    return 0


__all__ = ["add_loop_arguments", "fail", "loop_options", "non_negative_float", "positive_float", "run_service"]
