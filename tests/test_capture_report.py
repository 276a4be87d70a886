"""``shmpipe replay --report`` (what a capture lost, from its .wslog alone) and ``shmpipe.stats``
(a running capture's counters, read live from another process)."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from capture_helpers import CAPTURE_FIXTURES
from test_asset_sync import _stop, spawn_cli
from test_capture_process import DEADLINE, FIXTURES, capture, registry, rings, run_cli, start_feed_server  # noqa: F401

from shmpipe import stats
from shmpipe.wslog import encode_entry
from shmpipe.wslog.format import marker_payload

SECOND = 1_000_000_000
T0 = 1_718_116_200 * SECOND


def report(*args: str) -> dict:
    code, out, err = run_cli("replay", "--report", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_report_of_the_sample_capture(ring_name):
    got = report(str(CAPTURE_FIXTURES / "capture_sample.wslog"))
    assert got["stale_after_s"] == 5.0 and got["stopped"] == []
    # the sample holds the first 916 Coinbase lines (before the missing sequence_num 2600): nothing lost
    assert {k: v["messages"] for k, v in got["exchanges"].items()} == {"coinbase": 916, "kraken": 473,
                                                                       "alpaca": 306}
    for ex in got["exchanges"].values():
        assert ex["disconnects"] == [] and ex["parse_errors"] == {} and ex["symbols"] == {}
    assert not list(Path("/dev/shm").glob(f"shmpipe.{ring_name}*"))


def test_report_of_a_capture_with_a_disconnect(rings, registry, tmp_path):
    live = rings()
    server, url = start_feed_server(FIXTURES["coinbase"], "--disconnect-after", "300",
                                    "--faulty-connections", "1", "--exit-after", "2")
    try:
        capture("coinbase", url, live, tmp_path / "raw", "--backoff", "0.05")
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        _stop(server)
    got = report(str(tmp_path / "raw"))["exchanges"]["coinbase"]
    assert got["connections"] == 2
    # the dropped connection: from its disconnect marker to the reconnect; then the normal close
    dropped, closed = got["disconnects"]
    assert dropped["start_ns"] < dropped["end_ns"] and dropped["duration_s"] == pytest.approx(
        (dropped["end_ns"] - dropped["start_ns"]) / 1e9)
    assert closed["end_ns"] is None and "1000" in closed["reason"]
    # the fixture lacks sequence_num 2600; the second connection replays the whole file, the first
    # was cut before it, so the report has that one gap, connection-wide
    gaps = got["symbols"]["*"]["gaps"]
    assert [(g["kind"], g["missing"]) for g in gaps] == [("sequence", 1)]
    assert "sequence_num 2601 after 2599" in gaps[0]["detail"]
    assert dropped["end_ns"] < gaps[0]["at_ns"]
    assert got["gap_counts"] == {"sequence": 1} and got["parse_errors"] == {}
    # the text form says the same, one line per finding
    code, out, err = run_cli("replay", "--report", str(tmp_path / "raw"))
    assert code == 0, err
    assert sum("disconnect " in line for line in out.splitlines()) == 2
    assert any("gap (sequence, 1 missing)" in line for line in out.splitlines())


def _trade(symbol: str, i: int) -> bytes:
    return json.dumps([{"T": "t", "S": symbol, "i": i, "x": "V", "p": 100.5, "s": 10, "c": ["@"], "z": "C",
                        "t": "2024-06-11T14:30:00Z"}]).encode()


def test_report_of_a_quiet_period_and_a_hand_made_disconnect(tmp_path, ring_name):
    """AAPL trades every second except from 2 s to 10 s; MSFT every second throughout; Alpaca (3)."""
    entries = [encode_entry(T0, 0, marker_payload(3, "connect", "ws://x"))]
    for s in range(13):
        if s == 5:
            entries.append(encode_entry(T0 + s * SECOND, 0, marker_payload(3, "connect", "ws://x")))
        if not 2 < s < 10:
            entries.append(encode_entry(T0 + s * SECOND, 3, _trade("AAPL", s)))
        entries.append(encode_entry(T0 + s * SECOND + 1000, 3, _trade("MSFT", s)))
        if s == 4:
            entries.append(encode_entry(T0 + s * SECOND + 2000, 0, marker_payload(3, "disconnect", "reset")))
    entries.append(encode_entry(T0 + 13 * SECOND, 3, b"{not json"))
    path = tmp_path / "hand.wslog"
    path.write_bytes(b"".join(entries))

    got = report("--stale-after", "5", str(path))["exchanges"]["alpaca"]
    assert got["messages"] == 6 + 13 + 1 and got["parse_errors"] == {"invalid_json": 1}
    assert set(got["symbols"]) == {"AAPL"}
    [stale] = got["symbols"]["AAPL"]["stale"]
    assert (stale["channel"], stale["start_ns"], stale["end_ns"]) == ("trades", T0 + 2 * SECOND, T0 + 10 * SECOND)
    assert stale["silent_s"] == 8.0 and not stale["until_end"]
    [span] = got["disconnects"]
    assert (span["start_ns"], span["end_ns"], span["duration_s"]) == (T0 + 4 * SECOND + 2000, T0 + 5 * SECOND,
                                                                     pytest.approx(1 - 2e-6))
    # a longer limit: nothing is stale
    assert report("--stale-after", "9", str(path))["exchanges"]["alpaca"]["symbols"] == {}


def test_report_needs_no_rings_and_replay_still_does(tmp_path, ring_name):
    sample = str(CAPTURE_FIXTURES / "capture_sample.wslog")
    code, _out, err = run_cli("replay", sample)
    assert code == 1 and err.strip() == "shmpipe replay: --ticks and --levels are required (or --report, " \
                                        "which needs no rings)"
    code, _out, err = run_cli("replay", "--report", "--ticks", ring_name, sample)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--report reads the files only" in err


# -- live counters ----------------------------------------------------------------------------------

def _read_when(name: str, ok, what: str) -> dict:
    """stats.read(name) once ``ok`` holds for it; the deadline is for a hung child only."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            got = stats.read(name)
            if ok(got):
                return got
        except (FileNotFoundError, stats.StatsFormatError):   # not made yet / header not complete yet
            pass
        assert time.monotonic() < deadline, f"{what} within {DEADLINE} s"
        time.sleep(0.01)


@pytest.fixture
def stats_name(ring_name):
    name = ring_name + "-stats"
    yield name
    leftover = stats.unlink(name)
    assert not leftover, f"the test left {stats.segment_path(name)}"


def test_live_counters_grow_and_go_at_exit(rings, registry, stats_name):
    live = rings()
    proc = spawn_cli("capture", "--feed", "synthetic", "--rate", "20000", "--symbols", "2",
                     *live.args(), "--name", stats_name, "--json")
    try:
        first = _read_when(stats_name, lambda s: s["counters"]["ticks_written"] > 0, "ticks published")
        assert first["live"] and not first["stale"] and first["pid"] == proc.pid
        assert set(first["counters"]) >= {"messages", "bytes", "parse_errors", "gaps", "reconnects",
                                          "ring_full_waits", "ticks_written", "levels_written",
                                          "latency_p50_us", "latency_p99_us"}
        later = _read_when(stats_name, lambda s: s["counters"]["messages"] > first["counters"]["messages"],
                           "messages growing")
        assert later["updated_ns"] > first["updated_ns"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    final = json.loads(out)
    assert final["messages"] >= later["counters"]["messages"]
    with pytest.raises(FileNotFoundError):
        stats.read(stats_name)


def test_killed_capture_leaves_a_stale_segment_that_a_new_one_replaces(rings, registry, stats_name):
    live = rings()
    proc = spawn_cli("capture", "--feed", "synthetic", "--rate", "20000", "--symbols", "2",
                     *live.args(), "--name", stats_name)
    try:
        _read_when(stats_name, lambda s: s["counters"]["messages"] > 0, "messages published")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    finally:
        _stop(proc)
    dead = stats.read(stats_name)
    assert not dead["live"] and dead["stale"] and dead["counters"]["messages"] > 0
    # a new publisher of the name takes over a dead one's segment, but not a live one's
    with stats.publish(stats_name, ["messages"]) as pub:
        assert stats.read(stats_name)["counters"] == {"messages": 0}
        pub.update({"messages": 5})
        with pytest.raises(stats.StatsBusyError):
            stats.publish(stats_name, ["messages"])
    with pytest.raises(FileNotFoundError):
        stats.read(stats_name)


def test_capture_with_a_taken_name_is_one_line(rings, registry):
    live = rings()
    default = f"{live.names[0]}.synthetic"   # --name defaults to TICKS.FEED
    with stats.publish(default, ["messages"]):
        code, _out, err = run_cli("capture", "--feed", "synthetic", "--seconds", "0.1", *live.args())
    assert code == 1 and len(err.strip().splitlines()) == 1 and "a live process" in err, err
    assert not stats.unlink(default)
