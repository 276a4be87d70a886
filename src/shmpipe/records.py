"""Record layouts shared between processes, as numpy structured dtypes.

Each dtype mirrors a C struct in ``_layout.h``; ``tests/test_records.py`` checks every
offset and itemsize against the compiled side, so the two can never drift apart.
All layouts are little-endian and packed (explicit offsets, no implicit padding).
"""
from __future__ import annotations

import numpy as np

TICK = np.dtype(
    {
        "names": ["timestamp_ns", "symbol_id", "bid", "ask", "volume",
                  "source", "flags", "spread_bps", "sequence"],
        "formats": ["<u8", "<u4", "<f4", "<f4", "<f4", "u1", "u1", "<u2", "<u4"],
        "offsets": [0, 8, 12, 16, 20, 24, 25, 26, 28],
        "itemsize": 32,
    }
)

# Tick.source values and Tick.flags bits (DESIGN.md).
SOURCE_TRUEFX, SOURCE_OANDA, SOURCE_IB, SOURCE_COINBASE, SOURCE_KRAKEN, SOURCE_ALPACA, SOURCE_SYNTHETIC = range(1, 8)
TICK_FLAG_TRADE, TICK_FLAG_QUOTE, TICK_FLAG_REPLAYED, TICK_FLAG_GAP_BEFORE = 1, 2, 4, 8

# LevelUpdate, layout version 2 (DESIGN.md): f64 price and size, because crypto quantities carry
# 8 decimals that an f32 cannot hold (no exact book, no exchange checksum); no per-level sequence
# (capture checks the exchange's sequence and sets LEVEL_FLAG_GAP_BEFORE; the ring orders records).
LEVEL_UPDATE_LAYOUT_VERSION = 2
LEVEL_UPDATE = np.dtype(
    {
        "names": ["timestamp_ns", "price", "size", "symbol_id",
                  "side", "action", "source", "flags"],
        "formats": ["<u8", "<f8", "<f8", "<u4", "u1", "u1", "u1", "u1"],
        "offsets": [0, 8, 16, 24, 28, 29, 30, 31],
        "itemsize": 32,
    }
)
SIDE_BID, SIDE_ASK = 0, 1
# LevelUpdate.action. A snapshot is one SNAPSHOT_BEGIN (no level: price 0, size 0; the symbol's whole
# book is replaced by what follows), SET records, one SNAPSHOT_END. A SET with size 0 deletes the level.
# A TRADE carries a trade's price and size and leaves the book alone. A CHECKSUM carries the exchange's
# checksum of the book after the records before it, as an exact integer in `price` (size 0).
ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, ACTION_TRADE, ACTION_CHECKSUM = 0, 1, 2, 3, 4
# LevelUpdate.flags bits: the same gap-before bit as Tick's.
LEVEL_FLAG_GAP_BEFORE = TICK_FLAG_GAP_BEFORE

ORDERBOOK_DEPTH = 50
ORDERBOOK_ENTRY = np.dtype(
    {
        "names": ["timestamp_ns", "symbol_id", "exchange_id", "bids", "asks", "sequence",
                  "flags", "bid_count", "ask_count"],
        "formats": ["<u8", "<u4", "<u4", ("<f4", (ORDERBOOK_DEPTH, 2)), ("<f4", (ORDERBOOK_DEPTH, 2)), "<u4",
                    "u1", "u1", "u1"],
        "offsets": [0, 8, 12, 16, 416, 816, 820, 821, 822],
        # DESIGN.md's 820 bytes of fields, plus flags and level counts in what was padding, padded to
        # 13 cache lines. bids/asks are (price, size), best first; unused levels are 0.
        "itemsize": 832,
    }
)
# OrderbookEntry.flags. INVALID: the book is not to be trusted (a checksum failed, it crossed, or a
# sequence gap hit it) and a fresh snapshot has been asked for; the other bits say why and stay set
# until the next complete snapshot makes the book valid again.
BOOK_FLAG_INVALID, BOOK_FLAG_CROSSED, BOOK_FLAG_CHECKSUM_FAILED, BOOK_FLAG_GAP = 1, 2, 4, 8

ASSET_SYMBOL_BYTES = 16
ASSET_NAME_BYTES = 64
ASSET_EXCHANGE_BYTES = 16
ASSET_CLASS_BYTES = 16
ASSET = np.dtype(
    {
        "names": ["id", "symbol", "name", "exchange", "asset_class", "updated_ns",
                  "maintenance_margin_requirement", "margin_requirement_long",
                  "margin_requirement_short", "status", "flags", "truncated"],
        "formats": ["V16", f"S{ASSET_SYMBOL_BYTES}", f"S{ASSET_NAME_BYTES}",
                    f"S{ASSET_EXCHANGE_BYTES}", f"S{ASSET_CLASS_BYTES}", "<u8",
                    "<f4", "<f4", "<f4", "u1", "u1", "u1"],
        "offsets": [0, 16, 32, 96, 112, 128, 136, 140, 144, 148, 149, 150],
        # 151 bytes of fields rounded up to a multiple of 8 (DESIGN.md).
        "itemsize": 152,
    }
)
# Asset.status values.
ASSET_STATUS_INACTIVE, ASSET_STATUS_ACTIVE = 0, 1
# Asset.flags bits.
ASSET_FLAG_TRADABLE, ASSET_FLAG_MARGINABLE, ASSET_FLAG_SHORTABLE = 1, 2, 4
ASSET_FLAG_EASY_TO_BORROW, ASSET_FLAG_FRACTIONABLE = 8, 16
# Deltas and published changes only: the asset is missing from the latest full listing.
ASSET_FLAG_REMOVED = 128
# Asset.truncated bits: which string field was cut to fit (at a UTF-8 boundary).
ASSET_TRUNCATED_SYMBOL, ASSET_TRUNCATED_NAME, ASSET_TRUNCATED_EXCHANGE, ASSET_TRUNCATED_CLASS = 1, 2, 4, 8

BY_NAME = {"tick": TICK, "level_update": LEVEL_UPDATE, "orderbook_entry": ORDERBOOK_ENTRY, "asset": ASSET}

__all__ = ["TICK", "LEVEL_UPDATE", "ORDERBOOK_ENTRY", "ASSET", "BY_NAME"]
