"""OHLCV bars from trades, vectorised per batch: the arithmetic, no I/O.

A bar of timeframe T covers [k*T, (k+1)*T) of the trades' ``timestamp_ns`` (exchange time,
aligned to the Unix epoch). Trades come from either record (``add`` takes a batch of either):

- LevelUpdate trade records (action 3) carry the venue's price and size as f64: the exact double
  of the venue's text, so open/high/low/close printed with the venue's decimals are the venue's
  numbers, and volume is their f64 sum (exact to the venue's size decimals for any realistic bar).
  This is the path for exact bars (``shmpipe bars --levels``).
- Trade Ticks (flags bit 0: price in ``bid`` = ``ask``, size in ``volume``) keep the seeds' 32-byte
  layout with f32 numbers, about 7 significant digits: 67017.178 comes back as 67017.1796875.

Which trades count: every trade the venue reports (Coinbase market_trades, Kraken trade, Alpaca
``t``, whatever its conditions), except a zero-size one (it moves no volume, so it must not set a
high or a close; counted in ``zero_size``) and a non-finite or negative one (``rejected``). Alpaca's
trade corrections (``c``) and cancels (``x``) reach no ring (capture counts them by channel): a bar
that holds a corrected trade is not changed. Per (symbol, timeframe, bar) a batch is grouped
with one stable ``np.lexsort`` by (symbol, bar start, timestamp) and reduced with
``ufunc.reduceat``; open is the earliest trade (ties: the one that arrived first), close the latest
(ties: the one that arrived last), so bars equal a resample of the trades sorted by time, however
the stream was cut into batches.

Closing on time: a bar closes once its interval has ended and ``grace`` has passed, measured by a
clock the caller chooses: the wall clock (``advance(time.time_ns())`` from the consumer's loop, so a
bar closes even when no trade follows it) or the trades' own time (``close_on_trade_time=True``:
each trade advances the clock to the latest timestamp seen, for replays and recordings). A trade
for a bar already closed is late: counted in ``late`` per timeframe, never merged into a bar that
was already published. A bar with no trades is not emitted (there is nothing to say about it; a
subscriber that wants flat bars fills them from the previous close).

Partial bars: a bar is published with ``flags`` set when its aggregator did not see all of its period:
``BAR_FLAG_PARTIAL_START`` when the period began before the stream was watched (the first record read,
of any kind, or, live, ``watching_since_ns``: the wall clock when the reader attached, whichever is
earlier; a period that starts exactly at it is whole), ``BAR_FLAG_PARTIAL_END`` when ``flush`` closed it
before the stream reached its end (the latest record's time), ``BAR_FLAG_RECORDS_LOST`` when records were
lost (``records_lost_after``) between the last record before the loss and the first after it. A bar
with none of these is ``complete``; ``bars_partial`` counts the others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from shmpipe.records import ACTION_TRADE, LEVEL_UPDATE, TICK_FLAG_TRADE

NS = 1_000_000_000
BAR = np.dtype([
    ("symbol_id", "<u4"), ("timeframe_s", "<u4"), ("start_ns", "<u8"), ("end_ns", "<u8"),
    ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
    ("volume", "<f8"), ("vwap", "<f8"), ("trades", "<u4"), ("first_ns", "<u8"), ("last_ns", "<u8"),
    ("flags", "<u4"),            # BAR_FLAG_*: 0 is a complete bar
])


def partial_reasons(flags: int) -> list[str]:
    """A bar's flags as words: [] for a complete bar, else some of "start", "end", "lost"."""
    return [word for bit, word in PARTIAL_REASONS if flags & bit]
BAR_FLAG_PARTIAL_START = 1    # its period began before the stream was watched: trades before that are missing
BAR_FLAG_PARTIAL_END = 2      # the stream ended before its period did
BAR_FLAG_RECORDS_LOST = 4     # records were lost (a lapped reader) while its period was under way
PARTIAL_REASONS = ((BAR_FLAG_PARTIAL_START, "start"), (BAR_FLAG_PARTIAL_END, "end"),
                   (BAR_FLAG_RECORDS_LOST, "lost"))
DEFAULT_TIMEFRAMES = ("1s", "1m", "5m")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TIMEFRAME = re.compile(r"([1-9][0-9]{0,5})([smhd])")


class TimeframeError(ValueError):
    pass


def parse_timeframes(text: str) -> list[tuple[str, int]]:
    """"1s,1m,5m" -> [("1s", 1), ("1m", 60), ("5m", 300)]: (label, seconds), in the order given."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        m = _TIMEFRAME.fullmatch(part)
        if not m:
            raise TimeframeError(f"bad timeframe {part!r} in {text!r}: expected a count and a unit "
                                 f"(s, m, h, d), e.g. 1s,1m,5m")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if any(s == seconds for _, s in out):
            raise TimeframeError(f"timeframe {part!r} repeats another in {text!r}")
        out.append((part, seconds))
    return out


@dataclass
class _Timeframe:
    label: str
    ns: int
    horizon_ns: int = 0          # every bar ending at or before this is closed
    late: int = 0
    # (symbol_id, start_ns) -> [open, high, low, close, volume, price*volume, trades, first_ns, last_ns]
    open_bars: dict = field(default_factory=dict)


class BarAggregator:
    def __init__(self, timeframes: list[tuple[str, int]] | None = None, *, grace_s: float = 0.5,
                 close_on_trade_time: bool = False, watching_since_ns: int | None = None) -> None:
        """``watching_since_ns``: the time (the trades' clock) from which the caller saw every record
        the stream carries, e.g. the wall clock when a live reader attached at the ring's oldest record;
        None: from the first record ``add`` is given (a replay)."""
        if timeframes is None:
            timeframes = parse_timeframes(",".join(DEFAULT_TIMEFRAMES))
        if not timeframes:
            raise TimeframeError("at least one timeframe is needed")
        if not grace_s >= 0:
            raise ValueError(f"grace must be >= 0 seconds, not {grace_s!r}")
        self.timeframes = [_Timeframe(label, seconds * NS) for label, seconds in timeframes]
        self.grace_ns = int(grace_s * NS)
        self.close_on_trade_time = close_on_trade_time
        self.watermark_ns = 0        # the latest trade time seen
        self.trades = 0              # trades taken into bars (per timeframe each)
        self.rejected = 0            # trades with a price or size no bar can hold
        self.zero_size = 0           # trades of size 0: no volume, no high, no close
        self.bars_closed = 0
        self.bars_partial = 0
        self.watching_since_ns = watching_since_ns
        self.seen_from_ns: int | None = None   # trades from here on are all in the stream
        self.seen_to_ns = 0                     # the latest record's time (any record, not only trades)
        self.lost_spans: list[list[int | None]] = []   # [after_ns, until_ns or None while unknown]

    @property
    def late(self) -> dict[str, int]:
        return {tf.label: tf.late for tf in self.timeframes}

    @property
    def open_bars(self) -> int:
        return sum(len(tf.open_bars) for tf in self.timeframes)

    def add(self, records: np.ndarray) -> np.ndarray:
        """Fold a batch of Ticks (quotes are ignored) or LevelUpdates (only trade records count) in.
        Returns the bars this closed: with ``close_on_trade_time``, those the batch's trades moved
        past; else none (``advance``)."""
        if len(records):
            self._saw(records)
        if records.dtype == LEVEL_UPDATE:
            trades = records[records["action"] == ACTION_TRADE]
            price, size = trades["price"], trades["size"]
        else:
            trades = records[(records["flags"] & TICK_FLAG_TRADE) != 0]
            price, size = trades["bid"].astype(np.float64), trades["volume"].astype(np.float64)
        if len(trades) == 0:
            return np.empty(0, BAR)
        good = np.isfinite(price) & (price > 0) & np.isfinite(size) & (size >= 0)
        moved = size > 0
        if not (good & moved).all():
            self.rejected += int(np.count_nonzero(~good))
            self.zero_size += int(np.count_nonzero(good & ~moved))
            keep = good & moved
            trades, price, size = trades[keep], price[keep], size[keep]
            if len(trades) == 0:
                return np.empty(0, BAR)
        ts = trades["timestamp_ns"].astype(np.uint64)
        sid = trades["symbol_id"]
        self.trades += len(trades)
        if self.close_on_trade_time:
            # The clock each trade sees is the latest time before it, so a batch of out-of-order
            # trades is judged exactly as if they had come one by one.
            before = np.maximum.accumulate(np.concatenate(([np.uint64(self.watermark_ns)], ts)))[:-1]
        for tf in self.timeframes:
            start = ts - ts % np.uint64(tf.ns)
            horizon = np.uint64(tf.horizon_ns)
            if self.close_on_trade_time:
                clock = before.astype(np.int64) - self.grace_ns
                running = np.maximum(clock - clock % tf.ns, 0).astype(np.uint64)
                horizon = np.maximum(horizon, running)
            late = start + np.uint64(tf.ns) <= horizon
            if late.any():
                tf.late += int(np.count_nonzero(late))
                keep = ~late
                self._fold(tf, sid[keep], start[keep], ts[keep], price[keep], size[keep])
            else:
                self._fold(tf, sid, start, ts, price, size)
        self.watermark_ns = max(self.watermark_ns, int(ts.max()))
        return self.advance(self.watermark_ns) if self.close_on_trade_time else np.empty(0, BAR)

    def _saw(self, records: np.ndarray) -> None:
        stamps = records["timestamp_ns"]
        stamps = stamps[stamps != 0]             # an unstamped record says nothing about when
        if len(stamps) == 0:
            return
        if self.seen_from_ns is None:
            first = int(stamps[0])
            self.seen_from_ns = first if self.watching_since_ns is None else min(first, int(self.watching_since_ns))
        if self.lost_spans and self.lost_spans[-1][1] is None:
            self.lost_spans[-1][1] = int(stamps[0])
        self.seen_to_ns = max(self.seen_to_ns, int(stamps.max()))

    def records_lost_after(self, after_ns: int | None = None) -> None:
        """Records were lost after the one stamped ``after_ns`` (default: the latest seen) and before
        the next ``add``: every bar whose period overlaps that span is flagged BAR_FLAG_RECORDS_LOST."""
        after = self.seen_to_ns if after_ns is None else int(after_ns)
        if self.lost_spans and self.lost_spans[-1][1] is None:
            return                               # the same span, still open
        self.lost_spans.append([after, None])

    def _flags(self, start: int, end: int, cut_short: bool) -> int:
        flags = 0
        if self.seen_from_ns is None or start < self.seen_from_ns:
            flags |= BAR_FLAG_PARTIAL_START
        if cut_short and end > self.seen_to_ns:
            flags |= BAR_FLAG_PARTIAL_END
        for after, until in self.lost_spans:
            lo, hi = (after, after) if until is None else (min(after, until), max(after, until))
            if start <= hi and end > lo:
                flags |= BAR_FLAG_RECORDS_LOST
                break
        return flags

    def _fold(self, tf: _Timeframe, sid: np.ndarray, start: np.ndarray, ts: np.ndarray,
              price: np.ndarray, size: np.ndarray) -> None:
        n = len(sid)
        if n == 0:
            return
        order = np.lexsort((ts, start, sid))     # stable: equal timestamps keep arrival order
        sid, start, ts, price = sid[order], start[order], ts[order], price[order]
        size = size[order].astype(np.float64)
        first = np.empty(n, bool)
        first[0] = True
        np.not_equal(sid[1:], sid[:-1], out=first[1:])
        first[1:] |= start[1:] != start[:-1]
        heads = np.flatnonzero(first)
        tails = np.append(heads[1:], n) - 1
        high = np.maximum.reduceat(price, heads)
        low = np.minimum.reduceat(price, heads)
        volume = np.add.reduceat(size, heads)
        notional = np.add.reduceat(price.astype(np.float64) * size, heads)
        count = tails - heads + 1
        bars = tf.open_bars
        for g, (h, t) in enumerate(zip(heads.tolist(), tails.tolist())):
            key = (int(sid[h]), int(start[h]))
            bar = bars.get(key)
            if bar is None:
                bars[key] = [price[h], high[g], low[g], price[t], float(volume[g]), float(notional[g]),
                             int(count[g]), int(ts[h]), int(ts[t])]
                continue
            if ts[h] < bar[7]:                  # an earlier trade than the bar's first
                bar[0], bar[7] = price[h], int(ts[h])
            if ts[t] >= bar[8]:                 # at the same time, the one that came later closes
                bar[3], bar[8] = price[t], int(ts[t])
            bar[1] = max(bar[1], high[g])
            bar[2] = min(bar[2], low[g])
            bar[4] += float(volume[g])
            bar[5] += float(notional[g])
            bar[6] += int(count[g])

    def advance(self, now_ns: int) -> np.ndarray:
        """Close every bar whose interval ended at least ``grace`` before ``now_ns``."""
        closed = []
        for tf in self.timeframes:
            clock = int(now_ns) - self.grace_ns
            horizon = clock - clock % tf.ns
            if horizon <= tf.horizon_ns:
                continue
            tf.horizon_ns = horizon
            done = [key for key in tf.open_bars if key[1] + tf.ns <= horizon]
            closed.extend((tf, key, tf.open_bars.pop(key), False) for key in done)
        out = self._as_bars(closed)
        self._forget_lost_spans()
        return out

    def _forget_lost_spans(self) -> None:
        # a span every timeframe has closed past can flag no bar any more (a late trade opens none)
        oldest = min((tf.horizon_ns for tf in self.timeframes), default=0)
        self.lost_spans = [s for s in self.lost_spans if s[1] is None or max(s) >= oldest]

    def flush(self) -> np.ndarray:
        """Close every open bar (the stream has ended: no trade can still join them). One whose
        period the stream did not reach the end of is flagged BAR_FLAG_PARTIAL_END."""
        closed = []
        for tf in self.timeframes:
            for key, bar in tf.open_bars.items():
                closed.append((tf, key, bar, True))
                tf.horizon_ns = max(tf.horizon_ns, key[1] + tf.ns)
            tf.open_bars = {}
        return self._as_bars(closed)

    def _as_bars(self, closed: list) -> np.ndarray:
        out = np.empty(len(closed), BAR)
        for i, (tf, (sid, start), b, cut_short) in enumerate(closed):
            vwap = b[5] / b[4] if b[4] > 0 else float("nan")
            flags = self._flags(start, start + tf.ns, cut_short)
            out[i] = (sid, tf.ns // NS, start, start + tf.ns, b[0], b[1], b[2], b[3], b[4], vwap, b[6], b[7], b[8],
                      flags)
        self.bars_closed += len(out)
        self.bars_partial += int(np.count_nonzero(out["flags"]))
        if len(out) > 1:
            out = out[np.lexsort((out["symbol_id"], out["timeframe_s"], out["end_ns"]))]
        return out

    def label_of(self, timeframe_s: int) -> str:
        for tf in self.timeframes:
            if tf.ns == timeframe_s * NS:
                return tf.label
        raise KeyError(timeframe_s)


__all__ = ["BAR", "BAR_FLAG_PARTIAL_END", "BAR_FLAG_PARTIAL_START", "BAR_FLAG_RECORDS_LOST", "DEFAULT_TIMEFRAMES",
           "BarAggregator", "TimeframeError", "parse_timeframes", "partial_reasons"]
