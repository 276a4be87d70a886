"""What "the same asset" means to the sync: one text per value, equal exactly when the database
would call the two values equal.

PostgreSQL keeps each asset as jsonb, which stores numbers as ``numeric``: ``1e16`` comes back as
``10000000000000000``, ``30.0`` equals ``30``, ``-0.0`` is ``0``. A diff that compared Python's
text of the fetched JSON with the text read back would see a change in such a value every cycle
(and publish it) although the upsert writes nothing. So numbers are put in one form before they
are compared or stored: a number that is an integer by value is a Python ``int`` (``1e16`` ->
``10000000000000000``, ``30.0`` -> ``30``), any other stays a ``float`` (its shortest repr). The
listing's validation does this to every asset it accepts, and ``loads`` to every JSON text read
back from a database (rows an older version wrote may hold ``30.0``). Both databases then store
the same text, and equal values have equal text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import partial
from typing import Any


def canonical_number(value: float) -> int | float:
    """``value`` in the one form the sync compares and stores (see the module docstring)."""
    if value.is_integer():
        # Decimal(repr()) keeps the decimal value the text meant: 1.5e300 -> 15 and 299 zeros,
        # as numeric stores it, not the binary float's exact integer.
        return int(Decimal(repr(value)))
    return value


def _number_from_text(text: str) -> int | float:
    return canonical_number(float(text))


# json.loads for JSON the sync wrote itself (database rows): numbers in canonical form.
loads = partial(json.loads, parse_float=_number_from_text)


def canonical_json(doc: Mapping[str, Any]) -> str:
    """One text per asset value, independent of key order: what the diff compares and what both
    databases store. ``doc`` must be in canonical form (validated, or read with ``loads``)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ or that exist on one side only (the issue's diff rule).

    Values are compared as canonical JSON text: ``true`` and ``1`` differ (in Python True == 1),
    ``30`` and ``30.0`` do not (canonical form makes both ``30``, as jsonb compares them)."""
    keys: Iterable[str] = sorted(set(old) | set(new))
    return [
        k
        for k in keys
        if k not in old
        or k not in new
        or json.dumps(old[k], sort_keys=True) != json.dumps(new[k], sort_keys=True)
    ]
