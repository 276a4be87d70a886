"""Shared by the capture tests: run a fixture through a parser keeping each record's line, and a
reference book rebuilt only from emitted LevelUpdates (what the order book will do)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from shmpipe.records import ACTION_SET, ACTION_SNAPSHOT_BEGIN, SIDE_ASK, SIDE_BID

CAPTURE_FIXTURES = Path(__file__).parent / "fixtures" / "capture"
KNOWN = json.loads((CAPTURE_FIXTURES / "known_answers.json").read_text())


def fixture_lines(name: str) -> list[bytes]:
    return (CAPTURE_FIXTURES / name).read_bytes().splitlines()


@dataclass
class Run:
    ticks: np.ndarray
    levels: np.ndarray
    tick_lines: np.ndarray    # 1-based line of each tick
    level_lines: np.ndarray   # 1-based line of each level update


def run_lines(parser, lines: list[bytes]) -> Run:
    ticks, levels, tick_lines, level_lines = [], [], [], []
    for number, line in enumerate(lines, 1):
        t, lv = parser.parse(line)
        ticks.append(t)
        levels.append(lv)
        tick_lines.append(np.full(len(t), number))
        level_lines.append(np.full(len(lv), number))
    return Run(np.concatenate(ticks), np.concatenate(levels), np.concatenate(tick_lines),
               np.concatenate(level_lines))


class ReferenceBooks:
    """{symbol_id: (bids, asks)} as {price: size}, applying snapshot-begin / set the documented way."""

    def __init__(self) -> None:
        self.books: dict[int, tuple[dict[float, float], dict[float, float]]] = {}

    def apply(self, record) -> None:
        sid, action = int(record["symbol_id"]), int(record["action"])
        if action == ACTION_SNAPSHOT_BEGIN:
            self.books[sid] = ({}, {})
        elif action == ACTION_SET:
            side = self.books[sid][int(record["side"])]
            price, size = float(record["price"]), float(record["size"])
            if size == 0.0:
                side.pop(price, None)
            else:
                side[price] = size

    def truncate(self, sid: int, depth: int) -> None:
        bids, asks = self.books[sid]
        for side, best_first in ((bids, sorted(bids, reverse=True)), (asks, sorted(asks))):
            for price in best_first[depth:]:
                del side[price]

    def top(self, sid: int, side: int, n: int) -> list[tuple[float, float]]:
        levels = self.books[sid][side]
        prices = sorted(levels, reverse=(side == SIDE_BID))[:n]
        return [(p, levels[p]) for p in prices]


def as_decimal_pairs(pairs) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(p)), Decimal(str(s))) for p, s in pairs]


def float_pairs_as_decimals(pairs, price_decimals: int, size_decimals: int) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(f"{p:.{price_decimals}f}"), Decimal(f"{s:.{size_decimals}f}")) for p, s in pairs]


__all__ = [
    "CAPTURE_FIXTURES",
    "KNOWN",
    "SIDE_ASK",
    "SIDE_BID",
    "ReferenceBooks",
    "Run",
    "WireBooks",
    "as_decimal_pairs",
    "fixture_lines",
    "float_pairs_as_decimals",
    "match_file_lines",
    "played_as_recorded",
    "run_lines",
]


class WireBooks:
    """Books rebuilt from the frames a client receives, as the wire text (the test's own reference
    for the feed server's snapshots): Kraken v2 ``book`` with depth truncation and each message's
    checksum verified, Coinbase ``l2_data`` snapshots and updates.

    ``apply(frame)`` returns [(symbol, "snapshot"|"update", checksum verifies (Kraken) or None)]."""

    def __init__(self, venue: str, depth: int = 10) -> None:
        self.venue, self.depth = venue, depth
        self.books: dict[str, tuple[dict, dict]] = {}

    def apply(self, frame) -> list[tuple[str, str, bool | None]]:
        from shmpipe_services.capture.kraken_checksum import checksum_of_text
        msg = json.loads(frame, parse_float=str, parse_int=str) if self.venue == "kraken" else json.loads(frame)
        out = []
        if self.venue == "kraken" and isinstance(msg, dict) and msg.get("channel") == "book":
            for data in msg["data"]:
                sym = data["symbol"]
                if msg["type"] == "snapshot":
                    self.books[sym] = ({}, {})
                bids, asks = self.books[sym]
                for side, key in ((bids, "bids"), (asks, "asks")):
                    for level in data[key]:
                        if Decimal(level["qty"]) == 0:
                            side.pop(Decimal(level["price"]), None)
                        else:
                            side[Decimal(level["price"])] = (level["price"], level["qty"])
                for side, rev in ((bids, True), (asks, False)):
                    for price in sorted(side, reverse=rev)[self.depth:]:
                        del side[price]
                ok = checksum_of_text(self.top(sym, SIDE_ASK), self.top(sym, SIDE_BID)) == int(data["checksum"])
                out.append((sym, msg["type"], ok))
        elif self.venue == "coinbase" and isinstance(msg, dict) and msg.get("channel") == "l2_data":
            for event in msg["events"]:
                sym = event["product_id"]
                if event["type"] == "snapshot":
                    self.books[sym] = ({}, {})
                bids, asks = self.books[sym]
                for u in event["updates"]:
                    side = bids if u["side"] == "bid" else asks
                    if Decimal(u["new_quantity"]) == 0:
                        side.pop(Decimal(u["price_level"]), None)
                    else:
                        side[Decimal(u["price_level"])] = (u["price_level"], u["new_quantity"])
                out.append((sym, event["type"], None))
        return out

    def top(self, symbol: str, side: int, n: int | None = None) -> list[tuple[str, str]]:
        levels = self.books[symbol][side]
        prices = sorted(levels, reverse=(side == SIDE_BID))
        return [levels[p] for p in prices[:n]]

    def as_decimals(self, symbol: str) -> tuple[dict, dict]:
        """{price: size} per side (bids, asks) as Decimals, for comparing books across formats."""
        return tuple({p: Decimal(q) for p, (_t, q) in side.items()} for side in self.books[symbol])


def _without_sequence(frame: bytes) -> bytes:
    """A Coinbase frame's identity once the feed server may have renumbered it."""
    import re
    return re.sub(rb'"sequence_num":\d+', b"", frame, count=1)


def match_file_lines(frames, lines, key=_without_sequence):
    """For each frame a client received from the feed server, the 0-based index of the recording's
    line it is (None: one of the server's answers to a resubscribe), matching forward through the
    file; and the indexes of the lines it never received (withheld while a book was unsubscribed)."""
    keys = [key(line) for line in lines]
    at, indexes = 0, []
    for frame in frames:
        k = key(frame)
        try:
            found = keys.index(k, at)
        except ValueError:
            indexes.append(None)
            continue
        indexes.append(found)
        at = found + 1
    received = {i for i in indexes if i is not None}
    return indexes, [i for i in range(len(lines)) if i not in received]


def _channel(frame: bytes) -> str:
    msg = json.loads(frame)
    if isinstance(msg, dict):
        return msg.get("channel") or msg.get("method") or "?"
    return "?"


def played_as_recorded(frames, lines) -> tuple[Counter, Counter]:
    """Checks that a capture received the recording's lines in order, apart from the feed server's
    answers to its resubscribes (acks, snapshots) and the book lines withheld between an unsubscribe
    and the subscribe. Returns (answers, withheld) counted by channel (or method)."""
    indexes, withheld = match_file_lines(frames, lines)
    answers = [f for f, i in zip(frames, indexes) if i is None]
    for frame in answers:
        msg = json.loads(frame)
        assert msg.get("method") in ("subscribe", "unsubscribe") or msg.get("channel") == "subscriptions" \
            or (msg.get("channel") in ("book", "l2_data") and (msg.get("type") == "snapshot"
                or all(e.get("type") == "snapshot" for e in msg.get("events", [{}])))), frame[:200]
    for i in withheld:
        assert b'"channel":"book"' in lines[i] or b'"channel":"l2_data"' in lines[i], lines[i][:200]
    return Counter(map(_channel, answers)), Counter(_channel(lines[i]) for i in withheld)
