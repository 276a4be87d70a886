"""Shared by the export tests: .wslog captures made from the venue fixtures, the CLI as a child
process, and shmpipe's own order book (the compiled BookEngine behind rings) over the same frames,
stepped to any receive time, to compare the exported datasets with."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
from capture_helpers import KNOWN, fixture_lines
from shmpipe_services.capture.coinbase import CoinbaseParser
from shmpipe_services.capture.kraken import KrakenParser
from shmpipe_services.capture.record_batch import RecordBatch
from shmpipe_services.capture.symbol_ids import InMemorySymbolIds
from shmpipe_services.orderbook._book import BookEngine
from test_capture_process import run_cli  # noqa: F401 (re-exported: python -m shmpipe_tools.cli ARGS)

import shmpipe
from shmpipe.records import LEVEL_UPDATE, ORDERBOOK_ENTRY, SIDE_ASK, SIDE_BID
from shmpipe.wslog import encode_entry
from shmpipe.wslog.format import marker_payload

T0 = 1718116200_000_000_000          # the fixtures' capture start (2024-06-11T14:30:00Z)
STEP_NS = 10_000_000                 # one fixture line every 10 ms of receive time
EXCHANGE_IDS = {"coinbase": 1, "kraken": 2}
FIXTURES = {"coinbase": "coinbase_advanced.jsonl", "kraken": "kraken_v2.jsonl"}
PARSERS = {"coinbase": CoinbaseParser, "kraken": KrakenParser}


def recv_ns(line_index: int) -> int:
    return T0 + 1000 + line_index * STEP_NS


def write_wslog(path: Path, venue: str, lines: list[bytes]) -> Path:
    """A capture of ``lines`` as the writer lays it out: a connect marker, then one entry per frame."""
    exchange_id = EXCHANGE_IDS[venue]
    with open(path, "wb") as f:
        f.write(encode_entry(T0, 0, marker_payload(exchange_id, "connect", "ws://127.0.0.1/fixture")))
        for i, line in enumerate(lines):
            f.write(encode_entry(recv_ns(i), exchange_id, line))
    return path


def venue_lines(venue: str, extra_trades: int = 0) -> list[bytes]:
    """The fixture's frames; Coinbase with ``extra_trades`` market_trades frames appended (the
    fixture has no trade channel), their sequence_num continuing the connection's."""
    lines = fixture_lines(FIXTURES[venue])
    if extra_trades:
        assert venue == "coinbase"
        seq = json.loads(lines[-1])["sequence_num"]
        for k in range(extra_trades):
            side, price = ("BUY", "67001.15") if k % 2 else ("SELL", "67000.5")
            trade = {"trade_id": str(9000 + k), "product_id": "BTC-USD" if k % 3 else "ETH-USD",
                     "price": price if k % 3 else "3500.25", "size": 0.00123456 + k / 1e8, "side": side,
                     "time": f"2024-06-11T14:31:00.{k:06d}Z"}
            frame = {"channel": "market_trades", "client_id": "", "timestamp": "2024-06-11T14:31:00.5Z",
                     "sequence_num": seq + 1 + k, "events": [{"type": "update", "trades": [trade]}]}
            lines.append(json.dumps(frame).encode())
    return lines


def known_top5(venue: str) -> dict[str, dict]:
    """symbol -> {"bids": [(Decimal, Decimal)] best first, "asks": ..., "levels": (bids, asks)}."""
    out = {}
    for symbol, book in KNOWN[FIXTURES[venue]]["books"].items():
        out[symbol] = {"bids": [(Decimal(str(p)), Decimal(str(s))) for p, s in book["top5_bids"]],
                       "asks": [(Decimal(str(p)), Decimal(str(s))) for p, s in book["top5_asks"]],
                       "levels": (book["bid_levels"], book["ask_levels"])}
    return out


class ShmpipeBooks:
    """shmpipe's order book over a venue's frames: the parser's records through a levels ring into
    the BookEngine. ``advance_to(ns)`` feeds every frame received before ``ns``; ``best(symbol)``
    is (best bid, best ask) as floats (nan for an empty side)."""

    def __init__(self, venue: str, lines: list[bytes], ring_name: str) -> None:
        self.registry = InMemorySymbolIds()
        self.parser = PARSERS[venue](self.registry)
        self.lines, self.next_line = lines, 0
        self.levels_ring = shmpipe.Ring.create(ring_name + "-l", LEVEL_UPDATE, 1 << 14, broadcast=True)
        self.books_ring = shmpipe.Ring.create(ring_name + "-b", ORDERBOOK_ENTRY, 1 << 12, broadcast=True)
        self.lp = self.levels_ring.producer()
        self.lc = self.levels_ring.consumer()
        self.bp = self.books_ring.producer()
        self.reader = self.books_ring.consumer()
        self.engine = BookEngine(self.lc, self.bp, facts=self._facts)

    def _facts(self, sid: int):
        f = self.registry.facts.get(sid)
        return None if f is None else (f.price_decimals, f.size_decimals, f.depth or 0)

    def advance_to(self, ns: int) -> None:
        batch = RecordBatch()
        while self.next_line < len(self.lines) and recv_ns(self.next_line) < ns:
            self.parser.feed(self.lines[self.next_line], batch, recv_ns(self.next_line))
            self.next_line += 1
            _ticks, levels = batch.take()
            if len(levels):
                self.lp.write_batch(levels)
                while self.engine.pump(4096):
                    self.reader.read(1 << 12, timeout=0)
        self.reader.read(1 << 12, timeout=0)

    def sid(self, symbol: str) -> int:
        return self.parser.instruments[symbol].symbol_id

    def best(self, symbol: str) -> tuple[float, float]:
        sid = self.sid(symbol)
        out = []
        for side in (SIDE_BID, SIDE_ASK):
            top = self.engine.top(sid, side, 1)
            out.append(float(top[0][0]) if len(top) else float("nan"))
        return out[0], out[1]

    def close(self) -> None:
        for handle in (self.lp, self.lc, self.bp, self.reader):
            handle.close()
        for ring in (self.levels_ring, self.books_ring):
            ring.unlink()
            ring.close()


def decimal_of(value: int, decimals: int) -> Decimal:
    return Decimal(int(value)).scaleb(-int(decimals))


def same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b
