"""A lossy reader skips lapped records from its cached producer position (issue 15).

The reader re-reads write_pos only when the oldest valid position (claim - capacity) has passed
its cached copy. Both sides of that test are pinned here, deterministically, in one process: the
lap stays inside the cache (no re-read needed) and the lap runs past it (re-read needed); each
read must return exactly the oldest record still in the ring and count exactly what it skipped.
"""
import numpy as np
import pytest

import shmpipe
from shmpipe.records import TICK

CAPACITY = 8


def _ticks(first, n):
    t = np.zeros(n, TICK)
    t["sequence"] = np.arange(first, first + n)
    return t


@pytest.fixture
def lossy(ring_name):
    ring = shmpipe.Ring.create(ring_name, TICK, CAPACITY, broadcast=True, policy="lossy", wait="spin")
    p, c = ring.producer(), ring.consumer()
    try:
        yield p, c
    finally:
        c.close()
        p.close()
        ring.close()
        ring.unlink()


@pytest.mark.parametrize("read", ["read", "read_into"])
@pytest.mark.parametrize("more, oldest", [
    (4, 4),               # claim - capacity = 4, behind the cached position 8: no re-read
    (3 * CAPACITY, 24),   # claim - capacity = 24, past the cached 8: write_pos is re-read
])
def test_lapped_reader_resumes_at_the_oldest_record(lossy, read, more, oldest):
    p, c = lossy
    assert p.write_batch(_ticks(0, CAPACITY)) == CAPACITY
    first = c.read(1, timeout=0)          # caches write_pos = 8, leaves 7 unread
    assert first["sequence"].tolist() == [0] and c.lost == 0
    assert p.write_batch(_ticks(CAPACITY, more)) == more
    if read == "read":
        got = c.read(1, timeout=0)["sequence"].tolist()
    else:
        out = np.zeros(1, TICK)
        assert c.read_into(out, timeout=0) == 1
        got = out["sequence"].tolist()
    assert got == [oldest]
    assert c.lost == oldest - 1
    # The rest of the ring comes out in order, nothing more lost.
    rest = c.read(4 * CAPACITY, timeout=0)["sequence"].tolist()
    assert rest == list(range(oldest + 1, CAPACITY + more))
    assert c.lost == oldest - 1
