"""What every consumer process shares: the ring stream, the signals publisher, a control endpoint,
live counters, signals handling, and a loop that wakes at least every ``idle_s`` so timers run.

A service subclasses ``ConsumerService`` and fills in ``on_batch`` (a numpy batch), ``on_time``
(the wall clock, every loop turn), ``on_end`` (how the loop ended) and ``counters``.

Control commands (``shmpipe.control.request(NAME, command)`` from any process): ``status``,
``stats`` (the counters), ``pause`` (stop reading: records wait in the ring; on a lossless
broadcast ring the producer waits for this reader, and evicts it after the ring's
``consumer_timeout``, which ends the service with an error), ``resume``, ``stop`` (end as on
SIGTERM).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import shmpipe
from shmpipe import control
from shmpipe import stats as shm_stats
from shmpipe.errors import ConsumerEvictedError, InvalidNameError, ShmpipeError
from shmpipe.signals import SignalPublisher

STATS_INTERVAL_S = 0.5
HEARTBEAT_S = 1.0


class ConsumerError(Exception):
    """A one-line reason the service cannot run (a missing ring, a taken name, a bad endpoint)."""


@dataclass
class LoopOptions:
    ring: str
    pub: str | None                 # signals endpoint; None: connect to the host's bus
    name: str                       # control endpoint and stats segment
    bind: bool | None = None        # None: bind an explicit endpoint, connect to the bus
    start: str = "oldest"
    max_n: int = 4096
    idle_s: float = 0.05            # the longest the loop sleeps without looking at its timers
    follow: bool = False            # keep waiting when the producer has gone


class ConsumerService:
    kind = "consumer"
    dtype: np.dtype

    def __init__(self, options: LoopOptions) -> None:
        self.options = options
        self.stop_requested = False
        self.paused = False
        self.ended = ""               # "producer gone", "stopped", "signal"
        self.published = 0
        self.started_ns = time.time_ns()
        self._stream: shmpipe.BatchStream | None = None

    # -- to fill in ----------------------------------------------------------------------------
    def on_batch(self, batch: np.ndarray) -> None:
        raise NotImplementedError

    def on_time(self, now_ns: int) -> None:
        pass

    def on_end(self, producer_gone: bool) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    # -- shared ------------------------------------------------------------------------------------
    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self.publisher.publish(topic, data)
        self.published += 1

    def all_counters(self) -> dict[str, Any]:
        stream = self._stream
        base = {"consumed": 0, "batches": 0, "lost": 0} if stream is None else stream.counters()
        return {**base, "published": self.published, **self.counters()}

    def _status(self, _args: dict) -> dict[str, Any]:
        return {"service": self.kind, "name": self.options.name, "ring": self.options.ring,
                "state": "paused" if self.paused else "running", "pid": os.getpid(),
                "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3), **self.all_counters()}

    def _pause(self, _args: dict) -> dict[str, Any]:
        self.paused = True
        return {"state": "paused"}

    def _resume(self, _args: dict) -> dict[str, Any]:
        self.paused = False
        return {"state": "running"}

    def _stop(self, _args: dict) -> dict[str, Any]:
        self.stop_requested = True
        self.ended = self.ended or "stopped"
        return {"state": "stopping"}

    def _open(self):
        opts = self.options
        try:
            ring = shmpipe.Ring.open(opts.ring, self.dtype)
        except shmpipe.RingNotFoundError:
            raise ConsumerError(f"ring {opts.ring!r} does not exist (start its producer first, e.g. "
                                f"shmpipe capture)") from None
        except ShmpipeError as exc:          # wrong dtype, not a ring, not ours
            raise ConsumerError(str(exc)) from None
        try:
            self.publisher = SignalPublisher(opts.pub, bind=opts.bind, source=opts.name)
        except control.ControlError as exc:
            ring.close()
            raise ConsumerError(str(exc)) from None
        try:
            self.control = control.ControlServer(opts.name, {
                "status": self._status, "stats": lambda _a: self.all_counters(),
                "pause": self._pause, "resume": self._resume, "stop": self._stop})
        except (control.ControlError, InvalidNameError, ValueError) as exc:
            self.publisher.close()
            ring.close()
            raise ConsumerError(str(exc)) from None
        return ring

    def run(self) -> dict[str, Any]:
        """Consume until the producer is gone and the ring drained (unless ``follow``), ``stop``,
        SIGTERM or SIGINT. Returns the final counters. Raises ConsumerError before anything ran."""
        opts = self.options
        ring = self._open()
        stats_pub = None
        previous_handlers = {}
        try:
            fields = sorted(k for k, v in self.all_counters().items() if isinstance(v, int))
            try:
                stats_pub = shm_stats.publish(opts.name, fields)
            except (shm_stats.StatsBusyError, InvalidNameError) as exc:
                raise ConsumerError(str(exc)) from None
            self._stream = shmpipe.batches(ring, opts.max_n, timeout=opts.idle_s, start=opts.start,
                                           stop_when_producer_gone=not opts.follow)
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    previous_handlers[sig] = signal.signal(sig, self._on_signal)
            self.control.start_thread()
            self._loop(stats_pub, fields)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            result = self.all_counters()
            if stats_pub is not None:
                stats_pub.update({k: result[k] for k in fields})
                stats_pub.close()
            if self._stream is not None:
                self._stream.close()
            self.control.close()
            self.publisher.close()
            ring.close()
            self.close()
        result = self.all_counters()
        result["ended"] = self.ended
        return result

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requested = True
        self.ended = self.ended or "signal"

    def _loop(self, stats_pub, fields: list[str]) -> None:
        stream = self._stream
        next_stats = next_beat = 0.0
        while not self.stop_requested:
            if self.paused:
                time.sleep(self.options.idle_s)
                batch = None
            else:
                try:
                    batch = next(stream, None)
                except ConsumerEvictedError as exc:
                    raise ConsumerError(f"{exc} (paused or stalled longer than the ring's consumer "
                                        f"timeout)") from None
                if batch is None:             # the producer is gone and every record was read
                    self.ended = "producer gone"
                    self.on_end(producer_gone=True)
                    return
                if len(batch):
                    self.on_batch(batch)
            self.on_time(time.time_ns())
            now = time.monotonic()
            if now >= next_stats:
                counters = self.all_counters()
                stats_pub.update({k: counters[k] for k in fields})
                next_stats = now + STATS_INTERVAL_S
            if now >= next_beat:
                self.publisher.heartbeat(kind=self.kind, state="paused" if self.paused else "running",
                                         consumed=stream.consumed, lost=stream.lost)
                next_beat = now + HEARTBEAT_S
        self.on_end(producer_gone=False)


__all__ = ["ConsumerError", "ConsumerService", "LoopOptions"]
