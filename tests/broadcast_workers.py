"""Child-process bodies for the broadcast tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

import time

import numpy as np

import shmpipe
from ring_workers import check_ticks, make_ticks

# A 1 KiB record whose every word repeats its sequence number: a torn copy cannot pass as whole.
STAMPED = np.dtype([("seq", "<u8"), ("payload", "<u8", (127,))])


def stamped(start: int, n: int, dtype: np.dtype = STAMPED) -> np.ndarray:
    """Records start..start+n-1 of a (seq, payload[k]) dtype, every word the sequence number."""
    out = np.empty(n, dtype)
    seq = np.arange(start, start + n, dtype=np.uint64)
    out["seq"] = seq
    out["payload"] = seq[:, None]
    return out


def read_all(name: str, total: int, ready, result, start: str = "oldest") -> None:
    """Join, say so, then read and verify [0, total) in order."""
    try:
        with shmpipe.Ring.open(name) as ring, ring.consumer(start=start) as consumer:
            ready.put(consumer.slot)
            pos = 0
            while pos < total:
                got = consumer.read(4096, timeout=30)
                if len(got) == 0:
                    raise AssertionError(f"no record for 30 s at {pos}")
                if len(got) > 4096:
                    raise AssertionError(f"read(4096) returned {len(got)} records")
                check_ticks(got, pos)
                pos += len(got)
            result.put(("ok", pos, consumer.lost))
    except BaseException as exc:
        result.put(("error", f"{type(exc).__name__}: {exc}", None))


def read_lossy(name: str, total: int, pause_s: float, ready, result) -> None:
    """Read until the last record, pausing after each batch; report what came and what was lost."""
    try:
        with shmpipe.Ring.open(name) as ring, ring.consumer(start="oldest") as consumer:
            ready.put(consumer.slot)
            received, last = 0, -1
            while last < total - 1:
                got = consumer.read(1000, timeout=30)
                if len(got) == 0:
                    raise AssertionError(f"no record for 30 s after {last}")
                if len(got) > 1000:
                    raise AssertionError(f"read(1000) returned {len(got)} records")
                seq = (got["timestamp_ns"].astype(np.int64) - 3) // 7
                # One read returns consecutive records; across reads they only move forward.
                if seq[0] <= last:
                    raise AssertionError(f"sequence went backwards: {seq[0]} after {last}")
                check_ticks(got, int(seq[0]))
                received += len(got)
                last = int(seq[-1])
                if pause_s:
                    time.sleep(pause_s)
            result.put(("ok", received, consumer.lost))
    except BaseException as exc:
        result.put(("error", f"{type(exc).__name__}: {exc}", None))


def paced_producer(name: str, total: int, batch: int, per_second: float, go) -> None:
    with shmpipe.Ring.open(name) as ring, ring.producer() as producer:
        go.wait(60)
        started = time.monotonic()
        for pos in range(0, total, batch):
            n = min(batch, total - pos)
            if producer.write_batch(make_ticks(pos, n)) != n:  # a lossy producer never waits
                raise AssertionError(f"write_batch of {n} at {pos} came up short")
            ahead = (pos + n) / per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def hammer(name: str, seconds: float, ready) -> None:
    with shmpipe.Ring.open(name) as ring, ring.producer() as producer:
        ready.set()
        pos, end = 0, time.monotonic() + seconds
        batch = stamped(0, 16)
        while time.monotonic() < end:
            batch["seq"] = np.arange(pos, pos + 16, dtype=np.uint64)
            batch["payload"] = batch["seq"][:, None]
            producer.write_batch(batch)
            pos += 16


def join_then_stall(name: str, ready, release) -> None:
    """A consumer that is alive but stops reading; reports what its next read says."""
    with shmpipe.Ring.open(name) as ring, ring.consumer(start="oldest") as consumer:
        ready.put(consumer.slot)
        release.wait(60)
        try:
            consumer.read(1, timeout=0)
            ready.put("read-ok")
        except shmpipe.ConsumerEvictedError as exc:
            ready.put(f"evicted: {exc}")
