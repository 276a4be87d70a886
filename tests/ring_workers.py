"""Child-process bodies for the two-process ring tests (importable by multiprocessing 'spawn').

Records are a pure function of their sequence number, so a reader can check every field of
every record, and a restarted producer can carry on exactly where the ring's position says."""
from __future__ import annotations

import resource
import time

import numpy as np

import shmpipe
from shmpipe.records import TICK


def make_ticks(start: int, n: int) -> np.ndarray:
    seq = np.arange(start, start + n, dtype=np.uint64)
    out = np.zeros(n, TICK)
    out["timestamp_ns"] = seq * 7 + 3
    out["symbol_id"] = (seq % 1000).astype(np.uint32)
    out["bid"] = (seq % 65536).astype(np.float32)
    out["ask"] = (seq % 65536).astype(np.float32) + 0.5
    out["volume"] = (seq % 7).astype(np.float32)
    out["source"] = 7
    out["flags"] = (seq % 4).astype(np.uint8)
    out["spread_bps"] = (seq % 1000).astype(np.uint16)
    out["sequence"] = (seq & 0xFFFFFFFF).astype(np.uint32)
    return out


def check_ticks(batch: np.ndarray, start: int) -> None:
    """Raise AssertionError unless batch is exactly records start, start+1, ... in order."""
    expected = make_ticks(start, len(batch))
    if not np.array_equal(batch.view(np.uint8).reshape(len(batch), -1),
                          expected.view(np.uint8).reshape(len(batch), -1)):
        bad = np.nonzero(batch != expected)[0][0]
        raise AssertionError(f"record {start + bad}: got {batch[bad]}, expected {expected[bad]}")


def produce(name: str, total: int, batch: int, ready=None) -> None:
    """Write records [position, total) in batches (batch == 1: single write() calls)."""
    with shmpipe.Ring.open(name, TICK) as ring, ring.producer() as producer:
        if ready is not None:
            ready.set()
        pos = producer.position
        if batch == 1:
            records = make_ticks(pos, total - pos)
            for rec in records:
                producer.write(rec)
        else:
            while pos < total:
                n = min(batch, total - pos)
                assert producer.write_batch(make_ticks(pos, n)) == n
                pos += n


def produce_forever(name: str, batch: int, ready) -> None:
    """Write batches until killed, carrying on from the ring's position."""
    with shmpipe.Ring.open(name, TICK) as ring, ring.producer() as producer:
        ready.set()
        pos = producer.position
        while True:
            producer.write_batch(make_ticks(pos, batch))
            pos += batch


def consume(name: str, total: int, max_n: int, result) -> None:
    """Read and verify records [0, total); put ('ok', count) or ('error', text) on result."""
    try:
        with shmpipe.Ring.open(name, TICK) as ring, ring.consumer() as consumer:
            pos = 0
            while pos < total:
                got = consumer.read(max_n, timeout=30)
                if len(got) == 0:
                    raise AssertionError(f"no record for 30 s at position {pos}")
                check_ticks(got, pos)
                pos += len(got)
            result.put(("ok", pos))
    except BaseException as exc:  # report, do not hang the parent
        result.put(("error", f"{type(exc).__name__}: {exc}"))


def wait_blocked(name: str, pipe) -> None:
    """Report our CPU time, block in read() until a record comes, report what came."""
    with shmpipe.Ring.open(name, TICK) as ring, ring.consumer() as consumer:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pipe.send(("waiting", usage.ru_utime + usage.ru_stime))
        try:
            got = consumer.read(16, timeout=60)
        except KeyboardInterrupt:
            pipe.send(("interrupted", None))
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pipe.send(("got", (len(got), int(got["sequence"][0]) if len(got) else -1,
                           usage.ru_utime + usage.ru_stime, time.monotonic())))


def hold_role(name: str, role: str, ready, release) -> None:
    with shmpipe.Ring.open(name) as ring:
        handle = ring.producer() if role == "producer" else ring.consumer()
        ready.set()
        release.wait(60)
        handle.close()
