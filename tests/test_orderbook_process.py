"""``shmpipe orderbook`` as a real process: usage and ring errors, waiting for its first producer and
ending when it is gone (kill -9 included), the control endpoint, live stats, and the repair of a
corrupted book by a resnapshot from a (stand-in) capture over the control plane."""
from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from orderbook_helpers import checksum_record, level, levels, snapshot
from shmpipe_services.capture.kraken_checksum import checksum_of_book
from shmpipe_services.orderbook.resnapshot import Resnapshotter
from test_asset_sync import _child_env, _stop, spawn_cli

import shmpipe
from shmpipe import control, symbols
from shmpipe import stats as shm_stats
from shmpipe.records import (
    ACTION_SET,
    BOOK_FLAG_CHECKSUM_FAILED,
    BOOK_FLAG_INVALID,
    LEVEL_UPDATE,
    ORDERBOOK_ENTRY,
    SIDE_ASK,
    SIDE_BID,
    TICK,
)

DEADLINE = 30.0


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the orderbook exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.01)


def _if(value, test):
    """value when test(value) holds, else None (for wait_for)."""
    return value if test(value) else None


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    return json.loads(out)


class Pipeline:
    """A levels ring this test writes and a books ring this test reads, made before the orderbook."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.levels_name, self.books_name = name + "-l", name + "-b"
        self.levels = shmpipe.Ring.create(self.levels_name, LEVEL_UPDATE, 1 << 12, broadcast=True)
        self.books = shmpipe.Ring.create(self.books_name, ORDERBOOK_ENTRY, 1 << 12, broadcast=True)
        self.reader = self.books.consumer()
        self.entries: list[np.ndarray] = []

    def start(self, *extra: str) -> subprocess.Popen:
        proc = spawn_cli("orderbook", "--levels", self.levels_name, "--books", self.books_name, "--json",
                         "--name", self.name + "-ob", *extra)
        wait_for(lambda: any(c["alive"] for c in self.levels.stats()["consumers"]), "join", proc)
        return proc

    def read(self) -> np.ndarray:
        self.entries.append(self.reader.read(1 << 12, timeout=0))
        return np.concatenate(self.entries)

    def close(self) -> None:
        self.reader.close()
        for r in (self.levels, self.books):
            r.unlink()
            r.close()


@pytest.fixture
def pipeline(ring_name):
    p = Pipeline(ring_name)
    yield p
    p.close()


def set_facts(symbol: str, *, depth: int = 10) -> int:
    """A symbol in the suite's registry (shared with the children), with Kraken-like facts."""
    return symbols.register("test-ob", symbol, price_decimals=1, size_decimals=8, depth=depth)


# -- usage and ring errors --------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--conflate-ms", "-1"], "--conflate-ms"),
    (["--seconds", "0"], "--seconds"),
    (["--levels"], "--levels"),
])
def test_usage_errors_exit_2(args, message, ring_name):
    base = ["--levels", ring_name + "-l", "--books", ring_name + "-b"]
    proc = spawn_cli("orderbook", *(base + args if args[0] != "--levels" else args))
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2 and message in err and "Traceback" not in err


def test_a_books_ring_of_another_record_is_refused_in_one_line(ring_name):
    with shmpipe.Ring.create(ring_name + "-b", TICK, 64, broadcast=True) as wrong:
        proc = spawn_cli("orderbook", "--levels", ring_name + "-l", "--books", ring_name + "-b",
                         "--name", ring_name + "-ob")
        _, err = proc.communicate(timeout=DEADLINE)
        wrong.unlink()
    assert proc.returncode == 1
    assert err.startswith("shmpipe orderbook: books ring") and ring_name + "-b" in err
    assert len(err.strip().splitlines()) == 1
    # the levels ring it made for this run is gone again: a failed start leaves no litter
    assert not Path(f"/dev/shm/shmpipe.{ring_name}-l").exists()


def test_a_second_orderbook_on_one_books_ring_or_name_is_refused(pipeline):
    first = pipeline.start()
    try:
        again = spawn_cli("orderbook", "--levels", pipeline.levels_name, "--books", pipeline.books_name,
                          "--name", pipeline.name + "-ob")
        _, err = again.communicate(timeout=DEADLINE)
        assert again.returncode == 1 and "is taken" in err and len(err.strip().splitlines()) == 1
        other = spawn_cli("orderbook", "--levels", pipeline.levels_name, "--books", pipeline.books_name,
                          "--name", pipeline.name + "-ob2")
        _, err = other.communicate(timeout=DEADLINE)
        assert other.returncode == 1 and "already has a live producer" in err
    finally:
        _stop(first)


# -- lifecycle ----------------------------------------------------------------------------------------
PRODUCER = textwrap.dedent("""
    import sys, time, numpy as np, shmpipe
    from shmpipe.records import LEVEL_UPDATE
    ring = shmpipe.Ring.open(sys.argv[1], LEVEL_UPDATE)
    out = ring.producer()
    records = np.load(sys.argv[2])
    out.write_batch(records)
    print("written", flush=True)
    time.sleep(600)
""")


def test_starts_before_its_producer_and_ends_after_a_kill_9_of_it(ring_name, tmp_path):
    sid = set_facts(ring_name)
    rows = snapshot({100.0: 1.0, 99.0: 2.0}, {101.0: 1.0}, sid=sid)
    rows += [level(ACTION_SET, SIDE_BID, 98.0 - k * 0.1, 1.0, sid=sid, ts=2 + k) for k in range(500)]
    np.save(tmp_path / "records.npy", levels(*rows))
    books = shmpipe.Ring.create(ring_name + "-b", ORDERBOOK_ENTRY, 1 << 12, broadcast=True)
    reader = books.consumer()
    book = spawn_cli("orderbook", "--levels", ring_name + "-l", "--books", ring_name + "-b", "--json",
                     "--name", ring_name + "-ob")
    child = None
    try:
        # no levels ring yet: the orderbook makes it (as capture would) and waits for a producer
        found = []
        wait_for(lambda: found.append(_try_open(ring_name + "-l")) or found[-1] is not None, "levels ring", book)
        found[-1].close()
        time.sleep(0.3)
        assert book.poll() is None          # no producer seen yet: it waits instead of ending
        child = subprocess.Popen([sys.executable, "-c", PRODUCER, ring_name + "-l", str(tmp_path / "records.npy")],
                                 stdout=subprocess.PIPE, env=_child_env(), text=True)
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE)
        counters = finish(book)
        entries = reader.read(1 << 12, timeout=0)
    finally:
        _stop(book)
        if child is not None and child.poll() is None:
            child.kill()
        reader.close()
        for name in (ring_name + "-b", ring_name + "-l"):
            try:
                shmpipe.Ring.open(name).unlink()
            except FileNotFoundError:
                pass
        books.close()
    assert counters["ended"] == "producer_gone"
    assert counters["updates"] == 3 + 500 and counters["snapshots_written"] == 501 == len(entries)
    assert entries[-1]["bids"][0].tolist() == [100.0, 1.0] and entries[-1]["bid_count"] == 10   # depth 10
    assert entries["sequence"].tolist() == list(range(1, 502))


def _try_open(name):
    try:
        return shmpipe.Ring.open(name, LEVEL_UPDATE)
    except FileNotFoundError:
        return None


def test_control_status_pause_resume_stop_and_live_stats(pipeline):
    sid = set_facts(pipeline.name)
    proc = pipeline.start()
    service = pipeline.name + "-ob"
    try:
        with pipeline.levels.producer() as out:
            status = control.request(service, "status")
            assert status["role"] == "orderbook" and status["levels"] == pipeline.levels_name
            assert status["books"] == pipeline.books_name and status["paused"] is False
            out.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, sid=sid)))
            wait_for(lambda: control.request(service, "stats")["updates"] == 2, "updates", proc)
            assert control.request(service, "pause") == {"paused": True}
            out.write_batch(levels(level(ACTION_SET, SIDE_ASK, 12.0, 1.0, sid=sid, ts=2)))
            time.sleep(0.3)
            assert control.request(service, "stats")["updates"] == 2        # paused: nothing applied
            assert control.request(service, "resume") == {"paused": False}
            wait_for(lambda: control.request(service, "stats")["updates"] == 3, "resumed updates", proc)
            live = wait_for(lambda: _if(shm_stats.read(service), lambda s: s["counters"]["updates"] == 3),
                            "published stats", proc)
            assert live["live"] and live["counters"]["snapshots_written"] == 2
            assert control.request(service, "stop") == {"stopping": True}
            counters = finish(proc)
    finally:
        _stop(proc)
    assert counters["ended"] == "stop" and counters["updates"] == 3
    with pytest.raises(FileNotFoundError):
        shm_stats.read(service)               # a clean exit removes its stats segment


def test_sigterm_ends_it_with_its_counters(pipeline):
    proc = pipeline.start()
    proc.send_signal(signal.SIGTERM)
    counters = finish(proc)
    assert counters["ended"] == "signal"
    for key in ("updates", "snapshots_written", "checksum_failures", "resnapshots", "invalid_books"):
        assert counters[key] == 0


# -- integrity: a corrupted book repaired by a resnapshot ----------------------------------------------
class FakeCapture:
    """A control service named like a capture, writing our levels ring; 'resnapshot' queues the symbol
    for the test's thread, which writes the fresh snapshot (as capture would, from the venue)."""

    def __init__(self, name: str, levels_ring: str) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.server = control.ControlServer(name, {
            "status": lambda _a: {"role": "capture", "feed": "fake", "levels": levels_ring, "ticks": "-"},
            "resnapshot": self._resnapshot,
        })
        self.server.start_thread()

    def _resnapshot(self, args):
        self.requests.put(int(args["symbol_id"]))
        return {"queued": [int(args["symbol_id"])]}

    def close(self):
        self.server.close()


@pytest.mark.parametrize("explicit", [False, True])
def test_a_corrupted_update_is_flagged_and_repaired_by_a_resnapshot(pipeline, explicit):
    sid = set_facts(pipeline.name)
    bids, asks = {100.0: 1.0, 99.0: 2.0}, {101.0: 1.0, 102.0: 3.0}
    fake = FakeCapture(pipeline.name + "-cap", pipeline.levels_name)
    proc = pipeline.start(*(["--capture", pipeline.name + "-cap"] if explicit else []))
    try:
        with pipeline.levels.producer() as out:
            out.write_batch(levels(*snapshot(bids, asks, sid=sid), checksum_record(checksum_of_book(bids, asks, 1, 8),
                                                                                     sid=sid)))
            # the corruption: capture wrote 5.0 where the venue said 3.0 (the venue's sum is over 3.0)
            venue_bids = {**bids, 98.0: 3.0}
            out.write_batch(levels(level(ACTION_SET, SIDE_BID, 98.0, 5.0, sid=sid, ts=2),
                                   checksum_record(checksum_of_book(venue_bids, asks, 1, 8), sid=sid, ts=2)))
            asked = fake.requests.get(timeout=DEADLINE)
            assert asked == sid
            flagged = pipeline.read()
            assert flagged[-1]["flags"] == BOOK_FLAG_INVALID | BOOK_FLAG_CHECKSUM_FAILED
            out.write_batch(levels(*snapshot(venue_bids, asks, sid=sid, ts=3),
                                   checksum_record(checksum_of_book(venue_bids, asks, 1, 8), sid=sid, ts=3)))
        counters = finish(proc)
    finally:
        _stop(proc)
        fake.close()
    entries = pipeline.read()
    assert entries[-1]["flags"] == 0 and entries[-1]["bids"][2].tolist() == [98.0, 3.0]
    assert counters["checksum_failures"] == 1 and counters["invalid_books"] == 1 and counters["repaired"] == 1
    assert counters["resnapshots"] >= 1 and counters["checksums_verified"] == 2
    assert entries["sequence"].tolist() == list(range(1, len(entries) + 1))


def test_without_any_capture_requests_fail_are_counted_and_it_keeps_running(pipeline):
    sid = set_facts(pipeline.name)
    proc = pipeline.start("--capture", pipeline.name + "-nobody")
    service = pipeline.name + "-ob"
    try:
        with pipeline.levels.producer() as out:
            out.write_batch(levels(level(ACTION_SET, SIDE_BID, 10.0, 1.0, sid=sid)))    # never snapshotted
            stats = wait_for(lambda: _if(control.request(service, "stats"), lambda s: s["resnapshot_failures"] >= 2),
                             "two failed requests (1 s apart)", proc)
            assert stats["resnapshots"] == 0 and stats["books_invalid_now"] == 1 and stats["unsynced"] == 1
        counters = finish(proc)
    finally:
        _stop(proc)
    assert counters["ended"] == "producer_gone"


# -- the request schedule (no processes) ------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_requests_back_off_while_invalid_and_reset_once_rebuilt():
    clock, sent = Clock(), queue.Queue()

    def request(name, command, args=None, timeout=None):
        sent.put((name, command, dict(args or {})))
        return {}
    r = Resnapshotter("lv", ["cap"], request=request, clock=clock)
    try:
        def ticks_at(times, invalid):
            out = []
            for t in times:
                clock.now = t
                r.tick(invalid)
                try:
                    out.append((t, sent.get(timeout=2)))
                except queue.Empty:
                    pass
            return [t for t, _ in out]
        assert ticks_at([0, 0.5, 0.99, 1.0, 2.0, 2.9, 3.0, 6.9, 7.0], [7]) == [0, 1.0, 3.0, 7.0]
        assert ticks_at([7.5], []) == []                 # rebuilt
        assert ticks_at([7.6, 8.0, 8.1], [7]) == [8.0]   # invalid again: at once, but not within 1 s of the last
        assert r.counters() == {"resnapshots": 5, "resnapshot_requests": 5, "resnapshot_failures": 0}
    finally:
        r.close()


def test_discovery_asks_only_captures_of_our_levels_ring_and_counts_failures():
    clock = Clock()
    asked = queue.Queue()
    statuses = {"cap-a": {"role": "capture", "levels": "lv"}, "cap-b": {"role": "capture", "levels": "other"},
                "ob": {"role": "orderbook", "levels": "lv"}}

    def request(name, command, args=None, timeout=None):
        if command == "status":
            if name == "dead":
                raise control.ControlTimeoutError("dead did not answer")
            return statuses[name]
        asked.put(name)
        if name == "cap-a" and args["symbol_id"] == 2:
            raise control.ControlError("unknown symbol")
        return {}
    r = Resnapshotter("lv", request=request, list_services=lambda: ["cap-a", "cap-b", "ob", "dead", "me"],
                      own_name="me", clock=clock)
    try:
        r.tick([1, 2])
        assert sorted([asked.get(timeout=2), asked.get(timeout=2)]) == ["cap-a", "cap-a"]
        wait_for(lambda: r.requests == 2 and r.resnapshots + r.failures == 2, "both answered")
        assert (r.resnapshots, r.failures) == (1, 1) and "unknown symbol" in r.last_error
    finally:
        r.close()


def test_evicted_while_held_up_by_a_full_books_ring_it_rejoins_and_marks_books_invalid(ring_name):
    """A books consumer that stops reading holds the order book up; capture (here: this test) evicts
    the silent order book from the levels ring; once books are read again it rejoins, every book is
    invalid (records were missed) and a fresh snapshot makes it valid."""
    sid = set_facts(ring_name, depth=0)
    levels_ring = shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 64, broadcast=True, consumer_timeout=0.5)
    books_ring = shmpipe.Ring.create(ring_name + "-b", ORDERBOOK_ENTRY, 16, broadcast=True, consumer_timeout=60)
    reader = books_ring.consumer()
    proc = spawn_cli("orderbook", "--levels", ring_name + "-l", "--books", ring_name + "-b", "--json",
                     "--name", ring_name + "-ob", "--capture", ring_name + "-nobody")
    try:
        wait_for(lambda: any(c["alive"] for c in levels_ring.stats()["consumers"]), "join", proc)
        with levels_ring.producer() as out:
            out.write_batch(levels(*snapshot({10.0: 1.0}, {11.0: 1.0}, sid=sid)))
            updates = [level(ACTION_SET, SIDE_BID, 9.0 - 0.01 * k, 1.0, sid=sid, ts=2 + k) for k in range(200)]
            # 16 entries fill the books ring; the order book then waits, silent on the levels ring, and
            # this producer evicts it when it needs room (after 0.5 s of silence)
            assert out.write_batch(levels(*updates), timeout=DEADLINE) == 200
            assert levels_ring.stats()["evictions"] >= 1
            got = []
            wait_for(lambda: got.append(reader.read(16, timeout=0)) or
                     control.request(ring_name + "-ob", "stats")["rejoins"] >= 1, "a rejoin", proc)
            out.write_batch(levels(*snapshot({10.0: 2.0}, {11.0: 2.0}, sid=sid, ts=1000)))
            wait_for(lambda: got.append(reader.read(16, timeout=0)) or
                     (len(got[-1]) and got[-1][-1]["bids"][0].tolist() == [10.0, 2.0]), "the repair", proc)
        counters = finish(proc)
    finally:
        _stop(proc)
        reader.close()
        for r in (levels_ring, books_ring):
            r.unlink()
            r.close()
    entries = np.concatenate(got)
    assert counters["rejoins"] >= 1 and counters["gaps"] >= 1 and counters["invalid_books"] >= 1
    assert counters["repaired"] >= 1 and entries[-1]["flags"] == 0
    assert (entries["flags"] & BOOK_FLAG_INVALID).any()


def test_a_levels_ring_with_every_consumer_slot_held_is_refused_in_one_line(ring_name):
    with shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 64, broadcast=True, max_consumers=1) as full, \
            full.consumer():
        proc = spawn_cli("orderbook", "--levels", ring_name + "-l", "--books", ring_name + "-b",
                         "--name", ring_name + "-ob")
        _, err = proc.communicate(timeout=DEADLINE)
        full.unlink()
    assert proc.returncode == 1 and err.startswith("shmpipe orderbook: levels ring")
    assert "consumer slots" in err and len(err.strip().splitlines()) == 1
    assert not Path(f"/dev/shm/shmpipe.{ring_name}-b").exists()      # the books ring it made is gone
