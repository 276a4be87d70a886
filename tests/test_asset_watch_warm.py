"""``shmpipe assets watch`` warm-starts its cache from the database, on SQLite and PostgreSQL.

v1 is synced before the subscriber exists; the subscriber then loads the database, v2 is synced,
and its cache equals the database asset for asset, its features equal the database's. The
subscription is made before the database is read: a change committed after the snapshot is
received as a message (checked by committing and publishing v2 *during* the snapshot read, with
the publisher first required to have seen the subscription). ``--no-warm-start`` keeps the old
behaviour: only the changes. Synchronisation is by handshakes (XPUB subscriptions, output
lines), never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import uuid

import numpy as np
import pytest
import test_asset_sync
from shmpipe_services.asset_sync import zmq_pubsub
from shmpipe_services.asset_sync.features import compute_features
from shmpipe_services.asset_sync.service import SyncService
from shmpipe_services.asset_sync.store_factory import open_store
from shmpipe_services.asset_sync.store_postgres import PostgresStore
from shmpipe_services.asset_sync.store_sqlite import SqliteStore
from shmpipe_services.asset_sync.zmq_pubsub import AssetPublisher, AssetSubscriber
from test_asset_outbox import DIFF_IDS, N_DIFF, listing
from test_asset_sync import (
    DIFF,
    KNOWN,
    V1,
    V2,
    WAIT,
    LineReader,
    _feature_rows,
    _stop,
    spawn_cli,
    assert_cache_equals_database,
    db_args,
    load_db,
    run_cli,
)

from shmpipe.asset_codec import ASSET_FLAG_REMOVED
from shmpipe_services.asset_sync.listing import to_records

# The same fixtures as test_asset_sync: each database (a fresh SQLite file, a fresh PostgreSQL
# schema dropped afterwards) and a private ipc endpoint.
database = test_asset_sync.database
pub_endpoint = test_asset_sync.pub_endpoint

STORES = (SqliteStore, PostgresStore)


# ------------------------------------------------------------------------------------ helpers


def database_records(database) -> np.ndarray:
    """The database's assets as the records a subscriber should hold (removals flagged), built
    from load_all, independently of the warm-start code."""
    rows = load_db(database)
    ids = sorted(rows)
    records = to_records([rows[i].doc for i in ids])
    for i, asset_id in enumerate(ids):
        if rows[asset_id].removed:
            records[i]["flags"] |= ASSET_FLAG_REMOVED
    return records


def assert_features_match(got: dict, want: dict, path: str = "") -> None:
    """Equal, except float statistics to rounding (the sums run in another order)."""
    assert got.keys() == want.keys(), path
    for key, value in want.items():
        where = f"{path}.{key}"
        if isinstance(value, dict):
            assert_features_match(got[key], value, where)
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), where
        else:
            assert got[key] == value, where


def sync_v2(database, publisher: AssetPublisher, path=V2) -> None:
    """Commit and publish the changes to the listing at ``path`` (v1 -> v2, or back: 90 either
    way), as ``sync`` does, on ``publisher``."""
    db, schema = database

    async def scenario():
        service = SyncService(open_store(db, schema=schema), publisher)
        await service.start()
        try:
            result = await service.apply(listing(path))
        finally:
            await service.close()
        assert (result.written, result.published) == (N_DIFF, N_DIFF)

    asyncio.run(scenario())


def watch_args(database) -> list[str]:
    return [] if database[0] is None else db_args(database)


@pytest.fixture
def subscribers(monkeypatch) -> list[AssetSubscriber]:
    """Every AssetSubscriber the in-process ``watch`` makes, to look at its cache afterwards."""
    made: list[AssetSubscriber] = []

    class Recording(AssetSubscriber):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(zmq_pubsub, "AssetSubscriber", Recording)
    return made


def warm_start_then_v2(database, endpoint, capsys, monkeypatch, subscribers, path=V2):
    """v1 is in the database. Run ``watch`` in-process; while it reads its snapshot (after
    checking the publisher has seen its subscription), commit and publish v2. Returns the
    watch's JSON lines, the snapshot it read and its subscriber."""
    publisher = AssetPublisher(endpoint)
    snapshots: list[list] = []

    def hooked(original):
        async def load_snapshot(self):
            # The subscription must reach the publisher before the database is read: a
            # watch that read first would not be subscribed yet, and this wait would fail.
            assert publisher.wait_for_subscribers(1, WAIT), "database read before subscribing"
            rows = await original(self)
            snapshots.append(rows)
            # The race the order closes: committed after the snapshot, published before the
            # watch polls. It must arrive as a message, queued until the snapshot is applied.
            await asyncio.to_thread(sync_v2, database, publisher, path)
            return rows

        return load_snapshot

    for cls in STORES:
        monkeypatch.setattr(cls, "load_snapshot", hooked(cls.load_snapshot))
    try:
        code, out, err = run_cli(
            capsys,
            "watch",
            "--sub",
            endpoint,
            *watch_args(database),
            "--messages",
            "1",
            "--idle-timeout",
            str(WAIT),
            "--json",
        )
    finally:
        publisher.close()
    assert code == 0, err
    assert len(snapshots) == 1 and len(subscribers) == 1
    return [json.loads(line) for line in out.strip().splitlines()], snapshots[0], subscribers[0]


def check_warm_start_then_v2(database, lines, snapshot, subscriber) -> None:
    # the snapshot is v1, and the first line is its features, printed before any message
    assert len(snapshot) == 3000 and not any(r.removed for r in snapshot)
    assert len(lines) == 2
    first, second = lines
    assert (first["warm_start"], first["received"]) == (3000, 0)
    assert first["assets"] == KNOWN["v1"]["count"] and first["removed"] == 0
    assert first["by_exchange"] == KNOWN["v1"]["by_exchange"]
    assert first["margin"]["margin_requirement_short"]["count"] == 3000
    # then the v2 message, applied on top: the cache is the database, asset for asset
    assert second["received"] == N_DIFF and "warm_start" not in second
    assert subscriber.messages == 1
    rows = load_db(database)
    assert len(rows) == 3000 + len(DIFF["added"])
    assert_cache_equals_database(subscriber, rows)
    want = compute_features(database_records(database))
    assert want["assets"] == KNOWN["v2"]["count"] and want["removed"] == len(DIFF["removed"])
    assert_features_match(compute_features(subscriber.records()), want)
    assert_features_match({k: v for k, v in second.items() if k != "received"}, want)


# ------------------------------------------------------------------------------------ tests


def test_watch_warm_starts_and_equals_the_database(database, pub_endpoint, capsys, monkeypatch, subscribers):
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *db_args(database), "--pub", pub_endpoint)
    assert code == 0, err  # nobody subscribed: v1 is only in the database
    lines, snapshot, subscriber = warm_start_then_v2(database, pub_endpoint, capsys, monkeypatch, subscribers)
    check_warm_start_then_v2(database, lines, snapshot, subscriber)
    assert _feature_rows(database) == 1  # stored per message; the warm start is printed only


def test_watch_warm_starts_from_the_default_database(
    pub_endpoint, capsys, monkeypatch, subscribers, tmp_path
):
    """No --db: the same default SQLite file as ``sync`` (under $XDG_DATA_HOME)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), "--pub", pub_endpoint)
    assert code == 0, err
    assert (tmp_path / "xdg" / "shmpipe" / "assets.sqlite").exists()
    default = (None, None)
    lines, snapshot, subscriber = warm_start_then_v2(default, pub_endpoint, capsys, monkeypatch, subscribers)
    check_warm_start_then_v2(default, lines, snapshot, subscriber)


def test_warm_start_holds_the_removed_assets(database, pub_endpoint, capsys, monkeypatch, subscribers):
    """A snapshot with removed assets (after v2) keeps them, flagged, as a message would; then
    v1 again (the removed come back, v2's additions go) and the cache still equals the database."""
    for path in (V1, V2):
        code, _, err = run_cli(
            capsys, "sync", "--from-file", str(path), *db_args(database), "--pub", pub_endpoint
        )
        assert code == 0, err
    lines, snapshot, subscriber = warm_start_then_v2(
        database, pub_endpoint, capsys, monkeypatch, subscribers, path=V1
    )
    assert {r.id for r in snapshot if r.removed} == set(DIFF["removed"])
    first, second = lines
    assert (first["warm_start"], first["assets"], first["removed"]) == (
        3000 + len(DIFF["added"]),
        KNOWN["v2"]["count"],
        len(DIFF["removed"]),
    )
    assert second["received"] == N_DIFF
    assert second["removed"] == len(DIFF["added"]) and second["assets"] == KNOWN["v1"]["count"]
    assert_cache_equals_database(subscriber, load_db(database))
    assert_features_match(
        compute_features(subscriber.records()), compute_features(database_records(database))
    )


def test_no_warm_start_caches_only_the_changes(database, pub_endpoint, capsys, monkeypatch, subscribers):
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *db_args(database), "--pub", pub_endpoint)
    assert code == 0, err

    async def no_snapshot(self):
        raise AssertionError("--no-warm-start read the database's assets")

    for cls in STORES:
        monkeypatch.setattr(cls, "load_snapshot", no_snapshot)
    publisher = AssetPublisher(pub_endpoint)
    failures: list[BaseException] = []

    def v2_once_subscribed():
        try:
            assert publisher.wait_for_subscribers(1, WAIT)  # the XPUB handshake
            sync_v2(database, publisher)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            failures.append(exc)

    thread = threading.Thread(target=v2_once_subscribed)
    thread.start()
    try:
        code, out, err = run_cli(
            capsys,
            "watch",
            "--sub",
            pub_endpoint,
            *db_args(database),
            "--no-warm-start",
            "--messages",
            "1",
            "--idle-timeout",
            str(WAIT),
            "--json",
        )
    finally:
        thread.join(WAIT)
        publisher.close()
    assert not thread.is_alive() and not failures, failures
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 1 and lines[0]["received"] == N_DIFF and "warm_start" not in lines[0]
    (subscriber,) = subscribers
    assert subscriber.ids() == DIFF_IDS  # only the v2 changes, not the 3010 assets of the database
    assert len(load_db(database)) == 3000 + len(DIFF["added"])
    features = compute_features(subscriber.records())
    assert features["removed"] == len(DIFF["removed"])
    assert features["assets"] == len(DIFF["added"]) + len(DIFF["changed"])


def test_watch_process_warm_start_then_sync(database, pub_endpoint, capsys):
    """``watch`` in its own process, then ``shmpipe assets sync`` of v2 waiting for it."""
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *db_args(database), "--pub", pub_endpoint)
    assert code == 0, err
    v1_features = compute_features(database_records(database))
    watch = spawn_cli(
        "assets",
        "watch",
        "--sub",
        pub_endpoint,
        *db_args(database),
        "--messages",
        "1",
        "--idle-timeout",
        str(WAIT),
        "--json",
    )
    try:
        lines = LineReader(watch.stdout)
        first = json.loads(lines.next(WAIT))  # the warm start: printed once the snapshot is in
        assert (first["warm_start"], first["received"]) == (3000, 0)
        assert_features_match(
            {k: v for k, v in first.items() if k not in ("warm_start", "received")}, v1_features
        )
        code, out, err = run_cli(
            capsys,
            "sync",
            "--from-file",
            str(V2),
            *db_args(database),
            "--pub",
            pub_endpoint,
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(WAIT),
            "--json",
        )
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1])["published"] == N_DIFF
        second = json.loads(lines.next(WAIT))
        watch.wait(timeout=WAIT)
    finally:
        _stop(watch)
    assert watch.returncode == 0, watch.stderr.read()
    assert second["received"] == N_DIFF
    assert_features_match(
        {k: v for k, v in second.items() if k != "received"}, compute_features(database_records(database))
    )
    assert _feature_rows(database) == 1


def test_subscriber_knows_whether_a_publisher_is_there():
    with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
        endpoint = f"ipc://{tmp}/pub-{uuid.uuid4().hex[:8]}"
        alone = AssetSubscriber(endpoint, await_connection=WAIT)  # refused: answers at once
        try:
            assert alone.connected is False
        finally:
            alone.close()
        publisher = AssetPublisher(endpoint)
        subscriber = AssetSubscriber(endpoint, await_connection=WAIT)
        try:
            assert subscriber.connected is True
            assert publisher.wait_for_subscribers(1, WAIT)
        finally:
            subscriber.close()
            publisher.close()
    plain = AssetSubscriber("ipc:///nonexistent-shmpipe-dir/pub")  # no wait: connected stays unknown
    try:
        assert plain.connected is None
    finally:
        plain.close()
