"""The tick check: every tick's ``sequence`` must follow the one before it.

A producer numbers ticks 0, 1, 2, ... (u32, wrapping), as the synthetic feed does. Between two ticks
read one after the other:

- ``+1`` (or the u32 wrap): in order;
- a jump forward by k > 1: k - 1 ticks **lost**;
- a fall back to 0: the producer was **restarted** (a new run of the feed): a new epoch, not loss;
- anything else (a repeat, a step back not to 0): **disorder**, which a ring must never produce.

Latency is each tick's **lateness behind its feed's schedule**: the synthetic feed stamps tick i
with ``start + i / rate`` in its own (simulated) clock and writes it once that much real time has
passed, so ``receive wall time - timestamp`` is a constant (the feed's start offset) plus how late
the tick arrived. The constant is unknown, so it is taken as the smallest such difference seen in
an epoch's first ``CALIBRATE_S`` seconds: the figures are lateness relative to the least-late tick
of that window (an underestimate by that tick's own latency, which includes no batching delay).
"""

from __future__ import annotations

import numpy as np

from .histogram import LogHistogram

U32 = 1 << 32
CALIBRATE_S = 0.5


class TickChecker:
    """``sequence=False``: count only (a venue's ticks carry the venue's numbers, e.g. Kraken's trade
    ids, which need not be consecutive); no loss, disorder or lateness can be told then."""

    def __init__(self, sequence: bool = True) -> None:
        self.sequence = sequence
        self.records = 0
        self.lost = 0
        self.disorder = 0
        self.restarts = 0  # epochs after the first: the producer started again from 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.latency = LogHistogram()
        # event time -> read, as is (no calibration): true when the producer stamps ticks with
        # CLOCK_REALTIME as they happen (the synthetic market does; a replay does not)
        self.event_to_read = LogHistogram()
        self._anchor: int | None = None
        self._calibrating: list[np.ndarray] = []
        self._calibrate_until = 0

    def check(self, batch: np.ndarray, recv_ns: int) -> None:
        n = len(batch)
        if not n:
            return
        if not self.sequence:
            self.records += n
            return
        seq = batch["sequence"].astype(np.int64)
        if self.last_seq is None:
            self.first_seq = int(seq[0])
            prev = seq[0] - 1
        else:
            prev = self.last_seq
        step = np.diff(seq, prepend=prev)
        step[step == 1 - U32] = 1  # the u32 wrap
        in_order = step == 1
        restart = ~in_order & (seq == 0)
        gap = ~in_order & ~restart & (step > 1)
        self.lost += int((step[gap] - 1).sum())
        self.disorder += int((~(in_order | restart | gap)).sum())
        self.records += n
        self.last_seq = int(seq[-1])
        ts = batch["timestamp_ns"].astype(np.int64)
        if restart.any():
            starts = np.flatnonzero(restart)
            self._latency(ts[: starts[0]], recv_ns)  # the end of the epoch before, on its anchor
            first = int(starts[-1])  # the newest epoch starts here
            self.restarts += len(starts)
            self._start_epoch(recv_ns)
            self._latency(ts[first:], recv_ns)
        else:
            if self._anchor is None and not self._calibrating:
                self._start_epoch(recv_ns)
            self._latency(ts, recv_ns)

    def _start_epoch(self, recv_ns: int) -> None:
        self._flush_calibration()
        self._anchor = None
        self._calibrating = []
        self._calibrate_until = recv_ns + int(CALIBRATE_S * 1e9)

    def _latency(self, ts: np.ndarray, recv_ns: int) -> None:
        if not len(ts):
            return
        offset = recv_ns - ts  # feed start offset + lateness, ns
        self.event_to_read.record(np.maximum(offset, 0) / 1000.0)
        if self._anchor is None:
            self._calibrating.append(offset)
            if recv_ns >= self._calibrate_until:
                self._flush_calibration()
            return
        self.latency.record((offset - self._anchor) / 1000.0)

    def _flush_calibration(self) -> None:
        if not self._calibrating:
            return
        held = np.concatenate(self._calibrating)
        self._anchor = int(held.min())
        self._calibrating = []
        self.latency.record((held - self._anchor) / 1000.0)

    def finish(self) -> None:
        self._flush_calibration()

    def summary(self) -> dict:
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        out = {
            "records": self.records,
            "lost": self.lost,
            "disorder": self.disorder,
            "restarts_seen": self.restarts,
            "first_sequence": self.first_seq,
            "last_sequence": self.last_seq,
        }
        if p50 is not None:
            out["p50_us"], out["p99_us"] = round(p50, 1), round(p99, 1)
        e50, e99 = self.event_to_read.percentile(50), self.event_to_read.percentile(99)
        if e50 is not None:
            out["event_to_read_p50_us"], out["event_to_read_p99_us"] = round(e50, 1), round(e99, 1)
        return out
