"""``GET {base_url}/v2/assets`` with timeouts, retries with backoff and jitter, and limits.

Retried: 429 (waiting at least its ``Retry-After``), 5xx, timeouts, connection failures and
broken responses (``http.client.HTTPException``: a body cut short, ``IncompleteRead``, a garbled
status line). Not retried: other 4xx (a bad key or a bad filter will not fix itself), reported
with the body; a response over the size cap; the deadline.

Limits, so no server can hold a cycle or the memory hostage:
* ``timeout``: each connect and each read of the socket;
* ``deadline``: the whole fetch, every attempt, read and wait included (a server that sends a
  byte every few seconds passes every read timeout, not the deadline);
* ``max_bytes``: the body, checked against Content-Length before reading and while reading
  (a listing is ~1.2 MB today; the default cap is 64 MiB).

The API keys never leave the base URL's origin: urllib's redirect handler copies every header
to wherever a redirect points, so ours drops the credential headers when the scheme, host or
port changes. Only https is spoken, unless ``insecure_http`` (``--insecure-http``) allows http,
for a local test server or proxy; a redirect is held to the same rule.

Uses urllib from the standard library: one GET per cycle gains nothing from a connection pool,
retries are ours either way, and the offline path (``--from-file``) then needs no HTTP package.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import random
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
# Headers that must not follow a redirect to another origin (lower case).
CREDENTIAL_HEADERS = frozenset({KEY_ID_ENV.lower(), SECRET_KEY_ENV.lower(), "authorization"})
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHUNK = 256 * 1024


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
    deadline: float = 120.0  # seconds for the whole fetch: every attempt, read and wait

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Equal jitter: half the exponential step for sure, the other half at random, so
        many clients that failed together do not come back together."""
        step = min(self.max_delay, self.base_delay * (2**retry))
        return step / 2 + rng() * step / 2


def assets_url(base_url: str, *, status: str | None = None, asset_class: str | None = None) -> str:
    query = {k: v for k, v in (("status", status), ("asset_class", asset_class)) if v}
    url = base_url.rstrip("/") + "/v2/assets"
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def check_base_url(base_url: str, *, insecure_http: bool = False) -> None:
    """FetchError unless ``base_url`` is https (or http with ``insecure_http``) with a host."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme == "http" and not insecure_http:
        raise FetchError(
            f"refusing {base_url}: http:// sends the API keys in clear text "
            "(use https://, or --insecure-http for a local test server)"
        )
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FetchError(f"not an https:// base URL: {base_url!r}")


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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)


class CredentialSafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib's handler, but drops the credential headers when the new
    URL has another origin, and holds the new URL to the https rule."""

    def __init__(self, *, insecure_http: bool = False):
        self.insecure_http = insecure_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's API)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        try:
            check_base_url(newurl, insecure_http=self.insecure_http)
        except FetchError as exc:
            fp.close()
            raise FetchError(f"refusing the redirect from {req.full_url}: {exc}", status=code) from None
        if _origin(newurl) != _origin(req.full_url):
            for name in [n for n in new.headers if n.lower() in CREDENTIAL_HEADERS]:
                del new.headers[name]
        return new


class _Deadline(Exception):
    pass


def fetch_assets_body(
    base_url: str = DEFAULT_BASE_URL,
    *,
    status: str | None = None,
    asset_class: str | None = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    max_bytes: int = DEFAULT_MAX_BYTES,
    insecure_http: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The raw response body; raises FetchError once retries are spent, past the deadline, or on
    a non-retryable error."""
    check_base_url(base_url, insecure_http=insecure_http)
    url = assets_url(base_url, status=status, asset_class=asset_class)
    request_headers = {
        "Accept": "application/json",
        "User-Agent": "shmpipe-assets/0.1",
        **(credentials_from_env() if headers is None else headers),
    }
    opener = urllib.request.build_opener(CredentialSafeRedirects(insecure_http=insecure_http))
    deadline = clock() + policy.deadline
    last_problem = "no attempt made"
    last_status: int | None = None

    def past_deadline() -> FetchError:
        return FetchError(
            f"no complete answer from {url} within the {policy.deadline:g} s deadline "
            f"(--deadline); last problem: {last_problem}",
            status=last_status,
        )

    for attempt in range(policy.attempts):
        delay: float | None = None
        remaining = deadline - clock()
        if remaining <= 0:
            raise past_deadline()
        try:
            request = urllib.request.Request(url, headers=request_headers, method="GET")
            with opener.open(request, timeout=min(policy.timeout, remaining)) as response:
                return _read_body(response, url, max_bytes, deadline, clock)
        except _Deadline:
            last_problem = "the body was still arriving"
            raise past_deadline() from None
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
                    ) from None
            elif exc.code < 500:
                hint = " (check APCA_API_KEY_ID / APCA_API_SECRET_KEY)" if exc.code in (401, 403) else ""
                raise FetchError(last_problem + hint, status=exc.code) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # URLError wraps connect failures; HTTPException is a broken response (IncompleteRead,
            # BadStatusLine); OSError a reset or timed-out read.
            reason = getattr(exc, "reason", None) or exc
            last_problem = f"{type(reason).__name__} fetching {url}: {reason}"
            last_status = None
        if attempt + 1 < policy.attempts:
            wait = policy.backoff(attempt, rng)
            wait = max(delay, wait) if delay is not None else wait
            if clock() + wait >= deadline:
                raise past_deadline()
            sleep(wait)
    raise FetchError(f"giving up after {policy.attempts} attempts: {last_problem}", status=last_status)


def _read_body(
    response: http.client.HTTPResponse,
    url: str,
    max_bytes: int,
    deadline: float,
    clock: Callable[[], float],
) -> bytes:
    """The body, read a chunk at a time so the deadline and the size cap are checked as it
    arrives. ``read1`` returns what one socket read gives, so a trickle cannot hold a call."""
    declared = response.length  # Content-Length, or None (chunked, or until the server closes)
    if declared is not None and declared > max_bytes:
        raise _too_large(url, max_bytes, f"says {declared} bytes")
    chunks: list[bytes] = []
    received = 0
    while chunk := response.read1(_CHUNK):
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(url, max_bytes, f"sent more than {max_bytes} bytes")
        chunks.append(chunk)
        if clock() > deadline:
            raise _Deadline
    if declared is not None and received < declared:
        # read1 reports a connection closed early as the end of the body; read() would raise this.
        raise http.client.IncompleteRead(b"".join(chunks), declared - received)
    return b"".join(chunks)


def _too_large(url: str, max_bytes: int, what: str) -> FetchError:
    return FetchError(
        f"the response from {url} {what}, over the {max_bytes}-byte limit (--max-response-bytes)"
    )


def _short_body(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read(limit + 1).decode("utf-8", "replace").strip()
    except Exception:  # the body is only a hint for the message; never let it mask the error
        return ""
    return text[:limit] + ("..." if len(text) > limit else "")
