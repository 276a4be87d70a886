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
# An INVALIDATE (no level) says capture can no longer vouch for the symbol's book (its connection
# dropped, a connection-wide sequence gap, or the venue went silent past its heartbeat interval):
# the book is unknown until its next SNAPSHOT_END.
ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, ACTION_TRADE, ACTION_CHECKSUM, ACTION_INVALIDATE = range(6)
# LevelUpdate.flags bits: the same gap-before bit as Tick's (the record's own symbol missed changes),
# and LAST on the final record capture writes for one venue message and symbol: the order book judges
# a book (crossed, checksum) and publishes an entry only there, never in the middle of a message.
LEVEL_FLAG_GAP_BEFORE = TICK_FLAG_GAP_BEFORE
LEVEL_FLAG_LAST = 16

# OrderbookEntry, layout version 2 (DESIGN.md): f64 (price, size) levels, so an entry gives the venue's
# numbers back exactly (round(price, price_decimals) is the venue's text; version 1's f32 read a
# one-cent spread at 97,000 as 0.0156), and published_ns (CLOCK_REALTIME when the order book wrote it).
ORDERBOOK_ENTRY_LAYOUT_VERSION = 2
ORDERBOOK_DEPTH = 50
ORDERBOOK_ENTRY = np.dtype(
    {
        "names": ["timestamp_ns", "symbol_id", "exchange_id", "sequence", "flags", "bid_count",
                  "ask_count", "published_ns", "bids", "asks"],
        "formats": ["<u8", "<u4", "<u4", "<u4", "u1", "u1", "u1", "<u8",
                    ("<f8", (ORDERBOOK_DEPTH, 2)), ("<f8", (ORDERBOOK_DEPTH, 2))],
        "offsets": [0, 8, 12, 16, 20, 21, 22, 24, 32, 832],
        # bids/asks are (price, size), best first; unused levels are 0. Padded to 26 cache lines.
        "itemsize": 1664,
    }
)
# OrderbookEntry.flags. INVALID: the book is not to be trusted; the other bits say why and stay set
# until the next complete snapshot makes the book valid again. CROSSED: best bid >= best ask at the
# end of a venue message; CHECKSUM_FAILED: the venue's checksum did not match; GAP: capture lost
# messages of this symbol; STALE: capture invalidated it (disconnect, connection-wide gap, silence);
# UNVERIFIED: the venue sends checksums but this book could not be checked (decimals unknown).
BOOK_FLAG_INVALID, BOOK_FLAG_CROSSED, BOOK_FLAG_CHECKSUM_FAILED, BOOK_FLAG_GAP = 1, 2, 4, 8
BOOK_FLAG_STALE, BOOK_FLAG_UNVERIFIED = 16, 32

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
