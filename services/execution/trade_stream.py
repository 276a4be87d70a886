"""The ``trade_updates`` stream on a thread: authenticate, listen, hand each order update to the
engine; on a dropped connection reconnect (with backoff) and ask the engine to catch up from REST,
since updates sent while it was down are lost to it."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from ..trading.credentials import Keys


class TradeStream:
    def __init__(self, url: str, keys: Keys, on_update: Callable[[dict[str, Any]], None],
                 on_connected: Callable[[bool], None], *, stop: threading.Event, backoff_scale: float = 1.0,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.url, self.keys, self.on_update, self.on_connected = url, keys, on_update, on_connected
        self.stop, self.backoff_scale, self.log = stop, backoff_scale, log
        self.connected = threading.Event()
        self.connects = 0
        self.drops = 0
        self.updates = 0
        self._thread = threading.Thread(target=self._run, name="trade-updates", daemon=True)

    def start(self, wait_s: float = 5.0) -> bool:
        self._thread.start()
        return self.connected.wait(wait_s)

    def _session(self) -> None:
        with connect(self.url, open_timeout=5, close_timeout=1, max_size=1 << 22) as ws:
            ws.send(json.dumps({"action": "authenticate",
                                "data": {"key_id": self.keys.key_id, "secret_key": self.keys.secret_key}}))
            reply = json.loads(ws.recv(timeout=5))
            if (reply.get("data") or {}).get("status") != "authorized":
                raise PermissionError("the trade_updates stream refused the keys")
            ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
            reply = json.loads(ws.recv(timeout=5))
            if "trade_updates" not in ((reply.get("data") or {}).get("streams") or []):
                raise ConnectionError("the stream did not confirm listening to trade_updates")
            self.connects += 1
            self.connected.set()
            self.on_connected(self.connects > 1)
            while not self.stop.is_set():
                try:
                    raw = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                message = json.loads(raw)
                if message.get("stream") == "trade_updates" and isinstance(message.get("data"), dict):
                    self.updates += 1
                    self.on_update(message["data"])

    def _run(self) -> None:
        delay = 0.0
        while not self.stop.is_set():
            try:
                self._session()
                delay = 0.0
            except PermissionError as exc:
                self.log(str(exc))
                delay = 5.0
            except (ConnectionClosed, WebSocketException, OSError, ValueError, TimeoutError) as exc:
                if self.connected.is_set():
                    self.drops += 1
                    self.log(f"trade_updates stream dropped ({type(exc).__name__}); reconnecting")
                delay = min(max(delay * 2, 1.0), 4.0)
            self.connected.clear()
            if self.stop.wait(delay * self.backoff_scale):
                return

    def join(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


def stream_url(base_url: str) -> str:
    """wss://paper-api.alpaca.markets/stream for https://paper-api.alpaca.markets, likewise http."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://"):].rstrip("/") + "/stream"
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://"):].rstrip("/") + "/stream"
    return base_url
