"""Property test: any interleaving of writes, batched writes, reads, peeks and commits behaves
like a bounded FIFO (a deque of capacity records), across any number of wraps."""
from collections import deque

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmpipe
from shmpipe import segments
from shmpipe.records import TICK
from ring_workers import check_ticks, make_ticks

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 1)),
        st.tuples(st.just("write_batch"), st.integers(0, 40)),
        st.tuples(st.just("read"), st.integers(1, 40)),
        st.tuples(st.just("peek_commit"), st.integers(1, 40)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capacity_log2=st.integers(1, 5), ops=OPS)
def test_ring_behaves_like_a_bounded_fifo(ring_name, capacity_log2, ops):
    capacity = 1 << capacity_log2
    model: deque[int] = deque()
    next_seq = 0
    try:
        with shmpipe.Ring.create(ring_name, TICK, capacity) as ring, ring.producer() as p, ring.consumer() as c:
            for op, n in ops:
                if op == "write":
                    ok = p.write(make_ticks(next_seq, 1)[0], timeout=0)
                    assert ok == (len(model) < capacity)
                    if ok:
                        model.append(next_seq)
                        next_seq += 1
                elif op == "write_batch":
                    wrote = p.write_batch(make_ticks(next_seq, n), timeout=0)
                    assert wrote == min(n, capacity - len(model))
                    model.extend(range(next_seq, next_seq + wrote))
                    next_seq += wrote
                elif op == "read":
                    got = c.read(n, timeout=0)
                    expected = [model.popleft() for _ in range(min(n, len(model)))]
                    check_ticks(got, expected[0] if expected else next_seq, len(expected))
                else:
                    view = c.peek(n)
                    if model:  # records wait: a peek shows at least the first (less at the wrap)
                        assert 0 < len(view) <= min(n, len(model))
                        check_ticks(view, model[0], len(view))
                    else:
                        assert len(view) == 0
                    c.commit(len(view))
                    for _ in range(len(view)):
                        model.popleft()
                assert len(ring) == len(model)
            assert ring.stats()["written"] == next_seq
    finally:
        segments.unlink(ring_name)
