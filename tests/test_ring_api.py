"""The ring's public API in one process: round trips, waits, and a clear error for bad input."""
import os
import stat

import numpy as np
import posix_ipc
import pytest

import shmpipe
from shmpipe import _ring, segments
from shmpipe.records import ASSET, ORDERBOOK_ENTRY, TICK
from ring_workers import check_ticks, make_ticks


def test_round_trip_and_wrap(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring:
        assert (ring.name, ring.dtype, ring.capacity, len(ring)) == (ring_name, TICK, 16, 0)
        with ring.producer() as p, ring.consumer() as c:
            pos = 0
            for n in (5, 16, 3, 11, 16, 1):   # crosses the wrap many times
                assert p.write_batch(make_ticks(pos, n)) == n
                assert len(ring) == n
                got = c.read(1024)
                check_ticks(got, pos, n)
                pos += n
            assert ring.stats()["written"] == pos
            assert ring.stats()["wraps"] == pos // 16
    ring.unlink()


def test_single_writes_accept_scalars_and_bytes(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        recs = make_ticks(0, 3)
        assert p.write(recs[0])
        assert p.write(recs[1].tobytes())
        assert p.write(recs[2:3])          # a one-record array
        check_ticks(c.read(), 0, 3)
    ring.unlink()


def test_full_ring_times_out_and_partial_batch(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        assert p.write_batch(make_ticks(0, 20), timeout=0) == 8
        assert p.write(make_ticks(8, 1)[0], timeout=0) is False
        assert p.write(make_ticks(8, 1)[0], timeout=0.05) is False
        assert p.write_batch(make_ticks(8, 4), timeout=0.05) == 0
        check_ticks(c.read(3), 0, 3)
        assert p.write_batch(make_ticks(8, 4), timeout=0) == 3
        check_ticks(c.read(100), 3, 8)
        assert len(c.read(100, timeout=0)) == 0
        assert len(c.read(100, timeout=0.05)) == 0
    ring.unlink()


@pytest.mark.parametrize("wait", ["spin", "yield", "block"])
def test_every_wait_strategy_times_out_when_empty(ring_name, wait):
    with shmpipe.Ring.create(ring_name, TICK, 8, wait=wait) as ring, ring.consumer() as c:
        assert ring.wait == wait
        got = c.read(4, timeout=0.03)
        assert got.dtype == TICK and len(got) == 0
    ring.unlink()


def test_peek_is_zero_copy_read_only_and_commit_frees_room(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer() as c:
        p.write_batch(make_ticks(0, 8))
        view = c.peek(5)
        check_ticks(view, 0, 5)
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view["sequence"][0] = 99
        assert p.write(make_ticks(8, 1)[0], timeout=0) is False   # peeked is not yet freed
        c.commit(5)
        assert p.write_batch(make_ticks(8, 5), timeout=0) == 5
        check_ticks(c.read(), 5, 8)
        with pytest.raises(ValueError):
            c.commit(1)
    ring.unlink()


def test_user_dtype_and_open_without_dtype(ring_name):
    dt = np.dtype([("a", "<i8"), ("b", "S6"), ("c", "<f8", (2,))])
    with shmpipe.Ring.create(ring_name, dt, 4) as ring, ring.producer() as p:
        rec = np.array([(7, b"abc", (1.5, 2.5))], dt)
        p.write_batch(rec)
        with shmpipe.Ring.open(ring_name) as other, other.consumer() as c:
            assert other.dtype == dt
            got = c.read()
            assert got.dtype == dt and got.tobytes() == rec.tobytes()
    ring.unlink()


def test_stats_name_who_is_attached(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer():
        p.write_batch(make_ticks(0, 3))
        s = ring.stats()
        assert s["producer"]["pid"] == os.getpid() and s["producer"]["alive"]
        assert s["consumers"][0]["pid"] == os.getpid() and s["consumers"][0]["lag"] == 3
        assert s["fill"] == 3 and s["capacity"] == 8 and s["itemsize"] == 32
    ring.unlink()


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a/b", "../etc", "..", "x" * 201, "sp ace", "nul\0", "é", 5, None])
def test_hostile_names_rejected(name):
    with pytest.raises(shmpipe.InvalidNameError) as err:
        shmpipe.Ring.create(name, TICK, 8)
    assert isinstance(err.value, ValueError) and isinstance(err.value, shmpipe.ShmpipeError)


def test_segment_mode_is_0600_and_space_reserved(ring_name):
    with shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 64) as ring:
        st = os.stat(f"/dev/shm/shmpipe.{ring_name}")
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == _ring.DATA_OFFSET + 64 * ORDERBOOK_ENTRY.itemsize
        assert st.st_blocks * 512 >= st.st_size   # allocated now, not on first touch
    ring.unlink()


def test_existing_and_missing_names(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8):
        with pytest.raises(FileExistsError, match=ring_name):
            shmpipe.Ring.create(ring_name, TICK, 8)
    shmpipe.Ring.open(ring_name).close()
    segments.unlink(ring_name)
    with pytest.raises(FileNotFoundError, match=ring_name):
        shmpipe.Ring.open(ring_name)
    with pytest.raises(shmpipe.RingNotFoundError):
        segments.unlink(ring_name)


@pytest.mark.parametrize("capacity", [0, 1, 3, 1000, -8, 2.0, True, 1 << 41])
def test_capacity_must_be_power_of_two(ring_name, capacity):
    with pytest.raises(ValueError, match="capacity"):
        shmpipe.Ring.create(ring_name, TICK, capacity)
    assert not os.path.exists(f"/dev/shm/shmpipe.{ring_name}")


def test_capacity_too_large_for_dev_shm(ring_name):
    free = segments.free_bytes()
    capacity = 1 << max(1, (free // 32).bit_length() + 1)   # at least twice what fits
    with pytest.raises(shmpipe.NoSpaceError, match="/dev/shm") as err:
        shmpipe.Ring.create(ring_name, TICK, capacity)
    assert isinstance(err.value, OSError)
    assert not os.path.exists(f"/dev/shm/shmpipe.{ring_name}")


def test_bad_wait_policy_and_dtype(ring_name):
    with pytest.raises(ValueError, match="wait"):
        shmpipe.Ring.create(ring_name, TICK, 8, wait="sleepy")
    with pytest.raises(ValueError, match="policy"):
        shmpipe.Ring.create(ring_name, TICK, 8, policy="lossy")   # lossy needs broadcast
    with pytest.raises(ValueError, match="objects"):
        shmpipe.Ring.create(ring_name, np.dtype([("o", object)]), 8)
    with pytest.raises(ValueError):
        shmpipe.Ring.create(ring_name, "not-a-dtype", 8)


def test_open_with_wrong_dtype_names_both(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8):
        with pytest.raises(shmpipe.DtypeMismatchError) as err:
            shmpipe.Ring.open(ring_name, ASSET)
        msg = str(err.value)
        assert ring_name in msg and "itemsize 32" in msg and "itemsize 152" in msg
        same_size = np.dtype([("other", "<u8", (4,))])
        with pytest.raises(ValueError, match="itemsize 32"):
            shmpipe.Ring.open(ring_name, same_size)
    segments.unlink(ring_name)


def _poke(ring_name, offset, raw):
    shm = posix_ipc.SharedMemory(segments.shm_name(ring_name))
    try:
        os.pwrite(shm.fd, raw, offset)
    finally:
        os.close(shm.fd)


def test_foreign_segment_bad_magic(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8):
        pass
    _poke(ring_name, 0, b"NOTARING")
    with pytest.raises(shmpipe.RingFormatError, match="magic"):
        shmpipe.Ring.open(ring_name)
    segments.unlink(ring_name)


def test_bad_layout_version_and_corrupt_capacity(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8):
        pass
    _poke(ring_name, 8, (99).to_bytes(4, "little"))
    with pytest.raises(shmpipe.RingFormatError, match="layout version 99"):
        shmpipe.Ring.open(ring_name)
    _poke(ring_name, 8, _ring.LAYOUT_VERSION.to_bytes(4, "little"))
    _poke(ring_name, 16, (12).to_bytes(8, "little"))           # capacity 12
    with pytest.raises(shmpipe.RingFormatError, match="corrupt"):
        shmpipe.Ring.open(ring_name)
    _poke(ring_name, 16, (1 << 30).to_bytes(8, "little"))      # larger than the segment
    with pytest.raises(shmpipe.RingFormatError, match="segment is"):
        shmpipe.Ring.open(ring_name)
    segments.unlink(ring_name)


def test_truncated_segment(ring_name):
    shm = posix_ipc.SharedMemory(segments.shm_name(ring_name), posix_ipc.O_CREX, size=100)
    os.close(shm.fd)
    with pytest.raises(shmpipe.RingFormatError, match="smaller than a header"):
        shmpipe.Ring.open(ring_name)
    segments.unlink(ring_name)


def test_wrong_records_written(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p:
        with pytest.raises(shmpipe.DtypeMismatchError, match="dtype"):
            p.write_batch(np.zeros(3, ASSET))
        with pytest.raises(ValueError, match="dtype"):
            p.write_batch(np.zeros(3, np.dtype([("x", "<u8", (4,))])))
        with pytest.raises(ValueError, match="32 bytes"):
            p.write(b"short")
        with pytest.raises(shmpipe.DtypeMismatchError):
            p.write(np.zeros(1, ASSET)[0])
        with pytest.raises(TypeError):
            p.write_batch([1, 2, 3])
        with pytest.raises(ValueError, match="1-d"):
            p.write_batch(np.zeros((2, 2), TICK))
        with pytest.raises(ValueError, match="timeout"):
            p.write(b"\0" * 32, timeout=-1)
        assert ring.stats()["written"] == 0
    ring.unlink()


def test_second_producer_and_consumer_refused_while_first_lives(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer(), ring.consumer():
        with shmpipe.Ring.open(ring_name) as other:
            with pytest.raises(shmpipe.RoleTakenError, match="live producer") as err:
                other.producer()
            assert isinstance(err.value, PermissionError)
            with pytest.raises(shmpipe.RoleTakenError, match="live consumer"):
                other.consumer()
    # Once the first ones closed, the roles are free again.
    with shmpipe.Ring.open(ring_name) as again, again.producer(), again.consumer():
        pass
    segments.unlink(ring_name)


def test_closed_handles_raise(ring_name):
    ring = shmpipe.Ring.create(ring_name, TICK, 8)
    p, c = ring.producer(), ring.consumer()
    ring.close()
    with pytest.raises(shmpipe.RingClosedError):
        p.write(b"\0" * 32)
    with pytest.raises(shmpipe.RingClosedError):
        c.read()
    with pytest.raises(shmpipe.RingClosedError):
        len(ring)
    segments.unlink(ring_name)


@pytest.mark.parametrize("dtype", [TICK, ORDERBOOK_ENTRY, np.dtype("<u8"), np.dtype([("a", "u1"), ("b", "<i2")])])
def test_read_returns_ordinary_owned_arrays(ring_name, dtype):
    """read() builds its arrays through a fast path (see shm_new_array): they must still be
    plain, writeable, owning arrays of the ring's dtype that outlive the ring."""
    with shmpipe.Ring.create(ring_name, dtype, 8) as ring, ring.producer() as p, ring.consumer() as c:
        sent = np.frombuffer(np.random.default_rng(1).bytes(3 * dtype.itemsize), dtype)
        p.write_batch(sent)
        got = c.read()
    ring.unlink()
    assert got.dtype == dtype and got.itemsize == dtype.itemsize and got.shape == (3,)
    assert got.flags.owndata and got.flags.writeable and got.flags.c_contiguous
    assert got.tobytes() == sent.tobytes()
    got.view(np.uint8)[:] = 0             # usable (and writeable) after the ring is gone
    assert got[2] == np.zeros(1, dtype)[0]


def test_open_keeps_cheap_dtype_identity(ring_name):
    """Comparing structured dtypes costs ~400 ns, so open() hands out the very dtype object the
    caller passed (or the shared records.* one) and the hot path checks identity first."""
    mine = np.dtype([("a", "<u8"), ("b", "<u8")])
    with shmpipe.Ring.create(ring_name, TICK, 8):
        with shmpipe.Ring.open(ring_name) as ring:
            assert ring.dtype is TICK
        with shmpipe.Ring.open(ring_name, TICK) as ring:
            assert ring.dtype is TICK
    segments.unlink(ring_name)
    with shmpipe.Ring.create(ring_name, mine, 8):
        twin = np.dtype([("a", "<u8"), ("b", "<u8")])
        with shmpipe.Ring.open(ring_name, twin) as ring, ring.producer() as p:
            assert ring.dtype is twin
            assert p.write_batch(np.zeros(2, mine)) == 2     # equal but distinct objects still work
            assert p.write(np.zeros(1, mine)[0])
            with pytest.raises(shmpipe.DtypeMismatchError):
                p.write_batch(np.zeros(2, TICK))
    segments.unlink(ring_name)
