"""The engine's durable journal (SQLite, WAL, synchronous=FULL): every intent, decision, request
and venue answer is committed here before the engine acts on it, so a process killed at any
instant restarts knowing what it may have sent.

One row per intent in ``orders`` (keyed by its client_order_id), its life in ``events``:

    queued   journaled, not sent yet                       restart: look it up, send if absent
    sending  the request may have left                     restart: look it up, send if absent
    sent     the venue holds it (venue_status follows it)   restart: refresh it from the venue
    rejected refused, by the engine (halted, slippage, queue full) or the venue (reason says)
    failed   the venue never took it after every retry, and a look-up found no order

Fills are kept as each order's cumulative filled_qty and filled notional (the venue's own
figures): applying the same update twice changes nothing, and positions are their signed sums.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

UNRESOLVED = ("queued", "sending")
VENUE_OPEN = ("new", "partially_filled", "accepted", "pending_new", "accepted_for_bidding", "pending_cancel",
              "pending_replace", "held")
VENUE_FINAL = ("filled", "canceled", "expired", "rejected", "done_for_day", "replaced", "stopped", "suspended")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, strategy_id TEXT NOT NULL,
    symbol TEXT NOT NULL, side TEXT NOT NULL, qty TEXT NOT NULL, intent TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', venue_order_id TEXT, venue_status TEXT,
    filled_qty TEXT NOT NULL DEFAULT '0', filled_notional TEXT NOT NULL DEFAULT '0',
    signal_ns INTEGER NOT NULL, received_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS orders_state ON orders(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, client_order_id TEXT,
    kind TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class JournalError(Exception):
    """The journal cannot be opened or written: one line naming the file."""


@dataclass
class OrderRow:
    client_order_id: str
    intent_id: str
    strategy_id: str
    symbol: str
    side: str
    qty: Decimal
    intent: dict[str, Any]
    state: str
    reason: str
    venue_order_id: str | None
    venue_status: str | None
    filled_qty: Decimal
    filled_notional: Decimal
    signal_ns: int

    @property
    def venue_open(self) -> bool:
        return self.state == "sent" and (self.venue_status or "new") in VENUE_OPEN


class Journal:
    """Thread-safe (one connection under a lock): the intake, the sender, the stream reader and
    the control plane all write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"journal {path}: SQLite would not use WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path}: {exc}") from None

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"journal {self.path}: writing failed: {exc}") from None

    @staticmethod
    def _event(cid: str | None, kind: str, detail: dict[str, Any]) -> tuple[str, tuple]:
        return ("INSERT INTO events (ts_ns, client_order_id, kind, detail) VALUES (?,?,?,?)",
                (time.time_ns(), cid, kind, json.dumps(detail, default=str)))

    # -- writes ------------------------------------------------------------------------------------
    def add_intent(self, cid: str, intent: dict[str, Any], state: str, reason: str, signal_ns: int) -> bool:
        """Journal a new intent; False (and nothing written) when this client_order_id is known."""
        now = time.time_ns()
        with self._lock:
            if self.get(cid) is not None:
                return False
            self._write([
                ("INSERT INTO orders (client_order_id, intent_id, strategy_id, symbol, side, qty, intent, state, "
                 "reason, signal_ns, received_ns, updated_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                 (cid, intent["intent_id"], intent["strategy_id"], intent["symbol"], intent["side"], intent["qty"],
                  json.dumps(intent), state, reason, signal_ns, now, now)),
                self._event(cid, "intent", {"intent": intent, "state": state, "reason": reason})])
        return True

    def set_state(self, cid: str, state: str, reason: str = "", *, event: str | None = None,
                  detail: dict[str, Any] | None = None) -> None:
        self._write([("UPDATE orders SET state=?, reason=?, updated_ns=? WHERE client_order_id=?",
                      (state, reason, time.time_ns(), cid)),
                     self._event(cid, event or state, detail or {"reason": reason})])

    def note(self, cid: str | None, kind: str, detail: dict[str, Any]) -> None:
        self._write([self._event(cid, kind, detail)])

    def apply_venue_order(self, cid: str, order: dict[str, Any], kind: str,
                          fill: tuple[Decimal, Decimal] | None = None) -> tuple[Decimal, Decimal] | None:
        """Record the venue's view of an order (state sent, its id and status, its cumulative fill).
        ``fill``: the (qty, price) a trade_updates fill event names, exact where the order's
        filled_avg_price is rounded; used when it accounts for the whole increase. Returns (qty,
        price) of the fill this update adds, or None when it adds none."""
        with self._lock:
            row = self.get(cid)
            if row is None:
                return None
            filled = Decimal(str(order.get("filled_qty") or "0"))
            avg = order.get("filled_avg_price")
            notional = filled * Decimal(str(avg)) if avg not in (None, "") and filled else Decimal(0)
            added = None
            if filled > row.filled_qty:
                delta_qty = filled - row.filled_qty
                if fill is not None and fill[0] == delta_qty:
                    added = fill
                    notional = row.filled_notional + fill[0] * fill[1]
                else:
                    added = (delta_qty, (notional - row.filled_notional) / delta_qty)
            else:
                filled, notional = row.filled_qty, row.filled_notional   # an older update: keep the newer
            status = order.get("status") or row.venue_status
            if row.venue_status in VENUE_FINAL and status not in VENUE_FINAL:
                status = row.venue_status          # an update older than one already applied
            if added is None and row.state == "sent" and status == row.venue_status and \
                    row.venue_order_id == order.get("id"):
                return None
            self._write([
                ("UPDATE orders SET state='sent', reason='', venue_order_id=?, venue_status=?, filled_qty=?, "
                 "filled_notional=?, updated_ns=? WHERE client_order_id=?",
                 (order.get("id"), status, str(filled), str(notional), time.time_ns(), cid)),
                self._event(cid, kind, {"status": status, "filled_qty": str(filled),
                                        "fill": None if added is None else [str(added[0]), str(added[1])]})])
            return added

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", (key, value)),
                     self._event(None, "meta", {key: value})])

    # -- reads -------------------------------------------------------------------------------------
    def meta(self, key: str, default: str = "") -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def get(self, cid: str) -> OrderRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT client_order_id, intent_id, strategy_id, symbol, side, qty, intent, state, reason, "
                "venue_order_id, venue_status, filled_qty, filled_notional, signal_ns FROM orders "
                "WHERE client_order_id=?", (cid,)).fetchone()
        return None if row is None else _row(row)

    def rows(self, where: str = "", params: tuple = ()) -> list[OrderRow]:
        with self._lock:
            found = self._db.execute(
                "SELECT client_order_id, intent_id, strategy_id, symbol, side, qty, intent, state, reason, "
                "venue_order_id, venue_status, filled_qty, filled_notional, signal_ns FROM orders "
                + where + " ORDER BY received_ns", params).fetchall()
        return [_row(r) for r in found]

    def unresolved(self) -> list[OrderRow]:
        return self.rows("WHERE state IN ('queued', 'sending')")

    def venue_open(self) -> list[OrderRow]:
        return [r for r in self.rows("WHERE state='sent'") if r.venue_open]

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM orders GROUP BY state").fetchall())

    def reject_reasons(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute(
                "SELECT reason, COUNT(*) FROM orders WHERE state IN ('rejected', 'failed') GROUP BY reason"
            ).fetchall())

    def positions(self) -> dict[str, Decimal]:
        """symbol -> signed quantity held, from every order's cumulative fill."""
        out: dict[str, Decimal] = defaultdict(Decimal)
        with self._lock:
            found = self._db.execute("SELECT symbol, side, filled_qty FROM orders WHERE filled_qty != '0'").fetchall()
        for symbol, side, filled in found:
            out[symbol] += Decimal(filled) if side == "buy" else -Decimal(filled)
        return {s: q for s, q in out.items() if q}

    def fills(self) -> list[tuple[int, str, str, Decimal, Decimal]]:
        """Every fill the journal recorded, in order: (ts_ns, symbol, side, qty, price)."""
        with self._lock:
            found = self._db.execute(
                "SELECT e.ts_ns, o.symbol, o.side, e.detail FROM events e JOIN orders o "
                "ON o.client_order_id = e.client_order_id WHERE e.detail LIKE '%\"fill\": [%' ORDER BY e.seq"
            ).fetchall()
        out = []
        for ts_ns, symbol, side, detail in found:
            fill = json.loads(detail).get("fill")
            if fill:
                out.append((ts_ns, symbol, side, Decimal(fill[0]), Decimal(fill[1])))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(r: tuple) -> OrderRow:
    return OrderRow(r[0], r[1], r[2], r[3], r[4], Decimal(r[5]), json.loads(r[6]), r[7], r[8], r[9], r[10],
                    Decimal(r[11]), Decimal(r[12]), r[13])
