"""Coinbase Advanced Trade market data (``wss://advanced-trade-ws.coinbase.com``) -> records.

Channels: ``l2_data`` (subscribe ``level2``) -> LevelUpdates; ``ticker`` -> quote Ticks; ``market_trades``
-> trade Ticks plus trade LevelUpdates; ``heartbeats`` and ``subscriptions`` -> bookkeeping only.

- Tick.sequence is the envelope's ``sequence_num``, which counts every message on the connection: a jump
  is a connection-wide gap (Coinbase does not say which product the lost message was about, so every
  book on the connection is queued for a resnapshot). ``heartbeat_counter`` must go up by one.
- Times: a ticker's Tick and a snapshot's records carry the envelope ``timestamp`` (snapshot levels say
  1970); an update level carries its own ``event_time``; a trade its ``time``.
- A quote Tick's volume is best_bid_quantity + best_ask_quantity (the displayed top-of-book size). The
  ticker's ``price`` (the last trade) has no Tick field; it is kept as text in ``instruments[s].last_price``.
- Decimals: Coinbase trims trailing zeros, so the decimals recorded for a product are the most seen in
  its snapshot.
- A trade's LevelUpdate side is the resting order's side as Coinbase reports it (``side`` is the
  maker's: BUY -> bid 0, SELL -> ask 1).
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec

from shmpipe.records import (
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    SOURCE_COINBASE,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)

from . import bad_input as bad
from .feed_parser import (
    ALL_SYMBOLS,
    LEVELS,
    TICKS,
    FeedParser,
    check_level,
    check_quote,
    decimals_of,
    non_negative,
    positive,
)
from ._levels import append_coinbase_updates, rfc3339_ns
from .record_batch import U32_MASK, RecordBatch, pack_level, pack_tick, spread_tenth_bps

EXCHANGE = "coinbase"
DEFAULT_URL = "wss://advanced-trade-ws.coinbase.com"
SIDES = {"bid": 0, "offer": 1}
TRADE_SIDES = {"BUY": 0, "SELL": 1}


class L2Level(msgspec.Struct):
    side: Literal["bid", "offer"]
    event_time: str
    price_level: float   # decimal text on the wire; DECODER's strict=False parses it (numbers only)
    new_quantity: float


class L2Event(msgspec.Struct):
    type: Literal["snapshot", "update"]
    product_id: str
    updates: list[L2Level]


class Ticker(msgspec.Struct):
    product_id: str
    price: str           # kept as text: instruments[s].last_price
    best_bid: float
    best_bid_quantity: float
    best_ask: float
    best_ask_quantity: float


class TickerEvent(msgspec.Struct):
    type: str
    tickers: list[Ticker]


class MarketTrade(msgspec.Struct):
    trade_id: str
    product_id: str
    price: str
    size: float
    side: Literal["BUY", "SELL"]
    time: str


class MarketTradesEvent(msgspec.Struct):
    type: str
    trades: list[MarketTrade]


class HeartbeatEvent(msgspec.Struct):
    current_time: str
    heartbeat_counter: int  # an integer on the wire; the docs' example shows a string (strict=False takes both)


class SubscriptionsEvent(msgspec.Struct):
    subscriptions: dict[str, list[str]]


class Envelope(msgspec.Struct, tag_field="channel"):
    timestamp: str
    sequence_num: int


class L2Message(Envelope, tag="l2_data"):
    events: list[L2Event]


class TickerMessage(Envelope, tag="ticker"):
    events: list[TickerEvent]


class MarketTradesMessage(Envelope, tag="market_trades"):
    events: list[MarketTradesEvent]


class HeartbeatsMessage(Envelope, tag="heartbeats"):
    events: list[HeartbeatEvent]


class SubscriptionsMessage(Envelope, tag="subscriptions"):
    events: list[SubscriptionsEvent]


CHANNELS = ("l2_data", "ticker", "market_trades", "heartbeats", "subscriptions")
# strict=False lets a float field take Coinbase's decimal strings ("67012.31") in C, and still refuses
# anything that is not a number ("abc", " 1", "1_0"); it also takes "NaN", which check_level refuses.
DECODER = msgspec.json.Decoder(L2Message | TickerMessage | MarketTradesMessage | HeartbeatsMessage
                               | SubscriptionsMessage, strict=False)


def subscribe_messages(products: list[str], channels: tuple[str, ...] = ("level2", "ticker", "market_trades"),
                       jwt: str | None = None) -> list[str]:
    """The frames to send after connecting: heartbeats first (they keep quiet subscriptions open),
    then one subscribe per channel (Coinbase takes one channel per request)."""
    frames = []
    for channel in ("heartbeats",) + tuple(channels):
        msg: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if channel != "heartbeats":
            msg["product_ids"] = list(products)
        if jwt:
            msg["jwt"] = jwt
        frames.append(msgspec.json.encode(msg).decode())
    return frames


class CoinbaseParser(FeedParser):
    exchange = EXCHANGE
    source = SOURCE_COINBASE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_sequence: int | None = None
        self.last_heartbeat: int | None = None
        self.subscriptions: dict[str, list[str]] = {}

    def reset_connection(self) -> None:
        self.next_sequence = None
        self.last_heartbeat = None
        super().reset_connection()

    def _feed(self, frame: bytes | str, out: RecordBatch, recv_ns: int) -> None:
        msg = DECODER.decode(frame)
        kind = type(msg)
        seq = msg.sequence_num
        if seq != self.next_sequence and self.next_sequence is not None:
            self._check_sequence(seq)
        self.next_sequence = seq + 1
        if kind is L2Message:
            self.messages["l2_data"] += 1
            self._on_l2(msg, frame, out)
        elif kind is TickerMessage:
            self.messages["ticker"] += 1
            self._on_ticker(msg, out)
        elif kind is MarketTradesMessage:
            self.messages["market_trades"] += 1
            self._on_trades(msg, out)
        elif kind is HeartbeatsMessage:
            self.messages["heartbeats"] += 1
            self._on_heartbeats(msg)
        else:
            self.messages["subscriptions"] += 1
            for event in msg.events:
                self.subscriptions = event.subscriptions  # cumulative: the latest ack is the whole set
            self._touch("subscriptions", None)

    def _check_sequence(self, seq: int) -> None:
        expected = self.next_sequence
        if expected is not None and seq != expected:
            if seq > expected:
                missing = seq - expected
                self._raise_gap("sequence", ALL_SYMBOLS,
                                f"sequence_num {seq} after {expected - 1}: {missing} message(s) missing")
            else:
                self._raise_gap("sequence", ALL_SYMBOLS,
                                f"sequence_num {seq} after {expected - 1}: repeated or out of order")
        self.next_sequence = seq + 1

    def _on_l2(self, msg: L2Message, frame: bytes | str, out: RecordBatch) -> None:
        messages = self.messages
        for event in msg.events:
            symbol = event.product_id
            inst = self.instruments.get(symbol)
            if event.type == "update":
                messages["l2_data.update"] += 1
                if inst is None or not inst.has_book:
                    # Never snapshotted on this connection: applying it would build a book from nothing,
                    # and a product nobody subscribed to must not take an id in the registry.
                    self.bad_input.record(bad.UPDATE_WITHOUT_SNAPSHOT, frame,
                                          f"l2_data update for {symbol}, not snapshotted on this connection")
                    continue
                self._symbol_in_progress = symbol
                if self.watchdog is not None:
                    self._touch("l2_data", symbol)
                flags = self._gap_flag(symbol, LEVELS) if self._gaps_pending else 0
                # one SET per level, compiled (_levels.pyx); returns the last level's time
                self._last_exchange_ns = append_coinbase_updates(out.levels, event.updates, inst.symbol_id,
                                                                 SOURCE_COINBASE, flags)
            else:
                messages["l2_data.snapshot"] += 1
                self._symbol_in_progress = symbol
                self._on_snapshot(msg, event, inst or self._instrument(symbol), out)

    def _on_snapshot(self, msg: L2Message, event: L2Event, inst, out: RecordBatch) -> None:
        # Snapshot levels say event_time 1970: the envelope's time is the snapshot's.
        ts = self._last_exchange_ns = rfc3339_ns(msg.timestamp)
        sid = inst.symbol_id
        if self.watchdog is not None:
            self._touch("l2_data", inst.symbol)
        records = [pack_level(ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_BEGIN, SOURCE_COINBASE,
                              self._gap_flag(inst.symbol, LEVELS))]
        price_dec = size_dec = 0
        for u in event.updates:
            check_level(u.price_level, u.new_quantity)
            records.append(pack_level(ts, u.price_level, u.new_quantity, sid, SIDES[u.side], ACTION_SET,
                                      SOURCE_COINBASE, 0))
            # Coinbase trims trailing zeros, and repr() of the float gives that same shortest text
            price_dec = max(price_dec, decimals_of(repr(u.price_level)))
            size_dec = max(size_dec, decimals_of(repr(u.new_quantity)))
        records.append(pack_level(ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_END, SOURCE_COINBASE, 0))
        out.levels += b"".join(records)
        inst.has_book = True
        # Coinbase trims trailing zeros, so one snapshot shows at most the real precision: only more
        # decimals than seen before is news (fewer is no change of the venue's).
        self._learn(inst, price_decimals=max(price_dec, inst.price_decimals or 0),
                    size_decimals=max(size_dec, inst.size_decimals or 0), when_ns=ts)

    def _on_ticker(self, msg: TickerMessage, out: RecordBatch) -> None:
        ts = rfc3339_ns(msg.timestamp)
        self._last_exchange_ns = ts
        seq = msg.sequence_num & U32_MASK
        for event in msg.events:
            for t in event.tickers:
                symbol = t.product_id
                self._symbol_in_progress = symbol
                inst = self.instruments.get(symbol) or self._instrument(symbol)
                bid, ask = t.best_bid, t.best_ask
                check_quote(bid, t.best_bid_quantity, ask, t.best_ask_quantity)
                positive(t.price)
                flags = TICK_FLAG_QUOTE | (self._gap_flag(symbol, TICKS) if self._gaps_pending else 0)
                out.ticks += pack_tick(ts, inst.symbol_id, bid, ask, t.best_bid_quantity + t.best_ask_quantity,
                                       SOURCE_COINBASE, flags, spread_tenth_bps(bid, ask), seq)
                inst.last_price = t.price
                if self.watchdog is not None:
                    self._touch("ticker", symbol)

    def _on_trades(self, msg: MarketTradesMessage, out: RecordBatch) -> None:
        seq = msg.sequence_num & U32_MASK
        for event in msg.events:
            for t in event.trades:
                symbol = t.product_id
                self._symbol_in_progress = symbol
                inst = self.instruments.get(symbol) or self._instrument(symbol)
                price, size, ts = positive(t.price), non_negative(t.size), rfc3339_ns(t.time)
                out.ticks += pack_tick(ts, inst.symbol_id, price, price, size, SOURCE_COINBASE,
                                       TICK_FLAG_TRADE | self._gap_flag(symbol, TICKS), 0, seq)
                out.levels += pack_level(ts, price, size, inst.symbol_id, TRADE_SIDES[t.side], ACTION_TRADE,
                                         SOURCE_COINBASE, self._gap_flag(symbol, LEVELS))
                inst.last_price = t.price
                self._last_exchange_ns = ts
                self._touch("market_trades", symbol)

    def _on_heartbeats(self, msg: HeartbeatsMessage) -> None:
        for event in msg.events:
            counter = int(event.heartbeat_counter)
            last = self.last_heartbeat
            if last is not None and counter != last + 1:
                self._raise_gap("heartbeat", ALL_SYMBOLS, f"heartbeat_counter {counter} after {last}")
            self.last_heartbeat = counter
        self._touch("heartbeats", None)

    # -- error path -----------------------------------------------------------------------------
    def _classify(self, obj: Any) -> str | None:
        if isinstance(obj, dict) and obj.get("type") == "error":
            self.messages["error"] += 1
            self.bad_input.record(bad.VENUE_ERROR, str(obj), str(obj.get("message", "")))
            return None
        if isinstance(obj, dict) and isinstance(obj.get("sequence_num"), int):
            self._check_sequence(obj["sequence_num"])  # the message was received, only not understood
        if not isinstance(obj, dict) or obj.get("channel") not in CHANNELS:
            return bad.UNKNOWN_TYPE
        return bad.SCHEMA

    def _symbols_in(self, obj: Any) -> list[str]:
        found = []
        events = obj.get("events") if isinstance(obj, dict) else None
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, dict):
                continue
            if "product_id" in event:
                found.append(event["product_id"])
            for key in ("tickers", "trades"):
                for item in event.get(key) or ():
                    if isinstance(item, dict) and "product_id" in item:
                        found.append(item["product_id"])
        return found
