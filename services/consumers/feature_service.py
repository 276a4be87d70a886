"""``shmpipe features``: OrderbookEntry books from a ring -> book features on the signals bus.

Rate: features are computed for every valid book; what is published is, per symbol, the latest
book's features, once per batch read and at most once per ``min_interval_s`` per symbol (a
symbol held back is sent by a later turn of the loop with its then-latest values, and at the
end). So a quiet book gets a message per update, a busy one about ``1 / min_interval_s`` a
second, and a subscriber always ends up with the latest values.

Topic ``signal.features``, in the bus's msgpack envelope (``shmpipe.signals``), ``data``:

    {"symbol_id": int, "exchange": str | None, "symbol": str | None,
     "ts_ns": int, "sequence": int,                  # the book's exchange time and sequence
     "mid": float, "spread": float, "spread_bps": float, "microprice": float,
     "imbalance": float, "top_n": int,               # (B - A) / (B + A) over the top_n levels
     "volatility": float | None, "vol_window": int,  # std of the last vol_window mid log returns
     "books": int}                                   # valid books folded in since the last message
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from shmpipe.records import ORDERBOOK_ENTRY

from .bar_service import SymbolNames
from .features import FeatureEngine, latest_per_symbol
from .loop import ConsumerService, LoopOptions

TOPIC = "signal.features"


def feature_payload(row: np.void, engine: FeatureEngine, names: SymbolNames, books: int) -> dict[str, Any]:
    sid = int(row["symbol_id"])
    exchange, symbol = names(sid)
    vol = float(row["volatility"])
    return {"symbol_id": sid, "exchange": exchange, "symbol": symbol, "ts_ns": int(row["timestamp_ns"]),
            "sequence": int(row["sequence"]), "mid": float(row["mid"]), "spread": float(row["spread"]),
            "spread_bps": float(row["spread_bps"]), "microprice": float(row["microprice"]),
            "imbalance": float(row["imbalance"]), "top_n": engine.top_n,
            "volatility": None if math.isnan(vol) else vol, "vol_window": engine.vol_window, "books": books}


class FeatureService(ConsumerService):
    kind = "features"
    dtype = ORDERBOOK_ENTRY

    def __init__(self, options: LoopOptions, engine: FeatureEngine, *, min_interval_s: float = 0.0) -> None:
        super().__init__(options)
        self.engine = engine
        self.names = SymbolNames()
        self.min_interval_s = min_interval_s
        self._pending: dict[int, np.void] = {}        # symbol_id -> latest unsent features
        self._books_since: dict[int, int] = {}
        self._last_sent: dict[int, float] = {}
        self.messages = 0

    def on_batch(self, batch: np.ndarray) -> None:
        features = self.engine.update(batch)
        if len(features) == 0:
            return
        sids, counts = np.unique(features["symbol_id"], return_counts=True)
        for sid, n in zip(sids.tolist(), counts.tolist()):
            self._books_since[sid] = self._books_since.get(sid, 0) + n
        for row in latest_per_symbol(features):
            self._pending[int(row["symbol_id"])] = row
        self._send(force=False)

    def on_time(self, now_ns: int) -> None:
        if self._pending:
            self._send(force=False)

    def on_end(self, producer_gone: bool) -> None:
        self._send(force=True)

    def _send(self, force: bool) -> None:
        now = time.monotonic()
        for sid in list(self._pending):
            if not force and now - self._last_sent.get(sid, -1e18) < self.min_interval_s:
                continue
            row = self._pending.pop(sid)
            self.publish(TOPIC, feature_payload(row, self.engine, self.names, self._books_since.pop(sid, 0)))
            self._last_sent[sid] = now
            self.messages += 1

    def counters(self) -> dict[str, Any]:
        skipped = self.engine.skipped
        return {"books": self.engine.books, "skipped_invalid": skipped.invalid,
                "skipped_empty_side": skipped.empty_side, "skipped_not_finite": skipped.not_finite,
                "skipped_crossed": skipped.crossed, "messages": self.messages}


__all__ = ["TOPIC", "FeatureService", "feature_payload"]
