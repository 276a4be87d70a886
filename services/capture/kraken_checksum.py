"""Kraken's CRC32 book checksum (Spot WebSocket v2 "Book Checksum" guide).

Top 10 asks from lowest price up, then top 10 bids from highest down; for each level its price text
then its qty text, each with the "." removed and leading zeros stripped; CRC32 (zlib, IEEE) of the
concatenated ASCII, as an unsigned 32-bit integer. The text must be the exchange's own (trailing zeros
included), so from f64 values it is rebuilt with the instrument's decimals: ``f"{x:.{decimals}f}"``.
Capture carries the exchange's value in a checksum record; the order book computes this to verify it.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

CHECKSUM_DEPTH = 10


def checksum_field(text: str) -> str:
    """``"45285.2"`` -> ``"452852"``, ``"0.00100000"`` -> ``"100000"``."""
    return text.replace(".", "").lstrip("0")


def checksum_of_text(asks: Sequence[tuple[str, str]], bids: Sequence[tuple[str, str]]) -> int:
    """asks best (lowest) first, bids best (highest) first, as (price text, qty text) on the wire."""
    parts = [checksum_field(p) + checksum_field(q) for p, q in asks[:CHECKSUM_DEPTH]]
    parts += [checksum_field(p) + checksum_field(q) for p, q in bids[:CHECKSUM_DEPTH]]
    return zlib.crc32("".join(parts).encode("ascii")) & 0xFFFF_FFFF


def checksum_of_levels(asks: Iterable[tuple[float, float]], bids: Iterable[tuple[float, float]],
                       price_decimals: int, size_decimals: int) -> int:
    """The same from f64 (price, size) pairs, best first on each side, and the instrument's decimals."""
    def text(levels: Iterable[tuple[float, float]]) -> list[tuple[str, str]]:
        out = []
        for price, size in levels:
            out.append((f"{price:.{price_decimals}f}", f"{size:.{size_decimals}f}"))
            if len(out) == CHECKSUM_DEPTH:
                break
        return out
    return checksum_of_text(text(asks), text(bids))


def checksum_of_book(book_bids: dict[float, float], book_asks: dict[float, float],
                     price_decimals: int, size_decimals: int) -> int:
    """From a book held as {price: size} per side (any order)."""
    asks = sorted(book_asks.items())[:CHECKSUM_DEPTH]
    bids = sorted(book_bids.items(), reverse=True)[:CHECKSUM_DEPTH]
    return checksum_of_levels(asks, bids, price_decimals, size_decimals)
