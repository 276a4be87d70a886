"""One text per asset value, and the per-field diff: what "changed" means to the sync.

Both compare the JSON as JSON, not as Python: in Python ``True == 1``, in JSON they differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def canonical_json(doc: Mapping[str, Any]) -> str:
    """One text per asset value, independent of key order: what the diff compares."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ or that exist on one side only (the issue's diff rule)."""
    keys: Iterable[str] = sorted(set(old) | set(new))
    # Compare as JSON text: in Python True == 1 and 30 == 30.0, in JSON they are different values.
    return [
        k
        for k in keys
        if k not in old
        or k not in new
        or json.dumps(old[k], sort_keys=True) != json.dumps(new[k], sort_keys=True)
    ]
