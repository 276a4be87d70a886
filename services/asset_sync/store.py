"""Where synced assets live: one interface, PostgreSQL (asyncpg) or SQLite (sqlite3) behind it.

The table keeps typed columns for queries *and* the full asset JSON in ``doc``: the database is
the truth, so it stores full-length strings and every field the diff compares, not the record.
A removed asset keeps its row; ``removed_at`` says when it left the listing.

The transactional outbox is the ``publish_pending`` column of that same table: the upsert that
changes a row also sets its mark, in the batch's transaction, so "committed" implies "marked".
The service clears a mark only after the row's change was published, and matches the mark by
``(id, updated_at)``, so a row rewritten since it was read stays marked. Why a column and not a
separate outbox table: the mark is set by the very statement (and the very ``WHERE``) that decides
whether the row changed, so no second statement per batch and no way for the two to disagree;
re-publishing needs the row's doc and removed state anyway, which live in the row; one entry per
asset is all an idempotent, keyed-by-id subscriber needs; and upgrading a database written before
the outbox existed is one ``ADD COLUMN`` (rows already there count as published). A partial index
on the marked rows keeps the "anything pending?" check at every cycle cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

ASSETS_TABLE = "assets"
FEATURES_TABLE = "asset_features"
# Typed columns, in the order rows are built; doc / updated_at / removed_at follow.
TYPED_COLUMNS = (
    "id",
    "symbol",
    "name",
    "exchange",
    "asset_class",
    "status",
    "tradable",
    "marginable",
    "shortable",
    "easy_to_borrow",
    "fractionable",
    "maintenance_margin_requirement",
    "margin_requirement_long",
    "margin_requirement_short",
    "attributes",
)
COLUMNS = (*TYPED_COLUMNS, "doc", "updated_at", "removed_at")
# The outbox mark: set with every row a write changes, cleared once that change was published.
PENDING_COLUMN = "publish_pending"
PENDING_INDEX = f"{ASSETS_TABLE}_{PENDING_COLUMN}"
WRITE_METHODS = ("upsert", "copy")


# Seconds one statement may take, waiting for locks included (--db-timeout): a table locked by
# another session must fail a cycle with a message, not hang it.
DEFAULT_DB_TIMEOUT = 30.0


class StoreError(RuntimeError):
    """The database refused or failed an operation. The message is one line that names the
    database (never its password) and the reason; retrying the same thing would fail the same way."""


class StoreUnavailable(StoreError):
    """The database could not be reached or dropped the connection: worth retrying."""


class StoreTimeout(StoreError):
    """A statement ran past the timeout, usually waiting for a lock another session holds."""


@dataclass(frozen=True)
class AssetRow:
    """One row to write: the full asset and whether (since when) it is removed."""

    id: str
    doc: Mapping[str, Any]
    updated_at: datetime
    removed_at: datetime | None = None


@dataclass(frozen=True)
class StoredAsset:
    doc: dict[str, Any]
    removed: bool


@dataclass(frozen=True)
class PendingAsset:
    """A row as it is now: what load_pending returns for a committed change not yet known to be
    published, and load_snapshot for every row (a subscriber's warm start)."""

    id: str
    doc: dict[str, Any]
    removed: bool
    updated_at: datetime  # with ``id``, the mark that clear_pending matches


class AssetStore(Protocol):
    write_methods: tuple[str, ...]

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def reconnect(self) -> None: ...
    async def load_all(self) -> dict[str, StoredAsset]: ...
    async def ensure_schema(self) -> None:
        """Create the tables, or upgrade ones an older version made (adds the outbox column)."""

    async def write_batch(self, rows: Sequence[AssetRow], method: str) -> list[str]:
        """Write ``rows`` in one transaction; returns the ids of the rows it actually changed
        (inserted, or updated because the doc or the removed state differs: the database's
        judgement, which is what gets published). Every row that changed is marked
        publish-pending in that same transaction.
        Raises StoreUnavailable when the connection failed (nothing of the batch is committed),
        StoreTimeout past the statement timeout, StoreError when the database refused the batch."""

    async def load_pending(self) -> list[PendingAsset]:
        """Every row still marked publish-pending, ordered by id."""

    async def load_snapshot(self) -> list[PendingAsset]:
        """Every row, removed ones included, ordered by id, read by one statement (so one
        consistent snapshot): what a subscriber's cache starts from (``assets watch``)."""

    async def clear_pending(self, marks: Sequence[tuple[str, datetime]]) -> int:
        """Unmark the rows whose (id, updated_at) are in ``marks``, in one transaction; a row
        written again since (another updated_at) keeps its mark. Returns how many were unmarked."""

    async def write_features(
        self, computed_at: datetime, assets: int, features: Mapping[str, Any]
    ) -> None: ...


def margin_decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def typed_values(doc: Mapping[str, Any]) -> tuple:
    """The typed columns of one asset (validated JSON), in TYPED_COLUMNS order."""
    return (
        doc["id"].lower(),
        doc["symbol"],
        doc.get("name") or "",
        doc["exchange"],
        doc["class"],
        doc["status"],
        doc["tradable"],
        doc["marginable"],
        doc["shortable"],
        doc["easy_to_borrow"],
        doc["fractionable"],
        margin_decimal(doc.get("maintenance_margin_requirement")),
        margin_decimal(doc.get("margin_requirement_long")),
        margin_decimal(doc.get("margin_requirement_short")),
        json.dumps(doc.get("attributes")) if doc.get("attributes") is not None else None,
    )
