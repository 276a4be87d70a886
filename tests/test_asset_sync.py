"""The asset-sync pipeline end to end, on SQLite and on the local PostgreSQL.

v1, then v2, then v2 again, served over HTTP: the first sync inserts everything, the second
writes exactly alpaca_assets_diff.json, the third writes and publishes nothing, and a ZeroMQ
subscriber's cache equals the database. Plus: bad input changes nothing, a database that drops
the connection mid-batch loses and duplicates nothing, and the fetcher -> ``serve`` hand-off
over the Unix socket works across processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from shmpipe.asset_codec import ASSET_FLAG_REMOVED, record_id
from shmpipe_services.asset_sync.delta_wire import AssetDelta, decode_delta, encode_delta
from shmpipe_services.asset_sync.features import compute_features
from shmpipe_services.asset_sync.listing import parse_assets_json, to_records
from shmpipe_services.asset_sync.reconnect import ReconnectPolicy
from shmpipe_services.asset_sync.service import SyncError, SyncService
from shmpipe_services.asset_sync.source_map import SourceMap
from shmpipe_services.asset_sync.store_factory import open_store
from shmpipe_services.asset_sync.store_sqlite import SqliteStore
from shmpipe_services.asset_sync.zmq_pubsub import AssetSubscriber
from shmpipe_tools.cli import main as shmpipe_main

from test_asset_fetch import Script, serve  # the same local HTTP server  # noqa: E402

ASSETS = Path(__file__).parent / "fixtures" / "assets"
V1, V2 = ASSETS / "alpaca_assets_v1.json", ASSETS / "alpaca_assets_v2.json"
DIFF = json.loads((ASSETS / "alpaca_assets_diff.json").read_text())
KNOWN = json.loads((ASSETS / "known_answers_assets.json").read_text())["alpaca_assets"]
WAIT = 15.0  # upper bound for any single wait on a message or a process


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """(--db value, --schema value or None) for an empty database that is removed afterwards."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'assets.sqlite'}", None
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"asset_test_{uuid.uuid4().hex[:12]}"
    yield dsn, schema
    asyncio.run(_drop_schema(dsn, schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def pub_endpoint():
    """A private ipc endpoint (short path: ipc paths are limited to ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
        yield f"ipc://{tmp}/pub"


def db_args(database) -> list[str]:
    db, schema = database
    return ["--db", db, *(["--schema", schema] if schema else [])]


async def load_db_async(database) -> dict:
    """Every row, as the store reads it, on a connection of its own (so: what is committed)."""
    db, schema = database
    store = open_store(db, schema=schema)
    await store.open()
    try:
        return await store.load_all()
    finally:
        await store.close()


def load_db(database) -> dict:
    return asyncio.run(load_db_async(database))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = shmpipe_main(["assets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def assert_cache_equals_database(subscriber: AssetSubscriber, rows: dict) -> None:
    assert subscriber.ids() == set(rows)
    ids = sorted(rows)
    expected = to_records([rows[i].doc for i in ids])
    for i, asset_id in enumerate(ids):
        if rows[asset_id].removed:
            expected[i]["flags"] |= ASSET_FLAG_REMOVED
    got = np.array([subscriber.cache[uuid.UUID(i).bytes] for i in ids], dtype=expected.dtype)
    for field in expected.dtype.names:
        if field != "updated_ns":
            np.testing.assert_array_equal(got[field], expected[field], err_msg=field)


# ------------------------------------------------------------------------------------ end to end


def test_v1_v2_v2_over_http(database, pub_endpoint, capsys):
    v1, v2 = V1.read_bytes(), V2.read_bytes()
    script = Script((200, {}, v1))
    subscriber = AssetSubscriber(pub_endpoint)
    try:
        with serve(script) as url:
            sync = [
                "sync",
                "--base-url",
                url,
                "--insecure-http",
                *db_args(database),
                "--pub",
                pub_endpoint,
                "--wait-subscribers",
                "1",
                "--wait-timeout",
                str(WAIT),
                "--json",
            ]
            code, out, err = run_cli(capsys, *sync)
            assert code == 0, err
            first = last_json(out)
            assert {
                k: first[k] for k in ("fetched", "added", "changed", "removed", "written", "published")
            } == {
                "fetched": 3000,
                "added": 3000,
                "changed": 0,
                "removed": 0,
                "written": 3000,
                "published": 3000,
            }
            assert set(first) == {"fetched", "added", "changed", "removed", "written", "published", "seconds"}
            message = subscriber.receive(WAIT)
            assert message is not None and len(message) == 3000
            rows_v1 = load_db(database)
            assert len(rows_v1) == 3000 and not any(r.removed for r in rows_v1.values())

            script.answers = [(200, {}, v2)]
            code, out, err = run_cli(capsys, *sync)
            assert code == 0, err
            second = last_json(out)
            counts = DIFF["counts"]
            n_changes = counts["added"] + counts["changed"] + counts["removed"]
            assert (second["fetched"], second["added"], second["changed"], second["removed"]) == (
                3010,
                counts["added"],
                counts["changed"],
                counts["removed"],
            )
            assert second["written"] == second["published"] == n_changes
            message = subscriber.receive(WAIT)
            assert message is not None
            published = {record_id(r): r for r in message}
            assert set(published) == set(DIFF["added"]) | set(DIFF["changed"]) | set(DIFF["removed"])
            assert {i for i, r in published.items() if r["flags"] & ASSET_FLAG_REMOVED} == set(
                DIFF["removed"]
            )

            rows_v2 = load_db(database)
            assert set(rows_v2) == set(rows_v1) | set(DIFF["added"])
            assert {i for i, r in rows_v2.items() if r.removed} == set(DIFF["removed"])
            changed = {i for i in rows_v1 if i in rows_v2 and rows_v1[i].doc != rows_v2[i].doc}
            assert changed == set(DIFF["changed"])
            # the database holds full-length strings, not the 64-byte record names
            longest = max(rows_v2.values(), key=lambda r: len(r.doc.get("name") or "".encode()))
            assert len(longest.doc["name"].encode()) == KNOWN["v2"]["max_name_bytes"]

            code, out, err = run_cli(capsys, *sync)
            assert code == 0, err
            third = last_json(out)
            assert (
                third["written"],
                third["published"],
                third["added"],
                third["changed"],
                third["removed"],
            ) == (0, 0, 0, 0, 0)
            assert load_db(database) == rows_v2
        # nothing published by the third sync: its publisher is closed, so anything sent is queued
        assert subscriber.receive(0.3) is None
        assert_cache_equals_database(subscriber, rows_v2)
        features = compute_features(subscriber.records())
        assert features["assets"] == KNOWN["v2"]["count"] and features["removed"] == counts["removed"]
        assert features["by_exchange"] == KNOWN["v2"]["by_exchange"]
        assert features["by_class"] == KNOWN["v2"]["by_class"]
        assert features["by_status"] == KNOWN["v2"]["by_status"]
        assert features["ratios"]["tradable"] == pytest.approx(KNOWN["v2"]["tradable"] / KNOWN["v2"]["count"])
    finally:
        subscriber.close()


def test_changed_fields_match_the_known_diff(tmp_path):
    """The service's per-asset field diff equals alpaca_assets_diff.json field for field."""
    published: list[np.ndarray] = []

    class Recorder:
        def publish(self, records):
            published.append(records.copy())
            return len(records)

    async def scenario():
        service = SyncService(SqliteStore(tmp_path / "a.sqlite"), Recorder())
        await service.start()
        try:
            for path in (V1, V2):
                docs = parse_assets_json(path.read_bytes())
                result = await service.apply(SourceMap().delta(docs, complete=True))
            return result
        finally:
            await service.close()

    result = asyncio.run(scenario())
    assert result.changed_fields == {i: sorted(f) for i, f in DIFF["changed"].items()}


def test_watch_cli_prints_and_stores_features(database, pub_endpoint, capsys, tmp_path):
    """``shmpipe assets watch`` in its own process, fed by a one-shot sync."""
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
        code, out, err = run_cli(
            capsys,
            "sync",
            "--from-file",
            str(V1),
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
        stdout, stderr = watch.communicate(timeout=WAIT)
    finally:
        _stop(watch)
    assert watch.returncode == 0, stderr
    features = json.loads(stdout.strip().splitlines()[-1])
    assert features["received"] == 3000 and features["by_exchange"] == KNOWN["v1"]["by_exchange"]
    assert features["margin"]["margin_requirement_short"]["count"] == 3000
    assert _feature_rows(database) == 1


def _feature_rows(database) -> int:
    db, schema = database
    if schema is None:
        with sqlite3.connect(db[len("sqlite://") :]) as conn:
            return conn.execute("SELECT count(*) FROM asset_features").fetchone()[0]

    async def count():
        import asyncpg

        conn = await asyncpg.connect(db)
        try:
            return await conn.fetchval(f'SELECT count(*) FROM "{schema}".asset_features')
        finally:
            await conn.close()

    return asyncio.run(count())


# ------------------------------------------------------------------------------------ bad input

BAD_DOCUMENTS = ["assets_truncated.json", "empty.json"]


def test_a_bad_document_is_reported_and_changes_nothing(database, pub_endpoint, capsys):
    common = [*db_args(database), "--pub", pub_endpoint, "--json"]
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *common)
    assert code == 0, err
    before = load_db(database)
    for name in BAD_DOCUMENTS:
        code, out, err = run_cli(capsys, "sync", "--from-file", str(ASSETS / "bad" / name), *common)
        assert code == 1, name
        assert out == "" and err.startswith("shmpipe assets: ") and len(err.splitlines()) == 1, (name, err)
        assert load_db(database) == before, name
    with serve(Script((404, {}, b"not here"))) as url:
        code, out, err = run_cli(
            capsys, "sync", "--base-url", url, "--insecure-http", "--retries", "1", *common
        )
    assert code == 1 and "HTTP 404" in err
    assert load_db(database) == before


def test_bad_assets_are_left_out_and_do_not_block_the_others(database, pub_endpoint, capsys, tmp_path):
    """Quarantine, on both databases: v2 arrives with one unchanged asset (AAPL) made invalid (a
    NUL in its name) and one new asset with a NaN margin. The cycle writes every other change of
    v2, keeps AAPL's row as it was (not removed), names both problems; the next clean listing
    adds the new asset."""
    common = [*db_args(database), "--pub", pub_endpoint, "--json"]
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *common)
    assert code == 0, err
    v2 = json.loads(V2.read_bytes())
    aapl = next(i for i, d in enumerate(v2) if d["symbol"] == "AAPL")
    new = next(i for i, d in enumerate(v2) if d["id"] == DIFF["added"][0])
    v2[aapl]["name"] = "Apple\x00Inc"
    v2[new]["maintenance_margin_requirement"] = float("nan")
    bad_v2 = tmp_path / "bad_v2.json"
    bad_v2.write_text(json.dumps(v2))  # NaN and \u0000 as json.dumps writes them
    before = load_db(database)

    code, out, err = run_cli(capsys, "sync", "--from-file", str(bad_v2), *common)
    assert code == 0, err
    line = last_json(out)
    counts = DIFF["counts"]
    assert (line["added"], line["changed"], line["removed"], line["rejected"]) == (
        counts["added"] - 1,
        counts["changed"],
        counts["removed"],
        2,
    )
    assert line["written"] == line["published"] == counts["added"] - 1 + counts["changed"] + counts["removed"]
    problems = err.strip().splitlines()
    assert len(problems) == 2 and "Traceback" not in err
    assert f"asset [{min(aapl, new)}] id " in problems[0] and f"asset [{max(aapl, new)}] id " in problems[1]
    assert any(f"id {v2[aapl]['id']} field 'name': contains a NUL" in p for p in problems)
    assert any(
        f"id {v2[new]['id']} field 'maintenance_margin_requirement': number NaN is refused" in p
        for p in problems
    )
    rows = load_db(database)
    assert rows[v2[aapl]["id"]] == before[v2[aapl]["id"]]  # held: neither changed nor removed
    assert v2[new]["id"] not in rows
    assert {i for i, r in rows.items() if r.removed} == set(DIFF["removed"])

    code, out, err = run_cli(capsys, "sync", "--from-file", str(V2), *common)
    assert code == 0, err
    line = last_json(out)
    assert (line["added"], line["changed"], line["removed"], line["written"]) == (1, 0, 0, 1)
    assert "rejected" not in line


# ------------------------------------------------------------------------------------ database faults


class FlakySqlite(SqliteStore):
    """Fails batches by index, after the rows went in but before COMMIT (so they must roll back)."""

    def __init__(self, path, fail_batches, times):
        super().__init__(path)
        self.fail_batches, self.times, self.calls, self.failures = set(fail_batches), times, 0, 0

    def _execute_rows(self, conn, sql, values):
        changed = super()._execute_rows(conn, sql, values)
        self.calls += 1
        if self.calls in self.fail_batches and self.failures < self.times:
            self.failures += 1
            self.fail_batches.discard(self.calls)
            self.fail_batches.add(self.calls + 1)  # the retry of this batch is the next call
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return changed


class Recorder:
    def __init__(self):
        self.messages: list[list[str]] = []

    def publish(self, records):
        self.messages.append([record_id(r) for r in records])
        return len(records)

    def ids(self) -> list[str]:
        return [i for m in self.messages for i in m]


def test_sqlite_batch_failure_is_retried_without_loss_or_duplicates(tmp_path):
    store = FlakySqlite(tmp_path / "a.sqlite", fail_batches={3}, times=2)  # batch 3 fails twice
    publisher = Recorder()
    docs = parse_assets_json(V1.read_bytes())

    async def scenario():
        service = SyncService(store, publisher, retry=ReconnectPolicy(attempts=3, base_delay=0.001))
        await service.start()
        try:
            return await service.apply(SourceMap().delta(docs, complete=True))
        finally:
            await service.close()

    result = asyncio.run(scenario())
    assert store.failures == 2
    assert result.written == result.published == 3000
    assert len(publisher.messages) == 1 and sorted(publisher.ids()) == sorted(d["id"] for d in docs)
    assert len(load_db((f"sqlite://{tmp_path / 'a.sqlite'}", None))) == 3000


def test_database_down_for_good_publishes_only_what_committed_then_catches_up(tmp_path):
    path = tmp_path / "a.sqlite"
    docs = parse_assets_json(V1.read_bytes())
    publisher = Recorder()
    store = FlakySqlite(path, fail_batches={3}, times=99)  # batch 3 never gets through

    async def scenario():
        service = SyncService(store, publisher, retry=ReconnectPolicy(attempts=3, base_delay=0.001))
        await service.start()
        with pytest.raises(SyncError, match="after 1000 of 3000 changes were committed") as info:
            await service.apply(SourceMap().delta(docs, complete=True))
        assert info.value.result.written == info.value.result.published == 1000
        assert len(service.cache) == 1000  # the cache moved only for committed batches
        store.times = 0  # the database is back
        again = await service.apply(SourceMap().delta(docs, complete=True))
        await service.close()
        return again

    again = asyncio.run(scenario())
    assert again.written == again.published == 2000 and again.added == 2000
    ids = publisher.ids()
    assert len(ids) == len(set(ids)) == 3000  # every asset published exactly once
    assert len(load_db((f"sqlite://{path}", None))) == 3000


@pytest.mark.parametrize("method", ["upsert", "copy"])
def test_postgres_connection_killed_mid_batch(postgres_dsn, method):
    """The server drops the connection inside batch 2's transaction, after its rows went in."""
    import asyncpg

    from shmpipe_services.asset_sync.store_postgres import PostgresStore

    schema = f"asset_test_{uuid.uuid4().hex[:12]}"
    killed = []

    class KilledMidBatch(PostgresStore):
        calls = 0

        async def _kill_if_due(self, conn):
            type(self).calls += 1
            if self.calls == 2 and not killed:
                admin = await asyncpg.connect(self.dsn)
                try:
                    killed.append(
                        await admin.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                    )
                finally:
                    await admin.close()

        async def _run_upsert(self, conn, records):
            status = await super()._run_upsert(conn, records)
            await self._kill_if_due(conn)
            return status

        async def _run_copy_merge(self, conn, records):
            status = await super()._run_copy_merge(conn, records)
            await self._kill_if_due(conn)
            return status

    publisher = Recorder()
    docs = parse_assets_json(V1.read_bytes())

    async def scenario():
        service = SyncService(
            KilledMidBatch(postgres_dsn, schema=schema),
            publisher,
            write_method=method,
            retry=ReconnectPolicy(attempts=5, base_delay=0.01),
        )
        await service.start()
        try:
            return await service.apply(SourceMap().delta(docs, complete=True))
        finally:
            await service.close()

    try:
        result = asyncio.run(scenario())
        assert killed == [True]
        assert result.written == result.published == 3000
        ids = publisher.ids()
        assert len(ids) == len(set(ids)) == 3000
        assert len(load_db((postgres_dsn, schema))) == 3000
    finally:
        asyncio.run(_drop_schema(postgres_dsn, schema))


# ------------------------------------------------------------------------------------ delta at source


def test_source_map_sends_only_changes_and_advances_on_commit():
    v1, v2 = parse_assets_json(V1.read_bytes()), parse_assets_json(V2.read_bytes())
    source = SourceMap()
    first = source.delta(v1, complete=True)
    assert first.full and len(first.records) == 3000
    assert source.delta(v2, complete=True).full  # not acknowledged yet: still the full listing
    source.commit(first)
    delta = source.delta(v2, complete=True)
    assert not delta.full
    ids = [AssetDelta.id_of(r) for r in delta.records]
    assert sorted(ids) == sorted(DIFF["added"] + list(DIFF["changed"]) + DIFF["removed"])
    removed = [AssetDelta.id_of(r) for r in delta.records if r["flags"] & ASSET_FLAG_REMOVED]
    assert sorted(removed) == sorted(DIFF["removed"])
    wire = decode_delta(encode_delta(delta))
    assert np.array_equal(wire.records, delta.records) and wire.docs == delta.docs
    source.commit(delta)
    assert len(source.delta(v2, complete=True).records) == 0
    # a filtered (incomplete) listing never removes anything
    assert len(source.delta(v2[:10], complete=False).records) == 0


def test_delta_wire_rejects_inconsistent_frames():
    from shmpipe.asset_codec import AssetFormatError

    docs = parse_assets_json(V1.read_bytes())[:3]
    good = encode_delta(SourceMap().delta(docs, complete=True))
    with pytest.raises(AssetFormatError):
        decode_delta(good[:-1])
    with pytest.raises(AssetFormatError):
        decode_delta(good[:100])


def test_delta_wire_validates_documents_as_the_listing_does():
    """The service's socket is a trust boundary: a delta is checked as strictly as a listing."""
    from shmpipe.asset_codec import AssetFormatError

    docs = parse_assets_json(V1.read_bytes())[:3]
    delta = SourceMap().delta(docs, complete=True, held=[str(uuid.uuid4())])
    assert decode_delta(encode_delta(delta)).held == delta.held
    delta.docs[1] = {**docs[1], "name": "a\x00b"}
    with pytest.raises(
        AssetFormatError, match=rf"asset \[1\] id {docs[1]['id']} field 'name': contains a NUL"
    ):
        decode_delta(encode_delta(delta))
    delta.docs[1], delta.held = docs[1], ["not-an-id"]
    with pytest.raises(AssetFormatError, match="held ids must be UUIDs"):
        decode_delta(encode_delta(delta))


# ------------------------------------------------------------------------------------ serve + fetcher


def _child_env() -> dict[str, str]:
    # The child must import exactly what this test process imports (installed or from the tree).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def spawn_cli(*args: str) -> subprocess.Popen:
    """``python -m shmpipe_tools.cli ARGS`` as a child process with piped text output."""
    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe_tools.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        text=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)


class LineReader:
    """Lines of a child's stdout, read by a thread, so each wait has a timeout (a select() on a
    buffered pipe would miss lines already pulled into Python's buffer)."""

    def __init__(self, stream):
        self._lines: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream):
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # EOF

    def next(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None
        if line is None:
            raise AssertionError("the child closed its stdout")
        return line


def test_fetcher_to_service_over_unix_socket(database, pub_endpoint, capsys):
    with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
        socket_path = f"{tmp}/sync.sock"
        subscriber = AssetSubscriber(pub_endpoint)
        service = spawn_cli(
            "assets",
            "serve",
            "--listen",
            socket_path,
            *db_args(database),
            "--pub",
            pub_endpoint,
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(WAIT),
            "--json",
        )
        try:
            lines = LineReader(service.stdout)
            ready = json.loads(lines.next(WAIT))  # printed after the subscriber joined
            assert ready["ready"] and ready["cached"] == 0
            script = Script(
                (200, {}, V1.read_bytes()), (200, {}, V2.read_bytes()), (200, {}, V2.read_bytes())
            )
            with serve(script) as url:
                # one fetcher process, three cycles: full listing, then deltas at the source
                code, out, err = run_cli(
                    capsys,
                    "sync",
                    "--base-url",
                    url,
                    "--insecure-http",
                    "--to-service",
                    socket_path,
                    "--interval",
                    "0",
                    "--cycles",
                    "3",
                    "--json",
                )
            assert code == 0, err
            summaries = [json.loads(line) for line in out.strip().splitlines()]
            assert [
                (s["added"], s["changed"], s["removed"], s["written"], s["published"]) for s in summaries
            ] == [(3000, 0, 0, 3000, 3000), (25, 50, 15, 90, 90), (0, 0, 0, 0, 0)]
            assert [len(subscriber.receive(WAIT)), len(subscriber.receive(WAIT))] == [3000, 90]
            service_lines = [json.loads(lines.next(WAIT)) for _ in range(3)]
            assert [s["written"] for s in service_lines] == [3000, 90, 0]
            assert_cache_equals_database(subscriber, load_db(database))
        finally:
            _stop(service)
            subscriber.close()
        assert service.returncode == 0, service.stderr.read()
        assert not Path(socket_path).exists()


def test_fetcher_reports_a_missing_service(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "sync", "--from-file", str(V1), "--to-service", str(tmp_path / "none.sock")
    )
    assert code == 1 and "sync service at" in err and out == ""
