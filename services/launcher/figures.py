"""Per-stage figures of a running pipeline, for the demo's live view and summary: what each
process publishes to ``shmpipe.stats`` under its name (falling back to its control endpoint's
``stats``), and each ring's counters.

Every stage reduces to ``records`` (how many it moved), ``lost`` (how many it lost) and, where it
measures latency, ``p50_us`` / ``p99_us``. Known stages have their own rule; any other process is
read generically (a ``records`` counter, else the sum of its ``*_written`` counters; ``lost``;
``latency_p50_us`` / ``latency_p99_us``), so a new stage in the pipeline file shows up without
code here.
"""

from __future__ import annotations

from typing import Any


def read_counters(name: str, *, use_control: bool = True) -> dict[str, int] | None:
    """The live counters a process publishes, or None."""
    from shmpipe import stats

    try:
        got = stats.read(name)
        return dict(got["counters"])
    except (FileNotFoundError, stats.StatsFormatError):
        pass
    except Exception:  # noqa: BLE001 - a segment half made or going away: no figures this round
        return None
    if not use_control:
        return None
    try:
        from shmpipe import control

        result = control.request(name, "stats", timeout=0.3)
    except Exception:  # noqa: BLE001 - no pyzmq, no endpoint, no answer
        return None
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _latency(out: dict, counters: dict, p50: str, p99: str) -> None:
    if counters.get(p50) or counters.get(p99):
        out["p50_us"], out["p99_us"] = counters[p50], counters[p99]


def stage_figures(name: str, counters: dict[str, Any] | None) -> dict[str, Any]:
    c = counters or {}
    if "ticks_written" in c and "levels_written" in c:  # capture
        out = {
            "records": c["ticks_written"] + c["levels_written"],
            "lost": 0,
            "ticks": c["ticks_written"],
            "levels": c["levels_written"],
            "feed_gaps": c.get("gaps", 0),
            "parse_errors": c.get("parse_errors", 0),
            "ring_full_waits": c.get("ring_full_waits", 0),
        }
        _latency(out, c, "latency_p50_us", "latency_p99_us")
        return out
    if "disorder" in c and "records" in c:  # verify
        out = {
            "records": c["records"],
            "lost": c.get("lost", 0),
            "disorder": c["disorder"],
            "restarts_seen": c.get("restarts_seen", 0),
            "evictions": c.get("evictions", 0),
        }
        _latency(out, c, "latency_p50_us", "latency_p99_us")
        if c.get("event_to_read_p50_us") or c.get("event_to_read_p99_us"):
            out["event_to_read_p50_us"] = c["event_to_read_p50_us"]
            out["event_to_read_p99_us"] = c["event_to_read_p99_us"]
        return out
    records = c.get("records")
    if records is None and "consumed" in c:   # the ring consumers (bars, features): records read
        records = c["consumed"]
    if records is None:
        written = [v for k, v in c.items() if k.endswith(("_written", "_published"))]
        records = sum(written) if written else 0
    out = {"records": records, "lost": c.get("lost", 0)}
    if "published" in c:  # signals sent on the bus (bars, features)
        out["published"] = c["published"]
    if "checksums_verified" in c:   # the order book: what it judged and wrote
        out.update({"entries_published": c.get("snapshots_written", 0),
                    "checksums_verified": c["checksums_verified"],
                    "checksums_failed": c.get("checksum_failures", 0),
                    "resnapshots": c.get("resnapshots", 0), "invalid_books": c.get("invalid_books", 0),
                    "crossed": c.get("crossed", 0), "gaps": c.get("gaps", 0)})
    if "trades" in c and "late" in c:   # bars: trades taken, late ones per timeframe, bars sent
        out.update({k: v for k, v in c.items() if k in ("trades", "late", "bars") or k.startswith("late_")})
    if "skipped_invalid" in c:   # features: books turned into features, invalid ones skipped
        out.update({"books": c.get("books", 0), "skipped_invalid": c["skipped_invalid"]})
    _latency(out, c, "latency_p50_us", "latency_p99_us")
    return out
