"""Two real processes over one ring: volume, crashes (kill -9), sleeping waits, Ctrl-C."""
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

import shmpipe
from shmpipe.records import TICK
from ring_workers import check_ticks, consume, hold_role, produce, produce_forever, wait_blocked

SPAWN = mp.get_context("spawn")
TEN_MILLION = 10_000_000


def _finish(procs, result, timeout=240):
    try:
        status, detail = result.get(timeout=timeout)
        assert status == "ok", detail
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
        return detail
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


@pytest.mark.slow
@pytest.mark.parametrize(
    "producer_batch, consumer_max_n, wait",
    [(1, 1024, "block"), (4096, 1000, "block"), (1000, 4096, "spin"), (777, 333, "yield")],
    ids=["single-writes", "batched-block", "batched-spin", "batched-yield"],
)
def test_ten_million_ticks_in_order_no_loss(ring_name, producer_batch, consumer_max_n, wait):
    """Every record checked field by field; a 4096-slot ring wraps ~2,400 times."""
    with shmpipe.Ring.create(ring_name, TICK, 4096, wait=wait) as ring:
        result = SPAWN.Queue()
        consumer = SPAWN.Process(target=consume, args=(ring_name, TEN_MILLION, consumer_max_n, result),
                                 name="consumer")
        producer = SPAWN.Process(target=produce, args=(ring_name, TEN_MILLION, producer_batch), name="producer")
        consumer.start()
        producer.start()
        assert _finish([producer, consumer], result) == TEN_MILLION
        assert ring.stats()["written"] == TEN_MILLION
    ring.unlink()


def test_single_record_reads(ring_name):
    total = 200_000
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        result = SPAWN.Queue()
        consumer = SPAWN.Process(target=consume, args=(ring_name, total, 1, result))
        producer = SPAWN.Process(target=produce, args=(ring_name, total, 1))
        consumer.start()
        producer.start()
        assert _finish([producer, consumer], result) == total
    ring.unlink()


def test_producer_killed_mid_stream_then_replaced(ring_name):
    """SIGKILL during a long batched stream: only whole records are visible, the consumer sees
    the producer gone, and a new producer carries on the exact sequence."""
    with shmpipe.Ring.create(ring_name, TICK, 1 << 14) as ring, ring.consumer() as consumer:
        ready = SPAWN.Event()
        victim = SPAWN.Process(target=produce_forever, args=(ring_name, 3001, ready))
        victim.start()
        assert ready.wait(30)
        pos = 0
        while pos < 300_000:                      # well into the stream, many wraps
            got = consumer.read(5000, timeout=10)
            assert len(got), "producer stalled"
            check_ticks(got, pos)
            pos += len(got)
        assert consumer.producer_alive
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        # Drain: everything published before the kill is whole and in order.
        while True:
            got = consumer.read(5000, timeout=0.2)
            if len(got) == 0:
                break
            check_ticks(got, pos)
            pos += len(got)
        assert not consumer.producer_alive, "a dead producer must not look alive"
        assert ring.stats()["written"] == pos
        # A new producer reattaches and carries on from where the dead one stopped.
        result_total = pos + 50_000
        successor = SPAWN.Process(target=produce, args=(ring_name, result_total, 4096))
        successor.start()
        while pos < result_total:
            got = consumer.read(5000, timeout=30)
            assert len(got), "successor stalled"
            check_ticks(got, pos)
            pos += len(got)
        assert pos == result_total
        successor.join(30)
        assert successor.exitcode == 0
        assert ring.stats()["producer"]["attach_count"] == 2
    ring.unlink()


def test_role_of_a_killed_process_is_free_again(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring:
        for role in ("producer", "consumer"):
            ready, release = SPAWN.Event(), SPAWN.Event()
            holder = SPAWN.Process(target=hold_role, args=(ring_name, role, ready, release))
            holder.start()
            assert ready.wait(30)
            with pytest.raises(shmpipe.RoleTakenError, match=str(holder.pid)):
                getattr(ring, role)()
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)
            getattr(ring, role)().close()         # no stale owner blocks the role
    ring.unlink()


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_blocking_consumer_sleeps_and_wakes(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64, wait="block") as ring, ring.producer() as producer:
        parent_end, child_end = SPAWN.Pipe()
        child = SPAWN.Process(target=wait_blocked, args=(ring_name, child_end))
        child.start()
        try:
            assert parent_end.poll(30)
            kind, _ = parent_end.recv()
            assert kind == "waiting"
            # Measure the waiter over a full second: a spinning one would burn ~1 s of CPU.
            cpu_before = _cpu_seconds(child.pid)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert not parent_end.poll(deadline - time.monotonic()), "consumer returned with no data"
            cpu_spent = _cpu_seconds(child.pid) - cpu_before
            assert ring.stats()["consumers"][0]["alive"]
            assert cpu_spent < 0.15, f"blocked consumer used {cpu_spent:.2f} s CPU in 1 s"
            sent_at = time.monotonic()
            record = np.zeros(1, TICK)
            record["sequence"] = 4242
            assert producer.write(record[0], timeout=5)
            assert parent_end.poll(10), "sleeping consumer was not woken"
            kind, (count, seq, _cpu, woke_at, sleeps) = parent_end.recv()
            assert (kind, count, seq) == ("got", 1, 4242)
            # A sleeper naps at most 10 ms before it re-checks, so "it returned soon" proves no
            # wake: its sleep must have ended by the producer's FUTEX_WAKE (nothing else bumps
            # the data doorbell of this ring), which sleep_stats counts apart from timeouts.
            assert sleeps["sleeps"] >= 1, sleeps
            assert sleeps["woken"] >= 1, f"the producer's write never woke the sleeper: {sleeps}"
            assert woke_at - sent_at < 10, "the consumer took seconds to return after the write"
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
    ring.unlink()


def _consumer_heartbeat(ring_name):
    with shmpipe.Ring.open(ring_name) as ring:
        return ring._mapped.positions()["consumers"][0]["heartbeat_ns"]


@pytest.mark.parametrize("wait", ["spin", "block"])
def test_ctrl_c_interrupts_a_wait(ring_name, wait):
    with shmpipe.Ring.create(ring_name, TICK, 8, wait=wait):
        parent_end, child_end = SPAWN.Pipe()
        child = SPAWN.Process(target=wait_blocked, args=(ring_name, child_end))
        child.start()
        try:
            assert parent_end.poll(30) and parent_end.recv()[0] == "waiting"
            # The child is inside read() once its wait loop has stamped a heartbeat (per slice).
            first_beat = _consumer_heartbeat(ring_name)
            deadline = time.monotonic() + 10
            while _consumer_heartbeat(ring_name) == first_beat:
                assert time.monotonic() < deadline, "consumer never entered its wait"
                time.sleep(0.005)
            os.kill(child.pid, signal.SIGINT)
            assert parent_end.poll(5), "SIGINT did not interrupt the wait"
            assert parent_end.recv()[0] == "interrupted"
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
    shmpipe.segments.unlink(ring_name)
