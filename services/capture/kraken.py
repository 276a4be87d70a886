"""Kraken Spot WebSocket v2 (``wss://ws.kraken.com/v2``) -> records.

Channels: ``book`` -> LevelUpdates (snapshot-begin, sets, snapshot-end; then sets), each book message
followed by a checksum record (action 4: the message's ``checksum`` as an exact integer in ``price``)
that the order book verifies with ``kraken_checksum``; ``ticker`` -> quote Ticks; ``trade`` -> trade
Ticks plus trade LevelUpdates; ``status``, ``heartbeat`` and method responses -> bookkeeping only.

- Book numbers are decoded as raw JSON text (``msgspec.Raw``): the checksum is computed over the text
  with its trailing zeros, so a snapshot's text gives the instrument's price and size decimals, and the
  subscribe ack gives the book depth; both go to the symbol registry with the id.
- Kraken v2 has no message sequence. Tick.sequence is ``trade_id`` for trades (consecutive per pair:
  a jump is a gap for that pair) and the frame's position on this connection for tickers.
- A snapshot has no timestamp: its records get ``recv_ns`` when the caller knows it, else the latest
  exchange time seen on the connection.
- A quote Tick's volume is bid_qty + ask_qty; the ticker's ``last`` is kept in ``instruments[s].last_price``.
- A trade's LevelUpdate side is the side the taker hit: buy -> ask 1, sell -> bid 0.
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec

from shmpipe.records import (
    ACTION_TRADE,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_KRAKEN,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)

from . import bad_input as bad
from .feed_parser import (
    LEVELS,
    TICKS,
    FeedParser,
    check_quote,
    decimals_of,
    non_negative,
    positive,
)
from ._levels import append_kraken_book, rfc3339_ns
from .record_batch import U32_MASK, RecordBatch, pack_level, pack_tick, spread_tenth_bps

EXCHANGE = "kraken"
DEFAULT_URL = "wss://ws.kraken.com/v2"
DEFAULT_DEPTH = 10
TAKER_SIDES = {"buy": SIDE_ASK, "sell": SIDE_BID}


class BookLevel(msgspec.Struct):
    price: msgspec.Raw
    qty: msgspec.Raw


class BookData(msgspec.Struct):
    symbol: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    checksum: int
    timestamp: str | None = None  # updates only


class TickerData(msgspec.Struct):
    symbol: str
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    last: msgspec.Raw
    timestamp: str | None = None


class TradeData(msgspec.Struct):
    symbol: str
    side: Literal["buy", "sell"]
    price: msgspec.Raw
    qty: msgspec.Raw
    trade_id: int
    timestamp: str


class Channel(msgspec.Struct, tag_field="channel"):
    pass


class BookMessage(Channel, tag="book"):
    type: Literal["snapshot", "update"]
    data: list[BookData]


class TickerMessage(Channel, tag="ticker"):
    type: str
    data: list[TickerData]


class TradeMessage(Channel, tag="trade"):
    type: Literal["snapshot", "update"]
    data: list[TradeData]


class InstrumentPair(msgspec.Struct):
    symbol: str
    price_precision: int
    qty_precision: int


class InstrumentData(msgspec.Struct):
    pairs: list[InstrumentPair] = []


class InstrumentMessage(Channel, tag="instrument"):
    """Kraken's reference data: where it announces a pair's change of precision."""
    type: str
    data: InstrumentData


class HeartbeatMessage(Channel, tag="heartbeat"):
    pass


class StatusMessage(Channel, tag="status"):
    pass  # connection_id is a uint64 above 2**63; nothing here needs it, so it is never decoded


class SubscribeResult(msgspec.Struct):
    channel: str
    symbol: str | None = None
    depth: int | None = None


class MethodResponse(msgspec.Struct):
    """Replies to requests (subscribe acks, pong); they have no ``channel``, so they are decoded only
    when a frame fails the channel union (a handful per connection)."""
    method: str
    success: bool | None = None
    result: SubscribeResult | None = None
    error: str | None = None


CHANNELS = ("book", "ticker", "trade", "heartbeat", "status", "instrument")
DECODER = msgspec.json.Decoder(BookMessage | TickerMessage | TradeMessage | HeartbeatMessage | StatusMessage
                               | InstrumentMessage)
METHOD_DECODER = msgspec.json.Decoder(MethodResponse)


def subscribe_messages(symbols: list[str], depth: int = DEFAULT_DEPTH,
                       channels: tuple[str, ...] = ("book", "ticker", "trade", "instrument")) -> list[str]:
    """One subscribe per channel; ``instrument`` (reference data, where Kraken announces a pair's
    change of precision) takes no symbols."""
    frames = []
    for req_id, channel in enumerate(channels, 1):
        if channel == "instrument":
            frames.append(msgspec.json.encode({"method": "subscribe", "params": {"channel": "instrument",
                                               "snapshot": True}, "req_id": req_id}).decode())
            continue
        params: dict[str, Any] = {"channel": channel, "symbol": list(symbols)}
        if channel == "book":
            params["depth"] = depth
        request = {"method": "subscribe", "params": params, "req_id": req_id}
        frames.append(msgspec.json.encode(request).decode())
    return frames


class KrakenParser(FeedParser):
    exchange = EXCHANGE
    source = SOURCE_KRAKEN

    def _feed(self, frame: bytes | str, out: RecordBatch, recv_ns: int) -> None:
        msg = DECODER.decode(frame)
        kind = type(msg)
        if kind is BookMessage:
            self.messages["book"] += 1
            self.messages["book." + msg.type] += 1
            for data in msg.data:
                self._on_book(data, msg.type == "snapshot", frame, out, recv_ns)
        elif kind is TickerMessage:
            self.messages["ticker"] += 1
            for data in msg.data:
                self._on_ticker(data, out)
        elif kind is TradeMessage:
            self.messages["trade"] += 1
            for data in msg.data:
                self._on_trade(data, msg.type == "snapshot", out)
        elif kind is InstrumentMessage:
            self.messages["instrument"] += 1
            self._on_instrument(msg.data, recv_ns)
        else:
            channel = msg.__struct_config__.tag
            self.messages[channel] += 1
            self._touch(channel, None)

    def _on_book(self, data: BookData, snapshot: bool, frame: bytes | str, out: RecordBatch,
                 recv_ns: int) -> None:
        symbol = data.symbol
        self._symbol_in_progress = symbol
        inst = self.instruments.get(symbol)
        if not snapshot and (inst is None or not inst.has_book):
            self.bad_input.record(bad.UPDATE_WITHOUT_SNAPSHOT, frame,
                                  f"book update for {symbol}, which has no snapshot on this connection")
            return
        if inst is None:
            inst = self._instrument(symbol)
        sid = inst.symbol_id
        if self.watchdog is not None:
            self._touch("book", symbol)
        if data.timestamp is not None:
            ts = self._last_exchange_ns = rfc3339_ns(data.timestamp)
        else:
            ts = recv_ns or self._last_exchange_ns
        flags = self._gap_flag(symbol, LEVELS) if self._gaps_pending else 0
        # [snapshot-begin,] the levels [, snapshot-end], the checksum record: compiled (_levels.pyx)
        append_kraken_book(out.levels, data.bids, data.asks, ts, sid, SOURCE_KRAKEN, flags, snapshot,
                           data.checksum)
        if snapshot:
            first = data.bids[0] if data.bids else (data.asks[0] if data.asks else None)
            if first is not None:
                self._learn(inst, price_decimals=decimals_of(bytes(first.price)),
                            size_decimals=decimals_of(bytes(first.qty)), when_ns=ts)
            inst.has_book = True

    def _on_instrument(self, data: InstrumentData, recv_ns: int) -> None:
        """A pair's precision as Kraken announces it (snapshot, then updates when it changes): the
        registry records a change with when it took effect (the frame's receipt: the channel carries
        no time), so the order book's checksums follow. Only the pairs this connection follows."""
        for pair in data.pairs:
            inst = self.instruments.get(pair.symbol)
            if inst is not None:
                self._learn(inst, price_decimals=pair.price_precision, size_decimals=pair.qty_precision,
                            when_ns=recv_ns)

    def _on_ticker(self, data: TickerData, out: RecordBatch) -> None:
        symbol = data.symbol
        self._symbol_in_progress = symbol
        inst = self.instruments.get(symbol) or self._instrument(symbol)
        if data.timestamp is not None:
            self._last_exchange_ns = rfc3339_ns(data.timestamp)
        bid, ask = data.bid, data.ask
        check_quote(bid, data.bid_qty, ask, data.ask_qty)
        positive(data.last)
        flags = TICK_FLAG_QUOTE | (self._gap_flag(symbol, TICKS) if self._gaps_pending else 0)
        out.ticks += pack_tick(self._last_exchange_ns, inst.symbol_id, bid, ask, data.bid_qty + data.ask_qty,
                               SOURCE_KRAKEN, flags, spread_tenth_bps(bid, ask), self.frames & U32_MASK)
        inst.last_price = bytes(data.last).decode()
        if self.watchdog is not None:
            self._touch("ticker", symbol)

    def _on_trade(self, data: TradeData, snapshot: bool, out: RecordBatch) -> None:
        symbol = data.symbol
        self._symbol_in_progress = symbol
        inst = self.instruments.get(symbol) or self._instrument(symbol)
        price, size, ts = positive(data.price), non_negative(data.qty), rfc3339_ns(data.timestamp)
        last = inst.last_trade_id
        if not snapshot and last is not None and data.trade_id != last + 1:
            # A missed trade says nothing about the book (its own checksums vouch for it): only the
            # trade stream of this symbol is flagged.
            self._raise_gap("trade_id", symbol, f"{symbol} trade_id {data.trade_id} after {last}",
                            resync=False, streams=(TICKS,))
        inst.last_trade_id = data.trade_id
        out.ticks += pack_tick(ts, inst.symbol_id, price, price, size, SOURCE_KRAKEN,
                               TICK_FLAG_TRADE | self._gap_flag(symbol, TICKS), 0, data.trade_id & U32_MASK)
        out.levels += pack_level(ts, price, size, inst.symbol_id, TAKER_SIDES[data.side], ACTION_TRADE,
                                 SOURCE_KRAKEN, self._gap_flag(symbol, LEVELS))
        inst.last_price = bytes(data.price).decode()
        self._last_exchange_ns = ts
        self._touch("trade", symbol)

    # -- method responses and the error path ------------------------------------------------------
    def _classify(self, obj: Any) -> str | None:
        if isinstance(obj, dict) and "method" in obj and "channel" not in obj:
            try:
                response = msgspec.convert(obj, MethodResponse)
            except msgspec.ValidationError:
                return bad.SCHEMA
            self._on_method_response(response, obj)
            return None
        if not isinstance(obj, dict) or obj.get("channel") not in CHANNELS:
            return bad.UNKNOWN_TYPE
        return bad.SCHEMA

    def _on_method_response(self, response: MethodResponse, obj: Any) -> None:
        if response.success is False:
            self.messages["error"] += 1
            self.bad_input.record(bad.VENUE_ERROR, str(obj), f"{response.method} failed: {response.error}")
            return
        if response.method == "subscribe":
            self.messages["subscribe_ack"] += 1
            result = response.result
            if result is not None and result.symbol is not None:
                inst = self._instrument(result.symbol)
                if result.channel == "book":
                    self._learn(inst, depth=result.depth if result.depth is not None else DEFAULT_DEPTH)
        else:
            self.messages[response.method] += 1

    def _symbols_in(self, obj: Any) -> list[str]:
        data = obj.get("data") if isinstance(obj, dict) else None
        return [d["symbol"] for d in data if isinstance(d, dict) and isinstance(d.get("symbol"), str)] \
            if isinstance(data, list) else []
