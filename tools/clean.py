"""`shmpipe clean`: remove shmpipe segments that no live process holds."""
from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys

_GLOB_CHARS = "*?["


def add_parser(sub) -> None:
    p = sub.add_parser(
        "clean",
        help="remove /dev/shm/shmpipe.* segments whose every owner is dead (and dead publishers' stats)",
        description="List shmpipe segments that no live process has open (their producer, consumers "
                    "and every other handle are gone, e.g. after a crash), and with --yes remove them. "
                    "Stats segments (/dev/shm/shmpipe-stats.*) whose publisher is dead are listed and "
                    "removed too. Segments in use are never touched. Liveness comes from kernel file "
                    "locks, so kill -9 and pid reuse cannot fool it. NAME may be a glob ('mine.*', "
                    "quoted so the shell leaves it alone); a NAME that matches nothing is said so "
                    "(exit 1 when none matches).",
    )
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="only these ring or stats names, or globs (default: every shmpipe segment)")
    p.add_argument("--yes", "-y", action="store_true", help="remove them (default: only list)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def select(patterns: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    """(the names matching any pattern -- a plain name or a glob --, the patterns matching none)."""
    chosen, unmatched = [], []
    for pattern in patterns:
        if any(c in pattern for c in _GLOB_CHARS):
            hits = fnmatch.filter(names, pattern)
        else:
            hits = [pattern] if pattern in names else []
        if not hits:
            unmatched.append(pattern)
        chosen += [n for n in hits if n not in chosen]
    return chosen, unmatched


def run(args: argparse.Namespace) -> int:
    from shmpipe import inventory, segments

    ring_names, stats_names = segments.list_names(), inventory.stats_names()
    unmatched: list[str] = []
    if args.names:
        ring_names, ring_unmatched = select(args.names, ring_names)
        stats_names, stats_unmatched = select(args.names, stats_names)
        unmatched = [p for p in ring_unmatched if p in stats_unmatched]
    infos = inventory.survey(ring_names)
    stale = inventory.stale(infos)
    removed = [i.name for i in stale if args.yes and inventory.remove(i)]
    stats_infos = inventory.survey_stats(stats_names)
    stale_stats = inventory.stale_stats(stats_infos)
    removed_stats = [i.name for i in stale_stats if args.yes and inventory.remove_stats(i)]
    for pattern in unmatched:
        print(f"shmpipe clean: no shmpipe segment matches {pattern!r}", file=sys.stderr)
    code = 1 if args.names and len(unmatched) == len(args.names) else 0
    if args.json:
        print(json.dumps({
            "stale": [i.name for i in stale],
            "in_use": [i.name for i in infos if i.in_use],
            "removed": removed,
            "stale_stats": [i.name for i in stale_stats],
            "removed_stats": removed_stats,
            "unmatched": unmatched,
        }))
        return code
    if not stale and not stale_stats:
        if code == 0:
            print(f"nothing to clean ({len(infos)} shmpipe segment(s), all in use; "
                  f"{len(stats_infos)} stats segment(s), all with a live publisher)")
        return code
    for info in stale:
        what = "removed" if info.name in removed else ("kept: in use again" if args.yes else "stale")
        kind = info.problem or f"{info.ring['capacity']} x {info.ring['itemsize']} B ring"
        print(f"{what:10} {info.path}  ({info.size} bytes; {kind})")
    for sinfo in stale_stats:
        what = "removed" if sinfo.name in removed_stats else ("kept: live again" if args.yes else "stale")
        print(f"{what:10} {sinfo.path}  (stats of pid {sinfo.pid}, which is gone)")
    if not args.yes:
        again = " ".join(["shmpipe clean --yes", *map(shlex.quote, args.names)])
        print(f"{len(stale) + len(stale_stats)} stale segment(s); run `{again}` to remove them")
    return code
