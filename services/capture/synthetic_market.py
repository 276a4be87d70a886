"""A synthetic market: per symbol a real book that a real venue could send, for the demo.

Unlike ``synthetic.SyntheticFeed`` (a load generator whose books cross), every record here keeps
the book a consumer rebuilds valid:

- each symbol's book is ``depth`` levels a side on whole ticks, contiguous from the touch
  (bids at best_bid, best_bid - 1 tick, ...; asks at best_ask, best_ask + 1 tick, ...), best_bid
  < best_ask always; sizes are whole units of 10**-size_decimals (exact in the checksum's text);
- one event is one venue message for one symbol: a resize of one level (most often near the
  touch), a trade at the touch that takes liquidity from the level it hits (a partial fill
  resizes it; a full fill removes it and a new level appears at the far end), or a move of the
  touch (a level improves inside a wide spread, or the touch is cancelled), the far level
  dropping or appearing so the book keeps its depth: the mid walks in whole (half) ticks;
- every record of a message carries that message's event time (CLOCK_REALTIME when it was made,
  or a simulated clock when ``start_ns`` is given) and its last record carries LEVEL_FLAG_LAST;
- like Kraken, every ``checksum_every``-th message of a symbol ends with a checksum record
  (action 4: Kraken's CRC32 of the top 10 levels a side, in ``price``), so the order book checks
  the synthetic books too;
- ``snapshot(k)`` is the feed's true book, whatever was handed out.

Faults, on purpose (``inject``): ``gap`` (the next messages of a symbol are lost, the first
record after them carries gap-before, as capture marks an exchange sequence jump), ``corrupt`` (one
handed-out level has a wrong size that the true book does not have; a checksum follows in the
same message, which then fails), ``drop`` (the connection is lost: see SyntheticCapture).

The random draws come in fixed blocks from one ``numpy.random.Generator`` and one event consumes
one row of each, so a seed gives the same records however the caller slices them.

The per-event loop is compiled (``_market.pyx``, ~0.1 µs an event where the Python one took ~5 µs:
issue 24's bottleneck at 1 M level updates/s); ``synthetic_market_reference.ReferenceSyntheticMarket``
is the same market in plain Python, the specification the compiled one matches byte for byte
(tests/test_synthetic_market.py).
"""
from __future__ import annotations

import time

import numpy as np

from shmpipe.records import (
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    LEVEL_UPDATE,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_SYNTHETIC,
    TICK,
)

from ._market import MarketCore
from .symbol_ids import InMemorySymbolIds, SymbolIdFn

try:   # issue 21 names the bit in shmpipe.records; DESIGN.md fixes its value
    from shmpipe.records import LEVEL_FLAG_LAST
except ImportError:   # pragma: no cover - before that lands
    LEVEL_FLAG_LAST = 16

EXCHANGE = "synthetic"
BLOCK = 4096                  # events drawn per step; fixed, so slicing never changes the stream
CHECKSUM_DEPTH = 10           # Kraken's: top 10 asks then top 10 bids
FAULT_KINDS = ("gap", "corrupt", "drop")
MAX_RECORDS_PER_EVENT = 7      # _market.pyx: trade + delete + far level + a refill (2) + corrupt + checksum


class MarketFrame:
    """What the compiled market and its plain-Python reference share: the arguments, the symbols,
    the clock, the true book's text and its snapshot. Each keeps its own true book and per-event
    loop (the reference stays an independent implementation of those): ``_start_books`` draws it,
    ``_touch`` reads it, ``_book_made_whole`` clears a symbol's pending gap flag."""

    def __init__(self, symbols: int = 8, seed: int = 0, *, symbol_id: SymbolIdFn | None = None,
                 start_ns: int | None = None, events_per_second: float = 20_000.0,
                 trade_fraction: float = 0.2, move_fraction: float = 0.15, depth: int = 10,
                 price_decimals: int = 2, size_decimals: int = 4, start_price: float = 100.0,
                 checksum_every: int = 8, clock=time.time_ns) -> None:
        if symbols < 1:
            raise ValueError(f"symbols must be >= 1, got {symbols}")
        if not events_per_second > 0:
            raise ValueError(f"events_per_second must be > 0, got {events_per_second}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if checksum_every < 1:
            raise ValueError(f"checksum_every must be >= 1, got {checksum_every}")
        self.symbols, self.seed, self.depth = symbols, seed, depth
        self.price_decimals, self.size_decimals = price_decimals, size_decimals
        self.tick = 10.0 ** -price_decimals
        self._unit = 10.0 ** -size_decimals
        self.trade_fraction, self.move_fraction = trade_fraction, move_fraction
        self.checksum_every = checksum_every
        self.start_ns, self.interval_ns, self.clock = start_ns, 1e9 / events_per_second, clock
        symbol_id = symbol_id if symbol_id is not None else InMemorySymbolIds()
        self.names = [f"SYN{k:04d}" for k in range(symbols)]
        self.symbol_ids = np.array([symbol_id(EXCHANGE, name, price_decimals=price_decimals,
                                              size_decimals=size_decimals, depth=depth)
                                    for name in self.names], dtype=np.uint32)
        self._sids = self.symbol_ids.tolist()
        self._start_books(start_price)
        self._events = 0
        self._snapshot_due = True
        self._last_ns = start_ns if start_ns is not None else clock()

    @property
    def events(self) -> int:
        return self._events

    def _start_books(self, start_price: float) -> None:
        """Draw each symbol's first true book from ``self.seed``."""
        raise NotImplementedError

    def _touch(self, k: int) -> tuple[int, int, list[int], list[int]]:
        """Symbol k's true best bid and best ask (ticks), bid and ask sizes (units, touch first)."""
        raise NotImplementedError

    def _book_made_whole(self, k: int) -> None:
        raise NotImplementedError

    def book(self, k: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Symbol k's true (bids best first, asks best first) as (price, size)."""
        pd, sd = self.price_decimals, self.size_decimals
        best_bid, best_ask, bid_sizes, ask_sizes = self._touch(k)
        bids = [(round((best_bid - i) * self.tick, pd), round(s * self._unit, sd))
                for i, s in enumerate(bid_sizes)]
        asks = [(round((best_ask + i) * self.tick, pd), round(s * self._unit, sd))
                for i, s in enumerate(ask_sizes)]
        return bids, asks

    def snapshot(self, k: int, ts: int | None = None) -> np.ndarray:
        """Symbol k's true book as one snapshot: begin, the levels, end (the message's last record)."""
        bids, asks = self.book(k)
        out = np.zeros(len(bids) + len(asks) + 2, LEVEL_UPDATE)
        out["action"][0], out["action"][-1] = ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END
        out["action"][1:-1] = ACTION_SET
        out["side"][1:len(bids) + 1], out["side"][len(bids) + 1:-1] = SIDE_BID, SIDE_ASK
        out["price"][1:-1], out["size"][1:-1] = zip(*(bids + asks))
        out["symbol_id"] = self._sids[k]
        out["timestamp_ns"] = self._now() if ts is None else ts
        out["source"] = SOURCE_SYNTHETIC
        out["flags"][-1] = LEVEL_FLAG_LAST
        self._book_made_whole(k)         # the snapshot makes the book whole: nothing to flag
        return out

    def _snapshots_due(self) -> list[np.ndarray]:
        """The first batch starts with one snapshot per symbol; later ones with none."""
        if not self._snapshot_due:
            return []
        self._snapshot_due = False
        return [self.snapshot(k, self._last_ns) for k in range(self.symbols)]

    def _now(self) -> int:
        if self.start_ns is not None:
            return self._last_ns
        self._last_ns = max(self._last_ns, self.clock())
        return self._last_ns

    def _timestamps(self, n: int) -> np.ndarray:
        if self.start_ns is not None:
            ts = self.start_ns + ((self._events - n + np.arange(n)) * self.interval_ns).astype(np.uint64)
            if n:
                self._last_ns = int(ts[-1])
            return ts.astype(np.uint64)
        # the events were due one interval apart up to now (not spread back over a pause), never
        # before the previous batch's last
        prev, now = self._last_ns, max(self._last_ns, self.clock())
        self._last_ns = now
        ts = now - ((n - 1 - np.arange(n)) * self.interval_ns).astype(np.int64)
        return np.maximum(ts, prev).astype(np.uint64)


class SyntheticMarket(MarketFrame):
    def _start_books(self, start_price: float) -> None:
        symbols, depth = self.symbols, self.depth
        rng = np.random.default_rng(self.seed)
        # The true books (in the core): best prices in ticks, sizes in units, index 0 the touch;
        # drawn in the reference's order so a seed gives its records.
        best_bid = [round(start_price * (1.0 + 0.1 * k) / self.tick) for k in range(symbols)]
        bid_sizes = np.array([rng.integers(1, 50_000, depth) for _ in range(symbols)], np.int64)
        ask_sizes = np.array([rng.integers(1, 50_000, depth) for _ in range(symbols)], np.int64)
        self._core = MarketCore(rng, self.symbol_ids, np.array(best_bid, np.int64), bid_sizes, ask_sizes,
                                price_decimals=self.price_decimals, size_decimals=self.size_decimals,
                                trade_fraction=self.trade_fraction, move_fraction=self.move_fraction,
                                checksum_every=self.checksum_every)

    # -- the true book (read-only copies of the core's) --------------------------------------------
    @property
    def best_bid(self) -> list[int]:
        return self._core.best_bid.tolist()

    @property
    def best_ask(self) -> list[int]:
        return self._core.best_ask.tolist()

    @property
    def bid_sizes(self) -> list[list[int]]:
        return self._core.bid_sizes.tolist()

    @property
    def ask_sizes(self) -> list[list[int]]:
        return self._core.ask_sizes.tolist()

    def _touch(self, k: int) -> tuple[int, int, list[int], list[int]]:
        core = self._core
        return (int(core.best_bid[k]), int(core.best_ask[k]),
                core.bid_sizes[k].tolist(), core.ask_sizes[k].tolist())

    def checksum(self, k: int) -> int:
        """Kraken's CRC32 of symbol k's true book: each number's text with "." removed and leading
        zeros stripped is the integer count of ticks (or size units) itself."""
        return int(self._core.checksum(k))

    def _book_made_whole(self, k: int) -> None:
        self._core.gap_next[k] = 0

    # -- faults ---------------------------------------------------------------------------------
    def inject(self, kind: str, k: int, *, messages: int = 5) -> None:
        """``gap``: lose symbol k's next ``messages`` messages (the book moves on without them);
        ``corrupt``: the next level handed out for k has a wrong size, checked at once."""
        if kind == "gap":
            self._core.skip[k] = messages
        elif kind == "corrupt":
            self._core.corrupt_next[k] = 1
        else:
            raise ValueError(f"fault kind must be one of gap, corrupt (drop is capture's), not {kind!r}")

    def lose_everything_until_snapshot(self) -> None:
        """A dropped connection: what follows for every symbol comes after lost messages."""
        self._core.gap_next[:] = 1

    # -- generation -----------------------------------------------------------------------------
    def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n events: (n Ticks, their LevelUpdates; the first batch starts with one snapshot
        per symbol). Live, events are stamped one interval apart, the last one now."""
        snaps = self._snapshots_due()
        first = self._events
        self._events += n
        ts = np.ascontiguousarray(self._timestamps(n), dtype=np.uint64)
        tick_out = np.zeros(n, TICK)
        level_buf = np.empty(n * MAX_RECORDS_PER_EVENT, LEVEL_UPDATE)
        used = self._core.fill(tick_out, level_buf, ts, first)
        level_out = level_buf[:used]
        if snaps:
            level_out = np.concatenate(snaps + [level_out])
        return tick_out, level_out
