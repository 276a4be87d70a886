"""A capture's commands on the control plane (``shmpipe.control``), under the service name
``--name`` (default ``TICKS.FEED``, e.g. ``ticks.kraken``, the same name as its stats segment).

    status      {"role": "capture", "name", "pid", "feed", "exchange", "ticks", "levels",
                 "state": "running"|"paused", "connected", "symbols", "symbol_ids"}
    stats       the counters, as ``--json`` prints them at the end
    pause       stop writing to the rings; nothing is dropped (see ``Capture`` and ``SyntheticCapture``
                for how each waits)
    resume      go on from where it paused
    stop        end like SIGTERM: counters printed, exit 0
    resnapshot  {"symbol_id": int} or {"exchange": str, "symbol": str}: a fresh snapshot of that one
                symbol's book (Kraken: the ``book`` channel resubscribed; Coinbase: ``level2``; the
                synthetic feed writes one from its own book); Alpaca has no books

    fault       {"kind": "gap"|"corrupt"|"drop"}: the synthetic market (--market) injects that fault;
                answers which symbols it hit and when (``injected_ns``, CLOCK_REALTIME)
The handlers run in the capture's own thread: the event loop (or the synthetic loop) polls the
server between frames, so they touch the capture's state with no lock. A refused request raises
CommandRefused, which the server turns into an error reply naming what was wrong; the capture runs on.
"""
from __future__ import annotations

import os
from typing import Any

from shmpipe.control import CommandRefused

ROLE = "capture"


class CaptureCommands:
    def __init__(self, capture, *, name: str, feed: str, ticks: str, levels: str) -> None:
        self.capture, self.name, self.feed, self.ticks, self.levels = capture, name, feed, ticks, levels

    def handlers(self) -> dict[str, Any]:
        return {"status": self.status, "stats": self.stats, "pause": self.pause, "resume": self.resume,
                "stop": self.stop, "resnapshot": self.resnapshot, "fault": self.fault}

    def _state(self) -> str:
        return "paused" if self.capture.paused else "running"

    def status(self, _args: dict) -> dict:
        c = self.capture
        return {"role": ROLE, "name": self.name, "pid": os.getpid(), "feed": self.feed, "exchange": c.exchange,
                "ticks": self.ticks, "levels": self.levels, "state": self._state(), "connected": bool(c.connected),
                "symbols": c.symbols, "symbol_ids": c.symbol_ids()}

    def stats(self, _args: dict) -> dict:
        return self.capture.live_counters()

    def pause(self, _args: dict) -> dict:
        self.capture.pause()
        return {"state": self._state()}

    def resume(self, _args: dict) -> dict:
        self.capture.resume()
        return {"state": self._state()}

    def stop(self, _args: dict) -> dict:
        self.capture.stop()
        return {"stopping": True}

    def resnapshot(self, args: dict) -> dict:
        c = self.capture
        symbol = self._symbol_of(args)
        if not c.has_books:
            raise CommandRefused(f"{c.exchange} has no order books: there is no snapshot of {symbol} to take")
        result = {"exchange": c.exchange, "symbol": symbol}
        result.update(c.resnapshot(symbol))
        return result

    def fault(self, args: dict) -> dict:
        """{"kind": "gap"|"corrupt"|"drop", "symbol": optional}: the synthetic market (--market) only."""
        inject = getattr(self.capture, "inject_fault", None)
        if inject is None:
            raise CommandRefused(f"{self.capture.exchange} is a real venue: faults are injected into the "
                                 "synthetic market only (capture --feed synthetic --market)")
        try:
            return inject(args.get("kind"), args.get("symbol"))
        except ValueError as exc:
            raise CommandRefused(str(exc)) from None

    def _symbol_of(self, args: dict) -> str:
        c = self.capture
        known = f"{c.exchange}: {', '.join(c.symbols)}"
        if "symbol_id" in args:
            sid = args["symbol_id"]
            if not isinstance(sid, int) or isinstance(sid, bool) or sid < 0:
                raise CommandRefused(f"symbol_id must be a non-negative integer, not {sid!r}")
            symbol = c.symbol_for_id(sid)
            if symbol is None:
                raise CommandRefused(f"symbol_id {sid} is not one of this capture's symbols ({known})")
            return symbol
        if "symbol" in args:
            symbol, exchange = args["symbol"], args.get("exchange", c.exchange)
            if not isinstance(symbol, str) or not isinstance(exchange, str):
                raise CommandRefused(f'"exchange" and "symbol" must be strings, not {exchange!r} and {symbol!r}')
            if exchange != c.exchange:
                raise CommandRefused(f"this capture is {c.exchange}, not {exchange!r} (symbol {symbol!r})")
            if symbol not in c.symbols:
                raise CommandRefused(f"symbol {symbol!r} is not one of this capture's symbols ({known})")
            return symbol
        raise CommandRefused('resnapshot takes {"symbol_id": int} or {"exchange": str, "symbol": str}, '
                             f"not {args!r}")


def serve(capture, *, name: str, feed: str, ticks: str, levels: str):
    """Bind the control endpoint for ``capture`` (polled by its own loop) and attach it. Raises
    shmpipe.control's ControlError subclasses (name taken, no pyzmq, an unusable directory) and
    InvalidArgumentError (a name the control plane does not take)."""
    from shmpipe import control
    commands = CaptureCommands(capture, name=name, feed=feed, ticks=ticks, levels=levels)
    server = control.ControlServer(name, commands.handlers())
    capture.control = server
    return server

