"""The emulated venue's state: orders, fills, positions and cash, in exact decimals, with the
answers Alpaca's Trading API v2 gives (order objects with string numbers, 422 for a duplicate
client_order_id, 404 for an unknown order). No I/O here: ``server.py`` puts it behind HTTP."""
from __future__ import annotations

import datetime as _dt
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

OPEN_STATES = ("new", "partially_filled", "accepted", "pending_new")
QTY_QUANTUM = Decimal("0.000000001")     # Alpaca's fractional quantities carry 9 decimals


class VenueError(Exception):
    """An answer other than success: the HTTP status and Alpaca's {"code", "message"} body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def dec(value: Decimal) -> str:
    """A decimal as Alpaca writes numbers: a plain string, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    type: str
    time_in_force: str
    limit_price: Decimal | None
    status: str = "new"
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    created_at: str = field(default_factory=_now_iso)
    updated_at: str = ""
    filled_at: str | None = None
    canceled_at: str | None = None

    @property
    def filled_avg_price(self) -> Decimal | None:
        return None if not self.filled_qty else self.filled_notional / self.filled_qty

    def to_json(self) -> dict[str, Any]:
        avg = self.filled_avg_price
        return {
            "id": self.id, "client_order_id": self.client_order_id, "created_at": self.created_at,
            "updated_at": self.updated_at or self.created_at, "submitted_at": self.created_at,
            "filled_at": self.filled_at, "expired_at": None, "canceled_at": self.canceled_at,
            "failed_at": None, "replaced_at": None, "replaced_by": None, "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "asset:" + self.symbol)), "symbol": self.symbol,
            "asset_class": "crypto" if "/" in self.symbol else "us_equity", "notional": None,
            "qty": dec(self.qty), "filled_qty": dec(self.filled_qty),
            "filled_avg_price": None if avg is None else dec(avg.quantize(Decimal("0.0000000001"))),
            "order_class": "", "order_type": self.type, "type": self.type, "side": self.side,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else dec(self.limit_price),
            "stop_price": None, "status": self.status, "extended_hours": False, "legs": None,
        }


@dataclass
class Position:
    qty: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)            # signed cost basis of the open quantity


def _decimal(name: str, value: object, *, required: bool = True) -> Decimal | None:
    if value is None:
        if required:
            raise VenueError(422, 40010001, f"{name} is required")
        return None
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise VenueError(422, 40010001, f"invalid {name}") from None
    if not out.is_finite() or out <= 0:
        raise VenueError(422, 40010001, f"{name} must be > 0")
    return out


class Venue:
    """Thread-safe: the HTTP loop and the control plane's thread both read it."""

    def __init__(self, price_of: Callable[[str], Decimal | None], *, cash: Decimal = Decimal(1_000_000)) -> None:
        self.price_of = price_of
        self.cash = cash
        self.orders: dict[str, Order] = {}
        self.by_client_id: dict[str, Order] = {}
        self.positions: dict[str, Position] = {}
        self.lock = threading.RLock()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.duplicates_refused = 0
        self.fills = 0

    # -- orders ------------------------------------------------------------------------------------
    def submit(self, body: object) -> Order:
        if not isinstance(body, dict):
            raise VenueError(422, 40010001, "request body must be a JSON object")
        symbol, side = body.get("symbol"), body.get("side")
        order_type = body.get("type", body.get("order_type", "market"))
        tif = body.get("time_in_force", "day")
        if not isinstance(symbol, str) or not symbol:
            raise VenueError(422, 40010001, "symbol is required")
        if side not in ("buy", "sell"):
            raise VenueError(422, 40010001, "side must be buy or sell")
        if order_type not in ("market", "limit"):
            raise VenueError(422, 40010001, f"order type {order_type!r} is not supported here")
        if tif not in ("day", "gtc", "ioc", "fok"):
            raise VenueError(422, 40010001, "invalid time_in_force")
        qty = _decimal("qty", body.get("qty"))
        limit = _decimal("limit_price", body.get("limit_price"), required=order_type == "limit")
        client_id = body.get("client_order_id") or str(uuid.uuid4())
        if not isinstance(client_id, str) or len(client_id) > 128:
            raise VenueError(422, 40010001, "client_order_id must be a string of at most 128 characters")
        with self.lock:
            if client_id in self.by_client_id:
                self.duplicates_refused += 1
                raise VenueError(422, 40010001, "client_order_id must be unique")
            order = Order(str(uuid.uuid4()), client_id, symbol, side, qty, order_type, tif, limit)
            self.orders[order.id] = order
            self.by_client_id[client_id] = order
        self._emit("new", order)
        return order

    def get(self, order_id: str) -> Order:
        with self.lock:
            order = self.orders.get(order_id)
        if order is None:
            raise VenueError(404, 40410000, "order not found")
        return order

    def get_by_client_id(self, client_id: str) -> Order:
        with self.lock:
            order = self.by_client_id.get(client_id)
        if order is None:
            raise VenueError(404, 40410000, "order not found")
        return order

    def list(self, status: str = "open", limit: int = 50) -> list[Order]:
        with self.lock:
            orders = list(self.orders.values())
        if status == "open":
            orders = [o for o in orders if o.status in OPEN_STATES]
        elif status == "closed":
            orders = [o for o in orders if o.status not in OPEN_STATES]
        return list(reversed(orders))[:limit]        # newest first, as Alpaca's default direction

    def cancel(self, order_id: str) -> None:
        with self.lock:
            order = self.get(order_id)
            if order.status not in OPEN_STATES:
                raise VenueError(422, 42210000, f"order is {order.status} and cannot be canceled")
            order.status, order.canceled_at = "canceled", _now_iso()
            order.updated_at = order.canceled_at
        self._emit("canceled", order)

    # -- fills -------------------------------------------------------------------------------------
    def try_fill(self, order: Order, fraction: Decimal = Decimal(1)) -> bool:
        """Fill ``fraction`` of what is left of ``order`` at the market (a limit order only when
        marketable); False when it cannot fill now (no price, not marketable, not open)."""
        price = self.price_of(order.symbol)
        with self.lock:
            if price is None or order.status not in OPEN_STATES:
                return False
            if order.limit_price is not None:
                if (order.side == "buy" and price > order.limit_price) or \
                        (order.side == "sell" and price < order.limit_price):
                    return False
            left = order.qty - order.filled_qty
            qty = left if fraction >= 1 else (left * fraction).quantize(QTY_QUANTUM)
            if qty <= 0:
                return False
            signed = qty if order.side == "buy" else -qty
            order.filled_qty += qty
            order.filled_notional += qty * price
            order.updated_at = _now_iso()
            if order.filled_qty == order.qty:
                order.status, order.filled_at = "filled", order.updated_at
            else:
                order.status = "partially_filled"
            self._apply_position(order.symbol, signed, price)
            self.cash -= signed * price
            self.fills += 1
            position_qty = self.positions[order.symbol].qty
        self._emit("fill" if order.status == "filled" else "partial_fill", order,
                   price=dec(price), qty=dec(qty), position_qty=dec(position_qty))
        return True

    def _apply_position(self, symbol: str, signed: Decimal, price: Decimal) -> None:
        pos = self.positions.setdefault(symbol, Position())
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            pos.cost += signed * price
            pos.qty += signed
            return
        closing = min(abs(signed), abs(pos.qty))
        avg = pos.cost / pos.qty
        pos.cost -= avg * closing * (1 if pos.qty > 0 else -1)
        pos.qty += signed
        rest = abs(signed) - closing
        if pos.qty == 0:
            pos.cost = Decimal(0)
        if rest:                               # crossed through zero: the rest opens at this price
            pos.cost = pos.qty * price

    # -- positions and account ---------------------------------------------------------------------
    def positions_json(self) -> list[dict[str, Any]]:
        out = []
        with self.lock:
            items = [(s, Position(p.qty, p.cost)) for s, p in self.positions.items() if p.qty]
        for symbol, pos in sorted(items):
            price = self.price_of(symbol)
            avg = pos.cost / pos.qty
            market_value = None if price is None else pos.qty * price
            out.append({
                "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "asset:" + symbol)), "symbol": symbol,
                "exchange": "EMULATED", "asset_class": "crypto" if "/" in symbol else "us_equity",
                "qty": dec(pos.qty), "qty_available": dec(pos.qty), "side": "long" if pos.qty > 0 else "short",
                "avg_entry_price": dec(avg.quantize(Decimal("0.0000000001"))),
                "cost_basis": dec(pos.cost),
                "market_value": None if market_value is None else dec(market_value),
                "current_price": None if price is None else dec(price),
                "unrealized_pl": None if market_value is None else dec(market_value - pos.cost),
            })
        return out

    def account_json(self) -> dict[str, Any]:
        with self.lock:
            cash = self.cash
            held = [(s, p.qty) for s, p in self.positions.items() if p.qty]
        long_value = short_value = Decimal(0)
        unmarked = []
        for symbol, qty in held:
            price = self.price_of(symbol)
            if price is None:
                # No trusted price now (a stale or invalid book): the equity below leaves this
                # position out, and says so, rather than mark it at a guess.
                unmarked.append(symbol)
                continue
            if qty > 0:
                long_value += qty * price
            else:
                short_value += qty * price
        equity = cash + long_value + short_value
        return {"id": "00000000-0000-4000-8000-000000000000", "account_number": "PAEMULATOR",
                "status": "ACTIVE", "currency": "USD", "cash": dec(cash), "buying_power": dec(max(cash, Decimal(0))),
                "equity": dec(equity), "last_equity": dec(equity), "long_market_value": dec(long_value),
                "short_market_value": dec(short_value), "trading_blocked": False, "account_blocked": False,
                "pattern_day_trader": False,
                "unmarked_symbols": sorted(unmarked)}     # the emulator's own: positions left out of equity

    # -- the trade_updates stream --------------------------------------------------------------------
    def _emit(self, event: str, order: Order, **extra: str) -> None:
        message = {"stream": "trade_updates",
                   "data": {"event": event, "timestamp": _now_iso(), "order": order.to_json(), **extra}}
        for listener in list(self.listeners):
            listener(message)
