"""The ``shmpipe risk`` process: order intents in, ``risk.approved`` / ``risk.rejected`` out (each
with its reason), positions and P&L from the engine's ``execution.fill``, limits reloadable with
``shmpipe ctl risk reload``; control endpoint, live counters and a heartbeat like every service."""
from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from decimal import Decimal
from typing import Any

from shmpipe import control
from shmpipe import stats as shm_stats
from shmpipe.errors import ShmpipeError
from shmpipe.signals import SignalPublisher, SignalSubscriber

from ..trading.book_marks import Mark, open_marks, symbol_id_of
from ..trading.intents import (
    TOPIC_APPROVED,
    TOPIC_FILL,
    TOPIC_INTENT,
    TOPIC_ORDER,
    TOPIC_REJECTED,
    IntentError,
    parse_intent,
)
from .limits import LimitsError, load_limits
from .manager import RiskManager

REASONS = ("book", "max_qty", "max_order_value", "max_position_value", "buying_power", "daily_loss_halt",
           "invalid")


class RiskError(Exception):
    """A one-line reason the risk manager cannot run."""


class RiskService:
    def __init__(self, limits_path: str, mark_of, publish, *, name: str = "risk",
                 marks: str = "price") -> None:
        self.limits_path, self.name, self._publish = limits_path, name, publish
        self.marks = marks                     # where marks come from: books, quotes or price (--price)
        self.marks_read = lambda: 0            # entries (or quote Ticks) read from the marks ring so far
        self.manager = RiskManager(load_limits(limits_path), mark_of)
        self.lock = threading.Lock()         # the control thread and the loop share the manager
        self.counts: collections.Counter[str] = collections.Counter()
        self.rejects: collections.Counter[str] = collections.Counter()
        self.book_rejects: collections.Counter[str] = collections.Counter()   # "book" rejects by why
        self.reloads = 0
        self.paused = False
        self.last_reject: dict[str, str] = {}
        self.synced = False                    # the engine's book has been read at least once
        self._mismatch_streak = 0
        self.engine_mismatch: dict[str, Any] = {}

    def on_signal(self, topic: str, data: dict[str, Any]) -> None:
        with self.lock:
            if topic == TOPIC_INTENT:
                self._decide(data)
            elif topic == TOPIC_FILL:
                try:
                    self.manager.on_fill(str(data["client_order_id"]), str(data["symbol"]), str(data["side"]),
                                         Decimal(str(data["qty"])), Decimal(str(data["price"])))
                    self.counts["fills"] += 1
                except (KeyError, ArithmeticError, ValueError):
                    self.counts["bad_messages"] += 1
            elif topic == TOPIC_ORDER and data.get("state") in ("rejected", "failed"):
                self.manager.on_order_done(str(data.get("client_order_id", "")))

    def _decide(self, data: dict[str, Any]) -> None:
        self.counts["intents"] += 1
        try:
            intent = parse_intent(data)
        except IntentError as exc:
            self.counts["rejected"] += 1
            self.rejects["invalid"] += 1
            self._publish(TOPIC_REJECTED, {"intent": data, "reason": "invalid", "detail": str(exc)})
            return
        if self.paused:
            decision_reason, detail, mark, approved = "paused", "the risk manager is paused", None, False
        else:
            decision = self.manager.check(intent)
            decision_reason, detail, mark, approved = decision.reason, decision.detail, decision.mark, decision.approved
            if decision.reason == "book":
                self.book_rejects[decision.book_why] += 1
        if approved:
            self.counts["approved"] += 1
            self._publish(TOPIC_APPROVED, {"intent": intent.to_data(), "mark": None if mark is None else str(mark)})
        else:
            self.counts["rejected"] += 1
            self.rejects[decision_reason] += 1
            self.last_reject = {"intent_id": intent.intent_id, "reason": decision_reason, "detail": detail}
            self._publish(TOPIC_REJECTED, {"intent": intent.to_data(), "reason": decision_reason, "detail": detail})

    def sync_with_engine(self, book: dict[str, Any]) -> str:
        """Check the positions built from the bus's fills against the engine's (from its journal).
        At start, before any fill, the engine's are adopted (the risk manager does not start flat
        next to a book that is not). After that a difference seen twice in a row (a fill can be in
        flight once) is counted and said: PUB/SUB can lose a fill, and risk must not trust a book
        silently. Returns a line to log, or ""."""
        from ..trading.positions import Position
        theirs = {s: (Decimal(p["qty"]), Decimal(p["avg_price"])) for s, p in book["positions"].items()}
        with self.lock:
            mine = self.manager.book
            if not self.synced and not self.counts["fills"]:
                self.synced = True
                mine.positions = {s: Position(q, a) for s, (q, a) in theirs.items()}
                mine.realized_today = Decimal(book["realized_today"])
                mine.realized_total = Decimal(book["realized_total"])
                return f"adopted the engine's positions at start: {book['positions'] or 'flat'}" if theirs else ""
            self.synced = True
            ours = {s: p.qty for s, p in mine.positions.items() if p.qty}
            if ours == {s: q for s, (q, _a) in theirs.items()}:
                self._mismatch_streak, self.engine_mismatch = 0, {}
                return ""
            self._mismatch_streak += 1
            if self._mismatch_streak != 2:
                return ""
            self.counts["engine_mismatches"] += 1
            self.engine_mismatch = {"risk": {s: str(q) for s, q in ours.items()},
                                    "engine": {s: str(q) for s, (q, _a) in theirs.items()}}
            return f"positions differ from the engine's (a fill was lost on the bus?): {self.engine_mismatch}"

    def reload(self, _args: dict) -> dict[str, Any]:
        try:
            limits = load_limits(self.limits_path)
        except LimitsError as exc:
            raise control.CommandRefused(f"{exc}; the limits in force are unchanged") from None
        with self.lock:
            self.manager.limits = limits
            self.reloads += 1
        return {"limits": limits.to_json()}

    def reset(self, _args: dict) -> dict[str, Any]:
        with self.lock:
            was = self.manager.halted_reason
            self.manager.reset_halt()
        return {"halted": False, "was": was}

    def figures(self) -> dict[str, Any]:
        out = {k: self.counts[k] for k in ("intents", "approved", "rejected", "fills", "bad_messages",
                                           "engine_mismatches")}
        out.update({f"rejects_{r}": self.rejects[r] for r in REASONS})
        out["reloads"] = self.reloads
        out["halted"] = int(bool(self.manager.halted_reason))
        return out

    def status(self) -> dict[str, Any]:
        with self.lock:
            pnl, why = self.manager.daily_pnl()
            book = self.manager.book
            return {"service": "risk", "name": self.name, "pid": os.getpid(),
                    "state": "paused" if self.paused else ("halted" if self.manager.halted_reason else "running"),
                    "halted_reason": self.manager.halted_reason, "limits": self.manager.limits.to_json(),
                    "limits_file": self.limits_path,
                    "positions": {s: {"qty": str(p.qty), "avg_price": str(p.avg_price)}
                                  for s, p in book.positions.items() if p.qty},
                    "realized_today": str(book.realized_today), "realized_total": str(book.realized_total),
                    "daily_pnl": None if pnl is None else str(pnl), "daily_pnl_unknown_because": why,
                    "rejects": dict(self.rejects), "book_rejects": dict(self.book_rejects),
                    "marks": self.marks, "marks_read": self.marks_read(), "last_reject": self.last_reject,
                    "engine_synced": self.synced, "engine_mismatch": self.engine_mismatch, **self.figures()}


def run(limits_path: str, *, books: str | None, exchange: str, prices: dict[str, Decimal], sub: str | None,
        pub: str | None, name: str, as_json: bool, quotes: str | None = None, engine: str | None = None,
        sync_s: float = 2.0) -> int:
    marks_source = None
    if books or quotes:
        try:
            probe = load_limits(limits_path)
            marks_source = open_marks(books, quotes, probe.stale_book_s)
        except (LimitsError, ShmpipeError) as exc:
            raise RiskError(str(exc)) from None
        ids: dict[str, int | None] = {}

        def mark_of(symbol: str) -> Mark:
            if ids.get(symbol) is None:
                ids[symbol] = symbol_id_of(exchange, symbol)
            return marks_source.mark(ids[symbol])
    else:
        def mark_of(symbol: str) -> Mark:
            mid = prices.get(symbol)
            return Mark(mid, "" if mid is not None else "no price for this symbol (--price)")
    try:
        publisher = SignalPublisher(pub, source=name)
        subscriber = SignalSubscriber(sub, [TOPIC_INTENT, TOPIC_FILL, TOPIC_ORDER])
    except control.ControlError as exc:
        raise RiskError(str(exc)) from None
    try:
        service = RiskService(limits_path, mark_of, publisher.publish, name=name,
                              marks="price" if marks_source is None else marks_source.source)
        if marks_source is not None:
            service.marks_read = lambda: marks_source.entries
    except LimitsError as exc:
        subscriber.close()
        publisher.close()
        raise RiskError(str(exc)) from None
    stop = threading.Event()

    def set_paused(value: bool) -> dict[str, Any]:
        service.paused = value
        return {"state": "paused (every intent is rejected: paused)" if value else "running"}
    try:
        server = control.ControlServer(name, {
            "status": lambda _a: service.status(), "stats": lambda _a: service.figures(),
            "reload": service.reload, "reset": service.reset, "pause": lambda _a: set_paused(True),
            "resume": lambda _a: set_paused(False), "stop": lambda _a: (stop.set(), {"state": "stopping"})[1]})
        fields = sorted(service.figures())
        stats_pub = shm_stats.publish(name, fields)
    except (control.ControlError, ShmpipeError, ValueError) as exc:
        subscriber.close()
        publisher.close()
        raise RiskError(str(exc)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start_thread()
    marked_by = f"books ring {books}" if books else (f"quote Ticks of {quotes}" if quotes else "--price")
    print(f"shmpipe risk: limits from {limits_path}; marks from {marked_by}; "
          f"answering order.intent", file=sys.stderr, flush=True)
    next_stats = next_beat = next_sync = 0.0
    engine_unreachable = False
    try:
        while not stop.is_set():
            msg = subscriber.recv(timeout=0.05)
            if msg is not None:
                service.on_signal(msg.topic, msg.data)
            now = time.monotonic()
            if engine and now >= next_sync:
                next_sync = now + sync_s
                try:
                    line = service.sync_with_engine(control.request(engine, "book", timeout=1.0))
                    engine_unreachable = False
                except control.ControlError as exc:
                    line = "" if engine_unreachable else f"cannot read the engine's positions: {exc}"
                    engine_unreachable = True
                if line:
                    print(f"shmpipe risk: {line}", file=sys.stderr, flush=True)
            if now >= next_stats:
                stats_pub.update(service.figures())
                next_stats = now + 0.5
            if now >= next_beat:
                publisher.heartbeat(kind="risk", state=service.status()["state"])
                next_beat = now + 1.0
    finally:
        figures = service.figures()
        stats_pub.update(figures)
        stats_pub.close()
        server.close()
        subscriber.close()
        publisher.close()
        if marks_source is not None:
            marks_source.close()
    if as_json:
        print(json.dumps(figures, sort_keys=True), flush=True)
    else:
        print(f"shmpipe risk: {figures['intents']} intents, {figures['approved']} approved, "
              f"{figures['rejected']} rejected", file=sys.stderr)
    return 0
