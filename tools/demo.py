"""`shmpipe demo`: the main job on defaults that need no server: a producer process streams
Ticks through a ring to this process, which checks every record and reports the rate."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="stream Ticks between two processes through a ring and verify every one",
        description="Create a ring, start a producer process that writes --records synthetic Ticks "
                    "(in batches of --batch; 1 means one write() per record), read and verify them "
                    "here, print the rate, then remove the ring.",
    )
    p.add_argument("--records", type=int, default=10_000_000, help="how many Ticks (default 10,000,000)")
    p.add_argument("--batch", type=int, default=1024, help="records per write_batch call; 1 = write() (default 1024)")
    p.add_argument("--capacity", type=int, default=1 << 16, help="ring capacity, a power of two (default 65536)")
    p.add_argument("--wait", choices=("spin", "yield", "block"), default="block", help="wait strategy (default block)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
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
    if args.json:
        print(json.dumps(result))
    else:
        print(f"shmpipe demo: {seen:,} Ticks from a producer process, every one checked in order, in "
              f"{elapsed:.3f} s ({seen / elapsed:,.0f} records/s, batch {args.batch}, wait={args.wait}; "
              f"includes the producer's start-up)")
    return 0
