"""``shmpipe bench``: every transport through every scenario, in one run, pinned, repeated.

    shmpipe bench [--quick] [--json PATH] [--plot PATH] [--runs N] [--cores 0,1]
                  [--transports a,b] [--scenarios a,b]

Also runnable as ``python -m shmpipe_bench.cli`` or ``python bench/run.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

ALL_TRANSPORTS = ("shmpipe", "c-floor", "pyzmq-ipc", "mp-queue", "faster-fifo", "iceoryx2",
                  "redis-streams", "pipe")


@dataclass
class Scenario:
    name: str
    layout: str  # pingpong | openloop | throughput | broadcast
    params: Any


def plan(quick: bool, timeout_s: float) -> list[Scenario]:
    from .scenarios import Params

    if quick:
        pp, ol, thr, bat, bc, sizes = 2_000, 10_000, 20_000, 65_536, 5_000, (1, 64, 4096)
    else:
        pp, ol, thr, bat, bc, sizes = 20_000, 50_000, 100_000, 131_072, 20_000, (1, 4, 16, 64, 256, 1024, 4096)
    base = Params(messages=0, warmup=0, timeout_s=timeout_s)
    out = [
        Scenario("pingpong", "pingpong", replace(base, messages=pp, warmup=pp // 10)),
        Scenario("open-loop-100k", "openloop", replace(base, messages=ol, warmup=ol // 10, rate=100_000)),
        Scenario("open-loop-1m", "openloop", replace(base, messages=ol, warmup=ol // 10, rate=1_000_000)),
        Scenario("throughput-single", "throughput",
                 replace(base, messages=thr, warmup=thr // 10, extra={"single": True})),
    ]
    for b in sizes:
        warm = max(b, (bat // 10) // b * b)
        out.append(Scenario(f"throughput-batch-{b}", "throughput", replace(base, messages=bat, warmup=warm, batch=b)))
    for k in (1, 2, 4):
        out.append(Scenario(f"broadcast-{k}", "broadcast",
                            replace(base, messages=bc, warmup=bc // 10, rate=100_000, consumers=k)))
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="latency/throughput benchmark: shmpipe against its peers, in one run",
        description="Runs shmpipe, a C cache-line floor and the peers (pyzmq ipc, multiprocessing.Queue, "
                    "faster-fifo, iceoryx2, Redis Streams, os.pipe) through ping-pong, open-loop latency, "
                    "throughput (single and batched) and broadcast scenarios, each child process pinned "
                    "to a core; prints a table and writes JSON and a PNG plot.",
    )
    _options(p)
    p.set_defaults(func=run)
    return p


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small counts, 1 run: everything in under a minute")
    p.add_argument("--runs", type=int, default=None, help="repeated runs per cell (default 5; --quick 1)")
    p.add_argument("--cores", default=None,
                   help="comma-separated cores: first for the sender, the rest for receivers (default: "
                        "the last two allowed cores)")
    p.add_argument("--json", default="shmpipe-bench.json", help="where to write the JSON (default %(default)s)")
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--transports", default=",".join(ALL_TRANSPORTS),
                   help="comma-separated subset of: " + ",".join(ALL_TRANSPORTS))
    p.add_argument("--scenarios", default=None,
                   help="comma-separated scenario names or prefixes (e.g. pingpong,throughput)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one run may take before it is killed (default 60; --quick 15)")


def _cores(arg: str | None) -> list[int]:
    if arg:
        return [int(c) for c in arg.split(",") if c.strip()]
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-2:] if len(allowed) >= 2 else allowed


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from . import report, stats
    from . import floor as cfloor
    from . import machine, transports
    from .scenarios import RunError, run_once, sweep_stale_rings

    quick = args.quick
    runs = args.runs or (1 if quick else 5)
    timeout_s = args.timeout or (15.0 if quick else 60.0)
    cores = _cores(args.cores)
    wanted = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ALL_TRANSPORTS]
    if unknown:
        _log(f"shmpipe bench: unknown transport(s) {unknown}; known: {ALL_TRANSPORTS}")
        return 2
    scenarios = plan(quick, timeout_s)
    if args.scenarios:
        keys = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        scenarios = [s for s in scenarios if any(s.name == k or s.name.startswith(k) for k in keys)]
    _term_as_interrupt()
    t_all = time.monotonic()
    for stale in sweep_stale_rings():
        _log(f"shmpipe bench: removed stale segment /dev/shm/{stale}")
    mach = machine.describe(cores)
    _log(f"shmpipe bench: {'quick' if quick else 'full'}, {runs} run(s), cores {cores}, "
         f"{len(scenarios)} scenarios x {len(wanted)} transports")
    busy = (mach.get("loadavg_before") or [0.0])[0]
    if busy > 0.5:
        _log(f"shmpipe bench: WARNING: 1-minute load average is {busy:.2f} before the run: other work "
             "shares these cores and will inflate the tails (recorded in machine.loadavg_before)")

    # Which transports cannot run here, and why (reasons: skipped rows), kept apart from those that
    # should run but are broken (broken: every run of theirs is recorded as failed). A skip means
    # only "cannot run on this machine" (an optional peer not installed, its server not up, no C
    # compiler) or "the scenario does not apply"; a bug in our own code must never read as a skip.
    reasons: dict[str, str | None] = {}
    broken: dict[str, str] = {}
    versions: dict[str, str | None] = {}
    for name in wanted:
        if name == "c-floor":
            continue
        try:
            t = transports.get(name)
            reasons[name] = t.unavailable()
            versions[name] = None if reasons[name] else t.version()
        except Exception as exc:  # our transport module or its check is broken: a failure
            broken[name] = f"transport check failed: {type(exc).__name__}: {exc}"
    floor_bin = None
    if "c-floor" in wanted:
        try:
            floor_bin, reasons["c-floor"] = cfloor.build()
        except cfloor.BuildError as exc:
            broken["c-floor"] = str(exc)
        versions["c-floor"] = "bench/floor.c, cc -O2"

    bcast_reason: dict[str, str | None] = {}
    cells: dict[tuple[str, str], dict] = {}
    pinned_all: list[bool] = []
    for sc in scenarios:
        for name in wanted:
            cell = cells.setdefault((name, sc.name), {"runs": [], "errors": [], "skipped": None})
            if name in broken:
                continue
            if reasons.get(name):
                cell["skipped"] = reasons[name]
            elif name == "c-floor" and sc.layout not in ("pingpong", "throughput"):
                cell["skipped"] = "the C floors are a cache-line ping-pong and an SPSC ring's throughput"
            elif sc.layout == "broadcast" and name != "c-floor":
                if name not in bcast_reason:
                    try:
                        bcast_reason[name] = transports.get(name).broadcast_reason()
                    except Exception as exc:  # the check itself failed: that is no reason to skip
                        broken[name] = f"broadcast check failed: {type(exc).__name__}: {exc}"
                        continue
                cell["skipped"] = bcast_reason[name]
            # With fewer than 2 cores a pair runs unpinned on one core; machine.pinning_granted says so.

    try:
        for r in range(runs):
            for sc in scenarios:
                for name in wanted:
                    cell = cells[(name, sc.name)]
                    if cell["skipped"]:
                        continue
                    t0 = time.monotonic()
                    try:
                        if name in broken:
                            raise RunError(broken[name])
                        if name == "c-floor" and sc.layout == "throughput":
                            fig = _floor_throughput(cfloor, floor_bin, sc, (cores[0], cores[1 % len(cores)]))
                            pinned_all.append(bool(fig.pop("pinned")))
                        elif name == "c-floor":
                            p = sc.params
                            out = cfloor.run(floor_bin, (cores[0], cores[1 % len(cores)]),
                                             max(p.messages * 20, 200_000), max(p.warmup * 20, 20_000),
                                             timeout=p.timeout_s)
                            pinned_all.append(bool(out["pinned"]))
                            fig = stats.from_ns(out)
                            fig["msgs_per_s"] = 2 * out["iterations"] * 1e9 / out["elapsed_ns"]
                            fig["messages"] = out["iterations"]
                        else:
                            reports = run_once(name, sc.layout, sc.params, cores)
                            pinned_all.extend(bool(x["pinned"]) for x in reports)
                            fig = _figures(sc, reports, stats)
                        cell["runs"].append(fig)
                        status = (f"p50 {fig['p50_us']:.2f} us p99 {fig['p99_us']:.2f} us"
                                  if fig.get("p50_us") is not None else f"{fig['msgs_per_s']:,.0f} msgs/s")
                    except (RunError, TimeoutError, RuntimeError, OSError, ValueError) as exc:
                        cell["errors"].append(str(exc))
                        status = f"ERROR {exc}"
                    except Exception as exc:  # a transport bug: report it, keep going
                        cell["errors"].append(f"{type(exc).__name__}: {exc}")
                        status = f"ERROR {type(exc).__name__}: {exc}"
                    _log(f"  run {r + 1}/{runs} {sc.name:<22} {name:<14} {status}  "
                         f"({time.monotonic() - t0:.1f} s)")
    except KeyboardInterrupt:
        _log("interrupted: writing what was measured so far")

    if floor_bin is not None:
        try:
            mach["memcpy"] = cfloor.run_memcpy(floor_bin)
        except (RuntimeError, OSError, ValueError) as exc:
            mach["memcpy"] = {"error": str(exc)}
    mach["loadavg_after"] = machine.loadavg()
    mach["pinning_granted"] = bool(pinned_all) and all(pinned_all)
    mach["pinning_detail"] = {"granted": sum(pinned_all), "requested": len(pinned_all)}
    mach["transport_versions"] = versions
    results = _rows(scenarios, wanted, cells, runs)
    result = {
        "machine": mach,
        "config": {"quick": quick, "runs": runs, "cores": cores, "timeout_s": timeout_s,
                   "scenarios": [{"scenario": s.name, "layout": s.layout, "messages": s.params.messages,
                                  "warmup": s.params.warmup, "rate": s.params.rate or None,
                                  "batch": s.params.batch, "consumers": s.params.consumers}
                                 for s in scenarios],
                   "wall_s": round(time.monotonic() - t_all, 1)},
        "results": results,
        "comparisons": _comparisons(results),
    }
    report.write_json(result, args.json)
    print(report.table(result))
    print(f"\nJSON: {args.json}")
    if not args.no_plot:
        png = args.plot or os.path.splitext(args.json)[0] + ".png"
        why = report.plot(result, png)
        print(f"plot: {png}" if why is None else f"plot: not written ({why})")
    _log(f"shmpipe bench: done in {time.monotonic() - t_all:.1f} s")
    failed = [f"{r['transport']}/{r['scenario']}" for r in results if r["error"]]
    if failed:
        _log(f"shmpipe bench: FAILED: runs failed in {len(failed)} cell(s): {', '.join(failed)} "
             "(each row's 'error' says why)")
        return 1
    return 0


def _term_as_interrupt() -> None:
    """SIGTERM cleans up like Ctrl-C does (children killed, rings unlinked, partial JSON written)."""
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _floor_throughput(cfloor: Any, binary: Any, sc: Scenario, cores: tuple[int, int]) -> dict:
    """One run of the C SPSC ring at this scenario's batch size (1 for throughput-single), the same
    record size and capacity as the shmpipe ring of the bench; ~20x the records, since it is ~20x
    faster and a too-short run measures the fork."""
    from .transports.base import RECORD_SIZE
    from .transports.shmpipe_ring import CAPACITY

    p = sc.params
    batch = 1 if p.extra.get("single") else p.batch
    records = max(20 * (p.messages + p.warmup), 2_000_000)
    out = cfloor.run_throughput(binary, cores, records, batch, CAPACITY, RECORD_SIZE, timeout=p.timeout_s)
    fig: dict[str, Any] = {k: None for k in LAT_KEYS}
    fig.update(messages=out["timed_records"], msgs_per_s=out["records_per_s"], pinned=out["pinned"])
    return fig


def _figures(sc: Scenario, reports: list[dict], stats: Any) -> dict:
    """One run's figures from its children's reports."""
    p = sc.params
    fig: dict[str, Any] = {"messages": p.messages}
    if sc.layout == "throughput":
        tx = next(x for x in reports if x["role"] == "bulk_sender")
        rx = next(x for x in reports if x["role"] == "counting_receiver")
        fig.update({k: None for k in ("p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us")})
        fig["msgs_per_s"] = rx["received"] * 1e9 / max(1, rx["t_end"] - tx["t_start"])
        return fig
    rx = [x for x in reports if "hist" in x]
    h = stats.merge(x["hist"] for x in rx)
    fig.update(stats.summary_us(h))
    if sc.layout == "pingpong":
        fig["msgs_per_s"] = 2 * p.messages * 1e9 / rx[0]["elapsed_ns"]  # one-way messages/s
    else:
        span = max(x["elapsed_ns"] for x in rx)
        fig["msgs_per_s"] = sum(x["received"] for x in rx) * 1e9 / span  # deliveries/s
        tx = next(x for x in reports if x["role"] == "scheduled_sender")
        fig["achieved_send_rate"] = tx["achieved_send_rate"]
        fig["worst_send_lag_us"] = tx["worst_send_lag_ns"] / 1000.0
    return fig


LAT_KEYS = ("p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us")


def _rows(scenarios: list[Scenario], wanted: list[str], cells: dict, runs: int) -> list[dict]:
    from . import transports
    from .stats import median_spread

    rows = []
    floor = cells.get(("c-floor", "pingpong"))
    floor_p50 = floor_p99 = None
    if floor and floor["runs"]:
        floor_p50 = median_spread([f["p50_us"] for f in floor["runs"]])[0]
        floor_p99 = median_spread([f["p99_us"] for f in floor["runs"]])[0]
    for sc in scenarios:
        for name in wanted:
            cell = cells[(name, sc.name)]
            row: dict[str, Any] = {"transport": name, "scenario": sc.name}
            for k in LAT_KEYS + ("msgs_per_s",):
                row[k] = None
            row.update(runs=len(cell["runs"]), skipped=cell["skipped"], error=None, spread={},
                       messages=sc.params.messages, warmup=sc.params.warmup)
            if sc.layout in ("openloop", "broadcast"):
                row["rate"] = sc.params.rate
            if sc.layout == "broadcast":
                row["consumers"] = sc.params.consumers
            if sc.layout == "throughput":
                row["batch"] = None if sc.params.extra.get("single") else sc.params.batch
            if name not in ("c-floor",) and not cell["skipped"]:
                row["receive_mode"] = transports.get(name).receive_mode
            if cell["errors"]:
                # A failed run is a failure, never a skip: the row keeps skipped=None and says why.
                row["error"] = f"{len(cell['errors'])} of {runs} runs failed: {cell['errors'][0]}"
            for k in LAT_KEYS + ("msgs_per_s", "achieved_send_rate", "worst_send_lag_us"):
                vals = [f.get(k) for f in cell["runs"]]
                med, spread = median_spread(vals)
                if k in row or med is not None:
                    row[k] = med
                if spread:
                    row["spread"][k] = spread
            floor_tp = cells.get(("c-floor", sc.name))
            if (sc.layout == "throughput" and name != "c-floor" and row["msgs_per_s"] and floor_tp
                    and floor_tp["runs"]):
                floor_rate = median_spread([f["msgs_per_s"] for f in floor_tp["runs"]])[0]
                row["ratio_to_floor"] = row["msgs_per_s"] / floor_rate if floor_rate else None
            if sc.layout == "pingpong" and row["p50_us"] is not None and floor_p50:
                row["ratio_to_floor_p50"] = row["p50_us"] / floor_p50
                row["ratio_to_floor_p99"] = row["p99_us"] / floor_p99 if floor_p99 else None
            row["per_run"] = cell["runs"]
            rows.append(row)
    return rows


def _comparisons(rows: list[dict]) -> list[dict]:
    """shmpipe vs each peer, per scenario: peer/shmpipe for latency, shmpipe/peer for throughput
    (so > 1 always means shmpipe is better)."""
    out = []
    by = {(r["transport"], r["scenario"]): r for r in rows}
    for (tname, sc), r in by.items():
        if tname in ("shmpipe", "c-floor"):
            continue
        mine = by.get(("shmpipe", sc))
        if not mine or mine.get("skipped") or r.get("skipped"):
            continue
        if mine.get("p50_us") and r.get("p50_us"):
            for k in ("p50_us", "p99_us"):
                if mine.get(k) and r.get(k):
                    out.append({"peer": tname, "scenario": sc, "metric": k, "ratio": r[k] / mine[k]})
        elif mine.get("msgs_per_s") and r.get("msgs_per_s"):
            out.append({"peer": tname, "scenario": sc, "metric": "msgs_per_s",
                        "ratio": mine["msgs_per_s"] / r["msgs_per_s"]})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m shmpipe_bench.cli ARGS`` == ``shmpipe bench ARGS``."""
    from shmpipe_tools.cli import main as shmpipe_main

    return shmpipe_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
