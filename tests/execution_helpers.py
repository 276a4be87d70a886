"""Real processes for the execution tests: the venue emulator, the engine, a private signals bus,
each started with a time limit on what they must say and stopped (or killed) by the test."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

KEYS = {"APCA_API_KEY_ID": "test-key-id-123", "APCA_API_SECRET_KEY": "test-secret-456"}
SHMPIPE = [sys.executable, "-m", "shmpipe_tools.cli"]


def env() -> dict[str, str]:
    return {**os.environ, **KEYS}


class Proc:
    """A child with its stderr collected on a thread (so it never blocks on a full pipe)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")
        self.p = subprocess.Popen(SHMPIPE + args, env=env(), stdout=subprocess.PIPE, stderr=self._out)
        self.stdout = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        self.stdout = self.p.stdout.read()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.p.poll() is not None:
                raise AssertionError(f"process ended (rc {self.p.returncode}) before {pattern!r}:\n{self.text()}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(5)
        self._reader.join(5)
        self._out.close()
        return rc

    def kill9(self) -> None:
        self.p.kill()
        self.p.wait(10)
        self._reader.join(5)
        self._out.close()


def start_emulator(tmp: Path, *extra: str, name: str = "alpaca-paper") -> tuple[Proc, str]:
    proc = Proc(["alpaca-paper", "--name", name, "--price", "AAPL=100", "--price", "MSFT=200",
                 "--default-price", "50", "--json", *extra], tmp / f"{name}.log")
    url = proc.wait_for(r"listening on (http://[0-9.:]+)").group(1)
    return proc, url


def start_engine(tmp: Path, url: str, *extra: str, name: str = "execute", log: str | None = None) -> Proc:
    proc = Proc(["execute", "--venue", url, "--journal", str(tmp / "journal.sqlite"), "--name", name,
                 "--backoff-scale", "0.01", "--http-timeout", "0.5", "--refresh", "0.5", "--json", *extra],
                tmp / (log or f"{name}.log"))
    return proc


class Listener:
    """Collects execution.order answers (the last state of each intent) from the bus."""

    def __init__(self, topics=("execution.",)) -> None:
        from shmpipe.signals import SignalSubscriber
        self.sub = SignalSubscriber(None, topics)
        self.states: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.messages: dict[str, list] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.sub.recv(timeout=0.05)
            if msg is None:
                continue
            self.messages[msg.topic].append(msg.data)
            if msg.topic == "execution.order" and msg.data.get("intent_id"):
                key = msg.data["intent_id"]
                # the last word wins, except that "queued" never overrides a final state
                if msg.data["state"] != "queued" or key not in self.states:
                    self.states[key] = msg.data["state"]
                    self.reasons[key] = msg.data.get("reason", "")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sub.close()


def unique(kind: str) -> str:
    """A service name of this test's own: control endpoint and stats segment (/dev/shm is shared)."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def remove_stats(*names: str) -> None:
    """A process killed with SIGKILL leaves its stats segment by design (read() reports it stale)."""
    for name in names:
        Path(f"/dev/shm/shmpipe-stats.{name}").unlink(missing_ok=True)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


class BookWriter:
    """Writes one symbol's book to a books ring every 20 ms while ``live``."""

    def __init__(self, ring, symbol_id: int) -> None:
        from shmpipe.records import ORDERBOOK_ENTRY
        self.entry = np.zeros(1, ORDERBOOK_ENTRY)
        self.entry["symbol_id"] = symbol_id
        self.entry["bids"][0, 0] = (99.99, 1.0)
        self.entry["asks"][0, 0] = (100.01, 1.0)
        self.entry["bid_count"] = self.entry["ask_count"] = 1
        self.producer = ring.producer()
        self.live = threading.Event()
        self.live.set()
        self.flags = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.live.is_set():
                self.entry["timestamp_ns"] = time.time_ns()
                self.entry["flags"] = self.flags
                self.producer.write_batch(self.entry)
            self._stop.wait(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.producer.close()
