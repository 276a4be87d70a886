"""Retrying a store operation across a lost database connection: back off, reconnect, try again.

Both long-running processes need it, the sync service for its writes and ``watch`` for its
feature rows, so a database restart costs them a few seconds of retries, not the process.
Only StoreUnavailable (connection lost or refused) is retried; any other StoreError would fail
the same way again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .store import AssetStore, StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class ReconnectPolicy:
    attempts: int = 5  # tries in all, the first included
    base_delay: float = 0.1  # seconds; doubles per retry
    max_delay: float = 5.0

    def delay(self, retry: int) -> float:
        """Equal jitter: half the exponential step for sure, the other half at random."""
        step = min(self.max_delay, self.base_delay * 2**retry)
        return step / 2 + random.random() * step / 2


async def with_reconnect(
    store: AssetStore,
    operation: Callable[[], Awaitable[T]],
    policy: ReconnectPolicy,
    *,
    on_retry: Callable[[StoreUnavailable], None] | None = None,
) -> T:
    """``await operation()``; while it raises StoreUnavailable, back off, reconnect the store and
    try again, up to ``policy.attempts`` tries (the last error is raised). ``on_retry`` hears
    about each failure that will be retried."""
    for attempt in range(policy.attempts):
        try:
            return await operation()
        except StoreUnavailable as exc:
            if attempt + 1 == policy.attempts:
                raise
            if on_retry is not None:
                on_retry(exc)
        await asyncio.sleep(policy.delay(attempt))
        try:
            await store.reconnect()
        except StoreUnavailable:
            pass  # still down: the next attempt fails fast and we back off again
    raise AssertionError("unreachable")
