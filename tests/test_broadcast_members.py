"""The producer's view of who is a member of a lossless broadcast ring.

While membership.joins is unchanged the producer looks only at the slots it last saw joining or
active (a bitmap) instead of all max_consumers slots: a member that leaves must stop holding it
back, and one that joins, in any slot, a freed one included, must start holding it back."""
from ring_workers import check_ticks, make_ticks

import shmpipe
from shmpipe import segments
from shmpipe.records import TICK

CAPACITY = 8


def _fill(producer, start):
    """Write until the ring refuses (timeout=0); how many went in."""
    return producer.write_batch(make_ticks(start, CAPACITY), timeout=0)


def test_a_member_that_leaves_stops_holding_the_producer_back(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, CAPACITY, broadcast=True) as ring, ring.producer() as p:
        fast, slow = ring.consumer(start="newest"), ring.consumer(start="newest")
        assert _fill(p, 0) == CAPACITY
        check_ticks(fast.read(), 0, CAPACITY)
        assert _fill(p, CAPACITY) == 0              # slow has read nothing: full
        slow.close()
        assert _fill(p, CAPACITY) == CAPACITY       # fast had read everything
        check_ticks(fast.read(), CAPACITY, CAPACITY)
        fast.close()
    segments.unlink(ring_name)


def test_a_member_that_joins_a_freed_slot_holds_the_producer_back(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, CAPACITY, broadcast=True) as ring, ring.producer() as p:
        first, second, third = (ring.consumer(start="newest") for _ in range(3))
        assert [first.slot, second.slot, third.slot] == [0, 1, 2]
        second.close()
        assert _fill(p, 0) == CAPACITY              # the producer has looked: second is gone
        for c in (first, third):
            check_ticks(c.read(), 0, CAPACITY)
        again = ring.consumer(start="newest")       # takes the freed slot 1
        assert again.slot == 1
        assert _fill(p, CAPACITY) == CAPACITY
        for c in (first, third):
            check_ticks(c.read(), CAPACITY, CAPACITY)
        assert _fill(p, 2 * CAPACITY) == 0          # again has read none of them
        check_ticks(again.read(), CAPACITY, CAPACITY)
        assert _fill(p, 2 * CAPACITY) == CAPACITY
        for c in (first, third, again):
            check_ticks(c.read(), 2 * CAPACITY, CAPACITY)
            c.close()
    segments.unlink(ring_name)


def test_the_last_slot_counts_as_a_member(ring_name):
    slots = 32
    with shmpipe.Ring.create(ring_name, TICK, CAPACITY, broadcast=True, max_consumers=slots) as ring, \
            ring.producer() as p:
        members = [ring.consumer(start="newest") for _ in range(slots)]
        assert members[-1].slot == slots - 1
        assert _fill(p, 0) == CAPACITY
        for c in members[:-1]:
            check_ticks(c.read(), 0, CAPACITY)
        assert _fill(p, CAPACITY) == 0              # only slot 31 lags
        check_ticks(members[-1].read(), 0, CAPACITY)
        assert _fill(p, CAPACITY) == CAPACITY
        for c in members:
            c.close()
    segments.unlink(ring_name)
