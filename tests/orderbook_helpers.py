"""Shared by the order book tests: LevelUpdate builders, fixtures parsed into level records with the
instrument facts the parsers registered, and a reader of the books ring."""
from __future__ import annotations

import numpy as np
from capture_helpers import CAPTURE_FIXTURES, fixture_lines, run_lines
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_SET,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    LEVEL_FLAG_LAST,
    LEVEL_UPDATE,
    SIDE_ASK,
    SIDE_BID,
    SOURCE_KRAKEN,
)

PARSERS = {"coinbase": CoinbaseParser, "kraken": KrakenParser}


def level(action: int, side: int = SIDE_BID, price: float = 0.0, size: float = 0.0, *, sid: int = 1,
          ts: int = 1, flags: int = 0, source: int = SOURCE_KRAKEN, last: bool = True) -> tuple:
    """One record; ``last`` (the default: a one-record message) sets flags bit4, where the order book
    judges and publishes the book."""
    return (ts, price, size, sid, side, action, source, flags | (LEVEL_FLAG_LAST if last else 0))


def levels(*rows: tuple) -> np.ndarray:
    return np.array(list(rows), LEVEL_UPDATE)


def snapshot(bids, asks, *, sid: int = 1, ts: int = 1, flags: int = 0, last: bool = True) -> list[tuple]:
    """snapshot-begin, the sets, snapshot-end for {price: size} bids and asks: one message, so only
    the snapshot-end may carry bit4 (``last``; False when a checksum record follows)."""
    rows = [level(ACTION_SNAPSHOT_BEGIN, sid=sid, ts=ts, flags=flags, last=False)]
    rows += [level(ACTION_SET, SIDE_BID, p, s, sid=sid, ts=ts, last=False) for p, s in bids.items()]
    rows += [level(ACTION_SET, SIDE_ASK, p, s, sid=sid, ts=ts, last=False) for p, s in asks.items()]
    rows.append(level(ACTION_SNAPSHOT_END, sid=sid, ts=ts, last=last))
    return rows


def checksum_record(value: int, *, sid: int = 1, ts: int = 1) -> tuple:
    return level(ACTION_CHECKSUM, price=float(value), sid=sid, ts=ts)


class ParsedFixture:
    """A venue fixture through its parser: the level records, and the facts it registered."""

    def __init__(self, venue: str, path) -> None:
        self.registry = InMemorySymbolIds()
        self.parser = PARSERS[venue](self.registry)
        self.run = run_lines(self.parser, fixture_lines(path) if isinstance(path, str) else
                             path.read_bytes().splitlines())
        self.levels = self.run.levels

    def facts(self, sid: int):
        f = self.registry.facts.get(sid)
        return None if f is None else (f.price_decimals, f.size_decimals, f.depth or 0)

    def sid(self, symbol: str) -> int:
        return self.parser.instruments[symbol].symbol_id


def bad_fixture(name: str):
    return CAPTURE_FIXTURES / "bad" / name


__all__ = ["ParsedFixture", "bad_fixture", "checksum_record", "level", "levels", "snapshot"]
