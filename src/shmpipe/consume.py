"""Writing a consumer in a few lines: a ring as a stream of numpy batches.

    for batch in shmpipe.batches("ticks", max_n=4096):      # numpy arrays of records.TICK
        ...                                                  # ends when the producer is gone and drained

    async for batch in shmpipe.abatches("ticks"):           # the same, awaiting instead of blocking
        ...

    names = shmpipe.symbol_names(batch["symbol_id"])        # "exchange:symbol" per record
    mine = batch[np.isin(batch["symbol_id"], shmpipe.symbol_ids(["kraken:BTC/USD"]))]

Batches are copies (``consumer.read``), not zero-copy ``peek`` views: a copy may be kept, stored
or sent after the loop moves on, works on lossy rings too (where ``peek`` is refused, a view
cannot be validated), and a 4096-tick batch costs one 128 KiB memcpy, noise next to any numpy
work done on it. Each record is yielded exactly once: the consumer's cursor advances as a batch
is read, so nothing is repeated, and nothing is skipped except what a lossy ring overwrote
before it was read, which ``stream.lost`` counts exactly.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import numpy as np

from . import _ring
from .dtypes import as_record_dtype
from .errors import DtypeMismatchError, InvalidArgumentError, RingClosedError, UnknownSymbolError
from .ring import Ring

# How often an idle stream wakes to check that the producer is still there (and, with a
# timeout, to hand the caller an empty batch so its timers can run).
LIVENESS_CHECK_S = 0.1
WAITS = ("spin", "yield", "block")


def _check_max_n(max_n: object) -> int:
    if isinstance(max_n, bool) or not isinstance(max_n, (int, np.integer)) or max_n < 1:
        raise InvalidArgumentError(f"max_n must be an int >= 1, not {max_n!r}")
    return int(max_n)


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidArgumentError(f"timeout must be None or seconds >= 0, not {timeout!r}")
    return float(timeout)


class _Stream:
    """What the sync and async streams share: the ring, the consumer, counters, the end test."""

    def __init__(self, ring: Ring | str, max_n: int, timeout: float | None, wait: str | None,
                 start: str, dtype: Any, stop_when_producer_gone: bool) -> None:
        self.max_n = _check_max_n(max_n)
        self.timeout = _check_timeout(timeout)
        self.stop_when_producer_gone = bool(stop_when_producer_gone)
        self._owns_ring = isinstance(ring, str)
        self.ring: Ring = Ring.open(ring, dtype) if isinstance(ring, str) else ring
        if not isinstance(self.ring, Ring):
            raise InvalidArgumentError(f"ring must be a ring name or a shmpipe.Ring, not {type(ring).__name__}")
        if dtype is not None and not self._owns_ring and as_record_dtype(dtype) != self.ring.dtype:
            raise DtypeMismatchError(f"ring {self.ring.name!r} holds records of dtype {self.ring.dtype}, "
                                     f"but dtype {as_record_dtype(dtype)} was given")
        try:
            self.consumer = self.ring.consumer(start, wait=wait)
        except BaseException:
            if self._owns_ring:
                self.ring.close()
            raise
        self.consumed = 0            # records yielded
        self.batches = 0             # non-empty batches yielded
        self._lost_at_close: int | None = None
        self._producer_seen = False
        self.ended = False           # the producer is gone and every record was read

    @property
    def lost(self) -> int:
        """Records this stream's cursor missed (a lossy ring overwrote them before they were read)."""
        if self._lost_at_close is not None:
            return self._lost_at_close
        return self.consumer.lost

    @property
    def closed(self) -> bool:
        return self._lost_at_close is not None

    def _slice(self, remaining: float | None) -> float:
        if not self.stop_when_producer_gone:
            return remaining if remaining is not None else LIVENESS_CHECK_S
        return LIVENESS_CHECK_S if remaining is None else min(remaining, LIVENESS_CHECK_S)

    def _producer_gone_and_drained(self) -> bool:
        """After an empty read. A producer that never attached is waited for, unless records show
        one was there (it wrote, then left before we looked)."""
        if not self.stop_when_producer_gone:
            return False
        if self.consumer.producer_alive:
            self._producer_seen = True
            return False
        if self.consumer.available:
            return False        # it wrote its last records, then left: read them first
        return self._producer_seen or self.consumer.position > 0

    def _took(self, batch: np.ndarray) -> np.ndarray:
        if len(batch):
            self.consumed += len(batch)
            self.batches += 1
        return batch

    def close(self) -> None:
        """Leave the ring (and close it when the stream opened it by name). Idempotent."""
        if self._lost_at_close is None:
            try:
                self._lost_at_close = self.consumer.lost
            except RingClosedError:
                self._lost_at_close = 0
            self.consumer.close()
            if self._owns_ring:
                self.ring.close()

    def counters(self) -> dict[str, int]:
        return {"consumed": self.consumed, "batches": self.batches, "lost": self.lost}


class BatchStream(_Stream):
    """Iterator of numpy batches from a ring; see ``batches``."""

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.closed or self.ended:
            raise StopIteration
        deadline = None if self.timeout is None else _ring.monotonic_ns() + int(self.timeout * 1e9)
        while True:
            remaining = None if deadline is None else max(0.0, (deadline - _ring.monotonic_ns()) / 1e9)
            try:
                batch = self.consumer.read(self.max_n, timeout=self._slice(remaining))
            except BaseException:
                self.close()
                raise
            if len(batch):
                return self._took(batch)
            if self._producer_gone_and_drained():
                self.ended = True
                self.close()
                raise StopIteration
            if remaining is not None and _ring.monotonic_ns() >= deadline:
                return batch        # empty: the caller's timers may run

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class AsyncBatchStream(_Stream):
    """Async iterator of numpy batches from a ring; see ``abatches``."""

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        return self

    async def __anext__(self) -> np.ndarray:
        if self.closed or self.ended:
            raise StopAsyncIteration
        deadline = None if self.timeout is None else _ring.monotonic_ns() + int(self.timeout * 1e9)
        while True:
            remaining = None if deadline is None else max(0.0, (deadline - _ring.monotonic_ns()) / 1e9)
            try:
                batch = await self.consumer.read_async(self.max_n, timeout=self._slice(remaining))
            except BaseException:
                self.close()
                raise
            if len(batch):
                return self._took(batch)
            if self._producer_gone_and_drained():
                self.ended = True
                self.close()
                raise StopAsyncIteration
            if remaining is not None and _ring.monotonic_ns() >= deadline:
                return batch

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncBatchStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def batches(ring: Ring | str, max_n: int = 4096, *, timeout: float | None = None, wait: str | None = None,
            start: str = "oldest", dtype: Any = None, stop_when_producer_gone: bool = True) -> BatchStream:
    """Iterate a ring in numpy batches of up to ``max_n`` records (copies, safe to keep).

    ``ring``: a name (opened here, checked against ``dtype`` when given, closed at the end) or an
    open ``shmpipe.Ring`` (left open). Attaches a consumer at ``start`` ("oldest" or "newest";
    an SPSC ring resumes where its last consumer stopped).

    ``timeout``: None waits for records as long as it takes; a number of seconds yields an empty
    batch whenever that long passes with none, so a loop can run timers (bars that close on time).

    ``wait``: how this consumer waits when the ring is empty: None (the ring's own strategy),
    "spin" (busy-poll: lowest latency, a core), "yield" (spin then sched_yield), "block" (sleep on
    the futex; only on rings created with wait="block", whose producers ring the doorbell).

    ``stop_when_producer_gone``: end the iteration once the producer has gone (closed, crashed,
    killed) and every record it wrote has been read; False iterates for ever (a producer may come
    back). A producer that has not attached yet is waited for.

    The consumer is closed when the iteration ends, on ``break`` (the stream is dropped), on an
    exception, or explicitly (``with shmpipe.batches(...) as stream:`` / ``stream.close()``).
    ``stream.consumed``, ``stream.batches`` and ``stream.lost`` count what it read and missed."""
    return BatchStream(ring, max_n, timeout, wait, start, dtype, stop_when_producer_gone)


def abatches(ring: Ring | str, max_n: int = 4096, *, timeout: float | None = None, wait: str | None = None,
             start: str = "oldest", dtype: Any = None, stop_when_producer_gone: bool = True) -> AsyncBatchStream:
    """``batches`` for asyncio: ``async for batch in shmpipe.abatches("ticks"):``. Awaits with
    ``consumer.read_async`` (one doorbell thread per process; the event loop never blocks).
    ``wait`` only matters for the liveness checks here: waiting itself is the doorbell thread's."""
    return AsyncBatchStream(ring, max_n, timeout, wait, start, dtype, stop_when_producer_gone)


def symbol_table(symbol_ids: Iterable[int] | np.ndarray, registry: Any = None) -> dict[int, tuple[str, str]]:
    """{symbol_id: (exchange, symbol)} for the distinct ids given, each looked up once (in
    ``registry``, default the host's; anything with ``lookup(id)`` works). Unknown ids raise
    ``UnknownSymbolError`` naming the id."""
    if registry is None:
        from .symbols import default_registry
        registry = default_registry()
    ids = np.unique(np.asarray(symbol_ids, dtype=np.int64))
    return {int(i): registry.lookup(int(i)) for i in ids}


def symbol_names(symbol_ids: Iterable[int] | np.ndarray, registry: Any = None, *, sep: str = ":",
                 unknown: str | None = None) -> np.ndarray:
    """A numpy array of "exchange:symbol" (``sep`` between; ``sep=None``: the symbol alone), one
    per id, vectorised: distinct ids are looked up once and spread back with one ``take``.
    ``unknown``: the name to give an id the registry does not know (default: raise)."""
    ids = np.asarray(symbol_ids, dtype=np.int64)
    distinct, inverse = np.unique(ids, return_inverse=True)
    if registry is None:
        from .symbols import default_registry
        registry = default_registry()
    names = []
    for sid in distinct:
        try:
            exchange, symbol = registry.lookup(int(sid))
        except UnknownSymbolError:
            if unknown is None:
                raise
            names.append(unknown)
            continue
        names.append(symbol if sep is None else f"{exchange}{sep}{symbol}")
    return np.asarray(names, dtype=object)[inverse.reshape(ids.shape)] if names else np.empty(ids.shape, object)


def symbol_ids(names: Iterable[str | tuple[str, str]], registry: Any = None, *, sep: str = ":") -> np.ndarray:
    """The other way: u32 ids of "exchange:symbol" names (split at the first ``sep``) or
    (exchange, symbol) pairs, for filtering a batch (``np.isin(batch["symbol_id"], ids)``).
    Registers nothing: a name the registry does not hold raises ``UnknownSymbolError``."""
    if registry is None:
        from .symbols import default_registry
        registry = default_registry()
    out = []
    for name in names:
        if isinstance(name, str):
            exchange, found, symbol = name.partition(sep)
            if not found:
                raise InvalidArgumentError(f"symbol name {name!r} is not exchange{sep}symbol")
        else:
            exchange, symbol = name
        sid = registry.find(exchange, symbol)
        if sid is None:
            raise UnknownSymbolError(f"symbol {symbol!r} of exchange {exchange!r} is not registered")
        out.append(sid)
    return np.asarray(out, dtype=np.uint32)


__all__ = ["WAITS", "AsyncBatchStream", "BatchStream", "abatches", "batches", "symbol_ids", "symbol_names", "symbol_table"]
