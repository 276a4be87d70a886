"""Runs the emulator: aiohttp on a local port, a control endpoint (status, stats, orders,
positions, stop), prices from a table or a live books ring."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from decimal import Decimal
from typing import Any

from aiohttp import web

from shmpipe import control

from ..trading.credentials import Keys
from .server import Emulator, Faults
from .venue import Venue


class EmulatorError(Exception):
    """A one-line reason the emulator cannot run."""


def price_table(pairs: list[str], default: Decimal | None) -> Any:
    table: dict[str, Decimal] = {}
    for pair in pairs:
        symbol, sep, value = pair.partition("=")
        try:
            table[symbol] = Decimal(value)
        except ArithmeticError:
            raise EmulatorError(f"--price {pair!r}: not SYMBOL=DECIMAL") from None
        if not sep or not symbol or not table[symbol].is_finite() or table[symbol] <= 0:
            raise EmulatorError(f"--price {pair!r}: not SYMBOL=DECIMAL > 0")
    return lambda symbol: table.get(symbol, default)


def book_prices(ring: str | None, exchange: str, stale_s: float, quotes: str | None = None):
    from ..trading.book_marks import open_marks, symbol_id_of
    marks = open_marks(ring, quotes, stale_s)
    ids: dict[str, int | None] = {}

    def price(symbol: str) -> Decimal | None:
        if ids.get(symbol) is None:
            ids[symbol] = symbol_id_of(exchange, symbol)
        return marks.mark(ids[symbol]).mid
    return price, marks


def run(*, host: str, port: int, keys: Keys, faults: Faults, rate_limit: int, rate_window_s: float,
        price_of, name: str, as_json: bool, cash: Decimal, marks: str = "price") -> int:
    venue = Venue(price_of, cash=cash)
    emulator = Emulator(venue, key_id=keys.key_id, secret=keys.secret_key, faults=faults,
                        rate_limit=rate_limit, rate_window_s=rate_window_s)
    stop = threading.Event()
    started = time.time()

    def status(_args: dict) -> dict[str, Any]:
        return {"service": "alpaca-paper", "pid": os.getpid(), "url": url, "uptime_s": round(time.time() - started, 3),
                "keys": "***", "marks": marks,
                "faults": {k: getattr(faults, k) for k in ("rate", "error", "timeout", "drop", "partial", "reject")},
                **emulator.stats()}

    def orders(_args: dict) -> dict[str, Any]:
        with venue.lock:
            return {"orders": [o.to_json() for o in venue.orders.values()]}

    try:
        server = control.ControlServer(name, {
            "status": status, "stats": lambda _a: emulator.stats(), "orders": orders,
            "positions": lambda _a: {"positions": venue.positions_json()},
            "account": lambda _a: venue.account_json(),
            "pause": lambda _a: {"state": "running (the emulator does not pause)"},
            "resume": lambda _a: {"state": "running"},
            "stop": lambda _a: (stop.set(), {"state": "stopping"})[1]})
    except (control.ControlError, ValueError) as exc:
        raise EmulatorError(str(exc)) from None

    async def serve() -> None:
        nonlocal url
        emulator.loop = asyncio.get_running_loop()
        runner = web.AppRunner(emulator.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise EmulatorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}"
        print(f"shmpipe alpaca-paper: listening on {url} (stream {url.replace('http', 'ws', 1)}/stream), "
              f"control {name!r}", file=sys.stderr, flush=True)
        server.start_thread()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for ws in list(emulator.streams):
            await ws.close()
        await runner.cleanup()

    url = ""
    try:
        asyncio.run(serve())
    finally:
        server.close()
    figures = emulator.stats()
    if as_json:
        print(json.dumps(figures, sort_keys=True), flush=True)
    else:
        print(f"shmpipe alpaca-paper: {figures['orders']} orders, {figures['fills']} fills, "
              f"{figures['duplicates_refused']} duplicate client_order_ids refused, "
              f"{figures['rate_limited']} requests over the rate limit", file=sys.stderr)
    return 0
