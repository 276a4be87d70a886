"""Consumer cost: how many records a second the bar and feature arithmetic takes, per batch size.

    python bench/consumer_bench.py [--runs 5] [--json consumer-bench.json] [--quick]

In one process, no ring and no publishing: the records are made up front (``SyntheticFeed`` ticks,
20 % trades, 16 symbols; random books with 1-11 levels a side, 16 symbols), then each cell feeds
them through ``BarAggregator.add`` (1s, 1m, 5m bars, closed on trade time) or
``FeatureEngine.update`` (top 5, volatility over 100 returns) in batches of the given size and
divides the elapsed time by the record count. Cells are repeated ``--runs`` times, interleaved, and
reported as the median with the [min, max] spread. What this leaves out (reading the ring, a
msgpack envelope per bar or feature message, the ZeroMQ send) is measured by neither.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from shmpipe_services.capture.synthetic import SyntheticFeed
from shmpipe_services.consumers.bars import BarAggregator, parse_timeframes
from shmpipe_services.consumers.features import FeatureEngine

from shmpipe.records import ORDERBOOK_ENTRY

BATCHES = (64, 512, 4096)


def make_books(n: int, symbols: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    books = np.zeros(n, ORDERBOOK_ENTRY)
    books["symbol_id"] = rng.integers(0, symbols, n)
    books["sequence"] = np.arange(n)
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    counts = rng.integers(1, 12, (n, 2))
    levels = np.arange(50)
    for side, sign, col in (("bids", -1, 0), ("asks", 1, 1)):
        filled = levels < counts[:, col:col + 1]
        books[side][:, :, 0] = np.where(filled, mid[:, None] + sign * (0.01 + 0.01 * levels), 0)
        books[side][:, :, 1] = np.where(filled, rng.uniform(0.1, 5, (n, 50)), 0)
    books["bid_count"], books["ask_count"] = counts[:, 0], counts[:, 1]
    return books


def time_bars(ticks: np.ndarray, batch: int) -> float:
    agg = BarAggregator(parse_timeframes("1s,1m,5m"), close_on_trade_time=True)
    start = time.perf_counter()
    for i in range(0, len(ticks), batch):
        agg.add(ticks[i:i + batch])
    agg.flush()
    return time.perf_counter() - start


def time_features(books: np.ndarray, batch: int) -> float:
    engine = FeatureEngine(top_n=5, vol_window=100)
    start = time.perf_counter()
    for i in range(0, len(books), batch):
        engine.update(books[i:i + batch])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--quick", action="store_true", help="small counts, one run (a smoke test)")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    n_ticks, n_books = (20_000, 5_000) if args.quick else (1_000_000, 200_000)
    ticks, _ = SyntheticFeed(symbols=16, seed=1, events_per_second=10_000.0).next_batch(n_ticks)
    books = make_books(n_books)
    cells = [("bars", b) for b in BATCHES] + [("features", b) for b in BATCHES]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    for _ in range(runs):
        for kind, batch in cells:
            if kind == "bars":
                times[(kind, batch)].append(time_bars(ticks, batch) / len(ticks))
            else:
                times[(kind, batch)].append(time_features(books, batch) / len(books))
    rows = []
    print(f"{'consumer':<10}{'batch':>7}{'records/s (median)':>22}{'ns/record':>12}  [min, max] ns/record")
    for (kind, batch), per in times.items():
        med = statistics.median(per)
        rows.append({"consumer": kind, "batch": batch, "records_per_s": 1 / med, "ns_per_record": med * 1e9,
                     "min_ns": min(per) * 1e9, "max_ns": max(per) * 1e9, "runs": len(per)})
        print(f"{kind:<10}{batch:>7}{1 / med:>22,.0f}{med * 1e9:>12.1f}  [{min(per) * 1e9:.1f}, {max(per) * 1e9:.1f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                   "platform": platform.platform()},
                       "records": {"ticks": n_ticks, "books": n_books}, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
