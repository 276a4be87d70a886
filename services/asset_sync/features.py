"""Features a subscriber derives from its asset cache, vectorised over the record array.

Removed assets (ASSET_FLAG_REMOVED) are counted but left out of every other statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shmpipe.asset_codec import ASSET_FLAG_REMOVED, STATUS_CODES
from shmpipe.records import (
    ASSET_FLAG_EASY_TO_BORROW,
    ASSET_FLAG_FRACTIONABLE,
    ASSET_FLAG_MARGINABLE,
    ASSET_FLAG_SHORTABLE,
    ASSET_FLAG_TRADABLE,
)

_RATIO_FLAGS = {
    "tradable": ASSET_FLAG_TRADABLE,
    "marginable": ASSET_FLAG_MARGINABLE,
    "shortable": ASSET_FLAG_SHORTABLE,
    "easy_to_borrow": ASSET_FLAG_EASY_TO_BORROW,
    "fractionable": ASSET_FLAG_FRACTIONABLE,
}
_MARGINS = ("maintenance_margin_requirement", "margin_requirement_long", "margin_requirement_short")


def _counts(column: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(column, return_counts=True)
    return {v.decode("utf-8", "replace"): int(c) for v, c in zip(values, counts)}


def compute_features(records: np.ndarray) -> dict[str, Any]:
    removed = (records["flags"] & ASSET_FLAG_REMOVED) != 0
    listed = records[~removed]
    n = len(listed)
    status_names = {code: name for name, code in STATUS_CODES.items()}
    statuses, status_counts = np.unique(listed["status"], return_counts=True)
    features: dict[str, Any] = {
        "assets": n,
        "removed": int(removed.sum()),
        "by_exchange": _counts(listed["exchange"]),
        "by_class": _counts(listed["asset_class"]),
        "by_status": {status_names.get(int(s), str(int(s))): int(c) for s, c in zip(statuses, status_counts)},
        "ratios": {
            name: (float(((listed["flags"] & bit) != 0).mean()) if n else None)
            for name, bit in _RATIO_FLAGS.items()
        },
        "margin": {},
    }
    for field in _MARGINS:
        values = listed[field].astype(np.float64)
        values = values[np.isfinite(values)]
        features["margin"][field] = (
            {
                "count": int(len(values)),
                "mean": float(values.mean()),
                "std": float(values.std()),
                "min": float(values.min()),
                "median": float(np.median(values)),
                "max": float(values.max()),
            }
            if len(values)
            else {"count": 0}
        )
    return features
