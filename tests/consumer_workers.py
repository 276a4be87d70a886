"""Child-process bodies for the consumer tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from ring_workers import make_ticks

import shmpipe
from shmpipe.records import BOOK_FLAG_GAP, BOOK_FLAG_INVALID, ORDERBOOK_ENTRY


def produce_in_chunks(name: str, total: int, seed: int) -> None:
    """Write ticks 0..total-1 in chunks of random size, then leave (closing the producer role)."""
    rng = np.random.default_rng(seed)
    with shmpipe.Ring.open(name) as ring, ring.producer() as out:
        written = 0
        while written < total:
            n = int(min(total - written, rng.integers(1, 3000)))
            assert out.write_batch(make_ticks(written, n), timeout=30.0) == n
            written += n


def random_books(n: int, seed: int = 0, symbols=(3, 7, 11)) -> np.ndarray:
    """Books that random-walk per symbol, with random depths (some sides empty, some books
    flagged invalid) so every skip path is taken."""
    rng = np.random.default_rng(seed)
    books = np.zeros(n, ORDERBOOK_ENTRY)
    books["symbol_id"] = rng.choice(symbols, n)
    books["timestamp_ns"] = 1_700_000_000_000_000_000 + np.arange(n) * 1000
    books["sequence"] = np.arange(n)
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    for i in range(n):
        nb, na = rng.integers(0, 12, 2) if rng.random() < 0.1 else rng.integers(1, 12, 2)
        half = rng.uniform(0.01, 0.05)
        books["bids"][i, :nb, 0] = mid[i] - half - 0.01 * np.arange(nb)
        books["bids"][i, :nb, 1] = rng.uniform(0.1, 5, nb)
        books["asks"][i, :na, 0] = mid[i] + half + 0.01 * np.arange(na)
        books["asks"][i, :na, 1] = rng.uniform(0.1, 5, na)
        books["bid_count"][i], books["ask_count"][i] = nb, na
    invalid = rng.random(n) < 0.05
    books["flags"][invalid] = BOOK_FLAG_INVALID | BOOK_FLAG_GAP
    books["flags"][~invalid & (rng.random(n) < 0.05)] = BOOK_FLAG_GAP   # a reason bit alone is no skip
    return books


# -- running the consumer processes ----------------------------------------------------------------

DEADLINE_S = 30.0


def spawn_cli(*args: str) -> subprocess.Popen:
    """``python -m shmpipe_tools.cli ARGS`` with this process's environment (the test's runtime
    directory and symbol registry) and piped text output."""
    return subprocess.Popen([sys.executable, "-m", "shmpipe_tools.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=DEADLINE_S)


def run_cli(*args: str) -> tuple[int, str, str]:
    proc = spawn_cli(*args)
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        stop(proc)
    return proc.returncode, out, err


def wait_for_heartbeat(sub, proc: subprocess.Popen, source: str) -> None:
    """Until the process's first heartbeat arrives: the subscription is in place from then on."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        msg = sub.recv(timeout=0.2)
        if msg is not None and msg.topic == "system.heartbeat" and msg.source == source:
            return
    raise AssertionError("no heartbeat within the deadline")


def receive(sub, topic_prefix: str, count: int, proc: subprocess.Popen | None = None) -> list:
    """Exactly ``count`` signals on topics starting with ``topic_prefix`` (others are skipped)."""
    got = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < count and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.2)
        if msg is not None and msg.topic.startswith(topic_prefix):
            got.append(msg)
    assert len(got) == count, f"{len(got)} of {count} signals on {topic_prefix}"
    return got


def sigterm_and_counters(proc: subprocess.Popen) -> tuple[int, dict, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, json.loads(out) if out.strip() else {}, err


def finish(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, json.loads(out) if out.strip() else {}, err


def produce_forever(name: str) -> None:
    """Write ticks 0, 1, 2, ... until killed."""
    with shmpipe.Ring.open(name) as ring, ring.producer() as out:
        written = 0
        while True:
            out.write_batch(make_ticks(written, 500))
            written += 500
