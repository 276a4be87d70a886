"""Rows/s upserted into the asset table with each write method, for 10,000 and 100,000 synthetic assets.

    python bench/asset_upsert_bench.py [--db postgresql://postgres@127.0.0.1/test] [--sizes 10000 100000]

For each size and method, in a fresh PostgreSQL schema (dropped afterwards):
  insert: every asset is new;  update: every asset changed (a flag and the margin flipped);
  noop:   the same rows again (the WHERE clause turns them into no-ops; nothing is written).
Batches of --batch-size rows (default 500, as the sync service), one transaction each. SQLite
(upsert only) runs too, in a temporary file. The service's DEFAULT_WRITE_METHOD follows this result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from shmpipe_services.asset_sync.store import AssetRow
from shmpipe_services.asset_sync.store_sqlite import SqliteStore

EXCHANGES = ("NASDAQ", "NYSE", "ARCA", "AMEX", "BATS", "OTC")


def synthetic_assets(n: int, seed: int = 7) -> list[dict]:
    """Alpaca-shaped equities with deterministic ids, so every method sees the same data."""
    docs = []
    for i in range(n):
        docs.append(
            {
                "id": str(uuid.UUID(int=(seed << 96) | i)),
                "class": "us_equity",
                "exchange": EXCHANGES[i % len(EXCHANGES)],
                "symbol": f"S{i:07d}",
                "name": f"Synthetic Holdings {i} Common Stock"
                + (" Class A Ordinary Shares" if i % 3 == 0 else ""),
                "status": "active" if i % 11 else "inactive",
                "tradable": bool(i % 11),
                "marginable": i % 4 != 0,
                "maintenance_margin_requirement": 30 + (i % 3) * 10,
                "margin_requirement_long": str(30 + (i % 3) * 10),
                "margin_requirement_short": "30",
                "shortable": i % 5 != 0,
                "easy_to_borrow": i % 7 != 0,
                "fractionable": i % 2 == 0,
                "attributes": ["has_options"] if i % 9 == 0 else [],
            }
        )
    return docs


def changed(docs: list[dict]) -> list[dict]:
    return [
        {
            **d,
            "shortable": not d["shortable"],
            "maintenance_margin_requirement": d["maintenance_margin_requirement"] + 5,
        }
        for d in docs
    ]


async def run_phases(store, method: str, docs: list[dict], batch_size: int) -> dict[str, float]:
    now = datetime.now(timezone.utc)
    out = {}
    for phase, phase_docs in (("insert", docs), ("update", changed(docs)), ("noop", changed(docs))):
        rows = [AssetRow(d["id"], d, now) for d in phase_docs]
        written = 0
        started = time.perf_counter()
        for i in range(0, len(rows), batch_size):
            written += len(await store.write_batch(rows[i : i + batch_size], method))
        seconds = time.perf_counter() - started
        expected = 0 if phase == "noop" else len(rows)
        if written != expected:
            raise SystemExit(f"{method} {phase}: wrote {written} rows, expected {expected}")
        out[phase] = len(rows) / seconds
    return out


async def bench_postgres(dsn: str, method: str, docs: list[dict], batch_size: int) -> dict[str, float]:
    import asyncpg

    from shmpipe_services.asset_sync.store_postgres import PostgresStore

    schema = f"asset_bench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    try:
        await store.ensure_schema()
        return await run_phases(store, method, docs, batch_size)
    finally:
        await store.close()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def bench_sqlite(docs: list[dict], batch_size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.sqlite")
        await store.open()
        try:
            await store.ensure_schema()
            return await run_phases(store, "upsert", docs, batch_size)
        finally:
            await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL DSN")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        docs = synthetic_assets(n)
        runs = [] if args.no_postgres else [("postgres", m) for m in ("upsert", "copy")]
        for backend, method in [*runs, ("sqlite", "upsert")]:
            rates = (
                await bench_postgres(args.db, method, docs, args.batch_size)
                if backend == "postgres"
                else await bench_sqlite(docs, args.batch_size)
            )
            results.append(
                {
                    "assets": n,
                    "backend": backend,
                    "method": method,
                    **{f"{k}_rows_per_s": round(v) for k, v in rates.items()},
                }
            )
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"asset upsert bench: batch {args.batch_size}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}"
    )
    print(
        f"{'assets':>8} {'backend':>9} {'method':>7} "
        f"{'insert rows/s':>14} {'update rows/s':>14} {'no-op rows/s':>13}"
    )
    for r in results:
        print(
            f"{r['assets']:>8} {r['backend']:>9} {r['method']:>7} {r['insert_rows_per_s']:>14,} "
            f"{r['update_rows_per_s']:>14,} {r['noop_rows_per_s']:>13,}"
        )


if __name__ == "__main__":
    asyncio.run(main())
