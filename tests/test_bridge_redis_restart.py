"""Redis itself killed (kill -9) and restarted mid-run, with AOF fsync on every write: the bridges
reconnect and resume, and nothing Redis acknowledged is lost or delivered twice."""
from __future__ import annotations

import time

import pytest
from bridge_helpers import (
    Pump,
    assert_alive,
    private_redis,
    start_receiver,
    start_sender,
    stderr_of,
    stop,
    wait_started,
)

import shmpipe
from shmpipe import stats
from shmpipe.records import TICK

pytestmark = pytest.mark.services


def test_redis_killed_and_restarted_twice_loses_nothing(ring_name, tmp_path):
    total = 200_000
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 14)
    stream = "restart-test"
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    try:
        with private_redis(tmp_path / "redis") as server, src.producer() as producer, \
                dst.consumer() as consumer:
            sender = start_sender(src.name, server.url, stream, "--batch", "256")
            receiver = start_receiver(dst.name, server.url, stream, "g", tmp_path / "state")
            pump = Pump(producer, consumer, total, chunk=4096)
            for restart_at in (50_000, 120_000):
                pump.run_until(lambda at=restart_at: (assert_alive(sender, receiver), pump.received >= at)[1], 120,
                               f"{restart_at} records")
                server.kill()
                # while Redis is down the bridges retry; the pipeline keeps flowing into the source
                pump.run_until(lambda: stats.read(f"{src.name}.to-redis")["counters"]["retries"] > 0, 30,
                               "the sender noticing")
                server.start()
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 120, "all records")
            wait_started([sender, receiver], f"{src.name}.to-redis", f"{dst.name}.from-redis")
            assert stats.read(f"{dst.name}.from-redis")["counters"]["retries"] > 0
            assert stop(sender) == 0 and stop(receiver) == 0
            assert len(consumer.read(10, timeout=0.2)) == 0
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def test_sigterm_while_redis_is_down_exits_0_and_loses_nothing(ring_name, tmp_path):
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 12)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 12)
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    try:
        with private_redis(tmp_path / "redis") as server, src.producer() as producer, \
                dst.consumer() as consumer:
            sender = start_sender(src.name, server.url, "s", "--batch", "100")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            # more than the rings hold: records are waiting for the sender whenever Redis goes away
            pump = Pump(producer, consumer, 30_000, chunk=1000)
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.received >= 1000)[1], 60, "1000 records")
            server.kill()
            pump.run_until(lambda: stats.read(f"{src.name}.to-redis")["counters"]["retries"] > 0
                           and stats.read(f"{dst.name}.from-redis")["counters"]["retries"] > 0, 30,
                           "both bridges retrying")
            assert stats.read(f"{src.name}.to-redis")["counters"]["redis_up"] == 0
            assert stop(sender, timeout=10) == 0 and stop(receiver, timeout=10) == 0
            assert "reconnecting" in stderr_of(sender)
            server.start()
            sender = start_sender(src.name, server.url, "s", "--batch", "100")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 60, "all records")
            assert stop(sender) == 0 and stop(receiver) == 0
            assert len(consumer.read(10, timeout=0.2)) == 0
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def test_an_idle_sender_notices_redis_going_away_and_coming_back(ring_name, tmp_path):
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring, private_redis(tmp_path) as server:
        sender = None
        try:
            sender = start_sender(ring_name, server.url, "idle")
            name = f"{ring_name}.to-redis"

            def counters():
                assert_alive(sender)
                return stats.read(name)["counters"]
            wait_started([sender], name)
            until(lambda: counters()["redis_up"] == 1, 30, "up")
            server.kill()
            until(lambda: counters()["redis_up"] == 0 and counters()["retries"] > 0, 30, "down noticed")
            server.start()
            until(lambda: counters()["redis_up"] == 1, 30, "up again")
            assert stop(sender) == 0
        finally:
            stop(sender)
            ring.unlink()


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)
