"""consumer.read_into(out): read() without an allocation, with every promise of read()."""
import multiprocessing as mp

import numpy as np
import pytest

import shmpipe
from shmpipe.records import ASSET, TICK
from ring_workers import check_ticks, make_ticks, produce

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
