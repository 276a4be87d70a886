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
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda _args, _exc=exc, _name=name: _unavailable(_name, _exc))
    return parser


def _unavailable(name: str, exc: Exception) -> int:
    print(f"shmpipe {name}: unavailable here: {exc}", file=sys.stderr)
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
