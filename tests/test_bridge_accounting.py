"""Issue 22: whatever Redis or an operator does, every record either arrives exactly once or is
counted and named as lost (gap_records, a stderr line, exit 1 without --allow-gap). Real bridge
processes against a private redis-server, with and without persistence."""
from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from bridge_helpers import (
    assert_alive,
    private_redis,
    run_bridge,
    start_receiver,
    start_sender,
    stderr_of,
    stop,
    ticks,
    wait_started,
)

import shmpipe
from shmpipe import stats
from shmpipe.dtypes import describe
from shmpipe.records import LEVEL_UPDATE, TICK

pytestmark = pytest.mark.services


def wait_for(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert_alive(*procs)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def counters(name: str) -> dict:
    return stats.read(name)["counters"]


def wait_attached(src, sender) -> None:
    """Until the sender is an active consumer of the broadcast ring ``src``."""
    wait_for(lambda: any(c["state"] == "active" for c in src.stats()["consumers"]), 30, "sender attached",
             [sender])


def last_seq(client, stream: str) -> int:
    last = client.xrevrange(stream, "+", "-", count=1)
    return int(last[0][1][b"seq"]) + int(last[0][1][b"n"]) if last else -1


class Collector:
    """Reads the destination ring; checks order and uniqueness as records come."""

    def __init__(self, consumer) -> None:
        self.consumer, self.parts = consumer, []

    def poll(self) -> int:
        self.parts.append(self.consumer.read(65536, timeout=0.01))
        return self.count

    @property
    def count(self) -> int:
        return sum(map(len, self.parts))

    @property
    def sequences(self) -> np.ndarray:
        return np.concatenate(self.parts)["sequence"] if self.parts else np.zeros(0, np.uint64)


def one_line(result, status: int, *must_contain: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def rings(ring_name):
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 16)
    try:
        yield src, dst
    finally:
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def receive(dst_name, url, stream, group, state, *extra):
    return run_bridge("redis-to-ring", "--redis", url, "--stream", stream, "--group", group, "--ring", dst_name,
                      "--state-dir", str(state), *extra)


# -- 1. a new group on a trimmed stream ------------------------------------------------------------
def test_a_new_group_on_a_trimmed_stream_names_and_counts_what_it_cannot_have(rings, tmp_path):
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
        client = redis.Redis.from_url(server.url)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "16", "--maxlen", "10")
            written = 0
            data = ticks(0, 5000)
            while written < len(data):
                written += producer.write_batch(data[written:], timeout=0.1)
            wait_for(lambda: last_seq(client, "s") == 5000, 60, "5000 records sent", [sender])
            first_kept = int(client.xrange("s", "-", "+", count=1)[0][1][b"seq"])
            assert first_kept > 0
            one_line(receive(dst.name, server.url, "s", "g2", tmp_path / "state"), 1,
                     f"0..{first_kept - 1}", "--allow-gap")
            assert len(consumer.read(10, timeout=0.1)) == 0
            receiver = start_receiver(dst.name, server.url, "s", "g2", tmp_path / "state", "--allow-gap")
            got = Collector(consumer)
            wait_for(lambda: got.poll() >= 5000 - first_kept, 60, "the kept records", [receiver])
            assert np.array_equal(got.sequences, np.arange(first_kept, 5000))
            wait_for(lambda: counters(f"{dst.name}.from-redis")["gap_records"] == first_kept, 30, "gap counted",
                     [receiver])
            assert "skipped (--allow-gap)" in stderr_of(receiver)
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            client.close()
            stop(sender)
            stop(receiver)


# -- 1 and 3. a lagging receiver across a Redis restart without persistence ------------------------
def test_a_lagging_receiver_across_a_redis_restart_without_persistence_counts_every_lost_record(
        rings, tmp_path):
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis", persistence=False) as server, src.producer() as producer, \
            dst.consumer() as consumer:
        client = redis.Redis.from_url(server.url)
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "50")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            producer.write_batch(ticks(0, 1000))
            wait_for(lambda: got.poll() >= 1000, 60, "1000 records", [sender, receiver])
            assert stop(receiver) == 0             # the receiver lags from here
            producer.write_batch(ticks(1000, 2000))
            wait_for(lambda: last_seq(client, "s") == 3000, 60, "3000 records sent", [sender])
            server.kill()
            server.start()                         # empty: records 1000..2999 were only in Redis
            producer.write_batch(ticks(3000, 500))
            wait_for(lambda: counters(f"{src.name}.to-redis")["records"] >= 3500, 60, "the sender resuming",
                     [sender])
            result = receive(dst.name, server.url, "s", "g", tmp_path / "state")
            assert result.returncode == 1, result.stderr
            assert "missing" in result.stderr and "--allow-gap" in result.stderr, result.stderr
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state", "--allow-gap")
            wait_for(lambda: got.poll() >= 1500, 60, "the new records", [sender, receiver])
            wait_for(lambda: counters(f"{dst.name}.from-redis")["gap_records"] == 2000, 30,
                     "2000 lost records counted", [receiver])
            seqs = got.sequences
            assert np.array_equal(seqs, np.r_[np.arange(1000), np.arange(3000, 3500)])
            assert "lost" in stderr_of(sender), stderr_of(sender)
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            client.close()
            stop(sender)
            stop(receiver)


def test_a_new_epoch_from_a_restarted_sender_is_refused_as_uncountable_until_allow_gap(rings, tmp_path):
    """Redis restarted empty while both bridges were down: the new sender cannot know where the
    lost numbering ended, so the receiver cannot count what it missed, and says so."""
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis", persistence=False) as server, src.producer() as producer, \
            dst.consumer() as consumer:
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "10")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            producer.write_batch(ticks(0, 100))
            wait_for(lambda: got.poll() >= 100, 30, "100 records", [sender, receiver])
            assert stop(sender) == 0 and stop(receiver) == 0
            server.kill()
            server.start()
            sender = start_sender(src.name, server.url, "s", "--batch", "10")
            wait_started([sender], f"{src.name}.to-redis")
            producer.write_batch(ticks(100, 50))
            wait_for(lambda: counters(f"{src.name}.to-redis")["records"] >= 50, 30, "sent anew", [sender])
            assert "gone from Redis" in stderr_of(sender), stderr_of(sender)
            one_line(receive(dst.name, server.url, "s", "g", tmp_path / "state"), 1, "cannot be counted",
                     "--allow-gap")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state", "--allow-gap")
            wait_for(lambda: got.poll() >= 150, 30, "the new records", [sender, receiver])
            assert np.array_equal(got.sequences, np.arange(150))
            assert "cannot be counted" in stderr_of(receiver)
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            stop(sender)
            stop(receiver)


# -- 2. sender --allow-gap never reuses a sequence number -------------------------------------------
def test_sender_allow_gap_numbers_forward_so_no_receiver_drops_new_records(rings, tmp_path):
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
        client = redis.Redis.from_url(server.url)
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "100")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            producer.write_batch(ticks(0, 2000))
            wait_for(lambda: got.poll() >= 2000, 60, "2000 records", [sender, receiver])
            assert stop(sender) == 0
            # Redis comes back from an older snapshot: the newest 10 entries (1000 records) are gone
            for entry_id, _ in client.xrevrange("s", "+", "-", count=10):
                client.xdel("s", entry_id)
            one_line(run_bridge("ring-to-redis", "--ring", src.name, "--redis", server.url, "--stream", "s"), 1,
                     "1000..1999", "--allow-gap")
            sender = start_sender(src.name, server.url, "s", "--batch", "100", "--allow-gap")
            producer.write_batch(ticks(2000, 1000))
            wait_for(lambda: got.poll() >= 3000, 60, "the new records", [sender, receiver])
            assert np.array_equal(got.sequences, np.arange(3000))
            assert counters(f"{dst.name}.from-redis")["duplicates_dropped"] == 0
            wait_for(lambda: counters(f"{src.name}.to-redis")["gap_records"] == 1000, 30, "sender gap", [sender])
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            client.close()
            stop(sender)
            stop(receiver)


def test_sharded_sender_allow_gap_starts_new_epochs_that_receivers_refuse_as_uncountable(ring_name, tmp_path):
    """Which shard an overwritten record was in is gone with it: each shard stream starts a new
    epoch, and a receiver of a shard says it cannot count what it missed."""
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1024, broadcast=True)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 14)
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    shards = ["--shards", "2", "--batch", "10"]
    try:
        with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
            client = redis.Redis.from_url(server.url)
            got = Collector(consumer)
            sender = start_sender(src.name, server.url, "s:{shard}", *shards)
            receiver = start_receiver(dst.name, server.url, "s:0", "g", tmp_path / "state")
            wait_attached(src, sender)
            producer.write_batch(ticks(0, 220))       # symbol_id = i % 11: 120 to shard 0, 100 to shard 1
            wait_for(lambda: got.poll() >= 120, 30, "shard 0's records", [sender, receiver])
            sender.kill()
            stop(sender)
            written, more = 0, ticks(220, 3000)
            while written < len(more):                # the dead reader is evicted: the producer laps it
                written += producer.write_batch(more[written:], timeout=0.1)
            sender = start_sender(src.name, server.url, "s:{shard}", *shards, "--allow-gap")
            wait_for(lambda: last_seq(client, "s:1") > 100, 30, "records after the gap", [sender])
            last = client.xrevrange("s:0", "+", "-", count=1)[0][1]
            assert last[b"prev"] == b"" and int(last[b"base"]) == 120
            wait_for(lambda: receiver.poll() is not None, 30, "the receiver refusing")
            assert receiver.returncode == 1 and "cannot be counted" in stderr_of(receiver), stderr_of(receiver)
            assert counters(f"{src.name}.to-redis")["gap_records"] == 3220 - 1024 - 220
            assert stop(sender) == 0
            client.close()
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


# -- 4. a broadcast source ring and a Redis outage longer than the ring's consumer timeout ----------
def through_an_outage(ring_name, tmp_path, consumer_timeout: float, outage) -> None:
    """A sender on a broadcast ring and a receiver pass 500 records; then ``outage(server, src,
    sender, write_for)`` takes Redis away while ``write_for(seconds)`` keeps writing (which must block: the
    sender is still a live consumer). After it, every one of 3500 records arrives once, in order."""
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1024, broadcast=True,
                              consumer_timeout=consumer_timeout)
    dst = shmpipe.Ring.create(f"{ring_name}-dst", TICK, 1 << 14)
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    try:
        with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
            got = Collector(consumer)
            sender = start_sender(src.name, server.url, "s", "--batch", "100")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            wait_attached(src, sender)
            producer.write_batch(ticks(0, 500))
            wait_for(lambda: got.poll() >= 500, 60, "500 records", [sender, receiver])
            data, written = ticks(500, 3000), 0

            def write_for(seconds: float) -> None:
                nonlocal written
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    written += producer.write_batch(data[written:], timeout=0.05)
                assert written < len(data), "the lossless producer waited for the live sender"

            outage(server, src, sender, write_for)
            while written < len(data):
                written += producer.write_batch(data[written:], timeout=0.05)
                got.poll()
                assert_alive(sender, receiver)
            wait_for(lambda: got.poll() >= 3500, 60, "every record", [sender, receiver])
            assert np.array_equal(got.sequences, np.arange(3500))
            assert stop(sender) == 0 and stop(receiver) == 0
    finally:
        stop(sender)
        stop(receiver)
        for ring in (src, dst):
            ring.close()
            ring.unlink()


def test_a_sender_waiting_for_redis_stays_a_live_consumer_of_a_broadcast_ring(ring_name, tmp_path):
    def redis_down(server, src, sender, write_for) -> None:
        server.kill()
        wait_for(lambda: counters(f"{src.name}.to-redis")["retries"] > 0, 30, "sender retrying", [sender])
        write_for(3.0)                                   # six consumer timeouts
        server.start()

    through_an_outage(ring_name, tmp_path, 0.5, redis_down)


def test_a_sender_blocked_in_a_command_to_a_stalled_redis_stays_a_live_consumer(ring_name, tmp_path):
    """A Redis that stops answering (SIGSTOP: a partition, a stalled host) holds one command for up
    to the socket timeout; the sender keeps heartbeating the broadcast ring meanwhile."""
    import signal

    def redis_stalled(server, src, sender, write_for) -> None:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            write_for(4.0)                               # four consumer timeouts, inside one command
        finally:
            server.proc.send_signal(signal.SIGCONT)

    through_an_outage(ring_name, tmp_path, 1.0, redis_stalled)


# -- 5. a receiver without its state file while the ring holds records -----------------------------
def test_a_missing_state_file_with_records_in_the_ring_is_refused_not_guessed(rings, tmp_path):
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "64")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            producer.write_batch(ticks(0, 2048))
            wait_for(lambda: got.poll() >= 2048, 60, "2048 records", [sender, receiver])
            assert stop(receiver) == 0
            result = receive(dst.name, server.url, "s", "g2", tmp_path / "other-state")
            one_line(result, 2, dst.name, "2048", str(tmp_path / "other-state"))
            assert len(consumer.read(10, timeout=0.1)) == 0
            assert stop(sender) == 0
        finally:
            stop(sender)
            stop(receiver)


# -- 6. a stream belongs to one source ring ----------------------------------------------------------
def test_a_second_sender_from_another_ring_is_refused_naming_the_owner(ring_name, tmp_path):
    a = shmpipe.Ring.create(f"{ring_name}-a", TICK, 1024)
    b = shmpipe.Ring.create(f"{ring_name}-b", TICK, 1024)
    senders = []
    (tmp_path / "redis").mkdir()
    try:
        with private_redis(tmp_path / "redis") as server, a.producer() as pa:
            client = redis.Redis.from_url(server.url)
            senders.append(start_sender(a.name, server.url, "s", "--batch", "10"))
            pa.write_batch(ticks(0, 100))
            wait_for(lambda: last_seq(client, "s") == 100, 30, "ring a's records", senders)
            one_line(run_bridge("ring-to-redis", "--ring", b.name, "--redis", server.url, "--stream", "s"), 2,
                     a.name, "belongs to")
            assert stop(senders.pop()) == 0
            # both at once, on a fresh stream: exactly one of them owns it
            senders += [start_sender(r.name, server.url, "t", "--batch", "10") for r in (a, b)]
            wait_for(lambda: any(p.poll() is not None for p in senders), 30, "one sender refused")
            refused = [p for p in senders if p.poll() is not None]
            assert len(refused) == 1 and refused[0].returncode == 2, [p.returncode for p in senders]
            assert "belongs to" in stderr_of(refused[0])
            client.close()
    finally:
        for p in senders:
            stop(p)
        for ring in (a, b):
            ring.close()
            ring.unlink()


# -- 7. the group or the stream disappearing between commands ---------------------------------------
def test_receiver_goes_on_when_its_group_is_destroyed_or_its_stream_deleted(rings, tmp_path):
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, src.producer() as producer, dst.consumer() as consumer:
        client = redis.Redis.from_url(server.url)
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "10")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            producer.write_batch(ticks(0, 100))
            wait_for(lambda: got.poll() >= 100, 30, "100 records", [sender, receiver])
            client.xgroup_destroy("s", "g")
            producer.write_batch(ticks(100, 100))
            wait_for(lambda: got.poll() >= 200, 30, "records after XGROUP DESTROY", [sender, receiver])
            client.delete("s")
            wait_for(lambda: "lost" in stderr_of(sender), 30, "the idle sender saying the stream was lost",
                     [sender, receiver])
            producer.write_batch(ticks(200, 100))
            wait_for(lambda: got.poll() >= 300, 30, "records after DEL", [sender, receiver])
            assert np.array_equal(got.sequences, np.arange(300))
            assert "group 'g'" in stderr_of(receiver), stderr_of(receiver)
            assert counters(f"{dst.name}.from-redis")["gap_records"] == 0
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            client.close()
            stop(sender)
            stop(receiver)


# -- 7 and 8. a paused sender and a paused receiver across a Redis restart without persistence ---------
def test_a_paused_sender_across_a_redis_restart_says_the_stream_was_lost_and_restores_dtype(rings, tmp_path,
                                                                                            monkeypatch):
    from bridge_helpers import RUNTIME_DIR

    from shmpipe import control
    monkeypatch.setenv("SHMPIPE_RUNTIME_DIR", RUNTIME_DIR)      # where the bridges' endpoints are
    src, dst = rings
    sender = receiver = None
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis", persistence=False) as server, src.producer() as producer, \
            dst.consumer() as consumer:
        client = redis.Redis.from_url(server.url)
        got = Collector(consumer)
        try:
            sender = start_sender(src.name, server.url, "s", "--batch", "10")
            receiver = start_receiver(dst.name, server.url, "s", "g", tmp_path / "state")
            wait_started([sender, receiver], f"{src.name}.to-redis", f"{dst.name}.from-redis")
            producer.write_batch(ticks(0, 100))
            wait_for(lambda: got.poll() >= 100, 30, "100 records", [sender, receiver])
            for name in (f"{src.name}.to-redis", f"{dst.name}.from-redis"):
                control.request(name, "pause")
            server.kill()
            server.start()
            for name in (f"{src.name}.to-redis", f"{dst.name}.from-redis"):
                control.request(name, "resume")
            wait_for(lambda: client.get("s:dtype") is not None, 30, ":dtype re-established", [sender, receiver])
            assert client.get("s:dtype").decode() == describe(TICK)
            wait_for(lambda: "lost" in stderr_of(sender), 30, "the loss said", [sender])
            producer.write_batch(ticks(100, 50))     # the receiver goes on, nothing to count
            wait_for(lambda: got.poll() >= 150, 30, "records after the restart", [sender, receiver])
            assert np.array_equal(got.sequences, np.arange(150))
            assert counters(f"{dst.name}.from-redis")["gap_records"] == 0
            assert stop(sender) == 0 and stop(receiver) == 0
        finally:
            client.close()
            stop(sender)
            stop(receiver)


# -- 9. a garbage or foreign :dtype ----------------------------------------------------------------------
def test_a_garbage_or_foreign_dtype_key_is_one_line_naming_the_key(ring_name, tmp_path):
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("s:dtype", "not a dtype")
            one_line(receive(f"{ring_name}-new", server.url, "s", "g", tmp_path / "state"), 2, "'s:dtype'")
            client.delete("s:dtype")
            client.hset("s:dtype", "a", "b")
            one_line(receive(ring_name, server.url, "s", "g", tmp_path / "state"), 2, "'s:dtype'")
            one_line(run_bridge("ring-to-redis", "--ring", ring_name, "--redis", server.url, "--stream", "s"), 2,
                     "'s:dtype'")
            client.delete("s:dtype", "s")
            client.set("s:dtype", describe(LEVEL_UPDATE))    # another type named, the stream empty
            one_line(run_bridge("ring-to-redis", "--ring", ring_name, "--redis", server.url, "--stream", "s"), 2,
                     "'s:dtype'", "level_update")
            assert client.get("s:dtype").decode() == describe(LEVEL_UPDATE)
        finally:
            client.close()
            ring.unlink()


# -- 10. unclear errors ---------------------------------------------------------------------------------
def test_bad_db_bad_ring_name_unreachable_server_second_spsc_sender_and_garbage_pending(ring_name, tmp_path):
    from bridge_helpers import free_port
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server, shmpipe.Ring.create(ring_name, TICK, 64) as ring:
        client = redis.Redis.from_url(server.url)
        first = None
        try:
            bad_db = f"redis://127.0.0.1:{server.port}/abc"
            one_line(run_bridge("ring-to-redis", "--ring", ring_name, "--redis", bad_db, "--stream", "s"), 2, "abc")
            one_line(run_bridge("ring-to-redis", "--ring", "bad/name", "--redis", server.url, "--stream", "s"), 2,
                     "invalid ring name")
            one_line(receive("bad/name", server.url, "s", "g", tmp_path / "state"), 2, "invalid ring name")
            unreachable = f"redis://127.0.0.1:{free_port()}/0"
            one_line(run_bridge("ring-to-redis", "--ring", ring_name, "--redis", unreachable, "--stream", "s"), 2,
                     "cannot reach Redis")
            first = start_sender(ring_name, server.url, "s")
            wait_started([first], f"{ring_name}.to-redis")
            result = run_bridge("ring-to-redis", "--ring", ring_name, "--redis", server.url, "--stream", "s2")
            line = one_line(result, 1, ring_name, "consumer")
            assert "stats" not in line
            assert stop(first) == 0
            garbage = client.xadd("junk", {"hello": "world"}).decode()
            client.set("junk:dtype", describe(TICK))
            for _ in range(2):        # the second run replays it from the pending list: same advice
                one_line(receive(f"{ring_name}-dst", server.url, "junk", "g", tmp_path / "state"), 2, garbage,
                         f"XACK junk g {garbage}")
        finally:
            client.close()
            stop(first)
            ring.unlink()
            try:
                with shmpipe.Ring.open(f"{ring_name}-dst") as made:    # the receiver made it from junk:dtype
                    made.unlink()
            except shmpipe.RingNotFoundError:
                pass
