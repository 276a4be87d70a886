"""Child-process bodies for the hardening tests (importable by multiprocessing 'spawn'):
anything that could crash the interpreter on a broken ring runs here, not in pytest."""
from __future__ import annotations

import os
import time

import numpy as np

import shmpipe
from shmpipe import _ring, segments
from shmpipe.records import TICK
import broadcast_workers
from ring_workers import make_ticks

# 64-byte record whose every word repeats its sequence number: a torn or misplaced copy cannot pass.
STAMP64 = np.dtype([("seq", "<u8"), ("payload", "<u8", (7,))])


def stamped(start: int, n: int) -> np.ndarray:
    return broadcast_workers.stamped(start, n, STAMP64)


def poke(name: str, offset: int, raw: bytes) -> None:
    """Overwrite bytes of a segment as a hostile or broken peer would."""
    fd = os.open(f"/dev/shm/shmpipe.{name}", os.O_RDWR)
    try:
        os.pwrite(fd, raw, offset)
    finally:
        os.close(fd)


def produce_stamped_until(name: str, max_batch: int, seed: int, stop, ready) -> None:
    """Write stamped batches of random sizes 1..max_batch until told to stop."""
    rng = np.random.default_rng(seed)
    with shmpipe.Ring.open(name, STAMP64) as ring, ring.producer() as producer:
        ready.set()
        pos = producer.position
        while not stop.is_set():
            n = int(rng.integers(1, max_batch + 1))
            producer.write_batch(stamped(pos, n))
            pos += n


def verify_lossy_reads(name: str, max_ns: tuple, seconds: float, seed: int) -> dict:
    """Read a running lossy stream with varied max_n and check every promise of read():
    no record that was not written, none torn, in order, and `lost` exact."""
    rng = np.random.default_rng(seed)
    received = 0
    into = np.empty(4096, STAMP64)
    with shmpipe.Ring.open(name, STAMP64) as ring, ring.consumer(start="oldest") as c:
        start = c.position
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            max_n = int(max_ns[int(rng.integers(len(max_ns)))])
            pos_before, lost_before = c.position, c.lost
            if rng.integers(2):
                got = c.read(max_n, timeout=0.05)
            else:                      # the allocation-free path must keep every promise too
                max_n = min(max_n, len(into))
                got = into[:c.read_into(into[:max_n], timeout=0.05)]
            written = ring._mapped.positions()["write_pos"]
            skipped = c.lost - lost_before
            assert len(got) <= max_n, f"read({max_n}) returned {len(got)}"
            assert c.position <= written, f"reader at {c.position} is past the producer's {written}"
            if len(got) == 0:
                # A lapped reader may skip (and count) records, then find nothing published yet.
                assert c.position == pos_before + skipped
                continue
            seq = got["seq"]
            assert (got["payload"] == seq[:, None]).all(), "a torn record was returned"
            assert np.array_equal(seq, np.arange(seq[0], seq[0] + len(got), dtype=np.uint64)), \
                "records out of order"
            assert int(seq[0]) == pos_before + skipped, \
                f"first record {seq[0]}, but position {pos_before} + lost {skipped}"
            assert c.position == int(seq[-1]) + 1
            received += len(got)
        assert received + c.lost == c.position - start, "lost is not exact"
        return {"received": received, "lost": c.lost}


def overfill_lossless_joiner(name: str) -> dict:
    """Issue 9, 2b: a joiner behind the producer's cached limit must hold the producer back."""
    with shmpipe.Ring.create(name, TICK, 1024, broadcast=True) as ring, ring.producer() as p:
        try:
            p.write_batch(make_ticks(0, 5000))
            c = ring.consumer(start="oldest")
            went_in = {}
            for n in (1000, 2000, 3000):
                went_in[n] = p.write_batch(make_ticks(5000, n), timeout=0.3)
            got = c.read(4096)
            return {"went_in": went_in, "read": len(got), "lost": c.lost,
                    "first": int(got["sequence"][0]) if len(got) else -1}
        finally:
            ring.unlink()


def rewrite_header_after_open(name: str) -> str:
    """A peer rewrites capacity, itemsize and max_consumers after we validated the header."""
    offsets = _ring.layout_offsets()
    with shmpipe.Ring.create(name, STAMP64, 8, broadcast=True) as ring:
        try:
            with shmpipe.Ring.open(name) as other, other.producer() as p, other.consumer() as c:
                config = offsets["config"]
                poke(name, config + 16, (1 << 40).to_bytes(8, "little"))        # capacity
                poke(name, config + 24, (1 << 20).to_bytes(4, "little"))        # itemsize
                poke(name, config + 68, (100000).to_bytes(4, "little"))         # max_consumers
                for round_ in range(4):
                    assert p.write_batch(stamped(round_ * 8, 8), timeout=1) == 8
                    got = c.read(10**6, timeout=1)
                    assert len(got) == 8 and int(got["seq"][0]) == round_ * 8
                stats = other.stats()
                assert stats["capacity"] == 8 and len(stats["consumers"]) == 1
                assert len(other) == 0
            return "ok"
        finally:
            ring.unlink()


def fork_with_producer(name: str, report) -> int:
    """Take the producer role, fork a child that lingers, then die: return the child's pid.
    The child reports what a write through the inherited producer does."""
    ring = shmpipe.Ring.open(name)
    producer = ring.producer()
    pid = os.fork()
    if pid == 0:   # the child: the inherited handle must be unusable
        try:
            producer.write(make_ticks(0, 1)[0], timeout=0)
            report.put("write went through")
        except shmpipe.RingClosedError as exc:
            report.put(f"closed: {exc}")
        except BaseException as exc:
            report.put(f"{type(exc).__name__}: {exc}")
        time.sleep(30)
        os._exit(0)
    return pid


def bad_timeouts(name: str) -> list:
    out = []
    with shmpipe.Ring.create(name, STAMP64, 8) as ring, ring.producer() as p, ring.consumer() as c:
        try:
            for bad in (float("nan"), -1.0, "soon"):
                for call in (lambda: c.read(1, timeout=bad), lambda: p.write(stamped(0, 1)[0], timeout=bad)):
                    try:
                        call()
                        out.append(f"{bad!r}: accepted")
                    except shmpipe.ShmpipeError as exc:
                        out.append(f"{bad!r}: {type(exc).__name__}")
            # Infinite and huge timeouts mean "as long as it takes": with data there, at once.
            for forever in (float("inf"), 1e300, 2**70):
                assert p.write(stamped(0, 1)[0], timeout=forever)
                assert len(c.read(1, timeout=forever)) == 1
        finally:
            ring.unlink()
    return out


def lossy_run(name, capacity, max_batch, max_ns, seconds, seed=1):
    """A lossy broadcast ring fed by a child writing random batches up to max_batch, read and
    checked by verify_lossy_reads in another child for `seconds`; returns its counts."""
    from isolation import SPAWN, run_isolated

    with shmpipe.Ring.create(name, STAMP64, capacity, broadcast=True, policy="lossy", wait="yield"):
        stop, ready = SPAWN.Event(), SPAWN.Event()
        writer = SPAWN.Process(target=produce_stamped_until, args=(name, max_batch, seed, stop, ready),
                               daemon=True)
        writer.start()
        try:
            assert ready.wait(30), "producer did not start"
            return run_isolated(verify_lossy_reads, name, max_ns, seconds, seed, timeout=seconds + 60)
        finally:
            stop.set()
            writer.join(10)
            if writer.is_alive():
                writer.kill()
            segments.unlink(name)
