"""Ring safety (issue 20): close() during a write, read(out=) views, eviction under peek/commit,
the C-level API after fork(), and a fork while a ring is being opened. Where a hang or a crash is
possible the body runs in a child under a time limit (tests/isolation.py)."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import shmpipe
from shmpipe.records import TICK
from isolation import run_isolated
from ring_workers import check_ticks, make_ticks
import ring_safety_workers as workers


@pytest.fixture(scope="module")
def c_api_dir(tmp_path_factory):
    """A directory holding ring_safety_capi, an out-of-tree module built against shmpipe.ring_api."""
    directory = str(tmp_path_factory.mktemp("capi"))
    workers.build_c_api_module(directory)
    return directory


# -- 1. every wait ends in RingClosedError, a timeout or progress -------------------------------------
@pytest.mark.parametrize("wait", ["block", "spin", "yield"])
@pytest.mark.parametrize("capacity", [64, 1 << 18], ids=["small-chunks", "gil-free-chunks"])
def test_close_during_a_multi_chunk_write_batch_raises(ring_name, wait, capacity):
    for _ in range(3):
        result, seconds = run_isolated(workers.close_during_write_batch, ring_name, wait, capacity, "python",
                                       None, timeout=60)
        assert result == "RingClosedError", (result, seconds)
        assert seconds < 10, f"close() took {seconds:.1f} s to end the write"


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_close_during_a_c_level_write_wait_raises(ring_name, wait, c_api_dir):
    for _ in range(3):
        result, seconds = run_isolated(workers.close_during_write_batch, ring_name, wait, 1 << 18, "c",
                                       c_api_dir, timeout=60)
        assert result == "RingClosedError", (result, seconds)


@pytest.mark.parametrize("wait", ["block", "spin", "yield"])
def test_close_during_a_read_raises(ring_name, wait):
    assert run_isolated(workers.close_during_read, ring_name, wait, timeout=60) == "RingClosedError"


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_close_during_a_c_level_consumer_wait_raises(ring_name, wait, c_api_dir):
    assert run_isolated(workers.close_during_read, ring_name, wait, "c", c_api_dir,
                        timeout=60) == "RingClosedError"


# -- 2. read(out=) returns a fresh view each call, and keeps no reference to out ----------------------
def test_read_out_views_share_no_metadata(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring, ring.producer() as p, ring.consumer() as c:
        buf = np.zeros(16, TICK)
        p.write_batch(make_ticks(0, 16))
        first = c.read(4, out=buf)
        first.shape = (2, 2)
        first.flags.writeable = False
        second = c.read(4, out=buf)
        assert second is not first
        assert second.shape == (4,) and second.flags.writeable and second.dtype == TICK
        second.dtype = np.dtype("<u8")          # reinterpret the caller's own view
        third = c.read(4, out=buf)
        assert third.dtype == TICK and third.shape == (4,)
        check_ticks(third, 8, 4)
        assert third.base is buf or third.base is buf.base or np.shares_memory(third, buf)
    ring.unlink()


def test_read_out_keeps_no_reference_to_the_callers_buffer(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring, ring.producer() as p, ring.consumer() as c:
        buf = np.zeros(16, TICK)
        alive = weakref.ref(buf)
        p.write_batch(make_ticks(0, 4))
        got = c.read(4, out=buf)
        check_ticks(got, 0, 4)
        del got, buf
        gc.collect()
        assert alive() is None, "the consumer still holds the read(out=) buffer after the call"
    ring.unlink()


def test_read_out_after_the_caller_resizes_its_buffer(ring_name):
    seqs = run_isolated(workers.read_out_after_resize, ring_name, timeout=60)
    assert seqs == [[0, 1, 2, 3], [4, 5, 6, 7], [2000, 8, 2007]]


# -- 3. peek()/commit() see an eviction ---------------------------------------------------------------
def _evict(ring, producer, consumer):
    word = ring._mapped.slot_word(consumer.slot)
    assert producer._evict_if_unchanged(consumer.slot, word)


def test_commit_after_eviction_raises_and_counts_nothing(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16, broadcast=True) as ring, ring.producer() as p, \
            ring.consumer() as c:
        p.write_batch(make_ticks(0, 16))
        view = c.peek(8)
        check_ticks(view, 0, 8)
        _evict(ring, p, c)
        assert p.write_batch(make_ticks(16, 16), timeout=1) == 16     # overwrites what the view shows
        with pytest.raises(shmpipe.ConsumerEvictedError, match="evicted"):
            c.commit(8)
        assert c.position == 0
    ring.unlink()


def test_commit_after_a_silent_readers_eviction_raises(ring_name):
    """The issue's case: the reader stalls past consumer_timeout between peek and commit; the
    producer evicts it and overwrites the records the view shows."""
    with shmpipe.Ring.create(ring_name, TICK, 16, broadcast=True, consumer_timeout=0.2) as ring, \
            ring.producer() as p, ring.consumer() as c:
        p.write_batch(make_ticks(0, 16))
        view = c.peek(8)
        check_ticks(view, 0, 8)
        # The producer waits for room, judges the silent reader after 0.2 s and evicts it.
        assert p.write_batch(make_ticks(16, 16), timeout=30) == 16
        assert int(view["sequence"][0]) != 0, "the producer did not overwrite the peeked slots"
        with pytest.raises(shmpipe.ConsumerEvictedError):
            c.commit(8)
    ring.unlink()


def test_c_level_commit_after_eviction_answers_minus_one(ring_name, c_api_dir):
    import sys
    sys.path.insert(0, c_api_dir)
    try:
        import ring_safety_capi as capi
    finally:
        sys.path.remove(c_api_dir)
    with shmpipe.Ring.create(ring_name, TICK, 16, broadcast=True) as ring, ring.producer() as p, \
            ring.consumer() as c:
        capi.keep(c, None)
        p.write_batch(make_ticks(0, 16))
        assert capi.peek(8) == (8, 0)
        _evict(ring, p, c)
        assert p.write_batch(make_ticks(16, 16), timeout=1) == 16
        assert capi.commit(8) == -1
        assert c.position == 0
        with pytest.raises(shmpipe.ConsumerEvictedError):
            c.commit(8)                 # the Python call explains the -1
        capi.keep()
    ring.unlink()


def test_commit_without_eviction_still_counts(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16, broadcast=True) as ring, ring.producer() as p, \
            ring.consumer() as c:
        p.write_batch(make_ticks(0, 10))
        check_ticks(c.peek(8), 0, 8)
        c.commit(8)
        check_ticks(c.read(16), 8, 2)
    ring.unlink()


# -- 4. the C-level API in a forked child -------------------------------------------------------------
def test_c_level_calls_in_a_forked_child_answer_minus_one(ring_name, c_api_dir):
    answers, child_exit, parent_reads, written = run_isolated(workers.c_api_in_forked_child, ring_name,
                                                              c_api_dir, timeout=60)
    assert child_exit == 0
    assert answers == "(-1, -1, -1, -1)", answers
    assert parent_reads == [0, 1, 2, 3] and written == 4


# -- 5. a fork() from another thread while a ring is being opened -------------------------------------
def test_fork_while_another_thread_opens_a_ring_leaks_no_fd(ring_name):
    leaked = run_isolated(workers.fork_while_opening, ring_name, timeout=60)
    assert leaked == 0, f"the forked child inherited {leaked} untracked fd(s) of the segment"


def test_open_rereads_a_header_whose_magic_it_saw_before_the_fields(ring_name, monkeypatch):
    """On a weakly ordered CPU a copy of the header can show the creator's magic (stamped last)
    with older bytes of the fields before it: open() must re-read after it saw the magic, not
    validate the stale copy (here: the first read shows the magic over zeroed fields)."""
    import os

    from shmpipe import ring as ring_module

    with shmpipe.Ring.create(ring_name, TICK, 64):
        real_pread = os.pread
        reads = []

        def pread_seeing_only_the_magic(fd, n, offset):
            raw = real_pread(fd, n, offset)
            reads.append(n)
            if len(reads) == 1:
                return raw[:8] + bytes(len(raw) - 8)      # the magic is the header's first field
            return raw

        monkeypatch.setattr(ring_module.os, "pread", pread_seeing_only_the_magic)
        with shmpipe.Ring.open(ring_name) as again:
            assert again.capacity == 64 and again.dtype == TICK
        assert len(reads) >= 2
    shmpipe.segments.unlink(ring_name)


def test_order_book_pump_reports_an_eviction_between_its_peek_and_commit(ring_name):
    """services/orderbook applies records in place through the C-level peek/commit. Here it is
    evicted while it waits for room in a full books ring in the middle of a batch (the GIL is
    released there), and the producer overwrites what its peek showed: pump() must raise
    ConsumerEvictedError, not return as if the batch were sound."""
    import threading
    import time

    from orderbook_helpers import level, levels, snapshot
    from shmpipe.records import ACTION_SET, LEVEL_UPDATE, ORDERBOOK_ENTRY, SIDE_BID
    from shmpipe_services.orderbook._book import BookEngine

    levels_ring = shmpipe.Ring.create(ring_name + "-levels", LEVEL_UPDATE, 64, broadcast=True)
    books_ring = shmpipe.Ring.create(ring_name + "-books", ORDERBOOK_ENTRY, 2)
    try:
        with levels_ring.producer() as lp, levels_ring.consumer() as lc, books_ring.producer() as bp, \
                books_ring.consumer() as reader:
            engine = BookEngine(lc, bp, facts=lambda sid: (2, 8, 0))
            rows = snapshot({10.0: 1.0}, {11.0: 1.0})
            rows += [level(ACTION_SET, SIDE_BID, 9.0 - 0.01 * k, 1.0, ts=2 + k) for k in range(30)]
            lp.write_batch(levels(*rows))
            done = threading.Event()
            seen = {}

            def evict_then_drain():
                deadline = time.monotonic() + 30
                while not bp.waiting:             # the engine waits for room in the books ring
                    if time.monotonic() > deadline or done.is_set():
                        seen["evicted"] = False
                        return
                    time.sleep(0.001)
                word = levels_ring._mapped.slot_word(lc.slot)
                seen["evicted"] = lp._evict_if_unchanged(lc.slot, word)
                filler = levels(*[level(ACTION_SET, SIDE_BID, 1.0, 1.0, sid=9) for _ in range(64)])
                seen["overwritten"] = lp.write_batch(filler, timeout=5)
                while not done.is_set():
                    reader.read(100, timeout=0.01)

            helper = threading.Thread(target=evict_then_drain, daemon=True)
            helper.start()
            try:
                with pytest.raises(shmpipe.ConsumerEvictedError):
                    engine.pump()
            finally:
                done.set()
                helper.join(30)
            assert seen == {"evicted": True, "overwritten": 64}
    finally:
        for r in (levels_ring, books_ring):
            r.close()
            r.unlink()


# -- joins race a running producer across real processes ---------------------------------------------
def test_joins_race_a_running_producer_across_processes(ring_name):
    """The join protocol's other tests run in one process. Here a producer process streams into a
    small lossless broadcast ring (every batch claims slots a joiner may be choosing a start in)
    while two processes join and leave it over and over; every record each member reads is checked
    whole and in sequence, and none may be counted lost."""
    import multiprocessing as mp

    from ring_workers import produce_forever

    spawn = mp.get_context("spawn")
    rounds, per_round = 150, 1500
    with shmpipe.Ring.create(ring_name, TICK, 256, broadcast=True, consumer_timeout=30.0) as ring:
        ready, result = spawn.Event(), spawn.Queue()
        producer = spawn.Process(target=produce_forever, args=(ring_name, 37, ready), daemon=True)
        joiners = [spawn.Process(target=workers.join_repeatedly, args=(ring_name, rounds, per_round, result),
                                 daemon=True) for _ in range(2)]
        producer.start()
        try:
            assert ready.wait(60), "the producer never started"
            for j in joiners:
                j.start()
            outcomes = [result.get(timeout=300) for _ in joiners]
            assert all(o[0] == "ok" and o[1] == rounds and o[2] >= rounds * per_round
                       for o in outcomes), outcomes
            stats = ring.stats()
            assert stats["evictions"] == 0 and stats["producer"]["alive"]
            assert ring._mapped.positions()["joins"] >= 2 * rounds
        finally:
            for proc in joiners + [producer]:
                if proc.is_alive():
                    proc.kill()
                proc.join(10)
    ring.unlink()
