"""The order book process: attach to the levels ring (waiting for it and its first producer), keep
the books (the compiled BookEngine), write OrderbookEntries to the books ring, ask capture for
fresh snapshots of invalid books, answer its control endpoint and publish live counters.

It ends after ``seconds``, on a ``stop`` command or SIGTERM/SIGINT, or once a producer it has seen
is gone and the levels ring is drained.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import shmpipe
from shmpipe import control
from shmpipe import stats as shm_stats
from shmpipe.records import LEVEL_UPDATE, ORDERBOOK_ENTRY

from ._book import COUNTER_NAMES, BookEngine
from .resnapshot import Resnapshotter

# The levels ring, when the order book starts first, is made as capture would make it.
LEVELS_CAPACITY = 1 << 18
BOOKS_CAPACITY = 1 << 14           # 13 MiB of 832-byte entries
WAIT_SLICE_S = 0.05                 # the longest the loop sleeps before it looks at flags and clocks
HOUSEKEEPING_S = 0.1                # resnapshot requests, stats, liveness: at most this often
STATS_INTERVAL_S = 0.5
PUMP_BATCH = 4096
REPORTED = ("updates", "snapshots_written", "checksum_failures", "resnapshots", "invalid_books")
STATS_FIELDS = list(COUNTER_NAMES) + ["books", "books_invalid_now", "resnapshots", "resnapshot_requests",
                                      "resnapshot_failures", "paused", "rejoins"]


class OrderbookError(Exception):
    """A user-caused failure (wrong ring type, a name in use): one line, exit 1."""


def registry_facts(symbol_id: int) -> tuple[int | None, int | None, int] | None:
    """(price_decimals, size_decimals, depth) of a symbol from the host's symbol registry."""
    from shmpipe import symbols
    try:
        info = symbols.info(symbol_id)
    except (shmpipe.ShmpipeError, OSError):
        return None
    return info.price_decimals, info.size_decimals, info.depth


def _open_or_create(name: str, dtype, capacity: int, what: str):
    """(ring, created here). The ring must hold `dtype`."""
    try:
        try:
            return shmpipe.Ring.open(name, dtype), False
        except FileNotFoundError:
            try:
                return shmpipe.Ring.create(name, dtype, capacity, broadcast=True), True
            except FileExistsError:
                return shmpipe.Ring.open(name, dtype), False
    except shmpipe.ShmpipeError as exc:
        raise OrderbookError(f"{what} ring {name!r}: {exc}") from None


@dataclass
class Options:
    levels: str
    books: str
    conflate_ms: float = 0.0
    seconds: float | None = None
    name: str = "orderbook"
    captures: list[str] = field(default_factory=list)
    facts: Callable[[int], tuple | None] | None = registry_facts
    control: bool = True


class OrderbookProcess:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.ended = ""
        self.seen_producer = False
        self.engine: BookEngine | None = None
        self.resnapshotter: Resnapshotter | None = None
        self.started = time.monotonic()
        self.rejoins = 0
        self.consumer = self.levels_ring = None

    # -- control --------------------------------------------------------------------------------
    def handlers(self) -> dict[str, Callable[[dict], dict | None]]:
        def status(_args):
            return {"role": "orderbook", "levels": self.options.levels, "books": self.options.books,
                    "paused": self.paused.is_set(), "producer_seen": self.seen_producer,
                    "invalid_symbols": self.engine.invalid_symbols() if self.engine else [],
                    "uptime_s": round(time.monotonic() - self.started, 3)}

        def stats(_args):
            return self.counters()

        def pause(_args):
            self.paused.set()
            return {"paused": True}

        def resume(_args):
            self.paused.clear()
            return {"paused": False}

        def stop(_args):
            self.ended = self.ended or "stop"
            self.request_stop()
            return {"stopping": True}
        return {"status": status, "stats": stats, "pause": pause, "resume": resume, "stop": stop}

    def request_stop(self) -> None:
        self.stop.set()
        if self.engine is not None:
            self.engine.stop_requested = True

    def counters(self) -> dict:
        c = self.engine.counters() if self.engine is not None else {k: 0 for k in COUNTER_NAMES}
        if self.resnapshotter is not None:
            c.update(self.resnapshotter.counters())
        else:
            c.update({"resnapshots": 0, "resnapshot_requests": 0, "resnapshot_failures": 0})
        c["paused"] = int(self.paused.is_set())
        c["rejoins"] = self.rejoins
        return c

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        o = self.options
        if o.conflate_ms < 0:
            raise OrderbookError(f"--conflate-ms must be >= 0, not {o.conflate_ms}")
        server = publisher = None
        rings = []
        try:
            if o.control:
                try:
                    server = control.ControlServer(o.name, self.handlers())
                except (control.ControlError, shmpipe.ShmpipeError) as exc:
                    raise OrderbookError(str(exc)) from None
                server.start_thread()
            try:
                publisher = shm_stats.publish(o.name, STATS_FIELDS)
            except (shm_stats.StatsBusyError, shmpipe.ShmpipeError) as exc:
                raise OrderbookError(str(exc)) from None
            created = []
            try:
                levels, made = _open_or_create(o.levels, LEVEL_UPDATE, LEVELS_CAPACITY, "levels")
                rings.append(levels)
                created += [levels] if made else []
                books, made = _open_or_create(o.books, ORDERBOOK_ENTRY, BOOKS_CAPACITY, "books")
                rings.append(books)
                created += [books] if made else []
                try:
                    producer = books.producer()
                except shmpipe.RoleTakenError as exc:
                    raise OrderbookError(f"books ring {o.books!r}: {exc}") from None
                try:
                    self.consumer = levels.consumer(start="oldest")
                except shmpipe.RoleTakenError as exc:   # every consumer slot is held
                    producer.close()
                    raise OrderbookError(f"levels ring {o.levels!r}: {exc}") from None
            except OrderbookError:
                for ring in created:     # made for this run alone, which did not run: no litter
                    ring.unlink()
                raise
            self.levels_ring = levels
            try:
                self.engine = BookEngine(self.consumer, producer, conflate_ms=o.conflate_ms, facts=o.facts)
                if self.stop.is_set():
                    self.engine.stop_requested = True
                self.resnapshotter = Resnapshotter(o.levels, o.captures, own_name=o.name)
                try:
                    self._loop(publisher)
                finally:
                    self.resnapshotter.close()
            finally:
                self.consumer.close()
                producer.close()
            result = self.counters()
            result["ended"] = self.ended
            if publisher is not None:
                publisher.update({k: v for k, v in result.items() if k in STATS_FIELDS})
            return result
        finally:
            if publisher is not None:
                publisher.close()
            for ring in rings:
                ring.close()
            if server is not None:
                server.close()

    def _rejoin(self) -> None:
        """Evicted from the levels ring (silent past its consumer timeout, e.g. held up by a full
        books ring): join again from the oldest record still there. Records were missed or may have
        been overwritten under us, so every book is invalid until its next snapshot."""
        self.consumer.close()
        self.consumer = self.levels_ring.consumer(start="oldest")
        self.engine.replace_levels_consumer(self.consumer)
        self.rejoins += 1

    def _loop(self, publisher) -> None:
        engine = self.engine
        deadline = None if self.options.seconds is None else time.monotonic() + self.options.seconds
        next_housekeeping = next_stats = 0.0
        conflating = self.options.conflate_ms > 0
        while True:
            now = time.monotonic()
            consumer = self.consumer
            if self.stop.is_set():
                self.ended = self.ended or "stop"
                return
            if deadline is not None and now >= deadline:
                engine.flush_due(force=True)
                self.ended = "seconds"
                return
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_S
                if consumer.producer_alive:
                    self.seen_producer = True
                self.resnapshotter.tick(engine.invalid_symbols())
                if now >= next_stats and publisher is not None:
                    next_stats = now + STATS_INTERVAL_S
                    c = self.counters()
                    publisher.update({k: v for k, v in c.items() if k in STATS_FIELDS})
            try:
                if self._step(consumer, deadline, now, conflating):
                    return
            except shmpipe.ConsumerEvictedError:
                self._rejoin()

    def _step(self, consumer, deadline, now, conflating) -> bool:
        """Apply what is there, or wait a slice for more; True when the feed has ended."""
        engine = self.engine
        if self.paused.is_set():
            if not consumer.lossy:
                consumer.peek(1, 0)   # a sign of life, so a lossless producer does not evict us
            self.stop.wait(WAIT_SLICE_S)
            return False
        if engine.pump(PUMP_BATCH):
            self.seen_producer = True     # records mean a producer was here, however briefly
            return False
        if conflating:
            engine.flush_due()
        # Empty. A producer we saw and that is gone now, with nothing left: the feed ended.
        if self.seen_producer and not consumer.producer_alive and engine.wait(0) == 0:
            engine.flush_due(force=True)     # the last conflated entries are owed now
            self.ended = "producer_gone"
            return True
        slice_s = WAIT_SLICE_S
        if conflating:
            slice_s = min(slice_s, self.options.conflate_ms / 1000.0)
        if deadline is not None:
            slice_s = max(0.0, min(slice_s, deadline - now))
        engine.wait(slice_s)
        return False


def run(options: Options) -> dict:
    return OrderbookProcess(options).run()


__all__ = ["REPORTED", "Options", "OrderbookError", "OrderbookProcess", "registry_facts", "run"]
