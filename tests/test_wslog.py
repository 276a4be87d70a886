"""The .wslog raw capture: the fixture's known answers, damaged files, writer round trips with
rotation and compression, merging, and a writer killed mid-stream."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from isolation import SPAWN
from wslog_workers import BASE_NS, payload_for, write_until_killed

from shmpipe.errors import (
    InvalidArgumentError,
    ShmpipeError,
    WslogFormatError,
    WslogTruncatedError,
    WslogWriteError,
)
from shmpipe.wslog import (
    HEADER_BYTES,
    MARKER_EXCHANGE_ID,
    WslogEntry,
    WslogWriter,
    encode_entry,
    load_index,
    merge_wslogs,
    read_wslog,
    rebuild_index,
    wslog_files,
)

FIXTURES = Path(__file__).parent / "fixtures" / "capture"
SAMPLE = FIXTURES / "capture_sample.wslog"
KNOWN = json.loads((FIXTURES / "known_answers_wslog.json").read_text())
H14 = 1_718_114_400 * 10**9                   # 2024-06-11T14:00:00Z


class FakeClock:
    def __init__(self, now_ns: int):
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


def _zst(src: Path, dst: Path, content_size: bool = True) -> Path:
    data = src.read_bytes()
    dst.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=content_size)
                    .compress(data))
    return dst


# -- the fixture's known answers -----------------------------------------------------------------------
def test_capture_sample_known_answers():
    facts = KNOWN["capture_sample.wslog"]
    reader = read_wslog(SAMPLE)
    entries = list(reader)
    assert reader.stop is None
    assert len(entries) == facts["records"] == 1695
    assert entries[0].recv_ns == facts["first_ts_ns"] and entries[-1].recv_ns == facts["last_ts_ns"]
    assert all(a.recv_ns <= b.recv_ns for a, b in zip(entries, entries[1:]))
    counts = {}
    for e in entries:
        counts[str(e.exchange_id)] = counts.get(str(e.exchange_id), 0) + 1
    assert counts == facts["per_exchange"]
    assert sum(len(e.payload) for e in entries) == facts["payload_bytes"]
    assert not any(e.marker for e in entries)
    coinbase_lines = (FIXTURES / "coinbase_advanced_lines_1-916.jsonl").read_bytes().split(b"\n")[:916]
    assert [e.payload for e in entries if e.exchange_id == 1] == coinbase_lines


def test_compressed_sample_reads_the_same(tmp_path):
    assert list(read_wslog(_zst(SAMPLE, tmp_path / "sample.wslog.zst"))) == list(read_wslog(SAMPLE))


# -- damaged files ---------------------------------------------------------------------------------------
def test_truncated_file_stops_at_its_last_complete_entry_and_says_where():
    facts = KNOWN["bad"]["truncated.wslog"]
    reader = read_wslog(FIXTURES / "bad" / "truncated.wslog")
    assert len(list(reader)) == facts["complete_records"] == 39
    stop = reader.stop
    assert (stop.offset, stop.declared, stop.present) == (facts["truncated_record_offset"],
                                                          facts["declared_payload_length"],
                                                          facts["payload_bytes_present"])
    assert "truncated.wslog: stopped at byte 74102" in str(stop)
    assert "declares 526 payload bytes, 263 present" in str(stop)
    with pytest.raises(WslogTruncatedError, match="stopped at byte 74102.*after 39 entries"):
        list(read_wslog(FIXTURES / "bad" / "truncated.wslog", strict=True))


def test_a_huge_declared_length_is_never_allocated():
    facts = KNOWN["bad"]["huge_length.wslog"]
    tracemalloc.start()
    try:
        reader = read_wslog(FIXTURES / "bad" / "huge_length.wslog")
        assert len(list(reader)) == facts["complete_records"] == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert (reader.stop.offset, reader.stop.declared, reader.stop.present) == (
        facts["bad_record_offset"], facts["declared_payload_length"], facts["bytes_after_header"])


def test_a_huge_length_in_a_stream_of_unknown_size_hits_the_cap(tmp_path):
    """A .zst without a content size cannot say how much remains: the entry cap refuses it."""
    path = _zst(FIXTURES / "bad" / "huge_length.wslog", tmp_path / "huge.wslog.zst", content_size=False)
    tracemalloc.start()
    try:
        reader = read_wslog(path)
        assert len(list(reader)) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert reader.stop.offset == 49 and reader.stop.declared == 0xFFFFFFFF
    assert "over the 67108864-byte limit" in reader.stop.reason


def test_a_cut_header_is_reported(tmp_path):
    path = tmp_path / "cut.wslog"
    path.write_bytes(encode_entry(5, 1, b"abc") + encode_entry(6, 1, b"def")[:9])
    reader = read_wslog(path)
    assert [e.payload for e in reader] == [b"abc"]
    assert (reader.stop.offset, reader.stop.present, reader.stop.declared) == (17, 9, None)
    assert "ends inside an entry's header (9 of 14 header bytes present)" in str(reader.stop)


def test_an_empty_file_has_no_entries_and_says_so():
    reader = read_wslog(FIXTURES / "bad" / "empty.wslog")
    assert list(reader) == [] and reader.stop.reason == "empty file"
    with pytest.raises(WslogFormatError, match="empty.wslog: stopped at byte 0: empty file"):
        list(read_wslog(FIXTURES / "bad" / "empty.wslog", strict=True))


def test_a_corrupt_zst_names_its_file(tmp_path):
    path = _zst(SAMPLE, tmp_path / "corrupt.wslog.zst")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WslogFormatError, match=f"{path}: corrupt zstd data after"):
        list(read_wslog(path))


def test_a_cut_zst_names_its_file(tmp_path):
    path = _zst(SAMPLE, tmp_path / "cut.wslog.zst")
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(WslogFormatError, match=f"{path}: the zstd stream ends after .* of the 567832 bytes"):
        list(read_wslog(path))


def test_a_plain_file_named_zst_names_its_file(tmp_path):
    path = tmp_path / "plain.wslog.zst"
    path.write_bytes(SAMPLE.read_bytes()[:1000])
    with pytest.raises(WslogFormatError, match=str(path)):
        list(read_wslog(path))


def test_errors_are_shmpipe_errors():
    assert issubclass(WslogFormatError, ShmpipeError) and issubclass(WslogWriteError, ShmpipeError)


# -- merging ---------------------------------------------------------------------------------------------
def test_merge_by_timestamp_rebuilds_the_interleaved_capture(tmp_path):
    entries = list(read_wslog(SAMPLE))
    for exchange in (1, 2, 3):
        mine = [e for e in entries if e.exchange_id == exchange]
        (tmp_path / f"{exchange}.wslog").write_bytes(
            b"".join(encode_entry(e.recv_ns, e.exchange_id, e.payload) for e in mine))
    merged = merge_wslogs([tmp_path / "3.wslog", tmp_path / "1.wslog", tmp_path / "2.wslog"])
    assert list(merged) == entries and merged.stops == []


def test_merge_reports_damaged_files_and_goes_on(tmp_path):
    merged = merge_wslogs([FIXTURES / "bad" / "truncated.wslog", SAMPLE])
    assert len(list(merged)) == 1695 + 39
    assert [s.offset for s in merged.stops] == [74102]


# -- the writer ------------------------------------------------------------------------------------------
def test_writer_rotates_by_the_hour_compresses_and_indexes(tmp_path):
    clock = FakeClock(H14 - 500_000_000)                                  # 13:59:59.5
    writer = WslogWriter(tmp_path, {1: "coinbase", 2: "kraken"}, clock=clock, flush_interval=30)
    expected = []
    writer.connect(1, "wss://advanced-trade-ws.coinbase.com")
    writer.subscribe(1, '{"type":"subscribe","channel":"level2"}')
    expected += [WslogEntry(clock.now, 1, b"wss://advanced-trade-ws.coinbase.com", "connect"),
                 WslogEntry(clock.now, 1, b'{"type":"subscribe","channel":"level2"}', "subscribe")]
    for i in range(10):                                                   # 13:59:59.5 .. 14:00:00.4
        writer.write(clock.now + i * 100_000_000, 1, f"frame {i}")
        expected.append(WslogEntry(clock.now + i * 100_000_000, 1, f"frame {i}".encode()))
    writer.write(clock.now + 1, 2, b"kraken at 13h")
    expected.append(WslogEntry(clock.now + 1, 2, b"kraken at 13h"))
    assert writer.flush(timeout=30)
    assert writer.wait_compressed(timeout=30)
    coinbase, kraken = tmp_path / "coinbase", tmp_path / "kraken"
    # The first 14h entry closed coinbase's 13h file, which is compressed now; kraken's 13h is open.
    assert sorted(p.name for p in coinbase.iterdir()) == ["20240611_13.wslog.zst", "20240611_14.wslog"]
    assert sorted(p.name for p in kraken.iterdir()) == ["20240611_13.wslog"]
    clock.now = H14 + 6_000_000_000                       # past the hour and its 5 s grace: kraken's closes
    assert writer.flush(timeout=30) and writer.wait_compressed(timeout=30)
    assert sorted(p.name for p in kraken.iterdir()) == ["20240611_13.wslog.zst"]
    writer.disconnect(1, "1006 abnormal closure")
    expected.append(WslogEntry(clock.now, 1, b"1006 abnormal closure", "disconnect"))
    writer.close(timeout=30)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in wslog_files(tmp_path)) == [
        "coinbase/20240611_13.wslog.zst", "coinbase/20240611_14.wslog.zst", "kraken/20240611_13.wslog.zst"]
    assert list(merge_wslogs([tmp_path])) == sorted(expected, key=lambda e: e.recv_ns)
    files = load_index(tmp_path)["files"]
    assert set(files) == {"coinbase/20240611_13.wslog.zst", "coinbase/20240611_14.wslog.zst",
                          "kraken/20240611_13.wslog.zst"}
    c13 = files["coinbase/20240611_13.wslog.zst"]
    assert (c13["entries"], c13["markers"], c13["state"]) == (7, 2, "compressed")
    assert (c13["first_recv_ns"], c13["last_recv_ns"]) == (H14 - 500_000_000, H14 - 100_000_000)
    assert files["coinbase/20240611_14.wslog.zst"]["entries"] == 6
    stats = writer.stats()
    assert (stats["entries"], stats["markers"], stats["files_compressed"]) == (11, 3, 3)


def test_markers_keep_the_14_byte_header_format(tmp_path):
    with WslogWriter(tmp_path, {1: "coinbase"}, compress=False) as writer:
        writer.connect(1, "wss://x", recv_ns=10)
        writer.write(11, 1, b"frame")
    path = tmp_path / "coinbase" / "19700101_00.wslog"
    raw = list(read_wslog(path, decode_markers=False))
    assert raw == [WslogEntry(10, MARKER_EXCHANGE_ID, b"\x01\x00\x01wss://x"), WslogEntry(11, 1, b"frame")]
    data = path.read_bytes()                            # a reader that knows nothing of markers
    assert int.from_bytes(data[10:14], "little") == 10 and data[HEADER_BYTES + 10:].startswith(b"\x0b")
    assert list(read_wslog(path)) == [WslogEntry(10, 1, b"wss://x", "connect"), WslogEntry(11, 1, b"frame")]


def test_a_restart_within_the_hour_starts_a_new_file(tmp_path):
    for n in range(2):
        with WslogWriter(tmp_path, {1: "coinbase"}, compress=False) as writer:
            writer.write(H14 + n, 1, f"run {n}")
    names = sorted(p.name for p in (tmp_path / "coinbase").iterdir())
    assert names == ["20240611_14.1.wslog", "20240611_14.wslog"]
    assert [e.payload for e in merge_wslogs([tmp_path])] == [b"run 0", b"run 1"]


@pytest.mark.parametrize("call, complaint", [
    (lambda w: w.write(1, 0, b"x"),
     "exchange_id must be an int from 1 to 65535 \\(0 marks markers\\), not 0"),
    (lambda w: w.write(1, 70000, b"x"), "not 70000"),
    (lambda w: w.write(-1, 1, b"x"), "recv_ns must be an int of nanoseconds since the epoch, not -1"),
    (lambda w: w.write(1.5, 1, b"x"), "not 1.5"),
    (lambda w: w.write(1, 1, 42), "payload must be bytes or str, not int"),
    (lambda w: w.write(1, 1, "\udc80"), "a text frame must be valid Unicode"),
    (lambda w: w.marker(1, "reconnect"), "marker kind must be one of connect, disconnect, subscribe"),
])
def test_bad_writer_input_is_refused_by_name(tmp_path, call, complaint):
    with WslogWriter(tmp_path, compress=False) as writer:
        with pytest.raises(InvalidArgumentError, match=complaint):
            call(writer)


def test_bad_exchange_names_are_refused(tmp_path):
    for bad in ("../up", "a/b", "", ".."):
        with pytest.raises(InvalidArgumentError, match="cannot be a directory name"):
            WslogWriter(tmp_path, {1: bad})


def test_a_writer_that_cannot_write_says_so(tmp_path):
    (tmp_path / "coinbase").write_text("a file where the exchange's directory should be")
    writer = WslogWriter(tmp_path, {1: "coinbase"}, compress=False)
    writer.write(1, 1, b"frame")
    with pytest.raises(WslogWriteError, match=f"capture writer for {tmp_path} stopped"):
        writer.flush(timeout=30)
    with pytest.raises(WslogWriteError):
        writer.write(2, 1, b"frame")
    with pytest.raises(WslogWriteError):
        writer.close(timeout=30)


def test_a_closed_writer_refuses_writes(tmp_path):
    writer = WslogWriter(tmp_path, compress=False)
    writer.close()
    with pytest.raises(WslogWriteError, match="is closed"):
        writer.write(1, 1, b"late")


def test_killed_writer_leaves_a_file_readable_to_its_last_complete_entry(tmp_path):
    parent, child = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=write_until_killed, args=(str(tmp_path), child), daemon=True)
    proc.start()
    flushed, deadline = 0, time.monotonic() + 120
    try:
        while flushed < 6000:                         # three flushes: well into the stream
            if not parent.poll(0.5):
                assert proc.is_alive(), f"the writer died on its own (exit code {proc.exitcode})"
                assert time.monotonic() < deadline, "the writer made no progress"
                continue
            flushed = parent.recv()
        # Kill while the writer thread is writing: right after the file grows past what was flushed
        # (it writes through a 1 MiB buffer, so the file often ends inside an entry then).
        path = tmp_path / "coinbase" / "20240611_14.wslog"
        size_at_flush = path.stat().st_size
        while path.stat().st_size <= size_at_flush:
            assert proc.is_alive() and time.monotonic() < deadline, "the writer stopped writing"
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    files = wslog_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["coinbase/20240611_14.wslog"]
    reader = read_wslog(files[0])
    entries = list(reader)
    assert entries[0] == WslogEntry(BASE_NS, 1, b"wss://example.invalid", "connect")
    frames = entries[1:]
    assert len(frames) >= flushed
    assert all(e.recv_ns == BASE_NS + 1 + i and e.payload == payload_for(i) for i, e in enumerate(frames))
    assert reader.stop is None or "ends inside" in reader.stop.reason
    index = load_index(tmp_path)["files"]["coinbase/20240611_14.wslog"]
    assert index["state"] == "open"                    # the writer never closed it
    rebuilt = rebuild_index(tmp_path)["files"]["coinbase/20240611_14.wslog"]
    assert rebuilt["entries"] == len(entries) and rebuilt["markers"] == 1


def test_an_old_hour_being_written_stays_open_until_idle(tmp_path):
    """A backfill: entries of 2024 written with today's clock. The file closes only once nothing
    went into it for idle_grace, not after every batch."""
    clock = FakeClock(H14 + 1000 * 3600 * 10**9)
    with WslogWriter(tmp_path, {1: "coinbase"}, clock=clock, compress=False, idle_grace=5) as writer:
        for i in range(3):
            writer.write(H14 + i, 1, f"old {i}")
            assert writer.flush(timeout=30)
            clock.now += 1_000_000_000
        assert [p.name for p in (tmp_path / "coinbase").iterdir()] == ["20240611_14.wslog"]
        assert load_index(tmp_path)["files"]["coinbase/20240611_14.wslog"]["state"] == "open"
        clock.now += 5_000_000_000
        assert writer.flush(timeout=30)
        assert load_index(tmp_path)["files"]["coinbase/20240611_14.wslog"]["state"] == "closed"
    payloads = [e.payload for e in read_wslog(tmp_path / "coinbase" / "20240611_14.wslog")]
    assert payloads == [b"old 0", b"old 1", b"old 2"]


def test_a_writer_never_closed_still_writes_its_entries_at_exit(tmp_path):
    code = ("import sys; from shmpipe.wslog import WslogWriter\n"
            "w = WslogWriter(sys.argv[1], {1: 'coinbase'}, flush_interval=3600)\n"
            "for i in range(1000): w.write(1_718_116_200_000_000_000 + i, 1, b'x' * 100)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert [p.name for p in wslog_files(tmp_path)] == ["20240611_14.wslog.zst"]
    assert len(list(merge_wslogs([tmp_path]))) == 1000
