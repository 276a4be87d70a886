"""NautilusTrader export: a ``ParquetDataCatalog`` at OUT written through NautilusTrader's own API.

- Instruments: a ``CurrencyPair`` per symbol with books or trades (base/quote from ``BTC-USD`` /
  ``BTC/USD``), venue = the exchange name in capitals, price and size precision and increments from
  the registry's decimals.
- ``OrderBookDelta``: a snapshot (and an invalidate from capture) is a CLEAR then ADDs flagged
  F_SNAPSHOT; an update is ADD (a new level), UPDATE (a known one) or DELETE (size 0, and the implied
  deletes of depth-limited venues); F_LAST on the last delta of each venue message and symbol;
  ``sequence`` is the venue message's number in the export (the deltas of one message share it).
  ts_event is the venue's time, ts_init the receive time.
- ``TradeTick``: trades from the level stream; aggressor BUYER when the trade hit the ask side.
Prices that do not sit on the registry's decimals are rounded by ``Price``; they are counted
(``inexact_decimals``) so the summary says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shmpipe.records import ACTION_SET, ACTION_SNAPSHOT_BEGIN, SIDE_BID

from .source import ACTION_INVALIDATE, ROW_LAST, ROW_SNAPSHOT, Chunk, InstrumentInfo

FLUSH_OBJECTS = 500_000


class NautilusExport:
    name = "nautilus"

    def __init__(self, out: Path) -> None:
        from nautilus_trader.model import data, enums, identifiers, objects
        from nautilus_trader.model.instruments import CurrencyPair
        from nautilus_trader.persistence.catalog import ParquetDataCatalog
        self.data, self.enums, self.ids, self.objects = data, enums, identifiers, objects
        self.CurrencyPair = CurrencyPair
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.catalog = ParquetDataCatalog(str(out))
        self.rows = {"instruments": 0, "order_book_deltas": 0, "trade_ticks": 0}
        self.inexact_decimals = 0
        self.skipped: dict[str, str] = {}
        self._instrument_ids: dict[int, object] = {}
        self._facts: dict[int, InstrumentInfo] = {}
        self._levels: dict[int, tuple[set, set]] = {}
        self._pending: list = []
        self._written_instruments: set[int] = set()
        self._trade_no = 0
        self.F_LAST = int(enums.RecordFlag.F_LAST)
        self.F_SNAPSHOT = int(enums.RecordFlag.F_SNAPSHOT)

    # -- instruments ----------------------------------------------------------------------------
    def _currency(self, code: str):
        Currency = self.objects.Currency
        try:
            return Currency.from_str(code)
        except (ValueError, KeyError):
            return Currency(code, 8, 0, code, self.enums.CurrencyType.CRYPTO)

    def _instrument_id(self, sid: int, info: InstrumentInfo):
        if sid in self._instrument_ids:
            return self._instrument_ids[sid]
        # the instrument's precision is fixed when it is written; every later row uses these facts
        self._facts[sid] = info = InstrumentInfo(**vars(info))
        iid = None
        parts = info.symbol.replace("-", "/").split("/")
        if info.price_decimals is None or info.size_decimals is None:
            self.skipped[f"{info.exchange}:{info.symbol}"] = "price/size decimals unknown"
        elif len(parts) != 2 or not all(parts):
            self.skipped[f"{info.exchange}:{info.symbol}"] = "not a BASE-QUOTE pair"
        else:
            ids, objects = self.ids, self.objects
            iid = ids.InstrumentId(ids.Symbol(info.symbol), ids.Venue(info.exchange.upper()))
            pair = self.CurrencyPair(
                iid, ids.Symbol(info.symbol), self._currency(parts[0]), self._currency(parts[1]),
                info.price_decimals, info.size_decimals,
                objects.Price(10.0 ** -info.price_decimals, info.price_decimals),
                objects.Quantity(10.0 ** -info.size_decimals, info.size_decimals), 0, 0)
            self.catalog.write_data([pair])
            self.rows["instruments"] += 1
        self._instrument_ids[sid] = iid
        return iid

    # -- data -------------------------------------------------------------------------------------
    def _exact(self, value: float, decimals: int) -> bool:
        scaled = value * 10.0 ** decimals
        return abs(scaled - round(scaled)) <= 1e-6 * max(1.0, abs(scaled))

    def add(self, chunk: Chunk, instruments: dict[int, InstrumentInfo]) -> None:
        book, trades = chunk.book, chunk.trades
        kinds = np.concatenate([np.zeros(len(book), np.int8), np.ones(len(trades), np.int8)])
        order = np.argsort(np.concatenate([book["msg"], trades["msg"]]), kind="stable")
        book_list, trade_list = book.tolist(), trades.tolist()
        made = []                      # (kind, args) in capture order; F_LAST patched before building
        last_delta: dict[int, int] = {}
        for pos in order.tolist():
            if kinds[pos] == 1:
                msg, recv, ev_ns, price, size, sid, side, _flags = trade_list[pos - len(book)]
                info = instruments.get(sid)
                iid = None if info is None else self._instrument_id(sid, info)
                if iid is None:
                    continue
                made.append(("trade", (iid, price, size, side, ev_ns, recv, self._facts[sid])))
                continue
            msg, recv, ev_ns, price, size, sid, side, action, flags = book_list[pos]
            info = instruments.get(sid)
            iid = None if info is None else self._instrument_id(sid, info)
            if iid is None:
                continue
            levels = self._levels.setdefault(sid, (set(), set()))
            snap = self.F_SNAPSHOT if flags & ROW_SNAPSHOT else 0
            if action in (ACTION_SNAPSHOT_BEGIN, ACTION_INVALIDATE):
                levels[0].clear()
                levels[1].clear()
                made.append(("clear", [iid, snap, ev_ns, recv, msg]))
                last_delta[sid] = len(made) - 1
            elif action == ACTION_SET:
                held = levels[0] if side == SIDE_BID else levels[1]
                if size == 0.0:
                    kind = self.enums.BookAction.DELETE
                    held.discard(price)
                elif price in held:
                    kind = self.enums.BookAction.UPDATE
                else:
                    kind = self.enums.BookAction.ADD
                    held.add(price)
                made.append(("delta", [iid, snap, kind, side, price, size, ev_ns, recv, self._facts[sid], msg]))
                last_delta[sid] = len(made) - 1
            # the message's last row may be a marker (a snapshot's end): F_LAST goes to its last delta
            if flags & ROW_LAST and sid in last_delta:
                made[last_delta.pop(sid)][1][1] |= self.F_LAST
        self._build(made)

    def _build(self, made: list) -> None:
        data, objects, enums = self.data, self.objects, self.enums
        Price, Quantity = objects.Price, objects.Quantity
        for kind, args in made:
            if kind == "clear":
                iid, flags, ev_ns, recv, msg = args
                delta = data.OrderBookDelta(iid, enums.BookAction.CLEAR, None, flags, msg, ev_ns, recv)
                self.rows["order_book_deltas"] += 1
            elif kind == "delta":
                iid, flags, action, side, price, size, ev_ns, recv, info, msg = args
                pd, sd = info.price_decimals, info.size_decimals
                if not (self._exact(price, pd) and self._exact(size, sd)):
                    self.inexact_decimals += 1
                order = data.BookOrder(enums.OrderSide.BUY if side == SIDE_BID else enums.OrderSide.SELL,
                                       Price(price, pd), Quantity(size, sd), 0)
                delta = data.OrderBookDelta(iid, action, order, flags, msg, ev_ns, recv)
                self.rows["order_book_deltas"] += 1
            else:
                iid, price, size, side, ev_ns, recv, info = args
                pd, sd = info.price_decimals, info.size_decimals
                if not (self._exact(price, pd) and self._exact(size, sd)):
                    self.inexact_decimals += 1
                # a trade record's side is the resting side it hit: the ask side means a buyer took it
                aggressor = enums.AggressorSide.SELLER if side == SIDE_BID else enums.AggressorSide.BUYER
                self._trade_no += 1
                delta = data.TradeTick(iid, Price(price, pd), Quantity(size, sd), aggressor,
                                       self.ids.TradeId(f"shmpipe-{self._trade_no}"), ev_ns, recv)
                self.rows["trade_ticks"] += 1
            self._pending.append(delta)
        if len(self._pending) >= FLUSH_OBJECTS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.catalog.write_data(self._pending)
            self._pending = []

    def close(self, instruments: dict[int, InstrumentInfo]) -> dict:
        self._flush()
        for sid, info in instruments.items():
            if sid not in self._instrument_ids:
                self.skipped[f"{info.exchange}:{info.symbol}"] = "no book or trade records"
        return {"rows": dict(self.rows), "inexact_decimals": self.inexact_decimals,
                "not_exported": dict(sorted(self.skipped.items()))}
