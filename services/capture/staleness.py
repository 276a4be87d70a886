"""A per-channel watchdog: reports channels that stayed silent longer than their limit.

A websocket can stay open while one subscription stops delivering (cryptofeed's users report exactly
this); no exception ever fires, so something has to notice the silence. Channels are any hashable key
the caller picks, e.g. ``("book", "BTC/USD")``: a stale book channel means "resubscribe this symbol",
a stale heartbeat channel means "reconnect". The clock is injected so tests need no sleeping.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class StaleChannel:
    channel: Hashable
    silent_s: float


@dataclass
class SilentPeriod:
    channel: Hashable
    start: float          # clock time of the last message before the silence
    end: float | None     # clock time of the message that ended it; None while still silent


class StalenessWatchdog:
    def __init__(self, limit_s: float, *, clock: Callable[[], float] = time.monotonic,
                 limits: dict[Hashable, float] | None = None) -> None:
        if not limit_s > 0:
            raise ValueError(f"limit_s must be > 0, got {limit_s!r}")
        self.limit_s = limit_s
        self.clock = clock
        self.limits = dict(limits or {})
        self._last: dict[Hashable, float] = {}
        self._stale: dict[Hashable, SilentPeriod] = {}
        self.periods: list[SilentPeriod] = []  # every silence reported, for a gap report

    def watch(self, channel: Hashable, limit_s: float | None = None) -> None:
        """Start watching ``channel`` now (a subscription was sent), even before its first message."""
        if limit_s is not None:
            self.limits[channel] = limit_s
        self._last.setdefault(channel, self.clock())

    def forget(self, channel: Hashable) -> None:
        self._last.pop(channel, None)
        self._stale.pop(channel, None)

    def touch(self, channel: Hashable) -> None:
        """A message arrived on ``channel``."""
        now = self.clock()
        self._last[channel] = now
        if self._stale:
            period = self._stale.pop(channel, None)
            if period is not None:
                period.end = now

    def check(self) -> list[StaleChannel]:
        """Channels that went stale since the previous check (each silence is reported once)."""
        now = self.clock()
        newly = []
        for channel, last in self._last.items():
            if channel in self._stale:
                continue
            silent = now - last
            if silent > self.limits.get(channel, self.limit_s):
                period = SilentPeriod(channel, last, None)
                self._stale[channel] = period
                self.periods.append(period)
                newly.append(StaleChannel(channel, silent))
        return newly

    def stale(self) -> list[StaleChannel]:
        """Every channel silent past its limit right now."""
        now = self.clock()
        return [StaleChannel(c, now - last) for c, last in self._last.items()
                if now - last > self.limits.get(c, self.limit_s)]
