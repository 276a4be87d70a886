"""``GET {base_url}/v2/assets`` with timeouts, and retries with backoff and jitter.

Retried: 429 (waiting at least its ``Retry-After``), 5xx, timeouts and connection failures.
Not retried: other 4xx (a bad key or a bad filter will not fix itself), reported with the body.

Uses urllib from the standard library: one GET per cycle gains nothing from a connection pool,
retries are ours either way, and the offline path (``--from-file``) then needs no HTTP package.
The timeout applies to connecting and to each read of the socket.
"""

from __future__ import annotations

import email.utils
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_BASE_URL = "https://paper-api.alpaca.markets"
KEY_ID_ENV, SECRET_KEY_ENV = "APCA-API-KEY-ID", "APCA-API-SECRET-KEY"
# Alpaca's SDKs read the credentials from these variables; the headers carry the same names.
KEY_ID_VARS = ("APCA_API_KEY_ID",)
SECRET_KEY_VARS = ("APCA_API_SECRET_KEY",)


class FetchError(RuntimeError):
    """The asset list could not be fetched; ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    base_delay: float = 0.5  # seconds; doubles per retry
    max_delay: float = 30.0  # cap for backoff and for Retry-After
    timeout: float = 10.0  # seconds per connect / read

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Equal jitter: half the exponential step for sure, the other half at random, so
        many clients that failed together do not come back together."""
        step = min(self.max_delay, self.base_delay * (2**retry))
        return step / 2 + rng() * step / 2


def assets_url(base_url: str, *, status: str | None = None, asset_class: str | None = None) -> str:
    query = {k: v for k, v in (("status", status), ("asset_class", asset_class)) if v}
    url = base_url.rstrip("/") + "/v2/assets"
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def credentials_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    headers = {}
    for header, names in ((KEY_ID_ENV, KEY_ID_VARS), (SECRET_KEY_ENV, SECRET_KEY_VARS)):
        value = next((env[n] for n in names if env.get(n)), None)
        if value:
            headers[header] = value
    return headers


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def fetch_assets_body(
    base_url: str = DEFAULT_BASE_URL,
    *,
    status: str | None = None,
    asset_class: str | None = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> bytes:
    """The raw response body; raises FetchError once retries are spent or on a non-retryable error."""
    url = assets_url(base_url, status=status, asset_class=asset_class)
    request_headers = {
        "Accept": "application/json",
        "User-Agent": "shmpipe-assets/0.1",
        **(credentials_from_env() if headers is None else headers),
    }
    last_problem = "no attempt made"
    last_status: int | None = None
    for attempt in range(policy.attempts):
        delay: float | None = None
        try:
            request = urllib.request.Request(url, headers=request_headers, method="GET")
            with urllib.request.urlopen(request, timeout=policy.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            last_status = exc.code
            body = _short_body(exc)
            last_problem = f"HTTP {exc.code} {exc.reason} from {url}" + (f": {body}" if body else "")
            if exc.code == 429:
                delay = parse_retry_after(exc.headers.get("Retry-After"))
                if delay is not None and delay > policy.max_delay:
                    # Waiting less would disobey the server; waiting longer stalls the cycle.
                    raise FetchError(
                        f"{last_problem}: Retry-After {delay:.0f} s exceeds the "
                        f"{policy.max_delay:.0f} s limit, try the next cycle",
                        status=429,
                    )
            elif exc.code < 500:
                hint = " (check APCA_API_KEY_ID / APCA_API_SECRET_KEY)" if exc.code in (401, 403) else ""
                raise FetchError(last_problem + hint, status=exc.code) from None
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            last_problem = (
                f"{type(reason).__name__ if not isinstance(reason, str) else 'error'} "
                f"fetching {url}: {reason}"
            )
            last_status = None
        if attempt + 1 < policy.attempts:
            backoff = policy.backoff(attempt, rng)
            sleep(max(delay, backoff) if delay is not None else backoff)
    raise FetchError(f"giving up after {policy.attempts} attempts: {last_problem}", status=last_status)


def _short_body(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read(limit + 1).decode("utf-8", "replace").strip()
    except Exception:  # the body is only a hint for the message; never let it mask the error
        return ""
    return text[:limit] + ("..." if len(text) > limit else "")
