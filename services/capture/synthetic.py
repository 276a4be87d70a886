"""A seeded synthetic market: random-walk quotes, trades and book deltas for K symbols, generated as
numpy batches (no per-record Python), for load tests and a demo that needs no network.

The stream is a sequence of events; event i is one Tick (a quote, or a trade with probability
``trade_fraction``) and one LevelUpdate (the trade itself, or a set/delete at one of the top ``depth``
levels of a random side). The level stream starts with one snapshot per symbol (snapshot-begin,
``depth`` bids and asks around the start price, snapshot-end). Everything is drawn in fixed blocks
from one ``numpy.random.Generator``, so a seed gives the same records however the caller slices them:
ten ``next_batch(1000)`` equal one ``next_batch(10000)``.

It is a load generator, not a market model: each symbol's mid is a geometric random walk and book
deltas land near the current mid, but the book is not kept uncrossed as the mid moves. The market
the demo runs (books that stay valid, trades at the touch, checksums, faults) is
``synthetic_market.SyntheticMarket`` (``capture --feed synthetic --market``).

The feed also keeps each symbol's book as its handed-out level records build it (vectorised per
batch, one dict update per distinct level: about 0.1 µs per event on the shared 2-core box), so
``snapshot(k)`` can write a fresh snapshot of it when capture is asked to resnapshot a symbol: what
a venue does when a client resubscribes.
"""
from __future__ import annotations

import numpy as np

from shmpipe.records import (
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    LEVEL_FLAG_LAST,
    LEVEL_UPDATE,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_SYNTHETIC,
    TICK,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)

from .symbol_ids import InMemorySymbolIds, SymbolIdFn

EXCHANGE = "synthetic"
START_NS = 1_718_116_200_000_000_000   # 2024-06-11T14:30:00Z, the fixtures' start
BLOCK = 1 << 16                         # events drawn per step; fixed, so slicing never changes the stream


class SyntheticFeed:
    def __init__(self, symbols: int = 8, seed: int = 0, *, symbol_id: SymbolIdFn | None = None,
                 start_ns: int = START_NS, events_per_second: float = 1_000_000.0,
                 trade_fraction: float = 0.2, depth: int = 10, tick: float = 0.01,
                 start_price: float = 100.0, volatility_bps: float = 0.5, delete_fraction: float = 0.1) -> None:
        if symbols < 1:
            raise ValueError(f"symbols must be >= 1, got {symbols}")
        if not events_per_second > 0:
            raise ValueError(f"events_per_second must be > 0, got {events_per_second}")
        self.symbols = symbols
        self.seed = seed
        self.depth = depth
        self.tick = tick
        self.trade_fraction = trade_fraction
        self.delete_fraction = delete_fraction
        self.start_ns = start_ns
        self.interval_ns = 1e9 / events_per_second
        self._volatility = volatility_bps * 1e-4
        self._rng = np.random.default_rng(seed)
        symbol_id = symbol_id if symbol_id is not None else InMemorySymbolIds()
        self.names = [f"SYN{k:04d}" for k in range(symbols)]
        self.symbol_ids = np.array([symbol_id(EXCHANGE, name, price_decimals=2, size_decimals=4, depth=depth)
                                    for name in self.names], dtype=np.uint32)
        # each symbol starts at its own price so their records are told apart at a glance
        self._log_mid = np.log(start_price * (1.0 + 0.1 * np.arange(symbols)))
        self._events = 0                       # events handed out so far
        self._generated = 0                    # events drawn so far (a block ahead of _events at most)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._snapshot_due = True
        # Books as handed out: key (symbol index << 33 | side << 32 | price in ticks) -> size (0: gone).
        self._book: dict[int, float] = {}
        self._id_order = np.argsort(self.symbol_ids)
        self._last_ns = start_ns

    @property
    def events(self) -> int:
        return self._events

    def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n events: (n Ticks, n LevelUpdates, preceded by the snapshots in the first batch)."""
        ticks_parts, level_parts = [], []
        if self._snapshot_due:
            level_parts.append(self._snapshots())
            self._snapshot_due = False
        need = n
        while need > 0:
            if self._pending is None:
                self._pending = self._block()
            ticks, levels = self._pending
            take = min(need, len(ticks))
            ticks_parts.append(ticks[:take])
            level_parts.append(levels[:take])
            self._pending = (ticks[take:], levels[take:]) if take < len(ticks) else None
            need -= take
        self._events += n
        levels = np.concatenate(level_parts) if level_parts else np.empty(0, LEVEL_UPDATE)
        self._track(levels)
        return np.concatenate(ticks_parts) if ticks_parts else np.empty(0, TICK), levels

    # -- the books as handed out ----------------------------------------------------------------------
    def _track(self, levels: np.ndarray) -> None:
        if not len(levels):
            return
        self._last_ns = int(levels["timestamp_ns"][-1])
        sets = levels[levels["action"] == ACTION_SET]
        index = self._id_order[np.searchsorted(self.symbol_ids[self._id_order], sets["symbol_id"])]
        keys = (index.astype(np.int64) << 33) | (sets["side"].astype(np.int64) << 32) \
            | np.rint(sets["price"] / self.tick).astype(np.int64)
        # the last record of each key wins, as in a book: np.unique of the reversed keys finds it, so
        # the Python-level update is per distinct level, not per record
        unique, last = np.unique(keys[::-1], return_index=True)
        self._book.update(zip(unique.tolist(), sets["size"][::-1][last].tolist()))

    def book(self, k: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Symbol k's (bids best first, asks best first) as (price, size), from the records handed out."""
        sides: tuple[list, list] = ([], [])
        for key, size in self._book.items():
            if key >> 33 == k and size != 0.0:
                ticks = key & 0xFFFF_FFFF
                sides[(key >> 32) & 1].append((round(ticks * self.tick, 2), size))
        sides[SIDE_BID].sort(reverse=True)
        sides[SIDE_ASK].sort()
        return sides

    def snapshot(self, k: int) -> np.ndarray:
        """A fresh snapshot of symbol k's book: snapshot-begin, its levels, snapshot-end, stamped with
        the time of the last event handed out."""
        bids, asks = self.book(k)
        out = np.zeros(len(bids) + len(asks) + 2, LEVEL_UPDATE)
        out["action"][0], out["action"][-1] = ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END
        out["action"][1:-1] = ACTION_SET
        out["side"][1:len(bids) + 1], out["side"][len(bids) + 1:-1] = SIDE_BID, SIDE_ASK
        levels = bids + asks
        if levels:
            out["price"][1:-1], out["size"][1:-1] = zip(*levels)
        out["symbol_id"] = self.symbol_ids[k]
        out["timestamp_ns"] = self._last_ns
        out["source"] = SOURCE_SYNTHETIC
        out["flags"][-1] = LEVEL_FLAG_LAST     # one message: the order book publishes at its end
        return out

    # -- generation ---------------------------------------------------------------------------------
    def _prices(self, log_mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best bid and ask on the tick grid around each mid: one to three ticks wide."""
        mid = np.exp(log_mid)
        bid = np.floor(mid / self.tick) * self.tick
        return np.round(bid, 2), np.round(bid + self.tick * (1 + (np.floor(mid * 1e4) % 3)), 2)

    def _snapshots(self) -> np.ndarray:
        k, d = self.symbols, self.depth
        per_symbol = 2 * d + 2
        out = np.zeros(k * per_symbol, LEVEL_UPDATE)
        bid, ask = self._prices(self._log_mid)
        steps = np.arange(d) * self.tick
        for s in range(k):   # K iterations, once: the snapshot prefix, not the hot path
            rows = out[s * per_symbol:(s + 1) * per_symbol]
            rows["action"][0], rows["action"][-1] = ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END
            rows["action"][1:-1] = ACTION_SET
            rows["side"][1:d + 1], rows["side"][d + 1:-1] = SIDE_BID, SIDE_ASK
            rows["price"][1:d + 1] = np.round(bid[s] - steps, 2)
            rows["price"][d + 1:-1] = np.round(ask[s] + steps, 2)
            rows["size"][1:-1] = np.round(self._rng.exponential(1.0, 2 * d) + 0.0001, 4)
            rows["symbol_id"] = self.symbol_ids[s]
            rows["flags"][-1] = LEVEL_FLAG_LAST
        out["timestamp_ns"] = self.start_ns
        out["source"] = SOURCE_SYNTHETIC
        return out

    def _block(self) -> tuple[np.ndarray, np.ndarray]:
        rng, n, k = self._rng, BLOCK, self.symbols
        first = self._generated
        self._generated += n
        sym = rng.integers(0, k, n)
        steps = rng.standard_normal(n) * self._volatility
        is_trade = rng.random(n) < self.trade_fraction
        buy = rng.random(n) < 0.5
        level_side = rng.integers(0, 2, n)
        level_index = rng.integers(0, self.depth, n)
        delete = rng.random(n) < self.delete_fraction
        sizes = np.round(rng.exponential(1.0, (3, n)) + 0.0001, 4)

        # Each symbol's log-mid walks by its own steps in event order: a cumulative sum within groups
        # of equal symbol (stable sort by symbol, cumsum, subtract each group's start, unsort).
        order = np.argsort(sym, kind="stable")
        csum = np.cumsum(steps[order])
        counts = np.bincount(sym, minlength=k)
        group_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        before_group = np.concatenate(([0.0], csum))[group_start]
        walk = np.empty(n)
        walk[order] = csum - np.repeat(before_group, counts)
        log_mid = self._log_mid[sym] + walk
        self._log_mid = self._log_mid + np.bincount(sym, weights=steps, minlength=k)
        bid, ask = self._prices(log_mid)

        ticks = np.zeros(n, TICK)
        ts = self.start_ns + ((first + np.arange(n)) * self.interval_ns).astype(np.uint64)
        ticks["timestamp_ns"] = ts
        ticks["symbol_id"] = self.symbol_ids[sym]
        trade_price = np.where(buy, ask, bid)
        ticks["bid"] = np.where(is_trade, trade_price, bid)
        ticks["ask"] = np.where(is_trade, trade_price, ask)
        ticks["volume"] = np.where(is_trade, sizes[0], sizes[1] + sizes[2])
        ticks["source"] = SOURCE_SYNTHETIC
        ticks["flags"] = np.where(is_trade, TICK_FLAG_TRADE, TICK_FLAG_QUOTE)
        spread = np.minimum(np.rint((ask - bid) / (ask + bid) * 200_000.0), 0xFFFF)
        ticks["spread_bps"] = np.where(is_trade, 0, spread)
        ticks["sequence"] = (first + np.arange(n)) & 0xFFFF_FFFF

        levels = np.zeros(n, LEVEL_UPDATE)
        levels["timestamp_ns"] = ts
        levels["symbol_id"] = ticks["symbol_id"]
        levels["source"] = SOURCE_SYNTHETIC
        away = level_index * self.tick
        book_price = np.round(np.where(level_side == SIDE_BID, bid - away, ask + away), 2)
        levels["price"] = np.where(is_trade, trade_price, book_price)
        levels["size"] = np.where(is_trade, sizes[0], np.where(delete, 0.0, sizes[2]))
        levels["side"] = np.where(is_trade, np.where(buy, SIDE_ASK, SIDE_BID), level_side)
        levels["action"] = np.where(is_trade, ACTION_TRADE, ACTION_SET)
        levels["flags"] = LEVEL_FLAG_LAST      # every event is a message of its own
        return ticks, levels
