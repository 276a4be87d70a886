"""Positions and realized P&L from fills, at average cost, in exact decimals: a fill that adds to
a position moves its average price; one that reduces it realizes (fill price - average) x
quantity; one that crosses zero realizes the closed part and opens the rest at the fill price.
The risk manager keeps one from the engine's fills; the engine rebuilds one from its journal."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)


def decimal_text(value: Decimal) -> str:
    """A decimal as Alpaca writes numbers: plain, no exponent, no trailing zeros ("491", "0.5")."""
    return format(value.normalize(), "f") if value else "0"


@dataclass
class Position:
    qty: Decimal = ZERO
    avg_price: Decimal = ZERO


@dataclass
class PositionBook:
    positions: dict[str, Position] = field(default_factory=dict)
    realized_today: Decimal = ZERO
    realized_total: Decimal = ZERO

    def apply_fill(self, symbol: str, side: str, qty: Decimal, price: Decimal) -> Decimal:
        """Returns the P&L this fill realized."""
        signed = qty if side == "buy" else -qty
        pos = self.positions.setdefault(symbol, Position())
        realized = ZERO
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            total = pos.qty + signed
            pos.avg_price = (pos.avg_price * abs(pos.qty) + price * abs(signed)) / abs(total)
            pos.qty = total
        else:
            closing = min(abs(signed), abs(pos.qty))
            direction = 1 if pos.qty > 0 else -1
            realized = (price - pos.avg_price) * closing * direction
            pos.qty += signed
            if pos.qty == 0:
                pos.avg_price = ZERO
            elif (pos.qty > 0) != (direction > 0):           # crossed through zero
                pos.avg_price = price
        self.realized_today += realized
        self.realized_total += realized
        return realized

    def qty(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return ZERO if pos is None else pos.qty

    def to_json(self) -> dict:
        return {"positions": {s: {"qty": decimal_text(p.qty), "avg_price": decimal_text(p.avg_price)}
                              for s, p in sorted(self.positions.items()) if p.qty},
                "realized_today": str(self.realized_today), "realized_total": str(self.realized_total)}
