"""`shmpipe demo`: the main job on defaults that need no network and no server: the launcher runs
examples/pipeline.toml (synthetic feed -> capture -> consumers, pinned) for --seconds, shows a live
view, stops it, checks that nothing was lost or left behind, and prints a summary.

`--records N` runs the older, smaller demo instead: one producer process streams N Ticks through a
ring to this process, which checks every one (kept for CI's single-write run)."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

from .arg_types import positive_float


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the example pipeline (synthetic feed -> capture -> consumers) and check it lost nothing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Launches examples/pipeline.toml with the launcher (rings under a private prefix,\n"
                    "processes pinned), shows rates, latencies and loss per stage for --seconds, stops the\n"
                    "pipeline in reverse order, and prints a summary. Exit 0 only if every stage moved\n"
                    "records, none lost one, every process ended cleanly and no process or segment is left,\n"
                    "and (the synthetic market) >= 99.9 % of the order-book entries were valid, <= 0.1 % of\n"
                    "trades came late, every symbol had a bar for every closed period and features.\n"
                    "--json prints only one JSON object: one key per stage, each with records, lost and,\n"
                    "where the stage measures latency, p50_us / p99_us, and the market's figures; ok, and\n"
                    "reasons when not; with --faults a faults list (kind, detected_s, repaired_s).\n"
                    "Should an install lack what the pipeline imports (pyzmq, msgspec), the ring-only demo\n"
                    "runs instead, and says why.\n\n"
                    "--records N instead streams N Ticks from a producer process to this one and checks\n"
                    "every record (the ring alone; --batch, --capacity, --wait apply to it).")
    p.add_argument("--seconds", type=positive_float, default=20.0,
                   help="how long the pipeline runs (default 20)")
    p.add_argument("--feed", choices=("synthetic", "fixtures"), default="synthetic",
                   help="synthetic: generated quotes and book updates (default); fixtures: the bundled "
                        "Kraken capture played by the local feed server")
    p.add_argument("--rate", type=positive_float, metavar="N",
                   help="venue messages per second of the synthetic market (default: the pipeline "
                        "file's, 20000; each is one Tick and its LevelUpdates)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics of the demo's rings on 127.0.0.1:PORT while it runs")
    p.add_argument("--json", action="store_true", help="print only the final summary, as one JSON object")
    p.add_argument("--trade", action="store_true",
                   help="run the trading loop instead: strategy -> risk -> execute -> alpaca-paper emulator "
                        "(see shmpipe_services.trading.demo); --json names orders_sent, fills, rejects, "
                        "duplicate_orders, pnl")
    p.add_argument("--faults", action="store_true",
                   help="inject a sequence gap, a corrupted level and a dropped connection into the synthetic "
                        "market on a schedule; pass only if the order book detects each and a resnapshot "
                        "repairs it within the run (the summary times both)")
    p.add_argument("--records", type=int,
                   help="ring-only demo: stream this many Ticks between two processes")
    p.add_argument("--batch", type=int, default=1024,
                   help="ring-only demo: records per write_batch; 1 = write()")
    p.add_argument("--capacity", type=int, default=1 << 16,
                   help="ring-only demo: ring capacity (default 65536)")
    p.add_argument("--wait", choices=("spin", "yield", "block"), default="block",
                   help="ring-only demo: wait strategy (default block)")
    p.set_defaults(func=run)


def _pipeline_unavailable() -> str | None:
    """Why the example pipeline cannot run on this install (a dependency removed after install), or
    None."""
    try:
        import shmpipe_services.capture.process
        import shmpipe_services.verify.service  # noqa: F401
        import zmq  # noqa: F401 - every service of the pipeline answers the control plane
    except ImportError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    if args.trade:
        from shmpipe_services.trading.demo import main as trade_demo
        return trade_demo(args.seconds, args.json)
    if args.records is not None:
        return run_stream(args)
    missing = _pipeline_unavailable()
    if missing:
        print(f"shmpipe demo: the pipeline cannot run on this install ({missing}; reinstall shmpipe, "
              "whose dependencies include it); running the ring-only demo instead",
              file=sys.stderr, flush=True)
        args.records = 10_000_000
        return run_stream(args, as_stage=True)
    from shmpipe_services.launcher.demo import run_demo

    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"shmpipe demo: --metrics-port must be 0-65535, not {args.metrics_port}", file=sys.stderr)
        return 2
    result = run_demo(args.seconds, args.feed, as_json=args.json, metrics_port=args.metrics_port,
                      faults=args.faults, rate=args.rate)
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True), flush=True)
    elif result.summary:
        print(_summary_text(result.summary))
        print(_market_text(result.summary, result.faults))
    for problem in result.problems:
        print(f"shmpipe demo: {problem}", file=sys.stderr)
    if result.problems and result.log_dir:
        print(f"shmpipe demo: logs kept in {result.log_dir}", file=sys.stderr)
    if not result.ok:
        return 1
    if not args.json:
        print("shmpipe demo: ok: loss 0, every process stopped cleanly, no process or segment left behind")
    return 0


def _summary_text(summary: dict) -> str:
    lines = [f"{'stage':<10} {'records':>12} {'per s':>10} {'lost':>6} {'p50 µs':>9} {'p99 µs':>9}  cpus"]
    for name, s in summary.items():
        lat = (f"{s['p50_us']:>9,.1f} {s['p99_us']:>9,.1f}" if "p50_us" in s else f"{'-':>9} {'-':>9}")
        cpus = ",".join(map(str, s["cpus"])) if s.get("cpus") else "-"
        figures = f"{s['records']:>12,} {s['records_per_s']:>10,} {s['lost']:>6,}"
        lines.append(f"{name:<10} {figures} {lat}  {cpus}")
    return "\n".join(lines)


def _market_text(summary: dict, faults: list | None) -> str:
    """What the stages made of the market: books, bars, features, latency from event to read."""
    lines = []
    for name, s in summary.items():
        if "checksums_verified" in s:
            share = s.get("valid_share")
            lines.append(f"{name}: {s.get('entries_published', 0):,} entries published, "
                         f"{'-' if share is None else f'{share:.3%}'} valid (read {s.get('entries_read', 0):,}; "
                         f"{s.get('entries_before_first_valid', 0):,} before each book's first valid one), "
                         f"checksums {s['checksums_verified']:,} verified / {s.get('checksums_failed', 0):,} "
                         f"failed, {s.get('resnapshots', 0):,} resnapshots")
        if "trades" in s and "late" in s:
            per_tf = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("bars_published", {}).items()))
            share = s.get("late_share")
            window = (f"while every stage was up {s['late_while_up']:,} of {s['trades_while_up']:,}"
                      if "trades_while_up" in s else "")
            # a partial bar (its period under way when bars started, or cut short at the end) is not
            # a bar of that period: say how many of each
            partial = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("bars_partial", {}).items()) if v)
            if "bars_partial" in s:
                per_tf += f" ({'partial ' + partial if partial else 'all complete'})"
            lines.append(f"{name}: bars published {per_tf or 'none'}; {s['trades']:,} trades, {s['late']:,} late "
                         f"in all ({window}, {'-' if share is None else f'{share:.3%}'})")
        if "skipped_invalid" in s:
            lines.append(f"{name}: {s.get('published', 0):,} published, for {s.get('symbols_with_features', 0)} "
                         f"symbols; {s.get('books', 0):,} books used, {s['skipped_invalid']:,} invalid ones skipped")
        if "event_to_read_p50_us" in s:
            lines.append(f"{name}: event time -> read p50 {s['event_to_read_p50_us']:,} µs, "
                         f"p99 {s['event_to_read_p99_us']:,} µs")
    for f in faults or []:
        det = "never" if f["detected_s"] is None else f"{f['detected_s'] * 1000:,.1f} ms"
        rep = "never" if f["repaired_s"] is None else f"{f['repaired_s'] * 1000:,.1f} ms"
        lines.append(f"fault {f['kind']:<8} at {f['at_s']:5.1f} s on {', '.join(f['symbols']) or '-'}: "
                     f"detected after {det}, repaired after {rep}")
    return "\n".join(lines)


def synthetic_ticks(start: int, n: int) -> np.ndarray:
    from shmpipe.records import SOURCE_SYNTHETIC, TICK, TICK_FLAG_QUOTE

    seq = np.arange(start, start + n, dtype=np.uint64)
    out = np.zeros(n, TICK)
    out["timestamp_ns"] = seq
    out["symbol_id"] = (seq % 64).astype(np.uint32)
    out["bid"] = 100.0 + (seq % 100).astype(np.float32) / 100
    out["ask"] = out["bid"] + np.float32(0.01)
    out["source"] = SOURCE_SYNTHETIC
    out["flags"] = TICK_FLAG_QUOTE
    out["sequence"] = (seq & 0xFFFFFFFF).astype(np.uint32)
    return out


def _produce(name: str, total: int, batch: int) -> None:
    import shmpipe

    with shmpipe.Ring.open(name) as ring, ring.producer() as producer:
        pos = 0
        while pos < total:
            n = min(max(batch, 1024), total - pos)
            chunk = synthetic_ticks(pos, n)
            if batch == 1:
                for record in chunk:
                    producer.write(record)
            else:
                for i in range(0, n, batch):
                    producer.write_batch(chunk[i:i + batch])
            pos += n


def run_stream(args: argparse.Namespace, as_stage: bool = False) -> int:
    """The ring-only demo. ``as_stage``: its JSON in the pipeline demo's shape, one stage ("ring")."""
    import shmpipe

    if args.records <= 0 or args.batch <= 0:
        raise SystemExit("shmpipe demo: --records and --batch must be positive")
    name = f"demo-{os.getpid()}"
    with shmpipe.Ring.create(name, shmpipe.records.TICK, args.capacity, wait=args.wait) as ring:
        try:
            consumer = ring.consumer()
            child = mp.get_context("spawn").Process(target=_produce, args=(name, args.records, args.batch))
            started = time.perf_counter()
            child.start()
            seen = 0
            while seen < args.records:
                got = consumer.read(65536, timeout=10)
                if len(got) == 0:
                    raise SystemExit(f"shmpipe demo: no record for 10 s after {seen:,} (producer alive: "
                                     f"{consumer.producer_alive})")
                if not np.array_equal(got["timestamp_ns"], np.arange(seen, seen + len(got), dtype=np.uint64)):
                    raise SystemExit(f"shmpipe demo: records out of order near {seen:,}")
                seen += len(got)
            elapsed = time.perf_counter() - started
            child.join(30)
        finally:
            ring.unlink()
    result = {"records": seen, "seconds": round(elapsed, 4), "records_per_s": round(seen / elapsed),
              "batch": args.batch, "wait": args.wait, "verified": True}
    if as_stage:
        result = {"ring": {**result, "lost": 0}}   # every record was checked: any loss raised above
    if args.json:
        print(json.dumps(result))
    else:
        print(f"shmpipe demo: {seen:,} Ticks from a producer process, every one checked in order, in "
              f"{elapsed:.3f} s ({seen / elapsed:,.0f} records/s, batch {args.batch}, wait={args.wait}; "
              f"includes the producer's start-up)")
    return 0
