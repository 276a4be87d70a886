"""The whole pipeline at a given rate (issue 24): the demo's pipeline (examples/pipeline.toml: the
realistic synthetic market -> capture -> order book -> bars, features, verify), run by the launcher
under a private prefix for --seconds at --rate venue messages/s, and measured from outside:

- per stage: records moved in the measured window and per second (the window starts when the
  market opens, after every stage is up, and ends when it closes: start-up is not in it), lost,
  CPU % (psutil, user + system over the window; 100 = one core), RSS at start, end and peak;
- per ring: written, fill high-water mark (sampled every --sample-s), lost, full waits (times
  a writer waited on a lossless ring: back-pressure);
- capture against its schedule: messages sent / messages due (a lossless pipeline that cannot keep
  up slows capture down instead of losing records: ``behind`` says by how much);
- update -> entry latency: ``published_ns - timestamp_ns`` of every OrderbookEntry this process
  reads from the books ring (an HdrHistogram; the synthetic market stamps each message with its
  generation time, so this is generation -> book published, across processes).

    python -m shmpipe_bench.pipeline_bench --rate 100000 --seconds 60 --json out.json
    python -m shmpipe_bench.pipeline_bench --rate 10000 --seconds 10 --wait spin --conflate-ms 0
    python -m shmpipe_bench.pipeline_bench --market-ab        # the market alone: µs CPU per message

Exit 0 when every stage moved records, none lost one, capture kept within 1 % of its schedule and
nothing (process, segment) is left; 1 otherwise, after printing and writing what was measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEDULE_TOLERANCE = 0.01     # capture may fall this far behind its schedule and still pass
DRAIN_DEADLINE_S = 15.0
SETTLE_S = 0.6                # longer than any stage's stats interval (0.5 s)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20_000.0,
                   help="venue messages per second the synthetic market sends (each is one Tick and "
                        "its LevelUpdates; default 20000)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument("--symbols", type=int, default=8, help="symbols of the synthetic market (default 8)")
    p.add_argument("--wait", choices=("spin", "yield", "block"), default=None,
                   help="every ring's wait strategy (default: as the pipeline file says, block)")
    p.add_argument("--conflate-ms", type=float, default=None,
                   help="the order book's --conflate-ms (default: the pipeline file's, 10)")
    p.add_argument("--only", metavar="NAMES",
                   help="run only these processes of the pipeline, comma-separated (e.g. capture,orderbook: "
                        "update -> entry latency with one reader on the second core)")
    p.add_argument("--sample-s", type=float, default=0.25, help="sampling interval (default 0.25)")
    p.add_argument("--no-latency", action="store_true", help="do not read the books ring here")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    p.add_argument("--market-ab", action="store_true",
                   help="no pipeline: CPU µs per message of the compiled synthetic market against the "
                        "plain-Python reference, in this process, same run (--symbols, --batch)")
    p.add_argument("--batch", type=int, default=256,
                   help="--market-ab: messages per next_batch call (default 256, capture's MARKET_BATCH)")
    p.add_argument("--runs", type=int, default=3, help="--market-ab: interleaved runs, median reported")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.symbols < 1 or args.sample_s <= 0:
        p.error("--rate, --seconds and --sample-s must be > 0, --symbols >= 1")
    if args.conflate_ms is not None and args.conflate_ms < 0:
        p.error("--conflate-ms must be >= 0")
    return args


def _with_option(command: list[str], flag: str, value: str) -> list[str]:
    cmd = list(command)
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value
    else:
        cmd += [flag, value]
    return cmd


def bench_pipeline(prefix: str, args: argparse.Namespace):
    """examples/pipeline.toml under ``prefix`` with this run's rate, symbols, waits, conflation;
    the synthetic capture starts paused (opened once every stage is up). Returns (pipeline,
    capture's service name)."""
    from shmpipe_services.launcher.config import load
    from shmpipe_services.launcher.demo import example_path

    pipeline = load(example_path(), ring_prefix=prefix)
    if args.only:
        keep = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(keep) - set(pipeline.processes))
        if unknown:
            raise ValueError(f"--only: no process {', '.join(unknown)} in {example_path()} "
                             f"(it has {', '.join(pipeline.processes)})")
        for name in list(pipeline.processes):
            if name not in keep:
                del pipeline.processes[name]
    capture = None
    for name, spec in pipeline.processes.items():
        cmd = list(spec.command)
        if "capture" in cmd and "synthetic" in cmd:
            cmd = _with_option(cmd, "--rate", repr(args.rate))
            cmd = _with_option(cmd, "--symbols", str(args.symbols))
            if "--paused" not in cmd:
                cmd.append("--paused")
            capture = spec.service
        if "orderbook" in cmd and args.conflate_ms is not None:
            cmd = _with_option(cmd, "--conflate-ms", repr(args.conflate_ms))
        pipeline.processes[name] = dataclasses.replace(spec, command=cmd)
    if args.wait is not None:
        for key, ring in pipeline.rings.items():
            pipeline.rings[key] = dataclasses.replace(ring, wait=args.wait)
    if capture is None:
        raise RuntimeError(f"{example_path()} has no synthetic capture to pace")
    return pipeline, capture


class LatencyReader:
    """Reads every entry of the books ring and records published_ns - timestamp_ns (ns)."""

    def __init__(self, segment: str) -> None:
        import shmpipe
        from hdrh.histogram import HdrHistogram

        self.ring = shmpipe.Ring.open(segment)
        self.consumer = self.ring.consumer()
        self.histogram = HdrHistogram(1, 60_000_000_000, 3)
        self.entries = 0
        self.negative = 0           # published before the event: clocks disagree; counted, not hidden
        self.before_open = 0        # entries of books last changed before the market opened (the
        self.opened_ns: int | None = None   # first snapshots, stamped at start-up): counted apart

    def poll(self) -> None:
        # peek + commit, not read: an OrderbookEntry is 1,664 bytes and only its two stamps are
        # wanted; copying whole entries out (~1.6 GB/s at 1 M entries/s) made this reader the
        # pipeline's limit with --conflate-ms 0 (its lossless ring pushed back on the order book)
        while True:
            view = self.consumer.peek(65536, timeout=0)
            n = len(view)
            if n == 0:
                return
            ts = view["timestamp_ns"].astype(np.int64)
            published = view["published_ns"].astype(np.int64)
            self.consumer.commit(n)
            if self.opened_ns is None:
                continue
            early = ts < self.opened_ns
            self.before_open += int(early.sum())
            lat = published[~early] - ts[~early]
            self.entries += len(lat)
            self.negative += int((lat < 0).sum())
            lat = np.maximum(lat[lat >= 0], 1)
            # HdrHistogram keeps 3 significant digits: record each distinct rounded value once with
            # its count instead of one Python call per entry
            scale = 10 ** np.maximum(np.floor(np.log10(lat)).astype(np.int64) - 2, 0)
            values, counts = np.unique(lat // scale * scale, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                self.histogram.record_value(v, c)

    def figures(self) -> dict[str, Any]:
        h = self.histogram
        out: dict[str, Any] = {"entries": self.entries, "negative": self.negative,
                               "before_open": self.before_open}
        if h.get_total_count():
            out.update({f"{k}_us": round(h.get_value_at_percentile(p) / 1000.0, 2)
                        for k, p in (("p50", 50), ("p99", 99), ("p999", 99.9))})
            out["min_us"] = round(h.get_min_value() / 1000.0, 2)
            out["max_us"] = round(h.get_max_value() / 1000.0, 2)
        return out

    def close(self) -> None:
        try:
            self.consumer.close()
        except Exception:  # noqa: BLE001 - the ring went first
            pass
        self.ring.close()


class ProcessWatch:
    """CPU seconds and RSS of every stage's process, sampled."""

    def __init__(self) -> None:
        self.procs: dict[str, Any] = {}
        self.cpu_at_open: dict[str, float] = {}
        self.rss: dict[str, list[int]] = {}

    def attach(self, launcher) -> None:
        import psutil

        for name, state in launcher.processes.items():
            if state.pid and name not in self.procs:
                try:
                    self.procs[name] = psutil.Process(state.pid)
                except psutil.Error:
                    pass
        self.procs.setdefault("(bench)", psutil.Process())

    def _cpu(self, proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    def open_window(self) -> None:
        for name, proc in self.procs.items():
            try:
                self.cpu_at_open[name] = self._cpu(proc)
            except Exception:  # noqa: BLE001 - gone: no figure
                pass

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                self.rss.setdefault(name, []).append(proc.memory_info().rss)
            except Exception:  # noqa: BLE001
                pass

    def close_window(self, seconds: float) -> dict[str, dict[str, Any]]:
        out = {}
        for name, proc in self.procs.items():
            fig: dict[str, Any] = {}
            try:
                fig["cpu_percent"] = round(100.0 * (self._cpu(proc) - self.cpu_at_open[name]) / seconds, 1)
            except Exception:  # noqa: BLE001
                fig["cpu_percent"] = None
            rss = self.rss.get(name) or []
            if rss:
                fig.update({"rss_start_mib": round(rss[0] / 2**20, 1),
                            "rss_end_mib": round(rss[-1] / 2**20, 1),
                            "rss_max_mib": round(max(rss) / 2**20, 1),
                            # at 0, 25, 50, 75 and 100 % of the window: growth after start-up shows here
                            "rss_over_run_mib": [round(rss[min(len(rss) - 1, len(rss) * q // 4)] / 2**20, 1)
                                                 for q in range(5)]})
            out[name] = fig
        return out


def _stage_records(launcher) -> dict[str, dict[str, Any]]:
    from shmpipe_services.launcher.figures import read_counters, stage_figures

    return {name: stage_figures(name, read_counters(state.spec.service, use_control=state.spec.control))
            for name, state in launcher.processes.items()}


def _ring_positions(launcher) -> dict[tuple, int]:
    """Each ring's written count and each reader's position (by pid): exact at the moment they
    are read, unlike the stages' own counters (published every 0.1-0.5 s)."""
    out = {}
    for key, r in launcher.ring_stats()["rings"].items():
        if "error" in r:
            continue
        out[("written", key)] = r["written"]
        for c in r["consumers"]:
            out[("read", key, c["pid"])] = c["position"]
    return out


def _moved(spec, pid: int | None, first: dict, last: dict) -> int:
    """Records a stage moved between two position snapshots: what it read from its rings, or for a
    source what it wrote."""
    if spec.reads:
        return sum(last.get(("read", k, pid), 0) - first.get(("read", k, pid), 0) for k in spec.reads)
    return sum(last.get(("written", k), 0) - first.get(("written", k), 0) for k in spec.writes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from shmpipe import control
    from shmpipe_bench.machine import describe, loadavg
    from shmpipe_services.launcher.private_run import private_registry
    from shmpipe_services.launcher.supervisor import Launcher

    tmp = tempfile.mkdtemp(prefix="shmpipe-pbench-", dir="/tmp")
    with private_registry(tmp, f"pbench-{os.getpid()}"):
        prefix = f"pbench-{os.getpid()}."
        result: dict[str, Any] = {"prefix": prefix, "rate": args.rate, "seconds": args.seconds,
                                  "symbols": args.symbols, "only": args.only,
                                  "wait": args.wait or "block", "conflate_ms": args.conflate_ms,
                                  "machine": describe(sorted(os.sched_getaffinity(0))),
                                  "loadavg_before": loadavg(),
                                  "problems": []}
        problems: list[str] = result["problems"]
        launcher = reader = None
        log_dir = os.path.join(tmp, "logs")
        try:
            pipeline, capture = bench_pipeline(prefix, args)
            launcher = Launcher(pipeline, log_dir=log_dir, say=lambda line: print(f"pipeline_bench: {line}",
                                                                                     file=sys.stderr))
            launcher.start()
            procs = ProcessWatch()
            procs.attach(launcher)
            if not args.no_latency and "books" in pipeline.rings:
                reader = LatencyReader(pipeline.rings["books"].segment)
            if reader is not None:
                reader.opened_ns = time.time_ns()
            control.request(capture, "resume", timeout=5.0)
            opened = time.monotonic()
            first = _ring_positions(launcher)
            procs.open_window()
            fill_hwm: dict[str, int] = {}
            deadline = opened + args.seconds
            next_sample = 0.0
            while time.monotonic() < deadline and not launcher.stop_event.is_set():
                launcher.supervise_once()
                if reader is not None:
                    reader.poll()
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + args.sample_s
                    procs.sample()
                    for key, r in launcher.ring_stats()["rings"].items():
                        if "error" not in r:
                            fill_hwm[key] = max(fill_hwm.get(key, 0), r["fill"])
                time.sleep(0.002 if reader is not None else 0.02)
            control.request(capture, "pause", timeout=5.0)
            window = time.monotonic() - opened
            last = _ring_positions(launcher)
            cost = procs.close_window(window)
            _drain(launcher, reader, problems)
            final = _stage_records(launcher)
            drained = _ring_positions(launcher)
            rings = launcher.ring_stats()["rings"]
            pids = [s.pid for s in launcher.processes.values() if s.pid]
            launcher.stop()
            # one Tick per venue message: the ticks ring counts the messages sent, exactly
            sent = last[("written", "ticks")] - first[("written", "ticks")]
            result["window_s"] = round(window, 3)
            result["capture_schedule"] = {"messages_due": round(args.rate * window), "messages_sent": sent,
                                          "behind": round(max(0.0, 1.0 - sent / (args.rate * window)), 4)}
            result["stages"] = {}
            for name in pipeline.processes:
                moved = _moved(pipeline.processes[name], launcher.processes[name].pid, first, last)
                stage = {"records": moved, "records_per_s": round(moved / window),
                         "records_with_drain": _moved(pipeline.processes[name], launcher.processes[name].pid,
                                                      first, drained),
                         "records_total": final[name]["records"], "lost": final[name]["lost"],
                         **cost.get(name, {})}
                spec = pipeline.processes[name]
                stage["lost"] += sum(c["lost"] for k in spec.reads
                                     for c in rings.get(k, {}).get("consumers", [])
                                     if c["pid"] == launcher.processes[name].pid)
                if stage.get("cpu_percent") is not None and moved:
                    # what one record costs the stage: its CPU time in the window over what it moved
                    stage["cpu_us_per_record"] = round(stage["cpu_percent"] / 100.0 * window / moved * 1e6, 3)
                if name == "capture":
                    levels = last[("written", "levels")] - first[("written", "levels")]
                    stage["levels_per_s"] = round(levels / window)
                    stage["messages_per_s"] = round(sent / window)
                result["stages"][name] = stage
            result["bench_process"] = cost.get("(bench)", {})
            result["rings"] = {k: {"written": r["written"],
                                   "written_in_run": drained[("written", k)] - first[("written", k)],
                                   "lost": r["lost"], "full_waits": r["full_waits"],
                                   "capacity": pipeline.rings[k].capacity, "fill_hwm": fill_hwm.get(k, 0)}
                               for k, r in rings.items() if "error" not in r}
            if reader is not None:
                reader.poll()
                result["update_to_entry"] = reader.figures()
            # other work on the box shows here: say it beside the figures
            result["loadavg_after"] = loadavg()
            problems += _judge(result, launcher, pids, pipeline)
        except Exception as exc:  # noqa: BLE001 - reported as a failed run, with what was measured
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            if reader is not None:
                reader.close()
            if launcher is not None:
                launcher.stop()
            if problems and os.path.isdir(log_dir):      # the stages' logs say what went wrong: kept
                result["log_dir"] = log_dir
                shutil.rmtree(os.path.join(tmp, "run"), ignore_errors=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return result


def _drain(launcher, reader, problems: list[str]) -> None:
    """Until every reader has read all and no stage's count moved for SETTLE_S (the summary's
    totals then agree with the rings')."""
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    before = None
    while time.monotonic() < deadline:
        launcher.supervise_once()
        if reader is not None:
            reader.poll()
        rings = launcher.ring_stats()["rings"]
        lag = sum(c["lag"] for r in rings.values() if "error" not in r for c in r["consumers"])
        counts = {n: f["records"] for n, f in _stage_records(launcher).items()}
        if lag == 0 and counts == before:
            return
        before = counts
        end = time.monotonic() + SETTLE_S
        while time.monotonic() < end:
            if reader is not None:
                reader.poll()
            time.sleep(0.01)
    problems.append(f"the stages had not drained {DRAIN_DEADLINE_S:g} s after the market closed")


def _judge(result: dict, launcher, pids: list[int], pipeline) -> list[str]:
    from shmpipe_services.launcher.demo import _left_behind

    problems = []
    for name, s in result["stages"].items():
        if s["records"] <= 0:
            problems.append(f"{name} moved no records in the window")
        if s["lost"]:
            problems.append(f"{name} lost {s['lost']:,} records")
        state = launcher.processes[name]
        if state.restarts:
            problems.append(f"{name} was restarted {state.restarts} time(s)")
        if state.exit_code not in (0, None):
            problems.append(f"{name} ended with exit code {state.exit_code}")
    behind = result["capture_schedule"]["behind"]
    if behind > SCHEDULE_TOLERANCE:
        problems.append(f"capture sent {behind:.1%} fewer messages than its schedule (the pipeline did not "
                        f"keep up with {result['rate']:,.0f} messages/s)")
    problems += _left_behind(pids, pipeline.ring_prefix)
    return problems


def _table(result: dict) -> str:
    conflate = "as the file says" if result["conflate_ms"] is None else f"{result['conflate_ms']:g} ms"
    lines = [f"pipeline at {result['rate']:,.0f} messages/s for {result.get('window_s', 0):.1f} s "
             f"(wait {result['wait']}, conflate {conflate})"]
    lines.append(f"{'stage':<10} {'records':>11} {'per s':>10} {'lost':>5} {'cpu %':>6} {'µs/rec':>7} "
                 f"{'rss start':>9} {'end':>6} {'max':>6} MiB")
    for name, s in result.get("stages", {}).items():
        cpu = "-" if s.get("cpu_percent") is None else f"{s['cpu_percent']:.0f}"
        per = "-" if s.get("cpu_us_per_record") is None else f"{s['cpu_us_per_record']:.2f}"
        lines.append(f"{name:<10} {s['records']:>11,} {s['records_per_s']:>10,} {s['lost']:>5,} {cpu:>6} "
                     f"{per:>7} {s.get('rss_start_mib', '-'):>9} {s.get('rss_end_mib', '-'):>6} "
                     f"{s.get('rss_max_mib', '-'):>6}")
    cap = result.get("stages", {}).get("capture")
    if cap:
        sch = result["capture_schedule"]
        lines.append(f"capture: {cap['messages_per_s']:,} messages/s, "
                     f"{cap['levels_per_s']:,} LevelUpdates/s; {sch['messages_sent']:,} of "
                     f"{sch['messages_due']:,} messages due ({sch['behind']:.2%} behind)")
    for k, r in result.get("rings", {}).items():
        lines.append(f"ring {k:<7} written {r['written']:>11,}  fill high-water {r['fill_hwm']:>7,} / "
                     f"{r['capacity']:,}  full waits {r['full_waits']:,}  lost {r['lost']:,}")
    lat = result.get("update_to_entry")
    if lat:
        figs = " ".join(f"{k} {lat[k + '_us']:,} µs" for k in ("min", "p50", "p99", "p999", "max")
                        if k + "_us" in lat)
        lines.append(f"update -> entry (published_ns - timestamp_ns, {lat['entries']:,} entries): {figs}"
                     + (f"; {lat['negative']:,} negative" if lat["negative"] else "")
                     + f"; {lat['before_open']:,} entries of start-up snapshots not counted")
    for p in result["problems"]:
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)


def market_ab(symbols: int, batch: int, runs: int, messages: int = 200_000) -> dict[str, Any]:
    """CPU µs per message (time.process_time) of ``next_batch(batch)`` for the compiled market and
    the plain-Python reference, interleaved runs; also their LevelUpdates per message (the same
    records: the two are byte-identical for a seed, tests/test_synthetic_market.py)."""
    from shmpipe_services.capture.synthetic_market import SyntheticMarket
    from shmpipe_services.capture.synthetic_market_reference import ReferenceSyntheticMarket

    kinds = {"compiled": (SyntheticMarket, messages), "reference": (ReferenceSyntheticMarket, messages // 10)}
    per: dict[str, list[float]] = {k: [] for k in kinds}
    levels: dict[str, float] = {}
    for _ in range(runs):
        for name, (make, n) in kinds.items():
            market = make(symbols, seed=1, events_per_second=1e6)
            market.next_batch(batch)                 # the start-up snapshots, outside the timing
            made = levels_made = 0
            t0 = time.process_time()
            while made < n:
                _ticks, lv = market.next_batch(batch)
                made += batch
                levels_made += len(lv)
            per[name].append((time.process_time() - t0) / made * 1e6)
            levels[name] = levels_made / made
    out = {name: {"us_per_message": round(float(np.median(v)), 3), "runs_us": [round(x, 3) for x in v],
                  "levels_per_message": round(levels[name], 3)} for name, v in per.items()}
    out["speedup"] = round(out["reference"]["us_per_message"] / out["compiled"]["us_per_message"], 1)
    out.update(symbols=symbols, batch=batch, load_average=list(os.getloadavg()))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.market_ab:
        if args.batch < 1 or args.runs < 1:
            print("pipeline_bench: --batch and --runs must be >= 1", file=sys.stderr)
            return 2
        ab = market_ab(args.symbols, args.batch, args.runs)
        for name in ("reference", "compiled"):
            fig = ab[name]
            print(f"{name:<9} {fig['us_per_message']:>7.3f} µs CPU/message (runs {fig['runs_us']}), "
                  f"{fig['levels_per_message']} LevelUpdates/message")
        print(f"compiled is {ab['speedup']}x faster; {args.symbols} symbols, {args.batch} messages per "
              f"next_batch; load average {', '.join(f'{x:.2f}' for x in ab['load_average'])}")
        if args.json:
            Path(args.json).write_text(json.dumps(ab, indent=1, sort_keys=True))
        return 0
    result = run(args)
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
