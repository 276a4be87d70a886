"""Tick and LevelUpdate records packed as bytes while a frame is parsed, handed out as numpy arrays.

A parser appends with ``struct`` (one C call per record, ~0.1 µs) instead of filling numpy rows field by
field (~1 µs each); the capture loop takes a whole batch per ring write. ``mark``/``rollback`` let a
parser drop everything a frame added when the frame turns out to be bad halfway through.
"""
from __future__ import annotations

import struct

import numpy as np

from shmpipe.records import LEVEL_UPDATE, TICK

# Tick: timestamp_ns u64, symbol_id u32, bid f32, ask f32, volume f32, source u8, flags u8,
# spread_bps u16, sequence u32 (DESIGN.md).
TICK_STRUCT = struct.Struct("<QIfffBBHI")
# LevelUpdate v2: timestamp_ns u64, price f64, size f64, symbol_id u32, side u8, action u8, source u8,
# flags u8.
LEVEL_STRUCT = struct.Struct("<QddIBBBB")
assert TICK_STRUCT.size == TICK.itemsize and LEVEL_STRUCT.size == LEVEL_UPDATE.itemsize

pack_tick = TICK_STRUCT.pack
pack_level = LEVEL_STRUCT.pack

U32_MASK = 0xFFFF_FFFF
SPREAD_ONE_SIDED = 0xFFFF  # saturated: no spread exists without both sides


def spread_tenth_bps(bid: float, ask: float) -> int:
    """Spread in 0.1 basis-point units of the mid, rounded, saturating at 65535 (Tick.spread_bps).

    One side missing (0) saturates; a crossed or locked quote gives 0.
    """
    if bid <= 0.0 or ask <= 0.0:
        return SPREAD_ONE_SIDED
    if ask <= bid:
        return 0
    tenths = (ask - bid) / (ask + bid) * 200_000.0  # (ask - bid) / mid * 1e5
    return SPREAD_ONE_SIDED if tenths >= SPREAD_ONE_SIDED else int(tenths + 0.5)


class RecordBatch:
    """Packed records waiting for a ring write: ``ticks`` and ``levels`` are bytearrays."""

    __slots__ = ("levels", "ticks")

    def __init__(self) -> None:
        self.ticks = bytearray()
        self.levels = bytearray()

    def __len__(self) -> int:
        return (len(self.ticks) + len(self.levels)) // 32

    @property
    def n_ticks(self) -> int:
        return len(self.ticks) // TICK_STRUCT.size

    @property
    def n_levels(self) -> int:
        return len(self.levels) // LEVEL_STRUCT.size

    def mark(self) -> tuple[int, int]:
        return len(self.ticks), len(self.levels)

    def rollback(self, mark: tuple[int, int]) -> None:
        del self.ticks[mark[0]:]
        del self.levels[mark[1]:]

    def write_to(self, ticks_producer, levels_producer, timeout: float | None = None) -> tuple[int, int]:
        """Write the records to two ring producers (``shmpipe`` Producer: TICK and LEVEL_UPDATE rings)
        without an extra copy, then empty the batch. Returns how many of each went in; records a full
        lossless ring did not take within ``timeout`` stay in the batch for the next call."""
        written = []
        for buf, dtype, producer in ((self.ticks, TICK, ticks_producer), (self.levels, LEVEL_UPDATE, levels_producer)):
            n = 0
            if buf:
                view = np.frombuffer(buf, dtype)
                n = producer.write_batch(view, timeout)
                del view   # the bytearray cannot shrink while a view exports its buffer
                del buf[:n * dtype.itemsize]
            written.append(n)
        return written[0], written[1]

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The records so far as (TICK array, LEVEL_UPDATE array), owned copies; the batch is emptied."""
        ticks = np.frombuffer(self.ticks, TICK).copy()
        levels = np.frombuffer(self.levels, LEVEL_UPDATE).copy()
        self.ticks.clear()
        self.levels.clear()
        return ticks, levels
