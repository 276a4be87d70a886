"""kill -9 of either bridge, at the two exact windows that matter and at random points, several
times in one run: nothing lost, nothing duplicated, in Redis or in the destination ring."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest
import redis
from bridge_helpers import (
    Pump,
    assert_alive,
    delete_keys,
    start_receiver,
    start_sender,
    stop,
    wait_started,
)

import shmpipe
from shmpipe import stats
from shmpipe.records import TICK

pytestmark = pytest.mark.services


@pytest.fixture
def bridge_env(ring_name, redis_url):
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 14)
    stream = f"shmpipe-test:{ring_name}"
    try:
        yield src, dst, stream
    finally:
        for ring in (src, dst):
            ring.close()
            ring.unlink()
        delete_keys(redis_url, f"{stream}*")


def assert_stream_exactly(url: str, stream: str, total: int) -> None:
    """Redis holds every record once: entries' seqs are contiguous from 0 and sum to total."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(stream)
    finally:
        client.close()
    seqs = [int(f[b"seq"]) for _, f in entries]
    counts = [int(f[b"n"]) for _, f in entries]
    assert seqs[0] == 0
    assert all(seqs[i] + counts[i] == seqs[i + 1] for i in range(len(seqs) - 1)), "duplicate or gap in Redis"
    assert sum(counts) == total
    data = np.frombuffer(b"".join(f[b"data"] for _, f in entries), TICK)
    assert np.array_equal(data["sequence"], np.arange(total))


def test_kill_between_xadd_and_ring_commit_sends_nothing_twice(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    total = 20_000
    sender = receiver = None
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            pump = Pump(producer, consumer, total, chunk=1000)
            sender = start_sender(src.name, redis_url, stream, "--batch", "100", "--pipeline", "2",
                                  env={"SHMPIPE_BRIDGE_CRASH": "after_xadd:5"})
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            pump.run_until(lambda: sender.poll() is not None, 60, "the sender's planned crash")
            assert sender.returncode == -9
            stop(sender)
            before = src.stats()["consumers"][0]["position"]
            sender = start_sender(src.name, redis_url, stream, "--batch", "100", "--pipeline", "2")
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 60, "all records")
            # what the crashed sender had XADDed but not committed was shown again and skipped
            pump.run_until(lambda: stats.read(f"{src.name}.to-redis")["counters"]["duplicates_dropped"] > 0,
                           10, f"re-shown records counted (cursor was at {before})")
            assert stop(sender) == 0 and stop(receiver) == 0
            assert_stream_exactly(redis_url, stream, total)
            assert len(consumer.read(10, timeout=0.2)) == 0
        finally:
            stop(sender)
            stop(receiver)


def test_kill_between_ring_write_and_xack_writes_nothing_twice(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    total = 20_000
    sender = receiver = None
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            pump = Pump(producer, consumer, total, chunk=1000)
            sender = start_sender(src.name, redis_url, stream, "--batch", "100")
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path, "--count", "4",
                                      env={"SHMPIPE_BRIDGE_CRASH": "after_ring_write:5"})
            pump.run_until(lambda: receiver.poll() is not None, 60, "the receiver's planned crash")
            assert receiver.returncode == -9
            stop(receiver)
            client = redis.Redis.from_url(redis_url)
            try:
                pending = client.xpending(stream, "g")["pending"]
            finally:
                client.close()
            assert pending > 0, "the crash left written, unacknowledged entries"
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path, "--count", "4")
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 60, "all records")
            pump.run_until(lambda: stats.read(f"{dst.name}.from-redis")["counters"]["duplicates_dropped"] > 0,
                           10, "replayed records counted")
            assert stop(sender) == 0 and stop(receiver) == 0
            assert len(consumer.read(10, timeout=0.2)) == 0
        finally:
            stop(sender)
            stop(receiver)


def _random_kills(src, dst, stream, redis_url, tmp_path, total: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    sender = receiver = None
    batch = "1024"
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            pump = Pump(producer, consumer, total, chunk=16384)
            sender = start_sender(src.name, redis_url, stream, "--batch", batch)
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            kill_points = sorted(rng.sample(range(total // 20, total - total // 20), kills))
            killed = {"sender": 0, "receiver": 0}
            for i, point in enumerate(kill_points):
                pump.run_until(lambda s=sender, r=receiver, p=point: (assert_alive(s, r), pump.received >= p)[1],
                               300, f"kill point {point}")
                # also in the middle of a batch: a short random delay past the point
                deadline = time.monotonic() + rng.uniform(0, 0.05)
                while time.monotonic() < deadline:
                    pump.step(read_timeout=0)
                victim = ("sender", "receiver")[i % 2] if i < 2 else rng.choice(("sender", "receiver"))
                if victim == "sender":
                    sender.kill()
                    stop(sender)
                    sender = start_sender(src.name, redis_url, stream, "--batch", batch)
                else:
                    receiver.kill()
                    stop(receiver)
                    receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
                killed[victim] += 1
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 600, "all records")
            wait_started([sender, receiver], f"{src.name}.to-redis", f"{dst.name}.from-redis")
            assert stop(sender) == 0 and stop(receiver) == 0
            assert len(consumer.read(10, timeout=0.2)) == 0
            assert killed["sender"] >= 1 and killed["receiver"] >= 1
            assert_stream_exactly(redis_url, stream, total)
        finally:
            stop(sender)
            stop(receiver)


def test_random_kill9_of_either_bridge_several_times(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    _random_kills(src, dst, stream, redis_url, tmp_path, total=300_000, kills=6, seed=14)


def test_five_million_ticks_with_random_kill9s(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    _random_kills(src, dst, stream, redis_url, tmp_path, total=5_000_000, kills=12, seed=5)
