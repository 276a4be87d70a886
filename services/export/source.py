"""Captures replayed for export: every .wslog entry through its venue's parser, exactly as
``shmpipe replay`` does it (same parsers, same receive times, a parser reset at every reconnect), then
cut into book, trade and tick rows that carry what the targets need and the records only imply:

- the message a record came from and its receive time (``msg``, ``recv_ns``);
- ``ROW_LAST`` on the last book row of each venue message and symbol: from the records' own bit4
  (LevelUpdate "last") when capture wrote it, else from the replay's message boundaries;
- ``ROW_IMPLIED`` deletes for levels a depth-limited venue (Kraken: the subscribed depth) pushes out
  of the book without a delete of its own, so a reader that does not truncate (NautilusTrader,
  hftbacktest, a plain dict) ends with the venue's book;
- with ``start_ns``: frames before it are parsed (so sequence checks and books are right) but not
  exported, and each book known at ``start_ns`` opens the window as one ``ROW_SYNTHETIC`` snapshot.

Checksum records are not exported: they only serve the live order book's verification.
"""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_INVALIDATE,
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    LEVEL_FLAG_GAP_BEFORE,
    LEVEL_FLAG_LAST,
    SIDE_ASK,
    SIDE_BID,
    TICK,
)

ROW_GAP, ROW_LAST, ROW_IMPLIED, ROW_SNAPSHOT, ROW_SYNTHETIC = 8, 16, 32, 64, 128

BOOK_ROW = np.dtype([("msg", "<u8"), ("recv_ns", "<u8"), ("event_ns", "<u8"), ("price", "<f8"),
                     ("size", "<f8"), ("symbol_id", "<u4"), ("side", "u1"), ("action", "u1"),
                     ("flags", "u1")])
TRADE_ROW = np.dtype([("msg", "<u8"), ("recv_ns", "<u8"), ("event_ns", "<u8"), ("price", "<f8"),
                      ("size", "<f8"), ("symbol_id", "<u4"), ("side", "u1"), ("flags", "u1")])
TICK_ROW = np.dtype([("recv_ns", "<u8"), ("tick", TICK)])
# recv_ns 0 in a TICK_ROW: not known (ticks read from the tick journal carry only their event time).

_LEVEL = struct.Struct("<QddIBBBB")   # LevelUpdate v2, as capture packs it
_BOOK_ACTIONS = (ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, ACTION_INVALIDATE)
CHUNK_ROWS = 50_000


@dataclass
class InstrumentInfo:
    exchange: str
    symbol: str
    symbol_id: int
    price_decimals: int | None
    size_decimals: int | None
    depth: int


@dataclass
class Chunk:
    book: np.ndarray      # BOOK_ROW
    trades: np.ndarray    # TRADE_ROW
    ticks: np.ndarray     # TICK_ROW


@dataclass
class SourceCounts:
    entries: int = 0              # .wslog entries read (markers included)
    messages: int = 0             # venue frames parsed
    bytes: int = 0                # bytes of the files consumed (headers included), for progress
    before_window: int = 0        # frames parsed only to know the state at --from
    reconnects: int = 0
    checksum_records: int = 0
    gap_flagged_book_rows: int = 0   # exported book rows whose record carried gap-before
    unknown_exchange: Counter = field(default_factory=Counter)   # exchange id -> entries skipped
    parse_errors: Counter = field(default_factory=Counter)
    gaps: Counter = field(default_factory=Counter)


class _Book:
    """One symbol's book, as {price: size} per side, kept only to know which levels exist."""

    __slots__ = ("sides", "known", "in_snapshot")

    def __init__(self) -> None:
        self.sides: tuple[dict, dict] = ({}, {})
        self.known = False          # a snapshot completed since the last invalidate
        self.in_snapshot = False    # between a snapshot-begin and its end

    def clear(self) -> None:
        self.sides[0].clear()
        self.sides[1].clear()

    def overflow(self, depth: int) -> list[tuple[int, float]]:
        """(side, price) of the levels beyond ``depth``, removed from the book."""
        out = []
        for side in (SIDE_BID, SIDE_ASK):
            levels = self.sides[side]
            if len(levels) > depth:
                ordered = sorted(levels, reverse=(side == SIDE_BID))
                for price in ordered[depth:]:
                    del levels[price]
                    out.append((side, price))
        return out


class CaptureSource:
    """Rows of the captures under ``paths`` (files or directories of .wslog/.wslog.zst), merged by
    receive time. ``symbols``: names (``BTC-USD``) or ``exchange:symbol``; None keeps every symbol.
    After iteration: ``instruments``, ``counts``, ``stops`` (damaged files), ``unmatched_symbols``."""

    def __init__(self, paths: Iterable[str], *, start_ns: int | None = None, end_ns: int | None = None,
                 symbols: Iterable[str] | None = None, on_bytes=None) -> None:
        from shmpipe_services.capture.process import EXCHANGE_NAMES, PARSERS
        from shmpipe_services.capture.symbol_ids import InMemorySymbolIds

        self.paths = list(paths)
        self.start_ns, self.end_ns = start_ns, end_ns
        self.wanted = None if symbols is None else set(symbols)
        self.on_bytes = on_bytes
        self.registry = InMemorySymbolIds()
        self._exchange_names, self._parsers = EXCHANGE_NAMES, PARSERS
        self.counts = SourceCounts()
        self.stops: list = []
        self._books: dict[int, _Book] = {}
        self._kept: dict[int, bool] = {}
        self._seen_wanted: set[str] = set()

    # -- what the registry learned -------------------------------------------------------------
    @property
    def instruments(self) -> dict[int, InstrumentInfo]:
        out = {}
        for sid, f in self.registry.facts.items():
            if self._keep(sid):
                out[sid] = InstrumentInfo(f.exchange, f.symbol, sid, f.price_decimals, f.size_decimals, f.depth or 0)
        return out

    @property
    def unmatched_symbols(self) -> list[str]:
        return sorted((self.wanted or set()) - self._seen_wanted)

    def _keep(self, sid: int) -> bool:
        kept = self._kept.get(sid)
        if kept is None:
            exchange, symbol = self.registry.lookup(sid)
            if self.wanted is None:
                kept = True
            else:
                names = {symbol, f"{exchange}:{symbol}"} & self.wanted
                self._seen_wanted |= names
                kept = bool(names)
            self._kept[sid] = kept
        return kept

    # -- the replay ----------------------------------------------------------------------------
    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        from shmpipe.wslog import HEADER_BYTES, merge_wslogs
        from shmpipe_services.capture.record_batch import RecordBatch

        merge = merge_wslogs(self.paths)
        parsers: dict[int, object] = {}
        connects: Counter = Counter()
        batch = RecordBatch()
        book_rows: list[tuple] = []
        trade_rows: list[tuple] = []
        tick_parts: list[np.ndarray] = []
        in_window = self.start_ns is None
        c = self.counts
        for entry in merge:
            c.entries += 1
            size = HEADER_BYTES + len(entry.payload)
            c.bytes += size
            if self.on_bytes is not None:
                self.on_bytes(size)
            if self.end_ns is not None and entry.recv_ns >= self.end_ns:
                break
            if not in_window and entry.recv_ns >= self.start_ns:
                in_window = True
                self._open_window(book_rows, c.messages)
            parser = parsers.get(entry.exchange_id)
            if parser is None and entry.exchange_id in self._exchange_names:
                parser = parsers[entry.exchange_id] = self._parsers[self._exchange_names[entry.exchange_id]](
                    self.registry)
            if entry.marker is not None:
                # the live run reset its parser after every reconnect: at each connect but the first
                if entry.marker == "connect" and parser is not None:
                    connects[entry.exchange_id] += 1
                    if connects[entry.exchange_id] > 1:
                        parser.reset_connection()
                        c.reconnects += 1
                continue
            if parser is None:
                c.unknown_exchange[entry.exchange_id] += 1
                continue
            c.messages += 1
            if not in_window:
                c.before_window += 1
            parser.feed(entry.payload, batch, entry.recv_ns)
            if not len(batch):
                continue
            ticks, levels = batch.ticks, batch.levels
            if in_window:
                self._message_rows(c.messages, entry.recv_ns, levels, book_rows, trade_rows)
                if ticks:
                    tick_parts.append(self._tick_rows(entry.recv_ns, ticks))
            else:
                self._message_rows(c.messages, entry.recv_ns, levels, None, None)
            ticks.clear()
            levels.clear()
            if len(book_rows) + len(trade_rows) >= chunk_rows or len(tick_parts) >= chunk_rows // 4:
                yield self._chunk(book_rows, trade_rows, tick_parts)
        self.stops = list(merge.stops)
        for parser in parsers.values():
            parser.bad_input.flush()
            c.parse_errors.update(parser.errors)
            c.gaps.update(parser.gap_counts)
        if book_rows or trade_rows or tick_parts:
            yield self._chunk(book_rows, trade_rows, tick_parts)

    def _chunk(self, book_rows: list, trade_rows: list, tick_parts: list) -> Chunk:
        chunk = Chunk(np.array(book_rows, BOOK_ROW), np.array(trade_rows, TRADE_ROW),
                      np.concatenate(tick_parts) if tick_parts else np.zeros(0, TICK_ROW))
        book_rows.clear()
        trade_rows.clear()
        tick_parts.clear()
        return chunk

    def _tick_rows(self, recv_ns: int, packed: bytearray) -> np.ndarray:
        ticks = np.frombuffer(bytes(packed), TICK)
        keep = np.fromiter((self._keep(int(s)) for s in ticks["symbol_id"]), bool, len(ticks))
        ticks = ticks[keep]
        rows = np.empty(len(ticks), TICK_ROW)
        rows["recv_ns"] = recv_ns
        rows["tick"] = ticks
        return rows

    def _open_window(self, book_rows: list, msg: int) -> None:
        """Each book known when the window opens, as one synthetic snapshot at ``start_ns``."""
        ts = self.start_ns
        for sid, book in self._books.items():
            if not (book.known and self._keep(sid)):
                continue
            flags = ROW_SYNTHETIC | ROW_SNAPSHOT
            book_rows.append((msg, ts, ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_BEGIN, flags))
            for side in (SIDE_BID, SIDE_ASK):
                levels = book.sides[side]
                for price in sorted(levels, reverse=(side == SIDE_BID)):
                    book_rows.append((msg, ts, ts, price, levels[price], sid, side, ACTION_SET, flags))
            book_rows.append((msg, ts, ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_END, flags | ROW_LAST))

    def _message_rows(self, msg: int, recv_ns: int, levels: bytearray, book_rows: list | None,
                      trade_rows: list | None) -> None:
        """One venue message's level records: applied to the books; appended as rows unless None."""
        if not levels:
            return
        records = list(_LEVEL.iter_unpack(levels))
        marked = any(r[7] & LEVEL_FLAG_LAST for r in records)
        open_groups: dict[int, list] = {}     # symbol -> rows of its group not yet closed
        for ts, price, size, sid, side, action, _source, flags in records:
            if action == ACTION_CHECKSUM:
                self.counts.checksum_records += 1
                if marked and flags & LEVEL_FLAG_LAST and sid in open_groups:
                    self._close_group(sid, open_groups.pop(sid), book_rows)
                continue
            if action == ACTION_TRADE:
                if trade_rows is not None and self._keep(sid):
                    trade_rows.append((msg, recv_ns, ts, price, size, sid, side, flags & LEVEL_FLAG_GAP_BEFORE))
                continue
            if action not in _BOOK_ACTIONS:
                continue
            book = self._books.get(sid)
            if book is None:
                book = self._books[sid] = _Book()
            row_flags = flags & LEVEL_FLAG_GAP_BEFORE
            if action == ACTION_SNAPSHOT_BEGIN:
                book.clear()
                book.known, book.in_snapshot = False, True
            if book.in_snapshot:
                row_flags |= ROW_SNAPSHOT
            group = open_groups.setdefault(sid, [])
            group.append([msg, recv_ns, ts, price, size, sid, side, action, row_flags])
            if action == ACTION_SET:
                levels_side = book.sides[side]
                if size == 0.0:
                    levels_side.pop(price, None)
                else:
                    levels_side[price] = size
            elif action == ACTION_SNAPSHOT_END:
                book.known, book.in_snapshot = True, False
            elif action == ACTION_INVALIDATE:
                book.clear()
                book.known = book.in_snapshot = False
            if marked and flags & LEVEL_FLAG_LAST:
                self._close_group(sid, open_groups.pop(sid), book_rows)
        for sid, group in open_groups.items():
            self._close_group(sid, group, book_rows)

    def _close_group(self, sid: int, group: list, book_rows: list | None) -> None:
        """End of one message's records for one symbol: truncate to the venue's depth (the levels
        pushed out become implied deletes) and put ROW_LAST on the last row."""
        depth = self.registry.facts[sid].depth or 0
        book = self._books[sid]
        if depth:
            msg, recv_ns, ts = group[-1][0], group[-1][1], group[-1][2]
            for side, price in book.overflow(depth):
                group.append([msg, recv_ns, ts, price, 0.0, sid, side, ACTION_SET, ROW_IMPLIED])
        if book_rows is None or not group or not self._keep(sid):
            return
        group[-1][8] |= ROW_LAST
        self.counts.gap_flagged_book_rows += sum(1 for row in group if row[8] & ROW_GAP)
        book_rows.extend(map(tuple, group))


def days_of(ns: np.ndarray) -> np.ndarray:
    """UTC dates (numpy datetime64[D]) of ns timestamps."""
    return ns.astype("datetime64[ns]").astype("datetime64[D]")
