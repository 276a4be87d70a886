"""`shmpipe clean`: remove shmpipe segments that no live process holds."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "clean",
        help="remove /dev/shm/shmpipe.* segments whose every owner is dead",
        description="List shmpipe segments that no live process has open (their producer, consumers "
                    "and every other handle are gone, e.g. after a crash), and with --yes remove them. "
                    "Segments in use are never touched. Liveness comes from kernel file locks, so "
                    "kill -9 and pid reuse cannot fool it.",
    )
    p.add_argument("names", nargs="*", help="only these ring names (default: every shmpipe segment)")
    p.add_argument("--yes", "-y", action="store_true", help="remove them (default: only list)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shmpipe import inventory

    infos = inventory.survey(args.names or None)
    stale = inventory.stale(infos)
    removed = [i.name for i in stale if args.yes and inventory.remove(i)]
    if args.json:
        print(json.dumps({
            "stale": [i.name for i in stale],
            "in_use": [i.name for i in infos if i.in_use],
            "removed": removed,
        }))
        return 0
    if not stale:
        print(f"nothing to clean ({len(infos)} shmpipe segment(s), all in use)")
        return 0
    for info in stale:
        what = "removed" if info.name in removed else ("kept: in use again" if args.yes else "stale")
        kind = info.problem or f"{info.ring['capacity']} x {info.ring['itemsize']} B ring"
        print(f"{what:10} {info.path}  ({info.size} bytes; {kind})")
    if not args.yes:
        print(f"{len(stale)} stale segment(s); run `shmpipe clean --yes` to remove them")
    return 0
