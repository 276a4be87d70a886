"""Every mistake a user can make with the bridges gets one line naming the thing, the right exit
status, and never the password."""
from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from bridge_helpers import (
    assert_alive,
    delete_keys,
    free_port,
    private_redis,
    run_bridge,
    start_receiver,
    start_sender,
    stderr_of,
    stop,
    ticks,
    wait_started,
)
from shmpipe_services.bridge.wire import encode_entry

import shmpipe
from shmpipe import stats
from shmpipe.dtypes import describe, fingerprint
from shmpipe.records import LEVEL_UPDATE, TICK

pytestmark = pytest.mark.services


def one_line(result, status: int, *must_contain: str, must_not: str = "hunter2") -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shmpipe bridge "), lines[0]
    for text in must_contain:
        assert text in lines[0], lines[0]
    assert must_not not in result.stderr
    return lines[0]


def test_bad_url_scheme_is_a_usage_error_without_the_password(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        try:
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", "http://:hunter2@host:1/0",
                                "--stream", "s")
            one_line(result, 2, "bad Redis URL", "http://:***@host:1/0")
        finally:
            ring.unlink()


def test_unreachable_server_names_the_url_not_the_password(tmp_path):
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    result = run_bridge("redis-to-ring", "--redis", url, "--stream", "s", "--group", "g", "--ring", "x",
                        "--state-dir", str(tmp_path))
    one_line(result, 2, "cannot reach Redis", f"redis://:***@127.0.0.1:{port}/0")


def test_wrong_or_missing_password_is_refused_in_one_line(tmp_path, ring_name):
    with private_redis(tmp_path, password="right-one") as server, shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        try:
            url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", url, "--stream", "s")
            one_line(result, 2, "refused the credentials", f"redis://:***@127.0.0.1:{server.port}/0")
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis",
                                f"redis://127.0.0.1:{server.port}/0", "--stream", "s")
            one_line(result, 2, "refused the credentials")
        finally:
            ring.unlink()


def test_missing_ring_lossy_ring_and_shards_without_placeholder(ring_name, redis_url):
    result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", "s")
    one_line(result, 2, ring_name, "does not exist")
    with shmpipe.Ring.create(ring_name, TICK, 64, broadcast=True, policy="lossy") as ring:
        try:
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", "s")
            one_line(result, 2, ring_name, "lossy")
        finally:
            ring.unlink()
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        try:
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", "s",
                                "--shards", "4")
            one_line(result, 2, "{shard}")
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", "s",
                                "--batch", "10000000")
            one_line(result, 2, "--batch 10000000", "at most")
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", "s",
                                "--shards", "2", "--stream", "s:{shard}", "--shard-field", "bid")
            one_line(result, 2, "no integer field 'bid'")
        finally:
            ring.unlink()


def test_receiver_without_a_ring_or_a_record_type_says_so(ring_name, redis_url, tmp_path):
    stream = f"shmpipe-test:{ring_name}"
    try:
        result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream, "--group", "g",
                            "--ring", ring_name, "--state-dir", str(tmp_path))
        one_line(result, 2, ring_name, "does not exist", stream)
    finally:
        delete_keys(redis_url, f"{stream}*")


@pytest.fixture
def stream_key(ring_name, redis_url):
    stream = f"shmpipe-test:{ring_name}"
    yield stream
    delete_keys(redis_url, f"{stream}*")


def test_record_type_mismatch_is_refused_at_start(ring_name, redis_url, tmp_path, stream_key):
    client = redis.Redis.from_url(redis_url)
    client.set(f"{stream_key}:dtype", describe(TICK))
    client.close()
    with shmpipe.Ring.create(ring_name, LEVEL_UPDATE, 64) as ring:      # 32 bytes too: same size, other type
        try:
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", ring_name, "--state-dir", str(tmp_path))
            one_line(result, 2, "tick", "level_update", ring_name, stream_key)
            assert ring.stats()["written"] == 0
        finally:
            ring.unlink()


def test_record_type_mismatch_in_an_entry_is_refused_not_reinterpreted(ring_name, redis_url, tmp_path, stream_key):
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream_key, encode_entry(ticks(0, 4).tobytes(), 4, 0, "tick", fingerprint(TICK), "x@1.1", 4, "e1"))
    client.close()
    with shmpipe.Ring.create(ring_name, LEVEL_UPDATE, 64) as ring:
        try:
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", ring_name, "--state-dir", str(tmp_path))
            one_line(result, 2, "tick", "level_update", "refusing", f"XACK {stream_key} g ")
            assert ring.stats()["written"] == 0
        finally:
            ring.unlink()


def test_foreign_entry_in_the_stream_is_named(ring_name, redis_url, tmp_path, stream_key):
    client = redis.Redis.from_url(redis_url)
    entry_id = client.xadd(stream_key, {"hello": "world"}).decode()
    client.close()
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        try:
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", ring_name, "--state-dir", str(tmp_path))
            one_line(result, 2, entry_id, "not a shmpipe bridge entry")
        finally:
            ring.unlink()


def test_second_receiver_on_one_ring_is_refused(ring_name, redis_url, tmp_path, stream_key):
    client = redis.Redis.from_url(redis_url)
    client.set(f"{stream_key}:dtype", describe(TICK))
    client.close()
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        first = None
        try:
            first = start_receiver(ring_name, redis_url, stream_key, "g", tmp_path)
            wait_started([first], f"{ring_name}.from-redis")
            deadline = time.monotonic() + 30
            while not ring.stats()["producer"]["alive"]:
                assert_alive(first)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", ring_name, "--state-dir", str(tmp_path), "--name", "second")
            one_line(result, 1, ring_name, "producer")
            assert stop(first) == 0
        finally:
            stop(first)
            ring.unlink()


def test_records_trimmed_before_the_group_read_them_are_a_named_gap(ring_name, redis_url, tmp_path, stream_key):
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 14)
    sender = receiver = None
    client = redis.Redis.from_url(redis_url)
    try:
        with src.producer() as producer, dst.consumer() as consumer:
            sender = start_sender(src.name, redis_url, stream_key, "--batch", "10", "--maxlen", "5")
            receiver = start_receiver(dst.name, redis_url, stream_key, "g", tmp_path)
            producer.write_batch(ticks(0, 100))
            got = []
            deadline = time.monotonic() + 30
            while sum(map(len, got)) < 100:
                got.append(consumer.read(100, timeout=0.05))
                assert_alive(sender, receiver)
                assert time.monotonic() < deadline
            assert stop(receiver) == 0
            producer.write_batch(ticks(100, 5000))

            def last_seq():
                last = client.xrevrange(stream_key, "+", "-", count=1)
                return int(last[0][1][b"seq"]) + int(last[0][1][b"n"]) if last else 0
            while last_seq() < 5100:
                assert_alive(sender)
                assert time.monotonic() < deadline + 30
                time.sleep(0.02)
            first_kept = int(client.xrange(stream_key, "-", "+", count=1)[0][1][b"seq"])
            assert first_kept > 100, "MAXLEN ~ trimmed the stream"
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", dst.name, "--state-dir", str(tmp_path))
            one_line(result, 1, "missing", stream_key, "--allow-gap")
            assert len(consumer.read(10, timeout=0.1)) == 0

            receiver = start_receiver(dst.name, redis_url, stream_key, "g", tmp_path, "--allow-gap")
            tail = []
            while sum(map(len, tail)) < 5100 - first_kept:
                tail.append(consumer.read(4096, timeout=0.05))
                assert_alive(receiver)
                assert time.monotonic() < deadline + 60
            tail = np.concatenate(tail)
            assert np.array_equal(tail["sequence"], np.arange(first_kept, 5100))
            while stats.read(f"{dst.name}.from-redis")["counters"]["gap_records"] != first_kept - 100:
                assert_alive(receiver)      # counters are published every 0.2 s
                assert time.monotonic() < deadline + 60, stats.read(f"{dst.name}.from-redis")
                time.sleep(0.02)
            assert "skipped (--allow-gap)" in stderr_of(receiver)
            assert stop(receiver) == 0 and stop(sender) == 0
    finally:
        client.close()
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def test_broadcast_source_overwritten_while_the_sender_was_down_is_a_named_gap(ring_name, redis_url, stream_key):
    ring = shmpipe.Ring.create(ring_name, TICK, 1024, broadcast=True)
    sender = None
    client = redis.Redis.from_url(redis_url)
    try:
        with ring.producer() as producer:
            sender = start_sender(ring_name, redis_url, stream_key, "--batch", "100")
            wait_started([sender], f"{ring_name}.to-redis")
            deadline = time.monotonic() + 30
            while not any(c["state"] == "active" for c in ring.stats()["consumers"]):
                assert_alive(sender)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            producer.write_batch(ticks(0, 500))
            while stats.read(f"{ring_name}.to-redis")["counters"]["last_seq"] < 500:
                assert_alive(sender)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            sender.kill()
            stop(sender)
            written = 0
            more = ticks(500, 5000)
            while written < len(more):          # the dead reader is evicted: the producer laps it
                written += producer.write_batch(more[written:], timeout=0.1)
                assert time.monotonic() < deadline
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", stream_key)
            one_line(result, 1, ring_name, "not in Redis", "--allow-gap")
            sender = start_sender(ring_name, redis_url, stream_key, "--batch", "100", "--allow-gap")
            wait_started([sender], f"{ring_name}.to-redis")
            while stats.read(f"{ring_name}.to-redis")["counters"]["last_seq"] < 500 + 1024:
                assert_alive(sender)
                assert time.monotonic() < deadline + 30
                time.sleep(0.02)
            counters = stats.read(f"{ring_name}.to-redis")["counters"]
            assert counters["gap_records"] == 5500 - 1024 - 500
            data = np.frombuffer(b"".join(f[b"data"] for _, f in client.xrange(stream_key)), TICK)
            assert np.array_equal(data["sequence"], np.r_[np.arange(500), np.arange(5500 - 1024, 5500)])
            assert stop(sender) == 0
    finally:
        client.close()
        stop(sender)
        ring.close()
        ring.unlink()


def test_tls_with_password_round_trip_and_an_untrusted_certificate_in_one_line(ring_name, tmp_path):
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 12)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 12)
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    try:
        with private_redis(tmp_path / "redis", password="hunter2", tls=True) as server, \
                src.producer() as producer, dst.consumer() as consumer:
            assert server.url.startswith("rediss://")
            no_ca = server.url.split("?")[0]      # the system's CAs do not know this test's CA
            result = run_bridge("ring-to-redis", "--ring", src.name, "--redis", no_ca, "--stream", "s")
            one_line(result, 2, "cannot reach Redis", f"rediss://:***@127.0.0.1:{server.port}/0")
            data = ticks(0, 3000)
            producer.write_batch(data)
            sender = start_sender(src.name, server.url, "tls-stream", "--batch", "64")
            receiver = start_receiver(dst.name, server.url, "tls-stream", "g", tmp_path / "state")
            got = []
            deadline = time.monotonic() + 30
            while sum(map(len, got)) < len(data):
                got.append(consumer.read(4096, timeout=0.05))
                assert_alive(sender, receiver)
                assert time.monotonic() < deadline
            assert np.array_equal(np.concatenate(got), data)
            assert stop(sender) == 0 and stop(receiver) == 0
            assert "hunter2" not in stderr_of(sender) + stderr_of(receiver)
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def test_a_stream_key_of_another_type_is_named(ring_name, redis_url, tmp_path, stream_key):
    client = redis.Redis.from_url(redis_url)
    client.set(stream_key, "not a stream")
    client.close()
    with shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        try:
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", redis_url, "--stream", stream_key)
            one_line(result, 2, stream_key, "another Redis type")
            result = run_bridge("redis-to-ring", "--redis", redis_url, "--stream", stream_key, "--group", "g",
                                "--ring", ring_name, "--state-dir", str(tmp_path))
            one_line(result, 2, stream_key, "another Redis type")
        finally:
            ring.unlink()
