"""``shmpipe demo --trade``: the whole loop, books to fills, on the synthetic market
(``capture --market``; examples/pipeline-trade.toml) under the launcher, for a while; then every
figure is read from the service that owns it and summed up:

    orders_sent        orders the engine placed (its journal: state sent)
    fills              fills the engine recorded (from trade_updates and REST look-ups)
    rejects            by reason: the risk manager's ("risk:max_position_value", "risk:book", ...)
                       and the engine's ("execute:slippage", "execute:venue 403", ...)
    book_rejects       the "risk:book" rejects by why (stale, invalid, unverified, crossed, no_book, ...)
    marks              where each of risk, execute and the venue says its marks come from ("books":
                       the OrderbookEntry mids of the books ring)
    duplicate_orders   orders at the venue beyond one per intent the engine sent (must be 0)
    duplicates_prevented  retries the venue refused as "client_order_id must be unique"
    pnl                the venue's equity minus its starting cash, marked at the live mids (exact);
                       null, with pnl_unknown_because, when a held symbol has no trusted mid
    positions_match    the engine's positions equal the venue's

Everything is private to the run (rings, sockets, symbol registry, journal) and removed after; the
logs are kept, and named, when the run fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

LIMITS = """[limits]
max_order_value = "1000"
max_position_value = "800"
buying_power = "5000"
max_daily_loss = "500"
stale_book_s = 2.0
"""
START_CASH = Decimal(1_000_000)     # alpaca-paper's default --cash


def example_path(name: str) -> Path:
    """The installed example (package ``shmpipe_examples``), else the checkout's ``examples/``."""
    from shmpipe_services.launcher.demo import example_path as launcher_example_path

    return launcher_example_path(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _figures(services: dict[str, str]) -> dict[str, Any]:
    from shmpipe import control

    execute = control.request(services["execute"], "status", timeout=10)
    risk = control.request(services["risk"], "status", timeout=10)
    venue = control.request(services["venue"], "status", timeout=10)
    venue_positions = {p["symbol"]: p["qty"]
                       for p in control.request(services["venue"], "positions", timeout=10)["positions"]}
    account = control.request(services["venue"], "account", timeout=10)
    rejects = {f"risk:{k}": v for k, v in risk["rejects"].items()}
    rejects.update({f"execute:{k}": v for k, v in execute["rejects"].items()})
    return {
        "intents": risk["intents"], "approved": risk["approved"], "orders_sent": execute["orders_sent"],
        "fills": execute["fills"], "rejects": rejects, "failed": execute["failed"],
        "duplicate_orders": venue["orders"] - execute["orders"].get("sent", 0),
        "duplicates_prevented": execute["duplicates_prevented"], "retries": execute["retries"],
        "book_rejects": risk.get("book_rejects", {}),
        "marks": {"risk": risk.get("marks"), "execute": execute.get("marks"), "venue": venue.get("marks")},
        "pnl": None if account.get("unmarked_symbols") else str(Decimal(account["equity"]) - START_CASH),
        "pnl_unknown_because": (f"no trusted mid for held {', '.join(account['unmarked_symbols'])}"
                                if account.get("unmarked_symbols") else ""),
        "positions": execute["positions"],
        "positions_match": {s: Decimal(q) for s, q in execute["positions"].items()} ==
                           {s: Decimal(q) for s, q in venue_positions.items()},
        "last_risk_reject": risk["last_reject"], "risk_engine_mismatches": risk["engine_mismatches"],
        "venue_faults": {k: v for k, v in venue.items() if k.startswith("fault_") and v},
        "signal_to_sent_p50_us": execute["signal_to_sent_p50_us"],
        "signal_to_sent_p99_us": execute["signal_to_sent_p99_us"],
    }


def run_trade_demo(seconds: float, *, as_json: bool = False, err=sys.stderr) -> tuple[dict[str, Any], list[str]]:
    from shmpipe_services.launcher.config import loads
    from shmpipe_services.launcher.private_run import private_registry
    from shmpipe_services.launcher.supervisor import Launcher, LaunchError, install_stop_signals

    tmp = tempfile.mkdtemp(prefix="shmpipe-trade-", dir="/tmp")      # short: ipc:// paths are limited
    with private_registry(tmp, f"trade-{os.getpid()}"):
        log_dir = os.path.join(tmp, "logs")
        limits = os.path.join(tmp, "limits.toml")
        with open(limits, "w") as f:
            f.write(LIMITS)

        def say(line: str) -> None:
            if not as_json:
                print(f"shmpipe demo: {line}", file=err, flush=True)

        summary: dict[str, Any] = {}
        problems: list[str] = []
        launcher = None
        try:
            path = example_path("pipeline-trade.toml")
            text = (path.read_text().replace("{venue_port}", str(_free_port())).replace("{limits}", limits)
                    .replace("{journal}", os.path.join(tmp, "journal.sqlite"))
                    .replace("{python}", sys.executable))
            prefix = f"trade-{os.getpid()}."
            pipeline = loads(text, str(path), ring_prefix=prefix)
            services = {name: spec.service for name, spec in pipeline.processes.items()}
            launcher = Launcher(pipeline, log_dir=log_dir, say=say)
            install_stop_signals(launcher)
            launcher.start()
            say(f"trading on the synthetic market for {seconds:g} s (marked to its books ring)")
            launcher.stop_event.wait(seconds)
            # Quiet the strategy (it ends on SIGTERM, restart "never"), then let the last orders and
            # fills settle: the figures are read once the engine's positions match the venue's.
            strategy = launcher.processes["strategy"]
            if strategy.proc is not None and strategy.proc.poll() is None:
                strategy.proc.terminate()
            deadline = time.monotonic() + 10
            while True:
                time.sleep(0.5)
                summary = _figures(services)
                if (summary["positions_match"] and summary["pnl"] is not None) or time.monotonic() > deadline:
                    break
            failed = [name for name, state in launcher.processes.items() if state.state == "failed"]
            launcher.stop()
            problems.extend(f"{name} failed (see its log)" for name in failed)
        except (LaunchError, OSError, ValueError) as exc:
            problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a service that did not answer: say which, keep the logs
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            if launcher is not None:
                launcher.stop()
    if summary:
        if summary["duplicate_orders"]:
            problems.append(f"{summary['duplicate_orders']} duplicate orders at the venue")
        if not summary["positions_match"]:
            problems.append("the engine's positions differ from the venue's")
        if summary["pnl"] is None:
            problems.append(f"P&L unknown: {summary['pnl_unknown_because']}")
        if not summary["orders_sent"]:
            problems.append(f"no order was sent in {seconds:g} s (no bar met the strategy's rule)")
    if problems:
        problems.append(f"logs kept in {log_dir}")
        shutil.rmtree(os.path.join(tmp, "run"), ignore_errors=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary, problems


def main(seconds: float, as_json: bool) -> int:
    """The CLI's side: the summary (JSON or lines), problems on stderr, exit 0 only when clean."""
    import json

    summary, problems = run_trade_demo(seconds, as_json=as_json)
    if as_json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    else:
        for key, value in summary.items():
            print(f"{key:<24} {value}")
    for problem in problems:
        print(f"shmpipe demo: {problem}", file=sys.stderr)
    if problems:
        return 1
    if not as_json:
        print("shmpipe demo: ok: no duplicate order, the engine's positions equal the venue's")
    return 0
