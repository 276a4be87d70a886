"""The risk manager's decisions, with no I/O: intents in, approvals or rejections with a reason
out; positions, pending orders and P&L from the engine's fills, in exact decimals.

Positions and P&L: ``services/trading/positions.py`` (average cost).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ..trading.book_marks import Mark
from ..trading.intents import OrderIntent
from ..trading.positions import PositionBook
from .limits import Limits

ZERO = Decimal(0)


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str = ""           # a short key: "max_order_value", "book", "daily_loss_halt", ...
    detail: str = ""           # the figures behind it, for people
    mark: Decimal | None = None
    book_why: str = ""         # with reason "book": the mark's short key (stale, invalid, crossed, ...)


class RiskManager:
    def __init__(self, limits: Limits, mark_of: Callable[[str], Mark],
                 today: Callable[[], _dt.date] = lambda: _dt.datetime.now(_dt.timezone.utc).date()) -> None:
        self.limits = limits
        self.mark_of = mark_of
        self.today = today
        self.day = today()
        self.book = PositionBook()
        self.pending: dict[str, tuple[str, Decimal]] = {}       # client_order_id -> (symbol, signed qty left)
        self.halted_reason = ""                                 # set when the daily loss limit is crossed

    # -- state from the engine -----------------------------------------------------------------------
    def on_fill(self, client_order_id: str, symbol: str, side: str, qty: Decimal, price: Decimal) -> Decimal:
        self._roll_day()
        pending = self.pending.get(client_order_id)
        if pending is not None:
            left = pending[1] - (qty if side == "buy" else -qty)
            if left == 0 or (left > 0) != (pending[1] > 0):
                del self.pending[client_order_id]
            else:
                self.pending[client_order_id] = (symbol, left)
        return self.book.apply_fill(symbol, side, qty, price)

    def on_order_done(self, client_order_id: str) -> None:
        """The engine rejected it or it failed: it will bring no fill."""
        self.pending.pop(client_order_id, None)

    def reset_halt(self) -> None:
        self.halted_reason = ""

    def _roll_day(self) -> None:
        today = self.today()
        if today != self.day:
            self.day, self.book.realized_today, self.halted_reason = today, ZERO, ""

    def _pending_qty(self, symbol: str) -> Decimal:
        return sum((q for s, q in self.pending.values() if s == symbol), ZERO)

    # -- the checks ----------------------------------------------------------------------------------
    def daily_pnl(self) -> tuple[Decimal | None, str]:
        """(realized today + unrealized now, "") or (None, why not: a held symbol has no mark)."""
        pnl, why, _key = self._daily_pnl()
        return pnl, why

    def _daily_pnl(self) -> tuple[Decimal | None, str, str]:
        unrealized = ZERO
        for symbol, pos in self.book.positions.items():
            if pos.qty == 0:
                continue
            mark = self.mark_of(symbol)
            if mark.mid is None:
                return None, f"no mark for held {symbol}: {mark.reason}", mark.why or "no_mark"
            unrealized += (mark.mid - pos.avg_price) * pos.qty
        return self.book.realized_today + unrealized, "", ""

    def check(self, intent: OrderIntent) -> Decision:
        self._roll_day()
        L = self.limits
        qty = intent.quantity
        signed = qty if intent.side == "buy" else -qty
        held = self.book.qty(intent.symbol) + self._pending_qty(intent.symbol)
        reduces = held != 0 and (held > 0) != (signed > 0) and abs(signed) <= abs(held)
        mark = self.mark_of(intent.symbol)
        if mark.mid is None:
            return Decision(False, "book", f"{intent.symbol}: {mark.reason}", book_why=mark.why or "no_mark")
        if L.max_qty is not None and qty >= L.max_qty:
            return Decision(False, "max_qty", f"qty {qty} >= limit {L.max_qty}", mark.mid)
        price = intent.limit if intent.limit is not None else mark.mid
        order_value = qty * price
        if order_value >= L.max_order_value:
            return Decision(False, "max_order_value", f"order value {order_value} >= limit {L.max_order_value}",
                            mark.mid)
        pnl, why, key = self._daily_pnl()
        if pnl is None:
            return Decision(False, "book", why, mark.mid, key)
        if not self.halted_reason and -pnl >= L.max_daily_loss:
            self.halted_reason = f"daily loss {-pnl} >= limit {L.max_daily_loss}"
        if self.halted_reason and not reduces:
            return Decision(False, "daily_loss_halt", self.halted_reason, mark.mid)
        position_value = abs(held + signed) * mark.mid
        if position_value >= L.max_position_value and not reduces:
            return Decision(False, "max_position_value",
                            f"{intent.symbol} position value {position_value} >= limit {L.max_position_value}",
                            mark.mid)
        gross = position_value
        for symbol in set(self.book.positions) | {s for s, _ in self.pending.values()}:
            if symbol == intent.symbol:
                continue
            other = self.book.qty(symbol) + self._pending_qty(symbol)
            if other == 0:
                continue
            other_mark = self.mark_of(symbol)
            if other_mark.mid is None:
                return Decision(False, "book", f"no mark for held {symbol}: {other_mark.reason}", mark.mid,
                                other_mark.why or "no_mark")
            gross += abs(other) * other_mark.mid
        if gross >= L.buying_power and not reduces:
            return Decision(False, "buying_power", f"gross exposure {gross} >= buying power {L.buying_power}",
                            mark.mid)
        self.pending[intent.client_order_id] = (intent.symbol, signed)
        return Decision(True, "", "", mark.mid)
