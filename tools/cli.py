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
    "export": "shmpipe_tools.export",
    "alpaca-paper": "shmpipe_tools.alpaca_paper",
    "execute": "shmpipe_tools.execute",
    "risk": "shmpipe_tools.risk",
}


# How `shmpipe --help` groups the subcommands, in the order a new user meets them. A subcommand in
# no group is still listed, under "other": adding one to SUBCOMMANDS is enough to be seen, naming
# its group here puts it in place.
GROUPS = {
    "run a pipeline": ("demo", "launch", "ctl", "clean"),
    "look at it": ("inspect", "metrics", "verify"),
    "move data": ("capture", "replay", "feed-server", "orderbook", "bars", "features", "bridge", "assets",
                  "export"),
    "trade": ("risk", "execute", "alpaca-paper"),
    "measure": ("bench",),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shmpipe")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def grouped_help(sub: argparse._SubParsersAction) -> str:
    """The subcommands with their one-line help, under the headings of GROUPS."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    placed = {name for names in GROUPS.values() for name in names}
    groups = dict(GROUPS)
    others = tuple(n for n in helps if n not in placed)
    if others:
        groups["other"] = others
    width = max(len(n) for n in helps) + 2
    lines = []
    for title, names in groups.items():
        present = [n for n in names if n in helps]
        if not present:
            continue
        lines.append(f"{title}:")
        lines += [f"  {n:<{width}}{helps[n]}" for n in present]
        lines.append("")
    lines.append("`shmpipe COMMAND --help` says more about each.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmpipe",
        usage="shmpipe [-h] [--version] COMMAND ...",
        description="shmpipe: fixed-size record rings over POSIX shared memory (/dev/shm).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shmpipe {version()}")
    # the flat list argparse would print is replaced by the grouped one (the epilog below)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog="shmpipe")
    for name, module in SUBCOMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ImportError as exc:  # an optional extra is missing: say so instead of vanishing
            hint = f"unavailable here: {exc}; {EXTRA_HINTS.get(name, 'reinstall shmpipe')}"
            p = sub.add_parser(name, help=f"({hint})", description=hint)
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=lambda _args, _hint=hint, _name=name: _unavailable(_name, _hint))
    parser.epilog = grouped_help(sub)
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
    "export": "pip install 'shmpipe[export]'",
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
