"""The fetcher's memory of what the sync service already holds, keyed by asset id.

It turns each fresh listing into a delta (only new, changed or removed assets) and advances only
when the service acknowledges the delta, so a delta that was lost in transit is sent again.
Until the first acknowledgement the map is empty and the fetcher sends the whole listing as a
*full* delta; the service then works out removals against its own (database-backed) cache. That
is what makes a one-shot ``shmpipe assets sync`` correct with a cold fetcher.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shmpipe.asset_codec import ASSET_FLAG_REMOVED

from .canonical import canonical_json
from .delta_wire import AssetDelta
from .listing import to_records


class SourceMap:
    def __init__(self) -> None:
        # id -> (canonical JSON, object); None until the service has acknowledged a full listing.
        self._known: dict[str, tuple[str, dict[str, Any]]] | None = None

    @property
    def primed(self) -> bool:
        return self._known is not None

    def delta(
        self,
        docs: Sequence[Mapping[str, Any]],
        *,
        complete: bool,
        scope: Mapping[str, str] | None = None,
        updated_ns: int | None = None,
        held: Sequence[str] = (),
        fetched: int | None = None,
    ) -> AssetDelta:
        """The delta from what the service holds to ``docs`` (already validated).

        ``complete``: ``docs`` is the whole listing for ``scope`` (no status filter), so an id
        missing from it was removed. With a status filter an asset going inactive would just drop
        out of the list, so filtered fetches never produce removals. ``held``: ids the listing
        carried but that failed validation; they are neither changed nor removed. ``fetched``:
        the listing's length, rejected assets included (default: ``len(docs)``).
        """
        now = time.time_ns() if updated_ns is None else updated_ns
        scope = dict(scope or {})
        fetched = len(docs) if fetched is None else fetched
        if self._known is None:
            return AssetDelta(
                to_records(docs, updated_ns=now),
                list(docs),
                full=complete,
                scope=scope,
                fetched=fetched,
                held=list(held),
            )
        upserts = [
            d for d in docs if (known := self._known.get(d["id"])) is None or known[0] != canonical_json(d)
        ]
        removed: list[dict[str, Any]] = []
        if complete:
            listed = {d["id"] for d in docs} | set(held)
            removed = [doc for asset_id, (_, doc) in self._known.items() if asset_id not in listed]
        records = to_records([*upserts, *removed], updated_ns=now)
        if removed:
            records["flags"][len(upserts) :] |= np.uint8(ASSET_FLAG_REMOVED)
        return AssetDelta(
            records,
            [*upserts, *([None] * len(removed))],
            full=False,
            scope=scope,
            fetched=fetched,
            held=list(held),
        )

    def commit(self, delta: AssetDelta) -> None:
        """The service acknowledged ``delta``: make it part of what we believe it holds."""
        if self._known is None:
            self._known = {}
        if delta.full:
            self._known.clear()
        for record, doc in zip(delta.records, delta.docs):
            asset_id = delta.id_of(record)
            if doc is None:
                self._known.pop(asset_id, None)
            else:
                self._known[asset_id] = (canonical_json(doc), dict(doc))
