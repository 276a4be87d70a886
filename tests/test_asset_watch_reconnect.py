"""``shmpipe assets watch`` survives a database restart.

The shared PostgreSQL server cannot be restarted from a test, so the watcher's own connection
is killed instead (``pg_terminate_backend``), which is what a restart does to it; the backend is
found by a unique ``application_name`` in the DSN, so no other session is touched. The watcher
must report it, reconnect, store the features of the next message, and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid

import asyncpg
from shmpipe_services.asset_sync.listing import parse_listing, to_records
from shmpipe_services.asset_sync.zmq_pubsub import AssetPublisher
from test_asset_sync import V1, WAIT, LineReader, _drop_schema, _feature_rows, _stop, spawn_cli


async def _backends(dsn: str, application_name: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def _terminate(dsn: str, pid: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_watch_reconnects_after_its_connection_is_killed(postgres_dsn):
    name = f"shmpipe-watch-test-{uuid.uuid4().hex[:12]}"
    schema = f"asset_test_{uuid.uuid4().hex[:12]}"
    dsn = f"{postgres_dsn}?application_name={name}"
    records = to_records(parse_listing(V1.read_bytes()).docs[:20])
    with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
        endpoint = f"ipc://{tmp}/pub"
        publisher = AssetPublisher(endpoint)
        watch = spawn_cli(
            "assets", "watch", "--sub", endpoint, "--db", dsn, "--schema", schema,
            "--messages", "2", "--idle-timeout", str(WAIT), "--json",
        )  # fmt: skip
        try:
            lines = LineReader(watch.stdout)
            assert json.loads(lines.next(WAIT))["warm_start"] == 0
            assert publisher.wait_for_subscribers(1, WAIT)
            publisher.publish(records[:10])
            assert json.loads(lines.next(WAIT))["received"] == 10  # features stored, then printed
            (pid,) = asyncio.run(_backends(postgres_dsn, name))
            assert asyncio.run(_terminate(postgres_dsn, pid))
            _wait_until(lambda: pid not in asyncio.run(_backends(postgres_dsn, name)), "the backend to go")

            publisher.publish(records[10:])
            assert json.loads(lines.next(WAIT))["received"] == 10
            watch.wait(WAIT)
        finally:
            _stop(watch)
            publisher.close()
    stderr = watch.stderr.read()
    try:
        assert watch.returncode == 0, stderr
        assert "Traceback" not in stderr and "reconnecting" in stderr
        assert _feature_rows((postgres_dsn, schema)) == 2  # the second one after the reconnect
    finally:
        asyncio.run(_drop_schema(postgres_dsn, schema))
