"""``shmpipe bars`` as a real process: a ring the test writes, a SignalSubscriber receiving
market.bar.* messages, SIGTERM, the control endpoint, bad arguments."""
from __future__ import annotations

import sqlite3
import time
import uuid

import numpy as np
import pytest
from capture_helpers import fixture_lines, run_lines
from consumer_workers import (
    finish,
    receive,
    run_cli,
    sigterm_and_counters,
    spawn_cli,
    stop,
    wait_for_heartbeat,
)
from shmpipe_services.capture.alpaca import AlpacaParser
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds
from shmpipe_services.consumers.bars import NS, BarAggregator, parse_timeframes

import shmpipe
from shmpipe import control, signals
from shmpipe import stats as shm_stats
from shmpipe.records import ORDERBOOK_ENTRY, TICK, TICK_FLAG_QUOTE, TICK_FLAG_TRADE

pytest.importorskip("zmq")




# Every test here gets a control/signals directory of its own (conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture
def tick_ring(ring_name):
    ring = shmpipe.Ring.create(ring_name, TICK, 1 << 14, broadcast=True)
    yield ring
    ring.close()
    ring.unlink()


def unique_name() -> str:
    """Stats segments are host-wide (/dev/shm), unlike the private runtime directory: a test's
    process must never take the default name another bars on this host may hold."""
    return f"bars-{uuid.uuid4().hex[:6]}"


def trades(ts_ns, prices, sizes, sid) -> np.ndarray:
    out = np.zeros(len(prices), TICK)
    out["timestamp_ns"], out["bid"], out["ask"], out["volume"] = ts_ns, prices, prices, sizes
    out["symbol_id"], out["flags"] = sid, TICK_FLAG_TRADE
    return out


def test_a_live_bar_closes_on_the_wall_clock_and_sigterm_ends_with_counters(tick_ring, private_runtime_dir):
    sid = shmpipe.symbols.id_of("test-bars", "AAA")
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    name = unique_name()
    proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--timeframes", "1s,1m",
                     "--grace", "2", "--name", name, "--json")
    try:
        with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub, \
                tick_ring.producer() as out:
            wait_for_heartbeat(sub, proc, name)
            # the next second, and a grace of 2 s: a trade is late only if this process stalls > 3 s
            second = (time.time_ns() // NS + 1) * NS
            batch = trades([second + 10, second + 20, second + 30], [10.5, 12.25, 11.0], [2, 1, 3], sid)
            quote = batch[:1].copy()
            quote["flags"], quote["bid"] = TICK_FLAG_QUOTE, 999.0
            out.write_batch(np.concatenate([batch[:1], quote, batch[1:]]))
            # no later trade: the bar has to close on the wall clock
            (bar,) = receive(sub, "market.bar.1s", 1, proc)
            assert bar.topic == "market.bar.1s" and bar.source == name
            assert bar.data == {"symbol_id": sid, "exchange": "test-bars", "symbol": "AAA", "timeframe": "1s",
                                "start_ns": second, "end_ns": second + NS, "open": 10.5, "high": 12.25,
                                "low": 10.5, "close": 11.0, "volume": 6.0,
                                "vwap": pytest.approx((10.5 * 2 + 12.25 + 11 * 3) / 6), "trades": 3,
                                "first_ns": second + 10, "last_ns": second + 30,
                                "complete": True, "partial": []}     # bars was up before that second began
            assert bar.ts_ns >= second + NS            # published after its interval ended
            status = control.request(name, "status")
            assert (status["state"], status["consumed"], status["trades"], status["lost"]) == ("running", 4, 3, 0)
            assert control.request(name, "pause")["state"] == "paused"
            assert control.request(name, "status")["state"] == "paused"
            assert control.request(name, "resume")["state"] == "running"
            live = shm_stats.read(name)
            assert live["live"] and live["pid"] == proc.pid and live["counters"]["trades"] == 3
            code, counters, err = sigterm_and_counters(proc)
        assert code == 0, err
        assert counters["ended"] == "signal" and counters["consumed"] == 4
        # the 1m bar: published if its minute ended meanwhile, else left open, never published half-made
        assert counters["bars"] + counters["open_bars_at_exit"] == 2 and counters["bars"] >= 1
        assert counters["lost"] == 0 and counters["late"] == 0
    finally:
        stop(proc)
    with pytest.raises(FileNotFoundError):     # a clean exit removes the live counters
        shm_stats.read(name)


@pytest.fixture(scope="module")
def fixture_ticks() -> np.ndarray:
    return run_lines(AlpacaParser(InMemorySymbolIds()), fixture_lines("alpaca_stream.jsonl")).ticks


def test_a_replay_publishes_every_bar_stores_them_and_ends_with_the_producer(tick_ring, private_runtime_dir,
                                                                            fixture_ticks, tmp_path):
    expected = BarAggregator(parse_timeframes("1s,1m,5m"), close_on_trade_time=True)
    want = np.concatenate([expected.add(fixture_ticks), expected.flush()])
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    db = tmp_path / "bars.sqlite"
    name = unique_name()
    proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--clock", "trades",
                     "--sqlite", str(db), "--batch", "100", "--json", "--name", name)
    try:
        with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
            wait_for_heartbeat(sub, proc, name)
            with tick_ring.producer() as out:
                for i in range(0, len(fixture_ticks), 500):
                    out.write_batch(fixture_ticks[i:i + 500])
            # the producer has gone: the process drains the ring, closes every bar and ends by itself
            got = receive(sub, "market.bar.", len(want), proc)
            code, counters, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert counters["ended"] == "producer gone" and counters["consumed"] == len(fixture_ticks)
    assert counters["bars"] == counters["stored"] == counters["published"] == len(want)
    assert counters["lost"] == 0 and counters["late"] == 0
    key = lambda d: (d["timeframe"], d["symbol_id"], d["start_ns"])
    got_rows = sorted((m.data for m in got), key=key)
    labels = {1: "1s", 60: "1m", 300: "5m"}
    want_rows = sorted(({"timeframe": labels[int(b["timeframe_s"])], "symbol_id": int(b["symbol_id"]),
                         "start_ns": int(b["start_ns"]), "open": float(b["open"]), "high": float(b["high"]),
                         "low": float(b["low"]), "close": float(b["close"]), "trades": int(b["trades"]),
                         "volume": float(b["volume"])} for b in want), key=key)
    for g, w in zip(got_rows, want_rows):
        assert {k: g[k] for k in w if k != "volume"} == {k: v for k, v in w.items() if k != "volume"}
        assert g["volume"] == pytest.approx(w["volume"], rel=1e-12)
    assert {m.topic for m in got} == {"market.bar.1s", "market.bar.1m", "market.bar.5m"}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT timeframe, symbol_id, start_ns, open, high, low, close, trades "
                            "FROM bars ORDER BY timeframe, symbol_id, start_ns").fetchall()
    assert sorted(rows) == sorted((w["timeframe"], w["symbol_id"], w["start_ns"], w["open"], w["high"], w["low"],
                                   w["close"], w["trades"]) for w in want_rows)


def test_bad_timeframes_is_a_usage_error(tick_ring):
    code, out, err = run_cli("bars", "--ticks", tick_ring.name, "--timeframes", "1s,5x")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == ("shmpipe bars: error: argument --timeframes: bad timeframe '5x' in '1s,5x': "
                                    "expected a count and a unit (s, m, h, d), e.g. 1s,1m,5m")


def test_missing_ring_is_one_line_and_exit_1(ring_name):
    code, out, err = run_cli("bars", "--ticks", ring_name, "--pub", "ipc:///tmp/unused-bars.pub")
    assert code == 1 and out == ""
    assert err == f"shmpipe bars: ring {ring_name!r} does not exist (start its producer first, e.g. shmpipe capture)\n"


def test_ring_of_the_wrong_dtype_is_one_line_and_exit_1(ring_name, private_runtime_dir):
    with shmpipe.Ring.create(ring_name, ORDERBOOK_ENTRY, 16) as ring:
        try:
            code, out, err = run_cli("bars", "--ticks", ring_name, "--pub", f"ipc://{private_runtime_dir}/b.pub")
        finally:
            ring.unlink()
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"shmpipe bars: ring {ring_name!r} holds records of dtype") and f"itemsize {ORDERBOOK_ENTRY.itemsize}" in err


def test_bad_endpoint_and_taken_name_are_one_line(tick_ring, private_runtime_dir, tmp_path):
    code, _, err = run_cli("bars", "--ticks", tick_ring.name, "--pub", "ipc:///no/such/dir/bars.pub")
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("shmpipe bars: cannot bind signals endpoint 'ipc:///no/such/dir/bars.pub': No such file")
    with control.ControlServer("bars", {}) as server:       # a live service holds the name
        server.start_thread()
        code, _, err = run_cli("bars", "--ticks", tick_ring.name, "--pub", f"ipc://{private_runtime_dir}/b.pub")
    assert code == 1 and len(err.splitlines()) == 1 and "service name 'bars' is taken" in err
    code, _, err = run_cli("bars", "--ticks", tick_ring.name, "--pub", f"ipc://{private_runtime_dir}/c.pub",
                           "--sqlite", str(tmp_path))              # a directory, not a database
    assert code == 1 and err.startswith(f"shmpipe bars: cannot use SQLite database {tmp_path}") \
        and len(err.splitlines()) == 1


def test_a_synthetic_capture_into_bars_loses_nothing(ring_name, private_runtime_dir):
    """Two real processes: ``shmpipe capture --feed synthetic`` writes a broadcast ring, ``shmpipe
    bars`` reads it; the test reads the same ring as a second consumer and checks every tick was
    consumed and the published bars are the bars of exactly those ticks."""
    from shmpipe.records import LEVEL_UPDATE
    ticks_ring = shmpipe.Ring.create(ring_name + "-t", TICK, 1 << 17, broadcast=True)
    levels_ring = shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 1 << 17, broadcast=True)
    mine = ticks_ring.consumer(start="oldest")
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    name = unique_name()
    bars = spawn_cli("bars", "--ticks", ticks_ring.name, "--pub", pub, "--clock", "trades", "--json", "--name", name)
    capture = None
    try:
        with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
            wait_for_heartbeat(sub, bars, name)
            capture = spawn_cli("capture", "--feed", "synthetic", "--rate", "20000", "--seconds", "2",
                                "--symbols", "4", "--seed", "9", "--ticks", ticks_ring.name,
                                "--levels", levels_ring.name, "--json", "--name", f"cap-{uuid.uuid4().hex[:6]}")
            cap_code, cap_counters, cap_err = finish(capture)
            assert cap_code == 0, cap_err
            code, counters, err = finish(bars)       # capture has gone: bars drains and ends
            assert code == 0, err
            written = cap_counters["ticks_written"]
            assert written > 0
            seen = mine.read(1 << 17, timeout=0)
            assert len(seen) == written
            expected = BarAggregator(parse_timeframes("1s,1m,5m"), close_on_trade_time=True)
            want = np.concatenate([expected.add(seen), expected.flush()])
            got = receive(sub, "market.bar.", len(want), bars)
    finally:
        for proc in (bars, capture):
            if proc is not None:
                stop(proc)
        mine.close()
        for ring in (ticks_ring, levels_ring):
            ring.close()
            ring.unlink()
    assert counters["consumed"] == written and counters["lost"] == 0 and counters["late"] == 0
    assert counters["trades"] == np.count_nonzero(seen["flags"] & TICK_FLAG_TRADE)
    assert sorted((m.data["timeframe"], m.data["symbol_id"], m.data["start_ns"], m.data["close"]) for m in got) == \
        sorted(({1: "1s", 60: "1m", 300: "5m"}[int(b["timeframe_s"])], int(b["symbol_id"]), int(b["start_ns"]),
                float(b["close"])) for b in want)


def test_a_bars_process_killed_by_sigkill_is_replaced_under_its_name(tick_ring, private_runtime_dir):
    """kill -9 leaves the control socket file and the stats segment behind; the next process of the
    same name takes both over (nobody answers on the socket, nobody holds the segment's lock), and
    the lossless ring's producer is not held up by the dead reader's slot."""
    name = unique_name()
    first = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", f"ipc://{private_runtime_dir}/a.pub",
                      "--name", name, "--follow")
    try:
        deadline = time.monotonic() + 30
        while control.ping(name) is None:
            assert time.monotonic() < deadline and first.poll() is None, "the first process never answered"
            time.sleep(0.05)
        first.kill()
        first.wait(30)
        with tick_ring.producer() as out:     # 4 rings' worth: the dead slot cannot block the producer
            for i in range(4):
                assert out.write_batch(trades(np.arange(1 << 14) + 1_700_000_000 * NS, np.ones(1 << 14),
                                              np.ones(1 << 14), 1), timeout=30) == 1 << 14
        second = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", f"ipc://{private_runtime_dir}/b.pub",
                           "--name", name, "--json", "--start", "newest", "--follow")
        try:
            while control.ping(name) is None:
                assert time.monotonic() < deadline and second.poll() is None, second.communicate()
                time.sleep(0.05)
            assert control.request(name, "status")["pid"] == second.pid
            assert shm_stats.read(name)["pid"] == second.pid
            assert control.request(name, "stop")["state"] == "stopping"
            code, counters, err = finish(second)
            assert code == 0 and counters["ended"] == "stopped", err
        finally:
            stop(second)
    finally:
        stop(first)


def test_a_store_that_fails_mid_run_is_one_line_and_exit_1(tick_ring, private_runtime_dir, tmp_path):
    db = tmp_path / "bars.sqlite"
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    name = unique_name()
    proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--clock", "trades", "--timeframes", "1s",
                     "--sqlite", str(db), "--name", name)
    try:
        with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub, \
                tick_ring.producer() as out:
            wait_for_heartbeat(sub, proc, name)
            t0 = 1_700_000_000 * NS
            out.write_batch(trades([t0, t0 + 2 * NS], [1.0, 2.0], [1, 1], 1))
            receive(sub, "market.bar.1s", 1, proc)                # stored, then published
            with sqlite3.connect(db) as conn:
                assert conn.execute("SELECT COUNT(*) FROM bars").fetchone() == (1,)
                conn.execute("DROP TABLE bars")                    # the store breaks under it
            out.write_batch(trades([t0 + 4 * NS], [3.0], [1], 1))
            _out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 1
    assert err == f"shmpipe bars: writing 1 bars to SQLite database {db} failed: no such table: bars\n"


def test_publishing_through_the_hosts_bus(tick_ring, private_runtime_dir):
    """Without --pub, bars connects to the host bus's input (SignalBus); subscribers read the bus."""
    with signals.SignalBus() as bus:
        name = unique_name()
        proc = spawn_cli("bars", "--ticks", tick_ring.name, "--clock", "trades", "--json", "--name", name)
        try:
            with signals.SignalSubscriber(bus.output_endpoint, topics=["market.bar.", "system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
                with tick_ring.producer() as out:
                    out.write_batch(trades([1_700_000_000 * NS + 5], [7.0], [2.0], 1))
                (bar,) = receive(sub, "market.bar.1s", 1, proc)
                code, counters, err = finish(proc)
        finally:
            stop(proc)
    assert code == 0, err
    assert (bar.data["open"], bar.data["volume"], bar.data["trades"]) == (7.0, 2.0, 1)
    assert counters["bars"] == 3      # 1s, 1m and 5m: the producer left, so every open bar is final


def test_a_paused_reader_of_a_lossy_ring_counts_what_it_lost(ring_name, private_runtime_dir):
    name = unique_name()
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    with shmpipe.Ring.create(ring_name, TICK, 1 << 10, broadcast=True, policy="lossy") as ring:
        proc = spawn_cli("bars", "--ticks", ring_name, "--pub", pub, "--clock", "trades", "--name", name, "--json")
        try:
            with signals.SignalSubscriber(pub, topics=["system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
            assert control.request(name, "pause")["state"] == "paused"
            total = 5 * (1 << 10)
            with ring.producer() as out:    # laps the paused reader: a lossy producer never waits
                out.write_batch(trades(1_700_000_000 * NS + np.arange(total), np.ones(total), np.ones(total), 1))
                assert control.request(name, "resume")["state"] == "running"
            code, counters, err = finish(proc)
        finally:
            stop(proc)
            ring.unlink()
    assert code == 0, err
    assert counters["lost"] > 0 and counters["consumed"] + counters["lost"] == total
    assert counters["trades"] == counters["consumed"]


def test_bars_from_a_level_update_ring_carry_the_venues_exact_prices(ring_name, private_runtime_dir):
    """--levels: the trade records' f64 prices; the AAPL close is 192.8925, not f32's 192.8925018310547."""
    from shmpipe.records import LEVEL_UPDATE
    run = run_lines(AlpacaParser(InMemorySymbolIds()), fixture_lines("alpaca_stream.jsonl"))
    expected = BarAggregator(parse_timeframes("1m"), close_on_trade_time=True)
    want = np.concatenate([expected.add(run.levels), expected.flush()])
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    name = unique_name()
    ring = shmpipe.Ring.create(ring_name, LEVEL_UPDATE, 1 << 14, broadcast=True)
    try:
        proc = spawn_cli("bars", "--levels", ring.name, "--pub", pub, "--clock", "trades", "--timeframes", "1m",
                         "--json", "--name", name)
        try:
            with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
                with ring.producer() as out:
                    out.write_batch(run.levels)
                got = receive(sub, "market.bar.", len(want), proc)
                code, counters, err = finish(proc)
        finally:
            stop(proc)
    finally:
        ring.close()
        ring.unlink()
    assert code == 0, err
    assert counters["trades"] == len(run.levels) and counters["bars"] == len(want)
    closes = sorted((m.data["symbol_id"], m.data["start_ns"], m.data["close"]) for m in got)
    assert closes == sorted((int(b["symbol_id"]), int(b["start_ns"]), float(b["close"])) for b in want)
    assert 192.8925 in [c for _, _, c in closes]


def test_a_bars_process_that_starts_mid_period_publishes_that_bar_marked_partial(tick_ring, private_runtime_dir,
                                                                                  tmp_path):
    """The producer ran before bars: the second it was in when bars read its first record is
    published with complete false (partial: start); the next second, seen whole, complete."""
    sid = shmpipe.symbols.id_of("test-bars", "AAA")
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    db = tmp_path / "bars.sqlite"
    name = unique_name()
    with tick_ring.producer() as out:
        t0 = time.time_ns()
        if t0 % NS == 0:                      # a trade exactly on the boundary would open its second
            t0 += 1
        second = t0 - t0 % NS
        out.write_batch(trades([t0], [10.0], [1.0], sid))       # in the ring before bars starts
        # a grace of 60 s: no bar closes on the wall clock here; the producer's leaving closes them
        proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--timeframes", "1s", "--grace", "60",
                         "--sqlite", str(db), "--name", name, "--json")
        try:
            with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
                out.write_batch(trades([second + NS + 10, second + NS + 20], [11.0, 12.0], [1.0, 2.0], sid))
                quote = trades([second + 2 * NS + 5], [12.5], [0.0], sid)
                quote["flags"] = TICK_FLAG_QUOTE          # the stream went past the end of that second
                out.write_batch(quote)
                out.close()
                got = receive(sub, "market.bar.1s", 2, proc)
                code, counters, err = finish(proc)
        finally:
            stop(proc)
    assert code == 0, err
    by_start = {m.data["start_ns"]: m.data for m in got}
    assert sorted(by_start) == [second, second + NS]
    first, whole = by_start[second], by_start[second + NS]
    assert (first["complete"], first["partial"], first["trades"]) == (False, ["start"], 1)
    assert (whole["complete"], whole["partial"], whole["trades"], whole["close"]) == (True, [], 2, 12.0)
    assert counters["bars"] == 2 and counters["partial_bars"] == 1
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT start_ns, complete FROM bars ORDER BY start_ns").fetchall()
    assert rows == [(second, 0), (second + NS, 1)]


def test_bars_open_across_records_lost_by_a_lapped_reader_are_marked_partial(ring_name, private_runtime_dir):
    """A lossy ring laps the paused reader: the bar of the period the lost records fell in says
    "lost"; a second seen whole before the loss stays complete."""
    name = unique_name()
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    base = 1_700_000_100 * NS                   # a whole 5 minutes
    with shmpipe.Ring.create(ring_name, TICK, 1 << 10, broadcast=True, policy="lossy") as ring:
        proc = spawn_cli("bars", "--ticks", ring_name, "--pub", pub, "--clock", "trades", "--name", name, "--json")
        try:
            with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
                with ring.producer() as out:
                    seen = np.concatenate([trades([base], [9.0], [0.0], 1), trades([base + 10], [10.0], [1.0], 1),
                                           trades([base + 2 * NS], [9.5], [0.0], 1)])
                    seen["flags"][[0, 2]] = TICK_FLAG_QUOTE      # quotes: the stream from base to base + 2 s
                    out.write_batch(seen)
                    deadline = time.monotonic() + 20
                    while control.request(name, "status")["consumed"] < 3 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert control.request(name, "pause")["state"] == "paused"
                    total = 5 * (1 << 10)         # laps the paused reader: a lossy producer never waits
                    out.write_batch(trades(base + 3 * NS + np.arange(total), np.ones(total), np.ones(total), 1))
                    assert control.request(name, "resume")["state"] == "running"
                code, counters, err = finish(proc)
                got = receive(sub, "market.bar.", counters.get("bars", -1), proc)
        finally:
            stop(proc)
            ring.unlink()
    assert code == 0, err
    assert counters["lost"] > 0
    by_key = {(m.data["timeframe"], m.data["start_ns"]): m.data for m in got}
    assert by_key[("1s", base)]["complete"] is True and by_key[("1s", base)]["trades"] == 1
    assert "lost" in by_key[("1s", base + 3 * NS)]["partial"] and not by_key[("1s", base + 3 * NS)]["complete"]
    assert "lost" in by_key[("5m", base)]["partial"]
    assert counters["partial_bars"] == counters["bars"] - 1 == 3


def test_a_backlog_is_read_before_the_wall_clock_closes_its_bars(tick_ring, private_runtime_dir, tmp_path):
    """Bars starts on a ring that already holds two whole seconds of trades, seconds old, and reads
    them 100 at a time: the wall clock has passed both seconds, yet no bar closes before the backlog
    is read, so each bar holds all its trades (none late) instead of the first batch's share
    published as complete."""
    sid = shmpipe.symbols.id_of("test-bars", "AAA")
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    db = tmp_path / "bars.sqlite"
    name = unique_name()
    second = (time.time_ns() // NS - 3) * NS
    n = 150
    backlog = np.concatenate([trades([second], [9.0], [0.0], sid),
                              trades(second + np.arange(n) * 1000, np.full(n, 10.0), np.ones(n), sid),
                              trades(second + NS + np.arange(n) * 1000, np.full(n, 11.0), np.ones(n), sid),
                              trades([second + 2 * NS], [11.5], [0.0], sid)])
    backlog["flags"][[0, -1]] = TICK_FLAG_QUOTE        # the stream from `second` to the end of the next
    with tick_ring.producer() as out:
        out.write_batch(backlog)
        # the bars go to SQLite: they are out before a subscriber could have joined the bus
        proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--timeframes", "1s", "--grace", "0.2",
                         "--batch", "100", "--sqlite", str(db), "--name", name, "--json")
        try:
            deadline = time.monotonic() + 30
            status = {}
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = control.request(name, "status", timeout=1.0)
                except Exception:  # noqa: BLE001 - not up yet
                    status = {}
                if status.get("consumed") == len(backlog) and status.get("open_bars") == 0:
                    break
                time.sleep(0.05)
            code, counters, err = sigterm_and_counters(proc)
        finally:
            stop(proc)
    assert code == 0, err
    assert counters["consumed"] == len(backlog) and counters["late"] == 0, counters
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT start_ns, trades, complete FROM bars ORDER BY start_ns").fetchall()
    assert rows == [(second, n, 1), (second + NS, n, 1)]


def test_a_reader_from_the_newest_record_marks_the_second_whose_start_it_skipped_partial(tick_ring,
                                                                                         private_runtime_dir):
    """--start newest skips the ring's backlog: a trade of the same second that comes after the
    attach does not make that second's bar complete."""
    sid = shmpipe.symbols.id_of("test-bars", "AAA")
    pub = f"ipc://{private_runtime_dir}/bars.pub"
    name = unique_name()
    with tick_ring.producer() as out:
        t0 = time.time_ns() | 1                          # never exactly on a second's boundary
        second = t0 - t0 % NS
        out.write_batch(trades([t0], [10.0], [1.0], sid))          # skipped by the reader
        proc = spawn_cli("bars", "--ticks", tick_ring.name, "--pub", pub, "--timeframes", "1s", "--grace", "60",
                         "--start", "newest", "--name", name, "--json")
        try:
            with signals.SignalSubscriber(pub, topics=["market.bar.", "system.heartbeat"]) as sub:
                wait_for_heartbeat(sub, proc, name)
                later = trades([t0 + 1, second + NS + 10], [11.0, 12.0], [1.0, 1.0], sid)
                end = trades([second + 2 * NS], [12.5], [0.0], sid)
                end["flags"] = TICK_FLAG_QUOTE
                out.write_batch(np.concatenate([later, end]))
                out.close()
                got = receive(sub, "market.bar.1s", 2, proc)
                code, counters, err = finish(proc)
        finally:
            stop(proc)
    assert code == 0, err
    assert counters["consumed"] == 3
    assert sorted((m.data["start_ns"], m.data["trades"], m.data["complete"]) for m in got) == [
        (second, 1, False), (second + NS, 1, True)]
