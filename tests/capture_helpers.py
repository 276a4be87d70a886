"""Shared by the capture tests: run a fixture through a parser keeping each record's line, and a
reference book rebuilt only from emitted LevelUpdates (what the order book will do)."""
from __future__ import annotations

import json
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
    "as_decimal_pairs",
    "fixture_lines",
    "float_pairs_as_decimals",
    "run_lines",
]
