"""Broadcast read calls across two processes: ns per read call while a producer writes flat out.

    python bench/broadcast_read_bench.py [--runs 5] [--seconds 2] [--cores 0,1] [--json out.json]

A producer process (pinned to the first core) writes 64-record batches of Ticks into a broadcast
ring as fast as the ring lets it; the reader (this process, pinned to the second core) calls one
read form in a loop for --seconds and counts the calls that returned records. Lossless: the
producer waits for the reader, so every call finds data and the figure is the reader's cost per
call with the producer's cache-line traffic around it. Lossy: the producer never waits, laps
the reader, and each call also pays the seqlock (claim_pos before and after its copy); records
skipped that way are reported as lost. Cells are interleaved over --runs and reported as the
median with the [min, max] spread. The issue-15 A/B runs this once per build, alternately.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
import uuid

import numpy as np

import shmpipe
from shmpipe.records import TICK

CAPACITY = 1 << 14
CELLS = [("lossless", "read1"), ("lossless", "read_into1"), ("lossless", "peek_commit1"),
         ("lossless", "read_into64"), ("lossy", "read1"), ("lossy", "read_into1"),
         ("lossy", "read_into64")]


def _producer(name: str, core: int, stop) -> None:
    os.sched_setaffinity(0, {core})
    ring = shmpipe.Ring.open(name)
    p = ring.producer()
    batch = np.zeros(64, TICK)
    try:
        while not stop.is_set():
            for _ in range(256):
                p.write_batch(batch, timeout=0.05)
    finally:
        p.close()
        ring.close()


def run_cell(policy: str, form: str, seconds: float, cores: tuple[int, int]) -> dict:
    name = f"bread-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ring = shmpipe.Ring.create(name, TICK, CAPACITY, wait="spin", broadcast=True, policy=policy)
    c = ring.consumer()
    stop = mp.Event()
    proc = mp.Process(target=_producer, args=(name, cores[0], stop), daemon=True)
    proc.start()
    try:
        os.sched_setaffinity(0, {cores[1]})
        out = np.empty(64 if form.endswith("64") else 1, TICK)
        c.read(1, timeout=5)            # the producer is up and writing
        calls = got = 0
        end = time.perf_counter() + seconds
        start = time.perf_counter()
        lost0 = c.lost
        while True:
            for _ in range(1000):
                if form == "read1":
                    n = len(c.read(1, timeout=0))
                elif form == "peek_commit1":
                    n = len(c.peek(1))
                    c.commit(n)
                else:
                    n = c.read_into(out, timeout=0)
                calls += 1
                got += n > 0
            now = time.perf_counter()
            if now >= end:
                break
        elapsed = now - start
        return {"policy": policy, "form": form, "ns_per_call": elapsed * 1e9 / calls,
                "empty_fraction": 1 - got / calls, "lost": c.lost - lost0}
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        c.close()
        ring.close()
        ring.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--cores", default=None, help="producer,reader cores (default: the last two allowed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    cores = tuple(int(x) for x in args.cores.split(",")) if args.cores else tuple(allowed[-2:])
    results: dict[str, list[dict]] = {}
    for _ in range(args.runs):
        for policy, form in CELLS:
            results.setdefault(f"{policy}/{form}", []).append(run_cell(policy, form, args.seconds, cores))
    print(f"shmpipe {shmpipe.__file__}  cores producer={cores[0]} reader={cores[1]}  "
          f"runs={args.runs} x {args.seconds}s  load={os.getloadavg()[0]:.2f}")
    summary = {}
    for cell, rs in results.items():
        ns = [r["ns_per_call"] for r in rs]
        summary[cell] = {"median_ns": statistics.median(ns), "min_ns": min(ns), "max_ns": max(ns),
                         "empty_fraction": statistics.median(r["empty_fraction"] for r in rs),
                         "lost": sum(r["lost"] for r in rs)}
        s = summary[cell]
        print(f"{cell:24s} {s['median_ns']:8.1f} ns/call [{s['min_ns']:.1f}, {s['max_ns']:.1f}]  "
              f"empty {s['empty_fraction']:.3f}  lost {s['lost']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "runs": args.runs, "seconds": args.seconds,
                       "shmpipe": shmpipe.__file__, "cells": summary, "raw": results}, f, indent=1)


if __name__ == "__main__":
    main()
