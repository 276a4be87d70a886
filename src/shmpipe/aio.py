"""asyncio for consumers: ``await consumer.read_async()``.

One daemon thread per process sleeps on the doorbells of every consumer being awaited (one
futex_waitv call), and hands readiness to each event loop with call_soon_threadsafe. The loop
itself never blocks, and no thread spins per consumer. Rings created with wait="block" wake the
thread the moment a record is published; on spin/yield rings the producer rings no doorbell, so
the thread re-checks those every POLL_S."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from . import _ring

POLL_S = 0.001          # re-check period for rings whose producer does not ring the doorbell
IDLE_S = 0.5            # sleep slice with only doorbell-ringing rings (interrupt wakes it early)


class _DoorbellThread:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Any, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._interrupt = _ring.WakeWord()
        self._thread = threading.Thread(target=self._run, name="shmpipe-aio", daemon=True)
        self._thread.start()

    def watch(self, consumer: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        future = loop.create_future()
        with self._lock:
            self._waiting.setdefault(consumer, []).append((loop, future))
        self._interrupt.wake()
        return future

    def forget(self, consumer: Any, future: asyncio.Future) -> None:
        with self._lock:
            entries = self._waiting.get(consumer)
            if entries is None:
                return
            entries[:] = [(lp, f) for lp, f in entries if f is not future]
            if not entries:
                del self._waiting[consumer]

    def _run(self) -> None:
        while True:
            try:
                self._serve_once()
            except Exception:   # never strand an awaiting coroutine: wake all, let them re-read
                with self._lock:
                    for entries in self._waiting.values():
                        self._resolve(entries)
                    self._waiting.clear()

    def _serve_once(self) -> None:
        # Snapshot the interrupt word before the list: a watch() that lands after the list was
        # taken bumps the word, so wait_any() returns at once instead of sleeping past it.
        token = self._interrupt.snapshot()
        with self._lock:
            for gone in [c for c in self._waiting if c.closed]:
                self._resolve(self._waiting.pop(gone))
            consumers = list(self._waiting)
        slice_s = POLL_S if any(not c.blocking for c in consumers) else IDLE_S
        ready = _ring.wait_any(consumers, self._interrupt, slice_s, token)
        if ready:
            with self._lock:
                for i in ready:
                    self._resolve(self._waiting.pop(consumers[i], []))

    @staticmethod
    def _resolve(entries: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
        for loop, future in entries:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:    # that loop is closed
                pass


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


_thread: _DoorbellThread | None = None
_thread_lock = threading.Lock()


def _doorbell_thread() -> _DoorbellThread:
    global _thread
    with _thread_lock:
        if _thread is None:
            _thread = _DoorbellThread()
        return _thread


async def read_async(consumer: Any, max_n: int = 1024, timeout: float | None = None):
    """Like consumer.read(max_n, timeout), but awaits instead of blocking the loop."""
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        got = consumer.read(max_n, timeout=0)
        if len(got) or (deadline is not None and loop.time() >= deadline):
            return got
        waiter = _doorbell_thread()
        future = waiter.watch(consumer, loop)
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait_for(future, remaining)
        except TimeoutError:
            return consumer.read(max_n, timeout=0)
        finally:
            waiter.forget(consumer, future)
