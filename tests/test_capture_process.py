"""``shmpipe capture`` and ``shmpipe replay`` as real processes: the feed server plays a fixture, the
capture child writes the rings this test holds consumers on, and what arrives is compared record for
record with the fixture parsed directly (with the receive times the raw capture recorded), with the
known answers, and with a replay of the raw capture into fresh rings."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections import Counter

import numpy as np
import pytest
from capture_helpers import CAPTURE_FIXTURES, KNOWN, fixture_lines, played_as_recorded
from shmpipe_services.capture.alpaca import AlpacaParser
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.record_batch import RecordBatch
from test_asset_sync import LineReader, _stop, spawn_cli

import shmpipe
from shmpipe import symbols
from shmpipe.journal import read_journal
from shmpipe.records import ACTION_INVALIDATE, LEVEL_FLAG_LAST, LEVEL_UPDATE, TICK, TICK_FLAG_GAP_BEFORE
from shmpipe.symbols import SymbolRegistry
from shmpipe.wslog import read_wslog, wslog_files

DEADLINE = 60.0          # only a hung child comes near it
TICKS_CAP, LEVELS_CAP = 1 << 16, 1 << 18
FIXTURES = {"coinbase": "coinbase_advanced.jsonl", "kraken": "kraken_v2.jsonl", "alpaca": "alpaca_stream.jsonl"}
PARSERS = {"coinbase": CoinbaseParser, "kraken": KrakenParser, "alpaca": AlpacaParser}
EXCHANGE_IDS = {"coinbase": 4, "kraken": 5, "alpaca": 6}   # Tick.source's codes (issue 21)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A symbol registry of this test alone, shared with the children through the environment."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "symbols.jsonl"
    monkeypatch.setenv("SHMPIPE_SYMBOLS", name)
    monkeypatch.setenv("SHMPIPE_SYMBOLS_FILE", str(path))
    reg = SymbolRegistry.open(name, path=path)
    yield reg
    reg.close()
    symbols.remove_segment(name)


class Rings:
    """A ticks and a levels broadcast ring with one consumer each, made before any writer starts."""

    def __init__(self, name: str) -> None:
        self.names = (name + "-t", name + "-l")
        self.ticks = shmpipe.Ring.create(self.names[0], TICK, TICKS_CAP, broadcast=True)
        self.levels = shmpipe.Ring.create(self.names[1], LEVEL_UPDATE, LEVELS_CAP, broadcast=True)
        self.ticks_in = self.ticks.consumer()
        self.levels_in = self.levels.consumer()

    def args(self) -> list[str]:
        return ["--ticks", self.names[0], "--levels", self.names[1]]

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ticks_in.read(TICKS_CAP, timeout=0), self.levels_in.read(LEVELS_CAP, timeout=0)

    def close(self) -> None:
        for ring in (self.ticks, self.levels):
            ring.unlink()
            ring.close()


@pytest.fixture
def rings(ring_name):
    made = []

    def make(suffix: str = "") -> Rings:
        made.append(Rings(ring_name + suffix))
        return made[-1]
    yield make
    for r in made:
        r.close()


def start_feed_server(fixture: str, *options: str) -> tuple[subprocess.Popen, str]:
    proc = spawn_cli("feed-server", "--port", "0", "--speed", "0", *options, str(CAPTURE_FIXTURES / fixture))
    line = LineReader(proc.stdout).next(timeout=DEADLINE)
    assert line.startswith("listening on ws://127.0.0.1:"), line
    return proc, line.split()[2]


def run_cli(*args: str) -> tuple[int, str, str]:
    proc = spawn_cli(*args)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        _stop(proc)
    return proc.returncode, out, err


def capture(feed: str, url: str, rings: Rings, raw_dir, *extra: str) -> dict:
    code, out, err = run_cli("capture", "--feed", feed, "--url", url, *rings.args(), "--raw-dir", str(raw_dir),
                             "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def raw_frames(raw_dir, exchange: str):
    """(frames, receive times, markers) of one exchange's raw capture, in file order."""
    frames, times, markers = [], [], []
    for path in wslog_files(raw_dir / exchange):
        for entry in read_wslog(path):
            if entry.marker is None:
                frames.append(entry.payload)
                times.append(entry.recv_ns)
            else:   # with the number of frames before it
                markers.append((entry.marker, entry.payload, len(frames)))
    return frames, times, [(m, p) for m, p, _ in markers], [n for m, _, n in markers if m == "connect"]


def disconnects(raw_dir, exchange: str) -> dict[int, int]:
    """{frames before it: its time} of each disconnect marker but a normal end's (capture invalidated
    the connection's books there)."""
    out, n = {}, 0
    for path in wslog_files(raw_dir / exchange):
        for entry in read_wslog(path):
            if entry.marker is None:
                n += 1
            elif entry.marker == "disconnect" and not bytes(entry.payload).startswith(b"closed normally"):
                out[n] = entry.recv_ns
    return out


def parse_direct(parser, frames, times, reset_at=(), lost_at=None):
    """The records the fixture frames give, parsed here with the recorded receive times; the
    connection is reset before the frame indexes in ``reset_at`` (where capture reconnected), after
    its books are invalidated at the times ``lost_at`` gives (where capture lost the connection)."""
    ticks, levels, first_after_reset = [], [], {}
    for i, (frame, recv_ns) in enumerate(zip(frames, times)):
        if lost_at and i in lost_at:
            batch = RecordBatch()
            parser.invalidate_all(batch, lost_at[i])
            t, lv = batch.take()
            ticks.append(t)
            levels.append(lv)
        if i in reset_at:
            parser.reset_connection()
            first_after_reset[i] = (sum(map(len, ticks)), sum(map(len, levels)))
        t, lv = parser.parse(frame, recv_ns)
        ticks.append(t)
        levels.append(lv)
    return np.concatenate(ticks), np.concatenate(levels), first_after_reset


def registered(registry: SymbolRegistry):
    return lambda exchange, symbol, **facts: registry.register(exchange, symbol, **facts)


@pytest.mark.parametrize("feed", ["coinbase", "kraken", "alpaca"])
def test_capture_rings_equal_the_fixture_parsed_and_replay_reproduces_them(feed, rings, registry, tmp_path):
    live = rings()
    server, url = start_feed_server(FIXTURES[feed], "--exit-after", "1")
    try:
        counters = capture(feed, url, live, tmp_path / "raw")
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        _stop(server)
    ticks, levels = live.read_all()

    frames, times, markers, _ = raw_frames(tmp_path / "raw", feed)
    # every frame, as received (plus the server's answers should capture resubscribe after a gap)
    answers, withheld = played_as_recorded(frames, fixture_lines(FIXTURES[feed]))
    assert [m for m, _ in markers] == ["connect"] + ["subscribe"] * (len(markers) - 2) + ["disconnect"]
    parser = PARSERS[feed](registered(registry))
    expected_ticks, expected_levels, _ = parse_direct(parser, frames, times)
    assert ticks.tobytes() == expected_ticks.tobytes()
    assert levels.tobytes() == expected_levels.tobytes()
    assert (counters["ticks_written"], counters["levels_written"]) == (len(ticks), len(levels))
    assert counters["messages"] == len(frames) and counters["bytes"] == sum(map(len, frames))
    assert counters["ended"] == "feed closed" and counters["reconnects"] == 0
    assert counters["parse_errors"] == {} and counters["latency_us"]["p50"] >= 1

    if feed == "coinbase":
        known = KNOWN["coinbase_advanced.jsonl"]
        assert {c: counters["messages_by_channel"][c] - answers[c] + withheld[c]
                for c in known["message_counts_by_channel"]} == known["message_counts_by_channel"]
        # the one sequence gap of the fixture: an invalidate (gap-before) per book, ahead of its line
        gap_line = known["sequence_num"]["gaps"][0]["line"]
        assert counters["gaps"] == {"sequence": 1}
        flagged = np.flatnonzero(levels["flags"] & TICK_FLAG_GAP_BEFORE)
        assert len(flagged) == 2 and (levels["action"][flagged] == ACTION_INVALIDATE).all()
        fresh = CoinbaseParser(registered(registry))
        before = sum(len(fresh.parse(f, t)[1]) for f, t in zip(frames[:gap_line - 1], times[:gap_line - 1]))
        assert flagged[0] == before
    elif feed == "kraken":
        known = KNOWN["kraken_v2.jsonl"]
        assert {c: counters["messages_by_channel"][c] for c in known["message_counts"]} == known["message_counts"]
        assert counters["gaps"] == {}
        assert not (levels["flags"] & TICK_FLAG_GAP_BEFORE).any()
    else:
        known = KNOWN["alpaca_stream.jsonl"]["items_by_type"]
        assert len(ticks) == known["q"] + known["t"] and len(levels) == known["t"]
        assert counters["gaps"] == {}

    # the raw capture replayed into fresh rings: byte for byte what the live run wrote
    again = rings("-r")
    code, out, err = run_cli("replay", *again.args(), "--json", str(tmp_path / "raw"))
    assert code == 0, err
    replayed = json.loads(out)
    rticks, rlevels = again.read_all()
    assert rticks.tobytes() == ticks.tobytes() and rlevels.tobytes() == levels.tobytes()
    assert replayed["per_exchange"] == {feed: len(frames)} and replayed["stopped"] == []
    assert replayed["gaps"] == counters["gaps"]


def test_disconnect_reconnects_resubscribes_and_flags_the_gap(rings, registry, tmp_path):
    live = rings()
    lines = fixture_lines(FIXTURES["coinbase"])
    server, url = start_feed_server(FIXTURES["coinbase"], "--disconnect-after", "300",
                                    "--faulty-connections", "1", "--exit-after", "2")
    try:
        counters = capture("coinbase", url, live, tmp_path / "raw", "--backoff", "0.05")
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        _stop(server)
    ticks, levels = live.read_all()
    frames, times, markers, connects_at = raw_frames(tmp_path / "raw", "coinbase")
    # The first connection got the frames that reached the socket before the drop (the server sent
    # 300, but an abort discards what was still buffered), the second the whole file again.
    assert len(connects_at) == 2 and connects_at[0] == 0
    cut = connects_at[1]
    assert 0 < cut <= 300 and frames[:cut] == lines[:cut]
    played_as_recorded(frames[cut:], lines)
    kinds = [m for m, _ in markers]
    assert kinds.count("connect") == 2 and kinds.count("disconnect") == 2
    first, second = [i for i, k in enumerate(kinds) if k == "connect"]
    # resubscribed: the same four frames (heartbeats, level2, ticker, market_trades) on each connection
    assert kinds[first + 1:first + 5] == kinds[second + 1:second + 5] == ["subscribe"] * 4
    assert markers[first + 1:first + 5] == markers[second + 1:second + 5]
    assert counters["reconnects"] == 1 and counters["ended"] == "feed closed"
    assert counters["gaps"].get("reconnect") == 1

    lost = disconnects(tmp_path / "raw", "coinbase")
    assert list(lost) == [cut]
    expected_ticks, expected_levels, at = parse_direct(CoinbaseParser(registered(registry)), frames, times,
                                                       reset_at={cut}, lost_at=lost)
    assert ticks.tobytes() == expected_ticks.tobytes() and levels.tobytes() == expected_levels.tobytes()
    n_ticks, n_levels = at[cut]
    # the first Tick after the reconnect carries the gap flag; the books were invalidated (stale) when
    # the connection dropped, not at the reconnect: one invalidate per book, stamped with the drop
    assert ticks["flags"][n_ticks] & TICK_FLAG_GAP_BEFORE
    assert not (ticks["flags"][:n_ticks] & TICK_FLAG_GAP_BEFORE).any()
    dropped = levels[n_levels - 2:n_levels]
    assert dropped["action"].tolist() == [ACTION_INVALIDATE] * 2 and (dropped["timestamp_ns"] == lost[cut]).all()
    assert dropped["flags"].tolist() == [LEVEL_FLAG_LAST] * 2
    # (the fixture's own sequence gap, replayed on the second connection, adds its invalidates)
    assert counters["invalidates"] == np.count_nonzero(levels["action"] == ACTION_INVALIDATE) > 2
    assert not (levels["action"][:n_levels - 2] == ACTION_INVALIDATE).any()

    again = rings("-r")
    code, out, err = run_cli("replay", *again.args(), "--json", str(tmp_path / "raw"))
    assert code == 0, err
    rticks, rlevels = again.read_all()
    assert rticks.tobytes() == ticks.tobytes() and rlevels.tobytes() == levels.tobytes()
    assert json.loads(out)["reconnects"] == 1


def test_replay_of_the_sample_capture_counts_per_exchange(rings, registry):
    sample = KNOWN_WSLOG["capture_sample.wslog"]
    out_rings = rings()
    code, out, err = run_cli("replay", *out_rings.args(), "--json", str(CAPTURE_FIXTURES / "capture_sample.wslog"))
    assert code == 0, err
    counters = json.loads(out)
    names = sample["per_exchange_meaning"]
    assert counters["per_exchange"] == {names[k]: v for k, v in sample["per_exchange"].items()}
    assert counters["messages"] == sample["records"] and counters["stopped"] == []
    ticks, levels = out_rings.read_all()
    assert (len(ticks), len(levels)) == (counters["ticks_written"], counters["levels_written"])
    # exactly the sample's frames parsed here in file order (the sample is one time-ordered file)
    parsers = {1: CoinbaseParser(registered(registry)), 2: KrakenParser(registered(registry)),
               3: AlpacaParser(registered(registry))}
    expected = [parsers[e.exchange_id].parse(e.payload, e.recv_ns)
                for e in read_wslog(CAPTURE_FIXTURES / "capture_sample.wslog") if e.marker is None]
    assert ticks.tobytes() == np.concatenate([t for t, _ in expected]).tobytes()
    assert levels.tobytes() == np.concatenate([lv for _, lv in expected]).tobytes()
    assert set(ticks["source"].tolist()) == {p.source for p in parsers.values()}


KNOWN_WSLOG = json.loads((CAPTURE_FIXTURES / "known_answers_wslog.json").read_text())


def test_truncated_capture_replays_to_its_last_complete_entry(rings, registry, tmp_path):
    known = KNOWN_WSLOG["bad"]["truncated.wslog"]
    out_rings = rings()
    code, out, err = run_cli("replay", *out_rings.args(), "--json", str(CAPTURE_FIXTURES / "bad" / "truncated.wslog"))
    assert code == 0, err
    counters = json.loads(out)
    assert counters["entries"] == known["complete_records"]
    [stop] = counters["stopped"]
    assert f"stopped at byte {known['truncated_record_offset']}" in stop
    assert f"declares {known['declared_payload_length']} payload bytes, " \
           f"{known['payload_bytes_present']} present" in stop
    # without --json the stop is said on stderr
    code, _out, err = run_cli("replay", *out_rings.args(), str(CAPTURE_FIXTURES / "bad" / "truncated.wslog"))
    assert code == 0 and "stopped early: " in err and "Traceback" not in err


@pytest.mark.parametrize("url,message", [
    ("not-a-url", "shmpipe capture: bad --url 'not-a-url': "),
    ("ws://127.0.0.1:1/", "shmpipe capture: cannot connect to ws://127.0.0.1:1/: "),
])
def test_bad_url_is_one_line_and_exit_1(ring_name, url, message):
    code, out, err = run_cli("capture", "--feed", "kraken", "--url", url, "--ticks", ring_name + "-t",
                             "--levels", ring_name + "-l")
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and err.startswith(message), err
    assert not list(shmpipe_segments(ring_name))   # rings made for the failed run are removed


def shmpipe_segments(ring_name: str):
    from pathlib import Path
    return Path("/dev/shm").glob(f"shmpipe.{ring_name}*")


def test_replay_missing_path_is_one_line_and_exit_1(ring_name, tmp_path):
    code, _out, err = run_cli("replay", "--ticks", ring_name + "-t", "--levels", ring_name + "-l",
                              str(tmp_path / "nothing"))
    assert code == 1 and err == f"shmpipe replay: no such file or directory: {tmp_path / 'nothing'}\n"


def test_synthetic_capture_killed_leaves_a_readable_journal(rings, registry, tmp_path):
    live = rings()
    journal_dir = tmp_path / "journal"
    # 300k events/s = 600k records/s (a Tick and a LevelUpdate per event): issue 11 asks >= 500k/s
    proc = spawn_cli("capture", "--feed", "synthetic", "--rate", "300000", "--symbols", "4", "--seed", "7",
                     *live.args(), "--journal-dir", str(journal_dir))
    try:
        # wait until the consumers have seen ~0.5 s of records, so the kill lands mid-run at speed;
        # the levels are drained too, or the lossless levels ring would fill and hold capture back
        got = levels = 0
        parts = []
        while got < 150_000:
            batch = live.ticks_in.read(TICKS_CAP, timeout=DEADLINE)
            assert len(batch), "no ticks within the deadline"
            parts.append(batch)
            got += len(batch)
            levels += len(live.levels_in.read(LEVELS_CAP, timeout=0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    finally:
        _stop(proc)
    parts.append(live.ticks_in.read(TICKS_CAP, timeout=0))
    levels += len(live.levels_in.read(LEVELS_CAP, timeout=0))
    received = np.concatenate(parts)
    assert levels > 0
    # complete and in order up to the kill: the synthetic feed numbers its events
    assert np.array_equal(received["sequence"], np.arange(len(received), dtype=np.uint32))
    files = sorted(journal_dir.rglob("*.ticks"))
    assert len(files) == 4
    journaled = {int(f.stem): read_journal(f, copy=True) for f in files}
    # the journal is appended before the ring write: every tick a consumer got is in it, in order
    for sid in np.unique(received["symbol_id"]):
        mine = received[received["symbol_id"] == sid]
        assert journaled[int(sid)][:len(mine)].tobytes() == mine.tobytes()


def test_synthetic_capture_for_n_seconds_prints_counters(rings, registry):
    live = rings()
    code, out, err = run_cli("capture", "--feed", "synthetic", "--rate", "50000", "--symbols", "3",
                             "--seconds", "0.5", *live.args(), "--json")
    assert code == 0, err
    counters = json.loads(out)
    ticks, levels = live.read_all()
    assert counters["ticks_written"] == len(ticks) > 0 and counters["levels_written"] == len(levels) > 0
    assert Counter(ticks["symbol_id"].tolist()).keys() == {registry.id_of("synthetic", f"SYN{k:04d}")
                                                           for k in range(3)}


def test_replay_of_a_corrupt_zst_names_the_file_exit_1(ring_name, tmp_path):
    bad = tmp_path / "20240611_14.wslog.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 10)   # the zstd magic, then junk
    code, out, err = run_cli("replay", "--ticks", ring_name + "-t", "--levels", ring_name + "-l", str(bad))
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"shmpipe replay: {bad}: ") and "Traceback" not in err
    assert not list(shmpipe_segments(ring_name))


def test_seconds_ends_a_capture_whose_feed_went_silent(rings, registry, tmp_path):
    live = rings()
    server, url = start_feed_server(FIXTURES["kraken"], "--stall-after", "100")
    try:
        counters = capture("kraken", url, live, tmp_path / "raw", "--seconds", "1.5")
    finally:
        _stop(server)
    assert counters["ended"] == "time" and counters["messages"] == 100 and counters["reconnects"] == 0
    ticks, levels = live.read_all()
    assert (len(ticks), len(levels)) == (counters["ticks_written"], counters["levels_written"])


def test_sigterm_ends_a_capture_with_its_counters(rings, registry, tmp_path):
    live = rings()
    server, url = start_feed_server(FIXTURES["kraken"], "--stall-after", "100")
    proc = spawn_cli("capture", "--feed", "kraken", "--url", url, *live.args(), "--json")
    try:
        got = 0
        while got < 10:   # records flowing (the book snapshot comes first): capture is past its subscribe
            got += len(live.levels_in.read(LEVELS_CAP, timeout=DEADLINE))
        proc.terminate()
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        _stop(proc)
        _stop(server)
    assert proc.returncode == 0, err
    counters = json.loads(out)
    assert counters["ended"] == "signal" and counters["messages"] <= 100


def test_kill_9_mid_capture_leaves_a_raw_log_and_journal_that_replay_what_consumers_got(rings, registry, tmp_path):
    live = rings()
    server, url = start_feed_server(FIXTURES["coinbase"], "--speed", "4")   # ~15 s of frames
    proc = spawn_cli("capture", "--feed", "coinbase", "--url", url, *live.args(),
                     "--raw-dir", str(tmp_path / "raw"), "--journal-dir", str(tmp_path / "journal"))
    ticks_parts = []
    try:
        got = 0
        while got < 100:   # well into the feed
            batch = live.ticks_in.read(TICKS_CAP, timeout=DEADLINE)
            assert len(batch), "no ticks within the deadline"
            ticks_parts.append(batch)
            got += len(batch)
        proc.kill()
        proc.wait(timeout=DEADLINE)
    finally:
        _stop(proc)
        _stop(server)
    ticks_parts.append(live.ticks_in.read(TICKS_CAP, timeout=0))
    received_ticks = np.concatenate(ticks_parts)
    received_levels = live.levels_in.read(LEVELS_CAP, timeout=0)

    # the raw log is read up to the kill (its writer flushes every 0.2 s, so it may lag the rings)
    again = rings("-r")
    code, out, err = run_cli("replay", *again.args(), "--json", str(tmp_path / "raw"))
    assert code == 0, err
    rticks, rlevels = again.read_all()
    assert 0 < json.loads(out)["messages"]
    assert rticks.tobytes() == received_ticks[:len(rticks)].tobytes()
    assert rlevels.tobytes() == received_levels[:len(rlevels)].tobytes()

    # the journal is appended before each ring write: it holds every tick a consumer got, in order
    day_files = list((tmp_path / "journal").rglob("*.ticks"))
    journaled = np.concatenate([read_journal(f, copy=True) for f in day_files])
    for sid in np.unique(received_ticks["symbol_id"]):
        mine = received_ticks[received_ticks["symbol_id"] == sid]
        assert journaled[journaled["symbol_id"] == sid][:len(mine)].tobytes() == mine.tobytes()


def test_synthetic_takes_no_raw_dir(ring_name, tmp_path):
    code, out, err = run_cli("capture", "--feed", "synthetic", "--ticks", ring_name + "-t", "--levels",
                             ring_name + "-l", "--raw-dir", str(tmp_path))
    assert code == 1 and out == "" and err.startswith("shmpipe capture: --feed synthetic receives no frames")


def test_one_exchange_code_space_raw_logs_records_and_books():
    """Issue 21 item 5: the raw log said 2 for Kraken where Tick.source and OrderbookEntry.exchange_id
    say 5; older raw logs (1, 2, 3) still replay as their venues."""
    from shmpipe_services.capture import process as cp
    for feed, code in EXCHANGE_IDS.items():
        assert cp.EXCHANGE_IDS[feed] == code == cp.PARSERS[feed].source
        assert cp.EXCHANGE_NAMES[code] == feed
    assert {cp.EXCHANGE_NAMES[k] for k in (1, 2, 3)} == {"coinbase", "kraken", "alpaca"}
