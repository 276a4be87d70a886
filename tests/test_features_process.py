"""``shmpipe features`` as a real process: books the test writes, signal.features messages whose
values equal the in-process engine's, counters on the way out, bad input."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from consumer_workers import (
    finish,
    random_books,
    receive,
    run_cli,
    sigterm_and_counters,
    spawn_cli,
    stop,
    wait_for_heartbeat,
)
from shmpipe_services.consumers.features import FeatureEngine

import shmpipe
from shmpipe import control, signals
from shmpipe.records import ORDERBOOK_ENTRY, TICK

pytest.importorskip("zmq")




# Every test here gets a control/signals directory of its own (conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture
def book_ring(ring_name):
    ring = shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 1 << 10)
    yield ring
    ring.close()
    ring.unlink()


def test_features_of_every_book_reach_subscribers_and_the_process_ends_with_the_producer(
        book_ring, private_runtime_dir):
    sids = [shmpipe.symbols.id_of("test-features", s) for s in ("AAA", "BBB", "CCC")]
    books = random_books(2000, seed=4, symbols=sids)
    engine = FeatureEngine(top_n=5, vol_window=20)
    expected = engine.update(books)
    pub = f"ipc://{private_runtime_dir}/features.pub"
    name = f"features-{uuid.uuid4().hex[:6]}"   # stats segments are host-wide: never the default name
    proc = spawn_cli("features", "--books", book_ring.name, "--pub", pub, "--vol-window", "20", "--json",
                     "--name", name)
    try:
        with signals.SignalSubscriber(pub, topics=["signal.features", "system.heartbeat"]) as sub:
            wait_for_heartbeat(sub, proc, name)
            with book_ring.producer() as out:
                for i in range(0, len(books), 300):
                    out.write_batch(books[i:i + 300])
            code, counters, err = finish(proc)
            got = receive(sub, "signal.features", counters.get("messages", -1), proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert counters["ended"] == "producer gone" and counters["consumed"] == len(books) and counters["lost"] == 0
    assert counters["books"] == len(expected) == sum(m.data["books"] for m in got)
    assert counters["skipped_invalid"] == engine.skipped.invalid > 0
    assert counters["skipped_empty_side"] == engine.skipped.empty_side > 0
    last = {}
    for m in got:                                   # per symbol, messages come in book order
        sid = m.data["symbol_id"]
        assert m.data["sequence"] > last.get(sid, {"sequence": -1})["sequence"]
        last[sid] = m.data
    assert set(last) == set(sids)
    for sid in sids:
        want = expected[expected["symbol_id"] == sid][-1]   # the final message carries the latest book
        data = last[sid]
        assert (data["exchange"], data["symbol"]) == ("test-features", shmpipe.symbols.lookup(sid)[1])
        assert data["sequence"] == int(want["sequence"]) and data["ts_ns"] == int(want["timestamp_ns"])
        for field in ("mid", "spread", "spread_bps", "microprice", "imbalance", "volatility"):
            assert data[field] == float(want[field]), field
        assert (data["top_n"], data["vol_window"]) == (5, 20)


def test_min_interval_holds_messages_back_and_sigterm_flushes_nothing_lost(book_ring, private_runtime_dir):
    books = random_books(600, seed=5, symbols=[1])
    books["flags"] = 0
    books["bid_count"] = np.maximum(books["bid_count"], 1)
    books["ask_count"] = np.maximum(books["ask_count"], 1)
    books["bids"][:, 0] = np.where(books["bids"][:, 0, :1] > 0, books["bids"][:, 0], 99.0)
    books["asks"][:, 0] = np.where(books["asks"][:, 0, :1] > 0, books["asks"][:, 0], 101.0)
    pub = f"ipc://{private_runtime_dir}/features.pub"
    name = f"features-{uuid.uuid4().hex[:6]}"
    proc = spawn_cli("features", "--books", book_ring.name, "--pub", pub, "--min-interval", "3600",
                     "--batch", "50", "--json", "--name", name)
    try:
        with signals.SignalSubscriber(pub, topics=["signal.features", "system.heartbeat"]) as sub, \
                book_ring.producer() as out:
            wait_for_heartbeat(sub, proc, name)
            out.write_batch(books)
            (first,) = receive(sub, "signal.features", 1, proc)
            deadline = time.monotonic() + 30
            while control.request(name, "status")["consumed"] < len(books):
                assert time.monotonic() < deadline, "the process did not read every book"
                time.sleep(0.01)
            code, counters, err = sigterm_and_counters(proc)
            (final,) = receive(sub, "signal.features", 1, proc)    # what was held back, at the end
    finally:
        stop(proc)
    assert code == 0, err
    assert counters["ended"] == "signal" and counters["messages"] == 2
    assert first.data["books"] + final.data["books"] == len(books) == counters["books"]
    assert final.data["sequence"] == int(books["sequence"][-1])


def test_bad_input_is_one_line(ring_name, private_runtime_dir):
    code, _, err = run_cli("features", "--books", ring_name, "--pub", f"ipc://{private_runtime_dir}/f.pub")
    assert code == 1 and err == f"shmpipe features: ring {ring_name!r} does not exist (start its producer " \
                                f"first, e.g. shmpipe capture)\n"
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring:
        try:
            code, _, err = run_cli("features", "--books", ring_name, "--pub", f"ipc://{private_runtime_dir}/f.pub")
        finally:
            ring.unlink()
    assert code == 1 and len(err.splitlines()) == 1 and "holds records of dtype" in err
    for option, value in (("--top-n", "0"), ("--top-n", "51"), ("--vol-window", "1"), ("--min-interval", "-1")):
        code, out, err = run_cli("features", "--books", ring_name, option, value)
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.splitlines()[-1].startswith(f"shmpipe features: error: argument {option}")
