"""In-process call costs of the ring API: write, write_batch, read, read(out=), read_into, peek/commit.

Each benchmarked call moves a fixed number of records (in the test name); the ring is drained or
refilled in the untimed setup between rounds, so no call ever waits on a full or empty ring.
`_x1000` tests time a loop of 1000 calls of one record each (divide by 1000 for one call); the
others time one call. Every test runs on an SPSC ring and a lossless broadcast ring, the reads
also on a lossy broadcast ring (peek is not offered there). One process plays both sides, so
these are the ceiling the cross-process figures (shmpipe bench) are compared against.

    pytest bench/micro --benchmark-enable --benchmark-only
"""
from __future__ import annotations

import numpy as np
import pytest

N = 1000  # calls per benchmarked loop in the `_x1000` tests

WRITE_KINDS = ["spsc", "broadcast"]
READ_KINDS = ["spsc", "broadcast", "lossy"]
PEEK_KINDS = ["spsc", "broadcast"]


def _drain(c):
    while len(c.read(4096, timeout=0)):
        pass


def _fill(p, ticks, n):
    done = 0
    while done < n:
        done += p.write_batch(ticks[: min(4096, n - done)])


def _refill(p, c, ticks, n):
    """A setup for pytest-benchmark: must return None (a tuple would be taken as call args)."""
    def setup():
        _drain(c)
        _fill(p, ticks, n)
    return setup


def _consumed_all(c):
    """After the last round: every record the setup wrote was read, none skipped as lost."""
    assert c.available == 0
    assert c.lost == 0


def _record(ticks, form):
    """One Tick in the form write() is handed: a numpy void scalar, a one-record array (what a
    reused read_into() buffer is), bytes, or a memoryview."""
    if form == "numpy_scalar":
        return ticks[0]
    if form == "numpy_array_1":
        return ticks[:1]
    if form == "bytes":
        return ticks[:1].tobytes()
    return memoryview(ticks[:1].tobytes())


@pytest.mark.parametrize("ring", WRITE_KINDS, indirect=True)
@pytest.mark.parametrize("form", ["numpy_scalar", "numpy_array_1", "bytes", "memoryview"])
def test_write_x1000(benchmark, ends, ticks, form):
    p, c = ends
    rec = _record(ticks, form)

    def target():
        w = p.write
        for _ in range(N):
            w(rec)

    benchmark.pedantic(target, setup=lambda: _drain(c), rounds=300)


@pytest.mark.parametrize("ring", WRITE_KINDS, indirect=True)
def test_write_batch_1_x1000(benchmark, ends, ticks):
    p, c = ends
    one = ticks[:1]

    def target():
        w = p.write_batch
        for _ in range(N):
            w(one)

    benchmark.pedantic(target, setup=lambda: _drain(c), rounds=300)


@pytest.mark.parametrize("ring", WRITE_KINDS, indirect=True)
def test_write_batch_64(benchmark, ends, ticks):
    p, c = ends
    batch = ticks[:64]
    benchmark.pedantic(lambda: p.write_batch(batch), setup=lambda: _drain(c), rounds=2000)


@pytest.mark.parametrize("ring", WRITE_KINDS, indirect=True)
def test_write_batch_4096(benchmark, ends, ticks):
    p, c = ends
    benchmark.pedantic(lambda: p.write_batch(ticks), setup=lambda: _drain(c), rounds=1000)


@pytest.mark.parametrize("ring", READ_KINDS, indirect=True)
def test_read_x1000_one_each(benchmark, ends, ticks):
    p, c = ends

    def target():
        r = c.read
        for _ in range(N):
            r(1, timeout=0)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, N), rounds=300)
    _consumed_all(c)


@pytest.mark.parametrize("ring", READ_KINDS, indirect=True)
def test_read_4096(benchmark, ends, ticks):
    p, c = ends
    benchmark.pedantic(lambda: c.read(4096, timeout=0), setup=_refill(p, c, ticks, 4096), rounds=1000)
    _consumed_all(c)


@pytest.mark.parametrize("ring", READ_KINDS, indirect=True)
@pytest.mark.parametrize("call", ["read_into", "read_out"])
def test_read_into_x1000_one_each(benchmark, ends, ticks, call):
    """The allocation-free reads of one record into a reused buffer (issue 15's common case):
    read_into(out) returns the count, read(1, 0, out) the filled view of out."""
    p, c = ends
    out = np.empty(1, ticks.dtype)

    def target():
        if call == "read_into":
            r = c.read_into
            for _ in range(N):
                r(out, timeout=0)
        else:
            r = c.read
            for _ in range(N):
                r(1, 0, out)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, N), rounds=300)
    _consumed_all(c)


@pytest.mark.parametrize("ring", READ_KINDS, indirect=True)
def test_read_into_4096(benchmark, ends, ticks):
    p, c = ends
    out = np.empty(4096, ticks.dtype)
    benchmark.pedantic(lambda: c.read_into(out, timeout=0), setup=_refill(p, c, ticks, 4096), rounds=1000)
    _consumed_all(c)


@pytest.mark.parametrize("ring", PEEK_KINDS, indirect=True)
def test_peek_commit_x1000_one_each(benchmark, ends, ticks):
    p, c = ends

    def target():
        peek, commit = c.peek, c.commit
        for _ in range(N):
            v = peek(1)
            commit(len(v))

    benchmark.pedantic(target, setup=_refill(p, c, ticks, N), rounds=300)
    _consumed_all(c)


@pytest.mark.parametrize("ring", PEEK_KINDS, indirect=True)
def test_peek_commit_4096(benchmark, ends, ticks):
    p, c = ends

    def target():
        v = c.peek(4096)
        n = len(v)
        del v
        c.commit(n)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, 4096), rounds=1000)
    _consumed_all(c)
