"""Several processes creating the tables of a new PostgreSQL schema at once (``serve`` and
``watch`` started together) must all succeed: CREATE ... IF NOT EXISTS alone races (two sessions
both see nothing and both insert the catalog row: UniqueViolationError), so ensure_schema runs
under an advisory lock."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid

from shmpipe_services.asset_sync.store_postgres import PostgresStore
from test_asset_sync import WAIT, LineReader, _drop_schema, _stop, spawn_cli

ROUNDS = 5
SESSIONS = 6


def test_concurrent_ensure_schema_on_a_new_schema(postgres_dsn):
    async def round_on_a_fresh_schema() -> list[BaseException | None]:
        schema = f"asset_race_{uuid.uuid4().hex[:12]}"
        stores = [PostgresStore(postgres_dsn, schema=schema) for _ in range(SESSIONS)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            outcomes = await asyncio.gather(*(s.ensure_schema() for s in stores), return_exceptions=True)
            assert await stores[0].load_all() == {}  # the tables are there and usable
            return outcomes
        finally:
            await asyncio.gather(*(s.close() for s in stores))
            await _drop_schema(postgres_dsn, schema)

    async def scenario():
        return [await round_on_a_fresh_schema() for _ in range(ROUNDS)]

    failures = [o for outcomes in asyncio.run(scenario()) for o in outcomes if o is not None]
    assert failures == []


def test_serve_and_watch_started_together_on_a_new_schema(postgres_dsn):
    """The issue's reproduction: both commands at once, a fresh schema each time."""
    for _ in range(3):
        schema = f"asset_race_{uuid.uuid4().hex[:12]}"
        db = ["--db", postgres_dsn, "--schema", schema]
        with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
            pub = ["--pub", f"ipc://{tmp}/pub"]
            serve = spawn_cli("assets", "serve", "--listen", f"{tmp}/s.sock", *db, *pub, "--json")
            watch = spawn_cli(
                "assets", "watch", "--sub", f"ipc://{tmp}/pub", *db, "--idle-timeout", "0.2", "--json"
            )
            try:
                assert json.loads(LineReader(serve.stdout).next(WAIT))["ready"]
                _, watch_err = watch.communicate(timeout=WAIT)
            finally:
                _stop(watch)
                _stop(serve)
                asyncio.run(_drop_schema(postgres_dsn, schema))
            serve_err = serve.stderr.read()
            assert watch.returncode == 0 and serve.returncode == 0, (watch_err, serve_err)
            assert "duplicate key" not in watch_err + serve_err and "Traceback" not in watch_err + serve_err


def test_current_schema_is_only_looked_up(postgres_dsn):
    """With the tables in place, ensure_schema takes no lock on them: it finishes while another
    session holds an ACCESS EXCLUSIVE lock (the DDL path would wait for the statement timeout)."""
    import asyncpg

    schema = f"asset_race_{uuid.uuid4().hex[:12]}"

    async def scenario():
        first, second = (
            PostgresStore(postgres_dsn, schema=schema),
            PostgresStore(postgres_dsn, schema=schema, statement_timeout=2.0),
        )
        holder = await asyncpg.connect(postgres_dsn)
        try:
            await first.open()
            await first.ensure_schema()
            await second.open()
            async with holder.transaction():
                await holder.execute(f'LOCK TABLE "{schema}".assets IN ACCESS EXCLUSIVE MODE')
                await second.ensure_schema()
        finally:
            await holder.close()
            await first.close()
            await second.close()
            await _drop_schema(postgres_dsn, schema)

    asyncio.run(scenario())
