"""``shmpipe feed-server``: real websockets clients against the server, in process and as a CLI child."""
from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from capture_helpers import CAPTURE_FIXTURES, KNOWN, SIDE_BID, WireBooks, fixture_lines, match_file_lines
from shmpipe_services.capture import bad_input as bad
from shmpipe_services.capture import process as capture_process
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.feed_books import corrupt_level
from shmpipe_services.capture.feed_server import (
    Faults,
    FeedServer,
    cut_in_half,
    frame_time_ns,
    load_recording,
)
from shmpipe_services.capture.kraken import KrakenParser
from test_asset_sync import LineReader, _stop, spawn_cli
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

from shmpipe.records import TICK_FLAG_GAP_BEFORE

KRAKEN = CAPTURE_FIXTURES / "kraken_v2.jsonl"
COINBASE = CAPTURE_FIXTURES / "coinbase_advanced.jsonl"
DEADLINE = 30.0   # generous: only a broken server comes near it


async def receive_all(url: str, subscribe: bool = True, silence_s: float | None = None):
    """Frames as bytes and how the connection ended ("close 1000", "no close frame", "silent")."""
    frames = []
    async with connect(url, max_size=None, compression=None) as ws:
        if subscribe:
            await ws.send('{"type":"subscribe"}')
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), silence_s or DEADLINE)
                frames.append(message.encode() if isinstance(message, str) else message)
        except ConnectionClosedOK:
            return frames, f"close {ws.close_code}"
        except ConnectionClosedError:
            return frames, "no close frame" if ws.close_code in (None, 1006) else f"close {ws.close_code}"
        except TimeoutError:
            if silence_s is None:
                raise
            return frames, "silent"


def serve_and(recordings, client, **options):
    """Run a FeedServer on a free port and ``await client(base_url)`` against it."""
    async def main():
        server = FeedServer([load_recording(p) for p in recordings], **options)
        port = await server.start()
        runner = asyncio.create_task(server.run())
        try:
            return await asyncio.wait_for(client(f"ws://127.0.0.1:{port}"), DEADLINE), server
        finally:
            server.stop()
            await runner
    return asyncio.run(main())


def test_sends_every_line_as_one_text_frame_then_closes():
    (frames, ended), server = serve_and([KRAKEN], lambda url: receive_all(url + "/"))
    assert frames == fixture_lines("kraken_v2.jsonl") and ended == "close 1000"
    assert [(r.frames_sent, r.ended) for r in server.reports] == [(2771, "complete")]


def test_nothing_is_sent_before_the_subscribe():
    async def client(url):
        # max_queue=None: leaving with frames unread must not stall the closing handshake
        async with connect(url, max_queue=None) as ws:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)   # the server is parked in its recv()
            await ws.send("subscribe")
            return await ws.recv()
    first, _ = serve_and([KRAKEN], client, speed=0)
    assert first.encode() == fixture_lines("kraken_v2.jsonl")[0]


def test_disconnect_fault_drops_the_connection_without_a_close_frame():
    (frames, ended), _ = serve_and([KRAKEN], receive_all, faults=Faults(disconnect_after=10))
    assert frames == fixture_lines("kraken_v2.jsonl")[:10] and ended == "no close frame"


def test_drop_fault_is_a_gap_the_coinbase_parser_flags():
    (frames, ended), _ = serve_and([COINBASE], receive_all, faults=Faults(drop=frozenset({100})))
    lines = fixture_lines("coinbase_advanced.jsonl")
    assert frames == lines[:99] + lines[100:] and ended == "close 1000"
    parser = CoinbaseParser()
    for frame in frames:
        parser.parse(frame)
    assert [g.frame for g in parser.gaps if g.kind == "sequence"] == [100, 2600]  # ours, and the fixture's


def test_malformed_fault_sends_half_a_frame_the_parser_counts():
    (frames, _), _ = serve_and([KRAKEN], receive_all, faults=Faults(malformed=frozenset({3, 20})))
    lines = fixture_lines("kraken_v2.jsonl")
    assert frames[2] == cut_in_half(lines[2]) and frames[19] == cut_in_half(lines[19])
    assert len(frames) == len(lines) and frames[3:19] == lines[3:19]
    parser = KrakenParser()
    for frame in frames:
        parser.parse(frame)
    assert parser.errors == {bad.INVALID_JSON: 2}


def test_stall_fault_goes_silent_with_the_socket_open():
    async def client(url):
        async with connect(url) as ws:
            await ws.send("subscribe")
            frames = [await ws.recv() for _ in range(5)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            return len(frames), ws.state.name
    (n, state), server = serve_and([KRAKEN], client, faults=Faults(stall_after=5))
    assert (n, state) == (5, "OPEN")
    assert [r.ended for r in server.reports] == ["stalled"]


def test_faults_can_be_limited_to_the_first_connections():
    async def client(url):
        return [await receive_all(url) for _ in range(2)]
    ((first, end1), (second, end2)), _ = serve_and([KRAKEN], client,
                                                   faults=Faults(disconnect_after=3, connections=1))
    assert (len(first), end1) == (3, "no close frame")
    assert (len(second), end2) == (2771, "close 1000")


def test_several_files_by_position_and_name(tmp_path):
    async def client(url):
        by = {}
        for path in ("/", "/1", "/2", "/kraken_v2", "/coinbase_advanced"):
            frames, _ = await receive_all(url + path)
            by[path] = len(frames)
        async with connect(url + "/nope") as ws:
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            by["/nope"] = ws.close_code
            assert "try /1 or /kraken_v2, /2 or /coinbase_advanced" in ws.close_reason
        return by
    by, _ = serve_and([KRAKEN, COINBASE], client)
    assert by == {"/": 2771, "/1": 2771, "/2": 5318, "/kraken_v2": 2771, "/coinbase_advanced": 5318,
                  "/nope": 1008}


def paced_file(tmp_path: Path) -> Path:
    lines = [json.dumps({"channel": "ticker", "timestamp": f"2024-06-11T14:30:00.{ms:03d}Z"})
             for ms in (0, 100, 200, 300)]
    lines.insert(2, '{"channel":"heartbeat"}')   # no time: goes right after the line before it
    path = tmp_path / "paced.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("speed,span", [(1.0, 0.3), (2.0, 0.15)])
def test_recorded_pace_at_a_speed(tmp_path, speed, span):
    async def client(url):
        stamps = []
        async with connect(url) as ws:
            await ws.send("subscribe")
            async for _ in ws:
                stamps.append(time.monotonic())
        return stamps
    stamps, _ = serve_and([paced_file(tmp_path)], client, speed=speed)
    assert len(stamps) == 5
    # The server sleeps until each frame's deadline, so the spacing is at least the recorded one
    # (scaled); a loaded machine can only make it longer, so only the lower bound is asserted.
    assert stamps[-1] - stamps[0] >= span * 0.95


def test_frame_times_per_venue():
    assert frame_time_ns(fixture_lines("coinbase_advanced.jsonl")[0]) == \
        KNOWN["coinbase_advanced.jsonl"]["first_timestamp_ns"]
    kraken = fixture_lines("kraken_v2.jsonl")
    assert frame_time_ns(kraken[0]) is None and frame_time_ns(kraken[1]) is not None
    assert frame_time_ns(fixture_lines("alpaca_stream.jsonl")[6]) == 1718116200150435272


def test_end_to_end_known_answers_through_the_server():
    (frames, _), _ = serve_and([COINBASE], receive_all)
    parser = CoinbaseParser()
    flagged_at = []
    for number, frame in enumerate(frames, 1):
        _ticks, levels = parser.parse(frame)
        if (levels["flags"] & TICK_FLAG_GAP_BEFORE).any():
            flagged_at.append(number)
    known = KNOWN["coinbase_advanced.jsonl"]
    assert Counter({c: parser.messages[c] for c in known["message_counts_by_channel"]}) == \
        Counter(known["message_counts_by_channel"])
    assert flagged_at == [known["sequence_num"]["gaps"][0]["line"]]


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_help():
    proc = spawn_cli("feed-server", "--help")
    out, _err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0 and "--speed" in out and "--disconnect-after" in out and "subscribe" in out


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path):
    proc = spawn_cli("feed-server", "--port", "0", str(KRAKEN), str(tmp_path / "missing.jsonl"))
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2 and out == ""
    assert err == f"shmpipe feed-server: no such file: {tmp_path / 'missing.jsonl'}\n"


def test_cli_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn_cli("feed-server", "--port", str(port), str(KRAKEN))
        _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"shmpipe feed-server: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("args", [["--speed", "-1"], ["--drop", "0"], ["--speed", "nan"]])
def test_cli_bad_options_exit_2(args):
    proc = spawn_cli("feed-server", "--port", "0", *args, str(KRAKEN))
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2 and "Traceback" not in err and "error:" in err


def test_cli_serves_a_client_and_exits_after_it():
    proc = spawn_cli("feed-server", "--port", "0", "--speed", "0", "--exit-after", "1", str(KRAKEN))
    try:
        line = LineReader(proc.stdout).next(timeout=DEADLINE)
        assert line.startswith("listening on ws://127.0.0.1:")
        url = line.split()[2]
        frames, ended = asyncio.run(receive_all(url))
        assert frames == fixture_lines("kraken_v2.jsonl") and ended == "close 1000"
        assert proc.wait(timeout=DEADLINE) == 0
        assert "2771 frames sent, complete" in proc.stderr.read()
    finally:
        _stop(proc)


def test_cli_sigterm_exits_0():
    proc = spawn_cli("feed-server", "--port", "0", str(KRAKEN))
    try:
        LineReader(proc.stdout).next(timeout=DEADLINE)
        proc.terminate()
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        _stop(proc)


def test_frames_from_the_server_reach_rings_exactly_as_parsed_from_the_file(ring_name):
    """The path a capture process takes: websocket frame -> parser -> RecordBatch -> rings."""
    import numpy as np
    from shmpipe_services.capture.record_batch import RecordBatch

    import shmpipe
    from shmpipe.records import LEVEL_UPDATE, TICK

    direct = KrakenParser()
    parts = [direct.parse(line) for line in fixture_lines("kraken_v2.jsonl")]
    expected_ticks = np.concatenate([t for t, _ in parts])
    expected_levels = np.concatenate([lv for _, lv in parts])

    with shmpipe.Ring.create(ring_name + "-t", TICK, 1 << 12) as ticks_ring, \
            shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 1 << 14) as levels_ring, \
            ticks_ring.producer() as ticks_out, levels_ring.producer() as levels_out, \
            ticks_ring.consumer() as ticks_in, levels_ring.consumer() as levels_in:
        async def client(url):
            parser, batch = KrakenParser(), RecordBatch()
            async with connect(url, max_size=None) as ws:
                await ws.send('{"method":"subscribe"}')
                async for frame in ws:
                    parser.feed(frame, batch)
                    batch.write_to(ticks_out, levels_out, timeout=5.0)
            return parser
        parser, _ = serve_and([KRAKEN], client)
        ticks = ticks_in.read(1 << 12, timeout=0)
        levels = levels_in.read(1 << 14, timeout=0)
        ticks_ring.unlink()
        levels_ring.unlink()
    assert parser.errors == Counter() and len(levels) == len(expected_levels) == 6322
    assert ticks.tobytes() == expected_ticks.tobytes() and levels.tobytes() == expected_levels.tobytes()


# -- mid-stream resubscribes: a fresh snapshot from the book as played so far ------------------------


async def resubscribing_client(url, feed: str, symbol: str, after: int, subscribe_first: list[str]):
    """Subscribes like capture does, sends capture's resubscribe frames for ``symbol`` once ``after``
    frames arrived, and returns every frame and the index of the first frame after the request."""
    frames, asked_at = [], None
    async with connect(url, max_size=None, compression=None) as ws:
        for frame in subscribe_first:
            await ws.send(frame)
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), DEADLINE)
                frames.append(message.encode() if isinstance(message, str) else message)
                if len(frames) == after:
                    asked_at = len(frames)
                    for out in capture_process.resubscribe_frames(feed, [symbol]):
                        await ws.send(out)
        except ConnectionClosedOK:
            pass
    return frames, asked_at


def play_resubscribe(fixture, feed, symbol, after, speed=20.0, faults=None):
    subscribe = capture_process.subscribe_frames(feed, capture_process.DEFAULT_SYMBOLS[feed])
    (frames, asked_at), server = serve_and(
        [fixture], lambda url: resubscribing_client(url, feed, symbol, after, subscribe), speed=speed,
        faults=faults or Faults())
    return frames, asked_at, server


def book_after(venue, lines, position, symbol):
    books = WireBooks(venue)
    for line in lines[:position]:
        books.apply(line)
    return books.as_decimals(symbol)


def test_kraken_resubscribe_gets_acks_and_a_snapshot_equal_to_the_book_so_far():
    frames, asked_at, server = play_resubscribe(KRAKEN, "kraken", "BTC/USD", after=200)
    lines = fixture_lines("kraken_v2.jsonl")
    indexes, withheld = match_file_lines(frames, lines)
    extra = [f for f, i in zip(frames, indexes) if i is None]
    assert len(extra) == 3
    unsub, sub, snapshot = (json.loads(f) for f in extra)
    assert (unsub["method"], unsub["result"], unsub["success"]) == \
        ("unsubscribe", {"channel": "book", "depth": 10, "symbol": "BTC/USD"}, True)
    assert (sub["method"], sub["result"]) == \
        ("subscribe", {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/USD"})
    assert snapshot["channel"] == "book" and snapshot["type"] == "snapshot"
    assert [d["symbol"] for d in snapshot["data"]] == ["BTC/USD"]
    assert server.reports[0].snapshots_sent == 1
    # lines withheld: only BTC/USD book lines, only between the unsubscribe and the subscribe
    first_answer, at = frames.index(extra[0]), frames.index(extra[2])
    assert at >= asked_at
    assert all(b'"channel":"book"' in lines[i] and b'"BTC/USD"' in lines[i] for i in withheld)
    assert all(indexes[first_answer - 1] < i < next(j for j in indexes[at:] if j is not None) for i in withheld)

    books = WireBooks("kraken")
    for frame in frames[:at]:
        books.apply(frame)
    eth_before = books.as_decimals("ETH/USD")
    # the snapshot: the book after every file line played before it (sent or withheld), with a
    # checksum that verifies, written with the file's decimals (trailing zeros kept: the checksum
    # depends on them), and the other symbol untouched
    assert books.apply(frames[at]) == [("BTC/USD", "snapshot", True)]
    position = next(j for j in indexes[at:] if j is not None)
    assert books.as_decimals("BTC/USD") == book_after("kraken", lines, position, "BTC/USD")
    assert books.as_decimals("ETH/USD") == eth_before
    assert b'"qty":0.' in frames[at] and len(books.top("BTC/USD", SIDE_BID)) == 10
    # every later book message still verifies: the stream goes on from the same book
    results = [r for frame in frames[at + 1:] for r in books.apply(frame)]
    assert results and all(ok for _s, _t, ok in results)


def test_kraken_corrupt_line_breaks_the_checksum_until_a_resubscribe_repairs_it():
    lines = fixture_lines("kraken_v2.jsonl")
    # a BTC/USD update with a non-zero level early in the file
    n = next(i for i, line in enumerate(lines, 1) if i > 20 and b'"BTC/USD"' in line
             and b'"type":"update"' in line and b'"channel":"book"' in line and b'"qty":0.0000' not in line)
    frames, _asked, _ = play_resubscribe(KRAKEN, "kraken", "BTC/USD", after=n + 50,
                                         faults=Faults(corrupt=frozenset({n})))
    assert frames[n - 1] == corrupt_level(lines[n - 1]) != lines[n - 1]
    books = WireBooks("kraken")
    verdicts = [(i, r) for i, frame in enumerate(frames, 1) for r in books.apply(frame)]
    btc = [(i, t, ok) for i, (s, t, ok) in verdicts if s == "BTC/USD"]
    assert all(ok for i, t, ok in btc if i < n)
    assert [ok for i, t, ok in btc if i == n] == [False]       # the altered size fails at once
    snapshot_at = next(i for i, t, ok in btc if t == "snapshot" and i > n)
    assert all(ok for i, t, ok in btc if i >= snapshot_at)     # repaired from the server's true book
    assert all(ok for i, (s, t, ok) in verdicts if s == "ETH/USD")


def test_coinbase_resubscribe_snapshot_takes_the_next_sequence_num():
    frames, asked_at, server = play_resubscribe(COINBASE, "coinbase", "ETH-USD", after=300, speed=30.0)
    lines = fixture_lines("coinbase_advanced.jsonl")
    msgs = [json.loads(f) for f in frames]
    seqs = [m["sequence_num"] for m in msgs]
    # consecutive on the connection except the fixture's own gap (2600 never sent)
    jumps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    assert len(jumps) == 1 and jumps[0][1] - jumps[0][0] == 2
    indexes, withheld = match_file_lines(frames, lines)
    ours = [i for i, j in enumerate(indexes) if j is None]
    assert [msgs[i]["channel"] for i in ours] == ["subscriptions", "l2_data", "subscriptions"]
    unsub_ack, snap_at, sub_ack = ours
    assert snap_at >= asked_at
    # the acks: unsubscribe (ETH-USD out of level2), then subscribe (back in)
    assert [("ETH-USD" in msgs[i]["events"][0]["subscriptions"].get("level2", [])) for i in (unsub_ack, sub_ack)] \
        == [False, True]
    snapshot = msgs[snap_at]
    assert snapshot["events"][0]["type"] == "snapshot" and snapshot["events"][0]["product_id"] == "ETH-USD"
    assert snapshot["client_id"] == ""
    assert all(u["event_time"] == "1970-01-01T00:00:00Z" for u in snapshot["events"][0]["updates"])
    sides = [u["side"] for u in snapshot["events"][0]["updates"]]
    assert sides == sorted(sides)   # bids then offers, as Coinbase sends them
    # withheld: only ETH-USD l2 lines, between the unsubscribe and the subscribe
    position = next(j for j in indexes[snap_at:] if j is not None)
    assert all(b'"l2_data"' in lines[i] and b'"ETH-USD"' in lines[i] and indexes[unsub_ack - 1] < i < position
               for i in withheld)
    books = WireBooks("coinbase")
    for frame in frames[:snap_at + 1]:
        books.apply(frame)
    assert books.as_decimals("ETH-USD") == book_after("coinbase", lines, position, "ETH-USD")
    # the capture parser sees the fixture's gap and nothing else
    parser = CoinbaseParser()
    for frame in frames:
        parser.parse(frame)
    assert [g.kind for g in parser.gaps] == ["sequence"] and parser.errors == Counter()
    assert server.reports[0].snapshots_sent == 1


def test_first_subscribes_are_answered_by_the_recording_alone():
    """capture sends several subscribes on connect: none of them is a resubscribe."""
    async def client(url):
        frames = []
        async with connect(url, max_size=None) as ws:
            for out in capture_process.subscribe_frames("coinbase", ["BTC-USD", "ETH-USD"]):
                await ws.send(out)
            async for message in ws:
                frames.append(message.encode())
        return frames
    frames, server = serve_and([COINBASE], client, speed=0)
    assert frames == fixture_lines("coinbase_advanced.jsonl") and server.reports[0].snapshots_sent == 0


def test_cli_corrupt_of_a_line_without_levels_is_one_line_and_exit_2():
    proc = spawn_cli("feed-server", "--port", "0", "--corrupt", "1", str(KRAKEN))
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2 and out == ""
    assert err == "shmpipe feed-server: --corrupt 1: line 1 of kraken_v2.jsonl is not a book message " \
                  "with a level to alter\n"
