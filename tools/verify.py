"""``shmpipe verify``: thin argument handling over ``shmpipe_services.verify.service``."""

from __future__ import annotations

import argparse

from .arg_types import positive_float


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check a TICK ring's sequence numbers (loss, disorder, producer restarts) and lateness",
        description="Joins a TICK ring as a reader and checks that every tick's sequence follows the one "
        "before it (a jump counts lost ticks, a fall back to 0 a producer restart, anything else "
        "disorder); measures each tick's lateness behind the synthetic feed's schedule. Publishes "
        "its counters to shmpipe.stats under --name and answers `shmpipe ctl NAME ...`. Exits 1 "
        "if a tick was lost or out of order.",
    )
    p.add_argument("--ticks", required=True, metavar="RING", help="ring of shmpipe.records.TICK")
    p.add_argument("--name", default="verify", help="stats and control name (default verify)")
    p.add_argument(
        "--seconds", type=positive_float, help="stop after this many seconds (default: until stopped)"
    )
    p.add_argument(
        "--start",
        choices=("newest", "oldest"),
        default="newest",
        help="where a broadcast reader joins (default newest)",
    )
    p.add_argument(
        "--sequence",
        choices=("check", "none"),
        default="check",
        help="check: ticks are numbered 0, 1, 2, ... as the synthetic feed numbers them (default); "
        "none: only count them (a venue's own numbers, e.g. Kraken trade ids, have gaps)",
    )
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shmpipe_services.verify.service import main

    return main(args.ticks, args.name, args.seconds, args.json, args.start, args.sequence == "check")
