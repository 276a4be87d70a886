"""consumer.read_into(out): read() without an allocation, with every promise of read()."""
import multiprocessing as mp

import numpy as np
import pytest
from ring_workers import check_ticks, make_ticks, produce

import shmpipe
from shmpipe.records import ASSET, TICK

SPAWN = mp.get_context("spawn")


def test_read_into_fills_across_the_wrap_and_returns_the_count(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        out = np.zeros(5, TICK)
        pos = 0
        for n in (3, 8, 5, 7):
            p.write_batch(make_ticks(pos, n))
            got = 0
            while got < n:
                k = c.read_into(out, timeout=0)
                assert 0 < k <= len(out)
                check_ticks(out[:k], pos + got, k)
                got += k
            assert got == n
            pos += n
        assert c.read_into(out, timeout=0) == 0
        assert c.read_into(out, timeout=0.02) == 0
        raw = bytearray(2 * 32)                     # any writeable buffer of whole records
        p.write_batch(make_ticks(pos, 2))
        assert c.read_into(raw) == 2
        check_ticks(np.frombuffer(raw, TICK), pos, 2)
    ring.unlink()


def test_read_into_refuses_what_cannot_hold_records(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.consumer() as c:
        with pytest.raises(shmpipe.DtypeMismatchError):
            c.read_into(np.zeros(4, ASSET))
        with pytest.raises(shmpipe.InvalidArgumentError, match="whole number"):
            c.read_into(bytearray(33))
        with pytest.raises(shmpipe.InvalidArgumentError, match="writeable"):
            c.read_into(bytes(64))
        frozen = np.zeros(4, TICK)
        frozen.flags.writeable = False
        with pytest.raises(shmpipe.InvalidArgumentError):
            c.read_into(frozen)
        with pytest.raises(shmpipe.InvalidArgumentError):
            c.read_into(np.zeros(0, TICK))
        with pytest.raises(shmpipe.InvalidArgumentError):
            c.read_into(np.zeros(8, TICK)[::2])     # not contiguous
    ring.unlink()


def test_read_into_across_processes_every_record_exact(ring_name):
    total = 300_000
    with shmpipe.Ring.create(ring_name, TICK, 1 << 12) as ring, ring.consumer() as c:
        child = SPAWN.Process(target=produce, args=(ring_name, total, 97))
        child.start()
        out = np.empty(1000, TICK)
        pos = 0
        while pos < total:
            k = c.read_into(out, timeout=30)
            assert k > 0, f"nothing for 30 s at {pos}"
            check_ticks(out[:k], pos, k)
            pos += k
        child.join(30)
        assert child.exitcode == 0 and pos == total
    ring.unlink()


# -- read(out=...): the zero-allocation read that returns an array ---------------------------------

def test_read_out_returns_a_fresh_filled_view_of_out_each_call(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        out = np.zeros(5, TICK)
        pos = 0
        seen = []
        for n in (3, 8, 5, 1, 1):
            p.write_batch(make_ticks(pos, n))
            got = 0
            while got < n:
                view = c.read(timeout=0, out=out)
                assert view.base is out and 0 < len(view) <= len(out)
                check_ticks(view, pos + got, len(view))
                check_ticks(out[:len(view)], pos + got, len(view))     # the very memory of out
                assert all(view is not earlier for earlier in seen)    # never a returned object again
                seen.append(view)
                got += len(view)
            pos += n
        assert len(c.read(timeout=0, out=out)) == 0
        p.write_batch(make_ticks(pos, 4))
        check_ticks(c.read(2, timeout=0, out=out), pos, 2)               # max_n still bounds it
        other = np.zeros(8, TICK)                                        # another buffer: its own views
        view = c.read(timeout=0, out=other)
        assert view.base is other
        check_ticks(view, pos + 2, 2)
    ring.unlink()


def test_read_out_holds_no_reference_to_the_buffer_after_the_call(ring_name):
    import sys
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        out = np.zeros(4, TICK)
        p.write_batch(make_ticks(0, 2))
        before = sys.getrefcount(out)
        c.read(out=out)
        assert sys.getrefcount(out) == before
    ring.unlink()


def test_read_out_refuses_what_cannot_be_returned_as_records(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.consumer() as c:
        with pytest.raises(shmpipe.DtypeMismatchError):
            c.read(out=np.zeros(4, ASSET))
        with pytest.raises(shmpipe.InvalidArgumentError, match="numpy array"):
            c.read(out=bytearray(64))
        frozen = np.zeros(4, TICK)
        frozen.flags.writeable = False
        for bad in (frozen, np.zeros(8, TICK)[::2], np.zeros((2, 2), TICK)):
            with pytest.raises(shmpipe.InvalidArgumentError, match="1-d C-contiguous writeable"):
                c.read(out=bad)
        with pytest.raises(shmpipe.InvalidArgumentError, match="room"):
            c.read(out=np.zeros(0, TICK))
        with pytest.raises(shmpipe.InvalidArgumentError, match="max_n"):
            c.read(0, out=np.zeros(4, TICK))
    ring.unlink()


def test_read_out_on_a_lossy_ring_drops_what_was_overwritten(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True, policy="lossy") as ring, \
            ring.producer() as p, ring.consumer(start="oldest") as c:
        p.write_batch(make_ticks(0, 20))             # laps the reader: 0..11 are gone
        out = np.zeros(16, TICK)
        view = c.read(timeout=0, out=out)
        check_ticks(view, 12, 8)
        assert c.lost == 12
    ring.unlink()


def test_read_out_into_a_large_buffer_returns_exact_views(ring_name):
    """A buffer larger than any count read: every view is exact, of out's own memory."""
    with shmpipe.Ring.create(ring_name, TICK, 1 << 14) as ring, ring.producer() as p, ring.consumer() as c:
        out = np.zeros(10_000, TICK)
        p.write_batch(make_ticks(0, 6000))
        view = c.read(10_000, timeout=0, out=out)
        assert view.base is out
        check_ticks(view, 0, 6000)
        p.write_batch(make_ticks(6000, 3))
        small = c.read(10_000, timeout=0, out=out)
        check_ticks(small, 6000, 3)
        assert len(c.read(10_000, timeout=0, out=out)) == 0
    ring.unlink()
