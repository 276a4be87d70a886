"""The synthetic market in plain Python: the specification the compiled one (``_market.pyx``,
behind ``synthetic_market.SyntheticMarket``) is held to record for record, and the old side of
its A/B (bench/pipeline_bench.py --market-ab). Same seed, same bytes: tests/test_synthetic_market.py
checks the two against each other, faults included. A few µs an event: not for the pipeline.

What the market does and guarantees is described in synthetic_market.py. The arguments, the
symbols, the clock and the snapshot come from its ``MarketFrame``; the true book, the checksum and
the per-event loop are this module's own, written apart from the compiled core's.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_SET,
    ACTION_TRADE,
    LEVEL_FLAG_GAP_BEFORE,
    LEVEL_UPDATE,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_SYNTHETIC,
    TICK,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)

from .record_batch import pack_level as _pack_level
from .synthetic_market import BLOCK, CHECKSUM_DEPTH, LEVEL_FLAG_LAST, MarketFrame


class ReferenceSyntheticMarket(MarketFrame):
    def _start_books(self, start_price: float) -> None:
        symbols = self.symbols
        self._rng = np.random.default_rng(self.seed)
        # The true books: best prices in ticks, sizes in units, index 0 the touch.
        self.best_bid = [round(start_price * (1.0 + 0.1 * k) / self.tick) for k in range(symbols)]
        self.best_ask = [b + 1 for b in self.best_bid]
        self.bid_sizes = [self._fresh_sizes() for _ in range(symbols)]
        self.ask_sizes = [self._fresh_sizes() for _ in range(symbols)]
        self._messages = [0] * symbols          # per symbol, for the checksum cadence
        self._skip = [0] * symbols              # messages still to lose (a gap fault)
        self._gap_next = [False] * symbols      # the next handed-out record carries gap-before
        self._corrupt_next = [False] * symbols
        self._block: tuple | None = None
        self._block_at = BLOCK

    # -- the true book --------------------------------------------------------------------------
    def _fresh_sizes(self) -> list[int]:
        return [int(x) for x in self._rng.integers(1, 50_000, self.depth)]

    def _touch(self, k: int) -> tuple[int, int, list[int], list[int]]:
        return self.best_bid[k], self.best_ask[k], self.bid_sizes[k], self.ask_sizes[k]

    def checksum(self, k: int) -> int:
        """Kraken's CRC32 of symbol k's true book: each number's text with "." removed and leading
        zeros stripped is the integer count of ticks (or size units) itself."""
        n = min(CHECKSUM_DEPTH, self.depth)
        a, b = self.best_ask[k], self.best_bid[k]
        parts = [f"{a + i}{s}" for i, s in enumerate(self.ask_sizes[k][:n])]
        parts += [f"{b - i}{s}" for i, s in enumerate(self.bid_sizes[k][:n])]
        return zlib.crc32("".join(parts).encode("ascii")) & 0xFFFF_FFFF

    def _book_made_whole(self, k: int) -> None:
        self._gap_next[k] = False

    # -- faults ---------------------------------------------------------------------------------
    def inject(self, kind: str, k: int, *, messages: int = 5) -> None:
        """``gap``: lose symbol k's next ``messages`` messages (the book moves on without them);
        ``corrupt``: the next level handed out for k has a wrong size, checked at once."""
        if kind == "gap":
            self._skip[k] = messages
        elif kind == "corrupt":
            self._corrupt_next[k] = True
        else:
            raise ValueError(f"fault kind must be one of gap, corrupt (drop is capture's), not {kind!r}")

    def lose_everything_until_snapshot(self) -> None:
        """A dropped connection: what follows for every symbol comes after lost messages."""
        self._gap_next = [True] * self.symbols

    # -- generation -----------------------------------------------------------------------------
    def _draws(self):
        if self._block_at == BLOCK:
            rng = self._rng
            self._block = (rng.integers(0, self.symbols, BLOCK).tolist(), rng.random(BLOCK).tolist(),
                           rng.random(BLOCK).tolist(), rng.random(BLOCK).tolist(),
                           rng.integers(1, 50_000, BLOCK).tolist())
            self._block_at = 0
        i = self._block_at
        self._block_at += 1
        s, u1, u2, u3, size = self._block
        return s[i], u1[i], u2[i], u3[i], size[i]

    def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n events: (n Ticks, their LevelUpdates; the first batch starts with one snapshot
        per symbol). Live, events are stamped one interval apart, the last one now."""
        levels: list[tuple] = []
        ticks: list[tuple] = []
        levels_per_event: list[int] = []
        snaps = self._snapshots_due()
        first = self._events
        for _ in range(n):
            before = len(levels)
            self._event(levels, ticks)
            levels_per_event.append(len(levels) - before)
        self._events += n
        ts = self._timestamps(n)
        tick_out = np.zeros(n, TICK)
        if n:
            sym, bid, ask, vol, flags = zip(*ticks)
            tick_out["timestamp_ns"] = ts
            tick_out["symbol_id"] = sym
            tick_out["bid"], tick_out["ask"], tick_out["volume"] = bid, ask, vol
            tick_out["flags"] = flags
            bid_a, ask_a = np.asarray(bid), np.asarray(ask)
            quote = np.asarray(flags) == TICK_FLAG_QUOTE
            spread = np.minimum(np.rint((ask_a - bid_a) / (ask_a + bid_a) * 200_000.0), 0xFFFF)
            tick_out["spread_bps"] = np.where(quote, spread, 0)
            tick_out["source"] = SOURCE_SYNTHETIC
            tick_out["sequence"] = (first + np.arange(n)) & 0xFFFF_FFFF
        # one struct.pack per record and one copy: ~3x cheaper than numpy converting each tuple
        level_out = (np.frombuffer(b"".join([_pack_level(*r) for r in levels]), LEVEL_UPDATE).copy()
                     if levels else np.zeros(0, LEVEL_UPDATE))
        if len(level_out):
            level_out["timestamp_ns"] = np.repeat(ts, levels_per_event)
        if snaps:
            level_out = np.concatenate(snaps + [level_out])
        return tick_out, level_out

    def _event(self, levels: list, ticks: list) -> None:
        """One message of one symbol: its level records (timestamps filled by the caller) and one Tick."""
        k, u_kind, u_side, u_amount, size = self._draws()
        sid = self._sids[k]
        out: list[tuple] = []
        tick_px = self.tick
        pd = self.price_decimals
        trade = None
        if u_kind < self.trade_fraction:
            trade = self._trade(k, u_side < 0.5, u_amount, out)
        elif u_kind < self.trade_fraction + self.move_fraction:
            self._move(k, u_side < 0.5, size, out)
        else:
            side = SIDE_BID if u_side < 0.5 else SIDE_ASK
            i = min(int(-math.log1p(-u_amount) * 2.0), self.depth - 1)   # most changes near the touch
            self._resize(k, side, i, size, out)
        self._messages[k] += 1
        if self._skip[k]:
            self._skip[k] -= 1
            if not self._skip[k]:
                self._gap_next[k] = True
            out = []                       # lost on the way: the true book moved, nobody saw it
        elif out:
            if self._corrupt_next[k]:
                self._corrupt_next[k] = False
                wrong = next(r for r in reversed(out) if r[5] == ACTION_SET)
                out.append(wrong[:2] + (round(wrong[2] + 1.0, self.size_decimals),) + wrong[3:7] + (0,))
                self._messages[k] = 0      # a checksum ends this message
            if self._messages[k] % self.checksum_every == 0:
                out.append((0, float(self.checksum(k)), 0.0, sid, 0, ACTION_CHECKSUM, SOURCE_SYNTHETIC, 0))
            if self._gap_next[k]:
                self._gap_next[k] = False
                r = out[0]
                out[0] = r[:7] + (r[7] | LEVEL_FLAG_GAP_BEFORE,)
            r = out[-1]
            out[-1] = r[:7] + (r[7] | LEVEL_FLAG_LAST,)
            levels.extend(out)
        bid = round(self.best_bid[k] * tick_px, pd)
        ask = round(self.best_ask[k] * tick_px, pd)
        if trade is not None:
            ticks.append((sid, trade[0], trade[0], trade[1], TICK_FLAG_TRADE))
        else:
            ticks.append((sid, bid, ask, (self.bid_sizes[k][0] + self.ask_sizes[k][0]) * self._unit,
                          TICK_FLAG_QUOTE))

    def _level(self, k: int, side: int, i: int, units: int) -> tuple:
        ticks = self.best_bid[k] - i if side == SIDE_BID else self.best_ask[k] + i
        return (0, round(ticks * self.tick, self.price_decimals), round(units * self._unit, self.size_decimals),
                self._sids[k], side, ACTION_SET, SOURCE_SYNTHETIC, 0)

    def _resize(self, k: int, side: int, i: int, units: int, out: list) -> None:
        (self.bid_sizes if side == SIDE_BID else self.ask_sizes)[k][i] = units
        out.append(self._level(k, side, i, units))

    def _trade(self, k: int, buy: bool, u: float, out: list) -> tuple[float, float]:
        """A buy lifts the best ask, a sell hits the best bid; 1 in 4 takes the whole level."""
        side = SIDE_ASK if buy else SIDE_BID
        sizes = (self.ask_sizes if buy else self.bid_sizes)[k]
        touch = self.best_ask[k] if buy else self.best_bid[k]
        price = round(touch * self.tick, self.price_decimals)
        whole = u < 0.25 or sizes[0] < 2
        taken = sizes[0] if whole else max(1, int(sizes[0] * u))
        out.append((0, price, round(taken * self._unit, self.size_decimals), self._sids[k], side, ACTION_TRADE,
                    SOURCE_SYNTHETIC, 0))
        if whole:
            self._remove_touch(k, side, out)
        else:
            sizes[0] -= taken
            out.append(self._level(k, side, 0, sizes[0]))
        return price, taken * self._unit

    def _remove_touch(self, k: int, side: int, out: list) -> None:
        """The touch of one side is gone: the side's next level is the touch, a new far level keeps
        the depth. A spread past 3 ticks is refilled at once, in the same message."""
        out.append(self._level(k, side, 0, 0))
        if side == SIDE_BID:
            self.best_bid[k] -= 1
            self.bid_sizes[k] = self.bid_sizes[k][1:] + [int(self._rng_size(k))]
            out.append(self._level(k, side, self.depth - 1, self.bid_sizes[k][-1]))
        else:
            self.best_ask[k] += 1
            self.ask_sizes[k] = self.ask_sizes[k][1:] + [int(self._rng_size(k))]
            out.append(self._level(k, side, self.depth - 1, self.ask_sizes[k][-1]))
        if self.best_ask[k] - self.best_bid[k] > 3:
            self._improve(k, SIDE_ASK if side == SIDE_BID else SIDE_BID, self._rng_size(k), out)

    def _rng_size(self, k: int) -> int:
        # derived from the book itself, not a fresh draw, so an event consumes exactly one row
        return 1 + (self.bid_sizes[k][0] * 7919 + self.ask_sizes[k][0] * 104_729 + self.best_bid[k]) % 49_999

    def _improve(self, k: int, side: int, units: int, out: list) -> None:
        """A new level inside the spread becomes the touch; the far level drops out of the depth."""
        if side == SIDE_BID:
            out.append(self._level(k, side, self.depth - 1, 0))
            self.best_bid[k] += 1
            self.bid_sizes[k] = [units] + self.bid_sizes[k][:-1]
        else:
            out.append(self._level(k, side, self.depth - 1, 0))
            self.best_ask[k] -= 1
            self.ask_sizes[k] = [units] + self.ask_sizes[k][:-1]
        out.append(self._level(k, side, 0, units))

    def _move(self, k: int, bid_side: bool, units: int, out: list) -> None:
        """The touch moves: inside a spread wider than a tick a level improves; at a one-tick spread
        the touch is cancelled. Either way the mid moves half a tick."""
        side = SIDE_BID if bid_side else SIDE_ASK
        if self.best_ask[k] - self.best_bid[k] > 1:
            self._improve(k, side, units, out)
        elif side == SIDE_BID and self.best_bid[k] <= self.depth:
            self._remove_touch(k, SIDE_ASK, out)   # a price near zero only moves up
        else:
            self._remove_touch(k, side, out)
