"""Rows exported per second, per ``shmpipe export`` target, on the bundled captures.

    python bench/export_bench.py                  # 3 runs per target, the table
    python bench/export_bench.py --runs 1 --quick # only capture_sample.wslog (CI smoke)
    python bench/export_bench.py --json out.json

Datasets: ``sample`` = ``tests/fixtures/capture/capture_sample.wslog`` (the first 10 s of Coinbase,
Kraken and Alpaca, 1,695 frames); unless ``--quick``, ``fixtures`` = the full Coinbase (5,318 frames)
and Kraken (2,771 frames) fixtures written as two .wslog captures, and ``kraken-x10`` = the Kraken
fixture played ten times in a row on one connection each (27,710 frames: a larger input, so fixed
costs weigh less). One figure = the whole ``run_export`` call (replay through the parsers,
conversion, writing, the rename into place), wall clock; rows = every row or event the target
wrote (the summary's counts). Each figure is the median over ``--runs``, with min and max. The
first run of a target also pays for importing its library.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "capture"
T0 = 1718116200_000_000_000
TARGETS = ("parquet", "hftbacktest", "nautilus")


def _fixture_wslog(folder: Path, name: str, exchange_id: int, repeat: int = 1) -> Path:
    """The fixture's frames as a capture, 10 ms apart, ``repeat`` times (a reconnect before each)."""
    from shmpipe.wslog import encode_entry
    from shmpipe.wslog.format import marker_payload
    path = folder / f"{name.split('.')[0]}-x{repeat}.wslog"
    lines = (FIXTURES / name).read_bytes().splitlines()
    ns = T0
    with open(path, "wb") as f:
        for _ in range(repeat):
            f.write(encode_entry(ns, 0, marker_payload(exchange_id, "connect", "ws://fixture")))
            for line in lines:
                ns += 10_000_000
                f.write(encode_entry(ns, exchange_id, line))
    return path


def datasets(folder: Path, quick: bool) -> dict[str, list[Path]]:
    out = {"sample": [FIXTURES / "capture_sample.wslog"]}
    if not quick:
        out["fixtures"] = [_fixture_wslog(folder, "coinbase_advanced.jsonl", 1),
                           _fixture_wslog(folder, "kraken_v2.jsonl", 2)]
        out["kraken-x10"] = [_fixture_wslog(folder, "kraken_v2.jsonl", 2, repeat=10)]
    return out


def measure(target: str, dataset: str, paths: list[Path], folder: Path, runs: int) -> dict:
    from shmpipe_services.export.exporter import ExportError, run_export
    figures, summary = [], None
    for run in range(runs):
        out = folder / f"{target}-{dataset}-{run}"
        start = time.perf_counter()
        try:
            summary = run_export(target, [str(p) for p in paths], out, progress=False)
        except ExportError as exc:
            return {"target": target, "dataset": dataset, "skipped": str(exc)}
        seconds = time.perf_counter() - start
        rows = sum(summary["rows"].values())
        figures.append((rows / seconds, summary["messages"] / seconds, seconds))
    per_s = [f[0] for f in figures]
    return {"target": target, "dataset": dataset, "skipped": None, "rows": sum(summary["rows"].values()),
            "rows_by_table": summary["rows"],
            "messages": summary["messages"], "rows_per_s": statistics.median(per_s),
            "rows_per_s_spread": [min(per_s), max(per_s)],
            "messages_per_s": statistics.median(f[1] for f in figures),
            "seconds": statistics.median(f[2] for f in figures), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="capture_sample.wslog only")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    results = []
    with tempfile.TemporaryDirectory(prefix="shmpipe-export-bench-") as tmp:
        folder = Path(tmp)
        sets = datasets(folder, args.quick)
        for dataset, paths in sets.items():
            for target in args.targets.split(","):
                results.append(measure(target, dataset, paths, folder, args.runs))
    machine = {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0], "python": sys.version.split()[0]}
    print(f"{'dataset':<11} {'target':<12} {'rows':>9} {'rows/s':>11} {'(min..max)':>21} {'frames/s':>10} "
          f"{'s/run':>7}")
    for r in results:
        if r["skipped"]:
            print(f"{r['dataset']:<11} {r['target']:<12} skipped: {r['skipped']}")
            continue
        lo, hi = r["rows_per_s_spread"]
        spread = f"({lo:,.0f}..{hi:,.0f})"
        print(f"{r['dataset']:<11} {r['target']:<12} {r['rows']:>9,} {r['rows_per_s']:>11,.0f} {spread:>21} "
              f"{r['messages_per_s']:>10,.0f} {r['seconds']:>7.2f}")
    print(f"datasets: {', '.join(sets)}; {args.runs} run(s) each; load {machine['load_1m']:.2f} "
          f"on {machine['cpus']} cpus")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")
    return 1 if any(r["skipped"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
