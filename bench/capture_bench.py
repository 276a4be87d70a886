"""Capture benchmark (issue 11): ``shmpipe capture`` as a real process, with real consumer processes.

Two measurements, each a set of child processes started fresh per run:

* ``latency``: ``shmpipe feed-server --speed X FIXTURE`` -> ``shmpipe capture`` -> one consumer
  process draining both rings. The figure is capture's own frame-to-ring histogram: from
  ``time.time_ns()`` when capture's event loop got the frame from ``websockets`` (the receive time
  the .wslog records) to the return of the ring write that made the frame's records readable,
  per frame that produced records. It does not include the kernel/socket/websocket-decoding time
  before the frame reaches capture, nor the consumer's wake-up after the write.
* ``synthetic``: ``shmpipe capture --feed synthetic --rate N --seconds S`` into two lossless
  broadcast rings (TICK, LEVEL_UPDATE) that two consumer processes read completely. Each consumer
  checks every record against the synthetic feed's determinism: tick *i* has ``sequence == i`` and
  ``timestamp_ns == START + i * 1e9/N``; level record *j* is the per-symbol snapshot prefix, then
  event *j - prefix* with the same timestamp rule. A missing, repeated or reordered record fails the
  check. Loss = records capture wrote - records a consumer verified (must be 0 for both).
  ``records/s`` counts ticks + levels (2 records per synthetic event, plus the snapshot prefix).

Run: ``python -m shmpipe_bench.capture_bench --rate 500000 --seconds 10 --runs 3 --json out.json``.
Exit status 1 when any run failed (a child exited nonzero, a consumer saw a wrong record, loss > 0).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

DEADLINE_S = 60.0


# -- the consumer child ---------------------------------------------------------------------------
def consume(args: argparse.Namespace) -> int:
    import shmpipe
    from shmpipe.records import ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, LEVEL_UPDATE, TICK
    from shmpipe_services.capture.synthetic import START_NS

    ticks_ring = shmpipe.Ring.open(args.ticks, TICK)
    levels_ring = shmpipe.Ring.open(args.levels, LEVEL_UPDATE)
    ticks_in, levels_in = ticks_ring.consumer(), levels_ring.consumer()
    print("ready", flush=True)
    verify = args.verify_rate is not None
    interval = 1e9 / args.verify_rate if verify else 0.0
    per_symbol = 2 * args.depth + 2
    prefix = args.symbols * per_symbol
    n_ticks = n_levels = 0
    error = None
    first_ns = last_ns = None
    expected = None       # (ticks, levels), once the parent says capture ended
    end_by = None
    while True:
        got = 0
        for which, consumer in ((0, ticks_in), (1, levels_in)):
            batch = consumer.read(1 << 16, timeout=0.02)
            if not len(batch):
                continue
            got += len(batch)
            now = time.monotonic_ns()
            first_ns = now if first_ns is None else first_ns
            last_ns = now
            if verify and error is None:
                error = (_check_ticks(batch, n_ticks, interval, START_NS) if which == 0 else
                         _check_levels(batch, n_levels, prefix, per_symbol, interval, START_NS,
                                       ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END))
            if which == 0:
                n_ticks += len(batch)
            else:
                n_levels += len(batch)
        if expected is None and select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline().split()
            expected = (int(line[0]), int(line[1])) if len(line) == 2 else (-1, -1)
            end_by = time.monotonic() + 10.0
        if expected is not None and not got:
            if (n_ticks, n_levels) >= expected or time.monotonic() > end_by:
                break
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"ticks": n_ticks, "levels": n_levels, "error": error,
                      "first_to_last_s": None if first_ns is None else (last_ns - first_ns) / 1e9,
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}), flush=True)
    ticks_in.close()
    levels_in.close()
    ticks_ring.close()
    levels_ring.close()
    return 0


def _expected_ts(start: int, n: int, interval: float, start_ns: int) -> np.ndarray:
    # the synthetic feed's own formula: (first + arange(n)) * interval_ns, truncated to u64
    return np.uint64(start_ns) + (np.arange(start, start + n) * interval).astype(np.uint64)


def _check_ticks(batch, done: int, interval: float, start_ns: int) -> str | None:
    seq = (np.arange(done, done + len(batch)) & 0xFFFF_FFFF).astype(np.uint32)
    bad = np.flatnonzero((batch["sequence"] != seq) |
                         (batch["timestamp_ns"] != _expected_ts(done, len(batch), interval, start_ns)))
    if len(bad):
        i = int(bad[0])
        return (f"tick {done + i}: sequence {int(batch['sequence'][i])}, "
                f"timestamp {int(batch['timestamp_ns'][i])}")
    return None


def _check_levels(batch, done: int, prefix: int, per_symbol: int, interval: float, start_ns: int,
                  begin: int, end: int) -> str | None:
    idx = np.arange(done, done + len(batch))
    snap = idx < prefix
    ts = np.where(snap, np.uint64(start_ns),
                  np.uint64(start_ns) + (np.maximum(idx - prefix, 0) * interval).astype(np.uint64))
    bad = batch["timestamp_ns"] != ts
    pos = idx % per_symbol
    bad |= snap & (pos == 0) & (batch["action"] != begin)
    bad |= snap & (pos == per_symbol - 1) & (batch["action"] != end)
    bad_at = np.flatnonzero(bad)
    if len(bad_at):
        i = int(bad_at[0])
        return (f"level record {done + i}: timestamp {int(batch['timestamp_ns'][i])}, "
                f"action {int(batch['action'][i])}")
    return None


# -- the parent -----------------------------------------------------------------------------------
class Children:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], env: dict, stdin: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env, text=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdout, proc.stderr, proc.stdin):
                if f is not None:
                    f.close()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready = select.select([proc.stdout], [], [], timeout)[0]
    if not ready:
        raise RuntimeError(f"{proc.args[2:4]}: no output within {timeout} s")
    return proc.stdout.readline()


def _env(tmp: Path, registry: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "SHMPIPE_SYMBOLS": registry, "SHMPIPE_SYMBOLS_FILE": str(tmp / "symbols.jsonl")}


def _make_rings(prefix: str, capacity: int):
    import shmpipe
    from shmpipe.records import LEVEL_UPDATE, TICK
    t = shmpipe.Ring.create(prefix + "-t", TICK, capacity, broadcast=True, policy="lossless")
    lv = shmpipe.Ring.create(prefix + "-l", LEVEL_UPDATE, capacity, broadcast=True, policy="lossless")
    return t, lv


def _start_consumers(children: Children, env: dict, prefix: str, k: int, extra: list[str]) -> list:
    procs = [children.spawn(["-m", "shmpipe_bench.capture_bench", "consume", "--ticks", prefix + "-t",
                             "--levels", prefix + "-l", *extra], env, stdin=True) for _ in range(k)]
    for proc in procs:
        line = _readline(proc, DEADLINE_S)
        if line.strip() != "ready":
            raise RuntimeError(f"consumer did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return procs


def _finish(procs: list, counters: dict) -> list[dict]:
    out = []
    for proc in procs:
        proc.stdin.write(f"{counters['ticks_written']} {counters['levels_written']}\n")
        proc.stdin.flush()
    for proc in procs:
        line = _readline(proc, DEADLINE_S)
        proc.wait(timeout=DEADLINE_S)
        if proc.returncode != 0 or not line.strip():
            raise RuntimeError(f"consumer exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        out.append(json.loads(line))
    return out


def _capture(children: Children, env: dict, argv: list[str], timeout: float) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = children.spawn(["-m", "shmpipe_tools.cli", "capture", *argv, "--json"], env)
    out, err = proc.communicate(timeout=timeout)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"capture exited {proc.returncode}: {err[-2000:]}")
    return json.loads(out), wall


def run_synthetic(rate: float, seconds: float, symbols: int, capacity: int, consumers: int) -> dict:
    from shmpipe import symbols as symmod
    children = Children()
    prefix = f"capbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    registry = prefix + "-sym"
    rings = []
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = _env(Path(tmp), registry)
            rings = list(_make_rings(prefix, capacity))
            procs = _start_consumers(children, env, prefix, consumers,
                                     ["--verify-rate", repr(rate), "--symbols", str(symbols)])
            counters, wall = _capture(children, env, [
                "--feed", "synthetic", "--rate", repr(rate), "--symbols", str(symbols),
                "--ticks", prefix + "-t", "--levels", prefix + "-l", "--seconds", repr(seconds)],
                seconds + DEADLINE_S)
            got = _finish(procs, counters)
    finally:
        children.stop_all()
        for ring in rings:
            ring.unlink()
            ring.close()
        symmod.remove_segment(registry)
    written = counters["ticks_written"] + counters["levels_written"]
    losses = [written - (c["ticks"] + c["levels"]) for c in got]
    errors = [c["error"] for c in got if c["error"]]
    return {
        "target_events_per_s": rate, "target_records_per_s": 2 * rate, "seconds": seconds,
        "capture_wall_s": round(wall, 3), "symbols": symbols, "ring_capacity": capacity,
        "consumers": consumers, "events": counters["messages"],
        "ticks_written": counters["ticks_written"], "levels_written": counters["levels_written"],
        "records_per_s": round(written / seconds), "ring_full_waits": counters["ring_full_waits"],
        "consumer_records": [c["ticks"] + c["levels"] for c in got],
        "consumer_cpu_s": [c["cpu_s"] for c in got],
        "loss": max(losses), "verified": not errors and max(losses) == 0 and min(losses) == 0,
        "errors": errors, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def run_latency(fixture: str, feed: str, speed: float, seconds: float, capacity: int) -> dict:
    from shmpipe import symbols as symmod
    children = Children()
    prefix = f"capbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    registry = prefix + "-sym"
    rings = []
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = _env(Path(tmp), registry)
            rings = list(_make_rings(prefix, capacity))
            server = children.spawn(["-m", "shmpipe_tools.cli", "feed-server", "--port", "0", "--speed",
                                     repr(speed), fixture], env)
            line = _readline(server, DEADLINE_S)
            if not line.startswith("listening on ws://"):
                raise RuntimeError(f"feed server: {line!r}")
            url = line.split()[2]
            procs = _start_consumers(children, env, prefix, 1, [])
            counters, wall = _capture(children, env, [
                "--feed", feed, "--url", url, "--ticks", prefix + "-t", "--levels", prefix + "-l",
                "--seconds", repr(seconds)], seconds + DEADLINE_S)
            got = _finish(procs, counters)
    finally:
        children.stop_all()
        for ring in rings:
            ring.unlink()
            ring.close()
        symmod.remove_segment(registry)
    written = counters["ticks_written"] + counters["levels_written"]
    lat = counters.get("latency_us")
    if not lat:
        raise RuntimeError("capture reported no frame-to-ring latency (hdrhistogram missing, or no frames)")
    return {
        "fixture": os.path.basename(fixture), "feed": feed, "speed": speed, "seconds_limit": seconds,
        "capture_wall_s": round(wall, 3), "ended": counters.get("ended"), "messages": counters["messages"],
        "records": written, "consumer_records": got[0]["ticks"] + got[0]["levels"],
        "loss": written - (got[0]["ticks"] + got[0]["levels"]),
        "frame_to_ring_us": lat, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shmpipe_bench.capture_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("consume", help="(internal) a consumer process")
    c.add_argument("--ticks", required=True)
    c.add_argument("--levels", required=True)
    c.add_argument("--verify-rate", type=float, help="verify against the synthetic feed of this rate")
    c.add_argument("--symbols", type=int, default=8)
    c.add_argument("--depth", type=int, default=10)
    ap.add_argument("--rate", type=float, default=500_000.0, help="synthetic events/s (records/s = 2x)")
    ap.add_argument("--seconds", type=float, default=10.0, help="synthetic run length")
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--capacity", type=int, default=1 << 18, help="records per ring")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fixture", default=None, help="default: ../shared/data/kraken_v2.jsonl")
    ap.add_argument("--fixture-feed", default="kraken", choices=("coinbase", "kraken", "alpaca"))
    ap.add_argument("--speed", type=float, default=1.0, help="feed-server --speed (1: recorded pace)")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.cmd == "consume":
        return consume(args)

    from shmpipe_bench import machine
    result = {"machine": machine.describe(sorted(os.sched_getaffinity(0))), "pinning": "none (OS scheduler)",
              "latency": [], "synthetic": [], "failures": []}
    result["machine"]["pinning_requested"] = False
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    fixture = args.fixture or str(shared / "kraken_v2.jsonl")
    for i in range(args.runs):
        if not args.skip_latency:
            try:
                r = run_latency(fixture, args.fixture_feed, args.speed, args.latency_seconds, args.capacity)
                result["latency"].append(r)
                print(f"latency run {i + 1}: {r['messages']} frames, "
                      f"frame-to-ring µs {r['frame_to_ring_us']}, "
                      f"loss {r['loss']}", flush=True)
                if r["loss"]:
                    result["failures"].append(f"latency run {i + 1}: loss {r['loss']}")
            except Exception as exc:   # noqa: BLE001 - recorded, and the exit status says it
                result["failures"].append(f"latency run {i + 1}: {exc}")
        if not args.skip_synthetic:
            try:
                r = run_synthetic(args.rate, args.seconds, args.symbols, args.capacity, args.consumers)
                result["synthetic"].append(r)
                print(f"synthetic run {i + 1}: {r['records_per_s']:,} records/s for {r['seconds']} s, "
                      f"loss {r['loss']}, verified {r['verified']}, ring-full waits {r['ring_full_waits']}, "
                      f"load {r['loadavg_before']}", flush=True)
                if not r["verified"]:
                    result["failures"].append(f"synthetic run {i + 1}: loss {r['loss']}, {r['errors']}")
            except Exception as exc:   # noqa: BLE001
                result["failures"].append(f"synthetic run {i + 1}: {exc}")
    if result["synthetic"]:
        rates = [r["records_per_s"] for r in result["synthetic"]]
        result["synthetic_summary"] = {"records_per_s": _spread(rates)}
    if result["latency"]:
        result["latency_summary"] = {k: _spread([r["frame_to_ring_us"][k] for r in result["latency"]])
                                     for k in ("p50", "p99", "p999", "max")}
    result["machine"]["loadavg_after"] = machine.loadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    for f in result["failures"]:
        print("FAILED:", f, file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
