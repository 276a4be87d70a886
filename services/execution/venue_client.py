"""Alpaca Trading API v2 over httpx, with the engine's manners: every request takes a rate-limit
token first; 429 waits Retry-After, 5xx / a timeout / a dropped connection back off 1, 2, 4 s
(scaled, with jitter) up to ``max_retries`` times, the request re-sent unchanged (an order keeps
its client_order_id, so a retry can never make a second order). Keys never appear in what this
module logs or raises."""
from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..trading.credentials import Keys
from .rate_limit import TokenBucket

RETRYABLE_STATUS = (429, 500, 502, 503, 504)


@dataclass
class Answer:
    status: int                 # HTTP status; 0: no answer (every attempt timed out or failed)
    body: Any
    error: str = ""             # why there is no usable answer, one line
    attempts: int = 1
    # An earlier attempt may have been carried out without our hearing so (no answer, a 5xx): a
    # refusal of a later attempt then does not prove the venue holds nothing.
    ambiguous: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return self.body["message"]
        return self.error or f"HTTP {self.status}"


class StopRequested(Exception):
    """The engine is stopping: the request was not (re)sent."""


class VenueClient:
    def __init__(self, base_url: str, keys: Keys, bucket: TokenBucket, *, timeout_s: float = 10.0,
                 max_retries: int = 3, backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0), backoff_scale: float = 1.0,
                 stop: threading.Event | None = None, on_retry: Callable[[str], None] | None = None,
                 seed: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys, self.bucket = keys, bucket
        self.max_retries, self.backoff_s, self.backoff_scale = max_retries, backoff_s, backoff_scale
        self.stop = stop or threading.Event()
        self.on_retry = on_retry or (lambda _why: None)
        self._rng = random.Random(seed)
        self._http = httpx.Client(base_url=self.base_url, headers=keys.headers(), timeout=timeout_s)
        self.requests = 0

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = self.backoff_s[min(attempt, len(self.backoff_s) - 1)]
        if retry_after is not None:
            base = max(base, retry_after)
        return base * self.backoff_scale * self._rng.uniform(0.8, 1.2)

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Answer:
        last = Answer(0, None, "no attempt")
        ambiguous = False
        for attempt in range(self.max_retries + 1):
            if not self.bucket.acquire(self.stop):
                raise StopRequested(f"{method} {path}")
            self.requests += 1
            retry_after = None
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.TimeoutException:
                last = Answer(0, None, f"{method} {path}: no answer within the timeout", attempt + 1)
            except httpx.TransportError as exc:
                last = Answer(0, None, self.keys.redact(f"{method} {path}: {type(exc).__name__}: {exc}"), attempt + 1)
            else:
                try:
                    body = response.json() if response.content else None
                except ValueError:
                    body = None
                last = Answer(response.status_code, body, "", attempt + 1, ambiguous)
                if response.status_code not in RETRYABLE_STATUS:
                    return last
                if response.status_code == 429:
                    try:
                        retry_after = float(response.headers.get("Retry-After", ""))
                    except ValueError:
                        retry_after = None
            ambiguous = ambiguous or last.status != 429
            last.ambiguous = ambiguous
            if attempt == self.max_retries:
                break
            self.on_retry(f"HTTP {last.status}" if last.status else "no answer")
            if self.stop.wait(self._delay(attempt, retry_after)):
                raise StopRequested(f"{method} {path}")
        if not last.error:
            last.error = f"{method} {path}: HTTP {last.status} after {last.attempts} attempts"
        else:
            last.error += f" (after {last.attempts} attempts)"
        return last

    # -- the API -------------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> Answer:
        return self.request("POST", "/v2/orders", json=body)

    def by_client_id(self, client_order_id: str) -> Answer:
        return self.request("GET", "/v2/orders:by_client_order_id", params={"client_order_id": client_order_id})

    def order(self, order_id: str) -> Answer:
        return self.request("GET", f"/v2/orders/{order_id}")

    def open_orders(self) -> Answer:
        return self.request("GET", "/v2/orders", params={"status": "open", "limit": 500})

    def cancel(self, order_id: str) -> Answer:
        return self.request("DELETE", f"/v2/orders/{order_id}")

    def positions(self) -> Answer:
        return self.request("GET", "/v2/positions")

    def account(self) -> Answer:
        return self.request("GET", "/v2/account")

    def close(self) -> None:
        self._http.close()


def is_duplicate(answer: Answer) -> bool:
    """Alpaca's answer to a client_order_id it already holds: 422 "client_order_id must be unique"."""
    return answer.status == 422 and "client_order_id" in answer.message and "unique" in answer.message
