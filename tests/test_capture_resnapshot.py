"""``resnapshot`` over the control plane: a real feed server, a real ``shmpipe capture`` process, and
the request made mid-stream. The levels ring must get a fresh snapshot of that one symbol, equal to
the feed server's book at that point (the recording's lines played so far), the other symbols'
streams untouched, and the ring exactly what the raw frames parse to."""
from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import numpy as np
import pytest
import test_capture_process
from capture_helpers import ReferenceBooks, WireBooks, fixture_lines, match_file_lines
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.kraken_checksum import checksum_of_book
from test_asset_sync import _stop, spawn_cli
from test_capture_process import Rings, raw_frames, registered, start_feed_server

from shmpipe import control
from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_SNAPSHOT_BEGIN,
    ACTION_SNAPSHOT_END,
    ACTION_TRADE,
    SIDE_ASK,
)

zmq = pytest.importorskip("zmq")

DEADLINE = 60.0
# the fixtures test_capture_process defines, used here too
registry = test_capture_process.registry
rings = test_capture_process.rings




# Every test here gets a control/signals directory of its own (conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


def wait_for(condition, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def stats_of(name: str) -> dict:
    try:
        return control.request(name, "stats")
    except control.ServiceNotRunningError:
        return {}


def start_capture(feed: str, url: str, live: Rings, raw_dir, name: str, *extra: str):
    proc = spawn_cli("capture", "--feed", feed, "--url", url, *live.args(), "--raw-dir", str(raw_dir),
                     "--json", "--name", name, *extra)
    wait_for(lambda: control.ping(name) is not None or proc.poll() is not None, "the capture's endpoint")
    assert proc.poll() is None, proc.stderr.read()
    return proc


def finish(proc) -> dict:
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def parse_frames(parser, frames, times) -> tuple[np.ndarray, np.ndarray]:
    """The level records of the raw frames parsed with their receive times, and each one's frame."""
    levels, frame_of = [], []
    for index, (frame, recv_ns) in enumerate(zip(frames, times)):
        _ticks, lv = parser.parse(frame, recv_ns)
        levels.append(lv)
        frame_of.append(np.full(len(lv), index))
    return np.concatenate(levels), np.concatenate(frame_of)


def book_as_decimals(books: ReferenceBooks, sid: int) -> tuple[dict, dict]:
    return tuple({Decimal(repr(p)): Decimal(repr(s)) for p, s in side.items()} for side in books.books[sid])


def book_after(venue: str, lines, position: int, symbol: str):
    books = WireBooks(venue)
    for line in lines[:position]:
        books.apply(line)
    return books.as_decimals(symbol)


def snapshot_positions(frames, lines, venue: str, symbol: str) -> list[tuple[int, int]]:
    """(frame index, recording lines played before it) of every snapshot of ``symbol`` received."""
    indexes, _withheld = match_file_lines(frames, lines)
    out = []
    for i, frame in enumerate(frames):
        msg = json.loads(frame)
        if not isinstance(msg, dict):
            continue
        is_snapshot = (venue == "kraken" and msg.get("channel") == "book" and msg.get("type") == "snapshot"
                       and msg["data"][0]["symbol"] == symbol) or \
                      (venue == "coinbase" and msg.get("channel") == "l2_data"
                       and msg["events"][0]["type"] == "snapshot" and msg["events"][0]["product_id"] == symbol)
        if is_snapshot:
            played = indexes[i] + 1 if indexes[i] is not None else \
                next((j for j in indexes[i:] if j is not None), len(lines))
            out.append((i, played))
    return out


def replay_books(levels, frame_of, sid, *, depth=None, decimals=None):
    """Apply the ring's records of one symbol in Python. Yields, after each snapshot-end and each
    checksum record: (record index, frame index, action, the book then as Decimals, checksum verifies
    or None)."""
    books = ReferenceBooks()
    for i, record in enumerate(levels):
        if int(record["symbol_id"]) != sid or int(record["action"]) == ACTION_TRADE:
            continue
        action = int(record["action"])
        if action == ACTION_CHECKSUM:
            books.truncate(sid, depth)
            bids, asks = books.books[sid]
            ok = checksum_of_book(bids, asks, *decimals) == int(record["price"])
            yield i, int(frame_of[i]), action, book_as_decimals(books, sid), ok
        elif action == ACTION_SNAPSHOT_END:
            yield i, int(frame_of[i]), action, book_as_decimals(books, sid), None
        else:
            books.apply(record)


def request_mid_stream(name: str, args: dict, *, after_levels: int) -> dict:
    wait_for(lambda: stats_of(name).get("levels_written", 0) > after_levels, f"{after_levels} levels written")
    return control.request(name, "resnapshot", args)


def kraken_update_line(lines, symbol: str, after: int) -> int:
    """A 1-based line: a book update of ``symbol`` whose first level is not a deletion."""
    return next(i for i, line in enumerate(lines, 1) if i > after and f'"{symbol}"'.encode() in line
                and b'"channel":"book"' in line and b'"type":"update"' in line
                and not line.split(b'"qty":', 1)[1].startswith(b"0.00000000"))


def test_kraken_resnapshot_of_one_symbol_mid_stream(rings, registry, tmp_path):
    live, name, lines = rings(), f"cap-{uuid.uuid4().hex[:8]}", fixture_lines("kraken_v2.jsonl")
    server, url = start_feed_server("kraken_v2.jsonl", "--speed", "10", "--exit-after", "1")
    try:
        proc = start_capture("kraken", url, live, tmp_path / "raw", name)
        try:
            reply = request_mid_stream(name, {"exchange": "kraken", "symbol": "BTC/USD"}, after_levels=500)
            counters = finish(proc)
        finally:
            _stop(proc)
        assert server.wait(timeout=DEADLINE) == 0
    finally:
        _stop(server)
    btc, eth = (registry.find("kraken", s) for s in ("BTC/USD", "ETH/USD"))
    assert reply == {"exchange": "kraken", "symbol": "BTC/USD", "symbol_id": btc, "sent": True}
    assert counters["resnapshots"] == 1 and counters["resubscribes"] == 1 and counters["gaps"] == {}
    assert counters["ended"] == "feed closed" and counters["parse_errors"] == {}

    _ticks, levels = live.read_all()
    frames, times, _markers, _ = raw_frames(tmp_path / "raw", "kraken")
    parser = KrakenParser(registered(registry))
    expected, frame_of = parse_frames(parser, frames, times)
    assert levels.tobytes() == expected.tobytes()   # the ring is exactly what was received

    begins = levels[levels["action"] == ACTION_SNAPSHOT_BEGIN]
    assert begins["symbol_id"].tolist().count(btc) == 2 and begins["symbol_id"].tolist().count(eth) == 1
    # ETH/USD untouched: its records are those of the recording parsed directly (times aside: a
    # snapshot is stamped with its receive time)
    direct = KrakenParser(registered(registry))
    direct_levels = np.concatenate([direct.parse(line)[1] for line in lines])
    fields = ["price", "size", "symbol_id", "side", "action", "source", "flags"]
    ours, theirs = levels[levels["symbol_id"] == eth], direct_levels[direct_levels["symbol_id"] == eth]
    assert len(ours) == len(theirs) and all((ours[f] == theirs[f]).all() for f in fields)

    # BTC/USD rebuilt from the ring: every checksum verifies, and the second snapshot is the feed
    # server's book after the lines it had played when it answered
    decimals = (parser.instruments["BTC/USD"].price_decimals, parser.instruments["BTC/USD"].size_decimals)
    assert decimals == (1, 8)
    events = list(replay_books(levels, frame_of, btc, depth=10, decimals=decimals))
    assert events and all(ok for _i, _f, action, _b, ok in events if action == ACTION_CHECKSUM)
    (_, _first), (fresh_frame, played) = snapshot_positions(frames, lines, "kraken", "BTC/USD")
    after_fresh = next(b for _i, f, action, b, _ok in events if f == fresh_frame and action == ACTION_CHECKSUM)
    assert after_fresh == book_after("kraken", lines, played, "BTC/USD")
    assert len(after_fresh[SIDE_ASK]) == 10


def test_kraken_corrupt_line_fails_the_checksum_until_a_resnapshot(rings, registry, tmp_path):
    live, name, lines = rings(), f"cap-{uuid.uuid4().hex[:8]}", fixture_lines("kraken_v2.jsonl")
    n = kraken_update_line(lines, "BTC/USD", after=50)
    server, url = start_feed_server("kraken_v2.jsonl", "--speed", "10", "--exit-after", "1", "--corrupt", str(n))
    try:
        proc = start_capture("kraken", url, live, tmp_path / "raw", name)
        try:
            # the corrupted line has been received and written before the request
            wait_for(lambda: stats_of(name).get("messages", 0) > n + 100, f"line {n} and more captured")
            control.request(name, "resnapshot", {"exchange": "kraken", "symbol": "BTC/USD"})
            counters = finish(proc)
        finally:
            _stop(proc)
    finally:
        _stop(server)
    assert counters["resnapshots"] == 1
    _ticks, levels = live.read_all()
    frames, times, _markers, _ = raw_frames(tmp_path / "raw", "kraken")
    parser = KrakenParser(registered(registry))
    expected, frame_of = parse_frames(parser, frames, times)
    assert levels.tobytes() == expected.tobytes()
    assert frames[:n] == lines[:n - 1] + [frames[n - 1]] and frames[n - 1] != lines[n - 1]
    btc = registry.find("kraken", "BTC/USD")
    checks = [(f, ok) for _i, f, action, _b, ok in replay_books(levels, frame_of, btc, depth=10, decimals=(1, 8))
              if action == ACTION_CHECKSUM]
    (_, _first), (fresh_frame, _played) = snapshot_positions(frames, lines, "kraken", "BTC/USD")
    assert all(ok for f, ok in checks if f < n - 1)                 # right up to the corrupted line
    assert [ok for f, ok in checks if f == n - 1] == [False]        # the book built from the ring fails
    assert all(ok for f, ok in checks if f >= fresh_frame)          # and the resnapshot repairs it
    assert any(f > fresh_frame for f, _ok in checks)


def test_coinbase_resnapshot_without_a_false_gap(rings, registry, tmp_path):
    live, name, lines = rings(), f"cap-{uuid.uuid4().hex[:8]}", fixture_lines("coinbase_advanced.jsonl")
    server, url = start_feed_server("coinbase_advanced.jsonl", "--speed", "10", "--exit-after", "1")
    try:
        proc = start_capture("coinbase", url, live, tmp_path / "raw", name)
        try:
            reply = request_mid_stream(name, {"exchange": "coinbase", "symbol": "ETH-USD"}, after_levels=800)
            counters = finish(proc)
        finally:
            _stop(proc)
    finally:
        _stop(server)
    btc, eth = (registry.find("coinbase", s) for s in ("BTC-USD", "ETH-USD"))
    assert reply["symbol_id"] == eth and reply["sent"] is True
    # the fixture's own gap (sequence_num 2600 missing) and nothing else: the inserted messages took
    # the connection's next numbers
    assert counters["gaps"] == {"sequence": 1} and counters["parse_errors"] == {}
    assert counters["resnapshots"] == 1
    _ticks, levels = live.read_all()
    frames, times, _markers, _ = raw_frames(tmp_path / "raw", "coinbase")
    parser = CoinbaseParser(registered(registry))
    expected, frame_of = parse_frames(parser, frames, times)
    assert levels.tobytes() == expected.tobytes()

    # ETH-USD: the recording's snapshot, ours, and (after the fixture's gap) the resync of every book;
    # BTC-USD: the recording's and the resync's. Each one is the server's book at that point.
    for symbol, sid, count in (("ETH-USD", eth, 3), ("BTC-USD", btc, 2)):
        positions = snapshot_positions(frames, lines, "coinbase", symbol)
        assert len(positions) == count
        ends = {f: b for _i, f, action, b, _ok in replay_books(levels, frame_of, sid)
                if action == ACTION_SNAPSHOT_END}
        for frame_index, played in positions:
            assert ends[frame_index] == book_after("coinbase", lines, played, symbol)
        # and after the whole stream: the recording's final book, nothing lost on the way
        books = ReferenceBooks()
        for record in levels[levels["symbol_id"] == sid]:
            if int(record["action"]) != ACTION_TRADE:
                books.apply(record)
        assert book_as_decimals(books, sid) == book_after("coinbase", lines, len(lines), symbol)


def test_synthetic_resnapshot_writes_the_book_so_far(rings, registry):
    live, name = rings(), f"cap-{uuid.uuid4().hex[:8]}"
    proc = spawn_cli("capture", "--feed", "synthetic", "--rate", "20000", "--symbols", "3", *live.args(),
                     "--name", name, "--json")
    try:
        wait_for(lambda: control.ping(name) is not None, "the capture's endpoint")
        ids = control.request(name, "status")["symbol_ids"]
        target = ids["SYN0001"]
        reply = request_mid_stream(name, {"symbol_id": target}, after_levels=2000)
        assert reply == {"exchange": "synthetic", "symbol": "SYN0001", "symbol_id": target, "sent": True}
        wait_for(lambda: stats_of(name).get("levels_written", 0) > 6000, "records after the resnapshot")
        control.request(name, "stop")
        counters = finish(proc)
    finally:
        _stop(proc)
    assert counters["resnapshots"] == 1
    ticks, levels = live.read_all()
    assert (len(ticks), len(levels)) == (counters["ticks_written"], counters["levels_written"])
    assert (ticks["sequence"] == np.arange(len(ticks))).all()    # the event stream went on, whole
    begins = np.flatnonzero(levels["action"] == ACTION_SNAPSHOT_BEGIN)
    assert sorted(levels["symbol_id"][begins].tolist()) == sorted(list(ids.values()) + [target])
    fresh = begins[-1]
    assert levels["symbol_id"][fresh] == target and fresh > 3 * 22   # after the initial snapshots
    end = fresh + np.flatnonzero(levels["action"][fresh:] == ACTION_SNAPSHOT_END)[0]
    # the book the records before it built, for that symbol, is exactly the snapshot's content
    books = ReferenceBooks()
    for record in levels[:fresh]:
        if int(record["symbol_id"]) == target and int(record["action"]) != ACTION_TRADE:
            books.apply(record)
    snapshot = ReferenceBooks()
    for record in levels[fresh:end + 1]:
        snapshot.apply(record)
    assert snapshot.books[target] == books.books[target] and len(snapshot.books[target][0]) >= 10
    assert (levels["symbol_id"][fresh:end + 1] == target).all()
