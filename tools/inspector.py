"""`shmpipe inspect`: every ring on this host, who is attached, fill, rates and loss."""
from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show shmpipe rings: attached processes, fill level, rates, loss",
        description="Show every shmpipe ring (or the named ones): dtype, capacity, fill, records "
                    "written, producer and consumers with liveness, lag and loss. --watch refreshes "
                    "in place and adds rates; --json prints one machine-readable snapshot.",
    )
    p.add_argument("names", nargs="*", help="only these ring names")
    p.add_argument("--json", action="store_true", help="print one JSON snapshot and exit")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shmpipe import inventory

    if args.json:
        print(json.dumps([i.as_dict() for i in inventory.survey(args.names or None)], indent=1))
        return 0
    if args.watch is None:
        _print(inventory.survey(args.names or None), None, None)
        return 0
    if args.watch <= 0:
        print("--watch takes a positive number of seconds", file=sys.stderr)
        return 2
    previous, then = None, None
    while True:
        infos = inventory.survey(args.names or None)
        now = time.monotonic()
        sys.stdout.write("\x1b[H\x1b[2J")   # home + clear: refresh in place
        _print(infos, previous, (now - then) if then else None)
        sys.stdout.flush()
        previous, then = {i.name: i for i in infos}, now
        time.sleep(args.watch)


def _print(infos, previous, elapsed) -> None:
    if not infos:
        print("no shmpipe segments in /dev/shm")
        return
    for info in infos:
        use = "in use" if info.in_use else "STALE (no live owner; `shmpipe clean` removes it)"
        print(f"{info.name}  [{use}]  {info.size} bytes")
        if info.ring is None:
            print(f"  not readable as a ring: {info.problem}")
            continue
        r = info.ring
        rate = ""
        if previous and info.name in previous and previous[info.name].ring and elapsed:
            rate = f"  {(r['written'] - previous[info.name].ring['written']) / elapsed:,.0f} rec/s"
        kind = f"broadcast/{r['policy']}" if r["broadcast"] else "spsc"
        print(f"  {kind}, wait={r['wait']}, {r['capacity']} x {r['itemsize']} B, fill {r['fill']}/{r['capacity']}, "
              f"written {r['written']:,}{rate}, lost {r['lost']:,}, evictions {r['evictions']}")
        p = r["producer"]
        print(f"  producer: pid {p['pid'] or '-'} {'alive' if p['alive'] else 'gone'}, attached {p['attach_count']}x, "
              f"full waits {p['full_waits']:,}")
        for c in r["consumers"]:
            print(f"  consumer[{c['slot']}]: pid {c['pid'] or '-'} {'alive' if c['alive'] else 'gone'}, "
                  f"{c['state']}, position {c['position']:,}, lag {c['lag']:,}, lost {c['lost']:,}")
