"""What both bridges share while running: the SIGTERM flag, live counters (a shmpipe.stats segment,
which `shmpipe metrics` exports), the control plane (status, stats, pause, resume, stop) and test
crash points."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from shmpipe import stats

COUNTERS = ["redis_up", "records", "entries", "bytes", "retries", "duplicates_dropped", "gap_records",
            "lag_records", "lag_entries", "pending_entries", "records_per_s", "last_seq"]

# A pause request waits this long for the batch in flight (shorter than control's 2 s default).
PAUSE_ACK_S = 1.5

# SHMPIPE_BRIDGE_CRASH="point:k" makes the process SIGKILL itself the k-th time it reaches
# `point` (tests use it to hit one exact window, e.g. between the ring write and the XACK).
_CRASH_ENV = "SHMPIPE_BRIDGE_CRASH"


class Runtime:
    def __init__(self, stats_name: str | None) -> None:
        self.name = stats_name
        self.stop_requested = False
        self.paused = False
        self._pause_seen = threading.Event()
        self._control = None
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._publisher = None       # start_publishing(), once the bridge holds its ring role
        self._last_publish = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._crash_point, self._crash_left = None, 0
        self._failing = False
        spec = os.environ.get(_CRASH_ENV)
        if spec:
            point, _, count = spec.partition(":")
            self._crash_point, self._crash_left = point, int(count or 1)

    def start_publishing(self) -> None:
        """After the bridge took its role in the ring: a second bridge on an SPSC ring is refused
        as the ring's second consumer/producer, not as a clash of stats names."""
        if self.name and self._publisher is None:
            self._publisher = stats.publish(self.name, COUNTERS)
            self._publisher.update(self.counters)

    def install_signal_handlers(self) -> None:
        def request_stop(_signum, _frame):
            self.stop_requested = True
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def serve_control(self, describe, prog: str) -> None:
        """Answer status/stats/pause/resume/stop at ``shmpipe.control.endpoint_for(name)`` (the
        stats name) from a daemon thread. The bridge works without it: a problem is said on stderr."""
        service = self.name
        if not service:
            return
        def status(_args):
            return {**describe(), "paused": self.paused, "stopping": self.stop_requested,
                    "counters": dict(self.counters)}

        def pause(_args):
            # answered once the loop has finished the batch in flight: after this reply nothing moves
            self._pause_seen.clear()
            self.paused = True
            return {"paused": True, "idle": self._pause_seen.wait(PAUSE_ACK_S)}

        def resume(_args):
            self.paused = False
            return {"paused": False}

        def stop(_args):
            self.stop_requested = True
            return {"stopping": True}
        try:
            from shmpipe import control
            self._control = control.ControlServer(service, {
                "status": status, "stats": lambda _args: dict(self.counters),
                "pause": pause, "resume": resume, "stop": stop})
            self._control.start_thread()
        except Exception as exc:  # noqa: BLE001 -- no pyzmq, a name too long for a socket, an unusable directory
            self.warn(prog, f"no control endpoint for {service!r}: {exc}")

    def holding(self) -> bool:
        """True while paused; the loop calls it between batches and idles meanwhile."""
        if self.paused:
            self._pause_seen.set()
            return True
        return False

    def stopping(self) -> bool:
        return self.stop_requested

    def add(self, **deltas: int) -> None:
        for key, value in deltas.items():
            self.counters[key] += value

    def set(self, **values: int) -> None:
        self.counters.update(values)

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < 0.2:
            return
        mark_t, mark_records = self._rate_mark
        if now - mark_t >= 1.0:
            self.counters["records_per_s"] = int((self.counters["records"] - mark_records) / (now - mark_t))
            self._rate_mark = (now, self.counters["records"])
        self._last_publish = now
        if self._publisher is not None:
            self._publisher.update(self.counters)

    def crash_point(self, name: str) -> None:
        if self._crash_point == name:
            self._crash_left -= 1
            if self._crash_left <= 0:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def retrying(self, prog: str, shown_url: str, exc: BaseException) -> None:
        """Count a transient Redis failure; say so once per run of failures, not per attempt."""
        self.counters["retries"] += 1
        self.counters["redis_up"] = 0
        if not self._failing:
            self._failing = True
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.warn(prog, f"Redis at {shown_url}: {text}; reconnecting")
        self.publish(force=True)

    def recovered(self, prog: str) -> None:
        """After every successful exchange with Redis (cheap: says something only after failures)."""
        self.counters["redis_up"] = 1
        if self._failing:
            self._failing = False
            self.warn(prog, "Redis is back; resumed")

    def warn(self, prog: str, message: str) -> None:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._publisher is not None:
            self._publisher.update(self.counters)
            self._publisher.close()
            self._publisher = None
