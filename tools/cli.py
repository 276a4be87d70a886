"""The ``shmpipe`` console script: a thin dispatcher over subcommands that live elsewhere.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its parser and sets
``func`` (called with the parsed args, returns an exit code). Modules are imported lazily so
``shmpipe clean`` does not pay for asyncpg or matplotlib.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing add_parser(); kept in one table so --help lists them all.
SUBCOMMANDS = {
    "clean": "shmpipe_tools.clean",
    "inspect": "shmpipe_tools.inspector",
    "demo": "shmpipe_tools.demo",
    "bench": "shmpipe_bench.cli",
    "assets": "shmpipe_services.asset_sync.cli",
    "feed-server": "shmpipe_tools.feed_server",
    "capture": "shmpipe_tools.capture",
    "replay": "shmpipe_tools.replay",
    "orderbook": "shmpipe_tools.orderbook",
    "bars": "shmpipe_tools.bars",
    "features": "shmpipe_tools.features",
    "metrics": "shmpipe_tools.metrics",
    "bridge": "shmpipe_tools.bridge",
    "launch": "shmpipe_tools.launch",
    "ctl": "shmpipe_tools.ctl",
    "verify": "shmpipe_tools.verify",
    "alpaca-paper": "shmpipe_tools.alpaca_paper",
    "execute": "shmpipe_tools.execute",
    "risk": "shmpipe_tools.risk",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmpipe",
        description="shmpipe: fixed-size record rings over POSIX shared memory (/dev/shm).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ImportError as exc:  # an optional extra is missing: say so instead of vanishing
            hint = f"unavailable here: {exc}; {EXTRA_HINTS.get(name, 'reinstall shmpipe')}"
            p = sub.add_parser(name, help=f"({hint})", description=hint)
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=lambda _args, _hint=hint, _name=name: _unavailable(_name, _hint))
    return parser


# What to install when a subcommand's optional dependencies are missing.
EXTRA_HINTS = {
    "bench": "pip install 'shmpipe[bench]'",
    "assets": "pip install 'shmpipe[services]'",
    "feed-server": "pip install 'shmpipe[services]'",
    "capture": "pip install 'shmpipe[services]'",
    "replay": "pip install 'shmpipe[services]'",
    "orderbook": "pip install 'shmpipe[services]'",
    "bars": "pip install 'shmpipe[services]'",
    "features": "pip install 'shmpipe[services]'",
    "metrics": "pip install 'shmpipe[services]'",
    "bridge": "pip install 'shmpipe[services]'",
    "ctl": "pip install 'shmpipe[services]'",
    "alpaca-paper": "pip install 'shmpipe[trading]'",
    "execute": "pip install 'shmpipe[trading]'",
    "risk": "pip install 'shmpipe[services]'",
}


def _unavailable(name: str, hint: str) -> int:
    print(f"shmpipe {name}: {hint}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
