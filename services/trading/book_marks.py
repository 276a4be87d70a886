"""Marks from the live books ring: each symbol's mid from its latest OrderbookEntry, and whether it
may be trusted. A stale, invalid, crossed or one-sided book gives no mark and says why (``Mark.why``
a short key for counters, ``Mark.reason`` the line for people, naming the book's flag bits):
callers reject on it, never guess.

Fields are read by name (``bids``/``asks`` best first, ``flags``, ``symbol_id``), so any layout
version of ``shmpipe.records.ORDERBOOK_ENTRY`` with those names works.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

import shmpipe
from shmpipe.records import (
    BOOK_FLAG_CHECKSUM_FAILED,
    BOOK_FLAG_CROSSED,
    BOOK_FLAG_GAP,
    BOOK_FLAG_INVALID,
    BOOK_FLAG_STALE,
    BOOK_FLAG_UNVERIFIED,
    ORDERBOOK_ENTRY,
    TICK,
    TICK_FLAG_QUOTE,
)

# The order book's reason bits (records.py), as a person reads them; INVALID is set with each.
FLAG_NAMES = ((BOOK_FLAG_STALE, "stale (capture invalidated it)"), (BOOK_FLAG_CROSSED, "crossed"),
              (BOOK_FLAG_CHECKSUM_FAILED, "checksum failed"), (BOOK_FLAG_GAP, "gap"),
              (BOOK_FLAG_UNVERIFIED, "unverified"))


@dataclass(frozen=True)
class Mark:
    mid: Decimal | None
    reason: str            # "" when mid is usable, else why not ("no book", "book stale 3.1 s", ...)
    received_ns: int = 0
    why: str = ""          # "" or a short key: no_book, unknown_symbol, stale, invalid, unverified,
                           # one_sided, crossed (the counters' names)


@dataclass
class _Latest:
    bid: np.floating           # as the ring holds it (f32 or f64): its shortest decimal is exact
    ask: np.floating
    flags: int
    received_ns: int


class BookMarks:
    """Reads the books ring on a thread of its own (a reader of a lossless ring must keep up) and
    keeps each symbol's latest top of book. ``mark(symbol_id)`` is safe from any thread."""

    dtype = ORDERBOOK_ENTRY
    source = "books"       # what ``ctl ... status`` says marks come from
    what = "books ring {!r} does not exist (start the order book first: shmpipe orderbook)"

    def __init__(self, ring_name: str, *, stale_s: float = 2.0, price_decimals: int = 8) -> None:
        try:
            self._ring = shmpipe.Ring.open(ring_name, self.dtype)
        except shmpipe.RingNotFoundError:
            raise shmpipe.ShmpipeError(self.what.format(ring_name)) from None
        self.ring_name, self.stale_s = ring_name, stale_s
        self._quantum = Decimal(1).scaleb(-price_decimals)
        self._consumer = self._ring.consumer("newest")   # an older entry could pass for fresh
        self._latest: dict[int, _Latest] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.entries = 0
        self._thread = threading.Thread(target=self._run, name="book-marks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._consumer.read(1024, timeout=0.1)
            except shmpipe.ShmpipeError:
                return
            if not len(batch):
                continue
            now = time.time_ns()
            with self._lock:
                self._take(batch, now)
                self.entries += len(batch)

    def _take(self, batch, now: int) -> None:
        for entry in batch:
            self._latest[int(entry["symbol_id"])] = _Latest(
                entry["bids"][0][0], entry["asks"][0][0], int(entry["flags"]), now)

    def mark(self, symbol_id: int | None) -> Mark:
        if symbol_id is None:
            return Mark(None, "unknown symbol (not in the symbol registry)", why="unknown_symbol")
        with self._lock:
            latest = self._latest.get(symbol_id)
        return mark_of(latest, self.stale_s, self._quantum)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._consumer.close()
        self._ring.close()


class QuoteMarks(BookMarks):
    """The same from a ticks ring: each symbol's latest quote Tick (bid, ask). For a market whose
    books cannot be trusted by construction (``capture --feed synthetic`` without ``--market`` lets
    its book cross as the mid walks: a load generator, not a market model) while its quotes can.
    A quote Tick carries no validity flags: prefer the books ring wherever there is one."""

    dtype = TICK
    source = "quotes"
    what = "ticks ring {!r} does not exist (start capture first)"

    def _take(self, batch, now: int) -> None:
        quotes = batch[(batch["flags"] & TICK_FLAG_QUOTE) != 0]
        for tick in quotes:
            self._latest[int(tick["symbol_id"])] = _Latest(tick["bid"], tick["ask"], 0, now)


def open_marks(books: str | None, quotes: str | None, stale_s: float) -> BookMarks | None:
    if books and quotes:
        raise shmpipe.ShmpipeError("marks come from --books or --quotes, not both")
    if books:
        return BookMarks(books, stale_s=stale_s)
    if quotes:
        return QuoteMarks(quotes, stale_s=stale_s)
    return None


def flag_names(flags: int) -> str:
    return ", ".join(name for bit, name in FLAG_NAMES if flags & bit) or "no reason bit"


def mark_of(latest: _Latest | None, stale_s: float, quantum: Decimal, now_ns: int | None = None) -> Mark:
    if latest is None:
        return Mark(None, "no book", why="no_book")
    age = ((time.time_ns() if now_ns is None else now_ns) - latest.received_ns) / 1e9
    if age > stale_s:
        return Mark(None, f"book stale ({age:.1f} s old, limit {stale_s:g} s)", latest.received_ns, "stale")
    if latest.flags & BOOK_FLAG_INVALID:
        why = "stale" if latest.flags & BOOK_FLAG_STALE else "invalid"
        return Mark(None, f"book invalid: {flag_names(latest.flags)} (flags {latest.flags:#x})",
                    latest.received_ns, why)
    if latest.flags & BOOK_FLAG_UNVERIFIED:
        # The venue sends checksums that this book could not be checked against: it may be wrong
        # and nothing would say so, so it marks nothing.
        return Mark(None, f"book unverified: its checksums could not be checked (flags {latest.flags:#x})",
                    latest.received_ns, "unverified")
    if not (latest.bid > 0 and latest.ask > 0):
        return Mark(None, "book one-sided or empty", latest.received_ns, "one_sided")
    if latest.bid >= latest.ask:
        return Mark(None, f"book crossed (bid {latest.bid} >= ask {latest.ask})", latest.received_ns,
                    "crossed")
    # Each price as the shortest decimal that reads back to it in its own width, then the mid.
    bid = Decimal(np.format_float_positional(latest.bid, unique=True, trim="-"))
    ask = Decimal(np.format_float_positional(latest.ask, unique=True, trim="-"))
    mid = ((bid + ask) / 2).quantize(quantum)
    return Mark(mid, "", latest.received_ns)


class FixedMarks:
    """Marks from a table (tests, and engines run without a books ring): symbol -> mid."""

    def __init__(self, mids: dict[str, Decimal]) -> None:
        self.mids = dict(mids)

    def mark_symbol(self, symbol: str) -> Mark:
        mid = self.mids.get(symbol)
        if mid is None:
            return Mark(None, "no book", time.time_ns(), "no_book")
        return Mark(mid, "", time.time_ns())


def symbol_id_of(exchange: str, symbol: str) -> int | None:
    from shmpipe import symbols
    try:
        return symbols.default_registry().find(exchange, symbol)
    except (shmpipe.ShmpipeError, OSError):
        return None
