"""The sync service: canonical cache, batched writes with retry, a transactional outbox.

Rules that keep "nothing lost":
* The cache is warm-started from the database and is the service's belief of what is committed.
* A batch advances the cache only after its transaction committed. A failed batch is retried on
  a fresh connection (same rows; the upsert's WHERE makes it idempotent).
* The transaction that writes a changed row also marks it publish-pending (the outbox: the
  ``publish_pending`` column, see store.py), so no change can be committed without its mark.
* Rows committed in a cycle are published as one AoS message at the end of the cycle (also when
  a later batch finally fails), and only after that publish succeeded are their marks cleared,
  in a small transaction of their own, matched by (id, updated_at).
* A cycle the mass-removal guard refuses (removal_guard.py) stops before anything else: it
  neither writes nor publishes, not even what earlier cycles left pending.
* Whatever is still marked (the process died, or the publish or the clearing failed, after the
  commit) is published first, as one AoS message on the same topic and in the same format
  (removed assets flagged), when the service starts and at the start of every cycle, and then
  unmarked. A cycle whose pending publish fails stops there, before writing anything new.

Delivery is therefore at-least-once, not exactly-once: a crash (or a failed clearing) after the
publish but before the marks were cleared publishes those assets again. Subscribers must apply
messages idempotently; ``AssetSubscriber`` does, its cache is keyed by asset id and a repeated
record just overwrites the same entry with the same content. A republished record carries the
row's current content, and its ``updated_ns`` is when that row was committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import numpy as np

from shmpipe.asset_codec import ASSET_FLAG_REMOVED, AssetFormatError
from shmpipe.records import ASSET

from .canonical import canonical_json, changed_fields
from .delta_wire import AssetDelta
from .listing import to_records
from .reconnect import ReconnectPolicy, with_reconnect
from .removal_guard import RemovalGuard
from .store import AssetRow, AssetStore, PendingAsset, StoredAsset

DEFAULT_BATCH_SIZE = 500
# bench/asset_upsert_bench.py (2-core box, local PostgreSQL 15, batch 500): upsert and COPY+merge
# are within ~10 % of each other (~30k rows/s; Python row preparation dominates) and the winner
# changed between runs. upsert stays the default: one round trip per batch instead of three,
# which is what counts once the database is across a network. SQLite only has upsert.
DEFAULT_WRITE_METHOD = "upsert"

T = TypeVar("T")


class Publisher(Protocol):
    def publish(self, records: np.ndarray) -> int: ...


class SyncError(RuntimeError):
    """A cycle stopped part-way; ``result`` counts what was committed (and published) before.
    Whatever was committed but not published stays marked and goes out at the next cycle."""

    def __init__(self, message: str, result: SyncResult):
        super().__init__(message)
        self.result = result


@dataclass
class SyncResult:
    fetched: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    written: int = 0
    published: int = 0
    seconds: float = 0.0
    # Assets committed earlier but left unpublished (crash, failed publish), published at the
    # start of this cycle. Not counted in ``published``, which is this cycle's own changes.
    republished: int = 0
    # id -> top-level fields that differ, for changed assets (not part of the one-line summary).
    changed_fields: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The one-line summary (``shmpipe assets sync --json``). Its shape is fixed, outside
        checks read it; ``republished`` is added only to a cycle that did republish something."""
        out = {
            "fetched": self.fetched,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "written": self.written,
            "published": self.published,
            "seconds": round(self.seconds, 6),
        }
        if self.republished:
            out["republished"] = self.republished
        return out


@dataclass(frozen=True)
class _Change:
    id: str
    doc: dict[str, Any]
    kind: str  # "added" | "changed" | "removed"
    record: np.void | None  # the fetcher's record for added/changed


class SyncService:
    def __init__(
        self,
        store: AssetStore,
        publisher: Publisher | None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        write_method: str | None = None,
        retry: ReconnectPolicy | None = None,
        clock: Callable[[], int] = time.time_ns,
        removal_guard: RemovalGuard | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.publisher = publisher
        self.batch_size = batch_size
        self.write_method = write_method or (
            DEFAULT_WRITE_METHOD if DEFAULT_WRITE_METHOD in store.write_methods else store.write_methods[0]
        )
        if self.write_method not in store.write_methods:
            raise ValueError(
                f"this database supports write methods {store.write_methods}, not {self.write_method!r}"
            )
        self.retry = retry or ReconnectPolicy()
        self.clock = clock
        self.removal_guard = removal_guard or RemovalGuard()
        self.cache: dict[str, StoredAsset] = {}
        self._lock = asyncio.Lock()  # one delta at a time: the cache is the sequence point

    async def start(self, *, publish_pending: bool = True) -> int:
        """Open the store (creating or upgrading its tables), warm the cache, then publish what
        an earlier run committed but did not publish; returns how many assets that was.
        ``publish_pending=False`` leaves that to the first cycle or to publish_pending(), for a
        caller that must first wait for subscribers. A failed publish raises SyncError with the
        service started (usable, and to be closed); the assets stay pending."""
        await self.store.open()
        await self.store.ensure_schema()
        self.cache = await self.store.load_all()
        return await self.publish_pending() if publish_pending else 0

    async def close(self) -> None:
        await self.store.close()

    async def publish_pending(self) -> int:
        """Publish (one message) and unmark every asset still marked publish-pending."""
        async with self._lock:
            result = SyncResult()
            await self._flush_pending(result)
            return result.republished

    async def apply(self, delta: AssetDelta) -> SyncResult:
        async with self._lock:
            started = time.perf_counter()
            result = SyncResult(fetched=delta.fetched)
            try:
                changes = self._diff(delta, result)
                self._check_removals(changes, delta)  # refused: nothing written, nothing published
                await self._flush_pending(result)  # earlier changes go out before newer ones
                await self._write_and_publish(changes, result)
            finally:
                result.seconds = time.perf_counter() - started
            return result

    # ------------------------------------------------------------------------------------
    def _diff(self, delta: AssetDelta, result: SyncResult) -> list[_Change]:
        """What actually differs from the cache; the fetcher's delta is a hint, the cache decides.
        (Its documents were validated where it was decoded, delta_wire.decode_delta.)"""
        changes: list[_Change] = []
        seen: set[str] = set(delta.held)  # in the listing but invalid: neither changed nor removed
        for record, doc in zip(delta.records, delta.docs):
            asset_id = delta.id_of(record)
            cached = self.cache.get(asset_id)
            if doc is None:
                if cached is not None and not cached.removed:
                    changes.append(_Change(asset_id, cached.doc, "removed", None))
                continue
            if doc["id"] != asset_id:
                raise AssetFormatError(
                    f"delta: record id {asset_id} does not match its document id {doc['id']}"
                )
            seen.add(asset_id)
            if cached is None or cached.removed:
                changes.append(_Change(asset_id, doc, "added", record))
            elif canonical_json(cached.doc) != canonical_json(doc):
                result.changed_fields[asset_id] = changed_fields(cached.doc, doc)
                changes.append(_Change(asset_id, doc, "changed", record))
        if delta.full:
            for asset_id, cached in self.cache.items():
                if not cached.removed and asset_id not in seen and _in_scope(cached.doc, delta.scope):
                    changes.append(_Change(asset_id, cached.doc, "removed", None))
        for change in changes:
            setattr(result, change.kind, getattr(result, change.kind) + 1)
        return changes

    def _check_removals(self, changes: list[_Change], delta: AssetDelta) -> None:
        removing = sum(c.kind == "removed" for c in changes)
        guard = self.removal_guard
        if delta.allow_mass_removal and not guard.allow:  # the fetcher's one-off permission
            guard = RemovalGuard(guard.max_share, guard.max_removals, allow=True)
        guard.check(
            removing=removing,
            listed=sum(not cached.removed for cached in self.cache.values()),
            fetched=delta.fetched,
            # Only a complete listing removes anything: a full delta, or one with removals.
            complete=delta.full or removing > 0,
        )

    async def _flush_pending(self, result: SyncResult) -> None:
        """Publish, then unmark, what is still marked from earlier; counts it in result.republished."""
        if self.publisher is None:
            return  # nothing could publish them: they stay marked for a service that can
        try:
            pending = await self._with_retry(self.store.load_pending)
        except Exception as exc:
            raise SyncError(f"cannot read the assets pending publication: {exc}", result) from exc
        if not pending:
            return
        try:
            self.publisher.publish(stored_records(pending))
        except Exception as exc:
            raise SyncError(
                f"publishing {len(pending)} pending assets failed (they stay pending): "
                f"{type(exc).__name__}: {exc}",
                result,
            ) from exc
        result.republished = len(pending)
        await self._clear_marks([(p.id, p.updated_at) for p in pending], result)

    async def _write_and_publish(self, changes: list[_Change], result: SyncResult) -> None:
        now_ns = self.clock()
        now = datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc)
        committed: list[_Change] = []  # the changes the database took, so the ones to publish
        done = 0
        try:
            for start in range(0, len(changes), self.batch_size):
                batch = changes[start : start + self.batch_size]
                rows = [AssetRow(c.id, c.doc, now, now if c.kind == "removed" else None) for c in batch]
                written = set(await self._write_with_retry(rows))
                result.written += len(written)
                for c in batch:  # committed: now, and only now, the cache may move
                    self.cache[c.id] = StoredAsset(dict(c.doc), c.kind == "removed")
                # A change the upsert's WHERE skipped is one the database already held: nothing
                # to publish (the cache was behind, or two texts of one value).
                committed.extend(c for c in batch if c.id in written)
                done += len(batch)
        except Exception as exc:
            note = "those were published" if done else "nothing was written"
            try:
                await self._publish_committed(committed, now_ns, now, result)
            except SyncError as publish_exc:  # the write error is the news; say what else went wrong
                note = f"those stay pending: {publish_exc}"
            raise SyncError(
                f"sync stopped after {done} of {len(changes)} changes were committed ({note}): {exc}",
                result,
            ) from exc
        await self._publish_committed(committed, now_ns, now, result)

    async def _publish_committed(
        self, committed: list[_Change], now_ns: int, now: datetime, result: SyncResult
    ) -> None:
        if not committed or self.publisher is None:
            return  # without a publisher the marks stay: a later service publishes them
        try:
            result.published = self._publish(committed, now_ns)
        except Exception as exc:
            raise SyncError(
                f"{len(committed)} changes were committed but publishing them failed; they stay "
                f"pending and are published at the next cycle or start: {type(exc).__name__}: {exc}",
                result,
            ) from exc
        # Every row of the cycle was written with updated_at = now; a no-op write left no mark.
        await self._clear_marks([(c.id, now) for c in committed], result)

    async def _clear_marks(self, marks: list[tuple[str, datetime]], result: SyncResult) -> None:
        try:
            await self._with_retry(lambda: self.store.clear_pending(marks))
        except Exception as exc:
            raise SyncError(
                f"{len(marks)} assets were published but their pending marks could not be cleared; "
                f"they will be published again (at-least-once): {type(exc).__name__}: {exc}",
                result,
            ) from exc

    async def _write_with_retry(self, rows: list[AssetRow]) -> list[str]:
        return await self._with_retry(lambda: self.store.write_batch(rows, self.write_method))

    async def _with_retry(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a store operation, reconnecting and backing off while the database is unavailable."""
        return await with_reconnect(self.store, operation, self.retry)

    def _publish(self, changes: list[_Change], now_ns: int) -> int:
        if not changes or self.publisher is None:
            return 0
        records = np.zeros(len(changes), dtype=ASSET)
        fresh = [i for i, c in enumerate(changes) if c.record is not None]
        if fresh:
            records[fresh] = np.array([changes[i].record for i in fresh], dtype=ASSET)
        gone = [i for i, c in enumerate(changes) if c.record is None]
        if gone:  # removals: encode what the database holds, then mark them removed
            records[gone] = to_records([changes[i].doc for i in gone])
            records["flags"][gone] |= np.uint8(ASSET_FLAG_REMOVED)
        records["updated_ns"] = now_ns
        return self.publisher.publish(records)


def stored_records(pending: list[PendingAsset]) -> np.ndarray:
    """The AoS for stored rows (pending ones, or a subscriber's warm-start snapshot): encoded from
    what the database holds, removals flagged, ``updated_ns`` when the row was committed."""
    records = to_records([p.doc for p in pending])
    gone = [i for i, p in enumerate(pending) if p.removed]
    if gone:
        records["flags"][gone] |= np.uint8(ASSET_FLAG_REMOVED)
    records["updated_ns"] = [_ns(p.updated_at) for p in pending]
    return records


def _ns(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _in_scope(doc: Mapping[str, Any], scope: Mapping[str, str]) -> bool:
    wanted_class = scope.get("asset_class")
    return wanted_class is None or doc.get("class") == wanted_class
