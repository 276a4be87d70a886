"""Terminal table, JSON file and PNG plot of a bench result."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LAT_SCENARIOS = ("pingpong", "open-loop-100k", "open-loop-1m")


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "rate":
        for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if v >= div:
                return f"{v / div:.2f}{suf}"
        return f"{v:.0f}"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _spread(row: dict, key: str) -> str:
    sp = (row.get("spread") or {}).get(key)
    if not sp:
        return "-"
    unit = "rate" if key == "msgs_per_s" else ""
    return f"{_fmt(sp[0], unit)}..{_fmt(sp[1], unit)}"


def _unmeasured(row: dict) -> str:
    """What a row with no successful run says: its failure, or that the run was cut short."""
    return f"FAILED: {row['error']}" if row.get("error") else "not measured (the bench was interrupted)"


def table(result: dict) -> str:
    """Side-by-side table, one block per scenario."""
    lines: list[str] = []
    rows = result["results"]
    scenarios: list[str] = []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    head = (f"{'transport':<14} {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'max us':>9} "
            f"{'msgs/s':>8} {'runs':>4}  {'spread (min..max of runs)':<28} note")
    for sc in scenarios:
        lines.append(f"== {sc} ==")
        lines.append(head)
        for r in (x for x in rows if x["scenario"] == sc):
            if r.get("skipped"):
                lines.append(f"{r['transport']:<14} {'skipped: ' + r['skipped']}")
                continue
            if not r["runs"]:
                lines.append(f"{r['transport']:<14} {_unmeasured(r)}")
                continue
            is_lat = r.get("p50_us") is not None
            spread = (f"p50 {_spread(r, 'p50_us')}" if is_lat else f"{_spread(r, 'msgs_per_s')}")
            note = []
            if r.get("ratio_to_floor_p50"):
                note.append(f"{r['ratio_to_floor_p50']:.1f}x floor")
            if r.get("ratio_to_floor"):
                note.append(f"{100 * r['ratio_to_floor']:.0f}% of the C ring")
            if r.get("error"):
                note.append(f"errors: {r['error'][:60]}")
            lines.append(
                f"{r['transport']:<14} {_fmt(r.get('p50_us')):>9} {_fmt(r.get('p99_us')):>9} "
                f"{_fmt(r.get('p999_us')):>9} {_fmt(r.get('max_us')):>9} "
                f"{_fmt(r.get('msgs_per_s'), 'rate'):>8} {r['runs']:>4}  {spread:<28} {' '.join(note)}")
        lines.append("")
    memcpy = result.get("machine", {}).get("memcpy") or {}
    if memcpy.get("gb_per_s"):
        lines.append(f"memcpy on one core: {memcpy['gb_per_s']:.1f} GB/s (best of {memcpy['repeats']} copies of "
                     f"{memcpy['bytes'] >> 20} MiB): the ceiling of every batched row")
        lines.append("")
    if result.get("comparisons"):
        lines.append("== shmpipe vs peers (peer figure / shmpipe figure; >1 means shmpipe is better) ==")
        for c in result["comparisons"]:
            lines.append(f"{c['peer']:<14} {c['scenario']:<20} {c['metric']:<10} {c['ratio']:.2f}x")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The same figures as a Markdown table (for bench/README.md)."""
    out = ["| scenario | transport | p50 µs | p99 µs | p99.9 µs | max µs | msgs/s | runs | spread |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        if r.get("skipped"):
            out.append(f"| {r['scenario']} | {r['transport']} | skipped: {r['skipped']} | | | | | | |")
            continue
        if not r["runs"]:
            out.append(f"| {r['scenario']} | {r['transport']} | {_unmeasured(r)} | | | | | | |")
            continue
        is_lat = r.get("p50_us") is not None
        spread = f"p50 {_spread(r, 'p50_us')}" if is_lat else _spread(r, "msgs_per_s")
        out.append(f"| {r['scenario']} | {r['transport']} | {_fmt(r.get('p50_us'))} | {_fmt(r.get('p99_us'))} | "
                   f"{_fmt(r.get('p999_us'))} | {_fmt(r.get('max_us'))} | {_fmt(r.get('msgs_per_s'), 'rate')} | "
                   f"{r['runs']} | {spread} |")
    return "\n".join(out)


def write_json(result: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def plot(result: dict, path: str | os.PathLike) -> str | None:
    """Latency percentiles per transport (one panel per latency scenario) and the batch sweep.
    Returns None on success, else why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib not installed ({exc})"
    rows = [r for r in result["results"] if not r.get("skipped")]
    keys = [("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9"),
            ("p9999_us", "p99.99"), ("max_us", "max")]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))
    for ax, sc in zip(axes, LAT_SCENARIOS):
        for r in (x for x in rows if x["scenario"] == sc and x.get("p50_us") is not None):
            ys = [r.get(k) for k, _ in keys]
            ax.plot([lbl for _, lbl in keys], ys, marker="o", label=r["transport"])
        ax.set_yscale("log")
        ax.set_title(f"{sc}: latency percentiles (median of runs)")
        ax.set_ylabel("µs (log)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax = axes[3]
    by_t: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["scenario"].startswith("throughput-batch-") and r.get("msgs_per_s"):
            by_t.setdefault(r["transport"], []).append((int(r["scenario"].rsplit("-", 1)[1]), r["msgs_per_s"]))
    for tname, pts in by_t.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tname)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title("throughput vs batch size (records/s)")
    ax.set_xlabel("records per call")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"shmpipe bench {m.get('date')}  {m.get('cpu_model')}  cores {m.get('cores_used')}  "
                 f"pinned={m.get('pinning_granted')}  quick={result.get('config', {}).get('quick')}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def markdown_summary(result: dict) -> str:
    """One line per transport, the headline figures only (medians of runs; µs and records/s)."""
    by = {(r["transport"], r["scenario"]): r for r in result["results"]}
    transports = list(dict.fromkeys(r["transport"] for r in result["results"]))
    cols = [("pingpong", "p50_us", "ping-pong p50"), ("pingpong", "p99_us", "ping-pong p99"),
            ("open-loop-100k", "p50_us", "100k/s p50"), ("open-loop-100k", "p99_us", "100k/s p99"),
            ("open-loop-1m", "p50_us", "1M/s p50"), ("open-loop-1m", "p99_us", "1M/s p99"),
            ("throughput-single", "msgs_per_s", "single rec/s"),
            ("throughput-batch-64", "msgs_per_s", "batch-64 rec/s"),
            ("throughput-batch-4096", "msgs_per_s", "batch-4096 rec/s"),
            ("broadcast-2", "p50_us", "bcast-2 p50")]
    out = ["| transport | " + " | ".join(c[2] for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for t in transports:
        cells = []
        for sc, key, _ in cols:
            r = by.get((t, sc))
            if r is None or r.get("skipped"):
                cells.append("skip")
            elif not r["runs"]:
                cells.append("FAILED" if r.get("error") else "-")
            else:
                cells.append(_fmt(r.get(key), "rate" if key == "msgs_per_s" else ""))
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out)
