"""Bridge benchmark (issue 14): ring -> Redis Streams -> ring through the two real bridge processes.

Two measurements, each with fresh bridge processes, rings and stream key per run:

* ``throughput``: for each ``--batch`` (records per stream entry; default 1, 64, 1024) the harness
  writes N Ticks into the source ring as fast as the ring takes them and reads the destination
  ring; records/s = N / (time of the last record read - time of the first write). Every record is
  checked: tick *i* must arrive as the *i*-th record (``sequence == i``); a missing, repeated or
  reordered record fails the run.
* ``latency``: the harness writes Ticks at a fixed ``--rate`` (paced in 1 ms steps), each stamped
  with ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process of the host) in
  ``timestamp_ns`` as it is written; a reader thread takes them out of the destination ring and
  records now - timestamp_ns in an HDR histogram. That is the latency the bridge adds end to end:
  the sender's wake-up and XADD, Redis, the receiver's XREADGROUP and ring write, and the reader's
  wake-up (a ring hop alone is < 1 µs, bench/README.md).

Both bridges are started with ``python -m shmpipe_tools.cli bridge ...`` against ``--redis``
(default the local Redis), not pinned. Run:
``python -m shmpipe_bench.bridge_bench --runs 3 --json bridge-bench.json``.
Exit status 1 when any run failed (a bridge exited, a record was wrong, a deadline passed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

DEADLINE_S = 120.0


class RunFailed(Exception):
    pass


def _bridges(src: str, dst: str, url: str, stream: str, batch: int, state_dir: str) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "shmpipe_tools.cli", "bridge"]
    return [
        subprocess.Popen(base + ["ring-to-redis", "--ring", src, "--redis", url, "--stream", stream,
                                 "--batch", str(batch), "--name", f"{src}.bench"], stderr=subprocess.DEVNULL),
        subprocess.Popen(base + ["redis-to-ring", "--ring", dst, "--redis", url, "--stream", stream, "--group",
                                 "bench", "--state-dir", state_dir, "--name", f"{dst}.bench"],
                         stderr=subprocess.DEVNULL),
    ]


def _wait_attached(src, dst, procs, deadline: float) -> None:
    """Until the sender holds the source's consumer role and the receiver the destination's producer
    role: both have connected to Redis by then (they connect first)."""
    while not (src.stats()["consumers"][0]["alive"] and dst.stats()["producer"]["alive"]):
        _check_alive(procs)
        if time.monotonic() > deadline:
            raise RunFailed("the bridges did not attach within the deadline")
        time.sleep(0.01)


def _check_alive(procs) -> None:
    for p in procs:
        if p.poll() is not None:
            raise RunFailed(f"a bridge exited with status {p.returncode}")


class _Setup:
    """Rings, bridges and the stream key of one run; removed on exit."""

    def __init__(self, url: str, batch: int, capacity: int) -> None:
        import redis

        import shmpipe
        from shmpipe.records import TICK

        tag = f"bridge-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.url, self.stream = url, tag
        self.src = shmpipe.Ring.create(f"{tag}-src", TICK, capacity)
        self.dst = shmpipe.Ring.create(f"{tag}-dst", TICK, capacity)
        self.state = tempfile.TemporaryDirectory(prefix="bridge-bench-")
        self.procs = _bridges(self.src.name, self.dst.name, url, tag, batch, self.state.name)
        self.redis = redis.Redis.from_url(url)

    def close(self) -> list[int | None]:
        codes = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                codes.append(p.wait(30))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        for ring in (self.src, self.dst):
            ring.close()
            ring.unlink()
        self.redis.delete(self.stream, f"{self.stream}:dtype", f"{self.stream}:owner")
        self.redis.close()
        self.state.cleanup()
        return codes


def throughput_run(url: str, batch: int, records: int) -> dict:
    from shmpipe.records import TICK

    setup = _Setup(url, batch, 1 << 16)
    try:
        deadline = time.monotonic() + DEADLINE_S
        _wait_attached(setup.src, setup.dst, setup.procs, deadline)
        data = np.zeros(records, TICK)
        data["sequence"] = np.arange(records)
        data["symbol_id"] = np.arange(records) % 8
        with setup.src.producer() as producer, setup.dst.consumer() as consumer:
            written = received = 0
            t0 = time.monotonic_ns()
            while received < records:
                if written < records:
                    written += producer.write_batch(data[written:written + 16384], timeout=0)
                got = consumer.read(1 << 16, timeout=0.005)
                if len(got):
                    if not np.array_equal(got["sequence"], np.arange(received, received + len(got))):
                        raise RunFailed(f"batch {batch}: wrong record after {received} good ones")
                    received += len(got)
                if time.monotonic() > deadline:
                    raise RunFailed(f"batch {batch}: {received} of {records} records within {DEADLINE_S} s")
                if not len(got):
                    _check_alive(setup.procs)
            elapsed = (time.monotonic_ns() - t0) / 1e9
    finally:
        codes = setup.close()
    if codes != [0, 0]:
        raise RunFailed(f"bridges exited with {codes} after SIGTERM")
    return {"batch": batch, "records": records, "seconds": round(elapsed, 3),
            "records_per_s": round(records / elapsed), "verified": True}


def latency_run(url: str, batch: int, rate: float, seconds: float) -> dict:
    from shmpipe_bench import stats as hstats

    from shmpipe.records import TICK

    setup = _Setup(url, batch, 1 << 16)
    total = int(rate * seconds)
    latencies = np.zeros(total, np.int64)
    received = [0]
    error: list[str] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        _wait_attached(setup.src, setup.dst, setup.procs, deadline)
        with setup.src.producer() as producer, setup.dst.consumer() as consumer:
            def read_all():
                while received[0] < total and time.monotonic() < deadline + seconds:
                    got = consumer.read(4096, timeout=0.05)
                    if not len(got):
                        continue
                    now = time.monotonic_ns()
                    n = received[0]
                    if not np.array_equal(got["sequence"], np.arange(n, n + len(got))):
                        error.append(f"wrong record after {n} good ones")
                        return
                    latencies[n:n + len(got)] = now - got["timestamp_ns"].astype(np.int64)
                    received[0] += len(got)
            reader = threading.Thread(target=read_all, daemon=True)
            reader.start()
            start = time.monotonic()
            sent = 0
            while sent < total:
                due = min(total, int((time.monotonic() - start) * rate) + 1)
                if due > sent:
                    chunk = np.zeros(due - sent, TICK)
                    chunk["sequence"] = np.arange(sent, due)
                    chunk["timestamp_ns"] = time.monotonic_ns()
                    sent += producer.write_batch(chunk, timeout=1.0)
                time.sleep(0.001)
            reader.join(DEADLINE_S)
            if error:
                raise RunFailed(error[0])
            if received[0] < total:
                raise RunFailed(f"latency: {received[0]} of {total} records arrived")
    finally:
        codes = setup.close()
    if codes != [0, 0]:
        raise RunFailed(f"bridges exited with {codes} after SIGTERM")
    summary = hstats.summary_us(hstats.decode(hstats.encode_latencies(latencies)))
    return {"batch": batch, "rate": rate, "seconds": seconds, "records": total, "verified": True,
            "p50_us": summary["p50_us"], "p99_us": summary["p99_us"], "p999_us": summary["p999_us"],
            "max_us": summary["max_us"]}


def _summarise(runs: list[dict], keys: list[str]) -> dict:
    from shmpipe_bench.stats import median_spread

    out = {}
    for key in keys:
        median, spread = median_spread([r[key] for r in runs])
        out[key] = {"median": median, "min_max": spread, "runs": len(runs)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shmpipe_bench.bridge_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", default=os.environ.get("SHMPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   metavar="URL", help="Redis to bridge through (default the local one)")
    p.add_argument("--batches", default="1,64,1024", help="records per stream entry to measure (default 1,64,1024)")
    p.add_argument("--records", type=int, default=2_000_000,
                   help="records per throughput run for batch >= 64 (default 2,000,000)")
    p.add_argument("--records-batch-1", type=int, default=50_000,
                   help="records per throughput run for batch 1 (one XADD per record; default 50,000)")
    p.add_argument("--rate", type=float, default=10_000.0, help="latency: records/s offered (default 10,000)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="latency: seconds per run (default 10)")
    p.add_argument("--latency-batch", type=int, default=256, help="latency: --batch of the sender (default 256)")
    p.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--private-aof", action="store_true",
                   help="start a redis-server of the bench's own (temp dir, a free port) with appendonly yes "
                        "and appendfsync always, and bridge through it instead of --redis")
    p.add_argument("--json", metavar="PATH", help="write every run and the summaries here")
    args = p.parse_args(argv)
    if args.private_aof:
        with _private_aof_redis() as url:
            args.redis = url
            return _measure(args)
    return _measure(args)


@contextlib.contextmanager
def _private_aof_redis():
    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="bridge-bench-redis-") as directory:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                                 "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"bridge_bench: the private redis-server did not start on port {port}")
                    time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.kill()
            proc.wait()


def _measure(args) -> int:

    from shmpipe_bench import machine

    result: dict = {"machine": machine.describe([]), "redis": _redis_facts(args.redis),
                    "throughput": [], "latency": [], "failures": []}
    result["machine"]["pinning_requested"] = False
    batches = [int(b) for b in args.batches.split(",") if b]
    for run in range(args.runs):
        if not args.skip_throughput:
            for batch in batches:       # interleaved: each run measures every batch size once
                records = args.records_batch_1 if batch == 1 else args.records
                try:
                    r = throughput_run(args.redis, batch, records)
                    result["throughput"].append(r)
                    print(f"run {run + 1}: batch {batch:5d}: {r['records_per_s']:>12,} records/s "
                          f"({records:,} in {r['seconds']} s)", flush=True)
                except RunFailed as exc:
                    result["failures"].append(f"throughput batch {batch}: {exc}")
                    print(f"run {run + 1}: batch {batch}: FAILED: {exc}", flush=True)
        if not args.skip_latency:
            try:
                r = latency_run(args.redis, args.latency_batch, args.rate, args.latency_seconds)
                result["latency"].append(r)
                print(f"run {run + 1}: latency at {args.rate:,.0f} records/s: p50 {r['p50_us']:.0f} µs, "
                      f"p99 {r['p99_us']:.0f} µs, max {r['max_us']:.0f} µs", flush=True)
            except RunFailed as exc:
                result["failures"].append(f"latency: {exc}")
                print(f"run {run + 1}: latency: FAILED: {exc}", flush=True)
    result["throughput_summary"] = {
        str(b): _summarise([r for r in result["throughput"] if r["batch"] == b], ["records_per_s"])
        for b in batches if any(r["batch"] == b for r in result["throughput"])}
    if result["latency"]:
        result["latency_summary"] = _summarise(result["latency"], ["p50_us", "p99_us", "p999_us", "max_us"])
    result["machine"]["loadavg_after"] = machine.loadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    for batch, s in result["throughput_summary"].items():
        m = s["records_per_s"]
        print(f"batch {batch}: median {m['median']:,.0f} records/s, min/max {m['min_max']} over {m['runs']} runs")
    if result["latency"]:
        s = result["latency_summary"]
        print(f"latency: p50 {s['p50_us']['median']:.0f} µs {s['p50_us']['min_max']}, "
              f"p99 {s['p99_us']['median']:.0f} µs {s['p99_us']['min_max']}")
    return 1 if result["failures"] else 0


def _redis_facts(url: str) -> dict:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info()
        return {"version": info.get("redis_version"), "aof_enabled": info.get("aof_enabled"),
                "appendfsync": client.config_get("appendfsync").get("appendfsync")}
    except redis.exceptions.RedisError as exc:
        return {"error": str(exc)}
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
