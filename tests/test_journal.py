"""The tick journal: committed-count ordering between a writer and readers in other processes,
kill -9, rotation at midnight UTC, numpy access and the errors a user can cause."""
from __future__ import annotations

import datetime as dt
import os
import queue
import shutil
import signal
import time

import numpy as np
import pytest
from isolation import SPAWN
from journal_workers import (
    DAY,
    DAY_NS,
    SYMBOL,
    append_until_killed,
    journal_ticks,
    read_while_written,
    write_in_two_halves,
)

from shmpipe import _ring, journal, symbols
from shmpipe.errors import (
    InvalidArgumentError,
    JournalBusyError,
    JournalFormatError,
    JournalNotFoundError,
    ShmpipeError,
    UnknownSymbolError,
)
from shmpipe.journal import TickJournal, committed_count, journal_info, journal_path, read_journal, ticks_for
from shmpipe.records import TICK

MIDNIGHT = 1_718_150_400 * 10**9                          # 2024-06-12T00:00:00Z


class FakeClock:
    def __init__(self, now_ns: int):
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_header_matches_the_c_struct():
    c = dict(_ring.file_layouts()["journal_header"])
    c["itemsize_field"], size = c.pop("itemsize_field"), c.pop("itemsize")
    assert journal.HEADER.itemsize == size == journal.DATA_OFFSET == 4096
    mine = {name: journal.HEADER.fields[name][1] for name in journal.HEADER.names}
    mine["itemsize_field"] = mine.pop("itemsize")
    assert mine == c


def test_round_trip_mixed_symbols_and_growth(tmp_path):
    ticks = journal_ticks(0, 5000)
    ticks["symbol_id"] = np.arange(5000) % 3
    with TickJournal(tmp_path, clock=lambda: DAY_NS, initial_capacity=16) as j:
        for start in range(0, 5000, 333):
            j.append(ticks[start:start + 333])
        j.append(ticks[0])                                 # a single record
    for sid in range(3):
        want = np.concatenate([ticks[ticks["symbol_id"] == sid], ticks[:1][ticks[:1]["symbol_id"] == sid]])
        got = ticks_for(tmp_path, sid, DAY)
        assert _same(got, want)
        assert not got.flags.writeable
    info = journal_info(journal_path(tmp_path, 0, DAY))
    assert info["committed"] == 1668 and info["closed"] and info["day"] == 20240611 and info["symbol_id"] == 0
    assert journal_path(tmp_path, 0, DAY).stat().st_size == 4096 + 1668 * 32   # the unused tail given back


def test_numpy_memmap_with_the_committed_count(tmp_path):
    with TickJournal(tmp_path, clock=lambda: DAY_NS) as j:
        j.append(journal_ticks(0, 100))
        path = journal_path(tmp_path, SYMBOL, DAY)
        header = np.memmap(path, np.uint8, mode="r", shape=(4096,))
        n = committed_count(header)                        # first the count (acquire) ...
        records = np.memmap(path, TICK, mode="r", offset=4096)[:n]     # ... then only that many records
        assert n == 100 and _same(np.asarray(records), journal_ticks(0, 100))


def test_a_reader_in_another_process_never_sees_past_committed(tmp_path):
    total = 200_000
    half_written, reader_saw_half, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    writer = SPAWN.Process(target=write_in_two_halves,
                           args=(str(tmp_path), total, half_written, reader_saw_half))
    reader = SPAWN.Process(target=_report, args=(results, read_while_written,
                                                 (str(tmp_path), total, half_written, reader_saw_half)))
    reader.start()
    writer.start()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                kind, value = results.get(timeout=0.5)
                break
            except queue.Empty:
                assert reader.is_alive() or not results.empty(), \
                    f"the reader died (exit code {reader.exitcode})"
                assert writer.exitcode in (None, 0), f"the writer failed (exit code {writer.exitcode})"
                assert time.monotonic() < deadline, "the reader did not finish"
        writer.join(60)
    finally:
        for p in (writer, reader):
            if p.is_alive():
                p.kill()
    assert kind == "ok", value
    assert writer.exitcode == 0
    assert value["distinct"] >= 3                # empty or partial, half, ..., all: it read while written
    assert _same(ticks_for(tmp_path, SYMBOL, DAY), journal_ticks(0, total))


def _report(results, target, args):
    try:
        results.put(("ok", target(*args)))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_killed_writer_leaves_the_committed_ticks_and_a_new_writer_carries_on(tmp_path):
    parent, child = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=append_until_killed, args=(str(tmp_path), child), daemon=True)
    proc.start()
    reported, deadline = 0, time.monotonic() + 120
    try:
        while reported < 50_000:
            if parent.poll(0.5):
                reported = parent.recv()
            else:
                assert proc.is_alive(), f"the writer died on its own (exit code {proc.exitcode})"
                assert time.monotonic() < deadline, "the writer made no progress"
        os.kill(proc.pid, signal.SIGKILL)                  # it is appending in a tight loop
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    ticks = ticks_for(tmp_path, SYMBOL, DAY)
    n = len(ticks)
    assert n >= reported and _same(ticks, journal_ticks(0, n))
    assert not journal_info(journal_path(tmp_path, SYMBOL, DAY))["closed"]
    with TickJournal(tmp_path, clock=lambda: DAY_NS) as j:  # the next writer takes over where it stopped
        j.append(journal_ticks(n, 1000))
    assert _same(ticks_for(tmp_path, SYMBOL, DAY), journal_ticks(0, n + 1000))


def test_rotation_at_midnight_utc(tmp_path):
    clock = FakeClock(MIDNIGHT - 100_000_000)             # 2024-06-11T23:59:59.9Z
    j = TickJournal(tmp_path, clock=clock)
    first = journal_ticks(0, 10)
    first["symbol_id"] = [1, 2] * 5
    j.append(first)
    old1, old2 = journal_path(tmp_path, 1, "20240611"), journal_path(tmp_path, 2, "20240611")
    assert not journal_info(old1)["closed"]
    clock.now = MIDNIGHT + 100_000_000                    # 2024-06-12T00:00:00.1Z
    second = journal_ticks(10, 4)
    second["symbol_id"] = 1
    j.append(second)
    assert journal_info(old1)["closed"] and journal_info(old2)["closed"]   # every file of the old day
    assert not journal_info(journal_path(tmp_path, 1, "20240612"))["closed"]
    j.close()
    assert _same(ticks_for(tmp_path, 1, "2024-06-11"), first[first["symbol_id"] == 1])
    assert _same(ticks_for(tmp_path, 1, dt.date(2024, 6, 12)), second)
    assert len(ticks_for(tmp_path, 2, "20240612")) == 0   # no ticks for symbol 2 that day


def test_rotate_closes_a_quiet_symbol_at_midnight(tmp_path):
    clock = FakeClock(MIDNIGHT - 1)
    with TickJournal(tmp_path, clock=clock) as j:
        j.append(journal_ticks(0, 3))
        clock.now = MIDNIGHT
        j.rotate()
        assert journal_info(journal_path(tmp_path, SYMBOL, "20240611"))["closed"]


def test_ticks_for_by_exchange_and_symbol(tmp_path):
    name = f"test-journal-{os.getpid()}"
    try:
        with symbols.SymbolRegistry.open(name, path=tmp_path / "symbols.jsonl") as registry:
            sid = registry.id_of("kraken", "BTC/USD")
            ticks = journal_ticks(0, 5)
            ticks["symbol_id"] = sid
            with TickJournal(tmp_path / "j", clock=lambda: DAY_NS) as j:
                j.append(ticks)
            assert _same(ticks_for(tmp_path / "j", ("kraken", "BTC/USD"), DAY, registry=registry), ticks)
            with pytest.raises(UnknownSymbolError, match="'kraken', 'ETH/USD'"):
                ticks_for(tmp_path / "j", ("kraken", "ETH/USD"), DAY, registry=registry)
    finally:
        symbols.remove_segment(name)


# -- errors a user can cause ----------------------------------------------------------------------------
def test_appending_something_else_than_ticks_is_refused(tmp_path):
    with TickJournal(tmp_path) as j:
        for bad in (np.zeros(3, np.float64), [1, 2], b"x" * 32):
            with pytest.raises(InvalidArgumentError, match="the journal takes shmpipe.records.TICK records"):
                j.append(bad)


@pytest.mark.parametrize("day", ["2024/06/11", "20241341", 20240611.0, None, True])
def test_a_bad_day_is_refused(tmp_path, day):
    with pytest.raises(InvalidArgumentError, match="day must be a date or 'YYYYMMDD' / 'YYYY-MM-DD'"):
        ticks_for(tmp_path, 1, day)


@pytest.mark.parametrize("symbol", [-1, 1 << 32, "7", 1.0])
def test_a_bad_symbol_is_refused(tmp_path, symbol):
    with pytest.raises(InvalidArgumentError,
                       match="symbol must be a u32 symbol id or \\(exchange, symbol\\)"):
        ticks_for(tmp_path, symbol, DAY)


def test_a_missing_journal_directory_is_named(tmp_path):
    with pytest.raises(JournalNotFoundError, match=f"no tick journal at {tmp_path / 'nope'}"):
        ticks_for(tmp_path / "nope", 1, DAY)
    assert issubclass(JournalNotFoundError, FileNotFoundError)
    assert issubclass(JournalNotFoundError, ShmpipeError)


def test_a_corrupt_or_misplaced_file_is_named(tmp_path):
    with TickJournal(tmp_path, clock=lambda: DAY_NS) as j:
        j.append(journal_ticks(0, 3))
    path = journal_path(tmp_path, SYMBOL, DAY)
    moved = journal_path(tmp_path, 8, DAY)
    shutil.copy(path, moved)
    with pytest.raises(JournalFormatError, match=f"{moved} is the journal of symbol 7, not 8"):
        ticks_for(tmp_path, 8, DAY)
    with open(moved, "r+b") as f:
        f.write(b"\xff" * 8)
    with pytest.raises(JournalFormatError, match=f"{moved} is not a version-1 tick journal"):
        read_journal(moved)
    moved.write_bytes(b"short")
    with pytest.raises(JournalFormatError, match=f"{moved} is 5 bytes, shorter than a journal header"):
        read_journal(moved)


def test_two_writers_of_one_file_are_refused(tmp_path):
    with TickJournal(tmp_path, clock=lambda: DAY_NS) as a, TickJournal(tmp_path, clock=lambda: DAY_NS) as b:
        a.append(journal_ticks(0, 1))
        with pytest.raises(JournalBusyError, match=f"{journal_path(tmp_path, SYMBOL, DAY)} is being written"):
            b.append(journal_ticks(1, 1))


def test_a_forked_child_cannot_write_its_parents_journal(tmp_path):
    with TickJournal(tmp_path, clock=lambda: DAY_NS) as j:
        j.append(journal_ticks(0, 1))
        pid = os.fork()
        if pid == 0:
            try:
                j.append(journal_ticks(1, 1))
                os._exit(1)
            except JournalBusyError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        j.append(journal_ticks(1, 1))                      # the parent's files are untouched
    assert _same(ticks_for(tmp_path, SYMBOL, DAY), journal_ticks(0, 2))


def test_a_closed_journal_refuses_appends(tmp_path):
    j = TickJournal(tmp_path)
    j.close()
    with pytest.raises(JournalBusyError, match="is closed"):
        j.append(journal_ticks(0, 1))
