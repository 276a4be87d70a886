"""The feed server's side of a resubscribe: each book as the venue holds it at the point the
recording has been played to, and the frames a venue sends when a client unsubscribes or subscribes
a book channel in the middle of a stream (acks, and a fresh snapshot in the venue's own format).

Books are kept from the recording's true lines: a line a fault dropped, cut or corrupted on its way
to the client still changed the venue's book, so a snapshot repairs what the fault broke.

- Kraken v2 ``book``: a snapshot replaces the book, an update sets each level in order (``qty`` 0
  deletes), then each side is truncated to the subscribed depth (the recording's ack says it, else
  10), as Kraken's checksum guide describes. Prices and quantities are kept as the wire text, so a
  snapshot carries the same digits and its CRC32 checksum (``kraken_checksum``) is the venue's.
- Coinbase Advanced Trade ``l2_data``: snapshot and update events; a fresh snapshot is one
  ``l2_data`` message with one ``snapshot`` event (bids best first, then offers best first, every
  ``event_time`` 1970 as Coinbase writes them), followed by the cumulative ``subscriptions`` ack.
  Its ``sequence_num`` is the connection's next one: Coinbase numbers every message it sends on a
  connection, so an inserted message takes a number and the recording's later lines go out shifted
  (the server renumbers them); a client therefore sees no false gap, and a fault's gap stays a gap.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .kraken_checksum import checksum_of_text

KRAKEN_DEFAULT_DEPTH = 10
COINBASE_SNAPSHOT_TIME = "1970-01-01T00:00:00Z"
_SEQUENCE = re.compile(rb'"sequence_num":(\d+)')
_TIMESTAMP_FIELD = re.compile(rb'"timestamp":"([^"]+)"')
_KRAKEN_QTY = re.compile(rb'"qty":(-?[0-9][0-9.eE+-]*)')
_COINBASE_QTY = re.compile(rb'"new_quantity":"([0-9][0-9.eE+-]*)"')
# A line the server never needs to parse is recognised by these bytes alone.
_KRAKEN_BOOK = b'"channel":"book"'
_COINBASE_L2 = b'"channel":"l2_data"'

Side = dict[Decimal, tuple[str, str]]   # price -> (price text, size text), as on the wire


def detect_venue(frames: list[bytes]) -> str | None:
    """"kraken", "coinbase", "alpaca" or None, from the first lines that tell."""
    for frame in frames[:200]:
        if frame.startswith(b"["):
            return "alpaca"
        if b'"sequence_num"' in frame:
            return "coinbase"
        if _KRAKEN_BOOK in frame or b'"method":"subscribe"' in frame or b'"channel":"status"' in frame:
            return "kraken"
    return None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a number's text")
    Decimal(value)   # raises on anything that is not a number
    return value


def _apply(side: Side, price: str, size: str) -> None:
    key = Decimal(price)
    if Decimal(size) == 0:
        side.pop(key, None)
    else:
        side[key] = (price, size)


def _best(side: Side, bids: bool, depth: int | None = None) -> list[tuple[str, str]]:
    prices = sorted(side, reverse=bids)
    return [side[p] for p in (prices if depth is None else prices[:depth])]


def bump_size(text: bytes) -> bytes:
    """One unit more in the last written decimal: ``0.01775983`` -> ``0.01775984``, ``0`` -> ``1``."""
    value = Decimal(text.decode())
    exponent = value.as_tuple().exponent
    step = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)
    return f"{value + step:.{max(0, -step.as_tuple().exponent)}f}".encode()


def corrupt_level(frame: bytes) -> bytes | None:
    """The frame with the first level's size altered (its checksum, if any, left as it was), or None
    when it is not a book message with a level."""
    if _KRAKEN_BOOK in frame:
        pattern = _KRAKEN_QTY
    elif _COINBASE_L2 in frame:
        pattern = _COINBASE_QTY
    else:
        return None
    match = pattern.search(frame)
    if match is None:
        return None
    try:
        bumped = bump_size(match.group(1))
    except (InvalidOperation, ValueError):
        return None
    return frame[:match.start(1)] + bumped + frame[match.end(1):]


class KrakenBooks:
    """Kraken v2 books by symbol, and the frames of its book-channel (un)subscribe answers."""

    channels = ("book",)

    def __init__(self) -> None:
        self.books: dict[str, tuple[Side, Side]] = {}
        self.depth: dict[str, int] = {}

    def apply(self, line: bytes) -> None:
        if b'"book"' not in line:
            return
        try:
            msg = json.loads(line, parse_float=str, parse_int=str)
            self._apply(msg)
        except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation):
            pass   # not a book line the venue could have sent; the client's parser counts it

    def _apply(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        result = msg.get("result")
        if msg.get("method") == "subscribe" and isinstance(result, dict) and result.get("channel") == "book":
            if result.get("depth") is not None:
                self.depth[result["symbol"]] = int(result["depth"])
            return
        if msg.get("channel") != "book":
            return
        for data in msg["data"]:
            symbol = data["symbol"]
            if msg["type"] == "snapshot":
                book = self.books[symbol] = ({}, {})
            elif symbol in self.books:
                book = self.books[symbol]
            else:
                continue   # an update before any snapshot: the venue never sends one
            for side, key in ((book[0], "bids"), (book[1], "asks")):
                for level in data.get(key) or ():
                    _apply(side, _text(level["price"]), _text(level["qty"]))
            depth = self.depth.get(symbol, KRAKEN_DEFAULT_DEPTH)
            for side, bids in ((book[0], True), (book[1], False)):
                for price in sorted(side, reverse=bids)[depth:]:
                    del side[price]

    def has_book(self, symbol: str) -> bool:
        return symbol in self.books

    def snapshot(self, symbol: str, depth: int | None = None) -> bytes:
        bids_side, asks_side = self.books[symbol]
        depth = min(depth or KRAKEN_DEFAULT_DEPTH, self.depth.get(symbol, KRAKEN_DEFAULT_DEPTH))
        bids, asks = _best(bids_side, True, depth), _best(asks_side, False, depth)

        def levels(pairs: list[tuple[str, str]]) -> str:
            return ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in pairs)
        checksum = checksum_of_text(asks, bids)
        return (f'{{"channel":"book","type":"snapshot","data":[{{"symbol":{json.dumps(symbol)},'
                f'"bids":[{levels(bids)}],"asks":[{levels(asks)}],"checksum":{checksum}}}]}}').encode()

    def ack(self, method: str, symbol: str, depth: int | None, req_id: Any, time_text: str) -> bytes:
        result: dict[str, Any] = {"channel": "book", "depth": depth or self.depth.get(symbol, KRAKEN_DEFAULT_DEPTH)}
        if method == "subscribe":
            result["snapshot"] = True
        result["symbol"] = symbol
        msg: dict[str, Any] = {"method": method, "result": result, "success": True,
                               "time_in": time_text, "time_out": time_text}
        if req_id is not None:
            msg["req_id"] = req_id
        return json.dumps(msg, separators=(",", ":")).encode()


class CoinbaseBooks:
    """Coinbase Advanced Trade level2 books by product, and the latest cumulative subscriptions."""

    channels = ("level2", "l2_data")

    def __init__(self) -> None:
        self.books: dict[str, tuple[Side, Side]] = {}
        self.subscriptions: dict[str, list[str]] = {}

    def apply(self, line: bytes) -> None:
        if _COINBASE_L2 not in line and b'"subscriptions"' not in line:
            return
        try:
            self._apply(json.loads(line))
        except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation):
            pass

    def _apply(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        if msg.get("channel") == "subscriptions":
            for event in msg["events"]:
                self.subscriptions = {k: list(v) for k, v in event["subscriptions"].items()}
            return
        if msg.get("channel") != "l2_data":
            return
        for event in msg["events"]:
            product = event["product_id"]
            if event["type"] == "snapshot":
                book = self.books[product] = ({}, {})
            elif product in self.books:
                book = self.books[product]
            else:
                continue
            for u in event["updates"]:
                side = book[0] if u["side"] == "bid" else book[1]
                _apply(side, _text(u["price_level"]), _text(u["new_quantity"]))

    def has_book(self, product: str) -> bool:
        return product in self.books

    def snapshot_event(self, product: str) -> dict[str, Any]:
        bids_side, offers_side = self.books[product]
        updates = [{"side": side, "event_time": COINBASE_SNAPSHOT_TIME, "price_level": p, "new_quantity": q}
                   for side, pairs in (("bid", _best(bids_side, True)), ("offer", _best(offers_side, False)))
                   for p, q in pairs]
        return {"type": "snapshot", "product_id": product, "updates": updates}

    def change_subscription(self, channel: str, products: list[str], subscribe: bool) -> None:
        held = self.subscriptions.setdefault(channel, [])
        for product in products:
            if subscribe and product not in held:
                held.append(product)
            elif not subscribe and product in held:
                held.remove(product)
        if not held:
            del self.subscriptions[channel]

    @staticmethod
    def message(channel: str, events: list[dict[str, Any]], sequence_num: int, timestamp: str) -> bytes:
        return json.dumps({"channel": channel, "client_id": "", "timestamp": timestamp,
                           "sequence_num": sequence_num, "events": events}, separators=(",", ":")).encode()


def sequence_of(frame: bytes) -> int | None:
    match = _SEQUENCE.search(frame)
    return int(match.group(1)) if match else None


def renumber(frame: bytes, offset: int) -> bytes:
    """A Coinbase frame with its ``sequence_num`` moved by ``offset`` (the rest byte for byte)."""
    match = _SEQUENCE.search(frame)
    if match is None or not offset:
        return frame
    return frame[:match.start(1)] + str(int(match.group(1)) + offset).encode() + frame[match.end(1):]


def timestamp_text(frame: bytes) -> str | None:
    match = _TIMESTAMP_FIELD.search(frame)
    return match.group(1).decode() if match else None


def _rfc3339_micros(ns: int) -> str:
    import datetime
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


_SYMBOLS_IN = {"kraken": re.compile(rb'"symbol":"([^"]*)"'), "coinbase": re.compile(rb'"product_id":"([^"]*)"')}


class Resubscriptions:
    """One connection's book subscriptions and the frames answering its mid-stream (un)subscribes.

    ``position`` arguments are how many of the recording's lines have been played (sent, or dropped
    by a fault) when the client's message is answered: the snapshot is the book after those lines.
    """

    def __init__(self, frames: list[bytes], times_ns: list[int | None], venue: str) -> None:
        self.frames, self.times_ns, self.venue = frames, times_ns, venue
        self.books = KrakenBooks() if venue == "kraken" else CoinbaseBooks()
        self.applied = 0
        self.subscribed_once: set[str] = set()   # book subscribes seen: a later one is a resubscribe
        self.withheld: set[str] = set()          # unsubscribed, not yet subscribed again
        self.sequence_offset = 0                 # Coinbase: inserted minus withheld messages so far
        self.snapshots_sent = 0

    # -- what the client asked ---------------------------------------------------------------------
    def _book_request(self, message: str | bytes) -> tuple[str, list[str], int | None, Any] | None:
        """(method, symbols, depth, req_id) of a book-channel (un)subscribe, else None."""
        try:
            msg = json.loads(message)
        except (ValueError, TypeError):
            return None
        if not isinstance(msg, dict):
            return None
        if self.venue == "kraken":
            params = msg.get("params")
            method = msg.get("method")
            if not isinstance(params, dict) or params.get("channel") != "book":
                return None
            symbols, depth = params.get("symbol"), params.get("depth")
            req_id = msg.get("req_id")
        else:
            method, symbols, depth, req_id = msg.get("type"), msg.get("product_ids"), None, None
            if msg.get("channel") not in self.books.channels:
                return None
        if method not in ("subscribe", "unsubscribe") or not isinstance(symbols, list):
            return None
        symbols = [s for s in symbols if isinstance(s, str)]
        return method, symbols, depth if isinstance(depth, int) and not isinstance(depth, bool) else None, req_id

    def answer(self, message: str | bytes, position: int) -> list[bytes]:
        """The frames to send now for one client message (none for anything but a book (un)subscribe)."""
        request = self._book_request(message)
        if request is None:
            return []
        method, symbols, depth, req_id = request
        if method == "unsubscribe":
            held = [s for s in symbols if s in self.subscribed_once and s not in self.withheld]
            self.withheld.update(held)
            return self._unsubscribed(held, depth, req_id, position)
        again = [s for s in symbols if s in self.subscribed_once]
        self.subscribed_once.update(symbols)
        self.withheld.difference_update(symbols)
        self._advance(position)
        # A symbol whose recorded snapshot has not been played yet gets it from the recording.
        return self._subscribed([s for s in again if self.books.has_book(s)], depth, req_id, position)

    def _advance(self, position: int) -> None:
        for line in self.frames[self.applied:position]:
            self.books.apply(line)
        self.applied = max(self.applied, position)

    # -- the venue's answers -------------------------------------------------------------------------
    def _unsubscribed(self, symbols: list[str], depth: int | None, req_id: Any, position: int) -> list[bytes]:
        if not symbols:
            return []
        if self.venue == "kraken":
            when = self._time_text(position)
            return [self.books.ack("unsubscribe", s, depth, req_id, when) for s in symbols]
        self._advance(position)
        self.books.change_subscription("level2", symbols, subscribe=False)
        return [self._coinbase("subscriptions", [{"subscriptions": self.books.subscriptions}], position)]

    def _subscribed(self, symbols: list[str], depth: int | None, req_id: Any, position: int) -> list[bytes]:
        if not symbols:
            return []
        out = []
        if self.venue == "kraken":
            when = self._time_text(position)
            for s in symbols:
                out += [self.books.ack("subscribe", s, depth, req_id, when), self.books.snapshot(s, depth)]
        else:
            for s in symbols:
                out.append(self._coinbase("l2_data", [self.books.snapshot_event(s)], position))
            self.books.change_subscription("level2", symbols, subscribe=True)
            out.append(self._coinbase("subscriptions", [{"subscriptions": self.books.subscriptions}], position))
        self.snapshots_sent += len(symbols)
        return out

    def _coinbase(self, channel: str, events: list[dict[str, Any]], position: int) -> bytes:
        last = next((s for s in map(sequence_of, reversed(self.frames[:position])) if s is not None), -1)
        self.sequence_offset += 1
        stamp = next((t for t in map(timestamp_text, reversed(self.frames[:position])) if t), None)
        return CoinbaseBooks.message(channel, events, last + self.sequence_offset, stamp or _rfc3339_micros(0))

    def _time_text(self, position: int) -> str:
        ns = next((t for t in reversed(self.times_ns[:position]) if t is not None), 0)
        return _rfc3339_micros(ns)

    # -- the recording's lines ---------------------------------------------------------------------
    def outgoing(self, frame: bytes) -> bytes | None:
        """The recording's line as this connection gets it: None while its book is unsubscribed,
        renumbered after inserted or withheld Coinbase messages."""
        if self.withheld and (_KRAKEN_BOOK in frame or _COINBASE_L2 in frame):
            named = {m.decode() for m in _SYMBOLS_IN[self.venue].findall(frame)}
            if named and named <= self.withheld:
                if self.venue == "coinbase":
                    self.sequence_offset -= 1
                return None
        if self.sequence_offset and self.venue == "coinbase":
            return renumber(frame, self.sequence_offset)
        return frame
