"""The mass-removal guard, on SQLite and on the local PostgreSQL.

With v1 (3,000 assets) in the database, an empty listing and then one with 60 % of the assets
missing are refused: every row is kept, nothing is published (not even assets an earlier cycle
left pending), and the command says how many would have been removed. ``--allow-mass-removal``
lets the shrunken listing through; the limits are configurable. The same holds when the fetcher
feeds a separate ``serve`` process.
"""

from __future__ import annotations

import asyncio
import json
import tempfile

import pytest
import test_asset_sync
from shmpipe_services.asset_sync.listing import parse_listing
from shmpipe_services.asset_sync.removal_guard import MassRemovalRefused, RemovalGuard
from shmpipe_services.asset_sync.service import SyncError, SyncService
from shmpipe_services.asset_sync.source_map import SourceMap
from shmpipe_services.asset_sync.store_factory import open_store
from test_asset_outbox import FailingRecorder, pending_ids
from test_asset_sync import (
    V1,
    WAIT,
    LineReader,
    _stop,
    db_args,
    last_json,
    load_db,
    load_db_async,
    run_cli,
    spawn_cli,
)

database = test_asset_sync.database
pub_endpoint = test_asset_sync.pub_endpoint

V1_DOCS = json.loads(V1.read_bytes())
KEPT = 1200  # 40 % of v1: the shrunken listing misses 1,800 assets
SHRUNKEN_REMOVALS = len(V1_DOCS) - KEPT


@pytest.fixture
def listings(tmp_path):
    """Paths of the empty listing and of the shrunken one."""
    empty, shrunken = tmp_path / "empty.json", tmp_path / "shrunken.json"
    empty.write_text("[]")
    shrunken.write_text(json.dumps(V1_DOCS[:KEPT]))
    return empty, shrunken


def delta_of(path, **kwargs):
    listing = parse_listing(path.read_bytes())
    return SourceMap().delta(listing.docs, complete=True, fetched=listing.fetched, **kwargs)


def test_refused_listings_keep_every_row_and_publish_nothing(database, listings):
    """The service itself, with a recorder as publisher: fed [] and then the shrunken listing it
    refuses both, before writing or publishing anything, even what an earlier cycle left pending."""
    db, schema = database
    empty, shrunken = listings
    recorder = FailingRecorder()

    async def scenario():
        service = SyncService(open_store(db, schema=schema), recorder)
        await service.start()
        try:
            await service.apply(delta_of(V1))
            # a publish fails after a commit: 5 assets stay pending, to be published first next time
            recorder.fail_next = 1
            five = [{**d, "tradable": not d["tradable"]} for d in parse_listing(V1.read_bytes()).docs[:5]]
            with pytest.raises(SyncError):
                await service.apply(SourceMap().delta(five, complete=False))
            pending = await pending_ids(database)
            before = await load_db_async(database)

            with pytest.raises(
                MassRemovalRefused, match="the listing is empty; applying it would mark all 3000"
            ):
                await service.apply(delta_of(empty))
            with pytest.raises(
                MassRemovalRefused, match=f"would mark {SHRUNKEN_REMOVALS} of 3000 assets removed"
            ):
                await service.apply(delta_of(shrunken))
            assert await load_db_async(database) == before
            assert await pending_ids(database) == pending == {d["id"] for d in five}
            assert not any(c.removed for c in service.cache.values())  # the cache did not move
        finally:
            await service.close()

    asyncio.run(scenario())
    assert [len(m) for m in recorder.messages] == [3000]  # v1 only: the refused cycles published nothing


def test_cli_refuses_with_a_one_line_message_and_allow_lets_it_through(
    database, pub_endpoint, listings, capsys
):
    empty, shrunken = listings
    common = [*db_args(database), "--pub", pub_endpoint, "--json"]
    code, _, err = run_cli(capsys, "sync", "--from-file", str(V1), *common)
    assert code == 0, err
    before = load_db(database)

    code, out, err = run_cli(capsys, "sync", "--from-file", str(empty), *common)
    assert (code, out) == (1, "")
    assert err.startswith("shmpipe assets: refused: the listing is empty") and len(err.splitlines()) == 1
    assert "all 3000 listed assets removed" in err and "--allow-mass-removal" in err

    code, out, err = run_cli(capsys, "sync", "--from-file", str(shrunken), *common)
    assert (code, out) == (1, "")
    assert err == (
        f"shmpipe assets: refused: the listing would mark {SHRUNKEN_REMOVALS} of 3000 assets removed, "
        "more than the limit of 150 (the larger of 5 % of them and 100). Nothing was written or "
        "published (--allow-mass-removal applies it)\n"
    )
    assert load_db(database) == before

    code, out, err = run_cli(capsys, "sync", "--from-file", str(shrunken), *common, "--allow-mass-removal")
    assert code == 0, err
    line = last_json(out)
    assert (line["removed"], line["written"], line["published"]) == ((SHRUNKEN_REMOVALS,) * 3)
    rows = load_db(database)
    assert sum(r.removed for r in rows.values()) == SHRUNKEN_REMOVALS and len(rows) == 3000


@pytest.mark.parametrize(
    "flags, allowed",
    [
        (["--max-removals", str(SHRUNKEN_REMOVALS)], True),  # exactly at the limit: allowed
        (["--max-removals", str(SHRUNKEN_REMOVALS - 1)], False),
        (["--max-removal-share", "0.6"], True),  # 60 % of 3000 = 1800
        (["--max-removal-share", "0.59"], False),
    ],
)
def test_limits_are_configurable(tmp_path, pub_endpoint, listings, capsys, flags, allowed):
    _, shrunken = listings
    common = ["--db", str(tmp_path / "a.sqlite"), "--pub", pub_endpoint, "--json"]
    assert run_cli(capsys, "sync", "--from-file", str(V1), *common)[0] == 0
    code, out, err = run_cli(capsys, "sync", "--from-file", str(shrunken), *common, *flags)
    assert code == (0 if allowed else 1), err
    assert ("refused" in err) is not allowed


@pytest.mark.parametrize("flag, value", [("--max-removal-share", "5"), ("--max-removals", "-1")])
def test_bad_limits_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(capsys, "sync", "--from-file", str(V1), flag, value)
    assert info.value.code == 2 and flag in capsys.readouterr().err


def test_guard_arithmetic():
    guard = RemovalGuard()
    assert (guard.limit(0), guard.limit(2000), guard.limit(2001), guard.limit(100_000)) == (
        100,
        100,
        100,
        5000,
    )
    guard.check(removing=100, listed=10, fetched=1, complete=True)  # small databases: 100 always
    with pytest.raises(MassRemovalRefused):
        guard.check(removing=5001, listed=100_000, fetched=94_999, complete=True)
    with pytest.raises(MassRemovalRefused, match="empty"):
        guard.check(removing=0, listed=0, fetched=0, complete=True)
    guard.check(removing=0, listed=0, fetched=0, complete=False)  # a filtered listing removes nothing
    RemovalGuard(allow=True).check(removing=5, listed=5, fetched=0, complete=True)
    with pytest.raises(ValueError):
        RemovalGuard(max_share=1.5)


def test_serve_refuses_a_fetchers_shrunken_listing_unless_the_fetcher_allows_it(
    database, pub_endpoint, listings, capsys
):
    """The fetcher -> serve hand-off: the service's guard refuses; the fetcher's
    --allow-mass-removal travels with its delta and lets that one through."""
    _, shrunken = listings
    with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
        socket_path = f"{tmp}/sync.sock"
        service = spawn_cli(
            "assets", "serve", "--listen", socket_path, *db_args(database), "--pub", pub_endpoint, "--json"
        )
        try:
            lines = LineReader(service.stdout)
            assert json.loads(lines.next(WAIT))["ready"]
            fetch = ["sync", "--to-service", socket_path, "--json", "--from-file"]
            code, _, err = run_cli(capsys, *fetch, str(V1))
            assert code == 0, err
            code, out, err = run_cli(capsys, *fetch, str(shrunken))
            assert (code, out) == (1, "") and len(err.splitlines()) == 1
            assert f"refused: the listing would mark {SHRUNKEN_REMOVALS} of 3000 assets removed" in err
            assert not any(r.removed for r in load_db(database).values())
            code, out, err = run_cli(capsys, *fetch, str(shrunken), "--allow-mass-removal")
            assert code == 0, err
            assert last_json(out)["removed"] == SHRUNKEN_REMOVALS
        finally:
            _stop(service)
        assert service.returncode == 0
    assert sum(r.removed for r in load_db(database).values()) == SHRUNKEN_REMOVALS
