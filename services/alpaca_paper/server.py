"""The emulator's HTTP and websocket front (aiohttp): Alpaca Trading API v2's subset

    POST   /v2/orders                         submit (422 "client_order_id must be unique" on a repeat)
    GET    /v2/orders?status=open|closed|all&limit=N
    GET    /v2/orders/{id}
    GET    /v2/orders:by_client_order_id?client_order_id=X
    DELETE /v2/orders/{id}                    204; DELETE /v2/orders cancels every open order (207)
    GET    /v2/positions, /v2/account
    GET    /stream                            websocket: authenticate, listen to trade_updates

authenticated by the APCA-API-KEY-ID / APCA-API-SECRET-KEY headers, rate-limited like Alpaca
(a sliding window, 429 with Retry-After past it), and faults on purpose (``Faults``).
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from .venue import OPEN_STATES, Venue, VenueError

FAULT_KINDS = ("rate", "error", "timeout", "drop", "partial", "reject")


@dataclass
class Faults:
    """Probabilities (0..1) of each fault, drawn from a seeded generator so a run can be repeated:
    rate: 429 with Retry-After before the request is looked at; error: 500, half of them after the
    order was accepted; timeout: the order is accepted, the answer held back ``timeout_delay_s``
    (longer than the client waits); drop: the stream connection is closed before an event (which
    is lost to that client); partial: an order fills in two parts, ``partial_delay_s`` apart;
    reject: 403 "insufficient buying power" instead of accepting."""
    rate: float = 0.0
    error: float = 0.0
    timeout: float = 0.0
    drop: float = 0.0
    partial: float = 0.0
    reject: float = 0.0
    timeout_delay_s: float = 30.0
    partial_delay_s: float = 0.2
    retry_after_s: int = 1
    seed: int | None = None


def parse_faults(text: str) -> dict[str, float]:
    """"rate=0.05,error=0.05" -> {"rate": 0.05, "error": 0.05}; ValueError naming what is wrong."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in FAULT_KINDS:
            raise ValueError(f"fault {part!r} is not KIND=P with KIND one of {', '.join(FAULT_KINDS)}")
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"fault {key}: {value!r} is not a probability") from None
        if not 0 <= p <= 1:
            raise ValueError(f"fault {key}: {p:g} is not between 0 and 1")
        out[key] = p
    return out


class RateWindow:
    """Alpaca's limit: at most ``limit`` requests in any ``window_s`` (sliding, by arrival)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self.arrivals: deque[float] = deque()
        self.max_seen = 0

    def admit(self, now: float) -> float | None:
        """None when the request may go on, else seconds until it could."""
        while self.arrivals and now - self.arrivals[0] >= self.window_s:
            self.arrivals.popleft()
        if len(self.arrivals) >= self.limit:
            return self.window_s - (now - self.arrivals[0])
        self.arrivals.append(now)
        self.max_seen = max(self.max_seen, len(self.arrivals))
        return None


class Emulator:
    def __init__(self, venue: Venue, *, key_id: str, secret: str, faults: Faults,
                 rate_limit: int = 200, rate_window_s: float = 60.0) -> None:
        self.venue, self.key_id, self.secret, self.faults = venue, key_id, secret, faults
        self.rng = random.Random(faults.seed)
        self.rate = RateWindow(rate_limit, rate_window_s)
        self.counters: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.streams: set[web.WebSocketResponse] = set()
        venue.listeners.append(self._on_event)

    def _draw(self, kind: str) -> bool:
        p = getattr(self.faults, kind)
        return p > 0 and self.rng.random() < p

    # -- HTTP --------------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.path == "/stream":
            return await handler(request)
        self.counters["requests"] += 1
        if request.headers.get("APCA-API-KEY-ID") != self.key_id or \
                request.headers.get("APCA-API-SECRET-KEY") != self.secret:
            self.counters["unauthorized"] += 1
            return web.json_response({"code": 40110000, "message": "request is not authorized"}, status=401)
        wait = self.rate.admit(time.monotonic())
        if wait is not None:
            self.counters["rate_limited"] += 1
            return _too_many(math.ceil(wait))
        if self._draw("rate"):
            self.counters["fault_rate"] += 1
            return _too_many(self.faults.retry_after_s)
        try:
            return await handler(request)
        except VenueError as exc:
            self.counters[f"answer_{exc.status}"] += 1
            return web.json_response(exc.body(), status=exc.status)

    async def post_order(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise VenueError(400, 40010000, "request body is not JSON") from None
        if self._draw("reject"):
            self.counters["fault_reject"] += 1
            raise VenueError(403, 40310000, "insufficient buying power")
        error_before = self._draw("error")
        if error_before and self.rng.random() < 0.5:
            self.counters["fault_error_before"] += 1
            return web.json_response({"code": 50010000, "message": "internal server error"}, status=500)
        order = self.venue.submit(body)
        self.counters["orders_accepted"] += 1
        self._schedule_fill(order)
        if error_before:
            self.counters["fault_error_after"] += 1
            return web.json_response({"code": 50010000, "message": "internal server error"}, status=500)
        if self._draw("timeout"):
            self.counters["fault_timeout"] += 1
            await asyncio.sleep(self.faults.timeout_delay_s)
        return web.json_response(order.to_json())

    def _schedule_fill(self, order) -> None:
        if self._draw("partial"):
            self.counters["fault_partial"] += 1
            self.venue.try_fill(order, Decimal("0.5"))
            asyncio.get_running_loop().call_later(self.faults.partial_delay_s, self.venue.try_fill, order)
        else:
            self.venue.try_fill(order)

    async def list_orders(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise VenueError(422, 40010001, "invalid status")
        try:
            limit = min(int(request.query.get("limit", "50")), 500)
        except ValueError:
            raise VenueError(422, 40010001, "invalid limit") from None
        return web.json_response([o.to_json() for o in self.venue.list(status, limit)])

    async def get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self.venue.get(request.match_info["order_id"]).to_json())

    async def get_by_client_id(self, request: web.Request) -> web.Response:
        client_id = request.query.get("client_order_id")
        if not client_id:
            raise VenueError(422, 40010001, "client_order_id is required")
        return web.json_response(self.venue.get_by_client_id(client_id).to_json())

    async def cancel_order(self, request: web.Request) -> web.Response:
        self.venue.cancel(request.match_info["order_id"])
        return web.Response(status=204)

    async def cancel_all(self, _request: web.Request) -> web.Response:
        answers = []
        for order in self.venue.list("open", 10_000):
            try:
                self.venue.cancel(order.id)
                answers.append({"id": order.id, "status": 200, "body": order.to_json()})
            except VenueError as exc:
                answers.append({"id": order.id, "status": exc.status, "body": exc.body()})
        return web.json_response(answers, status=207)

    async def positions(self, _request: web.Request) -> web.Response:
        return web.json_response(self.venue.positions_json())

    async def account(self, _request: web.Request) -> web.Response:
        return web.json_response(self.venue.account_json())

    # -- the stream --------------------------------------------------------------------------------
    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        authed = False
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                req = json.loads(msg.data)
            except ValueError:
                await ws.send_str(json.dumps({"stream": "error", "data": {"error_message": "not JSON"}}))
                continue
            action, data = req.get("action"), req.get("data") or {}
            if action in ("authenticate", "auth"):
                ok = data.get("key_id", req.get("key")) == self.key_id and \
                    data.get("secret_key", req.get("secret")) == self.secret
                authed = ok
                await ws.send_str(json.dumps({"stream": "authorization", "data": {
                    "status": "authorized" if ok else "unauthorized", "action": "authenticate"}}))
                if not ok:
                    break
            elif action == "listen" and authed:
                streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                if streams:
                    self.streams.add(ws)
                else:
                    self.streams.discard(ws)
                await ws.send_str(json.dumps({"stream": "listening", "data": {"streams": streams}}))
        self.streams.discard(ws)
        return ws

    def _on_event(self, message: dict[str, Any]) -> None:
        loop = self.loop
        if loop is None:
            return
        text = json.dumps(message)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._broadcast(text))
        else:
            asyncio.run_coroutine_threadsafe(self._broadcast(text), loop)

    async def _broadcast(self, text: str) -> None:
        for ws in list(self.streams):
            if self._draw("drop"):
                self.counters["fault_drop"] += 1
                self.streams.discard(ws)
                await ws.close()
                continue
            try:
                await ws.send_str(text)
                self.counters["events_sent"] += 1
            except (ConnectionError, RuntimeError):
                self.streams.discard(ws)

    # -- figures -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.venue.lock:
            orders = list(self.venue.orders.values())
        out = {key: 0 for key in ("requests", "rate_limited", "orders_accepted", "fault_rate",
                                  "fault_error_before", "fault_error_after", "fault_timeout",
                                  "fault_drop", "fault_partial", "fault_reject", "events_sent")}
        out.update(self.counters)
        out.update({"orders": len(orders), "open_orders": sum(o.status in OPEN_STATES for o in orders),
                    "duplicates_refused": self.venue.duplicates_refused, "fills": self.venue.fills,
                    "max_requests_in_window": self.rate.max_seen, "rate_limit": self.rate.limit,
                    "rate_window_s": self.rate.window_s, "streams": len(self.streams)})
        return out

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_post("/v2/orders", self.post_order)
        app.router.add_get("/v2/orders", self.list_orders)
        app.router.add_delete("/v2/orders", self.cancel_all)
        app.router.add_get("/v2/orders:by_client_order_id", self.get_by_client_id)
        app.router.add_get("/v2/orders/{order_id}", self.get_order)
        app.router.add_delete("/v2/orders/{order_id}", self.cancel_order)
        app.router.add_get("/v2/positions", self.positions)
        app.router.add_get("/v2/account", self.account)
        app.router.add_get("/stream", self.stream)
        return app


def _too_many(retry_after_s: int) -> web.Response:
    return web.json_response({"code": 42910000, "message": "rate limit exceeded"}, status=429,
                             headers={"Retry-After": str(max(1, retry_after_s))})
