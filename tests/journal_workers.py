"""Child-process bodies for the tick journal tests (importable by multiprocessing 'spawn').

A tick is a pure function of its sequence number, so a reader can check every byte it is given."""
from __future__ import annotations

import mmap
import os
import time

import numpy as np
from ring_workers import make_ticks

from shmpipe.journal import TickJournal, committed_count, journal_path, ticks_for

SYMBOL = 7
DAY_NS = 1_718_064_000 * 10**9 + 3_600 * 10**9          # 2024-06-11T01:00:00Z
DAY = "20240611"


def journal_ticks(start: int, n: int) -> np.ndarray:
    ticks = make_ticks(start, n)
    ticks["symbol_id"] = SYMBOL
    return ticks


def batch_sizes(seed: int):
    """Batch sizes from 1 to 700, varied so appends straddle the file's growth points."""
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(1, 701))


def write_in_two_halves(directory: str, total: int, half_written, reader_saw_half) -> None:
    """Append ``total`` ticks; after the first half, wait until the reader has seen them (so at
    least one read happens while the file is open and growing), then append the rest."""
    with TickJournal(directory, clock=lambda: DAY_NS, initial_capacity=1024) as journal:
        pos, sizes = 0, batch_sizes(1)
        while pos < total:
            n = min(next(sizes), total - pos)
            journal.append(journal_ticks(pos, n))
            pos += n
            if pos >= total // 2 and not half_written.is_set():
                half_written.set()
                if not reader_saw_half.wait(60):
                    raise TimeoutError("the reader never saw the first half")


def read_while_written(directory: str, total: int, half_written, reader_saw_half) -> dict:
    """Follow the file as it is written until all ``total`` ticks are there. A tight loop on one
    mapping (remapped as the file grows) checks the new ticks right after each acquire load of
    the committed count, where a writer that published before copying would show zeros; every
    hundredth pass also goes through ticks_for, the public reader."""
    expected = journal_ticks(0, total).view(np.uint8).reshape(total, -1)
    path = journal_path(directory, SYMBOL, DAY)
    deadline = time.monotonic() + 60
    while not path.exists() or path.stat().st_size < 4096:
        assert time.monotonic() < deadline, f"{path} was never made"
    seen, passes, last, mm = set(), 0, 0, None
    with open(path, "rb") as f:
        while last < total:
            if mm is None or last >= (len(mm) - 4096) // 32:
                mm = mmap.mmap(f.fileno(), os.fstat(f.fileno()).st_size, prot=mmap.PROT_READ)
            n = committed_count(mm)                               # acquire ...
            visible = min(n, (len(mm) - 4096) // 32)
            got = np.frombuffer(mm, np.uint8, count=(visible - last) * 32, offset=4096 + last * 32)
            got = got.reshape(visible - last, 32)                 # ... then the records it covers
            bad = np.flatnonzero((got != expected[last:visible]).any(axis=1))
            assert not len(bad), \
                f"tick {last + bad[0]} (committed {n}) is not the one written: torn or unwritten"
            assert n >= last, f"the committed count went back from {last} to {n}"
            if passes % 100 == 0:
                ticks = ticks_for(directory, SYMBOL, DAY, copy=True)
                assert len(ticks) >= visible and not (ticks.view(np.uint8).reshape(len(ticks), -1)
                                                      != expected[:len(ticks)]).any()
            if half_written.is_set() and visible >= total // 2:
                reader_saw_half.set()
            seen.add(visible)
            passes, last = passes + 1, visible
    return {"passes": passes, "distinct": len(seen)}


def append_until_killed(directory: str, progress) -> None:
    """Append batches forever, reporting the committed count after every tenth batch."""
    with TickJournal(directory, clock=lambda: DAY_NS, initial_capacity=1024) as journal:
        pos, sizes = 0, batch_sizes(2)
        for batch in range(1 << 62):
            n = next(sizes)
            journal.append(journal_ticks(pos, n))
            pos += n
            if batch % 10 == 0:
                progress.send(pos)
