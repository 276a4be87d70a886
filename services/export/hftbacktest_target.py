"""hftbacktest export: its event arrays (``hftbacktest.types.event_dtype``), one ``.npz`` per symbol
per UTC day (of the receive time), as ``np.savez_compressed(path, data=events)`` like its own
converters write them:

    OUT/<exchange>/<instrument>/<YYYYMMDD>.npz            the day's depth and trade events
    OUT/<exchange>/<instrument>/<YYYYMMDD>_snapshot.npz   the book when the day began (days after
                                                          the first with a book): an initial_snapshot
    OUT/instruments.json   per symbol: tick_size and lot_size (10**-decimals from the registry), files

Events: exch_ts is the venue's event time, local_ts the receive time. A venue snapshot (and one
synthetic snapshot at ``--from``) is a DEPTH_CLEAR_EVENT per side (px: the farthest level held, so the
clear covers the whole side) then DEPTH_SNAPSHOT_EVENTs; an update is a DEPTH_EVENT (qty 0 deletes,
including the implied deletes of depth-limited venues); a capture invalidate clears both sides; a
trade is a TRADE_EVENT with BUY_EVENT when a buyer was the aggressor. Every event is both an exchange
and a local event: hftbacktest's ``correct_event_order`` flags them so, splitting in two the ones whose
exchange-time order differs from the receive order, and ``validate_event_order`` checks the result.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shmpipe.records import ACTION_SET, ACTION_SNAPSHOT_BEGIN, SIDE_BID

from .parquet_target import partition_name
from .source import ACTION_INVALIDATE, ROW_SNAPSHOT, Chunk, InstrumentInfo, days_of


class HftbacktestExport:
    name = "hftbacktest"

    def __init__(self, out: Path) -> None:
        from hftbacktest import types as hbt_types
        from hftbacktest.data.validation import correct_event_order, validate_event_order
        self.t = hbt_types
        self.correct_event_order, self.validate_event_order = correct_event_order, validate_event_order
        self.out = out
        self.rows = {"depth_events": 0, "trade_events": 0, "snapshot_files": 0}
        self._events: dict[int, list] = {}           # symbol_id -> event tuples of the current day
        self._day: dict[int, str] = {}
        self._books: dict[int, tuple[dict, dict]] = {}
        self._files: dict[int, list[str]] = {}
        self._seen: set[int] = set()                 # symbols with book or trade rows

    def add(self, chunk: Chunk, instruments: dict[int, InstrumentInfo]) -> None:
        t = self.t
        # no EXCH_EVENT / LOCAL_EVENT here: correct_event_order sets them when the file is written
        book, trades = chunk.book, chunk.trades
        # book rows and trades interleave by message; merge them back into capture order
        kinds = np.concatenate([np.zeros(len(book), np.int8), np.ones(len(trades), np.int8)])
        msgs = np.concatenate([book["msg"], trades["msg"]])
        order = np.argsort(msgs, kind="stable")
        book_list, trade_list = book.tolist(), trades.tolist()
        for pos in order.tolist():
            if kinds[pos] == 0:
                _msg, recv, ev_ns, price, size, sid, side, action, flags = book_list[pos]
            else:
                _msg, recv, ev_ns, price, size, sid, side, flags = trade_list[pos - len(book)]
                action = None
            info = instruments.get(sid)
            if info is None:
                continue
            self._seen.add(sid)
            if info.price_decimals is None or info.size_decimals is None:
                continue
            events = self._events_for(sid, recv, info)
            bids, asks = self._books[sid]
            if action is None:
                # a trade record's side is the resting side it hit: the ask side means a buyer took it
                flag = t.SELL_EVENT if side == SIDE_BID else t.BUY_EVENT
                events.append((t.TRADE_EVENT | flag, ev_ns, recv, price, size))
                self.rows["trade_events"] += 1
            elif action == ACTION_SNAPSHOT_BEGIN or action == ACTION_INVALIDATE:
                self._clear(events, bids, asks, ev_ns, recv)
            elif action == ACTION_SET:
                levels = bids if side == SIDE_BID else asks
                if size == 0.0:
                    levels.pop(price, None)
                else:
                    levels[price] = size
                kind = t.DEPTH_SNAPSHOT_EVENT if flags & ROW_SNAPSHOT else t.DEPTH_EVENT
                flag = t.BUY_EVENT if side == SIDE_BID else t.SELL_EVENT
                events.append((kind | flag, ev_ns, recv, price, size))
                self.rows["depth_events"] += 1

    def _clear(self, events: list, bids: dict, asks: dict, ev_ns: int, recv: int) -> None:
        """One DEPTH_CLEAR_EVENT per side. hftbacktest clears a side from its best level to ``px``, so
        px is the farthest level held (an empty side has nothing to clear: px 0)."""
        t = self.t
        for levels, flag, farthest in ((bids, t.BUY_EVENT, min), (asks, t.SELL_EVENT, max)):
            events.append((t.DEPTH_CLEAR_EVENT | flag, ev_ns, recv, farthest(levels) if levels else 0.0, 0.0))
            self.rows["depth_events"] += 1
            levels.clear()

    def _events_for(self, sid: int, recv_ns: int, info: InstrumentInfo) -> list:
        day = str(days_of(np.array([recv_ns], np.uint64))[0]).replace("-", "")
        current = self._day.get(sid)
        if current != day:
            if current is not None:
                self._flush(sid, info)
            self._day[sid] = day
            self._events[sid] = []
            books = self._books.setdefault(sid, ({}, {}))
            if books[0] or books[1]:
                self._write_snapshot(sid, info, day, books)
        return self._events[sid]

    def _folder(self, info: InstrumentInfo) -> Path:
        folder = self.out / info.exchange / partition_name(info.symbol)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _write_snapshot(self, sid: int, info: InstrumentInfo, day: str, books: tuple[dict, dict]) -> None:
        t = self.t
        start = int(np.datetime64(f"{day[:4]}-{day[4:6]}-{day[6:]}", "ns").astype(np.int64))
        rows = [(t.DEPTH_SNAPSHOT_EVENT | t.EXCH_EVENT | t.LOCAL_EVENT | t.BUY_EVENT, start, start, p, q)
                for p, q in sorted(books[0].items(), reverse=True)]
        rows += [(t.DEPTH_SNAPSHOT_EVENT | t.EXCH_EVENT | t.LOCAL_EVENT | t.SELL_EVENT, start, start, p, q)
                 for p, q in sorted(books[1].items())]
        path = self._folder(info) / f"{day}_snapshot.npz"
        np.savez_compressed(path, data=self._array(rows))
        self._files.setdefault(sid, []).append(path.name)
        self.rows["snapshot_files"] += 1

    def _array(self, rows: list) -> np.ndarray:
        data = np.zeros(len(rows), self.t.event_dtype)
        if rows:
            cols = list(zip(*rows))
            data["ev"] = np.array(cols[0], np.uint64)
            data["exch_ts"] = np.array(cols[1], np.uint64).astype(np.int64)
            data["local_ts"] = np.array(cols[2], np.uint64).astype(np.int64)
            data["px"] = cols[3]
            data["qty"] = cols[4]
        return data

    def _flush(self, sid: int, info: InstrumentInfo) -> None:
        rows = self._events.pop(sid, [])
        if not rows:
            return
        data = self._array(rows)
        exch_order = np.argsort(data["exch_ts"], kind="stable")
        local_order = np.argsort(data["local_ts"], kind="stable")
        data = self.correct_event_order(data, exch_order, local_order)
        self.validate_event_order(data)
        path = self._folder(info) / f"{self._day[sid]}.npz"
        np.savez_compressed(path, data=data)
        self._files.setdefault(sid, []).append(path.name)

    def close(self, instruments: dict[int, InstrumentInfo]) -> dict:
        for sid in list(self._events):
            self._flush(sid, instruments[sid])
        listing = []
        for sid in sorted(self._files):
            info = instruments[sid]
            listing.append({"exchange": info.exchange, "symbol": info.symbol,
                            "folder": f"{info.exchange}/{partition_name(info.symbol)}",
                            "tick_size": 10.0 ** -info.price_decimals, "lot_size": 10.0 ** -info.size_decimals,
                            "price_decimals": info.price_decimals, "size_decimals": info.size_decimals,
                            "files": self._files[sid]})
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "instruments.json").write_text(json.dumps(listing, indent=1) + "\n")
        skipped = {f"{i.exchange}:{i.symbol}": ("price/size decimals unknown" if sid in self._seen
                                                 else "no book or trade records")
                   for sid, i in sorted(instruments.items()) if sid not in self._files}
        return {"rows": dict(self.rows), "files": sum(len(f) for f in self._files.values()) + 1,
                "symbols": len(listing), "not_exported": skipped}
