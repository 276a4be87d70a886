"""A token bucket that keeps the venue's sliding-window limit (Alpaca: 200 requests a minute).

A plain bucket of capacity B refilled at limit/window lets B + limit requests into one window;
this one refills at (limit - B) / window, so no window of ``window_s`` (plus ``margin_s`` for the
requests' travel time) ever sees more than ``limit`` requests leave."""
from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, limit: int, window_s: float, *, burst: int | None = None, margin_s: float = 0.05) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"rate limit must be >= 1 request per > 0 s, not {limit} per {window_s:g} s")
        self.limit, self.window_s = limit, window_s
        self.capacity = max(1, min(burst if burst is not None else max(1, limit // 20), limit - 1 or 1))
        self.rate = max(limit - self.capacity, 1) / (window_s + margin_s)
        self._tokens = float(self.capacity)
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.waits = 0          # requests that had to wait for a token
        self.waited_s = 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Take one token, waiting as long as it takes; False when ``stop`` was set while waiting."""
        waited = False
        started = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                self._refill(now)
                if self._tokens >= 1:
                    self._tokens -= 1
                    if waited:
                        self.waits += 1
                        self.waited_s += now - started
                    return True
                need = (1 - self._tokens) / self.rate
            waited = True
            if stop is not None:
                if stop.wait(need):
                    return False
            else:
                time.sleep(need)

    def queued_estimate(self) -> float:
        """Seconds until the next token."""
        with self._lock:
            self._refill(time.monotonic())
            return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
