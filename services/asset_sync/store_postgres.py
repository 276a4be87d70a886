"""PostgreSQL through asyncpg, with the two write methods the issue asks to compare.

* ``upsert``: one ``INSERT ... SELECT FROM unnest($1::uuid[], ...) ON CONFLICT (id) DO UPDATE
  ... WHERE`` a column differs ``RETURNING id``: one statement and one round trip per batch.
* ``copy``: binary COPY into a session temporary table, then one ``INSERT ... SELECT ... ON
  CONFLICT`` merge from it. The temp table is ``ON COMMIT DELETE ROWS``, so each batch starts empty.

Either way a batch is one transaction; a dropped connection surfaces as StoreUnavailable and
nothing of the batch is committed, so the caller can reconnect and send the same batch again.
Every statement runs under ``statement_timeout`` (and asyncpg's ``command_timeout`` a little
later, for a server that stops answering): a lock held elsewhere fails it with StoreTimeout.
Every error leaves as a StoreError whose one-line message names the database without its
password (``user@host:port/db``).
The ``WHERE`` clause makes a resent or unchanged row a no-op; ``RETURNING`` names the rows that
did change (jsonb equality decides: 30 and 30.0 are equal), and only those are published.
The same statement sets ``publish_pending`` on every row it changes (the outbox, see store.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

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
    StoreTimeout,
    StoreUnavailable,
    typed_values,
)

_TYPES = (
    "uuid",
    "text",
    "text",
    "text",
    "text",
    "text",
    "boolean",
    "boolean",
    "boolean",
    "boolean",
    "boolean",
    "numeric",
    "numeric",
    "numeric",
    "jsonb",
    "jsonb",
    "timestamptz",
    "timestamptz",
)
_STAGE = "asset_sync_stage"
SYMBOL_INDEX = f"{ASSETS_TABLE}_symbol"
_INDEXES = (SYMBOL_INDEX, PENDING_INDEX)
# Errors that mean "the server or the link is gone", as opposed to a bad statement. A backend
# killed inside a transaction can also surface as InternalClientError (the protocol state machine
# catching the FATAL mid-operation), after which the connection is unusable: same treatment.
_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
)
# asyncpg's own timeout fires this much after the server's statement_timeout should have.
_CLIENT_TIMEOUT_MARGIN = 5.0


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """``text`` inside a single-quoted SQL string literal."""
    return text.replace("'", "''")


def describe_dsn(dsn: str) -> str:
    """``user@host:port/db`` for messages: the DSN without its password or options."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        user = parts.username or ""
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a DSN urlsplit cannot read (a bad port): name what is safe to name
        return "(unreadable)"
    return f"{user + '@' if user else ''}{host}{port}{parts.path or '/'}"


class PostgresStore:
    write_methods = ("upsert", "copy")

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 10.0,
        statement_timeout: float = DEFAULT_DB_TIMEOUT,
    ):
        self.dsn = dsn
        self.where = describe_dsn(dsn)
        self.schema = schema or "public"
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._conn: asyncpg.Connection | None = None
        table = f"{_quote(self.schema)}.{_quote(ASSETS_TABLE)}"
        self._table = table
        self._features = f"{_quote(self.schema)}.{_quote(FEATURES_TABLE)}"
        # Everything ensure_schema makes, looked up in the catalog (to_regclass takes no lock).
        made = (table, self._features, *(f"{_quote(self.schema)}.{_quote(i)}" for i in _INDEXES))
        self._schema_is_current_sql = (
            "SELECT "
            + " AND ".join(f"to_regclass('{_literal(name)}') IS NOT NULL" for name in made)
            + f" AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{_literal(table)}') "
            "AND attname = $1 AND NOT attisdropped)"
        )
        # One advisory lock per schema, the same in every process: a stable hash of its name.
        digest = hashlib.blake2b(f"shmpipe.asset_sync:{self.schema}".encode(), digest_size=8).digest()
        self._schema_lock_key = int.from_bytes(digest, "big", signed=True)
        # Every row inserted or updated is marked publish-pending by the same statement.
        columns = ", ".join((*COLUMNS, PENDING_COLUMN))
        updates = ", ".join(
            (*(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id"), f"{PENDING_COLUMN} = true")
        )
        changed = (
            f"{table}.doc IS DISTINCT FROM EXCLUDED.doc "
            f"OR ({table}.removed_at IS NULL) <> (EXCLUDED.removed_at IS NULL)"
        )
        conflict = f"ON CONFLICT (id) DO UPDATE SET {updates} WHERE {changed}"
        unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))
        returning = "RETURNING id::text"
        self._upsert_sql = (
            f"INSERT INTO {table} ({columns}) SELECT *, true FROM unnest({unnest}) {conflict} {returning}"
        )
        self._merge_sql = (
            f"INSERT INTO {table} ({columns}) "
            f"SELECT {', '.join(COLUMNS)}, true FROM pg_temp.{_STAGE} {conflict} {returning}"
        )
        self._load_snapshot_sql = (
            f"SELECT id::text, doc::text, removed_at IS NOT NULL, updated_at FROM {table} ORDER BY id"
        )
        self._load_pending_sql = (
            f"SELECT id::text, doc::text, removed_at IS NOT NULL, updated_at FROM {table} "
            f"WHERE {PENDING_COLUMN} ORDER BY id"
        )
        self._clear_pending_sql = (
            f"UPDATE {table} AS t SET {PENDING_COLUMN} = false "
            f"FROM unnest($1::uuid[], $2::timestamptz[]) AS p(id, updated_at) "
            f"WHERE t.id = p.id AND t.updated_at = p.updated_at AND t.{PENDING_COLUMN}"
        )

    async def open(self) -> None:
        try:
            self._conn = await asyncpg.connect(
                self.dsn,
                timeout=self.connect_timeout,
                command_timeout=self.statement_timeout + _CLIENT_TIMEOUT_MARGIN,
                server_settings={"statement_timeout": str(max(1, round(self.statement_timeout * 1000)))},
            )
        except (*_CONNECTION_ERRORS, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.where}: {_reason(exc)}") from exc
        except asyncpg.PostgresError as exc:  # no such database or role, a refused password, ...
            raise StoreError(f"PostgreSQL at {self.where} refused the connection: {_reason(exc)}") from exc
        except ValueError as exc:  # asyncpg's DSN parser: a bad port, an unknown option
            raise StoreError(f"invalid PostgreSQL address {self.where}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        """Turn whatever a statement raises into the StoreError that says what it means."""
        try:
            yield
        except StoreError:
            raise
        except (asyncpg.QueryCanceledError, TimeoutError) as exc:
            raise StoreTimeout(
                f"{doing} on PostgreSQL at {self.where} ran past the {self.statement_timeout:g} s "
                f"statement timeout (--db-timeout); is another session holding a lock on {self._table}?"
            ) from exc
        except Exception as exc:
            if isinstance(exc, _CONNECTION_ERRORS) or self._conn is None or self._conn.is_closed():
                raise StoreUnavailable(
                    f"{doing} on PostgreSQL at {self.where} failed, connection lost: {_reason(exc)}"
                ) from exc
            if isinstance(exc, asyncpg.PostgresError):
                raise StoreError(f"{doing} on PostgreSQL at {self.where} failed: {_reason(exc)}") from exc
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close(timeout=2.0)
            except Exception:  # closing a dead connection must not hide the reason it died
                conn.terminate()

    async def reconnect(self) -> None:
        await self.close()
        await self.open()

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise StoreUnavailable(f"the connection to PostgreSQL at {self.where} is closed")
        return self._conn

    async def ensure_schema(self) -> None:
        """Create or upgrade the tables. CREATE ... IF NOT EXISTS alone races: two sessions that
        both find nothing both insert the catalog row, and one fails (UniqueViolationError), as
        ``serve`` and ``watch`` started together on a new database did. So the DDL runs under a
        transaction-scoped advisory lock per schema: the second session waits, then finds the
        tables there. A schema that is already current is only looked up: no DDL, so no table
        lock (CREATE INDEX IF NOT EXISTS locks the table even when the index exists)."""
        async with self._errors(f"creating the tables in schema {self.schema!r}"):
            conn = self.conn
            if await conn.fetchval(self._schema_is_current_sql, PENDING_COLUMN):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._schema_lock_key)
                await self._create_or_upgrade(conn)

    async def _create_or_upgrade(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"""
            CREATE SCHEMA IF NOT EXISTS {_quote(self.schema)};
            CREATE TABLE IF NOT EXISTS {self._table} (
                id uuid PRIMARY KEY, symbol text NOT NULL, name text NOT NULL, exchange text NOT NULL,
                asset_class text NOT NULL, status text NOT NULL,
                tradable boolean NOT NULL, marginable boolean NOT NULL, shortable boolean NOT NULL,
                easy_to_borrow boolean NOT NULL, fractionable boolean NOT NULL,
                maintenance_margin_requirement numeric, margin_requirement_long numeric,
                margin_requirement_short numeric, attributes jsonb,
                doc jsonb NOT NULL, updated_at timestamptz NOT NULL, removed_at timestamptz,
                {PENDING_COLUMN} boolean NOT NULL DEFAULT false);
            CREATE INDEX IF NOT EXISTS {_quote(SYMBOL_INDEX)} ON {self._table} (symbol);
            CREATE TABLE IF NOT EXISTS {self._features} (
                computed_at timestamptz NOT NULL, assets integer NOT NULL, features jsonb NOT NULL);
        """)
        # A table made before the outbox existed is upgraded in place. Looked up first because
        # even a no-op ALTER TABLE takes an exclusive lock; IF NOT EXISTS covers a concurrent
        # upgrade. A constant default makes it a catalog-only change (PostgreSQL 11+), and the
        # rows already there were published by the version that wrote them: they start unmarked.
        has_column = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attname = $2 AND NOT attisdropped)",
            self._table,
            PENDING_COLUMN,
        )
        if not has_column:
            await conn.execute(
                f"ALTER TABLE {self._table} "
                f"ADD COLUMN IF NOT EXISTS {PENDING_COLUMN} boolean NOT NULL DEFAULT false"
            )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {_quote(PENDING_INDEX)} ON {self._table} (id) WHERE {PENDING_COLUMN}"
        )

    async def load_all(self) -> dict[str, StoredAsset]:
        async with self._errors("reading the assets"):
            rows = await self.conn.fetch(
                f"SELECT id::text, doc::text, removed_at IS NOT NULL FROM {self._table}"
            )
        return {r[0]: StoredAsset(loads(r[1]), r[2]) for r in rows}

    async def load_pending(self) -> list[PendingAsset]:
        return await self._load_rows(self._load_pending_sql)

    async def load_snapshot(self) -> list[PendingAsset]:
        # One statement: PostgreSQL reads it from one snapshot, even outside a transaction.
        return await self._load_rows(self._load_snapshot_sql)

    async def _load_rows(self, sql: str) -> list[PendingAsset]:
        async with self._errors("reading the assets"):
            rows = await self.conn.fetch(sql)
        return [PendingAsset(r[0], loads(r[1]), r[2], r[3]) for r in rows]

    async def clear_pending(self, marks: Sequence[tuple[str, datetime]]) -> int:
        if not marks:
            return 0
        ids, stamps = zip(*marks)
        async with self._errors("clearing publish marks"):
            conn = self.conn
            async with conn.transaction():
                status = await conn.execute(self._clear_pending_sql, list(ids), list(stamps))
        return int(status.split()[-1])  # "UPDATE n"

    async def write_batch(self, rows: Sequence[AssetRow], method: str) -> list[str]:
        if method not in self.write_methods:
            raise ValueError(f"unknown write method {method!r} (known: {self.write_methods})")
        records = [(*typed_values(r.doc), canonical_json(r.doc), r.updated_at, r.removed_at) for r in rows]
        # A bad statement or value is a StoreError, not StoreUnavailable: retrying the same batch
        # would fail the same way.
        async with self._errors(f"writing {len(rows)} assets"):
            conn = self.conn
            async with conn.transaction():
                if method == "upsert":
                    changed = await self._run_upsert(conn, records)
                else:
                    changed = await self._run_copy_merge(conn, records)
        return changed

    async def _run_upsert(self, conn: asyncpg.Connection, records: list[tuple]) -> list[str]:
        columns = list(zip(*records)) if records else [[] for _ in COLUMNS]
        return [r[0] for r in await conn.fetch(self._upsert_sql, *map(list, columns))]

    async def _run_copy_merge(self, conn: asyncpg.Connection, records: list[tuple]) -> list[str]:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
            f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(
            _STAGE, records=records, columns=list(COLUMNS), schema_name="pg_temp"
        )
        return [r[0] for r in await conn.fetch(self._merge_sql)]

    async def write_features(self, computed_at: datetime, assets: int, features: Mapping[str, Any]) -> None:
        async with self._errors("writing features"):
            await self.conn.execute(
                f"INSERT INTO {self._features} VALUES ($1, $2, $3::jsonb)",
                computed_at,
                assets,
                json.dumps(features, sort_keys=True),
            )


def _reason(exc: BaseException) -> str:
    """One line: asyncpg's messages can carry a DETAIL or HINT on further lines."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, asyncpg.PostgresError) else f"{type(exc).__name__}: {text}"
