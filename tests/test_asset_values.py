"""Values at the edges, on SQLite and on the local PostgreSQL.

Both databases accept every asset the listing accepts (the listing rejects, per asset, what
either would refuse: see test_asset_listing.py), store the same canonical form of it, and read
it back so that the next cycle finds nothing changed: no phantom changes from values jsonb
normalises (1e16, 30.0, -0.0). And the service publishes only what the upsert actually changed.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import test_asset_sync
from shmpipe_services.asset_sync.canonical import canonical_json
from shmpipe_services.asset_sync.listing import parse_listing
from shmpipe_services.asset_sync.service import SyncService
from shmpipe_services.asset_sync.source_map import SourceMap
from shmpipe_services.asset_sync.store_factory import open_store
from test_asset_codec import _asset
from test_asset_sync import V1, Recorder, db_args, last_json, load_db, run_cli

database = test_asset_sync.database
pub_endpoint = test_asset_sync.pub_endpoint


def _edge_listing_text() -> str:
    """Assets with every kind of value validation lets through, as raw JSON text (some numbers
    cannot be written by json.dumps in the form under test)."""
    docs = [
        _asset(**{"id": str(uuid.uuid4()), "symbol": f"E{i}", **fields})
        for i, fields in enumerate(
            [
                {"margin_requirement_long": "3.4e38", "margin_requirement_short": "1.2e-38"},
                {"margin_requirement_long": "-0.0", "margin_requirement_short": "+5"},
                {"name": "Ünïcødé 漢字 한글 😀 \u2028 «quotes» \\u0000 as text"},
                {"name": None, "attributes": None},
                {"name": "", "attributes": []},
                {"attributes": ["x" * 1000, "ümlaut"]},
                {"extra": {"nested": [True, None, {"deep": "value"}], "ünï": "cødé"}},
                {"symbol": "S" * 100},
                {"id": "{" + str(uuid.uuid4()).upper() + "}"},
                {"id": "urn:uuid:" + uuid.uuid4().hex},
            ]
        )
    ]
    body = json.dumps(docs, ensure_ascii=False)
    # numbers jsonb normalises: each would be a phantom change if compared as Python text
    extra = (
        '"maintenance_margin_requirement": 1e16, "n": [1e16, 30.0, -0.0, 1.0e2, 1.5e300, 0.1, '
        "1.5e-7, 123456789012345678901234567890, 1e-400]"
    )
    phantom = json.dumps(_asset(id=str(uuid.uuid4()), symbol="PHANTOM"))
    phantom = phantom.replace('"maintenance_margin_requirement": 30', extra)
    return body[:-1] + ", " + phantom + "]"


def test_edge_values_are_stored_by_both_databases_and_never_change_again(
    database, pub_endpoint, capsys, tmp_path
):
    listing_file = tmp_path / "edges.json"
    listing_file.write_text(_edge_listing_text(), encoding="utf-8")
    listing = parse_listing(listing_file.read_bytes())
    assert not listing.rejected, listing.rejected
    sync = ["sync", "--from-file", str(listing_file), *db_args(database), "--pub", pub_endpoint, "--json"]

    code, out, err = run_cli(capsys, *sync)
    assert code == 0, err
    first = last_json(out)
    assert first["written"] == first["added"] == len(listing.docs)

    # each sync is a new service, warmed from the database: it compares what the database
    # returned (jsonb's own text on PostgreSQL) with the fresh listing
    for _ in range(2):
        code, out, err = run_cli(capsys, *sync)
        assert code == 0, err
        again = last_json(out)
        assert (again["changed"], again["written"], again["published"]) == (0, 0, 0), again

    rows = load_db(database)
    assert {i: canonical_json(r.doc) for i, r in rows.items()} == {
        d["id"]: canonical_json(d) for d in listing.docs
    }


def test_only_what_the_upsert_changed_is_published(database):
    """The service's cache says five assets differ, the database already holds them: the
    upsert's WHERE writes nothing, and nothing is published (the cache was behind)."""
    db, schema = database
    docs = parse_listing(V1.read_bytes()).docs
    recorder = Recorder()

    async def scenario():
        service = SyncService(open_store(db, schema=schema), recorder)
        await service.start()
        try:
            await service.apply(SourceMap().delta(docs, complete=True))
            stale = sorted(service.cache)[:5]
            for asset_id in stale:  # as if another writer had already committed v1 for these
                service.cache[asset_id].doc["name"] = "stale belief"
            result = await service.apply(SourceMap().delta(docs, complete=True))
            return result, {asset_id: service.cache[asset_id].doc for asset_id in stale}
        finally:
            await service.close()

    result, healed = asyncio.run(scenario())
    assert (result.changed, result.written, result.published) == (5, 0, 0)
    assert len(recorder.messages) == 1  # v1's first publish only
    by_id = {d["id"]: d for d in docs}
    assert all(doc == by_id[asset_id] for asset_id, doc in healed.items())  # the cache caught up
