"""The ``shmpipe execute`` process: the engine between the signals bus and the venue, with a
control endpoint (status, stats, halt, release, pause, resume, stop), live counters for
``shmpipe metrics`` and a heartbeat."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from shmpipe import control
from shmpipe import stats as shm_stats
from shmpipe.errors import ShmpipeError
from shmpipe.signals import SignalPublisher, SignalSubscriber

from ..trading.credentials import Keys
from ..trading.positions import decimal_text
from .engine import Engine, EngineOptions
from .journal import JournalError

STATS_INTERVAL_S = 0.5
HEARTBEAT_S = 1.0


class ExecuteError(Exception):
    """A one-line reason the engine cannot run."""


def run(options: EngineOptions, keys: Keys, *, sub: str | None, pub: str | None, topics: list[str],
        books: str | None, exchange: str, stale_s: float, as_json: bool, quotes: str | None = None) -> int:
    marks_source = None
    try:
        publisher = SignalPublisher(pub, source=options.name)
        subscriber = SignalSubscriber(sub, topics)      # before reconciling: intents wait in its queue
    except control.ControlError as exc:
        raise ExecuteError(str(exc)) from None
    marks = None
    if books or quotes:
        from ..trading.book_marks import open_marks, symbol_id_of
        try:
            marks_source = open_marks(books, quotes, stale_s)
        except ShmpipeError as exc:
            raise ExecuteError(str(exc)) from None
        ids: dict[str, int | None] = {}

        def marks(symbol: str):
            if ids.get(symbol) is None:
                ids[symbol] = symbol_id_of(exchange, symbol)
            return marks_source.mark(ids[symbol])
    try:
        engine = Engine(options, keys, publisher.publish, marks)
    except JournalError as exc:
        raise ExecuteError(str(exc)) from None
    engine.marks_source = None if marks_source is None else marks_source.source
    stop = threading.Event()

    def stop_all(*_: Any) -> None:
        stop.set()
        engine.stop.set()         # also ends a reconcile that waits for the venue

    def stop_cmd(_args: dict) -> dict[str, Any]:
        stop_all()
        return {"state": "stopping"}

    def halt(args: dict) -> dict[str, Any]:
        return engine.halt(str(args.get("reason", "ctl halt")))

    def compare_positions(_args: dict) -> dict[str, Any]:
        mismatches = engine.compare_positions()
        if mismatches is None:
            raise control.CommandRefused("cannot read the venue's positions now (see the engine's log)")
        return {"mismatches": mismatches}

    def pause(_args: dict) -> dict[str, Any]:
        engine.paused.set()
        return {"state": "paused (intents are journaled and queued, nothing is sent)"}

    def resume(_args: dict) -> dict[str, Any]:
        engine.paused.clear()
        return {"state": engine.state}

    try:
        server = control.ControlServer(options.name, {
            "status": lambda _a: engine.status(), "stats": lambda _a: engine.figures(), "halt": halt,
            "release": lambda _a: engine.release(), "pause": pause, "resume": resume, "stop": stop_cmd,
            "positions": lambda _a: {s: decimal_text(q) for s, q in engine.journal.positions().items()},
            "book": lambda _a: engine.book(),
            "compare_positions": compare_positions})
    except (control.ControlError, ValueError) as exc:
        engine.close()
        raise ExecuteError(str(exc)) from None
    fields = sorted(k for k, v in engine.figures().items() if isinstance(v, int))
    try:
        stats_pub = shm_stats.publish(options.name, fields)
    except (shm_stats.StatsBusyError, ShmpipeError) as exc:
        server.close()
        engine.close()
        raise ExecuteError(str(exc)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_all)
    server.start_thread()
    try:
        engine.start()
        if not stop.is_set():
            print(f"shmpipe execute: reconciled with {options.base_url}; taking intents on "
                  f"{', '.join(topics)} ({engine.state})", file=sys.stderr, flush=True)
        next_stats = next_beat = 0.0
        while not stop.is_set():
            msg = subscriber.recv(timeout=0.05)
            if msg is not None:
                engine.take(msg.data, msg.ts_ns)
                continue_reading = 256          # drain a burst before the housekeeping below
                while continue_reading and (msg := subscriber.recv(timeout=0)) is not None:
                    engine.take(msg.data, msg.ts_ns)
                    continue_reading -= 1
            engine.tick()
            now = time.monotonic()
            if now >= next_stats:
                figures = engine.figures()
                stats_pub.update({k: figures[k] for k in fields})
                next_stats = now + STATS_INTERVAL_S
            if now >= next_beat:
                publisher.heartbeat(kind="execute", state=engine.state)
                next_beat = now + HEARTBEAT_S
    except JournalError as exc:
        # Without a journal nothing can be sent safely: stop, say why; a restart reconciles.
        print(f"shmpipe execute: {exc}; stopping (nothing is sent without the journal)", file=sys.stderr, flush=True)
        failed = True
    else:
        failed = False
    finally:
        engine.stop.set()
        figures = engine.figures()
        stats_pub.update({k: figures[k] for k in fields})
        stats_pub.close()
        server.close()
        engine.close()
        subscriber.close()
        publisher.close()
        if marks_source is not None:
            marks_source.close()
    if failed:
        return 1
    if as_json:
        print(json.dumps(figures, sort_keys=True), flush=True)
    else:
        print(f"shmpipe execute: {figures['intents']} intents, {figures['orders_sent']} orders sent, "
              f"{figures['rejected']} rejected, {figures['failed']} failed, {figures['fills']} fills, "
              f"{figures['duplicates_prevented']} duplicates prevented", file=sys.stderr)
    return 0
