"""ring -> Redis -> ring through real bridge processes: order, entry layout, SIGTERM and resume,
sharding, a full destination ring, and live counters."""
from __future__ import annotations

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
    stderr_of,
    stop,
    ticks,
    wait_started,
)

import shmpipe
from shmpipe import stats
from shmpipe.dtypes import fingerprint
from shmpipe.records import TICK

pytestmark = pytest.mark.services


@pytest.fixture
def bridge_env(ring_name, redis_url, tmp_path):
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


def wait_for(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert_alive(*procs)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def test_round_trip_in_order_counters_and_sigterm_exit_0(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    total = 100_000
    sender = receiver = None
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            sender = start_sender(src.name, redis_url, stream, "--batch", "64")
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            pump = Pump(producer, consumer, total)
            pump.run_until(lambda: (assert_alive(sender, receiver), pump.done)[1], 120, "all records")
            out_name, in_name = f"{src.name}.to-redis", f"{dst.name}.from-redis"
            wait_for(lambda: stats.read(out_name)["counters"]["records"] == total
                     and stats.read(in_name)["counters"]["records"] == total, 10, "counters")
            out_counters = stats.read(out_name)["counters"]
            assert out_counters["entries"] >= -(-total // 64)      # at most 64 records per entry
            assert out_counters["last_seq"] == total
            assert stats.read(in_name)["counters"]["duplicates_dropped"] == 0
            assert stop(sender) == 0 and stop(receiver) == 0
            assert len(consumer.read(10, timeout=0.2)) == 0          # nothing beyond the total
        finally:
            stop(sender)
            stop(receiver)
    # a clean exit removes the stats segments
    with pytest.raises(FileNotFoundError):
        stats.read(f"{src.name}.to-redis")


def test_entries_hold_batches_and_a_late_group_gets_everything(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    data = ticks(0, 250)
    with src.producer() as producer:
        assert producer.write_batch(data) == 250
    client = redis.Redis.from_url(redis_url)
    sender = receiver = None
    try:
        sender = start_sender(src.name, redis_url, stream, "--batch", "100")
        wait_for(lambda: client.xlen(stream) == 3, 30, "3 entries", [sender])
        assert stop(sender) == 0
        entries = client.xrange(stream)
        assert [int(f[b"n"]) for _, f in entries] == [100, 100, 50]
        assert [int(f[b"seq"]) for _, f in entries] == [0, 100, 200]
        assert {f[b"type"] for _, f in entries} == {b"tick"}
        assert {int(f[b"fp"]) for _, f in entries} == {fingerprint(TICK)}
        assert b"".join(f[b"data"] for _, f in entries) == data.tobytes()
        # the group is created at the stream's start: entries older than the reader arrive too
        with dst.consumer() as consumer:
            receiver = start_receiver(dst.name, redis_url, stream, "late", tmp_path)
            got = []
            wait_for(lambda: (got.append(consumer.read(1000, timeout=0.05)), sum(map(len, got)) >= 250)[1],
                     30, "250 records", [receiver])
            assert np.array_equal(np.concatenate(got), data)
        assert stop(receiver) == 0
    finally:
        stop(sender)
        stop(receiver)
        client.close()


def test_sigterm_both_then_restart_resumes_without_gap_or_duplicate(bridge_env, redis_url, tmp_path):
    src, dst, stream = bridge_env
    total = 60_000
    sender = receiver = None
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            pump = Pump(producer, consumer, total)
            for stop_at in (15_000, 35_000, total):
                sender = start_sender(src.name, redis_url, stream, "--batch", "256")
                receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
                wait_started([sender, receiver], f"{src.name}.to-redis", f"{dst.name}.from-redis")
                pump.run_until(lambda s=sender, r=receiver, at=stop_at: (assert_alive(s, r), pump.received >= at)[1],
                               120, f"{stop_at} records")
                assert stop(sender) == 0, "SIGTERM: exit 0"
                assert stop(receiver) == 0, "SIGTERM: exit 0"
            assert pump.received == total
            assert len(consumer.read(10, timeout=0.2)) == 0
        finally:
            stop(sender)
            stop(receiver)


def test_sigterm_with_the_destination_full_exits_0_and_the_rest_follows(ring_name, redis_url, tmp_path):
    """The receiver cannot finish an entry into a full ring: SIGTERM must still end it (exit 0),
    and the part that did go in must not be written twice when it comes back."""
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 10)
    stream = f"shmpipe-test:{ring_name}"
    sender = receiver = None
    data = ticks(0, 5000)
    try:
        with src.producer() as producer:
            producer.write_batch(data)
            sender = start_sender(src.name, redis_url, stream, "--batch", "300")
            receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
            wait_for(lambda: len(dst) == dst.capacity, 30, "a full destination", [sender, receiver])
            t0 = time.monotonic()
            assert stop(receiver) == 0
            assert time.monotonic() - t0 < 10
            with dst.consumer() as consumer:
                receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
                got = []
                wait_for(lambda: (got.append(consumer.read(4096, timeout=0.05)), sum(map(len, got)) >= 5000)[1],
                         30, "5000 records", [receiver])
                assert np.array_equal(np.concatenate(got), data)
                assert len(consumer.read(10, timeout=0.2)) == 0
            assert stop(receiver) == 0 and stop(sender) == 0
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()
        delete_keys(redis_url, f"{stream}*")


def test_shards_spread_by_symbol_and_keep_each_shards_order(ring_name, redis_url, tmp_path):
    k = 3
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dsts = [shmpipe.Ring.create(f"{ring_name}-dst{j}", TICK, 1 << 14) for j in range(k)]
    stream = f"shmpipe-test:{ring_name}"
    data = ticks(0, 30_000)
    procs = []
    try:
        with src.producer() as producer:
            sender = start_sender(src.name, redis_url, stream + ":{shard}", "--shards", str(k), "--batch", "128")
            procs.append(sender)
            receivers = [start_receiver(d.name, redis_url, f"{stream}:{j}", "g", tmp_path / str(j))
                         for j, d in enumerate(dsts)]
            procs += receivers
            consumers = [d.consumer() for d in dsts]
            got = [[] for _ in range(k)]
            written = 0
            expected = [data[data["symbol_id"] % k == j] for j in range(k)]

            def progress():
                nonlocal written
                if written < len(data):
                    written += producer.write_batch(data[written:written + 4096], timeout=0)
                for j, c in enumerate(consumers):
                    got[j].append(c.read(8192, timeout=0.01))
                return all(sum(map(len, got[j])) >= len(expected[j]) for j in range(k))
            wait_for(progress, 60, "every shard's records", procs)
            for j in range(k):
                assert np.array_equal(np.concatenate(got[j]), expected[j]), f"shard {j}"
            for c in consumers:
                c.close()
            assert [stop(p) for p in procs] == [0] * (k + 1)
    finally:
        for p in procs:
            stop(p)
        for ring in [src, *dsts]:
            ring.close()
            ring.unlink()
        delete_keys(redis_url, f"{stream}*")


def test_a_stream_deleted_and_made_again_is_a_new_numbering_not_duplicates(bridge_env, redis_url, tmp_path):
    """The sender restarts seq at 0 on an empty stream: the receiver must not take those for the
    records 0.. it already wrote (it would drop them silently)."""
    src, dst, stream = bridge_env
    sender = receiver = None
    client = redis.Redis.from_url(redis_url)
    with src.producer() as producer, dst.consumer() as consumer:
        try:
            for round_ in range(2):
                sender = start_sender(src.name, redis_url, stream, "--batch", "10")
                receiver = start_receiver(dst.name, redis_url, stream, "g", tmp_path)
                producer.write_batch(ticks(100 * round_, 100))
                got = []
                wait_for(lambda g=got: (g.append(consumer.read(100, timeout=0.05)), sum(map(len, g)) >= 100)[1],
                         30, "100 records", [sender, receiver])
                assert np.array_equal(np.concatenate(got), ticks(100 * round_, 100))
                assert stop(sender) == 0 and stop(receiver) == 0
                client.delete(stream)          # the group goes with it
            assert "started afresh" in stderr_of(receiver)
        finally:
            client.close()
            stop(sender)
            stop(receiver)


@pytest.mark.parametrize("retention", [["--maxlen", "100"], ["--max-age", "1"]])
def test_retention_trims_old_entries(bridge_env, redis_url, retention):
    src, _dst, stream = bridge_env
    client = redis.Redis.from_url(redis_url)
    sender = None
    try:
        with src.producer() as producer:
            sender = start_sender(src.name, redis_url, stream, "--batch", "1", *retention)
            producer.write_batch(ticks(0, 1000))
            wait_for(lambda: int((client.xrevrange(stream, count=1) or [(0, {b"seq": b"-1"})])[0][1][b"seq"]) == 999,
                     30, "1000 entries sent", [sender])
            first_sent = time.monotonic()
            if retention[0] == "--max-age":
                assert client.xlen(stream) == 1000       # nothing is a second old yet
                while time.monotonic() - first_sent < 1.5:
                    time.sleep(0.05)
                producer.write_batch(ticks(1000, 1))   # the XADD that trims by age
                wait_for(lambda: client.xlen(stream) < 1000, 30, "trimmed by age", [sender])
            # MAXLEN/MINID ~ trim whole nodes of 100 entries: about the limit is kept, never the newest
            assert client.xlen(stream) <= 200
            last = client.xrevrange(stream, count=1)[0][1]
            assert int(last[b"seq"]) + int(last[b"n"]) == (1001 if retention[0] == "--max-age" else 1000)
            assert stop(sender) == 0
    finally:
        client.close()
        stop(sender)
