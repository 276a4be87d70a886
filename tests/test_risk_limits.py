"""Each risk limit at its boundary, in exact decimals: just under passes, equal and over are
refused (limits are strict upper bounds, services/risk/limits.py)."""
from __future__ import annotations

from decimal import Decimal as D

import pytest
from shmpipe_services.risk.limits import LimitsError, parse_limits
from shmpipe_services.risk.manager import RiskManager
from shmpipe_services.trading.book_marks import Mark
from shmpipe_services.trading.intents import new_intent

BIG = "1000000000"


def manager(mids: dict[str, str], **limits: str) -> tuple[RiskManager, dict]:
    table = {"max_order_value": BIG, "max_position_value": BIG, "buying_power": BIG, "max_daily_loss": BIG}
    table.update(limits)
    marks = {s: D(m) for s, m in mids.items()}

    def mark_of(symbol: str) -> Mark:
        mid = marks.get(symbol)
        return Mark(mid, "" if mid is not None else "no book")
    return RiskManager(parse_limits({"limits": table}), mark_of), marks


_n = iter(range(10**9))


def intent(symbol: str, side: str, qty: str, limit_price: str | None = None):
    return new_intent("s", f"i{next(_n)}", symbol, side, qty, type="limit" if limit_price else "market",
                      limit_price=limit_price)


def verdicts(risk: RiskManager, intents) -> list[tuple[bool, str]]:
    out = []
    for it in intents:
        decision = risk.check(it)
        out.append((decision.approved, decision.reason))
        if decision.approved:
            risk.on_order_done(it.client_order_id)     # not held as pending: each case stands alone
    return out


def test_max_order_value_boundary_is_exact():
    risk, _ = manager({"X": "3"}, max_order_value="2.1")
    # 0.7 x 3 is 2.1 exactly; in floats it is 2.0999999999999996 and would pass
    assert verdicts(risk, [intent("X", "buy", "0.6999", "3"), intent("X", "buy", "0.7", "3"),
                           intent("X", "buy", "0.7001", "3")]) == \
        [(True, ""), (False, "max_order_value"), (False, "max_order_value")]


def test_max_order_value_of_a_market_order_uses_the_mid():
    risk, _ = manager({"X": "100.01"}, max_order_value="1000.1")
    assert verdicts(risk, [intent("X", "sell", "9.99"), intent("X", "sell", "10"), intent("X", "sell", "10.01")]) == \
        [(True, ""), (False, "max_order_value"), (False, "max_order_value")]


def test_max_position_value_boundary_counts_the_position_and_pending_orders():
    risk, _ = manager({"X": "100"}, max_position_value="5000")
    risk.on_fill("c1", "X", "buy", D("30"), D("100"))
    assert risk.check(intent("X", "buy", "10")).approved            # 40 x 100 = 4000, now pending
    assert verdicts(risk, [intent("X", "buy", "9.99"), intent("X", "buy", "10"), intent("X", "buy", "10.01")]) == \
        [(True, ""), (False, "max_position_value"), (False, "max_position_value")]
    # a sell that reduces the position passes however large the position
    assert risk.check(intent("X", "sell", "40")).approved


def test_buying_power_boundary_over_all_symbols():
    risk, _ = manager({"X": "10", "Y": "20.5"}, buying_power="1000")
    risk.on_fill("c1", "Y", "sell", D("20"), D("20.5"))           # |-20| x 20.5 = 410 gross
    assert verdicts(risk, [intent("X", "buy", "58.999"), intent("X", "buy", "59"), intent("X", "buy", "59.001")]) == \
        [(True, ""), (False, "buying_power"), (False, "buying_power")]


def test_daily_loss_boundary_halts_new_risk_and_latches():
    risk, marks = manager({"X": "100"}, max_daily_loss="100")
    risk.on_fill("c1", "X", "buy", D("10"), D("100"))
    marks["X"] = D("90.01")                                        # unrealized -99.90: just under
    assert verdicts(risk, [intent("Y", "buy", "1", "1")]) == [(False, "book")]     # no book for Y
    marks["Y"] = D("1")
    assert verdicts(risk, [intent("Y", "buy", "1")]) == [(True, "")]
    marks["X"] = D("90")                                           # -100: equal
    assert verdicts(risk, [intent("Y", "buy", "1")]) == [(False, "daily_loss_halt")]
    marks["X"] = D("95")                                           # recovered: still halted (latched)
    assert verdicts(risk, [intent("Y", "buy", "1")]) == [(False, "daily_loss_halt")]
    assert risk.check(intent("X", "sell", "10")).approved          # reducing risk is still allowed
    risk.reset_halt()
    assert verdicts(risk, [intent("Y", "buy", "1")]) == [(True, "")]


def test_daily_loss_over_the_limit_from_realized_pnl():
    risk, _ = manager({"X": "100"}, max_daily_loss="50")
    risk.on_fill("c1", "X", "buy", D("10"), D("100"))
    assert risk.on_fill("c2", "X", "sell", D("10"), D("94.9")) == D("-51.0")    # over: -51
    assert verdicts(risk, [intent("X", "buy", "1")]) == [(False, "daily_loss_halt")]


def test_max_qty_boundary():
    risk, _ = manager({"X": "1"}, max_qty="5")
    assert verdicts(risk, [intent("X", "buy", "4.999999999"), intent("X", "buy", "5"), intent("X", "buy", "6")]) == \
        [(True, ""), (False, "max_qty"), (False, "max_qty")]


def test_no_mark_is_a_rejection_never_a_guess():
    risk, _ = manager({})
    decision = risk.check(intent("X", "buy", "1", "1"))
    assert (decision.approved, decision.reason) == (False, "book") and "no book" in decision.detail


def test_pnl_is_exact_through_a_crossing_fill():
    risk, _ = manager({"X": "1"})
    book = risk.book
    book.apply_fill("X", "buy", D("0.1"), D("0.7"))
    book.apply_fill("X", "buy", D("0.2"), D("0.4"))            # avg (0.07 + 0.08) / 0.3 = 0.5
    assert book.positions["X"].avg_price == D("0.5")
    assert book.apply_fill("X", "sell", D("0.5"), D("0.6")) == D("0.03")     # closes 0.3 at +0.1
    assert (book.positions["X"].qty, book.positions["X"].avg_price) == (D("-0.2"), D("0.6"))


@pytest.mark.parametrize("table, words", [
    ({"limits": {"max_order_value": 10.5, "max_position_value": "1", "buying_power": "1", "max_daily_loss": "1"}},
     "floats are not exact"),
    ({"limits": {"max_order_value": "-1", "max_position_value": "1", "buying_power": "1", "max_daily_loss": "1"}},
     "must be > 0"),
    ({"limits": {"max_order_value": "1", "max_position_value": "1", "buying_power": "1"}}, "needs max_daily_loss"),
    ({"limits": {"max_order_value": "1", "max_position_value": "1", "buying_power": "1", "max_daily_loss": "1",
                 "max_ordr": "1"}}, "unknown key"),
    ({}, "no [limits] table"),
])
def test_bad_limits_are_one_line_naming_the_key(table, words):
    with pytest.raises(LimitsError) as info:
        parse_limits(table, "limits.toml")
    assert words in str(info.value) and "limits.toml" in str(info.value)


def test_the_risk_service_follows_the_engines_fills_and_answers(tmp_path):
    from shmpipe_services.risk.service import RiskService

    limits = tmp_path / "limits.toml"
    limits.write_text('[limits]\nmax_order_value = "1000"\nmax_position_value = "500"\nbuying_power = "10000"\n'
                      'max_daily_loss = "100"\n')
    published = []
    service = RiskService(str(limits), lambda s: Mark(D("100"), ""), lambda t, d: published.append((t, d)))
    first = intent("X", "buy", "3")
    service.on_signal("order.intent", first.to_data())               # 300: approved, pending
    service.on_signal("order.intent", intent("X", "buy", "2").to_data())   # 300 + 200 = 500: refused
    assert [(t, d.get("reason")) for t, d in published] == [("risk.approved", None), ("risk.rejected",
                                                                                       "max_position_value")]
    service.on_signal("execution.fill", {"client_order_id": first.client_order_id, "symbol": "X", "side": "buy",
                                         "qty": "3", "price": "99.5"})
    status = service.status()
    assert status["positions"] == {"X": {"qty": "3", "avg_price": "99.5"}} and status["daily_pnl"] == "1.5"
    assert service.manager.pending == {}                              # filled: no longer pending
    second = intent("X", "buy", "1")
    service.on_signal("order.intent", second.to_data())
    service.on_signal("execution.order", {"client_order_id": second.client_order_id, "state": "rejected"})
    assert service.manager.pending == {}                              # refused by the engine: not held
    service.on_signal("execution.fill", {"client_order_id": "x"})      # malformed: counted, not fatal
    assert service.figures()["bad_messages"] == 1


def test_the_risk_service_adopts_the_engines_book_at_start_and_says_when_they_differ(tmp_path):
    from shmpipe_services.risk.service import RiskService

    limits = tmp_path / "limits.toml"
    limits.write_text('[limits]\nmax_order_value = "1000"\nmax_position_value = "500"\nbuying_power = "10000"\n'
                      'max_daily_loss = "100"\n')
    service = RiskService(str(limits), lambda s: Mark(D("100"), ""), lambda t, d: None)
    engine_book = {"positions": {"X": {"qty": "4", "avg_price": "99"}}, "realized_today": "-2.5",
                   "realized_total": "7"}
    assert "adopted" in service.sync_with_engine(engine_book)
    assert service.status()["positions"] == {"X": {"qty": "4", "avg_price": "99"}}
    assert service.status()["daily_pnl"] == "1.5"                      # -2.5 + (100 - 99) x 4
    assert service.sync_with_engine(engine_book) == ""                 # equal: nothing to say
    moved = {**engine_book, "positions": {"X": {"qty": "5", "avg_price": "99"}}}
    assert service.sync_with_engine(moved) == ""                       # once: a fill may be in flight
    assert "differ from the engine" in service.sync_with_engine(moved)  # twice: said and counted
    assert service.figures()["engine_mismatches"] == 1
