"""Risk limits from a TOML file, as exact decimals. Every limit is a strict upper bound: a figure
just under it passes, a figure equal to it or over it is refused.

    [limits]
    max_order_value = "10000"      # one order: qty x price (its limit price, else the mid)
    max_position_value = "50000"   # one symbol: |position + pending + this order| x mid
    buying_power = "100000"        # all symbols: gross |position + pending| x mid, this order included
    max_daily_loss = "1000"        # realized today + unrealized now <= -this halts new risk
    max_qty = "1000"               # optional: one order's quantity
    stale_book_s = 2.0             # a book older than this is no mark

Money is written as strings (or integers) so that "0.1" is exactly 0.1; a float is refused.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

REQUIRED = ("max_order_value", "max_position_value", "buying_power", "max_daily_loss")


class LimitsError(Exception):
    """The limits file is missing, unreadable or wrong: one line naming the file and the key."""


@dataclass(frozen=True)
class Limits:
    max_order_value: Decimal
    max_position_value: Decimal
    buying_power: Decimal
    max_daily_loss: Decimal
    max_qty: Decimal | None = None
    stale_book_s: float = 2.0

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


def _money(path: str, key: str, value: object) -> Decimal:
    if isinstance(value, float) or isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LimitsError(f"{path}: limits.{key} must be a decimal string like \"1000.50\" (floats are not "
                          f"exact), not {value!r}")
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise LimitsError(f"{path}: limits.{key} {value!r} is not a decimal number") from None
    if not out.is_finite() or out <= 0:
        raise LimitsError(f"{path}: limits.{key} must be > 0, not {value!r}")
    return out


def parse_limits(table: dict[str, Any], path: str = "<limits>") -> Limits:
    limits = table.get("limits")
    if not isinstance(limits, dict):
        raise LimitsError(f"{path}: no [limits] table")
    unknown = set(limits) - set(Limits.__dataclass_fields__)
    if unknown:
        raise LimitsError(f"{path}: unknown key(s) in [limits]: {', '.join(sorted(unknown))}")
    missing = [k for k in REQUIRED if k not in limits]
    if missing:
        raise LimitsError(f"{path}: [limits] needs {', '.join(missing)}")
    stale = limits.get("stale_book_s", 2.0)
    if isinstance(stale, bool) or not isinstance(stale, (int, float)) or not stale > 0:
        raise LimitsError(f"{path}: limits.stale_book_s must be a number of seconds > 0, not {stale!r}")
    return Limits(**{k: _money(path, k, limits[k]) for k in REQUIRED},
                  max_qty=None if "max_qty" not in limits else _money(path, "max_qty", limits["max_qty"]),
                  stale_book_s=float(stale))


def load_limits(path: str) -> Limits:
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise LimitsError(f"limits file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LimitsError(f"limits file {path} is not valid TOML: {exc}") from None
    return parse_limits(table, path)
