"""The verify process: reads a TICK ring as a broadcast member, checks every tick (``ticks.py``),
publishes its counters to ``shmpipe.stats`` under its name and answers the control plane as that
service (status, stats, pause, resume, stop) when pyzmq is installed.

Pausing stops reading: a lossless ring's producer then waits for this reader, and after the ring's
``consumer_timeout`` evicts it. An evicted reader re-joins at the newest record and counts the
ticks it skipped as lost: a pause is visible, never silent.

Ticks no verify read are counted as ``unchecked``, never as ``lost 0``: those numbered before the
first one this run read (a reader joining at the newest record misses what came before it), or,
when this verify replaces one that died (its stats segment is left, its publisher dead), those
after the last sequence the dead one published -- the ticks written while no verify ran. That
last sequence is published after every batch, so at most one batch the dead run had checked may
be counted again as unchecked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import shmpipe
from shmpipe import stats as shm_stats
from shmpipe.records import TICK

from .ticks import TickChecker

STATS_FIELDS = [
    "records",
    "lost",
    "disorder",
    "restarts_seen",
    "evictions",
    "ring_lost",
    "latency_p50_us",
    "latency_p99_us",
    "event_to_read_p50_us",
    "event_to_read_p99_us",
    "last_sequence",
    "unchecked",
]
GAUGE_FIELDS = ["latency_p50_us", "latency_p99_us", "event_to_read_p50_us", "event_to_read_p99_us"]  # levels: no rate (inspect, metrics)
STATS_INTERVAL_S = 0.1
CONTROL_INTERVAL_S = 0.05


class VerifyError(Exception):
    """A setup failure (no such ring, not TICK records, the name taken): one line."""


class Verifier:
    def __init__(self, ring_name: str, name: str, *, start: str = "newest", sequence: bool = True) -> None:
        try:
            self.ring = shmpipe.Ring.open(ring_name, TICK)
        except shmpipe.ShmpipeError as exc:
            raise VerifyError(f"ring {ring_name!r}: {exc}") from None
        self.name = name
        self.start = start
        self.checker = TickChecker(sequence)
        self.evictions = 0
        self.ring_lost = 0
        self.paused = False
        self.stopping = False
        self.consumer = None
        self.started = time.monotonic()
        self.resumed_after = _dead_run_last_sequence(name) if sequence else None
        try:
            self.publisher = shm_stats.publish(name, STATS_FIELDS, gauges=GAUGE_FIELDS)
        except (shm_stats.StatsBusyError, shmpipe.ShmpipeError) as exc:
            self.ring.close()
            raise VerifyError(str(exc)) from None
        self.control = None
        try:
            from shmpipe import control

            self.control = control.ControlServer(
                name,
                {
                    "status": self._status,
                    "stats": lambda _a: self.counters(),
                    "pause": self._pause,
                    "resume": self._resume,
                    "stop": self._stop,
                },
            )
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001 - ControlError: no pyzmq, the name taken
            if "pyzmq" not in str(exc):
                self.close()
                raise VerifyError(str(exc)) from None

    # control handlers (run in this process's loop, between reads)
    def _status(self, _args: dict) -> dict:
        return {
            "service": self.name,
            "pid": os.getpid(),
            "ring": self.ring.name,
            "state": "paused" if self.paused else "running",
            "uptime_s": round(time.monotonic() - self.started, 3),
            **self.counters(),
        }

    def _pause(self, _args: dict) -> dict:
        self.paused = True
        return {"state": "paused"}

    def _resume(self, _args: dict) -> dict:
        self.paused = False
        return {"state": "running"}

    def _stop(self, _args: dict) -> dict:
        self.stopping = True
        return {"state": "stopping"}

    def unchecked(self) -> int:
        """Ticks numbered before the first one this run read that no verify checked."""
        first = self.checker.first_seq
        if first is None or not self.checker.sequence:
            return 0
        if self.resumed_after is not None and first > self.resumed_after:
            return first - self.resumed_after - 1
        return first  # a fresh start, or the producer started again from 0 since the dead run

    def counters(self) -> dict:
        out = self.checker.summary()
        out["lost"] += self.ring_lost
        out.update(evictions=self.evictions, ring_lost=self.ring_lost, unchecked=self.unchecked())
        if self.resumed_after is not None:
            out["resumed_after_sequence"] = self.resumed_after
        return out

    def publish(self) -> None:
        c = self.counters()
        self.publisher.update(
            {
                "records": c["records"],
                "lost": c["lost"],
                "disorder": c["disorder"],
                "restarts_seen": c["restarts_seen"],
                "evictions": self.evictions,
                "ring_lost": self.ring_lost,
                "last_sequence": c["last_sequence"] or 0,
                "latency_p50_us": round(c.get("p50_us", 0)),
                "latency_p99_us": round(c.get("p99_us", 0)),
                "unchecked": c["unchecked"],
                "event_to_read_p50_us": round(c.get("event_to_read_p50_us", 0)),
                "event_to_read_p99_us": round(c.get("event_to_read_p99_us", 0)),
            }
        )

    def _join(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        self.consumer = self.ring.consumer(start=self.start) if self.ring.broadcast else self.ring.consumer()

    def run(self, seconds: float | None = None) -> dict:
        deadline = None if seconds is None else time.monotonic() + seconds
        next_stats = next_control = 0.0
        self._join()
        try:
            while not self.stopping:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_control and self.control is not None:
                    self.control.poll(0)
                    next_control = now + CONTROL_INTERVAL_S
                if now >= next_stats:
                    self.publish()
                    next_stats = now + STATS_INTERVAL_S
                if self.paused:
                    time.sleep(CONTROL_INTERVAL_S)
                    continue
                try:
                    batch = self.consumer.read(8192, timeout=CONTROL_INTERVAL_S)
                except shmpipe.ConsumerEvictedError:
                    self.evictions += 1
                    self._join()  # the ticks skipped show as a sequence gap: counted lost
                    continue
                if len(batch):
                    self.checker.check(batch, time.time_ns())
                    self.ring_lost = self.consumer.lost if self.ring.broadcast else 0
                    # at once, not at the next stats tick: a run that replaces this one after a
                    # crash counts from here, and every tick checked but not published it
                    # would count again as unchecked
                    self.publisher.update(
                        {"records": self.checker.records, "last_sequence": self.checker.last_seq or 0}
                    )
        finally:
            self.checker.finish()
            self.publish()
        return self.counters()

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self.publisher.close()
        self.ring.close()


def _dead_run_last_sequence(name: str) -> int | None:
    """The last sequence a dead verify of this name published (its segment outlives a kill -9),
    or None when there was none, it is alive, or it had read nothing."""
    try:
        previous = shm_stats.read(name)
    except (FileNotFoundError, shmpipe.ShmpipeError, OSError):
        return None
    counters = previous["counters"]
    if previous["live"] or not counters.get("records"):
        return None
    return counters.get("last_sequence")


def main(
    ring: str, name: str, seconds: float | None, as_json: bool, start: str = "newest", sequence: bool = True
) -> int:
    try:
        verifier = Verifier(ring, name, start=start, sequence=sequence)
    except VerifyError as exc:
        print(f"shmpipe verify: {exc}", file=sys.stderr)
        return 1
    if verifier.resumed_after is not None:
        print(
            f"shmpipe verify: a previous {name!r} died after sequence {verifier.resumed_after}; "
            "the ticks after it that this run does not read are counted as unchecked",
            file=sys.stderr,
            flush=True,
        )

    def on_signal(_sig, _frame):
        verifier.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        result = verifier.run(seconds)
    finally:
        verifier.close()
    if result["unchecked"]:
        first = result["first_sequence"]
        print(
            f"shmpipe verify: {result['unchecked']:,} ticks numbered before {first} were not checked "
            + (
                "(written while no verify ran)"
                if verifier.resumed_after is not None
                else "by this run (written before it joined)"
            ),
            file=sys.stderr,
            flush=True,
        )
    if as_json:
        print(json.dumps(result, sort_keys=True), flush=True)
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
        sys.stdout.flush()
    # the check's verdict: a lost or disordered tick fails the run
    return 1 if result["lost"] or result["disorder"] else 0
