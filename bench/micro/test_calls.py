"""In-process call costs of the ring API: write, write_batch, read, read_into, peek/commit.

Each benchmarked call moves a fixed number of records (in the test name); the ring is drained or
refilled in the untimed setup between rounds, so no call ever waits on a full or empty ring.
Divide the reported time by the record count for a per-record figure.

    pytest bench/micro --benchmark-enable --benchmark-only
"""
from __future__ import annotations

import pytest

N = 1000  # records per benchmarked call in the per-record loops


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


@pytest.mark.parametrize("form", ["numpy_scalar", "bytes"])
def test_write_x1000(benchmark, ends, ticks, form):
    p, c = ends
    rec = ticks[0] if form == "numpy_scalar" else ticks[:1].tobytes()

    def target():
        w = p.write
        for _ in range(N):
            w(rec)

    benchmark.pedantic(target, setup=lambda: _drain(c), rounds=300)


def test_write_batch_64(benchmark, ends, ticks):
    p, c = ends
    batch = ticks[:64]
    benchmark.pedantic(lambda: p.write_batch(batch), setup=lambda: _drain(c), rounds=2000)


def test_write_batch_4096(benchmark, ends, ticks):
    p, c = ends
    benchmark.pedantic(lambda: p.write_batch(ticks), setup=lambda: _drain(c), rounds=1000)


def test_read_x1000_one_each(benchmark, ends, ticks):
    p, c = ends

    def target():
        r = c.read
        for _ in range(N):
            r(1, timeout=0)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, N), rounds=300)


def test_read_4096(benchmark, ends, ticks):
    p, c = ends
    benchmark.pedantic(lambda: c.read(4096, timeout=0), setup=_refill(p, c, ticks, 4096), rounds=1000)


def test_peek_commit_4096(benchmark, ends, ticks):
    p, c = ends

    def target():
        v = c.peek(4096)
        n = len(v)
        del v
        c.commit(n)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, 4096), rounds=1000)


def test_read_into_x1000_one_each(benchmark, ends, ticks):
    """The allocation-free read of one record into a reused buffer (issue 15's common case)."""
    import numpy as np

    p, c = ends
    out = np.empty(1, ticks.dtype)

    def target():
        r = c.read_into
        for _ in range(N):
            r(out, timeout=0)

    benchmark.pedantic(target, setup=_refill(p, c, ticks, N), rounds=300)


def test_read_into_4096(benchmark, ends, ticks):
    import numpy as np

    p, c = ends
    out = np.empty(4096, ticks.dtype)
    benchmark.pedantic(lambda: c.read_into(out, timeout=0), setup=_refill(p, c, ticks, 4096), rounds=1000)
