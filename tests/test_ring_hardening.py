"""Issue 9, the ring hardened: one test per defect the outside review found (numbers are the
issue's). Anything that could crash the interpreter on the old code runs in a child process."""
from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

import shmpipe
from shmpipe import _ring, inventory, segments
from shmpipe import ring as ring_module
from shmpipe.records import ASSET, TICK
from hardening_workers import (bad_timeouts, fork_with_producer, lossy_run, overfill_lossless_joiner, poke,
                               rewrite_header_after_open)
from isolation import SPAWN, run_isolated
from ring_workers import check_ticks, make_ticks

OFFSETS = _ring.layout_offsets()


def expect_ticks(batch, start: int, n: int) -> None:
    """Exactly n records, start .. start+n-1, each field as written."""
    assert len(batch) == n, f"{len(batch)} records, expected {n}"
    check_ticks(batch, start)


def _wait_until(predicate, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.001)


# -- 1: a lossy broadcast reader never runs ahead of the producer --------------------------------

@pytest.mark.parametrize("capacity", [4, 64])
def test_1_lossy_reader_never_passes_the_producer(ring_name, capacity):
    result = lossy_run(ring_name, capacity, 4096, (64, 1024, 1_000_000), seconds=2.0)
    assert result["received"] > 0 and result["lost"] > 0


# -- 2b: a joiner behind the producer's cached limit holds a lossless producer back --------------

def test_2b_lossless_joiner_is_never_overwritten(ring_name):
    out = run_isolated(overfill_lossless_joiner, ring_name)
    assert out["went_in"] == {1000: 0, 2000: 0, 3000: 0}, out
    assert (out["read"], out["lost"], out["first"]) == (1024, 0, 5000 - 1024), out


# -- 2: validated configuration is bound; a later rewrite of the header cannot steer us -----------

def test_2_header_rewritten_after_open_changes_nothing(ring_name):
    assert run_isolated(rewrite_header_after_open, ring_name) == "ok"


# -- 3: a failed open closes its fd once, not twice ---------------------------------------------

def test_3_failed_open_does_not_close_someone_elses_fd(ring_name, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"still mine")
    with shmpipe.Ring.create(ring_name, TICK, 8):
        for _ in range(3):
            try:
                shmpipe.Ring.open(ring_name, ASSET)
            except shmpipe.DtypeMismatchError:
                f = open(victim, "rb")
            gc.collect()
            assert f.read() == b"still mine"     # EBADF here when the ring closed our number again
            f.close()
    segments.unlink(ring_name)


# -- 4: peek() on a lossless broadcast ring never shows records being overwritten ----------------

def test_4_peek_of_a_late_joiner_is_protected(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True) as ring, ring.producer() as p:
        fast = ring.consumer(start="newest")
        p.write_batch(make_ticks(0, 8))
        expect_ticks(fast.read(), 0, 8)
        assert p.write(make_ticks(8, 1)[0], timeout=0)          # producer's cached limit is now 8
        late = ring.consumer(start="oldest")                     # joins at 1, below that limit
        view = late.peek(8)
        expect_ticks(view, 1, 7)
        assert p.write_batch(make_ticks(9, 7), timeout=0) == 0   # it must wait for the joiner
        expect_ticks(view, 1, 7)                                  # the view was not overwritten
        late.commit(7)
        assert p.write_batch(make_ticks(9, 7), timeout=0) == 7
        assert late.lost == 0
    segments.unlink(ring_name)


# -- 5: peek/commit as rigtorp's front()/pop() and Boost's spsc_queue users expect ---------------

def test_5_peek_is_idempotent_and_commit_advances_by_k(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring, ring.producer() as p, ring.consumer() as c:
        p.write_batch(make_ticks(0, 10))
        expect_ticks(c.peek(5), 0, 5)
        expect_ticks(c.peek(5), 0, 5)                 # shown again, not skipped
        c.commit(3)
        expect_ticks(c.peek(4), 3, 4)                 # uncommitted records are shown again
        c.commit(2)
        expect_ticks(c.read(), 5, 5)                  # read() after a partial commit is fine
        p.write_batch(make_ticks(10, 2))
        view = c.peek(10)
        expect_ticks(view, 10, 2)
        with pytest.raises(shmpipe.ShmpipeError, match="commit"):
            c.commit(3)                              # more than was shown
        c.commit(2)
        with pytest.raises(shmpipe.ShmpipeError):
            c.commit(1)                              # nothing shown any more
        assert c.position == 12 and len(ring) == 0
    segments.unlink(ring_name)


# -- 6: claim_pos never moves backwards when a lossy producer restarts ---------------------------

def test_6_restarted_lossy_producer_keeps_claim_monotonic(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True, policy="lossy") as ring:
        c = ring.consumer(start="oldest")
        with ring.producer() as p:
            p.write_batch(make_ticks(0, 16))
        # The predecessor was killed after claiming 5 more slots and half-writing them.
        claim_at = OFFSETS["producer.claim_pos"]
        poke(ring_name, claim_at, (16 + 5).to_bytes(8, "little"))
        with ring.producer():
            assert ring._mapped.positions()["claim_pos"] >= 21
            got = c.read(100, timeout=0)
        # Records 8..12 sat in slots the dead producer was overwriting: skipped and counted.
        expect_ticks(got, 13, 3)
        assert c.lost == 13
    segments.unlink(ring_name)


# -- 7: clean never removes a ring that is still being created ------------------------------------

def test_7_clean_spares_a_ring_being_created(ring_name, monkeypatch):
    seen = {}
    real_fallocate = os.posix_fallocate

    def slow_fallocate(fd, offset, length):
        seen["stale"] = [i.name for i in inventory.stale(inventory.survey([ring_name]))]
        return real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", slow_fallocate)
    with shmpipe.Ring.create(ring_name, TICK, 8):
        pass
    assert seen["stale"] == []
    segments.unlink(ring_name)


def test_7_clean_spares_a_young_headerless_segment(ring_name):
    fd = os.open(f"/dev/shm/shmpipe.{ring_name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, _ring.DATA_OFFSET + 8 * 32)
    os.close(fd)
    assert inventory.stale(inventory.survey([ring_name])) == []
    old = time.time() - 3600
    os.utime(f"/dev/shm/shmpipe.{ring_name}", (old, old))
    assert [i.name for i in inventory.stale(inventory.survey([ring_name]))] == [ring_name]
    segments.unlink(ring_name)


# -- 8: handles inherited across fork() are unusable in the child and do not keep roles ----------

def test_8_fork_child_does_not_inherit_the_producer(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring:
        report = SPAWN.Queue()
        grandchild = run_isolated(fork_with_producer, ring_name, report)
        try:
            said = report.get(timeout=30)
            assert said.startswith("closed:") and "fork" in said, said
            # The process that held the producer is gone; its forked child lives on.
            assert not ring.stats()["producer"]["alive"]
            with ring.producer() as p:
                assert p.write(make_ticks(0, 1)[0], timeout=0)
        finally:
            os.kill(grandchild, signal.SIGKILL)
    segments.unlink(ring_name)


# -- 9: eviction without waiting, and heartbeats from empty reads --------------------------------

def _join_and_die(name: str) -> None:
    ring = shmpipe.Ring.open(name)
    ring.consumer(start="oldest")
    os.kill(os.getpid(), signal.SIGKILL)


def test_9_write_with_timeout_zero_evicts_a_dead_consumer(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True) as ring, ring.producer() as p:
        child = SPAWN.Process(target=_join_and_die, args=(ring_name,))
        child.start()
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        assert p.write_batch(make_ticks(0, 8), timeout=0) == 8
        assert p.write(make_ticks(8, 1)[0], timeout=0)          # the dead reader is evicted at once
        assert ring.stats()["evictions"] == 1
    segments.unlink(ring_name)


def test_9_polling_an_idle_ring_keeps_a_consumer_alive(ring_name):
    # Polled for 1.5 x the consumer timeout; the timeout is long enough (1 s) that a loaded machine
    # pausing the poller between two polls does not evict it.
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True, consumer_timeout=1.0) as ring, \
            ring.producer() as p, ring.consumer() as c:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:              # an idle ring, polled as a user's loop would
            assert len(c.read(16, timeout=0)) == 0
            time.sleep(0.01)                       # the user's pacing, not synchronisation
        assert p.write_batch(make_ticks(0, 8), timeout=0) == 8
        assert p.write(make_ticks(8, 1)[0], timeout=0.05) is False   # full: c has not read yet
        assert ring.stats()["evictions"] == 0
        expect_ticks(c.read(16), 0, 8)
    segments.unlink(ring_name)


# -- 10: close() from another thread wakes a blocked read, which then touches nothing -----------

@pytest.mark.parametrize("wait", ["spin", "block"])
def test_10_close_from_another_thread_wakes_a_blocked_read(ring_name, wait):
    with shmpipe.Ring.create(ring_name, TICK, 8, wait=wait) as ring, ring.producer() as p:
        c = ring.consumer()
        outcome = {}

        def reader():
            try:
                outcome["got"] = len(c.read(4, timeout=20))
            except shmpipe.RingClosedError as exc:
                outcome["closed"] = str(exc)

        t = threading.Thread(target=reader)
        t.start()
        if wait == "block":
            _wait_until(lambda: ring.stats()["sleepers"]["data_ready"] >= 1, what="the reader to sleep")
        else:
            _wait_until(lambda: c.waiting, what="the reader to wait")
        c.close()
        t.join(30)       # the read waits up to its own timeout otherwise: ending here is the wake
        assert not t.is_alive(), "close() did not wake the blocked read()"
        assert "closed" in outcome, outcome
        p.write(make_ticks(0, 1)[0])
        assert ring.stats()["consumers"][0]["position"] == 0     # the closed reader took nothing
        with ring.consumer() as again:
            expect_ticks(again.read(4), 0, 1)
    segments.unlink(ring_name)


# -- 11: open validates the header before it maps, and waits briefly for a racing create --------

def test_11_open_waits_for_a_create_in_progress(ring_name, monkeypatch):
    real_fallocate = os.posix_fallocate
    creating = threading.Event()

    def slow_fallocate(fd, offset, length):
        creating.set()
        time.sleep(0.2)
        return real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", slow_fallocate)
    # The behaviour is "waits for the creator", not "the creator finishes within 1 s": a loaded
    # machine may take longer than open()'s own grace after the 0.2 s above.
    monkeypatch.setattr(ring_module, "_HALF_MADE_GRACE_S", 30.0)
    made = {}
    t = threading.Thread(target=lambda: made.setdefault("ring", shmpipe.Ring.create(ring_name, TICK, 8)))
    t.start()
    assert creating.wait(10)
    with shmpipe.Ring.open(ring_name) as ring:      # the segment exists, empty: wait, don't fail
        assert ring.capacity == 8
    t.join(10)
    made["ring"].close()
    segments.unlink(ring_name)


# -- 12: an exclusive role resets the waiter count a killed sleeper left raised ------------------

def test_12_attach_resets_stale_waiter_counts(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8):
        pass
    one = (1).to_bytes(4, "little")
    poke(ring_name, OFFSETS["data_ready"] + 4, one)     # a consumer killed asleep
    poke(ring_name, OFFSETS["space_ready"] + 4, one)    # a producer killed asleep
    with shmpipe.Ring.open(ring_name) as ring, ring.producer(), ring.consumer():
        assert ring.stats()["sleepers"] == {"data_ready": 0, "space_ready": 0}
    segments.unlink(ring_name)


# -- 13: a wake that lands before wait_any() sleeps is not lost ---------------------------------

def test_13_wake_between_snapshot_and_sleep_is_not_lost():
    word = _ring.WakeWord()
    token = word.snapshot()
    word.wake()                        # e.g. watch() from another thread, after the snapshot
    started = time.monotonic()
    _ring.wait_any([], word, 60.0, token)
    assert time.monotonic() - started < 30, "the wake was lost: wait_any slept to its timeout"


# -- 14: join and eviction races; timeouts that are not plain numbers ---------------------------

def test_14_consumer_killed_while_claiming_does_not_pin_the_producer(ring_name):
    """Killed after it showed its slot (CLAIMING) and before it bumped membership.joins: the
    producer, which looks only at known members while joins is unchanged, never counts it; the
    next join makes it look at every slot, where the dead claimer is evicted, not waited for."""
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True) as ring, ring.producer() as p:
        slot = OFFSETS["consumers"] + 5 * OFFSETS["consumer_stride"]
        poke(ring_name, slot + OFFSETS["slot.state"], (3).to_bytes(4, "little"))   # CLAIMING, lock gone
        poke(ring_name, slot, (0).to_bytes(8, "little"))
        assert p.write_batch(make_ticks(0, 8), timeout=0) == 8
        assert p.write(make_ticks(8, 1)[0], timeout=0)          # not pinned: nothing waited for
        with ring.consumer(start="newest") as live:             # a join: every slot is looked at
            assert live.slot != 5
            assert p.write_batch(make_ticks(9, 8), timeout=2) == 8
            assert ring.stats()["evictions"] == 1               # the dead claimer, not the newcomer
            expect_ticks(live.read(), 9, 8)
    segments.unlink(ring_name)


def test_14_eviction_spares_a_newcomer_in_a_reused_slot(ring_name):
    """The evictor saw a dead consumer's slot; a newcomer took it before the evictor acted."""
    with shmpipe.Ring.create(ring_name, TICK, 8, broadcast=True) as ring, ring.producer() as p:
        old = ring.consumer()
        seen = ring._mapped.slot_word(old.slot)       # what an evictor read before it probed
        old.close()
        newcomer = ring.consumer()
        assert newcomer.slot == old.slot
        assert not p._evict_if_unchanged(newcomer.slot, seen)
        p.write_batch(make_ticks(0, 3))
        expect_ticks(newcomer.read(), 0, 3)
    segments.unlink(ring_name)


def test_14_timeouts_nan_negative_infinite_and_huge(ring_name):
    out = run_isolated(bad_timeouts, ring_name, timeout=30)
    assert all(line.endswith("InvalidArgumentError") for line in out), out


# -- 15: every error is a ShmpipeError --------------------------------------------------------

@pytest.mark.parametrize("capacity", [0, 1000])
def test_15_bad_capacity_is_a_shmpipe_error(ring_name, capacity):
    with pytest.raises(shmpipe.ShmpipeError, match="capacity") as err:
        shmpipe.Ring.create(ring_name, TICK, capacity)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_15_wrong_record_size_is_a_shmpipe_error(ring_name, size):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p:
        with pytest.raises(shmpipe.ShmpipeError, match="32 bytes") as err:
            p.write(b"\0" * size)
        assert isinstance(err.value, ValueError)
        with pytest.raises(shmpipe.ShmpipeError) as err:
            p.write_batch([1, 2, 3])
        assert isinstance(err.value, TypeError)
        with pytest.raises(shmpipe.ShmpipeError):
            shmpipe.Ring.create(ring_name + "x", np.dtype([("o", object)]), 8)
    segments.unlink(ring_name)


# -- the doorbell: a sleeping reader is woken by the producer's wake, not by its sleep cap -----

def _sleep_then_report(name: str, pipe) -> None:
    with shmpipe.Ring.open(name, TICK) as ring, ring.consumer() as consumer:
        pipe.send("ready")
        got = consumer.read(16, timeout=30)
        pipe.send((len(got), time.monotonic(), consumer.sleep_stats))


def test_doorbell_wake_comes_from_the_producer(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, wait="block") as ring, ring.producer() as p:
        mine, theirs = SPAWN.Pipe()
        child = SPAWN.Process(target=_sleep_then_report, args=(ring_name, theirs), daemon=True)
        child.start()
        try:
            assert mine.poll(30) and mine.recv() == "ready"
            _wait_until(lambda: ring.stats()["sleepers"]["data_ready"] >= 1, what="the reader to sleep")
            p.write(make_ticks(0, 1)[0])
            assert mine.poll(30)
            n, _, stats = mine.recv()
            assert n == 1
            # Woken by the doorbell (futex returned woken), not by a timed-out 10 ms nap.
            assert stats["woken"] >= 1, stats
        finally:
            child.join(10)
    segments.unlink(ring_name)
