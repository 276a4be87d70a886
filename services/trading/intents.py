"""Order intents and what becomes of them, on the signals bus (``shmpipe.signals`` envelope).

Topics and payloads (``data``; money and quantities are decimal strings, never floats, so a
price or a P&L is exact end to end):

    order.intent        OrderIntent (below)                          a strategy wants an order
    risk.approved       {"intent": OrderIntent, "mark": str|None}    the risk manager let it through
    risk.rejected       {"intent": OrderIntent, "reason": str, "detail": str}
    execution.order     {"intent_id", "strategy_id", "client_order_id", "state", "reason",
                         "venue_order_id"}                           the engine's word on an intent:
                        state is queued (journaled, waiting for a rate-limit token), sent (the venue
                        holds it), rejected (refused: reason says by whom and why) or failed (the
                        venue never took it after every retry; no order exists there)
    execution.fill      {"client_order_id", "intent_id", "symbol", "side", "qty", "price",
                         "filled_qty", "position_qty"}               qty and price of this fill
    execution.halted    {"halted": bool, "cancelled": int, "reason": str}

A strategy publishes ``order.intent``; the risk manager answers with ``risk.approved`` or
``risk.rejected``; the execution engine takes ``risk.approved`` and answers each intent with
``execution.order``. An intent is identified by (strategy_id, intent_id): the same pair published
twice is one order, never two.
"""
from __future__ import annotations

import hashlib
import time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

TOPIC_INTENT = "order.intent"
TOPIC_APPROVED = "risk.approved"
TOPIC_REJECTED = "risk.rejected"
TOPIC_ORDER = "execution.order"
TOPIC_FILL = "execution.fill"
TOPIC_HALTED = "execution.halted"

CLIENT_ORDER_ID_PREFIX = "shm-"


class IntentError(ValueError):
    """An intent that cannot be an order (a missing field, a bad quantity or price): one line."""


class OrderIntent(msgspec.Struct, kw_only=True, frozen=True):
    intent_id: str                       # unique within the strategy
    strategy_id: str
    symbol: str                          # the venue's symbol, e.g. "AAPL" or "BTC/USD"
    side: Literal["buy", "sell"]
    qty: str                             # decimal string > 0
    type: Literal["market", "limit"] = "market"
    limit_price: str | None = None       # decimal string > 0, required for (only for) limit orders
    time_in_force: Literal["day", "gtc", "ioc", "fok"] = "day"
    created_ns: int = 0                  # the strategy's wall clock when it decided

    @property
    def quantity(self) -> Decimal:
        return Decimal(self.qty)

    @property
    def limit(self) -> Decimal | None:
        return None if self.limit_price is None else Decimal(self.limit_price)

    @property
    def client_order_id(self) -> str:
        return client_order_id(self.strategy_id, self.intent_id)

    def to_data(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


def client_order_id(strategy_id: str, intent_id: str) -> str:
    """The venue's client_order_id for an intent: the same intent gives the same id in any process,
    after any restart, so a retry can never become a second order (Alpaca refuses a duplicate id)."""
    digest = hashlib.sha256(f"{strategy_id}\x00{intent_id}".encode()).hexdigest()
    return CLIENT_ORDER_ID_PREFIX + digest[:40]


def _positive_decimal(what: str, text: object) -> Decimal:
    if not isinstance(text, str):
        raise IntentError(f"{what} must be a decimal string, not {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise IntentError(f"{what} {text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise IntentError(f"{what} must be > 0, not {text!r}")
    return value


def parse_intent(data: object) -> OrderIntent:
    """An OrderIntent from a bus payload; IntentError naming what is wrong for anything else."""
    try:
        intent = msgspec.convert(data, OrderIntent)
    except msgspec.ValidationError as exc:
        raise IntentError(f"not an order intent: {exc}") from None
    if not intent.intent_id or not intent.strategy_id or not intent.symbol:
        raise IntentError("intent_id, strategy_id and symbol must be non-empty")
    _positive_decimal("qty", intent.qty)
    if intent.type == "limit":
        if intent.limit_price is None:
            raise IntentError(f"intent {intent.intent_id}: a limit order needs limit_price")
        _positive_decimal("limit_price", intent.limit_price)
    elif intent.limit_price is not None:
        raise IntentError(f"intent {intent.intent_id}: a market order takes no limit_price")
    return intent


def new_intent(strategy_id: str, intent_id: str, symbol: str, side: str, qty: Decimal | str, *,
               type: str = "market", limit_price: Decimal | str | None = None,
               time_in_force: str = "day") -> OrderIntent:
    return parse_intent({"intent_id": intent_id, "strategy_id": strategy_id, "symbol": symbol, "side": side,
                         "qty": str(qty), "type": type,
                         "limit_price": None if limit_price is None else str(limit_price),
                         "time_in_force": time_in_force, "created_ns": time.time_ns()})
