"""Asking capture for fresh snapshots of the books the order book found wrong.

Requests go over the control plane (``capture.resnapshot`` with ``{"symbol_id": id}``) from a worker
thread, so a slow or absent capture never stalls the book loop. Per symbol, while its book stays
invalid: the first request goes at once, then again after 1, 2, 4 ... up to 30 s (a snapshot may be
lost, or capture may be restarting); two requests for one symbol are never closer than the minimum
interval, even when a book flaps between valid and invalid. A request that fails (no capture, a
timeout, a refusal) is counted and retried on that schedule; nothing here raises into the loop.

Which capture: the names given (``--capture``, repeatable), else every service on the host whose
``status`` says it writes our levels ring (``{"levels": name}``), found again after a failure.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable

from shmpipe import control

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 30.0
REQUEST_TIMEOUT_S = 2.0
DISCOVERY_TIMEOUT_S = 0.5
DISCOVERY_TTL_S = 10.0
NOT_FOUND_TTL_S = 1.0


class Resnapshotter:
    def __init__(self, levels_ring: str, captures: Iterable[str] = (), *, own_name: str | None = None,
                 min_interval_s: float = MIN_INTERVAL_S, max_interval_s: float = MAX_INTERVAL_S,
                 timeout_s: float = REQUEST_TIMEOUT_S,
                 request: Callable[..., dict] = control.request,
                 list_services: Callable[[], list[str]] = control.list_services,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.levels_ring = levels_ring
        self.explicit = list(captures)
        self.own_name = own_name
        self.min_interval_s, self.max_interval_s, self.timeout_s = min_interval_s, max_interval_s, timeout_s
        self._request, self._list_services, self._clock = request, list_services, clock
        self._next_at: dict[int, float] = {}       # symbol -> when it may be asked for again
        self._interval: dict[int, float] = {}      # symbol -> the current backoff
        self._last_sent: dict[int, float] = {}
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._discovered: list[str] = []
        self._discovered_at = -1e18
        self.requests = 0            # requests sent
        self.resnapshots = 0         # requests a capture accepted
        self.failures = 0            # requests that failed (no capture, timeout, refused)
        self.last_error = ""
        self._thread = threading.Thread(target=self._work, name="orderbook-resnapshot", daemon=True)
        self._thread.start()

    # -- the loop's side ------------------------------------------------------------------------
    def tick(self, invalid: Iterable[int]) -> None:
        """Called now and then with the symbols whose books are invalid now."""
        now = self._clock()
        invalid = set(invalid)
        for sid in list(self._interval):
            if sid not in invalid:             # rebuilt: the next invalidation asks at once
                del self._interval[sid]
                self._next_at.pop(sid, None)
        for sid in invalid:
            if sid not in self._interval:
                self._interval[sid] = self.min_interval_s
                self._next_at[sid] = max(now, self._last_sent.get(sid, -1e18) + self.min_interval_s)
            if now < self._next_at[sid]:
                continue
            with self._lock:
                if sid in self._queued:
                    continue
                self._queued.add(sid)
            self._last_sent[sid] = now
            self._next_at[sid] = now + self._interval[sid]
            self._interval[sid] = min(self._interval[sid] * 2, self.max_interval_s)
            self._queue.put(sid)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s + 1.0)

    def counters(self) -> dict[str, int]:
        return {"resnapshots": self.resnapshots, "resnapshot_requests": self.requests,
                "resnapshot_failures": self.failures}

    # -- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            sid = self._queue.get()
            if sid is None:
                return
            try:
                self._ask(sid)
            except Exception as exc:  # noqa: BLE001 (never let the worker die: count it, try again later)
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._queued.discard(sid)

    def _ask(self, sid: int) -> None:
        targets = self._targets()
        self.requests += 1
        if not targets:
            self.failures += 1
            self.last_error = f"no capture writes levels ring {self.levels_ring!r}"
            return
        accepted = False
        for name in targets:
            try:
                self._request(name, "resnapshot", {"symbol_id": int(sid)}, timeout=self.timeout_s)
                accepted = True
            except control.ControlError as exc:
                self.last_error = str(exc)
        if accepted:
            self.resnapshots += 1
        else:
            self.failures += 1
            if self._discovered:
                self._discovered_at = -1e18    # look again next time: capture may have restarted

    def _targets(self) -> list[str]:
        if self.explicit:
            return self.explicit
        now = self._clock()
        # Found: trusted for a while. None found: looked for again soon, but not per request (asking
        # every service on the host its status costs up to a timeout each).
        if now - self._discovered_at < (DISCOVERY_TTL_S if self._discovered else NOT_FOUND_TTL_S):
            return self._discovered
        found = []
        for name in self._list_services():
            if name == self.own_name:
                continue
            try:
                status = self._request(name, "status", timeout=DISCOVERY_TIMEOUT_S)
            except control.ControlError:
                continue
            if status.get("levels") == self.levels_ring and status.get("role", "capture") == "capture":
                found.append(name)
        self._discovered, self._discovered_at = found, now
        return found
