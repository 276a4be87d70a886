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


def check_ticks(batch: np.ndarray, start: int, n: int | None = None) -> None:
    """Raise AssertionError unless batch is exactly the n records start, start+1, ..., start+n-1,
    every byte of each.

    Pass n wherever the count is known. Leave it out only in a stream loop that takes whatever
    one read returned and then holds its running total to the exact total written (the loop must
    check that itself); even there an empty batch fails, since it would prove nothing."""
    if batch.dtype != TICK:
        raise AssertionError(f"dtype {batch.dtype}, expected TICK")
    if n is None:
        if len(batch) == 0:
            raise AssertionError(f"empty batch at record {start}")
        n = len(batch)
    elif len(batch) != n:
        raise AssertionError(f"{len(batch)} records from {start}, expected exactly {n}")
    expected = make_ticks(start, n)
    got_bytes = np.ascontiguousarray(batch).view(np.uint8).reshape(n, TICK.itemsize)
    mismatched = np.nonzero((got_bytes != expected.view(np.uint8).reshape(n, TICK.itemsize)).any(axis=1))[0]
    if len(mismatched):
        bad = int(mismatched[0])
        raise AssertionError(f"record {start + bad}: got {batch[bad]}, expected {expected[bad]}")


def produce(name: str, total: int, batch: int, ready=None) -> None:
    """Write records [position, total) in batches, each call's count checked.

    batch == 1 means single write() calls, alternating a numpy record and its 32 raw bytes, so
    both single-write forms cross the process boundary and meet the reader's exact check."""
    with shmpipe.Ring.open(name, TICK) as ring, ring.producer() as producer:
        if ready is not None:
            ready.set()
        pos = producer.position
        if batch == 1:
            records = make_ticks(pos, total - pos)
            for i, rec in enumerate(records):
                if not producer.write(rec if i % 2 == 0 else rec.tobytes()):
                    raise AssertionError(f"write() of record {pos + i} with no timeout returned False")
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
                if len(got) > max_n:
                    raise AssertionError(f"read({max_n}) returned {len(got)} records")
                check_ticks(got, pos)
                pos += len(got)
            result.put(("ok", pos))  # the caller holds pos to the exact total
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
                           usage.ru_utime + usage.ru_stime, time.monotonic(), consumer.sleep_stats)))


def hold_role(name: str, role: str, ready, release) -> None:
    with shmpipe.Ring.open(name) as ring:
        handle = ring.producer() if role == "producer" else ring.consumer()
        ready.set()
        release.wait(60)
        handle.close()
