"""The execution engine: approved intents in (signals bus), orders out (venue), every step
journaled first.

Start: open the journal, connect the trade_updates stream, reconcile with the venue (each
unresolved intent looked up by its client_order_id, every order the venue holds open adopted or
refreshed, positions compared), and only then read intents. Running: the intake journals each
new intent (a repeated one is answered with its state, never sent again) and queues it; one
sender takes the queue in order, a rate-limit token per request; fills come from the stream, and
from REST look-ups after a reconnect. ``halt`` (the kill switch) refuses new intents, drops the
queue and cancels every open order, durably: a restarted engine is still halted until ``release``.
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from ..trading.credentials import Keys
from ..trading.intents import (
    TOPIC_FILL,
    TOPIC_HALTED,
    TOPIC_ORDER,
    IntentError,
    OrderIntent,
    parse_intent,
)
from ..trading.positions import decimal_text
from .journal import Journal, OrderRow
from .rate_limit import TokenBucket
from .trade_stream import TradeStream, stream_url
from .venue_client import Answer, StopRequested, VenueClient, is_duplicate

LATENCY_WINDOW = 100_000


@dataclass
class EngineOptions:
    base_url: str
    journal: str
    name: str = "execute"
    rate_limit: int = 200
    rate_window_s: float = 60.0
    burst: int | None = None
    max_retries: int = 3
    backoff_scale: float = 1.0
    http_timeout_s: float = 10.0
    max_queue: int = 10_000
    slippage_bps: Decimal | None = None       # None: no slippage check
    refresh_s: float = 2.0                    # how often open orders are refreshed from REST
    stream: bool = True
    seed: int | None = None


@dataclass
class Counters:
    intents: int = 0
    duplicate_intents: int = 0       # the same intent again (a republish, a restart): answered, not sent
    queued: int = 0
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    duplicates_prevented: int = 0    # the venue said "already exists": looked up, not sent again
    fills: int = 0
    cancelled: int = 0
    adopted: int = 0                 # orders the venue held that the journal did not
    reconciled: int = 0
    position_mismatches: int = 0
    bad_intents: int = 0
    rejects: dict[str, int] = field(default_factory=collections.Counter)


class Engine:
    def __init__(self, options: EngineOptions, keys: Keys, publish, marks=None,
                 log=lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.options, self.keys, self._publish, self.marks = options, keys, publish, marks
        self.marks_source: str | None = None     # books or quotes (set by the service): said in status
        self.log = lambda m: log(f"shmpipe execute: {keys.redact(m)}")
        self.journal = Journal(options.journal)
        self.stop = threading.Event()
        self.bucket = TokenBucket(options.rate_limit, options.rate_window_s, burst=options.burst)
        self.client = VenueClient(options.base_url, keys, self.bucket, timeout_s=options.http_timeout_s,
                                  max_retries=options.max_retries, backoff_scale=options.backoff_scale,
                                  stop=self.stop, on_retry=self._on_retry, seed=options.seed)
        self.counters = Counters()
        self.queue: queue.Queue[str] = queue.Queue()
        self.paused = threading.Event()
        self.halted = self.journal.meta("halted") == "1"
        self.state = "starting"
        self.latencies_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self._publish_lock = threading.Lock()
        self._refresh_due = threading.Event()
        self.stream: TradeStream | None = None
        self._sender = threading.Thread(target=self._send_loop, name="sender", daemon=True)
        self._last_refresh = 0.0
        self._sending = threading.Lock()     # held around each send: a halt waits for the one in flight

    # -- bus ---------------------------------------------------------------------------------------
    def publish(self, topic: str, data: dict[str, Any]) -> None:
        with self._publish_lock:          # one ZeroMQ socket, several threads
            self._publish(topic, data)

    def _say(self, row: OrderRow, state: str, reason: str = "") -> None:
        self.publish(TOPIC_ORDER, {"intent_id": row.intent_id, "strategy_id": row.strategy_id,
                                   "client_order_id": row.client_order_id, "state": state, "reason": reason,
                                   "venue_order_id": row.venue_order_id})

    def _on_retry(self, why: str) -> None:
        self.counters.retries += 1

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Stream up, reconcile, sender running: from here on intents are accepted."""
        if self.options.stream:
            self.stream = TradeStream(stream_url(self.options.base_url), self.keys, self.on_update,
                                      self._on_stream_connected, stop=self.stop,
                                      backoff_scale=self.options.backoff_scale, log=self.log)
            if not self.stream.start():
                self.log("the trade_updates stream is not up yet; fills are caught up from REST meanwhile")
        self.state = "reconciling"
        delay = 1.0
        while not self.stop.is_set():
            why = self.reconcile()
            if not why:
                break
            # Intents wait (in the bus subscriber's queue) until the venue's side is known.
            self.state = f"reconciling: {why}"
            self.log(f"cannot reconcile with {self.options.base_url}: {why}; trying again")
            if self.stop.wait(delay * self.options.backoff_scale):
                return
            delay = min(delay * 2, 30.0)
        self._sender.start()
        self.state = "halted" if self.halted else "running"

    def reconcile(self) -> str:
        """What the venue holds, against the journal, before any new intent. Returns "" when done,
        else why not (the venue unreachable, the keys refused): nothing is sent until it is done."""
        probe = self.client.account()
        if not probe.ok:
            return probe.message if probe.status else probe.error
        for row in self.journal.unresolved():
            if self.stop.is_set():
                return "stopping"
            if row.state == "queued":     # "sending" is journaled before a request leaves: none did
                if self.halted:
                    self._reject(row, "halted")
                else:
                    self.queue.put(row.client_order_id)
                continue
            found = self.client.by_client_id(row.client_order_id)
            if found.ok:
                self.counters.reconciled += 1
                self._record_venue_order(row, found.body, "reconciled")
            elif found.status == 404:
                if self.halted:
                    self._reject(row, "halted")
                else:
                    self.queue.put(row.client_order_id)       # never reached the venue: send it now
            else:
                return f"cannot look up {row.client_order_id}: {found.message}"
        self.refresh_open()
        listed = self.client.open_orders()
        if listed.ok and isinstance(listed.body, list):
            for order in listed.body:
                cid = order.get("client_order_id", "")
                row = self.journal.get(cid)
                if row is None:
                    self.counters.adopted += 1
                    self.journal.add_intent(cid, {"intent_id": "", "strategy_id": "", "symbol": order.get("symbol", ""),
                                                  "side": order.get("side", "buy"), "qty": order.get("qty", "0"),
                                                  "adopted": True}, "sent", "adopted from the venue", 0)
                    self.log(f"adopted an open order the journal did not know: {cid} ({order.get('symbol')})")
                    row = self.journal.get(cid)
                self._record_venue_order(row, order, "reconciled")
        elif not listed.ok:
            return f"cannot list open orders: {listed.message}"
        if self.compare_positions() is None:
            return "cannot read the venue's positions"
        return ""

    def compare_positions(self) -> dict[str, dict[str, str]] | None:
        """Positions from the journal against the venue's; each mismatch is counted and said. None
        when the venue's cannot be read (never an empty "no mismatch")."""
        answer = self.client.positions()
        if not answer.ok or not isinstance(answer.body, list):
            self.log(f"cannot read the venue's positions: {answer.message}")
            return None
        venue = {p["symbol"]: Decimal(str(p["qty"])) for p in answer.body}
        ours = self.journal.positions()
        mismatches = {s: {"engine": decimal_text(ours.get(s, Decimal(0))), "venue": decimal_text(venue.get(s, Decimal(0)))}
                      for s in set(venue) | set(ours) if ours.get(s, Decimal(0)) != venue.get(s, Decimal(0))}
        if mismatches:
            self.counters.position_mismatches += len(mismatches)
            self.log(f"positions differ from the venue's: {mismatches}")
        return mismatches

    def refresh_open(self) -> None:
        """Every order the journal thinks open, from REST (fills the stream may have missed)."""
        self._last_refresh = time.monotonic()
        for row in self.journal.venue_open():
            if self.stop.is_set():
                return
            if not row.venue_order_id:
                continue
            answer = self.client.order(row.venue_order_id)
            if answer.ok:
                self._record_venue_order(row, answer.body, "refreshed")

    def _on_stream_connected(self, reconnect: bool) -> None:
        if reconnect:
            self._refresh_due.set()          # done by the main loop: not on the stream's thread

    # -- intake ------------------------------------------------------------------------------------
    def take(self, data: Any, signal_ns: int = 0) -> str:
        """One intent from the bus (``risk.approved`` carries it under "intent"); returns the state
        it was answered with."""
        payload = data.get("intent", data) if isinstance(data, dict) else data
        try:
            intent = parse_intent(payload)
        except IntentError as exc:
            self.counters.bad_intents += 1
            self.log(f"an intent was refused: {exc}")
            return "invalid"
        return self.take_intent(intent, signal_ns)

    def take_intent(self, intent: OrderIntent, signal_ns: int = 0) -> str:
        cid = intent.client_order_id
        existing = self.journal.get(cid)
        if existing is not None:
            self.counters.duplicate_intents += 1
            self._say(existing, existing.state, existing.reason)
            return existing.state
        self.counters.intents += 1
        when = intent.created_ns or signal_ns or time.time_ns()
        if self.halted:
            state, reason = "rejected", "halted"
        elif self.queue.qsize() >= self.options.max_queue:
            state, reason = "rejected", f"queue full ({self.options.max_queue})"
        else:
            state, reason = "queued", ""
        if not self.journal.add_intent(cid, intent.to_data(), state, reason, when):
            return "duplicate"
        row = self.journal.get(cid)
        if state == "rejected":
            self._count_reject(reason)
        else:
            self.counters.queued += 1
            self.queue.put(cid)
        self._say(row, state, reason)
        return state

    # -- sending -----------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self.stop.is_set():
            if self.paused.is_set():
                self.stop.wait(0.05)
                continue
            try:
                cid = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                with self._sending:
                    self.send(cid)
            except StopRequested:
                return
            except Exception as exc:   # noqa: BLE001 - one intent's fault must not stop the sender
                self.log(f"sending {cid} failed: {type(exc).__name__}: {exc}")

    def send(self, cid: str) -> None:
        row = self.journal.get(cid)
        if row is None or row.state not in ("queued", "sending"):
            return
        if self.halted:
            self._reject(row, "halted")
            return
        intent = parse_intent(row.intent)
        refusal = self.slippage_refusal(intent)
        if refusal:
            self._reject(row, refusal)
            return
        body = {"symbol": intent.symbol, "qty": intent.qty, "side": intent.side, "type": intent.type,
                "time_in_force": intent.time_in_force, "client_order_id": cid}
        if intent.limit_price is not None:
            body["limit_price"] = intent.limit_price
        self.journal.set_state(cid, "sending", event="request", detail={"body": body})
        self.latencies_ns.append(time.time_ns() - row.signal_ns)
        answer = self.client.submit(body)
        self.journal.note(cid, "answer", {"status": answer.status, "body": answer.body, "error": answer.error})
        if answer.ok:
            self.counters.sent += 1
            self._record_venue_order(row, answer.body, "accepted")
            self._say(self.journal.get(cid), "sent")
        elif is_duplicate(answer) or answer.status == 0 or answer.status >= 429 or answer.ambiguous:
            # It may be there already (a retry after a lost answer): look before anything else.
            if is_duplicate(answer):
                self.counters.duplicates_prevented += 1
            self._resolve_by_lookup(row, answer)
        else:
            self._reject(row, f"venue {answer.status}: {answer.message}")

    def _resolve_by_lookup(self, row: OrderRow, answer: Answer) -> None:
        found = self.client.by_client_id(row.client_order_id)
        if found.ok:
            self.counters.sent += 1
            self._record_venue_order(row, found.body, "found")
            self._say(self.journal.get(row.client_order_id), "sent")
        elif found.status == 404 and 400 <= answer.status < 500 and answer.status != 429 and not is_duplicate(answer):
            self._reject(row, f"venue {answer.status}: {answer.message}")   # refused, and holds nothing
        elif found.status == 404:
            self.counters.failed += 1
            reason = f"venue unavailable: {answer.error or answer.message}"
            self.journal.set_state(row.client_order_id, "failed", reason)
            self.counters.rejects[_reason_key(reason)] += 1
            self._say(row, "failed", reason)
        else:    # cannot tell: leave it "sending"; the next reconcile looks again
            self.log(f"{row.client_order_id}: no answer and no look-up ({found.message}); retried later")
            threading.Timer(max(self.options.backoff_scale, 0.01), self.queue.put, (row.client_order_id,)).start()

    def slippage_refusal(self, intent: OrderIntent) -> str:
        bps = self.options.slippage_bps
        if bps is None or self.marks is None or intent.type != "limit":
            return ""
        mark = self.marks(intent.symbol)
        if mark.mid is None:
            return f"slippage: no mark ({mark.reason})"
        limit = intent.limit
        band = mark.mid * bps / Decimal(10_000)
        if intent.side == "buy" and limit > mark.mid + band:
            return f"slippage: buy limit {limit} more than {bps} bps above mid {mark.mid}"
        if intent.side == "sell" and limit < mark.mid - band:
            return f"slippage: sell limit {limit} more than {bps} bps below mid {mark.mid}"
        return ""

    def _reject(self, row: OrderRow, reason: str) -> None:
        self.journal.set_state(row.client_order_id, "rejected", reason)
        self._count_reject(reason)
        self._say(row, "rejected", reason)

    def _count_reject(self, reason: str) -> None:
        self.counters.rejected += 1
        self.counters.rejects[_reason_key(reason)] += 1

    # -- fills -------------------------------------------------------------------------------------
    def on_update(self, data: dict[str, Any]) -> None:
        order = data.get("order")
        if not isinstance(order, dict):
            return
        row = self.journal.get(order.get("client_order_id", ""))
        if row is None:
            return
        fill = None
        if data.get("event") in ("fill", "partial_fill") and data.get("qty") and data.get("price"):
            try:
                fill = (Decimal(str(data["qty"])), Decimal(str(data["price"])))
            except ArithmeticError:
                fill = None
        self._record_venue_order(row, order, data.get("event", "update"), fill)

    def _record_venue_order(self, row: OrderRow, order: Any, kind: str,
                            fill: tuple[Decimal, Decimal] | None = None) -> None:
        if not isinstance(order, dict):
            return
        added = self.journal.apply_venue_order(row.client_order_id, order, kind, fill)
        if added is None:
            return
        qty, price = added
        self.counters.fills += 1
        position = self.journal.positions().get(row.symbol, Decimal(0))
        self.publish(TOPIC_FILL, {"client_order_id": row.client_order_id, "intent_id": row.intent_id,
                                  "strategy_id": row.strategy_id, "symbol": row.symbol, "side": row.side,
                                  "qty": str(qty), "price": str(price), "filled_qty": str(order.get("filled_qty")),
                                  "position_qty": str(position)})

    def book(self) -> dict[str, Any]:
        """Positions at average cost and realized P&L (today: UTC), replayed from the journal's
        fills in the order they were recorded: what the risk manager checks its own against."""
        import datetime as dt

        from ..trading.positions import ZERO, PositionBook
        book = PositionBook()
        today = dt.datetime.now(dt.timezone.utc).date()
        realized_today = ZERO
        for ts_ns, symbol, side, qty, price in self.journal.fills():
            realized = book.apply_fill(symbol, side, qty, price)
            if dt.datetime.fromtimestamp(ts_ns / 1e9, dt.timezone.utc).date() == today:
                realized_today += realized
        book.realized_today = realized_today
        return book.to_json()

    # -- kill switch -------------------------------------------------------------------------------
    def halt(self, reason: str = "ctl halt") -> dict[str, Any]:
        self.halted = True
        self.state = "halted"
        self.journal.set_meta("halted", "1")
        dropped = 0
        while True:
            try:
                cid = self.queue.get_nowait()
            except queue.Empty:
                break
            row = self.journal.get(cid)
            if row is not None and row.state == "queued":
                self._reject(row, "halted")
                dropped += 1
        open_now = len(self.journal.venue_open())
        threading.Thread(target=self._cancel_all, args=(reason,), name="halt", daemon=True).start()
        self.log(f"HALTED ({reason}): new intents refused, {dropped} queued dropped, "
                 f"cancelling {open_now} open orders (and any being sent now)")
        return {"halted": True, "dropped_queued": dropped, "cancelling": open_now}

    def _cancel_all(self, reason: str) -> None:
        with self._sending:                  # an order in flight when the halt came is journaled first
            rows = self.journal.venue_open()
        cancelled = 0
        for row in rows:
            try:
                answer = self.client.cancel(row.venue_order_id)
            except StopRequested:
                break
            self.journal.note(row.client_order_id, "cancel", {"status": answer.status, "error": answer.error})
            if answer.ok:
                cancelled += 1
                fresh = self.client.order(row.venue_order_id)
                if fresh.ok:
                    self._record_venue_order(row, fresh.body, "canceled")
        self.counters.cancelled += cancelled
        self.publish(TOPIC_HALTED, {"halted": True, "cancelled": cancelled, "open_orders": len(rows),
                                    "reason": reason})

    def release(self) -> dict[str, Any]:
        self.halted = False
        self.journal.set_meta("halted", "0")
        self.state = "running"
        self.publish(TOPIC_HALTED, {"halted": False, "cancelled": 0, "open_orders": 0, "reason": "released"})
        return {"halted": False}

    # -- housekeeping ------------------------------------------------------------------------------
    def tick(self) -> None:
        """From the main loop: refresh open orders after a stream reconnect or every refresh_s."""
        due = self._refresh_due.is_set() or time.monotonic() - self._last_refresh >= self.options.refresh_s
        if due and self.state != "reconciling":
            self._refresh_due.clear()
            try:
                self.refresh_open()
            except StopRequested:
                pass

    def figures(self) -> dict[str, Any]:
        c = self.counters
        lat = np.array(self.latencies_ns, dtype=np.int64) if self.latencies_ns else None
        out = {"intents": c.intents, "duplicate_intents": c.duplicate_intents, "queued_total": c.queued,
               "queue_depth": self.queue.qsize(), "orders_sent": c.sent, "rejected": c.rejected,
               "failed": c.failed, "retries": c.retries, "duplicates_prevented": c.duplicates_prevented,
               "fills": c.fills, "cancelled": c.cancelled, "adopted": c.adopted, "reconciled": c.reconciled,
               "position_mismatches": c.position_mismatches, "bad_intents": c.bad_intents,
               "http_requests": self.client.requests, "rate_limit_waits": self.bucket.waits,
               "stream_drops": self.stream.drops if self.stream else 0,
               "stream_updates": self.stream.updates if self.stream else 0,
               "halted": int(self.halted),
               "signal_to_sent_p50_us": int(np.percentile(lat, 50) / 1000) if lat is not None else 0,
               "signal_to_sent_p99_us": int(np.percentile(lat, 99) / 1000) if lat is not None else 0}
        return out

    def status(self) -> dict[str, Any]:
        return {"service": "execute", "name": self.options.name, "pid": os.getpid(), "state": self.state,
                "venue": self.options.base_url, "keys": "***", "journal": self.options.journal,
                "rate_limit": f"{self.options.rate_limit}/{self.options.rate_window_s:g}s",
                "slippage_bps": None if self.options.slippage_bps is None else str(self.options.slippage_bps),
                "marks": self.marks_source, "rejects": dict(self.counters.rejects),
                "orders": self.journal.state_counts(),
                "positions": {s: decimal_text(q) for s, q in self.journal.positions().items()}, **self.figures()}

    def close(self) -> None:
        self.stop.set()
        if self._sender.is_alive():
            self._sender.join(5)
        if self.stream is not None:
            self.stream.join()
        self.client.close()
        self.journal.close()


def _reason_key(reason: str) -> str:
    """The reject counter's key: the reason up to its first colon ("venue 403", "slippage", "halted")."""
    return reason.split(":", 1)[0].strip() or "unknown"
