"""Parquet export (pyarrow): typed tables any Parquet reader opens without shmpipe.

    OUT/book_changes/venue=V/instrument=S/date=YYYY-MM-DD/part-0.parquet   every book row
    OUT/snapshots/...     one row per snapshot (where it starts and ends, levels per side)
    OUT/trades/...        trades from the level stream (exact prices)
    OUT/ticks/...         Ticks (quotes and trades as capture's f32 record carries them)
    OUT/instruments.parquet   exchange, symbol, decimals, depth, tick and lot size (decimal text)

Partitions: ``venue`` (exchange name), ``instrument`` (the symbol with ``/`` written ``_``; the exact
name is the ``symbol`` column) and ``date``, the UTC day of the receive time. Exact decimals: ``price``
and ``size`` are f64; ``price_int`` and ``size_int`` are the same numbers as integers scaled by
10**``price_decimals`` / 10**``size_decimals`` (the registry's decimals, as the venue writes them), so
``price_int / 10**price_decimals`` is the venue's decimal exactly. They are null where the decimals are
unknown or the f64 does not land on that grid (counted in the summary as ``inexact_decimals``).
Times are ``timestamp[ns, UTC]``. Rows keep the capture's order; ``seq`` numbers them across the export.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np

from shmpipe.records import ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, SIDE_BID, TICK_FLAG_GAP_BEFORE, \
    TICK_FLAG_REPLAYED, TICK_FLAG_TRADE

from .source import ROW_GAP, ROW_IMPLIED, ROW_LAST, ROW_SNAPSHOT, ROW_SYNTHETIC, Chunk, InstrumentInfo, days_of

ROW_GROUP_ROWS = 256_000     # buffered per file before a row group is written: ~5-10 MB of book rows
ACTION_NAMES = np.array(["set", "snapshot_begin", "snapshot_end", "trade", "checksum", "invalidate"], object)
SIDE_NAMES = np.array(["bid", "ask"], object)
TABLES = ("book_changes", "snapshots", "trades", "ticks")
SOURCE_NAMES = {1: "truefx", 2: "oanda", 3: "ib", 4: "coinbase", 5: "kraken", 6: "alpaca", 7: "synthetic"}


def partition_name(symbol: str) -> str:
    return symbol.replace("/", "_")


class ParquetExport:
    name = "parquet"

    def __init__(self, out: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.pa, self.pq, self.out = pa, pq, out
        self.rows = dict.fromkeys(TABLES, 0)
        self.inexact_decimals = 0
        self._writers: dict[tuple, object] = {}
        self._pending: dict[tuple, list] = {}
        self._pending_rows: dict[tuple, int] = {}
        self._seq = 0
        self._open_snapshots: dict[int, list] = {}    # symbol_id -> [begin row facts, bids, asks]
        ts = pa.timestamp("ns", tz="UTC")
        self.ts_type = ts
        self.schemas = {
            "book_changes": pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("event_time", ts), ("recv_time", ts),
                ("side", pa.string()), ("action", pa.string()), ("price", pa.float64()), ("size", pa.float64()),
                ("price_int", pa.int64()), ("size_int", pa.int64()), ("price_decimals", pa.int8()),
                ("size_decimals", pa.int8()), ("snapshot", pa.bool_()), ("gap_before", pa.bool_()),
                ("last_in_message", pa.bool_()), ("implied_delete", pa.bool_()), ("synthetic", pa.bool_()),
                ("message", pa.int64()), ("seq", pa.int64())]),
            "snapshots": pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("event_time", ts), ("recv_time", ts),
                ("bid_levels", pa.int32()), ("ask_levels", pa.int32()), ("gap_before", pa.bool_()),
                ("synthetic", pa.bool_()), ("message", pa.int64()), ("seq_begin", pa.int64()),
                ("seq_end", pa.int64())]),
            "trades": pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("event_time", ts), ("recv_time", ts),
                ("price", pa.float64()), ("size", pa.float64()), ("price_int", pa.int64()),
                ("size_int", pa.int64()), ("price_decimals", pa.int8()), ("size_decimals", pa.int8()),
                ("aggressor", pa.string()), ("gap_before", pa.bool_()), ("message", pa.int64())]),
            "ticks": pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("event_time", ts), ("recv_time", ts),
                ("bid", pa.float32()), ("ask", pa.float32()), ("volume", pa.float32()), ("kind", pa.string()),
                ("spread_tenth_bps", pa.uint16()), ("sequence", pa.uint32()), ("gap_before", pa.bool_()),
                ("replayed", pa.bool_()), ("origin", pa.string())]),
        }

    # -- columns ----------------------------------------------------------------------------------
    def _names(self, sids: np.ndarray, instruments: dict[int, InstrumentInfo]):
        top = int(sids.max()) + 1 if len(sids) else 1
        exchange = np.empty(top, object)
        symbol = np.empty(top, object)
        pdec = np.full(top, -1, np.int16)
        sdec = np.full(top, -1, np.int16)
        for sid, info in instruments.items():
            if sid < top:
                exchange[sid], symbol[sid] = info.exchange, info.symbol
                pdec[sid] = -1 if info.price_decimals is None else info.price_decimals
                sdec[sid] = -1 if info.size_decimals is None else info.size_decimals
        return exchange[sids], symbol[sids], pdec[sids], sdec[sids]

    def _scaled(self, values: np.ndarray, decimals: np.ndarray, valid: np.ndarray):
        """(integers, mask of valid) for values * 10**decimals, where that is an exact integer."""
        pa = self.pa
        scale = np.power(10.0, np.maximum(decimals, 0))
        scaled = values * scale
        ints = np.rint(scaled)
        ok = valid & (decimals >= 0) & (np.abs(scaled - ints) <= 1e-6 * np.maximum(1.0, np.abs(scaled))) \
            & (np.abs(ints) < 2.0 ** 53)
        self.inexact_decimals += int((valid & (decimals >= 0) & ~ok).sum())
        return pa.array(np.where(ok, ints, 0).astype(np.int64), pa.int64(), mask=~ok)

    def _times(self, ns: np.ndarray, mask=None):
        return self.pa.array(ns.astype(np.int64), self.ts_type, mask=mask)

    def add(self, chunk: Chunk, instruments: dict[int, InstrumentInfo]) -> None:
        if len(chunk.book):
            self._add_book(chunk.book, instruments)
        if len(chunk.trades):
            self._add_trades(chunk.trades, instruments)
        if len(chunk.ticks):
            self._add_ticks(chunk.ticks, instruments)

    def _add_book(self, rows: np.ndarray, instruments) -> None:
        pa = self.pa
        exchange, symbol, pdec, sdec = self._names(rows["symbol_id"], instruments)
        action = rows["action"]
        flags = rows["flags"]
        level = (action == 0)
        seq = np.arange(self._seq, self._seq + len(rows), dtype=np.int64)
        self._seq += len(rows)
        table = pa.table({
            "exchange": pa.array(exchange, pa.string()), "symbol": pa.array(symbol, pa.string()),
            "event_time": self._times(rows["event_ns"]), "recv_time": self._times(rows["recv_ns"]),
            "side": pa.array(SIDE_NAMES[rows["side"] & 1], pa.string(), mask=~level),
            "action": pa.array(ACTION_NAMES[action], pa.string()),
            "price": pa.array(rows["price"], pa.float64(), mask=~level),
            "size": pa.array(rows["size"], pa.float64(), mask=~level),
            "price_int": self._scaled(rows["price"], pdec, level),
            "size_int": self._scaled(rows["size"], sdec, level),
            "price_decimals": pa.array(pdec.astype(np.int8), pa.int8(), mask=pdec < 0),
            "size_decimals": pa.array(sdec.astype(np.int8), pa.int8(), mask=sdec < 0),
            "snapshot": pa.array((flags & ROW_SNAPSHOT) > 0), "gap_before": pa.array((flags & ROW_GAP) > 0),
            "last_in_message": pa.array((flags & ROW_LAST) > 0),
            "implied_delete": pa.array((flags & ROW_IMPLIED) > 0),
            "synthetic": pa.array((flags & ROW_SYNTHETIC) > 0),
            "message": pa.array(rows["msg"].astype(np.int64)), "seq": pa.array(seq)},
            schema=self.schemas["book_changes"])
        self._write("book_changes", table, rows["symbol_id"], rows["recv_ns"], exchange, symbol)
        self._add_snapshots(rows, seq, exchange, symbol)

    def _add_snapshots(self, rows, seq, exchange, symbol) -> None:
        marks = np.flatnonzero((rows["action"] == ACTION_SNAPSHOT_BEGIN) | (rows["action"] == ACTION_SNAPSHOT_END))
        if not len(marks) and not self._open_snapshots:
            return
        snap_level = ((rows["flags"] & ROW_SNAPSHOT) > 0) & (rows["action"] == 0)
        counted: dict[int, tuple] = {}

        def running(sid: int) -> tuple:
            """Running counts of one symbol's snapshot levels per side, along the chunk."""
            if sid not in counted:
                mine = snap_level & (rows["symbol_id"] == sid)
                counted[sid] = (np.cumsum(mine & (rows["side"] == SIDE_BID)),
                                np.cumsum(mine & (rows["side"] != SIDE_BID)))
            return counted[sid]
        done = []
        for i in marks:
            sid = int(rows["symbol_id"][i])
            bids, asks = running(sid)
            if rows["action"][i] == ACTION_SNAPSHOT_BEGIN:
                # levels counted so far, and the running counts this chunk's levels are measured from
                self._open_snapshots[sid] = {"first": rows[i].copy(), "seq": int(seq[i]), "bids": 0, "asks": 0,
                                             "base_b": int(bids[i]), "base_a": int(asks[i])}
                continue
            snap = self._open_snapshots.pop(sid, None)
            if snap is None:
                continue      # an end without its begin (the window opened inside it): not a snapshot
            first = snap["first"]
            done.append((exchange[i], symbol[i], int(first["event_ns"]), int(first["recv_ns"]),
                         snap["bids"] + int(bids[i]) - snap["base_b"], snap["asks"] + int(asks[i]) - snap["base_a"],
                         bool(first["flags"] & ROW_GAP), bool(first["flags"] & ROW_SYNTHETIC), int(first["msg"]),
                         snap["seq"], int(seq[i]), sid))
        for sid, snap in self._open_snapshots.items():   # carried into the next chunk
            bids, asks = running(sid)
            snap["bids"] += int(bids[-1]) - snap["base_b"]
            snap["asks"] += int(asks[-1]) - snap["base_a"]
            snap["base_b"] = snap["base_a"] = 0
        if not done:
            return
        pa = self.pa
        cols = list(zip(*done))
        table = pa.table({
            "exchange": pa.array(cols[0], pa.string()), "symbol": pa.array(cols[1], pa.string()),
            "event_time": self._times(np.array(cols[2], np.int64)),
            "recv_time": self._times(np.array(cols[3], np.int64)),
            "bid_levels": pa.array(cols[4], pa.int32()), "ask_levels": pa.array(cols[5], pa.int32()),
            "gap_before": pa.array(cols[6], pa.bool_()), "synthetic": pa.array(cols[7], pa.bool_()),
            "message": pa.array(cols[8], pa.int64()), "seq_begin": pa.array(cols[9], pa.int64()),
            "seq_end": pa.array(cols[10], pa.int64())}, schema=self.schemas["snapshots"])
        self._write("snapshots", table, np.array(cols[11], np.uint32), np.array(cols[3], np.uint64),
                    np.array(cols[0], object), np.array(cols[1], object))

    def _add_trades(self, rows: np.ndarray, instruments) -> None:
        pa = self.pa
        exchange, symbol, pdec, sdec = self._names(rows["symbol_id"], instruments)
        valid = np.ones(len(rows), bool)
        # a trade record's side is the resting side it hit: the ask side means a buyer took it
        aggressor = np.where(rows["side"] == SIDE_BID, "sell", "buy").astype(object)
        table = pa.table({
            "exchange": pa.array(exchange, pa.string()), "symbol": pa.array(symbol, pa.string()),
            "event_time": self._times(rows["event_ns"]), "recv_time": self._times(rows["recv_ns"]),
            "price": pa.array(rows["price"]), "size": pa.array(rows["size"]),
            "price_int": self._scaled(rows["price"], pdec, valid), "size_int": self._scaled(rows["size"], sdec, valid),
            "price_decimals": pa.array(pdec.astype(np.int8), pa.int8(), mask=pdec < 0),
            "size_decimals": pa.array(sdec.astype(np.int8), pa.int8(), mask=sdec < 0),
            "aggressor": pa.array(aggressor, pa.string()),
            "gap_before": pa.array((rows["flags"] & ROW_GAP) > 0), "message": pa.array(rows["msg"].astype(np.int64))},
            schema=self.schemas["trades"])
        self._write("trades", table, rows["symbol_id"], rows["recv_ns"], exchange, symbol)

    def _add_ticks(self, rows: np.ndarray, instruments, origin: str = "wslog") -> None:
        pa = self.pa
        ticks = rows["tick"]
        exchange, symbol, _, _ = self._names(ticks["symbol_id"], instruments)
        missing = np.array([e is None for e in exchange], bool)
        if missing.any():   # ids the registry does not know (a journal from another host): say which
            for i in np.flatnonzero(missing):
                exchange[i] = SOURCE_NAMES.get(int(ticks["source"][i]), f"source{int(ticks['source'][i])}")
                symbol[i] = f"#{int(ticks['symbol_id'][i])}"
        tflags = ticks["flags"]
        recv = rows["recv_ns"]
        table = pa.table({
            "exchange": pa.array(exchange, pa.string()), "symbol": pa.array(symbol, pa.string()),
            "event_time": self._times(ticks["timestamp_ns"]), "recv_time": self._times(recv, mask=recv == 0),
            "bid": pa.array(ticks["bid"]), "ask": pa.array(ticks["ask"]), "volume": pa.array(ticks["volume"]),
            "kind": pa.array(np.where(tflags & TICK_FLAG_TRADE, "trade", "quote").astype(object), pa.string()),
            "spread_tenth_bps": pa.array(ticks["spread_bps"]), "sequence": pa.array(ticks["sequence"]),
            "gap_before": pa.array((tflags & TICK_FLAG_GAP_BEFORE) > 0),
            "replayed": pa.array((tflags & TICK_FLAG_REPLAYED) > 0),
            "origin": pa.array(np.full(len(rows), origin, object), pa.string())}, schema=self.schemas["ticks"])
        day_ns = np.where(recv == 0, ticks["timestamp_ns"], recv)
        self._write("ticks", table, ticks["symbol_id"], day_ns, exchange, symbol)

    def add_journal_ticks(self, rows: np.ndarray, instruments) -> None:
        if len(rows):
            self._add_ticks(rows, instruments, origin="journal")

    # -- files ------------------------------------------------------------------------------------
    def _write(self, name: str, table, sids: np.ndarray, day_ns: np.ndarray, exchange, symbol) -> None:
        self.rows[name] += table.num_rows
        days = days_of(day_ns.astype(np.uint64))
        keys = np.rec.fromarrays([sids.astype(np.int64), days.astype(np.int64)])
        uniq, inverse = np.unique(keys, return_inverse=True)
        if len(uniq) == 1:
            parts = [(0, table)]
        else:
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
            parts = [(k, table.take(order[bounds[k]:bounds[k + 1]])) for k in range(len(uniq))]
        for k, part in parts:
            first = int(np.flatnonzero(inverse == k)[0])
            day = str(days[first])
            key = (name, exchange[first], symbol[first], day)
            self._pending.setdefault(key, []).append(part)
            self._pending_rows[key] = self._pending_rows.get(key, 0) + part.num_rows
            if self._pending_rows[key] >= ROW_GROUP_ROWS:
                self._flush(key)

    def _flush(self, key: tuple) -> None:
        parts = self._pending.pop(key, [])
        self._pending_rows.pop(key, None)
        if not parts:
            return
        writer = self._writers.get(key)
        if writer is None:
            name, exchange, symbol, day = key
            folder = self.out / name / f"venue={exchange}" / f"instrument={partition_name(symbol)}" / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            writer = self._writers[key] = self.pq.ParquetWriter(folder / "part-0.parquet", self.schemas[name],
                                                                compression="zstd")
        writer.write_table(self.pa.concat_tables(parts), row_group_size=ROW_GROUP_ROWS)

    def close(self, instruments: dict[int, InstrumentInfo]) -> dict:
        for key in list(self._pending):
            self._flush(key)
        for writer in self._writers.values():
            writer.close()
        self._write_instruments(instruments)
        return {"rows": dict(self.rows), "instruments": len(instruments), "files": len(self._writers) + 1,
                "inexact_decimals": self.inexact_decimals}

    def _write_instruments(self, instruments: dict[int, InstrumentInfo]) -> None:
        pa = self.pa
        infos = sorted(instruments.values(), key=lambda i: (i.exchange, i.symbol))
        self.out.mkdir(parents=True, exist_ok=True)

        def step(decimals):
            return None if decimals is None else format(Decimal(1).scaleb(-decimals), "f")
        table = pa.table({
            "exchange": pa.array([i.exchange for i in infos], pa.string()),
            "symbol": pa.array([i.symbol for i in infos], pa.string()),
            "price_decimals": pa.array([i.price_decimals for i in infos], pa.int8()),
            "size_decimals": pa.array([i.size_decimals for i in infos], pa.int8()),
            "depth": pa.array([i.depth for i in infos], pa.int32()),
            "tick_size": pa.array([step(i.price_decimals) for i in infos], pa.string()),
            "lot_size": pa.array([step(i.size_decimals) for i in infos], pa.string())})
        self.pq.write_table(table, self.out / "instruments.parquet")
