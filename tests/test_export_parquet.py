"""``shmpipe export parquet``: the tables opened with pandas, polars and DuckDB (no shmpipe code), and a
book rebuilt from the rows alone ending with the fixtures' known top 5, exactly, as decimal text."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from export_helpers import (
    T0,
    decimal_of,
    known_top5,
    recv_ns,
    run_cli,
    venue_lines,
    write_wslog,
)

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

SAMPLE = Path(__file__).parent / "fixtures" / "capture" / "capture_sample.wslog"
TABLES = ("book_changes", "snapshots", "trades", "ticks")


def export(tmp_path: Path, *inputs, extra=(), out_name="out") -> tuple[Path, dict]:
    out = tmp_path / out_name
    code, stdout, stderr = run_cli("export", "parquet", *map(str, inputs), "--out", str(out), "--json", *extra)
    assert code == 0, stderr
    return out, json.loads(stdout)


def rebuild(book_rows: pd.DataFrame) -> dict[str, tuple[dict, dict]]:
    """Books from the rows alone, in ``seq`` order: a snapshot begin (and an invalidate) empties the
    symbol's book, a set puts the level, size 0 deletes it. Prices and sizes are the exact decimals."""
    books: dict[str, tuple[dict, dict]] = defaultdict(lambda: ({}, {}))
    for row in book_rows.sort_values("seq").itertuples():
        bids, asks = books[row.symbol]
        if row.action in ("snapshot_begin", "invalidate"):
            bids.clear()
            asks.clear()
        elif row.action == "set":
            side = bids if row.side == "bid" else asks
            price = decimal_of(row.price_int, row.price_decimals)
            if row.size_int == 0:
                side.pop(price, None)
            else:
                side[price] = decimal_of(row.size_int, row.size_decimals)
    return books


def top(side: dict, n: int, best_high: bool) -> list:
    return [(p, side[p]) for p in sorted(side, reverse=best_high)[:n]]


@pytest.mark.parametrize("venue", ["kraken", "coinbase"])
def test_book_rebuilt_from_parquet_rows_ends_with_the_known_top5(venue, tmp_path):
    capture = write_wslog(tmp_path / f"{venue}.wslog", venue, venue_lines(venue))
    out, summary = export(tmp_path, capture)
    rows = pd.read_parquet(out / "book_changes")
    assert len(rows) == summary["rows"]["book_changes"]
    books = rebuild(rows)
    invalidated = set(rows.loc[rows["action"] == "invalidate", "symbol"])
    if venue == "coinbase":
        # the fixture's connection-wide sequence gap (line 2601): capture can no longer vouch for
        # any book of the connection, and the rows say so for each (the book is rebuilt from empty)
        assert invalidated == set(known_top5(venue))
    else:
        assert not invalidated
    for symbol, want in known_top5(venue).items():
        bids, asks = books[symbol]
        assert top(bids, 5, True) == want["bids"], symbol
        assert top(asks, 5, False) == want["asks"], symbol
        if symbol not in invalidated:  # an invalidated book holds only the levels changed since
            assert (len(bids), len(asks)) == want["levels"], symbol
    if venue == "kraken":
        # depth 10: levels pushed out of the book come as implied deletes, so the rows alone suffice
        assert rows["implied_delete"].sum() > 0
    # one last_in_message per venue book message and symbol (an invalidate record is capture's own
    # word about the connection, written ahead of the frame, and is marked last by itself)
    changes = rows[rows["action"] != "invalidate"]
    assert changes["last_in_message"].sum() == changes.groupby(["symbol", "message"]).ngroups


def test_every_table_opens_in_pandas_polars_and_duckdb_with_the_summary_counts(tmp_path):
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    out, summary = export(tmp_path, SAMPLE)
    assert summary["rows"]["book_changes"] > 0 and summary["rows"]["ticks"] > 0
    for table in TABLES:
        want = summary["rows"][table]
        if want == 0:
            assert not (out / table).exists()
            continue
        files = f"{out}/{table}/**/*.parquet"
        assert len(pd.read_parquet(out / table)) == want, table
        assert polars.scan_parquet(files, hive_partitioning=True).select(polars.len()).collect().item() == want
        assert con.execute(f"select count(*) from read_parquet('{files}', hive_partitioning=true)").fetchone()[0] \
            == want
    # typed columns: exchange/symbol names, UTC timestamps, exact integers beside the f64
    book = polars.read_parquet(f"{out}/book_changes/**/*.parquet", hive_partitioning=True)
    assert str(book.schema["event_time"]) == "Datetime(time_unit='ns', time_zone='UTC')"
    assert set(book["exchange"].unique()) == {"coinbase", "kraken"}
    assert set(book["symbol"].unique()) == {"BTC-USD", "ETH-USD", "BTC/USD", "ETH/USD"}
    sets = book.filter(polars.col("action") == "set")
    assert sets["price_int"].null_count() == 0
    assert ((sets["price_int"] / 10.0 ** sets["price_decimals"].cast(polars.Float64) - sets["price"]).abs()
            < 1e-9 * sets["price"]).all()
    first = con.execute(f"select min(recv_time) from read_parquet('{out}/book_changes/**/*.parquet')").fetchone()[0]
    assert first.year == 2024 and first.tzinfo is not None
    instruments = pd.read_parquet(out / "instruments.parquet")
    kraken = instruments[(instruments.exchange == "kraken") & (instruments.symbol == "BTC/USD")].iloc[0]
    assert (kraken.price_decimals, kraken.size_decimals, kraken.depth, kraken.tick_size, kraken.lot_size) == \
        (1, 8, 10, "0.1", "0.00000001")
    snapshots = pd.read_parquet(out / "snapshots")
    assert len(snapshots) == summary["rows"]["snapshots"] == 4     # one per book symbol in the first 10 s
    assert (snapshots.bid_levels > 0).all() and (snapshots.ask_levels > 0).all()


def test_gap_flags_reach_the_rows(tmp_path):
    """The Coinbase fixture skips sequence_num 2600: the record after it carries gap_before."""
    capture = write_wslog(tmp_path / "cb.wslog", "coinbase", venue_lines("coinbase"))
    out, summary = export(tmp_path, capture)
    assert summary["gaps"] == {"sequence": 1}
    book = pd.read_parquet(out / "book_changes")
    ticks = pd.read_parquet(out / "ticks")
    flagged = int(book.gap_before.sum()) + int(ticks.gap_before.sum())
    assert flagged >= 1
    assert int(book.gap_before.sum()) == summary["gap_flagged_book_records"]
    first_gap = min(book[book.gap_before].recv_time.min(), ticks[ticks.gap_before].recv_time.min())
    assert first_gap == pd.Timestamp(recv_ns(2600), tz="UTC")      # line 2601, the first after the gap


def test_from_opens_with_the_book_as_it_stood_and_ends_the_same(tmp_path):
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", venue_lines("kraken"))
    start = recv_ns(1500)
    out, summary = export(tmp_path, capture, extra=("--from", str(start)))
    assert summary["messages_before_window"] == 1500
    rows = pd.read_parquet(out / "book_changes")
    assert rows.recv_time.min() == pd.Timestamp(start, tz="UTC")
    opening = rows.sort_values("seq").groupby("symbol").head(1)
    assert (opening.action == "snapshot_begin").all() and opening.synthetic.all()
    books = rebuild(rows)
    for symbol, want in known_top5("kraken").items():
        assert top(books[symbol][0], 5, True) == want["bids"]
        assert top(books[symbol][1], 5, False) == want["asks"]


def test_until_and_symbols_narrow_the_export(tmp_path):
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", venue_lines("kraken"))
    end = recv_ns(100)
    out, summary = export(tmp_path, capture, extra=("--until", str(end), "--symbols", "kraken:ETH/USD,DOGE/USD"))
    rows = pd.read_parquet(out / "book_changes")
    assert set(rows.symbol) == {"ETH/USD"}
    assert rows.recv_time.max() < pd.Timestamp(end, tz="UTC")
    assert summary["unmatched_symbols"] == ["DOGE/USD"]
    assert summary["messages"] == 100


def test_from_as_iso_text_is_utc(tmp_path):
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", venue_lines("kraken"))
    _out, by_text = export(tmp_path, capture, extra=("--from", "2024-06-11T14:30:15Z"), out_name="a")
    _out, by_ns = export(tmp_path, capture, extra=("--from", str(T0 + 15_000_000_000)), out_name="b")
    assert by_text["rows"] == by_ns["rows"] and by_text["messages_before_window"] > 0



def test_tick_journal_files_become_ticks_rows_with_the_registry_names(tmp_path):
    """A journal names symbols by the host registry's ids (the tests' session registry here)."""
    import numpy as np

    from shmpipe import symbols
    from shmpipe.journal import TickJournal
    from shmpipe.records import SOURCE_KRAKEN, TICK, TICK_FLAG_QUOTE, TICK_FLAG_TRADE
    sid = symbols.register("kraken", "XBT/EUR")
    other = symbols.register("kraken", "ETH/EUR")
    ticks = np.zeros(6, TICK)
    ticks["timestamp_ns"] = T0 + np.arange(6) * 1_000_000_000
    ticks["symbol_id"] = [sid, sid, sid, other, other, sid]
    ticks["bid"], ticks["ask"], ticks["volume"] = 60000.5, 60001.0, 0.25
    ticks["source"] = SOURCE_KRAKEN
    ticks["flags"] = [TICK_FLAG_QUOTE, TICK_FLAG_TRADE, TICK_FLAG_QUOTE, TICK_FLAG_QUOTE, TICK_FLAG_QUOTE,
                      TICK_FLAG_QUOTE]
    with TickJournal(tmp_path / "journal", clock=lambda: T0) as journal:
        journal.append(ticks)
    out, summary = export(tmp_path, tmp_path / "journal", extra=("--symbols", "XBT/EUR", "--until",
                                                                 str(T0 + 5_000_000_000)))
    assert summary["journal_ticks"] == summary["rows"]["ticks"] == 3     # the 6th is at --until
    rows = pd.read_parquet(out / "ticks")
    assert set(rows.symbol) == {"XBT/EUR"} and set(rows.exchange) == {"kraken"}
    assert set(rows.origin) == {"journal"} and rows.recv_time.isna().all()
    assert rows.kind.tolist().count("trade") == 1
    assert (rows.bid == np.float32(60000.5)).all()


def test_a_compressed_capture_exports_the_same_rows(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    capture = write_wslog(tmp_path / "kraken.wslog", "kraken", venue_lines("kraken")[:400])
    raw = capture.read_bytes()
    packed = tmp_path / "zst" / "kraken.wslog.zst"
    packed.parent.mkdir()
    packed.write_bytes(zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw))
    _out, plain = export(tmp_path, capture, out_name="plain")
    _out, compressed = export(tmp_path, packed, out_name="compressed")
    assert compressed["rows"] == plain["rows"] and compressed["entries"] == plain["entries"] == 401


def test_rows_are_partitioned_by_the_utc_day_they_were_received(tmp_path):
    from shmpipe.wslog import encode_entry
    from shmpipe.wslog.format import marker_payload
    midnight = 1718150400_000_000_000          # 2024-06-12T00:00:00Z
    start = midnight - 10_000_000_000          # frames from the 1000th on arrive on the 12th
    capture = tmp_path / "kraken.wslog"
    with open(capture, "wb") as f:
        f.write(encode_entry(start, 0, marker_payload(2, "connect", "ws://x")))
        for i, line in enumerate(venue_lines("kraken")):
            f.write(encode_entry(start + 1000 + i * 10_000_000, 2, line))
    out, summary = export(tmp_path, capture)
    folder = out / "book_changes" / "venue=kraken" / "instrument=BTC_USD"
    assert sorted(p.name for p in folder.iterdir()) == ["date=2024-06-11", "date=2024-06-12"]
    total = 0
    for day in ("2024-06-11", "2024-06-12"):
        for instrument in ("BTC_USD", "ETH_USD"):
            part = pd.read_parquet(out / "book_changes" / "venue=kraken" / f"instrument={instrument}" / f"date={day}")
            assert (part.recv_time.dt.strftime("%Y-%m-%d") == day).all()
            assert part.seq.is_monotonic_increasing
            total += len(part)
    assert total == summary["rows"]["book_changes"]
