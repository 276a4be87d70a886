"""Alpaca market data stream -> Ticks (stocks ``wss://stream.data.alpaca.markets/v2/sip``, crypto
``.../v1beta3/crypto/us``; one parser per connection, the two share one format).

Every frame is a JSON array of items tagged by ``T``: ``q`` -> quote Tick, ``t`` -> trade Tick;
``success``, ``subscription``, ``error`` and the data types this capture does not turn into records
(bars, statuses, LULDs, corrections, cancel errors, order books) are counted only.

- Alpaca has no message sequence (trade ids are not consecutive), so Tick.sequence is the item's
  position on this connection.
- A quote Tick's volume is bid size + ask size; a trade Tick has bid = ask = the trade price and
  volume = its size (f32). Each trade is also a LevelUpdate trade record (action 3) with the exact
  f64 price and size, for consumers that need the venue's numbers (``shmpipe bars --levels``); its
  ``side`` is 0 because Alpaca does not say which side the taker was.
- Trade corrections (``c``) and cancels (``x``) are counted in ``messages`` ("c", "x"), not applied:
  the records already written for the trade they correct stand.
- One bad item spoils only itself: when a frame fails the schema, its items are decoded one by one, so
  the other symbols in the same array still get through.
"""
from __future__ import annotations

import json
from typing import Any

import msgspec

from shmpipe.records import ACTION_TRADE, SIDE_BID, SOURCE_ALPACA, TICK_FLAG_QUOTE, TICK_FLAG_TRADE

from . import bad_input as bad
from .feed_parser import TICKS, FeedParser, check_quote, non_negative, positive
from .record_batch import U32_MASK, RecordBatch, pack_level, pack_tick, spread_tenth_bps
from ._levels import rfc3339_ns

EXCHANGE = "alpaca"
STOCKS_URL = "wss://stream.data.alpaca.markets/v2/sip"
CRYPTO_URL = "wss://stream.data.alpaca.markets/v1beta3/crypto/us"


class Item(msgspec.Struct, tag_field="T"):
    pass


class Quote(Item, tag="q"):
    S: str
    bp: float
    bs: float
    ap: float
    as_: float = msgspec.field(name="as")
    t: str


class Trade(Item, tag="t"):
    S: str
    p: float
    s: float
    t: str


class Success(Item, tag="success"):
    msg: str = ""


class Error(Item, tag="error"):
    code: int = 0
    msg: str = ""


class Subscription(Item, tag="subscription"):
    trades: list[str] = []
    quotes: list[str] = []


# Data types this capture receives only if subscribed to and does not turn into records.
class Bar(Item, tag="b"): pass
class DailyBar(Item, tag="d"): pass
class UpdatedBar(Item, tag="u"): pass
class TradingStatus(Item, tag="s"): pass
class Luld(Item, tag="l"): pass
class Correction(Item, tag="c"): pass
class CancelError(Item, tag="x"): pass
class Orderbook(Item, tag="o"): pass


ItemUnion = (Quote | Trade | Success | Error | Subscription | Bar | DailyBar | UpdatedBar | TradingStatus
             | Luld | Correction | CancelError | Orderbook)
ITEM_TYPES = ("q", "t", "success", "error", "subscription", "b", "d", "u", "s", "l", "c", "x", "o")
DECODER = msgspec.json.Decoder(list[ItemUnion])


def auth_message(key_id: str, secret_key: str) -> str:
    return msgspec.json.encode({"action": "auth", "key": key_id, "secret": secret_key}).decode()


def subscribe_message(symbols: list[str], trades: bool = True, quotes: bool = True) -> str:
    msg: dict[str, Any] = {"action": "subscribe"}
    if trades:
        msg["trades"] = list(symbols)
    if quotes:
        msg["quotes"] = list(symbols)
    return msgspec.json.encode(msg).decode()


class AlpacaParser(FeedParser):
    exchange = EXCHANGE
    source = SOURCE_ALPACA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.items = 0
        self.subscriptions: dict[str, list[str]] = {}

    def _feed(self, frame: bytes | str, out: RecordBatch, recv_ns: int) -> None:
        self._on_items(DECODER.decode(frame), frame, out)

    def _on_items(self, items: list[Item], frame: bytes | str, out: RecordBatch) -> None:
        messages, instruments = self.messages, self.instruments
        for index, item in enumerate(items):
            self.items += 1
            kind = type(item)
            mark = len(out.ticks), len(out.levels)
            try:
                if kind is Quote:
                    messages["q"] += 1
                    symbol = item.S
                    inst = instruments.get(symbol) or self._instrument(symbol)
                    bid, ask = item.bp, item.ap
                    check_quote(bid, item.bs, ask, item.as_)
                    flags = TICK_FLAG_QUOTE | (self._gap_flag(symbol, TICKS) if self._gaps_pending else 0)
                    out.ticks += pack_tick(rfc3339_ns(item.t), inst.symbol_id, bid, ask, item.bs + item.as_,
                                           SOURCE_ALPACA, flags, spread_tenth_bps(bid, ask), self.items & U32_MASK)
                    if self.watchdog is not None:
                        self._touch("quotes", symbol)
                elif kind is Trade:
                    messages["t"] += 1
                    symbol = item.S
                    inst = instruments.get(symbol) or self._instrument(symbol)
                    price, size, ts = positive(item.p), non_negative(item.s), rfc3339_ns(item.t)
                    flags = TICK_FLAG_TRADE | (self._gap_flag(symbol, TICKS) if self._gaps_pending else 0)
                    out.ticks += pack_tick(ts, inst.symbol_id, price, price, size,
                                           SOURCE_ALPACA, flags, 0, self.items & U32_MASK)
                    out.levels += pack_level(ts, price, size, inst.symbol_id, SIDE_BID, ACTION_TRADE,
                                             SOURCE_ALPACA, 0)
                    inst.last_price = repr(item.p)
                    if self.watchdog is not None:
                        self._touch("trades", symbol)
                else:
                    self._on_control(item, frame)
            except (ValueError, OverflowError) as exc:  # one bad value spoils only its own item
                self._undo(out, mark)
                symbol = getattr(item, "S", None)
                self._reject(bad.BAD_VALUE, frame, f"item {index}: {exc}", [symbol] if symbol else [])
            else:
                if self._gaps_taken:
                    self._gaps_taken.clear()

    def _on_control(self, item: Item, frame: bytes | str) -> None:
        self.messages[item.__struct_config__.tag] += 1
        if type(item) is Subscription:
            self.subscriptions = {"trades": item.trades, "quotes": item.quotes}
        elif type(item) is Error:
            self.bad_input.record(bad.VENUE_ERROR, frame, f"error {item.code}: {item.msg}")

    # -- error path: decode item by item so one bad item spoils only itself -------------------------
    def _on_schema_error(self, frame: bytes | str, exc: msgspec.ValidationError, out: RecordBatch) -> None:
        try:
            objs = json.loads(frame)
        except (ValueError, RecursionError):
            objs = None
        if not isinstance(objs, list):
            # msgspec validates while it parses, so a frame cut short can fail the schema first
            if objs is None:
                self._reject(bad.INVALID_JSON, frame, str(exc))
            else:
                self._reject(bad.SCHEMA, frame, "a frame must be a JSON array")
            return
        items = []
        for index, obj in enumerate(objs):
            try:
                items.append(msgspec.convert(obj, ItemUnion))
            except msgspec.ValidationError as item_exc:
                known_type = isinstance(obj, dict) and obj.get("T") in ITEM_TYPES
                kind = bad.SCHEMA if known_type else bad.UNKNOWN_TYPE
                self._reject(kind, frame, f"item {index}: {item_exc}", self._symbols_in([obj]))
        self._on_items(items, frame, out)

    def _symbols_in(self, obj: Any) -> list[str]:
        return [i["S"] for i in obj if isinstance(i, dict) and isinstance(i.get("S"), str)] \
            if isinstance(obj, list) else []
