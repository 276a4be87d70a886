"""The transactional outbox of the asset-sync service, on SQLite and on the local PostgreSQL.

A change committed but not published (the publish failed, or the process died in between) stays
marked ``publish_pending`` in the database and is published, exactly once more, before anything
else: at the next cycle or at the next service start, to subscribers that connected only after
the failure. A crash after the publish but before the marks were cleared publishes again
(at-least-once). A database made by the code before the outbox existed is upgraded in place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timezone

import pytest

from shmpipe.asset_codec import ASSET_FLAG_REMOVED, record_id
from shmpipe_services.asset_sync.canonical import canonical_json
from shmpipe_services.asset_sync.listing import parse_assets_json
from shmpipe_services.asset_sync.reconnect import ReconnectPolicy
from shmpipe_services.asset_sync.service import SyncError, SyncService
from shmpipe_services.asset_sync.source_map import SourceMap
from shmpipe_services.asset_sync.store import StoreUnavailable, typed_values
from shmpipe_services.asset_sync.store_factory import open_store
from shmpipe_services.asset_sync.store_sqlite import _sqlite_value
from shmpipe_services.asset_sync.zmq_pubsub import AssetPublisher, AssetSubscriber

from test_asset_sync import (
    DIFF,
    V1,
    V2,
    WAIT,
    Recorder,
    assert_cache_equals_database,
    db_args,
    last_json,
    load_db,
    run_cli,
)
import test_asset_sync

# The same fixtures as test_asset_sync: each database (a fresh SQLite file, a fresh PostgreSQL
# schema dropped afterwards) and a private ipc endpoint.
database = test_asset_sync.database
pub_endpoint = test_asset_sync.pub_endpoint

SUMMARY_KEYS = {"fetched", "added", "changed", "removed", "written", "published", "seconds"}
DIFF_IDS = set(DIFF["added"]) | set(DIFF["changed"]) | set(DIFF["removed"])
N_DIFF = len(DIFF_IDS)  # 90: what v1 -> v2 commits


class FailingPublisher(AssetPublisher):
    """A real XPUB publisher whose next ``fail_next`` publishes raise (the injection seam)."""

    def __init__(self, endpoint: str):
        super().__init__(endpoint)
        self.fail_next = 0
        self.failures = 0

    def publish(self, records):
        if self.fail_next:
            self.fail_next -= 1
            self.failures += 1
            raise RuntimeError("publish failed (injected)")
        return super().publish(records)


class FailingRecorder(Recorder):
    def __init__(self):
        super().__init__()
        self.fail_next = 0

    def publish(self, records):
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("publish failed (injected)")
        return super().publish(records)


def listing(path):
    """The full listing as a delta (a fresh fetcher: the service's cache decides what changed)."""
    return SourceMap().delta(parse_assets_json(path.read_bytes()), complete=True)


def new_service(database, publisher, **kwargs) -> SyncService:
    db, schema = database
    return SyncService(open_store(db, schema=schema), publisher, **kwargs)


async def pending_ids(database) -> set[str]:
    """What another connection sees marked: so only what is committed."""
    db, schema = database
    store = open_store(db, schema=schema)
    await store.open()
    try:
        return {p.id for p in await store.load_pending()}
    finally:
        await store.close()


def subscribe(endpoint: str, publisher: AssetPublisher) -> AssetSubscriber:
    """A subscriber the publisher has seen join (the XPUB handshake), so nothing sent is lost."""
    subscriber = AssetSubscriber(endpoint)
    assert publisher.wait_for_subscribers(publisher.subscribers + 1, WAIT)
    return subscriber


def assert_is_the_v2_diff(message) -> None:
    assert message is not None
    ids = [record_id(r) for r in message]
    assert len(ids) == len(set(ids)) and set(ids) == DIFF_IDS
    assert {record_id(r) for r in message if r["flags"] & ASSET_FLAG_REMOVED} == set(DIFF["removed"])


# ------------------------------------------------------------------------------------ publish fails


def test_publish_failure_after_commit_goes_out_at_the_next_cycle(database, pub_endpoint):
    publisher = FailingPublisher(pub_endpoint)
    subscriber = None

    async def scenario():
        nonlocal subscriber
        service = new_service(database, publisher)
        assert await service.start() == 0
        try:
            assert (await service.apply(listing(V1))).published == 3000  # nobody listening yet
            assert await pending_ids(database) == set()

            publisher.fail_next = 1
            with pytest.raises(SyncError, match="committed but publishing them failed") as info:
                await service.apply(listing(V2))
            failed = info.value.result
            assert (failed.written, failed.published, failed.republished) == (N_DIFF, 0, 0)
            assert await pending_ids(database) == DIFF_IDS  # committed, and marked

            subscriber = subscribe(pub_endpoint, publisher)  # joins only after the failure
            again = await service.apply(listing(V2))
            assert (again.added, again.changed, again.removed, again.written, again.published) == (
                0,
                0,
                0,
                0,
                0,
            )
            assert again.republished == N_DIFF and again.summary()["republished"] == N_DIFF
            assert_is_the_v2_diff(subscriber.receive(WAIT))
            assert await pending_ids(database) == set()

            third = await service.apply(listing(V2))
            assert (third.written, third.published, third.republished) == (0, 0, 0)
            assert set(third.summary()) == SUMMARY_KEYS
            assert subscriber.receive(0.3) is None
        finally:
            await service.close()

    try:
        asyncio.run(scenario())
        assert publisher.failures == 1
        assert subscriber.messages == 1
        rows = load_db(database)
        assert {i for i, r in rows.items() if r.removed} == set(DIFF["removed"])
    finally:
        publisher.close()
        if subscriber is not None:
            subscriber.close()


def test_publish_failure_after_commit_goes_out_at_the_next_start(database, pub_endpoint):
    """The first service is gone after the failed publish; a new one (new publisher, new
    subscriber) publishes the pending changes when it starts, and nothing after that."""
    first_publisher = FailingPublisher(pub_endpoint)
    restart_endpoint = f"{pub_endpoint}-restart"
    publisher = subscriber = None

    async def crash_after_commit():
        service = new_service(database, first_publisher)
        await service.start()
        try:
            await service.apply(listing(V1))
            first_publisher.fail_next = 1
            with pytest.raises(SyncError, match="they stay pending"):
                await service.apply(listing(V2))
        finally:
            await service.close()

    async def restart():
        service = new_service(database, publisher)
        try:
            assert await service.start() == N_DIFF
            assert_is_the_v2_diff(subscriber.receive(WAIT))
            assert await pending_ids(database) == set()
            later = await service.apply(listing(V2))
            assert (later.written, later.published, later.republished) == (0, 0, 0)
            assert subscriber.receive(0.3) is None
        finally:
            await service.close()

    try:
        asyncio.run(crash_after_commit())
        first_publisher.close()
        assert asyncio.run(pending_ids(database)) == DIFF_IDS
        publisher = AssetPublisher(restart_endpoint)
        subscriber = subscribe(restart_endpoint, publisher)
        asyncio.run(restart())
        assert subscriber.messages == 1
    finally:
        first_publisher.close()
        if publisher is not None:
            publisher.close()
        if subscriber is not None:
            subscriber.close()


def test_cli_sync_publishes_what_a_crashed_run_left_pending(database, pub_endpoint, capsys):
    """``shmpipe assets sync`` waits for its subscriber, then publishes the pending changes in
    its cycle (reported as "republished"); the line keeps its exact shape otherwise."""
    common = [*db_args(database), "--json"]
    code, out, err = run_cli(capsys, "sync", "--from-file", str(V1), *common, "--pub", pub_endpoint)
    assert code == 0, err

    async def crash_after_commit():
        recorder = FailingRecorder()
        recorder.fail_next = 1
        service = new_service(database, recorder)
        await service.start()
        try:
            with pytest.raises(SyncError):
                await service.apply(listing(V2))
        finally:
            await service.close()

    asyncio.run(crash_after_commit())
    restart_endpoint = f"{pub_endpoint}-cli"
    subscriber = AssetSubscriber(restart_endpoint)
    try:
        sync = [
            "sync",
            "--from-file",
            str(V2),
            *common,
            "--pub",
            restart_endpoint,
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(WAIT),
        ]
        code, out, err = run_cli(capsys, *sync)
        assert code == 0, err
        line = last_json(out)
        assert set(line) == SUMMARY_KEYS | {"republished"}
        assert (line["fetched"], line["written"], line["published"], line["republished"]) == (
            3010,
            0,
            0,
            N_DIFF,
        )
        assert_is_the_v2_diff(subscriber.receive(WAIT))

        code, out, err = run_cli(capsys, *sync)
        assert code == 0, err
        line = last_json(out)
        assert set(line) == SUMMARY_KEYS
        assert (line["written"], line["published"]) == (0, 0)
        assert subscriber.receive(0.3) is None  # that sync's publisher is closed: nothing queued
    finally:
        subscriber.close()


def test_crash_before_the_marks_are_cleared_publishes_again(database, pub_endpoint):
    """Published but not unmarked (clearing fails, as if the process died right after the
    publish): the next cycle publishes those assets again; a subscriber's keyed cache is the
    same either way (at-least-once, idempotent)."""
    publisher = AssetPublisher(pub_endpoint)
    subscriber = subscribe(pub_endpoint, publisher)

    async def scenario():
        service = new_service(database, publisher, retry=ReconnectPolicy(attempts=2, base_delay=0.001))
        await service.start()
        try:
            await service.apply(listing(V1))
            assert len(subscriber.receive(WAIT)) == 3000

            async def clearing_fails(marks):
                raise StoreUnavailable("connection lost (injected)")

            service.store.clear_pending = clearing_fails
            with pytest.raises(SyncError, match="will be published again") as info:
                await service.apply(listing(V2))
            assert info.value.result.published == N_DIFF
            assert_is_the_v2_diff(subscriber.receive(WAIT))
            assert await pending_ids(database) == DIFF_IDS
            cache_before = {k: v.copy() for k, v in subscriber.cache.items()}

            del service.store.clear_pending  # the class's method again
            again = await service.apply(listing(V2))
            assert (again.written, again.published, again.republished) == (0, 0, N_DIFF)
            assert_is_the_v2_diff(subscriber.receive(WAIT))
            assert subscriber.cache.keys() == cache_before.keys()
            for key, record in cache_before.items():
                for name in record.dtype.names:
                    if name != "updated_ns":
                        assert subscriber.cache[key][name] == record[name], name

            last = await service.apply(listing(V2))
            assert (last.written, last.published, last.republished) == (0, 0, 0)
            assert subscriber.receive(0.3) is None
        finally:
            await service.close()

    try:
        asyncio.run(scenario())
        assert_cache_equals_database(subscriber, load_db(database))
    finally:
        subscriber.close()
        publisher.close()


def test_pending_publish_failure_stops_the_cycle_before_it_writes(tmp_path):
    """While earlier changes cannot be published, newer ones are not written past them."""
    database = (f"sqlite://{tmp_path / 'a.sqlite'}", None)
    recorder = FailingRecorder()

    async def scenario():
        service = new_service(database, recorder)
        await service.start()
        try:
            await service.apply(listing(V1))
            recorder.fail_next = 1
            with pytest.raises(SyncError, match="committed but publishing them failed"):
                await service.apply(listing(V2))
            recorder.fail_next = 1
            with pytest.raises(SyncError, match="pending assets failed"):
                await service.apply(listing(V1))  # would turn v2 back into v1
            assert await pending_ids(database) == DIFF_IDS
            assert cache_removed(service) == set(DIFF["removed"])
            back = await service.apply(listing(V1))
            assert back.republished == N_DIFF and back.published == back.written == N_DIFF
        finally:
            await service.close()

    asyncio.run(scenario())
    assert [len(m) for m in recorder.messages] == [3000, N_DIFF, N_DIFF]
    assert asyncio.run(pending_ids(database)) == set()


def test_postgres_copy_method_marks_and_clears_too(postgres_dsn):
    """The COPY + merge write path sets the same marks as the upsert."""
    database = (postgres_dsn, f"asset_test_{uuid.uuid4().hex[:12]}")
    recorder = FailingRecorder()

    async def scenario():
        service = new_service(database, recorder, write_method="copy")
        await service.start()
        try:
            recorder.fail_next = 1
            with pytest.raises(SyncError, match="they stay pending"):
                await service.apply(listing(V1))
            assert len(await pending_ids(database)) == 3000
            again = await service.apply(listing(V2))
            assert (again.republished, again.written, again.published) == (3000, N_DIFF, N_DIFF)
            assert await pending_ids(database) == set()
        finally:
            await service.close()

    try:
        asyncio.run(scenario())
        assert [len(m) for m in recorder.messages] == [3000, N_DIFF]
    finally:
        asyncio.run(test_asset_sync._drop_schema(*database))


def cache_removed(service: SyncService) -> set[str]:
    """What the service believes is committed as removed."""
    return {i for i, a in service.cache.items() if a.removed}


# ------------------------------------------------------------------------------------ upgrade

OLD_SQLITE_DDL = """
    CREATE TABLE IF NOT EXISTS assets (
        id TEXT PRIMARY KEY, symbol TEXT NOT NULL, name TEXT NOT NULL, exchange TEXT NOT NULL,
        asset_class TEXT NOT NULL, status TEXT NOT NULL,
        tradable INTEGER NOT NULL, marginable INTEGER NOT NULL, shortable INTEGER NOT NULL,
        easy_to_borrow INTEGER NOT NULL, fractionable INTEGER NOT NULL,
        maintenance_margin_requirement TEXT, margin_requirement_long TEXT,
        margin_requirement_short TEXT, attributes TEXT,
        doc TEXT NOT NULL, updated_at TEXT NOT NULL, removed_at TEXT);
    CREATE INDEX IF NOT EXISTS assets_symbol ON assets (symbol);
    CREATE TABLE IF NOT EXISTS asset_features (
        computed_at TEXT NOT NULL, assets INTEGER NOT NULL, features TEXT NOT NULL);
"""

OLD_POSTGRES_DDL = """
    CREATE SCHEMA IF NOT EXISTS "{schema}";
    CREATE TABLE IF NOT EXISTS "{schema}"."assets" (
        id uuid PRIMARY KEY, symbol text NOT NULL, name text NOT NULL, exchange text NOT NULL,
        asset_class text NOT NULL, status text NOT NULL,
        tradable boolean NOT NULL, marginable boolean NOT NULL, shortable boolean NOT NULL,
        easy_to_borrow boolean NOT NULL, fractionable boolean NOT NULL,
        maintenance_margin_requirement numeric, margin_requirement_long numeric,
        margin_requirement_short numeric, attributes jsonb,
        doc jsonb NOT NULL, updated_at timestamptz NOT NULL, removed_at timestamptz);
    CREATE INDEX IF NOT EXISTS "assets_symbol" ON "{schema}"."assets" (symbol);
    CREATE TABLE IF NOT EXISTS "{schema}"."asset_features" (
        computed_at timestamptz NOT NULL, assets integer NOT NULL, features jsonb NOT NULL);
"""


def create_old_database(database, docs) -> None:
    """The tables exactly as the code before the outbox made them, holding ``docs``."""
    db, schema = database
    now = datetime.now(timezone.utc)
    rows = [(*typed_values(d), canonical_json(d), now, None) for d in docs]
    if schema is None:
        with closing(sqlite3.connect(db[len("sqlite://") :])) as conn, conn:
            conn.executescript(OLD_SQLITE_DDL)
            conn.executemany(
                f"INSERT INTO assets VALUES ({', '.join('?' * 18)})",
                [(*(_sqlite_value(v) for v in r[:16]), now.isoformat(), None) for r in rows],
            )
        return

    async def create():
        import asyncpg

        from shmpipe_services.asset_sync.store_postgres import _TYPES

        conn = await asyncpg.connect(db)
        try:
            await conn.execute(OLD_POSTGRES_DDL.format(schema=schema))
            values = ", ".join(f"${i}::{t}" for i, t in enumerate(_TYPES, 1))
            await conn.executemany(f'INSERT INTO "{schema}".assets VALUES ({values})', rows)
        finally:
            await conn.close()

    asyncio.run(create())


def pending_column_exists(database) -> bool:
    db, schema = database
    if schema is None:
        with closing(sqlite3.connect(db[len("sqlite://") :])) as conn, conn:
            return "publish_pending" in {r[1] for r in conn.execute("PRAGMA table_info(assets)")}

    async def exists():
        import asyncpg

        conn = await asyncpg.connect(db)
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 "
                "AND table_name = 'assets' AND column_name = 'publish_pending'",
                schema,
            )
        finally:
            await conn.close()

    return bool(asyncio.run(exists()))


def test_database_from_before_the_outbox_is_upgraded_in_place(database):
    v1 = parse_assets_json(V1.read_bytes())
    create_old_database(database, v1)
    assert not pending_column_exists(database)
    before = load_db(database)  # the new code reads the old table too
    assert len(before) == 3000
    recorder = FailingRecorder()

    async def scenario():
        service = new_service(database, recorder)
        # rows written before the upgrade were published by the version that wrote them
        assert await service.start() == 0
        try:
            assert len(service.cache) == 3000
            assert await pending_ids(database) == set()
            recorder.fail_next = 1  # the upgraded column is the outbox now
            with pytest.raises(SyncError, match="they stay pending"):
                await service.apply(listing(V2))
            assert await pending_ids(database) == DIFF_IDS
            again = await service.apply(listing(V2))
            assert (again.written, again.published, again.republished) == (0, 0, N_DIFF)
        finally:
            await service.close()
        service = new_service(database, recorder)  # a second open: the upgrade is not redone
        assert await service.start() == 0
        try:
            assert (await service.apply(listing(V2))).written == 0
        finally:
            await service.close()

    asyncio.run(scenario())
    assert pending_column_exists(database)
    assert recorder.messages and sorted(recorder.messages[0]) == sorted(DIFF_IDS)
    assert len(recorder.messages) == 1
    rows = load_db(database)
    assert set(rows) == set(before) | set(DIFF["added"])
    assert {i for i, r in rows.items() if r.removed} == set(DIFF["removed"])
