"""What every venue parser shares: the frame entry point that never raises, bad-input accounting,
gap flags, instrument facts and the record batch.

One parser object belongs to one websocket connection: sequence numbers and heartbeat counters are
per connection, so after a reconnect the capture process calls ``reset_connection()`` (or makes a new
parser with the same ``symbol_id``).

Gap flags (Tick and LevelUpdate flags bit3). A connection-wide gap (a skipped sequence number or
heartbeat, a reconnect) flags the first Tick that follows it, whatever its symbol: a consumer treats
that bit as "this source lost something here". On the LevelUpdate stream a gap-before flag belongs to
the record's own symbol (DESIGN.md), so a connection-wide gap instead writes one invalidate record
(action 5, with gap-before) for every symbol of the connection, ahead of the frame's own records;
``invalidate_all`` does the same for a dropped or silent connection. A gap that belongs to one
symbol (a rejected message naming it) flags that symbol's next record in the affected stream.

Message boundaries (LevelUpdate flags bit4, "last"): after a frame is parsed, the final record it
wrote for each symbol carries bit4; the order book judges and publishes a book only there. Every gap is also appended to ``gaps`` and the symbols whose books need a fresh
snapshot land in ``resync_needed``, so the feed handler resubscribes only those.
"""
from __future__ import annotations

import json
import math
import struct
import time
from decimal import Decimal, InvalidOperation
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from shmpipe.records import LEVEL_FLAG_GAP_BEFORE, TICK_FLAG_GAP_BEFORE

from . import bad_input as bad
from .bad_input import BadInputLog
from .record_batch import RecordBatch
from .staleness import StalenessWatchdog
from .symbol_ids import InMemorySymbolIds, SymbolIdFn

# Larger frames are rejected before decoding. Coinbase's full level2 snapshot of a busy product is a
# few MB, so the default leaves room for that (websockets' own 1 MiB default would cut it off).
DEFAULT_MAX_FRAME_BYTES = 16 << 20

TICKS, LEVELS = "ticks", "levels"   # the two record streams a gap flag can be pending on
ALL_SYMBOLS = None                  # the symbol key of a connection-wide gap
MAX_GAPS_KEPT = 10_000


class BadValue(ValueError):
    """A value the schema allowed but the market cannot have (NaN, negative, infinite)."""


INF = math.inf


def positive(text: Any) -> float:
    """A price: finite and > 0. Accepts decimal text, bytes-like raw JSON numbers and numbers."""
    value = float(text)
    if not 0.0 < value < INF:
        raise BadValue(f"{text!r} where a price must be a finite number > 0")
    return value


def non_negative(text: Any) -> float:
    """A size (0 deletes a level) or a quote side that may be absent (0): finite and >= 0."""
    value = float(text)
    if not 0.0 <= value < INF:
        raise BadValue(f"{text!r} where a size or quote must be a finite number >= 0")
    return value


def check_level(price: float, size: float) -> None:
    """A book level: price finite and > 0, size finite and >= 0 (0 deletes)."""
    if not (0.0 < price < INF and 0.0 <= size < INF):
        raise BadValue(f"level price {price!r} size {size!r}: price must be finite and > 0, size finite and >= 0")


def check_quote(bid: float, bid_size: float, ask: float, ask_size: float) -> None:
    """A quote: every number finite and >= 0 (a side may be absent: 0)."""
    if not (0.0 <= bid < INF and 0.0 <= ask < INF and 0.0 <= bid_size < INF and 0.0 <= ask_size < INF):
        raise BadValue(f"quote {bid!r} x {bid_size!r} / {ask!r} x {ask_size!r}: each must be finite and >= 0")


def decimals_of(text: str | bytes) -> int:
    """Digits after the decimal point as written: ``"67007.0"`` -> 1, ``"3500"`` -> 0; in scientific
    notation, those of the number it stands for: ``"1.5e-3"`` (0.0015) -> 4, ``"1.5e-05"`` -> 6."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("ascii", "replace")
    if "e" in text or "E" in text:
        try:
            exponent = Decimal(text).as_tuple().exponent
        except InvalidOperation:
            raise BadValue(f"{text!r} is not a decimal number") from None
        return max(0, -exponent) if isinstance(exponent, int) else 0
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


@dataclass(slots=True)
class Instrument:
    symbol: str
    symbol_id: int
    price_decimals: int | None = None
    size_decimals: int | None = None
    depth: int | None = None
    has_book: bool = False          # a snapshot arrived on this connection; updates may follow
    last_price: str | None = None   # last trade (or ticker last) price, as the venue wrote it
    last_trade_id: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    kind: str            # "sequence", "heartbeat", "trade_id", "rejected", "reconnect"
    symbol: str | None   # None: connection-wide
    detail: str
    frame: int           # 1-based index of the frame (on this parser) that revealed it


class FeedParser:
    """Base class; a venue sets ``exchange`` and ``source`` and implements ``_feed``, and the two hooks
    used only on the error path, ``_classify`` and ``_symbols_in``."""

    exchange = ""
    source = 0

    def __init__(self, symbol_id: SymbolIdFn | None = None, *, bad_input: BadInputLog | None = None,
                 watchdog: StalenessWatchdog | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.symbol_id = symbol_id if symbol_id is not None else InMemorySymbolIds()
        self.bad_input = bad_input if bad_input is not None else BadInputLog(self.exchange)
        self.watchdog = watchdog
        self.max_frame_bytes = max_frame_bytes
        self.instruments: dict[str, Instrument] = {}
        self.messages: Counter[str] = Counter()     # per channel / message type, and "channel.type"
        self.frames = 0
        self.gaps: deque[Gap] = deque(maxlen=MAX_GAPS_KEPT)
        self.gap_counts: Counter[str] = Counter()
        self.resync_needed: set[str] = set()
        self._gaps_pending: set[tuple[str | None, str]] = set()
        self._gaps_taken: list[tuple[str | None, str]] = []
        self._symbol_in_progress: str | None = None
        self._last_exchange_ns = 0
        self._batch = RecordBatch()
        self._out: RecordBatch | None = None          # the batch of the frame being parsed
        self._frame_invalidates: list[int] = []       # its invalidates, kept through a rollback
        self._pending_invalidates: set[int] = set()   # raised between frames: written with the next
        self.invalidates_written = 0
        self.facts_changed = 0                         # a venue changed a known precision or depth
        from . import _levels   # compiled; it imports this module (BadValue), so not at the top
        self._mark_last, self._append_invalidates = _levels.mark_last, _levels.append_invalidates

    # -- entry points -------------------------------------------------------------------------
    @property
    def errors(self) -> Counter[str]:
        return self.bad_input.counts

    def parse(self, frame: bytes | str, recv_ns: int = 0) -> tuple[Any, Any]:
        """One frame -> (TICK array, LEVEL_UPDATE array). Never raises for bad input."""
        self.feed(frame, self._batch, recv_ns)
        return self._batch.take()

    def feed(self, frame: bytes | str, out: RecordBatch, recv_ns: int = 0) -> None:
        """Append one frame's records to ``out``. ``recv_ns`` (the receive time, when known) stamps
        records the venue sends without a time of its own (a Kraken snapshot). Never raises for bad
        input: a bad frame adds nothing, is counted in ``errors`` and may raise a gap."""
        self.frames += 1
        if len(frame) > self.max_frame_bytes:
            self._reject(bad.OVERSIZED, frame, f"{len(frame)} bytes > max_frame_bytes {self.max_frame_bytes}")
            return
        mark = len(out.ticks), len(out.levels)
        self._symbol_in_progress = None
        self._out = out
        if self._pending_invalidates:
            # raised between frames: by a reconnect, so the books are stale (the connection dropped)
            sids, self._pending_invalidates = sorted(self._pending_invalidates), set()
            self._write_invalidates(out, sids, gap=False)
        try:
            # msgspec does not check the UTF-8 of fields it skips; isascii() is the cheap common case
            if not isinstance(frame, str) and not frame.isascii():
                frame.decode("utf-8")
            self._feed(frame, out, recv_ns)
        except Exception as exc:  # noqa: BLE001 -- sorted out below; nothing may stop the other symbols
            self._undo(out, mark)
            try:
                self._on_error(frame, exc, out)
            except Exception as inner:  # noqa: BLE001 -- the error path itself failed (a bug): still count
                self.bad_input.record(bad.INTERNAL, frame, f"handling {type(exc).__name__}: "
                                                           f"{type(inner).__name__}: {inner}")
        else:
            if self._gaps_taken:
                self._gaps_taken.clear()
            if len(out.levels) > mark[1]:
                self._mark_last(out.levels, mark[1])
        finally:
            self._out = None
            self._frame_invalidates = []

    def _on_error(self, frame: bytes | str, exc: Exception, out: RecordBatch) -> None:
        if isinstance(exc, msgspec.ValidationError):
            self._on_schema_error(frame, exc, out)
        elif isinstance(exc, msgspec.DecodeError):
            self._reject(bad.INVALID_JSON, frame, str(exc), self._symbols_named(frame))
        elif isinstance(exc, UnicodeDecodeError):
            self._reject(bad.NOT_UTF8, frame, str(exc))
        elif isinstance(exc, (ValueError, OverflowError, struct.error)):  # BadValue, a timestamp, > f32 max
            named = [self._symbol_in_progress] if self._symbol_in_progress else self._symbols_named(frame)
            self._reject(bad.BAD_VALUE, frame, str(exc), named)
        else:   # a parser bug must not stop capture of every other symbol
            self._reject(bad.INTERNAL, frame, f"{type(exc).__name__}: {exc}", self._symbols_named(frame))

    def reset_connection(self) -> None:
        """The socket was replaced: forget per-connection state; every book waits for a new snapshot and
        the first records after the reconnect carry the gap flag."""
        self._raise_gap("reconnect", ALL_SYMBOLS, "new connection", resync=False)  # books: invalidated
        for inst in self.instruments.values():
            inst.has_book = False
            inst.last_trade_id = None

    def invalidate_all(self, out: RecordBatch, ts: int, *, gap: bool = False) -> int:
        """Capture can no longer vouch for any book of this connection (it dropped or went silent;
        ``gap``: it lost messages that could be any symbol's): one invalidate record per symbol with
        a book, appended to ``out``; the order book flags those books invalid + stale (+ gap) until
        their next snapshot. Without ``gap`` the connection is over: no book is kept. Returns how
        many were written."""
        written = self._write_invalidates(out, self._symbols_with_books(), gap=gap, ts=ts)
        if not gap:   # the connection is gone: its updates must wait for new snapshots
            for inst in self.instruments.values():
                inst.has_book = False
        return written

    def _symbols_with_books(self) -> list[int]:
        return [inst.symbol_id for inst in self.instruments.values() if inst.has_book]

    def _write_invalidates(self, out: RecordBatch, sids: list[int], *, gap: bool, ts: int | None = None) -> int:
        if sids:
            self._append_invalidates(out.levels, sids, self._last_exchange_ns if ts is None else ts, self.source,
                               LEVEL_FLAG_GAP_BEFORE if gap else 0)
            self.invalidates_written += len(sids)
            if out is self._out:
                self._frame_invalidates.extend(sids)
        return len(sids)

    def request_resync(self, symbol: str) -> None:
        """Someone outside asked for a fresh snapshot of this symbol's book (an order book whose
        checksum failed, an operator): it joins the symbols ``take_resync`` hands out."""
        self._instrument(symbol)
        self.resync_needed.add(symbol)

    def instrument(self, symbol: str) -> Instrument:
        """The symbol's facts on this connection (made, and its id taken, on first use)."""
        return self._instrument(symbol)

    def take_resync(self) -> set[str]:
        """Symbols whose books need a fresh snapshot (resubscribe them); the set is emptied."""
        symbols, self.resync_needed = self.resync_needed, set()
        return symbols

    def _feed(self, frame: bytes | str, out: RecordBatch, recv_ns: int) -> None:
        raise NotImplementedError

    # -- instruments --------------------------------------------------------------------------
    def _instrument(self, symbol: str) -> Instrument:
        inst = self.instruments.get(symbol)
        if inst is None:
            inst = Instrument(symbol, self.symbol_id(self.exchange, symbol))
            self.instruments[symbol] = inst
        return inst

    def _learn(self, inst: Instrument, *, price_decimals: int | None = None,
               size_decimals: int | None = None, depth: int | None = None, when_ns: int = 0) -> None:
        """Record instrument facts; the registry hears about each change once. A known fact that
        differs is the venue's change (Kraken changes a pair's precision): the registry records it
        with when it took effect (this message's exchange time), so the order book's checksums
        follow instead of failing for good."""
        changed = revised = False
        for name, value in (("price_decimals", price_decimals), ("size_decimals", size_decimals),
                            ("depth", depth)):
            old = getattr(inst, name)
            if value is not None and value != old:
                setattr(inst, name, value)
                changed = True
                revised |= old is not None
        if revised:
            self.facts_changed += 1
            self.symbol_id(self.exchange, inst.symbol, price_decimals=inst.price_decimals,
                           size_decimals=inst.size_decimals, depth=inst.depth,
                           effective_ns=when_ns or self._last_exchange_ns or time.time_ns())
        elif changed:
            self.symbol_id(self.exchange, inst.symbol, price_decimals=inst.price_decimals,
                           size_decimals=inst.size_decimals, depth=inst.depth)

    def _touch(self, channel: str, symbol: str | None) -> None:
        if self.watchdog is not None:
            self.watchdog.touch((self.exchange, channel, symbol))

    # -- gaps ---------------------------------------------------------------------------------
    def _raise_gap(self, kind: str, symbol: str | None, detail: str, *, resync: bool = True,
                   streams: Iterable[str] = (TICKS, LEVELS)) -> None:
        self.gaps.append(Gap(kind, symbol, detail, self.frames))
        self.gap_counts[kind] += 1
        for stream in streams:
            if stream == LEVELS and symbol is ALL_SYMBOLS:
                # Every book lost something: say so for each symbol now, ahead of what follows.
                if self._out is not None:
                    self._write_invalidates(self._out, self._symbols_with_books(), gap=True)
                else:
                    self._pending_invalidates.update(self._symbols_with_books())
                continue
            self._gaps_pending.add((symbol, stream))
        if resync:
            if symbol is ALL_SYMBOLS:
                self.resync_needed.update(s for s, i in self.instruments.items() if i.has_book)
            elif symbol in self.instruments and self.instruments[symbol].has_book:
                self.resync_needed.add(symbol)

    def _gap_flag(self, symbol: str, stream: str) -> int:
        """TICK_FLAG_GAP_BEFORE if a gap is pending for this symbol's (or any symbol's) next record in
        ``stream``; taking it clears it, unless the frame is rejected (then it stays pending)."""
        pending = self._gaps_pending
        if not pending:
            return 0
        flag = 0
        for key in ((symbol, stream), (ALL_SYMBOLS, stream)):
            if key in pending:
                pending.discard(key)
                self._gaps_taken.append(key)
                flag = TICK_FLAG_GAP_BEFORE
        return flag

    # -- the error path (cold) ----------------------------------------------------------------
    def _undo(self, out: RecordBatch, mark: tuple[int, int]) -> None:
        out.rollback(mark)
        if self._frame_invalidates:   # the gap stands even though the frame that revealed it is bad
            sids, self._frame_invalidates = self._frame_invalidates, []
            self._write_invalidates(out, sids, gap=True)
        if self._gaps_taken:  # the records that carried these flags are gone: flag the next ones
            self._gaps_pending.update(self._gaps_taken)
            self._gaps_taken.clear()

    def _on_schema_error(self, frame: bytes | str, exc: msgspec.ValidationError, out: RecordBatch) -> None:
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError):
            obj = None
        # msgspec validates while it parses, so a frame cut short can fail the schema first
        kind = self._classify(obj) if obj is not None else bad.INVALID_JSON
        if kind is None:   # the venue-specific path handled it (a control message outside the union)
            return
        self._reject(kind, frame, str(exc), self._symbols_in(obj) if obj is not None else [])

    def _symbols_named(self, frame: bytes | str) -> list[str]:
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError):
            return []
        return self._symbols_in(obj)

    def _classify(self, obj: Any) -> str | None:
        """Kind of a frame that is valid JSON but failed the schema; None if handled as control."""
        return bad.SCHEMA

    def _symbols_in(self, obj: Any) -> list[str]:
        """Symbols a (lenient) decoded frame names, so a rejected frame gaps only those."""
        return []

    def _reject(self, kind: str, frame: bytes | str, detail: str, symbols: Iterable[str] = ()) -> None:
        self.bad_input.record(kind, frame, detail)
        for symbol in symbols:
            if isinstance(symbol, str) and symbol in self.instruments:
                self._raise_gap("rejected", symbol, f"{kind}: {detail}")
