"""shmpipe.batches / abatches / symbol_names: every record once, the end when the producer goes,
the consumer given back on every way out of the loop, bad arguments refused."""
from __future__ import annotations

import asyncio
import multiprocessing as mp

import numpy as np
import pytest
from consumer_workers import produce_in_chunks
from ring_workers import check_ticks, make_ticks

import shmpipe
from shmpipe.records import TICK

SPAWN = mp.get_context("spawn")
TOTAL = 200_000


@pytest.fixture
def ring(ring_name):
    r = shmpipe.Ring.create(ring_name, TICK, 1 << 12)
    yield r
    r.close()
    r.unlink()


def _run_producer(name: str, total: int = TOTAL, seed: int = 1):
    proc = SPAWN.Process(target=produce_in_chunks, args=(name, total, seed))
    proc.start()
    return proc


def _reap(proc) -> None:
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        proc.join()
    assert proc.exitcode == 0


@pytest.mark.parametrize("wait", [None, "spin", "yield", "block"])
def test_every_record_once_from_another_process_then_the_end(ring, wait):
    proc = _run_producer(ring.name)
    try:
        got = []
        stream = shmpipe.batches(ring.name, max_n=1000, wait=wait)
        for batch in stream:                # ends by itself: the producer left, the ring drained
            assert 0 < len(batch) <= 1000 and batch.dtype == TICK
            got.append(batch)
        all_ticks = np.concatenate(got)
        check_ticks(all_ticks, 0, TOTAL)    # in order, nothing lost, nothing repeated
        assert stream.consumed == TOTAL and stream.lost == 0 and stream.batches == len(got)
        assert stream.ended and stream.closed
    finally:
        _reap(proc)
    assert ring.stats()["consumers"][0]["alive"] is False   # the role was given back


def test_batches_are_copies_that_stay_valid(ring):
    with ring.producer() as out:
        out.write_batch(make_ticks(0, 100))
        stream = shmpipe.batches(ring, max_n=100)
        first = next(stream)
        first_copy = first.copy()
        out.write_batch(make_ticks(100, 4000))     # wraps over the slots the first batch came from
        second = next(stream)
        assert first.flags.writeable and np.array_equal(first, first_copy)
        check_ticks(second, 100, 100)
        stream.close()


def test_break_gives_the_consumer_back_and_the_next_one_resumes(ring):
    with ring.producer() as out:
        out.write_batch(make_ticks(0, 3000))
        for batch in shmpipe.batches(ring, max_n=1000):
            check_ticks(batch, 0, 1000)
            break                           # the stream is dropped: its consumer closes
        with pytest.raises(StopIteration):  # a closed stream yields nothing more
            s = shmpipe.batches(ring, max_n=1000)
            s.close()
            next(s)
        with shmpipe.batches(ring, max_n=5000, timeout=0) as stream:
            check_ticks(next(stream), 1000, 2000)   # SPSC resumes: nothing repeated, nothing skipped
        assert stream.closed
        with ring.consumer():               # the role is free again
            pass


def test_an_exception_in_the_loop_closes_the_consumer(ring):
    with ring.producer() as out:
        out.write_batch(make_ticks(0, 10))
        stream = shmpipe.batches(ring)
        with pytest.raises(RuntimeError, match="boom"), stream:
            for _batch in stream:
                raise RuntimeError("boom")
        assert stream.closed
        with ring.consumer():
            pass


def test_timeout_yields_empty_batches_while_the_producer_is_alive(ring):
    with ring.producer() as out:
        stream = shmpipe.batches(ring, timeout=0.05)
        assert len(next(stream)) == 0       # nothing yet: an empty batch, the loop goes on
        out.write(make_ticks(0, 1)[0])
        check_ticks(next(stream), 0, 1)
        assert len(next(stream)) == 0 and not stream.ended
        stream.close()


def test_a_producer_not_attached_yet_is_waited_for(ring):
    stream = shmpipe.batches(ring, timeout=0.05)
    for _ in range(3):                      # no producer ever attached and nothing written: wait
        assert len(next(stream)) == 0
    assert not stream.ended
    with ring.producer() as out:
        out.write_batch(make_ticks(0, 5))
    check_ticks(next(stream), 0, 5)         # it wrote and left: drained, then the end
    with pytest.raises(StopIteration):
        next(stream)
    assert stream.ended


def test_follow_does_not_end_when_the_producer_leaves(ring):
    with ring.producer() as out:
        out.write_batch(make_ticks(0, 5))
    stream = shmpipe.batches(ring, timeout=0.05, stop_when_producer_gone=False)
    check_ticks(next(stream), 0, 5)
    assert len(next(stream)) == 0 and not stream.ended
    with ring.producer() as out:            # a producer comes back
        out.write_batch(make_ticks(5, 5))
    check_ticks(next(stream), 5, 5)
    stream.close()


def test_lossy_ring_counts_what_was_overwritten(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 1 << 10, broadcast=True, policy="lossy") as ring:
        try:
            with ring.producer() as out:
                stream = shmpipe.batches(ring, max_n=256)
                out.write_batch(make_ticks(0, 1000))
                out.write_batch(make_ticks(1000, 3000))   # laps the reader
            got = np.concatenate(list(stream))
            assert stream.lost > 0
            assert stream.consumed + stream.lost == 4000
            assert np.array_equal(got["sequence"], np.arange(4000 - len(got), 4000))  # the newest, in order
        finally:
            ring.unlink()


def test_bad_arguments(ring, ring_name):
    with pytest.raises(shmpipe.RingNotFoundError):
        shmpipe.batches(ring_name + "-missing")
    with pytest.raises(shmpipe.DtypeMismatchError):
        shmpipe.batches(ring.name, dtype=shmpipe.records.ORDERBOOK_ENTRY)
    with pytest.raises(shmpipe.DtypeMismatchError, match="holds records of dtype"):
        shmpipe.batches(ring, dtype=shmpipe.records.ORDERBOOK_ENTRY)
    shmpipe.batches(ring, dtype=TICK).close()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(shmpipe.InvalidArgumentError, match="max_n"):
            shmpipe.batches(ring, max_n=bad)
    with pytest.raises(shmpipe.InvalidArgumentError, match="timeout"):
        shmpipe.batches(ring, timeout=-1)
    with pytest.raises(shmpipe.InvalidArgumentError, match="wait must be"):
        shmpipe.batches(ring, wait="nap")
    with pytest.raises(TypeError):
        shmpipe.batches(42)
    with ring.consumer():                   # SPSC: the role is taken
        with pytest.raises(shmpipe.RoleTakenError):
            shmpipe.batches(ring.name)


def test_block_is_refused_on_a_ring_whose_producer_rings_no_doorbell(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64, wait="spin") as ring:
        try:
            with pytest.raises(shmpipe.InvalidArgumentError, match="rings no doorbell"):
                shmpipe.batches(ring, wait="block")
            with ring.producer() as out:
                out.write_batch(make_ticks(0, 10))
            with shmpipe.batches(ring, wait="yield") as stream:
                check_ticks(next(stream), 0, 10)
        finally:
            ring.unlink()


def test_abatches_every_record_once_from_another_process(ring):
    proc = _run_producer(ring.name, seed=2)

    async def consume():
        got = []
        stream = shmpipe.abatches(ring.name, max_n=1000)
        async for batch in stream:
            got.append(batch)
        return stream, np.concatenate(got)

    try:
        stream, all_ticks = asyncio.run(consume())
        check_ticks(all_ticks, 0, TOTAL)
        assert stream.consumed == TOTAL and stream.ended and stream.closed
    finally:
        _reap(proc)


def test_abatches_timeout_and_early_exit(ring):
    async def consume():
        with ring.producer() as out:
            async with shmpipe.abatches(ring, timeout=0.05) as stream:
                assert len(await stream.__anext__()) == 0
                out.write_batch(make_ticks(0, 7))
                async for batch in stream:
                    check_ticks(batch, 0, 7)
                    break
            return stream

    stream = asyncio.run(consume())
    assert stream.closed
    with ring.consumer():
        pass


class CountingRegistry:
    def __init__(self, names):
        self.names, self.calls = names, 0

    def lookup(self, sid):
        self.calls += 1
        if sid not in self.names:
            raise shmpipe.UnknownSymbolError(f"symbol id {sid} is not registered")
        return self.names[sid]


def test_symbol_names_looks_each_id_up_once():
    registry = CountingRegistry({1: ("kraken", "BTC/USD"), 2: ("alpaca", "AAPL")})
    ids = np.array([2, 1, 2, 2, 1], np.uint32)
    names = shmpipe.symbol_names(ids, registry)
    assert names.tolist() == ["alpaca:AAPL", "kraken:BTC/USD", "alpaca:AAPL", "alpaca:AAPL", "kraken:BTC/USD"]
    assert registry.calls == 2
    assert shmpipe.symbol_names(ids[:2], registry, sep=None).tolist() == ["AAPL", "BTC/USD"]
    assert shmpipe.symbol_table(ids, registry) == {1: ("kraken", "BTC/USD"), 2: ("alpaca", "AAPL")}
    assert shmpipe.symbol_names(np.array([], np.uint32), registry).shape == (0,)
    with pytest.raises(shmpipe.UnknownSymbolError, match="7"):
        shmpipe.symbol_names([1, 7], registry)
    assert shmpipe.symbol_names([1, 7], registry, unknown="?").tolist() == ["kraken:BTC/USD", "?"]


def test_symbol_names_and_ids_through_the_host_registry():
    sid = shmpipe.symbols.id_of("test-consume", "XYZ")
    other = shmpipe.symbols.id_of("test-consume", "A:B")
    assert shmpipe.symbol_names(np.array([sid, sid])).tolist() == ["test-consume:XYZ"] * 2
    ids = shmpipe.symbol_ids(["test-consume:XYZ", ("test-consume", "XYZ"), "test-consume:A:B"])
    assert ids.dtype == np.uint32 and ids.tolist() == [sid, sid, other]
    with pytest.raises(shmpipe.UnknownSymbolError, match="'NOPE' of exchange 'test-consume'"):
        shmpipe.symbol_ids(["test-consume:NOPE"])           # looked up, never registered
    assert shmpipe.symbols.find("test-consume", "NOPE") is None
    with pytest.raises(shmpipe.InvalidArgumentError, match="exchange:symbol"):
        shmpipe.symbol_ids(["XYZ"])


def test_a_producer_killed_by_sigkill_ends_the_stream_after_what_it_wrote(ring):
    proc = SPAWN.Process(target=__import__("consumer_workers").produce_forever, args=(ring.name,))
    proc.start()
    try:
        got = []
        stream = shmpipe.batches(ring.name, max_n=700)
        for batch in stream:
            got.append(batch)
            if stream.consumed >= 50_000 and proc.is_alive():
                proc.kill()                  # mid-stream, without a chance to close anything
        all_ticks = np.concatenate(got)
        check_ticks(all_ticks, 0, len(all_ticks))    # every record it published, once, in order
        assert stream.ended and len(all_ticks) >= 50_000
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
