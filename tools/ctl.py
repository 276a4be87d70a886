"""``shmpipe ctl SERVICE COMMAND``: one request to a service's control endpoint, for people."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ctl",
        help="ask a running service: status, stats, pause, resume, stop (ctl list: who runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sends COMMAND to SERVICE's control endpoint (ipc:// in $SHMPIPE_RUNTIME_DIR, else\n"
        "$XDG_RUNTIME_DIR/shmpipe, else /tmp/shmpipe-UID) and prints the answer. Every service answers\n"
        "status, stats, pause, resume, stop, ping and help; the launcher answers as `launcher`.\n"
        "`shmpipe ctl list` shows the services with an endpoint and whether they answer.\n"
        "A capture also answers resnapshot (one symbol's book, resynchronised), with\n"
        "--args '{\"exchange\": \"kraken\", \"symbol\": \"BTC/USD\"}' or '{\"symbol_id\": 7}'.\n"
        "A dead service, an unknown command or a refusal is one line on stderr, exit 1.",
    )
    p.add_argument("service", metavar="SERVICE", help="service name, or `list`")
    p.add_argument(
        "command", metavar="COMMAND", nargs="?", help="status, stats, pause, resume, stop, ping, help, ..."
    )
    p.add_argument(
        "--args",
        metavar="JSON",
        help="arguments, a JSON object (e.g. capture's resnapshot: "
        '\'{"exchange": "kraken", "symbol": "BTC/USD"}\')',
    )
    p.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for the answer (default 2)"
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"shmpipe ctl: {message}", file=sys.stderr)
    return code


def _pretty(value, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_pretty(item, indent + 1))
            elif isinstance(item, list) and item and any(isinstance(x, (dict, list)) for x in item):
                lines.append(f"{pad}{key}:")
                for x in item:
                    sub = _pretty(x, indent + 2)
                    if sub:
                        sub[0] = f"{pad}  - " + sub[0].lstrip()
                    lines.extend(sub)
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(item) -> str:
    if isinstance(item, list):
        return ", ".join(_scalar(x) for x in item) if item else "none"
    if item is None:
        return "-"
    if isinstance(item, bool):
        return "yes" if item else "no"
    if isinstance(item, dict):
        return "{}"
    return str(item)


def _list(args: argparse.Namespace) -> int:
    from shmpipe import control

    rows = []
    for name in control.list_services():
        answer = control.ping(name, timeout=min(args.timeout, 0.5))
        rows.append(
            {"service": name, "pid": answer.get("pid") if answer else None, "answers": answer is not None}
        )
    if args.json:
        print(json.dumps({"services": rows}))
    elif not rows:
        print(f"no services ({control.runtime_dir()})")
    else:
        for row in rows:
            state = (
                f"pid {row['pid']}" if row["answers"] else "not answering (dead? its endpoint is left over)"
            )
            print(f"{row['service']:<24} {state}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        from shmpipe import control

        control._zmq()
    except Exception as exc:  # noqa: BLE001 - ControlError: pyzmq missing
        return _fail(str(exc), 2)
    if args.list or args.service == "list":
        if args.command:
            return _fail("`ctl list` takes no command", 2)
        try:
            return _list(args)
        except control.ControlError as exc:
            return _fail(str(exc), 1)
    if not args.command:
        return _fail(f"which command for {args.service}? e.g. shmpipe ctl {args.service} status", 2)
    if not args.timeout > 0:
        return _fail(f"--timeout must be > 0, not {args.timeout:g}", 2)
    call_args = {}
    if args.args:
        try:
            call_args = json.loads(args.args)
        except ValueError as exc:
            return _fail(f"--args is not JSON: {exc}", 2)
        if not isinstance(call_args, dict):
            return _fail("--args must be a JSON object", 2)
    try:
        result = control.request(args.service, args.command, call_args, timeout=args.timeout)
    except control.InvalidArgumentError as exc:
        return _fail(str(exc), 2)
    except control.ControlError as exc:
        return _fail(str(exc), 1)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print("\n".join(_pretty(result)) or "ok")
    return 0
