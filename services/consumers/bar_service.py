"""``shmpipe bars``: trades from a ring -> OHLCV bars on the signals bus (and SQLite).

The trades come from a Tick ring (``--ticks``: f32 prices, ~7 significant digits) or from the trade
records of a LevelUpdate ring (``--levels``: the venue's exact numbers, f64); see ``bars``.

Each closed bar is one signal on topic ``market.bar.<tf>`` (tf as given to --timeframes, e.g.
``market.bar.1m``), in the bus's msgpack envelope (``shmpipe.signals``), with ``data``:

    {"symbol_id": int, "exchange": str | None, "symbol": str | None,   # None: id not in the registry
     "timeframe": "1m", "start_ns": int, "end_ns": int,               # [start, end), exchange time
     "open": float, "high": float, "low": float, "close": float,      # the trades' prices (exact: --levels)
     "volume": float, "vwap": float, "trades": int,
     "first_ns": int, "last_ns": int,                                 # first and last trade's time
     "complete": bool, "partial": list[str]}                          # why not complete, see below

``complete`` is false when bars did not see the whole period, and ``partial`` says why: "start" (the
period was under way when bars started reading: trades before that are missing), "end" (the stream
ended before the period did: the producer left), "lost" (records were lost, a lapped reader, while it
was under way). The record's ``flags`` (BAR_FLAG_*) carry the same.

With --sqlite PATH the same bars are appended to table ``bars`` (created if missing), committed
once per group of bars closed together; column ``complete`` is 1 or 0 (NULL in rows a version
without it wrote: a table made before is given the column).
"""
from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

import numpy as np

from shmpipe import symbols
from shmpipe.errors import ShmpipeError
from shmpipe.records import LEVEL_UPDATE, TICK

from .bars import BAR, BarAggregator, partial_reasons
from .loop import ConsumerError, ConsumerService, LoopOptions

TOPIC_PREFIX = "market.bar."
# A reader behind its ring (its last batch was full: more records wait) holds the wall clock back,
# so a bar is not closed while its trades are still unread; for at most this long, then it closes
# bars anyway and counts what comes for them as late.
BEHIND_LIMIT_S = 5.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol_id INTEGER NOT NULL, exchange TEXT, symbol TEXT, timeframe TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
    volume REAL NOT NULL, vwap REAL, trades INTEGER NOT NULL, complete INTEGER,
    PRIMARY KEY (symbol_id, timeframe, start_ns))
"""
_COLUMNS = ("symbol_id", "exchange", "symbol", "timeframe", "start_ns", "end_ns", "open", "high", "low", "close",
            "volume", "vwap", "trades", "complete")


class SymbolNames:
    """symbol_id -> (exchange, symbol) through the host registry, each id looked up once; an id
    the registry does not know gives (None, None) and is asked again later (it may be registered
    after the first record that carries it)."""

    def __init__(self, registry=None) -> None:
        self._registry = registry
        self._known: dict[int, tuple[str, str]] = {}

    def __call__(self, symbol_id: int) -> tuple[str | None, str | None]:
        name = self._known.get(symbol_id)
        if name is None:
            try:
                registry = self._registry or symbols.default_registry()
                name = self._known[symbol_id] = registry.lookup(symbol_id)
            except (ShmpipeError, OSError):
                return None, None
        return name


class SqliteBarStore:
    def __init__(self, path: str) -> None:
        try:
            self._db = sqlite3.connect(path)
            self._db.execute(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(bars)")}
            if "complete" not in have:       # a table an earlier version made: its rows stay NULL (unknown)
                self._db.execute("ALTER TABLE bars ADD COLUMN complete INTEGER")
            self._db.commit()
        except sqlite3.Error as exc:
            raise ConsumerError(f"cannot use SQLite database {path}: {exc}") from None
        self.path = path
        self.written = 0

    def append(self, rows: list[tuple]) -> None:
        # INSERT OR REPLACE: a bar is final once published; replaying the same trades writes
        # the same row again instead of failing.
        try:
            self._db.executemany(f"INSERT OR REPLACE INTO bars ({', '.join(_COLUMNS)}) "
                                 f"VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
            self._db.commit()
        except sqlite3.Error as exc:     # disk full, the file replaced by something else, locked
            raise ConsumerError(f"writing {len(rows)} bars to SQLite database {self.path} failed: {exc}") from None
        self.written += len(rows)

    def close(self) -> None:
        self._db.close()


def bar_payload(bar: np.void, label: str, names: SymbolNames) -> dict[str, Any]:
    sid = int(bar["symbol_id"])
    exchange, symbol = names(sid)
    vwap = float(bar["vwap"])
    return {"symbol_id": sid, "exchange": exchange, "symbol": symbol, "timeframe": label,
            "start_ns": int(bar["start_ns"]), "end_ns": int(bar["end_ns"]),
            "open": float(bar["open"]), "high": float(bar["high"]), "low": float(bar["low"]),
            "close": float(bar["close"]), "volume": float(bar["volume"]),
            "vwap": None if math.isnan(vwap) else vwap, "trades": int(bar["trades"]),
            "first_ns": int(bar["first_ns"]), "last_ns": int(bar["last_ns"]),
            "complete": int(bar["flags"]) == 0, "partial": partial_reasons(int(bar["flags"]))}


class BarService(ConsumerService):
    kind = "bars"
    dtype = TICK

    def __init__(self, options: LoopOptions, aggregator: BarAggregator, *, sqlite: str | None = None,
                 exact_trades: bool = False) -> None:
        """exact_trades: the ring holds LevelUpdates (their trade records), not Ticks."""
        self.dtype = LEVEL_UPDATE if exact_trades else TICK
        super().__init__(options)
        self.aggregator = aggregator
        self.names = SymbolNames()
        self.store = SqliteBarStore(sqlite) if sqlite else None
        self.storing = self.store is not None
        self.stored = 0
        self.bars_published = 0
        self.bars_partial_published = 0   # of bars_published: complete false
        self.open_bars_at_exit = 0
        self._lost_seen = 0
        self._behind_since: int | None = None    # wall clock when the reader fell behind its ring
        # live: bars sees every record written since its reader attached (from the oldest, a backlog
        # too), so its watching begins just before the attach (``run``); from the newest, records
        # written before the attach are skipped, so at the first loop turn, which comes after it
        self._note_watching = not aggregator.close_on_trade_time and aggregator.watching_since_ns is None

    def run(self) -> dict[str, Any]:
        if self._note_watching and self.options.start == "oldest":
            # a record written from here on is still in the ring when the reader attaches at its oldest
            self._watching()
        return super().run()

    def _watching(self) -> None:
        if self._note_watching:
            self._note_watching = False
            self.aggregator.watching_since_ns = time.time_ns()

    def on_batch(self, batch: np.ndarray) -> None:
        self._watching()
        lost = self._stream.lost if self._stream is not None else 0
        if lost > self._lost_seen:      # lapped: the bars open across the gap miss trades
            self._lost_seen = lost
            self.aggregator.records_lost_after()
        self._emit(self.aggregator.add(batch))
        if len(batch) < self.options.max_n:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.time_ns()

    def on_time(self, now_ns: int) -> None:
        self._watching()
        if self.aggregator.close_on_trade_time:
            return
        if self._behind_since is not None and now_ns - self._behind_since < BEHIND_LIMIT_S * 1e9:
            return                        # the rest of these bars' trades may be in the ring still
        self._emit(self.aggregator.advance(now_ns))

    def on_end(self, producer_gone: bool) -> None:
        if producer_gone:               # no trade can join the open bars any more: they are final
            self._emit(self.aggregator.flush())
        else:                           # stopped mid-interval: a partial bar would mislead
            self.open_bars_at_exit = self.aggregator.open_bars

    def _emit(self, bars: np.ndarray) -> None:
        if len(bars) == 0:
            return
        labelled = [(self.aggregator.label_of(int(bar["timeframe_s"])), bar) for bar in bars]
        payloads = [(label, bar_payload(bar, label, self.names)) for label, bar in labelled]
        if self.store is not None:       # stored before published: a subscriber may read the store
            self.store.append([(d["symbol_id"], d["exchange"], d["symbol"], label, d["start_ns"], d["end_ns"],
                                d["open"], d["high"], d["low"], d["close"], d["volume"], d["vwap"], d["trades"],
                                int(d["complete"]))
                               for label, d in payloads])
        for label, data in payloads:
            self.publish(TOPIC_PREFIX + label, data)
            self.bars_published += 1
            self.bars_partial_published += not data["complete"]

    def counters(self) -> dict[str, Any]:
        agg = self.aggregator
        out = {"trades": agg.trades, "rejected": agg.rejected, "zero_size": agg.zero_size,
               "bars": self.bars_published, "partial_bars": self.bars_partial_published,
               "open_bars": agg.open_bars, "open_bars_at_exit": self.open_bars_at_exit,
               "late": sum(agg.late.values())}
        out.update({f"late_{label}": n for label, n in agg.late.items()})
        if self.storing:
            out["stored"] = self.stored if self.store is None else self.store.written
        return out

    def close(self) -> None:
        if self.store is not None:
            self.stored = self.store.written
            self.store.close()
            self.store = None


__all__ = ["BAR", "BEHIND_LIMIT_S", "TOPIC_PREFIX", "BarService", "SqliteBarStore", "SymbolNames", "bar_payload"]
