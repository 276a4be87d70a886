"""Child-process bodies for the inspector and metrics tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

import signal
import time

import numpy as np

import shmpipe
from shmpipe import stats
from shmpipe.records import TICK


def ticks_for(start: int, n: int) -> np.ndarray:
    """Records whose fields are a function of their position, so a torn copy shows."""
    seq = np.arange(start, start + n, dtype=np.uint64)
    out = np.zeros(n, TICK)
    out["timestamp_ns"] = seq * 7 + 3
    out["bid"] = (seq % 65536).astype(np.float32)
    out["ask"] = (seq % 65536).astype(np.float32) + 0.5
    out["sequence"] = (seq & 0xFFFFFFFF).astype(np.uint32)
    return out


def produce_then_hang(name: str, n: int, ready) -> None:
    """Attach as producer, write n records, then wait to be killed (kill -9 in the tests)."""
    ring = shmpipe.Ring.open(name)
    producer = ring.producer()
    if n:
        producer.write_batch(ticks_for(0, n))
    ready.set()
    signal.pause()


def produce_steadily(name: str, per_second: float, ready) -> None:
    """Write one record every 1/per_second seconds until killed (a lossy ring never blocks)."""
    ring = shmpipe.Ring.open(name)
    producer = ring.producer()
    ready.set()
    position, pause = 0, 1.0 / per_second
    while True:
        producer.write_batch(ticks_for(position, 1))
        position += 1
        time.sleep(pause)


def produce_flat_out(name: str, ready) -> None:
    """Write batches as fast as possible until killed: a lossy ring overwritten all the time."""
    ring = shmpipe.Ring.open(name)
    producer = ring.producer()
    ready.set()
    position = 0
    while True:
        producer.write_batch(ticks_for(position, 64))
        position += 64


def publish_stats_then_hang(name: str, ready) -> None:
    pub = stats.publish(name, ["messages", "bytes"])
    pub.update({"messages": 42, "bytes": 4096})
    ready.set()
    signal.pause()
