"""The embedded default: SQLite through the standard library, so the pipeline runs with no server.

Calls are synchronous inside async methods: the file is local and each batch is a short
transaction, so a thread hop would cost more than it saves. The upsert marks every row it changes
publish-pending in the batch's transaction (the outbox, see store.py).

Errors leave as StoreError with the file's path: OperationalError (locked past the busy timeout,
disk I/O) as StoreUnavailable, which the service retries; anything else (not a database, a
directory that cannot be made) as a plain StoreError.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .canonical import canonical_json, loads
from .store import (
    ASSETS_TABLE,
    DEFAULT_DB_TIMEOUT,
    COLUMNS,
    FEATURES_TABLE,
    PENDING_COLUMN,
    PENDING_INDEX,
    AssetRow,
    PendingAsset,
    StoredAsset,
    StoreError,
    StoreUnavailable,
    typed_values,
)

_CHANGED = "assets.doc IS NOT excluded.doc OR (assets.removed_at IS NULL) <> (excluded.removed_at IS NULL)"


class SqliteStore:
    write_methods = ("upsert",)  # SQLite has no COPY; a staging table would only add a copy

    def __init__(self, path: Path, *, timeout: float = DEFAULT_DB_TIMEOUT):
        self.path = Path(path)
        self.timeout = timeout  # how long a statement waits for another connection's lock
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory of SQLite database {self.path}: {exc.strerror or exc}"
            ) from exc
        with self._errors("opening"):
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout)
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # the first read: "file is not a database"
            except BaseException:
                conn.close()
                raise
        self._conn = conn

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk I/O: retryable
            raise StoreUnavailable(f"{doing} SQLite database {self.path} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{doing} SQLite database {self.path} failed: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def reconnect(self) -> None:
        await self.close()
        await self.open()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("SQLite store is not open")
        return self._conn

    async def ensure_schema(self) -> None:
        with self._errors("creating the tables of"):
            self._ensure_schema()

    def _ensure_schema(self) -> None:
        self.conn.executescript(f"""
            CREATE TABLE IF NOT EXISTS {ASSETS_TABLE} (
                id TEXT PRIMARY KEY, symbol TEXT NOT NULL, name TEXT NOT NULL, exchange TEXT NOT NULL,
                asset_class TEXT NOT NULL, status TEXT NOT NULL,
                tradable INTEGER NOT NULL, marginable INTEGER NOT NULL, shortable INTEGER NOT NULL,
                easy_to_borrow INTEGER NOT NULL, fractionable INTEGER NOT NULL,
                maintenance_margin_requirement TEXT, margin_requirement_long TEXT,
                margin_requirement_short TEXT, attributes TEXT,
                doc TEXT NOT NULL, updated_at TEXT NOT NULL, removed_at TEXT,
                {PENDING_COLUMN} INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS {ASSETS_TABLE}_symbol ON {ASSETS_TABLE} (symbol);
            CREATE TABLE IF NOT EXISTS {FEATURES_TABLE} (
                computed_at TEXT NOT NULL, assets INTEGER NOT NULL, features TEXT NOT NULL);
        """)
        # A table made before the outbox existed is upgraded in place (SQLite has no ADD COLUMN
        # IF NOT EXISTS, hence the look-up). Rows already there were published by the version
        # that wrote them, so they start unmarked.
        columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({ASSETS_TABLE})")}
        if PENDING_COLUMN not in columns:
            try:
                self.conn.execute(
                    f"ALTER TABLE {ASSETS_TABLE} ADD COLUMN {PENDING_COLUMN} INTEGER NOT NULL DEFAULT 0"
                )
            except sqlite3.OperationalError as exc:  # another process upgraded it meanwhile
                if "duplicate column" not in str(exc):
                    raise
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {PENDING_INDEX} ON {ASSETS_TABLE} (id) WHERE {PENDING_COLUMN}"
        )

    async def load_all(self) -> dict[str, StoredAsset]:
        with self._errors("reading the assets of"):
            rows = self.conn.execute(f"SELECT id, doc, removed_at IS NOT NULL FROM {ASSETS_TABLE}").fetchall()
        return {asset_id: StoredAsset(loads(doc), bool(removed)) for asset_id, doc, removed in rows}

    async def load_pending(self) -> list[PendingAsset]:
        return self._load_rows(f"WHERE {PENDING_COLUMN}")

    async def load_snapshot(self) -> list[PendingAsset]:
        # One SELECT outside any transaction of ours: SQLite (WAL) reads it from one snapshot.
        return self._load_rows("")

    def _load_rows(self, where: str) -> list[PendingAsset]:
        with self._errors("reading the assets of"):
            rows = self.conn.execute(
                f"SELECT id, doc, removed_at IS NOT NULL, updated_at FROM {ASSETS_TABLE} {where} ORDER BY id"
            ).fetchall()
        return [
            PendingAsset(asset_id, loads(doc), bool(removed), datetime.fromisoformat(updated_at))
            for asset_id, doc, removed, updated_at in rows
        ]

    async def clear_pending(self, marks: Sequence[tuple[str, datetime]]) -> int:
        if not marks:
            return 0
        conn = self.conn
        with self._errors("clearing publish marks in"), _transaction(conn):
            before = conn.total_changes
            # updated_at is stored as isoformat() text: the same call gives the same string back.
            conn.executemany(
                f"UPDATE {ASSETS_TABLE} SET {PENDING_COLUMN} = 0 "
                f"WHERE id = ? AND updated_at = ? AND {PENDING_COLUMN}",
                [(asset_id.lower(), at.isoformat()) for asset_id, at in marks],
            )
            return conn.total_changes - before

    async def write_batch(self, rows: Sequence[AssetRow], method: str) -> list[str]:
        if method not in self.write_methods:
            raise ValueError(f"SQLite supports write method(s) {self.write_methods}, not {method!r}")
        values = [
            (
                *(_sqlite_value(v) for v in typed_values(r.doc)),
                canonical_json(r.doc),
                r.updated_at.isoformat(),
                r.removed_at.isoformat() if r.removed_at else None,
            )
            for r in rows
        ]
        placeholders = ", ".join("?" for _ in COLUMNS)
        # Every row inserted or updated is marked publish-pending by the same statement.
        updates = ", ".join((*(f"{c} = excluded.{c}" for c in COLUMNS if c != "id"), f"{PENDING_COLUMN} = 1"))
        conn = self.conn
        with self._errors(f"writing {len(rows)} assets to"), _transaction(conn):
            return self._execute_rows(
                conn,
                f"INSERT INTO {ASSETS_TABLE} ({', '.join((*COLUMNS, PENDING_COLUMN))}) "
                f"VALUES ({placeholders}, 1) "
                f"ON CONFLICT (id) DO UPDATE SET {updates} WHERE {_CHANGED}",
                values,
            )

    def _execute_rows(self, conn: sqlite3.Connection, sql: str, values: list[tuple]) -> list[str]:
        """The ids of the rows the statement changed; a seam for fault-injection tests.
        Row by row, because executemany cannot say which rows its WHERE skipped (the file is
        local, so the extra calls cost little)."""
        return [row[0] for row in values if conn.execute(sql, row).rowcount]

    async def write_features(self, computed_at: datetime, assets: int, features: Mapping[str, Any]) -> None:
        with self._errors("writing features to"):
            self.conn.execute(
                f"INSERT INTO {FEATURES_TABLE} VALUES (?, ?, ?)",
                (computed_at.isoformat(), assets, json.dumps(features, sort_keys=True)),
            )


def _sqlite_value(value: Any) -> Any:
    # Decimals go in as text so "0.0001" stays exactly that (SQLite REAL would round it).
    return str(value) if value is not None and not isinstance(value, bool | int | str) else value


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now, waiting up to the timeout) ... COMMIT, or
    ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
