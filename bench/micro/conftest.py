"""Fixtures for the in-process call-cost micro-benchmarks (pytest-benchmark).

Run:  pytest bench/micro --benchmark-enable --benchmark-only
(the normal ``pytest`` run collects them too, with timing off, so they keep working)
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

shmpipe = pytest.importorskip("shmpipe", reason="the compiled shmpipe ring is needed")
pytest.importorskip("pytest_benchmark", reason="pip install 'shmpipe[bench]' for pytest-benchmark")
from shmpipe.records import TICK  # noqa: E402

CAPACITY = 1 << 16


# The ring kinds a benchmark can ask for (parametrize "ring" indirectly with these names):
# spsc, broadcast (lossless: the producer claims, the reader checks its slot after a copy) and
# lossy (broadcast where the reader re-checks claim_pos after a copy, a seqlock).
RING_KINDS = {
    "spsc": {},
    "broadcast": {"broadcast": True},
    "lossy": {"broadcast": True, "policy": "lossy"},
}


@pytest.fixture(params=["spsc"])
def ring(request):
    name = f"micro-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    r = shmpipe.Ring.create(name, TICK, CAPACITY, wait="spin", **RING_KINDS[request.param])
    try:
        yield r
    finally:
        r.close()
        r.unlink()


@pytest.fixture
def ends(ring):
    p, c = ring.producer(), ring.consumer()
    yield p, c
    c.close()
    p.close()


@pytest.fixture
def ticks():
    arr = np.zeros(4096, dtype=TICK)
    arr["timestamp_ns"] = np.arange(4096)
    arr["symbol_id"] = 1
    arr["bid"], arr["ask"] = 1.0842, 1.0843
    arr["sequence"] = np.arange(4096)
    return arr
