"""Which store a ``--db`` value names: the one place that knows both backends.

It lives apart from ``store.py`` (the interface both backends import) so that no module imports
a backend that imports it back.
"""

from __future__ import annotations

import os
from pathlib import Path

from .store import DEFAULT_DB_TIMEOUT, AssetStore


def default_sqlite_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "shmpipe" / "assets.sqlite"


def open_store(
    db: str | None, *, schema: str | None = None, timeout: float = DEFAULT_DB_TIMEOUT
) -> AssetStore:
    """``postgresql://...`` or ``postgres://...`` -> PostgreSQL; ``sqlite:///path``, a path or
    nothing -> SQLite (default file: $XDG_DATA_HOME/shmpipe/assets.sqlite). ``timeout``: seconds
    a statement may take, waiting for locks included."""
    if db and db.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresStore  # asyncpg only when asked for

        return PostgresStore(db, schema=schema, statement_timeout=timeout)
    from .store_sqlite import SqliteStore

    if not db:
        return SqliteStore(default_sqlite_path(), timeout=timeout)
    if db.startswith("sqlite://"):
        db = db[len("sqlite://") :]  # sqlite:///abs/path -> /abs/path, sqlite://rel -> rel
    return SqliteStore(Path(db), timeout=timeout)
