"""Order book benchmark (issue 12): the compiled book in process, Kraken's CRC32, update -> entry
latency across processes, and the three stages (capture -> orderbook -> consumer) as processes.

* ``inprocess``: ns per applied update of ``BookEngine.apply`` over a pre-built stream of LevelUpdates
  (K symbols, books of 2 x 100 levels, every change a set or delete within the top 50 levels of a
  random side, as real feeds concentrate there): apply only (no books ring), and apply + the
  50-level OrderbookEntry built and written to a books ring (one entry per update). A Python
  bisect-based book (ccxt's way: a sorted price list + a dict) runs the same stream as the
  reference the issue names, and a C++ std::map (red-black tree) per side with the top 50 read
  after each change (``TREE_SOURCE`` below, built on demand) is the tree the arrays are
  chosen over. Figures are the median of --runs, with [min, max].
* ``checksum``: µs per Kraken CRC32 check (top 10 per side, formatted by the registry's decimals)
  of the compiled book, called from Python (that call's ~50 ns included), against the Python
  reference (``services/capture/kraken_checksum.py``).
* ``latency``: a producer process writes one LevelUpdate at a time at --rate, stamped with
  CLOCK_MONOTONIC just before the write; ``shmpipe orderbook`` (a separate process) applies it and
  writes the 50-level entry, whose timestamp_ns is that stamp; a consumer process records
  now - stamp when the entry is readable. p50/p99/p99.9 from an HDR histogram. --wait picks the
  rings' wait strategy (spin needs a free core per process; block sleeps on a futex).
* ``pipeline``: ``shmpipe capture --feed synthetic --rate R --seconds S`` -> ``shmpipe orderbook``
  -> a consumer process. No record lost between them: the orderbook's ``records`` must equal
  capture's ``levels_written`` (every LevelUpdate applied), and the consumer checks every entry's
  per-symbol ``sequence`` is the previous + 1 and counts them all (= the orderbook's
  ``snapshots_written``). ``records_per_s`` = LevelUpdates through the order book / capture's seconds
  (bounded by the synthetic rate; the per-core capacity is ``inprocess``'s figure).

Run: ``python -m shmpipe_bench.orderbook_bench all --json ob.json`` (or one of the four names).
Exit status 1 when a run failed (a child exited nonzero, a lost or reordered record).
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np

DEADLINE_S = 60.0


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 3) for v in values]}


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "loadavg_1m": os.getloadavg()[0]}


# -- the synthetic stream of book changes ---------------------------------------------------------
def book_stream(symbols: int, updates: int, seed: int = 1, levels: int = 100, top: int = 50):
    """K snapshots of `levels` per side around 100.00 + 10k, then `updates` sets/deletes landing on
    one of the top `top` price steps of a random side (deletes 20 %), never crossing. Each update is
    a venue message of its own (flags bit4 "last", as capture marks it): one entry per update."""
    from shmpipe import records
    from shmpipe.records import (
        ACTION_SET,
        ACTION_SNAPSHOT_BEGIN,
        ACTION_SNAPSHOT_END,
        LEVEL_UPDATE,
        SIDE_ASK,
        SIDE_BID,
    )
    last = getattr(records, "LEVEL_FLAG_LAST", 0)   # 0 in builds before the last bit (the "before" runs)
    rng = np.random.default_rng(seed)
    snap = []
    for s in range(symbols):
        mid = 100.0 + 10 * s
        snap.append((0, 0.0, 0.0, s + 1, 0, ACTION_SNAPSHOT_BEGIN, 7, 0))
        for k in range(levels):
            snap.append((0, round(mid - 0.01 * (k + 1), 2), 1.0 + k, s + 1, SIDE_BID, ACTION_SET, 7, 0))
            snap.append((0, round(mid + 0.01 * (k + 1), 2), 1.0 + k, s + 1, SIDE_ASK, ACTION_SET, 7, 0))
        snap.append((0, 0.0, 0.0, s + 1, 0, ACTION_SNAPSHOT_END, 7, last))
    head = np.array(snap, LEVEL_UPDATE)
    body = np.zeros(updates, LEVEL_UPDATE)
    sym = rng.integers(0, symbols, updates)
    side = rng.integers(0, 2, updates)
    step = rng.integers(1, top + 1, updates)
    mid = 100.0 + 10 * sym
    body["symbol_id"] = sym + 1
    body["side"] = side
    body["price"] = np.round(np.where(side == SIDE_BID, mid - 0.01 * step, mid + 0.01 * step), 2)
    body["size"] = np.where(rng.random(updates) < 0.2, 0.0, np.round(rng.uniform(0.001, 10, updates), 4))
    body["action"] = ACTION_SET
    body["source"] = 7
    body["flags"] = last
    body["timestamp_ns"] = np.arange(1, updates + 1)
    return head, body


class BisectBook:
    """ccxt's way, in Python: per side a sorted list of keys (asks price, bids -price) and a dict."""

    def __init__(self):
        self.keys = ([], [])
        self.sizes = ({}, {})

    def set(self, side, price, size):
        key = -price if side == 0 else price
        keys, sizes = self.keys[side], self.sizes[side]
        if size == 0.0:
            if sizes.pop(key, None) is not None:
                del keys[bisect.bisect_left(keys, key)]
        else:
            if key not in sizes:
                bisect.insort(keys, key)
            sizes[key] = size


def bench_inprocess(args) -> dict:
    from shmpipe_services.orderbook._book import BookEngine

    import shmpipe
    from shmpipe.records import ORDERBOOK_ENTRY
    head, body = book_stream(args.symbols, args.updates)
    facts = lambda sid: (2, 4, 0)
    apply_only, with_entries, python_bisect = [], [], []
    name = f"obbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ring = shmpipe.Ring.create(name, ORDERBOOK_ENTRY, 1 << 12, broadcast=True)
    try:
        with ring.producer() as out:   # no consumer: entries are written and go nowhere (as a PUB socket)
            for _ in range(args.runs):
                engine = BookEngine(facts=facts)
                engine.apply(head)
                t0 = time.perf_counter_ns()
                engine.apply(body)
                apply_only.append((time.perf_counter_ns() - t0) / len(body))
                engine = BookEngine(None, out, facts=facts)
                engine.apply(head)
                t0 = time.perf_counter_ns()
                engine.apply(body)
                with_entries.append((time.perf_counter_ns() - t0) / len(body))
                assert engine.counters()["snapshots_written"] == len(body) + args.symbols
                books = {s + 1: BisectBook() for s in range(args.symbols)}
                for r in head.tolist():
                    if r[5] == 0:
                        books[r[3]].set(r[4], r[1], r[2])
                n = min(len(body), 200_000)
                rows = body[:n].tolist()
                t0 = time.perf_counter_ns()
                for _ts, price, size, sid, side, _a, _s, _f in rows:
                    books[sid].set(side, price, size)
                python_bisect.append((time.perf_counter_ns() - t0) / n)
    finally:
        ring.unlink()
        ring.close()
    # The same stream on arrays with the entry built but no ring, and on a tree (std::map) per side.
    built, tree_apply, tree_top = [], [], []
    tree = _tree_module()
    for _ in range(args.runs):
        engine = BookEngine(facts=facts)
        engine.build_without_ring = True
        engine.apply(head)
        t0 = time.perf_counter_ns()
        engine.apply(body)
        built.append((time.perf_counter_ns() - t0) / len(body))
        if tree is not None:
            stream = np.concatenate([head, body])
            tree_apply.append(tree.apply(stream, args.symbols, False)[0] * len(stream) / len(body))
            tree_top.append(tree.apply(stream, args.symbols, True)[0] * len(stream) / len(body))
    trees = ({"tree_apply_ns": _summary(tree_apply), "tree_apply_and_top50_ns": _summary(tree_top)}
             if tree is not None else {"tree": "not built (needs Cython and a C++ compiler)"})
    return {"updates": len(body), "symbols": args.symbols,
            "apply_ns": _summary(apply_only), "apply_and_entry_ns": _summary(with_entries),
            "apply_and_entry_built_no_ring_ns": _summary(built), **trees,
            "python_bisect_ns": _summary(python_bisect),
            "updates_per_s_per_core": round(1e9 / statistics.median(with_entries))}


# The comparison tree, as Cython source (a .pyx in the package would have to ship compiled).
TREE_SOURCE = '''# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False
"""The comparison the order book's structure rests on: the same book changes applied to a balanced
tree per side (C++ std::map<double, double>, a red-black tree), with the top 50 per side read best
first after each change, as the order book's entries need. Built on demand by orderbook_bench.py."""
from libcpp.map cimport map as cmap
from libcpp.vector cimport vector
from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport uint8_t, uint32_t, uint64_t
import numpy as np


cdef packed struct LevelUpdate:
    uint64_t timestamp_ns
    double price
    double size
    uint32_t symbol_id
    uint8_t side
    uint8_t action
    uint8_t source
    uint8_t flags


def apply(records, int symbols, bint read_top, int top=50):
    """Apply sets/deletes (action 0) to per-symbol trees; returns ns per record and a checksum of
    what was read (so the reads are not optimised away)."""
    cdef vector[cmap[double, double]] bids = vector[cmap[double, double]](symbols + 1)
    cdef vector[cmap[double, double]] asks = vector[cmap[double, double]](symbols + 1)
    cdef const unsigned char[::1] raw = np.ascontiguousarray(records).view(np.uint8)
    cdef const LevelUpdate *u = <const LevelUpdate *>&raw[0]
    cdef Py_ssize_t n = len(records), i, j
    cdef cmap[double, double] *m
    cdef cmap[double, double].iterator it
    cdef cmap[double, double].reverse_iterator rit
    cdef float buf[200]
    cdef double acc = 0
    import time
    t0 = time.perf_counter_ns()
    for i in range(n):
        if u[i].action != 0:
            continue
        m = &bids[u[i].symbol_id] if u[i].side == 0 else &asks[u[i].symbol_id]
        if u[i].size == 0.0:
            m.erase(u[i].price)
        else:
            deref(m)[u[i].price] = u[i].size
        if read_top:
            rit = bids[u[i].symbol_id].rbegin()
            j = 0
            while rit != bids[u[i].symbol_id].rend() and j < top:
                buf[2 * j] = <float>deref(rit).first
                buf[2 * j + 1] = <float>deref(rit).second
                inc(rit)
                j += 1
            it = asks[u[i].symbol_id].begin()
            j = 0
            while it != asks[u[i].symbol_id].end() and j < top:
                buf[100 + 2 * j] = <float>deref(it).first
                buf[101 + 2 * j] = <float>deref(it).second
                inc(it)
                j += 1
            acc += buf[0] + buf[100]
    return (time.perf_counter_ns() - t0) / n, acc
'''


def _tree_module():
    """TREE_SOURCE (std::map per side), built once into ~/.cache/shmpipe-bench."""
    import importlib
    from pathlib import Path
    cache = Path.home() / ".cache" / "shmpipe-bench" / "orderbook_tree"
    cache.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(cache))
    try:
        return importlib.import_module("orderbook_tree")
    except ImportError:
        pass
    (cache / "orderbook_tree.pyx").write_text(TREE_SOURCE)
    setup = ("from Cython.Build import cythonize\nfrom setuptools import setup\n"
             "setup(ext_modules=cythonize(['orderbook_tree.pyx'], quiet=True), "
             "script_args=['build_ext', '--inplace', '-q'])\n")
    built = subprocess.run([sys.executable, "-c", setup], cwd=cache, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        print(f"orderbook_bench: the std::map comparison did not build: {built.stderr[-500:]}", file=sys.stderr)
        return None
    importlib.invalidate_caches()
    return importlib.import_module("orderbook_tree")


def bench_checksum(args) -> dict:
    from shmpipe_services.capture.kraken_checksum import checksum_of_book
    from shmpipe_services.orderbook._book import BookEngine

    from shmpipe.records import ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, LEVEL_UPDATE
    rows = [(0, 0.0, 0.0, 1, 0, ACTION_SNAPSHOT_BEGIN, 5, 0)]
    bids = {round(67000.0 - 0.1 * k, 1): round(0.12345678 + k * 0.01, 8) for k in range(10)}
    asks = {round(67000.1 + 0.1 * k, 1): round(0.87654321 + k * 0.01, 8) for k in range(10)}
    rows += [(0, p, s, 1, 0, ACTION_SET, 5, 0) for p, s in bids.items()]
    rows += [(0, p, s, 1, 1, ACTION_SET, 5, 0) for p, s in asks.items()]
    rows.append((0, 0.0, 0.0, 1, 0, ACTION_SNAPSHOT_END, 5, 0))
    engine = BookEngine(facts=lambda sid: (1, 8, 10))
    engine.apply(np.array(rows, LEVEL_UPDATE))
    assert engine.checksum(1) == checksum_of_book(bids, asks, 1, 8)
    compiled, python = [], []
    n = 100_000
    for _ in range(args.runs):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            engine.checksum(1)
        compiled.append((time.perf_counter_ns() - t0) / n / 1000)
        t0 = time.perf_counter_ns()
        for _ in range(n // 20):
            checksum_of_book(bids, asks, 1, 8)
        python.append((time.perf_counter_ns() - t0) / (n // 20) / 1000)
    return {"compiled_us": _summary(compiled), "python_reference_us": _summary(python)}


# -- latency: producer -> shmpipe orderbook -> consumer --------------------------------------------
def _child(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def latency_producer(args) -> int:
    import shmpipe
    from shmpipe.records import LEVEL_UPDATE
    _pin(args.core)
    head, body = book_stream(args.symbols, args.count + args.warmup, seed=3)
    ring = shmpipe.Ring.open(args.levels, LEVEL_UPDATE)
    with ring.producer() as out:
        out.write_batch(head)
        interval = 1e9 / args.rate
        raw = body.copy()
        start = time.monotonic_ns() + 200_000_000
        for i in range(len(raw)):
            due = start + int(i * interval)
            ahead = due - time.monotonic_ns()
            if ahead > 200_000:            # sleep most of a long gap: a shared box needs the core back
                time.sleep((ahead - 100_000) / 1e9)
            while time.monotonic_ns() < due:
                pass
            rec = raw[i]
            rec["timestamp_ns"] = time.monotonic_ns()
            out.write(rec)
    ring.close()
    return 0


def latency_consumer(args) -> int:
    from hdrh.histogram import HdrHistogram

    import shmpipe
    from shmpipe.records import ORDERBOOK_ENTRY
    _pin(args.core)
    ring = shmpipe.Ring.open(args.books, ORDERBOOK_ENTRY)
    hist = HdrHistogram(1, 10_000_000_000, 3)
    seen = 0
    with ring.consumer() as inp:
        print("ready", flush=True)
        deadline = time.monotonic() + DEADLINE_S + args.count / args.rate
        while seen < args.count + args.warmup + args.symbols and time.monotonic() < deadline:
            batch = inp.read(256, timeout=0.1)
            now = time.monotonic_ns()
            for ts in batch["timestamp_ns"].tolist():
                seen += 1
                if ts > 0 and seen > args.symbols + args.warmup:
                    hist.record_value(max(1, now - ts))
    ring.close()
    print(json.dumps({"entries": seen, "p50_us": hist.get_value_at_percentile(50) / 1000,
                      "p99_us": hist.get_value_at_percentile(99) / 1000,
                      "p99.9_us": hist.get_value_at_percentile(99.9) / 1000,
                      "max_us": hist.get_max_value() / 1000, "count": hist.get_total_count()}), flush=True)
    return 0


def bench_latency(args) -> dict:
    import shmpipe
    from shmpipe.records import LEVEL_UPDATE, ORDERBOOK_ENTRY
    runs = []
    cores = sorted(os.sched_getaffinity(0))
    pins = [cores[i % len(cores)] for i in range(3)] if args.pin else [None] * 3
    for _ in range(args.runs):
        name = f"oblat-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        levels = shmpipe.Ring.create(name + "-l", LEVEL_UPDATE, 1 << 16, broadcast=True, wait=args.wait)
        books = shmpipe.Ring.create(name + "-b", ORDERBOOK_ENTRY, 1 << 12, broadcast=True, wait=args.wait)
        procs = []
        try:
            base = [sys.executable, "-m", "shmpipe_bench.orderbook_bench"]
            common = ["--symbols", str(args.symbols), "--count", str(args.count), "--warmup", str(args.warmup),
                      "--rate", str(args.rate)]
            cons = _child(base + ["_latency_consumer", "--books", name + "-b", *common]
                          + (["--core", str(pins[2])] if pins[2] is not None else []))
            procs.append(cons)
            assert cons.stdout.readline().strip() == "ready"
            book_cmd = ["taskset", "-c", str(pins[1])] if pins[1] is not None else []
            ob = _child(book_cmd + [sys.executable, "-m", "shmpipe_tools.cli", "orderbook", "--levels", name + "-l",
                                    "--books", name + "-b", "--json", "--name", name + "-ob"])
            procs.append(ob)
            deadline = time.monotonic() + DEADLINE_S
            while not any(c["alive"] for c in levels.stats()["consumers"]):
                assert ob.poll() is None and time.monotonic() < deadline, ob.stderr.read()
                time.sleep(0.01)
            prod = _child(base + ["_latency_producer", "--levels", name + "-l", *common]
                          + (["--core", str(pins[0])] if pins[0] is not None else []))
            procs.append(prod)
            assert prod.wait(timeout=DEADLINE_S + args.count / args.rate) == 0, prod.stderr.read()
            out, err = cons.communicate(timeout=DEADLINE_S)
            assert cons.returncode == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            ob_out, ob_err = ob.communicate(timeout=DEADLINE_S)
            assert ob.returncode == 0, ob_err
            result["orderbook"] = {k: v for k, v in json.loads(ob_out).items()
                                   if k in ("updates", "snapshots_written", "invalid_books")}
            runs.append(result)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for r in (levels, books):
                r.unlink()
                r.close()
    return {"wait": args.wait, "pinned": bool(args.pin), "rate": args.rate, "count": args.count,
            "p50_us": _summary([r["p50_us"] for r in runs]), "p99_us": _summary([r["p99_us"] for r in runs]),
            "p99.9_us": _summary([r["p99.9_us"] for r in runs]), "per_run": runs}


# -- the three stages --------------------------------------------------------------------------------
def pipeline_consumer(args) -> int:
    import shmpipe
    from shmpipe.records import ORDERBOOK_ENTRY
    ring = shmpipe.Ring.open(args.books, ORDERBOOK_ENTRY)
    last: dict[int, int] = {}
    total = 0
    error = None
    buf = np.zeros(4096, ORDERBOOK_ENTRY)
    with ring.consumer() as inp:
        print("ready", flush=True)
        idle_since = None
        while True:
            n = inp.read_into(buf, timeout=0.1)
            if n == 0:
                if not inp.producer_alive and total:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 1.0:
                        break
                continue
            idle_since = None
            got = buf[:n]
            total += n
            if error is None:
                for sid, seq in zip(got["symbol_id"].tolist(), got["sequence"].tolist()):
                    if seq != last.get(sid, 0) + 1:
                        error = f"symbol {sid}: sequence {seq} after {last.get(sid, 0)}"
                        break
                    last[sid] = seq
    ring.close()
    print(json.dumps({"entries": total, "symbols": len(last), "error": error}), flush=True)
    return 0


def run_pipeline(rate: float, seconds: float, symbols: int = 8, conflate_ms: float = 0.0) -> dict:
    """capture --feed synthetic -> orderbook -> a verifying consumer, as processes; the figures."""
    import shmpipe
    from shmpipe.records import LEVEL_UPDATE, ORDERBOOK_ENTRY, TICK
    name = f"obpipe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    rings = [shmpipe.Ring.create(name + "-t", TICK, 1 << 16, broadcast=True),
             shmpipe.Ring.create(name + "-l", LEVEL_UPDATE, 1 << 18, broadcast=True),
             shmpipe.Ring.create(name + "-b", ORDERBOOK_ENTRY, 1 << 14, broadcast=True)]
    procs = []
    try:
        cons = _child([sys.executable, "-m", "shmpipe_bench.orderbook_bench", "_pipeline_consumer",
                       "--books", name + "-b"])
        procs.append(cons)
        assert cons.stdout.readline().strip() == "ready", cons.stderr.read()
        ob = _child([sys.executable, "-m", "shmpipe_tools.cli", "orderbook", "--levels", name + "-l",
                     "--books", name + "-b", "--json", "--name", name + "-ob", "--conflate-ms", str(conflate_ms)])
        procs.append(ob)
        deadline = time.monotonic() + DEADLINE_S
        while not any(c["alive"] for c in rings[1].stats()["consumers"]):
            assert ob.poll() is None and time.monotonic() < deadline, ob.stderr.read()
            time.sleep(0.01)
        t0 = time.monotonic()
        cap = _child([sys.executable, "-m", "shmpipe_tools.cli", "capture", "--feed", "synthetic",
                      "--ticks", name + "-t", "--levels", name + "-l", "--symbols", str(symbols),
                      "--rate", str(rate), "--seconds", str(seconds), "--json", "--name", name + "-cap"])
        procs.append(cap)
        cap_out, cap_err = cap.communicate(timeout=seconds + DEADLINE_S)
        assert cap.returncode == 0, cap_err
        ob_out, ob_err = ob.communicate(timeout=DEADLINE_S)
        elapsed = time.monotonic() - t0
        assert ob.returncode == 0, ob_err
        cons_out, cons_err = cons.communicate(timeout=DEADLINE_S)
        assert cons.returncode == 0, cons_err
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for r in rings:
            r.unlink()
            r.close()
    capture, book, consumer = json.loads(cap_out), json.loads(ob_out), json.loads(cons_out.strip().splitlines()[-1])
    lost_levels = capture["levels_written"] - book["records"]
    lost_entries = book["snapshots_written"] - consumer["entries"]
    return {"rate_events_per_s": rate, "seconds": seconds, "symbols": symbols, "conflate_ms": conflate_ms,
            "levels_written": capture["levels_written"], "orderbook_records": book["records"],
            "updates": book["updates"], "entries_written": book["snapshots_written"],
            "entries_verified": consumer["entries"], "sequence_error": consumer["error"],
            "lost_levels": lost_levels, "lost_entries": lost_entries,
            "invalid_books": book["invalid_books"], "crossed": book["crossed"],
            "resnapshot_requests": book["resnapshot_requests"], "resnapshots": book["resnapshots"],
            "resnapshot_failures": book["resnapshot_failures"], "repaired": book["repaired"],
            "records_per_s": round(book["records"] / seconds), "elapsed_s": round(elapsed, 2),
            "ok": lost_levels == 0 and lost_entries == 0 and consumer["error"] is None}


def bench_pipeline(args) -> dict:
    return run_pipeline(args.rate, args.seconds, args.symbols, args.conflate_ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orderbook_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["inprocess", "checksum", "latency", "pipeline", "all",
                                    "_latency_producer", "_latency_consumer", "_pipeline_consumer"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--updates", type=int, default=1_000_000, help="inprocess: updates per run")
    p.add_argument("--rate", type=float, default=None, help="latency: updates/s (default 20000); "
                                                            "pipeline: synthetic events/s (default 200000)")
    p.add_argument("--count", type=int, default=100_000, help="latency: measured updates per run")
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--wait", choices=["spin", "yield", "block"], default="block")
    p.add_argument("--pin", action="store_true", help="latency: pin the 3 processes to distinct cores")
    p.add_argument("--seconds", type=float, default=60.0, help="pipeline: seconds of capture")
    p.add_argument("--conflate-ms", type=float, default=0.0)
    p.add_argument("--levels"), p.add_argument("--books"), p.add_argument("--core", type=int)
    p.add_argument("--json", metavar="PATH", help="write the figures here too")
    args = p.parse_args(argv)
    if args.what == "_latency_producer":
        return latency_producer(args)
    if args.what == "_latency_consumer":
        return latency_consumer(args)
    if args.what == "_pipeline_consumer":
        return pipeline_consumer(args)
    result = {"machine": _machine(), "when_unix": int(time.time())}
    todo = ["inprocess", "checksum", "latency", "pipeline"] if args.what == "all" else [args.what]
    ok = True
    for what in todo:
        if what == "latency":
            args.rate = args.rate or 20_000.0
        if what == "pipeline":
            args.rate = args.rate if args.what == "pipeline" and args.rate else 200_000.0
        try:
            result[what] = {"inprocess": bench_inprocess, "checksum": bench_checksum,
                            "latency": bench_latency, "pipeline": bench_pipeline}[what](args)
            if what == "pipeline" and not result[what]["ok"]:
                ok = False
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            result[what] = {"error": str(exc)[-2000:]}
            ok = False
        print(json.dumps({what: result[what]}, indent=1), flush=True)
    result["machine"]["loadavg_1m_after"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
