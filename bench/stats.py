"""HDR histograms (hdrhistogram package) and the median/spread of per-run figures."""
from __future__ import annotations

import statistics
from typing import Any, Iterable, Sequence

LOWEST_NS, HIGHEST_NS, SIGNIFICANT = 1, 3_600_000_000_000, 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}


def _new():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT)


def encode_latencies(values_ns: Sequence[int]) -> str:
    """Fold nanosecond latencies into an HDR histogram; return its compressed encoding."""
    import numpy as np

    h = _new()
    arr = np.frombuffer(values_ns, dtype=np.int64) if hasattr(values_ns, "tobytes") else np.asarray(values_ns)
    arr = np.clip(arr, LOWEST_NS, HIGHEST_NS)
    uniq, counts = np.unique(arr, return_counts=True)
    for v, c in zip(uniq.tolist(), counts.tolist()):
        h.record_value(v, c)
    return h.encode().decode("ascii")


def decode(encoded: str):
    from hdrh.histogram import HdrHistogram

    return HdrHistogram.decode(encoded.encode("ascii"))


def merge(encoded: Iterable[str]):
    h = _new()
    for e in encoded:
        h.add(decode(e))
    return h


def summary_us(h) -> dict[str, float]:
    out = {f"{k}_us": h.get_value_at_percentile(v) / 1000.0 for k, v in PERCENTILES.items()}
    out["max_us"] = h.get_max_value() / 1000.0
    out["count"] = h.get_total_count()
    return out


def from_ns(d: dict[str, Any]) -> dict[str, float]:
    """The C floor prints ns figures; the same keys in µs."""
    out = {f"{k}_us": d[f"{k}_ns"] / 1000.0 for k in PERCENTILES}
    out["max_us"] = d["max_ns"] / 1000.0
    return out


def median_spread(values: list[float | None]) -> tuple[float | None, list[float] | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.median(vals), [min(vals), max(vals)]
