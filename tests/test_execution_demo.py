"""``shmpipe demo --trade``: the whole loop on the synthetic market, marked to the live books ring
(risk's exposure, the engine's slippage check, the venue's fills), summed up with zero duplicate
orders and the engine's positions equal to the venue's; nothing left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_demo_trade_json_names_orders_fills_rejects_duplicates_and_pnl():
    before = set(Path("/dev/shm").iterdir())
    done = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "demo", "--trade", "--seconds", "10", "--json"],
                          capture_output=True, text=True, timeout=170,
                          env={k: v for k, v in os.environ.items() if not k.startswith("APCA_")})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("orders_sent", "fills", "rejects", "duplicate_orders", "pnl"):
        assert key in summary
    assert summary["duplicate_orders"] == 0 and summary["positions_match"] is True
    assert summary["risk_engine_mismatches"] == 0
    assert summary["orders_sent"] > 0 and summary["fills"] > 0
    assert isinstance(summary["rejects"], dict)
    # Marked to the books ring, as each service itself says (ctl status), not to the quote Ticks.
    assert summary["marks"] == {"risk": "books", "execute": "books", "venue": "books"}, summary["marks"]
    # On the realistic market the books are valid: intents are approved, and a book refused
    # (stale, invalid, crossed) is the exception, never the rule.
    assert summary["approved"] > 0
    assert summary["rejects"].get("risk:book", 0) * 2 < summary["intents"], summary
    assert summary["pnl"] is not None, summary.get("pnl_unknown_because")
    left = [p.name for p in set(Path("/dev/shm").iterdir()) - before if "trade-" in p.name]
    assert not left, f"the demo left {left}"
