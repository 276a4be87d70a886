"""Issue 9's lossy-broadcast torture: capacities 2 to 64, producer batches up to 4096, readers
with max_n up to 10**6. Every read is checked (verify_lossy_reads): no record that was not
written, none torn, in order, `lost` exact. The quick cases run every time; the long ones are
marked slow (CI still runs them)."""
from __future__ import annotations

import pytest

from hardening_workers import lossy_run

MAX_NS = (1, 7, 64, 1000, 1_000_000)


@pytest.mark.parametrize("capacity", [2, 8, 64])
def test_lossy_torture_quick(ring_name, capacity):
    result = lossy_run(ring_name, capacity, 4096, MAX_NS, seconds=1.5, seed=capacity)
    assert result["received"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("capacity,max_batch", [(2, 4096), (4, 1), (16, 64), (64, 4096)])
def test_lossy_torture_minutes(ring_name, capacity, max_batch):
    result = lossy_run(ring_name, capacity, max_batch, MAX_NS, seconds=45, seed=capacity * 7 + max_batch)
    assert result["received"] > 0
