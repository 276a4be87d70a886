"""The bridges on the control plane (status, stats, pause, resume, stop) and in `shmpipe metrics`."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import redis
from bridge_helpers import RUNTIME_DIR, assert_alive, delete_keys, start_receiver, start_sender, stop, ticks

import shmpipe
from shmpipe import control  # first party: an import that breaks must fail, not skip
from shmpipe.records import TICK

pytestmark = pytest.mark.services


@pytest.fixture
def bridge_env(ring_name, redis_url, monkeypatch):
    monkeypatch.setenv("SHMPIPE_RUNTIME_DIR", RUNTIME_DIR)      # where the bridges' endpoints are
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 12)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 12)
    stream = f"shmpipe-test:{ring_name}"
    try:
        yield src, dst, stream
    finally:
        for ring in (src, dst):
            ring.close()
            ring.unlink()
        delete_keys(redis_url, f"{stream}*")


def until(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert_alive(*procs)
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def answering(service: str):
    try:
        return control.request(service, "status", timeout=1.0)
    except control.ControlError:
        return None


def test_status_pause_resume_and_stop_over_the_control_plane(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    out_name, in_name = f"{src.name}.to-redis", f"{dst.name}.from-redis"
    sender = receiver = None
    client = redis.Redis.from_url(redis_url)
    try:
        with src.producer() as producer, dst.consumer() as consumer:
            sender = start_sender(src.name, redis_url, stream, "--batch", "50")
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            status = until(lambda: answering(out_name), 30, "the sender's endpoint", [sender])
            assert status["mode"] == "ring-to-redis" and status["streams"] == [stream] and not status["paused"]
            status = until(lambda: answering(in_name), 30, "the receiver's endpoint", [receiver])
            assert status["mode"] == "redis-to-ring" and status["group"] == "g"

            assert control.request(out_name, "pause") == {"paused": True, "idle": True}
            producer.write_batch(ticks(0, 500))
            # paused: the records wait in the ring, Redis gets none
            until(lambda: control.request(out_name, "stats")["lag_records"] == 500, 30, "lag 500", [sender])
            assert client.xlen(stream) == 0 and control.request(out_name, "status")["paused"]
            control.request(out_name, "resume")
            got = []
            until(lambda: (got.append(consumer.read(500, timeout=0.05)), sum(map(len, got)) >= 500)[1], 30,
                  "500 records after resume", [sender, receiver])
            assert np.array_equal(np.concatenate(got), ticks(0, 500))

            assert control.request(in_name, "pause") == {"paused": True, "idle": True}
            producer.write_batch(ticks(500, 100))
            until(lambda: control.request(out_name, "stats")["records"] == 600, 30, "600 sent", [sender])
            assert len(consumer.read(10, timeout=0.3)) == 0            # the receiver holds them back
            control.request(in_name, "resume")
            (more,) = until(lambda: len(x := consumer.read(100, timeout=0.05)) and [x], 30, "100 more", [receiver])
            assert more["sequence"][0] == 500

            assert control.request(out_name, "stop") == {"stopping": True}
            assert sender.wait(30) == 0
            control.request(in_name, "stop")
            assert receiver.wait(30) == 0
            assert not os.path.exists(os.path.join(RUNTIME_DIR, f"shmpipe-ctl.{out_name}"))
    finally:
        client.close()
        stop(sender)
        stop(receiver)


def test_counters_reach_shmpipe_metrics(bridge_env, redis_url, tmp_path):
    from shmpipe import metrics
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    src, dst, stream = bridge_env
    sender = receiver = None
    try:
        with src.producer() as producer, dst.consumer() as consumer:
            sender = start_sender(src.name, redis_url, stream)
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            producer.write_batch(ticks(0, 300))
            got = []
            until(lambda: (got.append(consumer.read(300, timeout=0.05)), sum(map(len, got)) >= 300)[1], 30,
                  "300 records", [sender, receiver])
            registry = CollectorRegistry()
            registry.register(metrics.ShmpipeCollector())

            def scraped():
                text = generate_latest(registry).decode()
                return text if f'shmpipe_service_records{{pid="{sender.pid}",service="{src.name}.to-redis"}} 300.0' \
                    in text else None
            text = until(scraped, 30, "the sender's records in a scrape", [sender])
            assert f'service="{dst.name}.from-redis"' in text
            assert "shmpipe_service_duplicates_dropped" in text and "shmpipe_service_retries" in text
    finally:
        stop(sender)
        stop(receiver)
