"""``shmpipe capture`` on the control plane: status, stats, pause/resume (nothing written while
paused, nothing lost after), stop (the SIGTERM end), refused requests, and the service name."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import test_capture_process
from capture_helpers import fixture_lines
from shmpipe_services.capture.kraken import KrakenParser
from test_asset_sync import _stop, spawn_cli
from test_capture_process import parse_direct, raw_frames, registered, start_feed_server
from test_capture_resnapshot import finish, start_capture, stats_of, wait_for

from shmpipe import control

zmq = pytest.importorskip("zmq")

DEADLINE = 60.0
STATUS_KEYS = {"role", "name", "pid", "feed", "exchange", "ticks", "levels", "state", "connected", "symbols",
               "symbol_ids"}
# what --json prints at the end, less what only the end knows
COUNTER_KEYS = {"messages", "bytes", "ticks_written", "levels_written", "ring_full_waits", "reconnects",
                "resubscribes", "resnapshots", "parse_errors", "gaps", "messages_by_channel", "latency_us",
                "invalidates", "silences"}


# the fixtures those modules define, used here too
registry = test_capture_process.registry
rings = test_capture_process.rings
# Every test here gets a control/signals directory of its own (conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


def unique_name() -> str:
    return f"cap-{uuid.uuid4().hex[:8]}"


def test_status_stats_and_stop_of_a_websocket_capture(rings, registry, tmp_path):
    live, name = rings(), unique_name()
    server, url = start_feed_server("kraken_v2.jsonl", "--speed", "10")
    try:
        proc = start_capture("kraken", url, live, tmp_path / "raw", name)
        try:
            wait_for(lambda: stats_of(name).get("levels_written", 0) > 100, "levels written")
            assert name in control.list_services()
            status = control.request(name, "status")
            assert set(status) == STATUS_KEYS
            assert {k: status[k] for k in ("role", "name", "pid", "feed", "exchange", "ticks", "levels", "state",
                                           "connected", "symbols")} == \
                {"role": "capture", "name": name, "pid": proc.pid, "feed": "kraken", "exchange": "kraken",
                 "ticks": live.names[0], "levels": live.names[1], "state": "running", "connected": True,
                 "symbols": ["BTC/USD", "ETH/USD"]}
            assert status["symbol_ids"] == {s: registry.find("kraken", s) for s in ("BTC/USD", "ETH/USD")}
            stats = control.request(name, "stats")
            assert set(stats) == COUNTER_KEYS | {"connections"} and stats["connections"] == 1
            assert stats["messages"] > 0 and stats["parse_errors"] == {}
            assert control.request(name, "stop") == {"stopping": True}
            counters = finish(proc)   # exit 0, the counters printed as on SIGTERM
        finally:
            _stop(proc)
    finally:
        _stop(server)
    assert set(counters) == COUNTER_KEYS | {"connections", "ended"} and counters["ended"] == "stop requested"
    assert counters["messages"] >= stats["messages"] and counters["connections"] == 1
    assert name not in control.list_services()   # the endpoint went with it
    ticks, levels = live.read_all()
    assert (len(ticks), len(levels)) == (counters["ticks_written"], counters["levels_written"])


def test_pause_writes_nothing_and_resume_loses_nothing(rings, registry, tmp_path):
    """Paused, a websocket capture stops reading: the feed server is held back by TCP, and after the
    resume every line of the recording arrives and is written, in order."""
    live, name = rings(), unique_name()
    lines = fixture_lines("kraken_v2.jsonl")
    server, url = start_feed_server("kraken_v2.jsonl", "--speed", "20", "--exit-after", "1")
    try:
        proc = start_capture("kraken", url, live, tmp_path / "raw", name)
        try:
            wait_for(lambda: stats_of(name).get("levels_written", 0) > 200, "levels written")
            assert control.request(name, "pause") == {"state": "paused"}
            assert control.request(name, "status")["state"] == "paused"
            paused_at = control.request(name, "stats")
            time.sleep(1.0)   # the recording goes on at 20x meanwhile: ~140 frames, none may be written
            still = control.request(name, "stats")
            assert (still["messages"], still["levels_written"], still["ticks_written"]) == \
                (paused_at["messages"], paused_at["levels_written"], paused_at["ticks_written"])
            held_ticks, held_levels = live.read_all()
            assert (len(held_ticks), len(held_levels)) == (paused_at["ticks_written"], paused_at["levels_written"])
            assert control.request(name, "resume") == {"state": "running"}
            counters = finish(proc)
        finally:
            _stop(proc)
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        _stop(server)
    assert counters["ended"] == "feed closed" and counters["messages"] == len(lines)
    ticks, levels = live.read_all()
    frames, times, _markers, _ = raw_frames(tmp_path / "raw", "kraken")
    assert frames == lines   # every line, in order
    expected_ticks, expected_levels, _ = parse_direct(KrakenParser(registered(registry)), frames, times)
    all_ticks = np.concatenate([held_ticks, ticks])
    all_levels = np.concatenate([held_levels, levels])
    assert all_ticks.tobytes() == expected_ticks.tobytes() and all_levels.tobytes() == expected_levels.tobytes()


def test_synthetic_pause_stops_generating_and_resumes_the_same_stream(rings, registry):
    live, name = rings(), unique_name()
    proc = spawn_cli("capture", "--feed", "synthetic", "--rate", "20000", "--symbols", "2", *live.args(),
                     "--name", name, "--json")
    try:
        wait_for(lambda: control.ping(name) is not None, "the capture's endpoint")
        assert control.request(name, "status")["connected"] is True
        wait_for(lambda: stats_of(name).get("ticks_written", 0) > 2000, "ticks written")
        assert control.request(name, "pause") == {"state": "paused"}
        before = control.request(name, "stats")["ticks_written"]
        time.sleep(0.5)   # 10,000 events at the rate: none may come
        held, _ = live.read_all()
        assert len(held) == before == control.request(name, "stats")["ticks_written"]
        assert control.request(name, "resume") == {"state": "running"}
        wait_for(lambda: stats_of(name).get("ticks_written", 0) > before + 2000, "ticks after the resume")
        control.request(name, "stop")
        counters = finish(proc)
    finally:
        _stop(proc)
    rest, _ = live.read_all()
    ticks = np.concatenate([held, rest])
    assert len(ticks) == counters["ticks_written"]
    assert (ticks["sequence"] == np.arange(len(ticks))).all()   # one stream, no event lost or repeated


def test_refused_requests_are_error_replies_and_capture_runs_on(rings, registry, tmp_path):
    live, name = rings(), unique_name()
    server, url = start_feed_server("kraken_v2.jsonl", "--speed", "10", "--exit-after", "1")
    try:
        proc = start_capture("kraken", url, live, tmp_path / "raw", name)
        try:
            wait_for(lambda: stats_of(name).get("messages", 0) > 20, "frames captured")
            for args, message in [
                ({"exchange": "kraken", "symbol": "XRP/USD"},
                 "symbol 'XRP/USD' is not one of this capture's symbols (kraken: BTC/USD, ETH/USD)"),
                ({"exchange": "coinbase", "symbol": "BTC-USD"}, "this capture is kraken, not 'coinbase'"),
                ({"symbol_id": 987654}, "symbol_id 987654 is not one of this capture's symbols"),
                ({"symbol_id": "1"}, "symbol_id must be a non-negative integer, not '1'"),
                ({"symbol_id": True}, "symbol_id must be a non-negative integer, not True"),
                ({"symbol": ["BTC/USD"]}, '"exchange" and "symbol" must be strings'),
                ({}, 'resnapshot takes {"symbol_id": int} or {"exchange": str, "symbol": str}'),
            ]:
                with pytest.raises(control.ControlError, match=f"refused 'resnapshot': .*{_escape(message)}"):
                    control.request(name, "resnapshot", args)
            with pytest.raises(control.ControlError, match="unknown command 'frobnicate'"):
                control.request(name, "frobnicate")
            assert control.request(name, "status")["state"] == "running"
            counters = finish(proc)
        finally:
            _stop(proc)
    finally:
        _stop(server)
    # finish() checked: exit 0 and no traceback on stderr for any of the refusals
    assert counters["ended"] == "feed closed" and counters["resnapshots"] == 0 and counters["resubscribes"] == 0


def _escape(text: str) -> str:
    import re
    return re.escape(text)


def test_alpaca_has_no_books_to_resnapshot(rings, registry, tmp_path):
    live, name = rings(), unique_name()
    server, url = start_feed_server("alpaca_stream.jsonl", "--speed", "10")
    try:
        proc = start_capture("alpaca", url, live, tmp_path / "raw", name)
        try:
            with pytest.raises(control.ControlError, match="alpaca has no order books: there is no snapshot of AAPL"):
                control.request(name, "resnapshot", {"exchange": "alpaca", "symbol": "AAPL"})
            assert control.request(name, "status")["symbols"] == ["AAPL", "MSFT", "SPY"]
            control.request(name, "stop")
            counters = finish(proc)
        finally:
            _stop(proc)
    finally:
        _stop(server)
    assert counters["resnapshots"] == 0 and counters["ended"] == "stop requested"


def test_a_taken_name_is_one_line_and_exit_1(rings, registry):
    live, name = rings(), unique_name()
    with control.ControlServer(name, {}) as holder:
        holder.start_thread()
        proc = spawn_cli("capture", "--feed", "synthetic", *live.args(), "--name", name, "--seconds", "5")
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        finally:
            _stop(proc)
    assert proc.returncode == 1 and out == ""
    assert err.startswith(f"shmpipe capture: service name '{name}' is taken: pid ") and len(err.splitlines()) == 1


def test_a_name_the_control_plane_cannot_take_is_exit_2(rings, registry):
    live = rings()
    proc = spawn_cli("capture", "--feed", "synthetic", *live.args(), "--name", "x" * 65, "--seconds", "5")
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        _stop(proc)
    assert proc.returncode == 2 and out == "" and "Traceback" not in err
    assert err.startswith("shmpipe capture: --name: service name 'xxx") and len(err.splitlines()) == 1
