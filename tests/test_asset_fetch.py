"""The HTTP fetcher against a local server: headers, filters, retries on 429 (Retry-After), 5xx
and broken responses, no retry on other 4xx, timeouts, the deadline, the size cap, https only,
and API keys that do not follow a redirect to another origin. Sleeps are injected, so the tests
see every backoff and never actually wait for one. The local server speaks http, so the calls
pass insecure_http=True, except where the https rule is what is tested."""

from __future__ import annotations

import functools
import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shmpipe_services.asset_sync.http_fetch import (
    DEFAULT_MAX_BYTES,
    CredentialSafeRedirects,
    FetchError,
    RetryPolicy,
    credentials_from_env,
    parse_retry_after,
)
from shmpipe_services.asset_sync.http_fetch import fetch_assets_body as fetch_over_https

fetch_assets_body = functools.partial(fetch_over_https, insecure_http=True)
KEYS = {"APCA-API-KEY-ID": "kid", "APCA-API-SECRET-KEY": "sec"}
V1 = Path(__file__).parent / "fixtures" / "assets" / "alpaca_assets_v1.json"

BODY = b'[{"id":"x"}]'


class Script:
    """What the server answers, request by request: (status, headers, body) tuples; the last
    repeats. Besides an HTTP status, ``status`` may be "hang" (answer nothing), "incomplete"
    (Content-Length promises more than the body, then the connection closes), "drip" (the body
    a byte every 50 ms), "nolength" (no Content-Length: the body ends when the connection
    closes) or "garbled" (a status line that is not HTTP)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list = []
        self.release = threading.Event()  # for the hanging answer: set at teardown


@contextmanager
def serve(script: Script) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            script.requests.append((self.path, self.headers))  # case-insensitive, as HTTP is
            status, headers, body = script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]
            if status == "hang":
                script.release.wait(10)
                return
            if status == "garbled":
                self.wfile.write(b"SMTP ready\r\n\r\n")
                return
            self.send_response(200 if isinstance(status, str) else status)
            for k, v in headers.items():
                self.send_header(k, v)
            if status != "nolength":
                self.send_header("Content-Length", str(len(body) + (100 if status == "incomplete" else 0)))
            self.end_headers()
            if status == "drip":
                for i in range(len(body)):
                    if script.release.wait(0.05):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        script.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=60.0, timeout=2.0)


def test_headers_filters_and_body():
    script = Script((200, {"Content-Type": "application/json"}, BODY))
    with serve(script) as url:
        body = fetch_assets_body(
            url,
            status="active",
            asset_class="crypto",
            headers={"APCA-API-KEY-ID": "kid", "APCA-API-SECRET-KEY": "sec"},
            policy=FAST,
        )
    assert body == BODY
    path, headers = script.requests[0]
    assert path == "/v2/assets?status=active&asset_class=crypto"
    assert headers.get("APCA-API-KEY-ID") == "kid" and headers.get("APCA-API-SECRET-KEY") == "sec"


def test_credentials_come_from_the_environment():
    env = {"APCA_API_KEY_ID": "kid", "APCA_API_SECRET_KEY": "sec"}
    assert credentials_from_env(env) == {"APCA-API-KEY-ID": "kid", "APCA-API-SECRET-KEY": "sec"}
    assert credentials_from_env({}) == {}


def test_429_honours_retry_after_then_succeeds():
    script = Script((429, {"Retry-After": "7"}, b"slow down"), (200, {}, BODY))
    slept: list[float] = []
    with serve(script) as url:
        assert fetch_assets_body(url, headers={}, policy=FAST, sleep=slept.append, rng=lambda: 0.0) == BODY
    assert slept == [7.0]  # the server's wait, not our (much shorter) backoff
    assert len(script.requests) == 2


def test_5xx_backs_off_exponentially_with_jitter():
    script = Script((503, {}, b""), (502, {}, b""), (500, {}, b""), (200, {}, BODY))
    slept: list[float] = []
    with serve(script) as url:
        assert fetch_assets_body(url, headers={}, policy=FAST, sleep=slept.append, rng=lambda: 1.0) == BODY
    assert slept == pytest.approx([0.01, 0.02, 0.04])  # rng=1: the full step each time
    jittered = RetryPolicy(base_delay=1.0).backoff(3, rng=lambda: 0.0)
    assert jittered == 4.0  # rng=0: half of the 8 s step, never less


def test_gives_up_after_attempts_with_the_last_error():
    script = Script((500, {}, b"boom"))
    slept: list[float] = []
    with serve(script) as url, pytest.raises(FetchError, match=r"after 4 attempts: HTTP 500.*boom") as info:
        fetch_assets_body(url, headers={}, policy=FAST, sleep=slept.append)
    assert info.value.status == 500 and len(script.requests) == 4 and len(slept) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_other_4xx_fails_at_once(status):
    script = Script((status, {}, b'{"message":"nope"}'))
    with serve(script) as url, pytest.raises(FetchError, match=rf"HTTP {status}.*nope") as info:
        fetch_assets_body(url, headers={}, policy=FAST, sleep=lambda s: pytest.fail("must not retry"))
    assert info.value.status == status and len(script.requests) == 1


def test_retry_after_beyond_the_limit_is_an_error_not_a_short_wait():
    script = Script((429, {"Retry-After": "3600"}, b""))
    with serve(script) as url, pytest.raises(FetchError, match="Retry-After 3600 s exceeds"):
        fetch_assets_body(url, headers={}, policy=FAST, sleep=lambda s: pytest.fail("must not wait"))


def test_timeout_is_retried_then_reported():
    script = Script(("hang", {}, b""))
    policy = RetryPolicy(attempts=2, base_delay=0.01, timeout=0.3)
    with serve(script) as url, pytest.raises(FetchError, match="after 2 attempts.*timed out"):
        fetch_assets_body(url, headers={}, policy=policy, sleep=lambda s: None)
    assert len(script.requests) == 2


def test_connection_refused_is_reported():
    with serve(Script((200, {}, BODY))) as url:
        pass  # the server is gone now; its port refuses connections
    with pytest.raises(FetchError, match="after 2 attempts.*fetching"):
        fetch_assets_body(url, headers={}, policy=RetryPolicy(attempts=2, timeout=1.0), sleep=lambda s: None)


def test_parse_retry_after():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 25 Nov 2026 10:00:30 GMT", now=1795600800.0) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# ------------------------------------------------------------------------------------ broken responses


@pytest.mark.parametrize("broken", ["incomplete", "garbled"])
def test_a_broken_response_is_retried(broken):
    """IncompleteRead (a body cut short) and other http.client.HTTPExceptions are retried like a 5xx."""
    script = Script((broken, {}, b'[{"id":'), (200, {}, BODY))
    slept: list[float] = []
    with serve(script) as url:
        assert fetch_assets_body(url, headers={}, policy=FAST, sleep=slept.append) == BODY
    assert len(script.requests) == 2 and len(slept) == 1


def test_a_body_cut_short_every_time_is_reported():
    script = Script(("incomplete", {}, b"[1, 2"))
    with serve(script) as url, pytest.raises(FetchError, match="after 4 attempts: IncompleteRead"):
        fetch_assets_body(url, headers={}, policy=FAST, sleep=lambda s: None)


# ------------------------------------------------------------------------------------ limits


def test_declared_size_over_the_cap_fails_at_once():
    script = Script((200, {}, b"x" * 2000))
    with serve(script) as url, pytest.raises(FetchError, match="says 2000 bytes, over the 1000-byte limit"):
        fetch_assets_body(url, headers={}, policy=FAST, max_bytes=1000, sleep=lambda s: pytest.fail("retry"))
    assert len(script.requests) == 1


def test_undeclared_size_over_the_cap_fails_while_reading():
    script = Script(("nolength", {}, b"x" * 600_000))
    with serve(script) as url, pytest.raises(FetchError, match="sent more than 500000 bytes"):
        fetch_assets_body(
            url, headers={}, policy=FAST, max_bytes=500_000, sleep=lambda s: pytest.fail("retry")
        )


def test_the_default_cap_is_far_above_a_real_listing():
    listing = V1.read_bytes()
    assert DEFAULT_MAX_BYTES >= 50 * len(listing)
    for mode in (200, "nolength"):
        with serve(Script((mode, {}, listing))) as url:
            assert fetch_assets_body(url, headers={}, policy=FAST) == listing


def test_the_deadline_ends_a_trickling_response():
    """A byte every 50 ms passes every 2 s read timeout; the 0.5 s deadline ends it."""
    script = Script(("drip", {}, b"x" * 1000))
    policy = RetryPolicy(attempts=3, timeout=2.0, deadline=0.5)
    started = time.monotonic()
    with serve(script) as url, pytest.raises(FetchError, match=r"within the 0.5 s deadline \(--deadline\)"):
        fetch_assets_body(url, headers={}, policy=policy, sleep=lambda s: pytest.fail("retry"))
    assert time.monotonic() - started < 2.0
    assert len(script.requests) == 1


def test_the_deadline_bounds_the_retries():
    script = Script((503, {}, b"busy"))
    policy = RetryPolicy(attempts=100, base_delay=0.05, max_delay=0.1, timeout=2.0, deadline=0.6)
    started = time.monotonic()
    with serve(script) as url, pytest.raises(FetchError, match="0.6 s deadline.*HTTP 503"):
        fetch_assets_body(url, headers={}, policy=policy)  # real sleeps
    assert time.monotonic() - started < 2.0
    assert 2 <= len(script.requests) < 100


# ------------------------------------------------------------------------------------ https and keys


@pytest.mark.parametrize("base", ["http://127.0.0.1:9", "HTTP://example.com"])
def test_http_is_refused_without_insecure_http(base):
    with pytest.raises(FetchError, match="http:// sends the API keys in clear text"):
        fetch_over_https(base, headers=KEYS, policy=FAST)


@pytest.mark.parametrize("base", ["file:///etc", "ftp://example.com", "example.com", "https://"])
def test_other_schemes_are_refused_even_with_insecure_http(base):
    with pytest.raises(FetchError, match="not an https:// base URL"):
        fetch_assets_body(base, headers=KEYS, policy=FAST)


def test_a_redirect_to_another_origin_does_not_carry_the_keys():
    elsewhere = Script((200, {}, BODY))
    with serve(elsewhere) as other_url:
        here = Script((302, {"Location": other_url + "/v2/assets"}, b""))
        with serve(here) as url:
            assert fetch_assets_body(url, headers=KEYS, policy=FAST) == BODY
    (_, first), (_, followed) = here.requests[0], elsewhere.requests[0]
    assert first.get("APCA-API-KEY-ID") == "kid" and first.get("APCA-API-SECRET-KEY") == "sec"
    assert followed.get("APCA-API-KEY-ID") is None and followed.get("APCA-API-SECRET-KEY") is None
    assert followed.get("User-Agent", "").startswith("shmpipe-assets")  # the rest does follow


def test_a_redirect_within_the_origin_keeps_the_keys():
    script = Script((301, {"Location": "/v2/assets/"}, b""), (200, {}, BODY))
    with serve(script) as url:
        assert fetch_assets_body(url, headers=KEYS, policy=FAST) == BODY
    assert [path for path, _ in script.requests] == ["/v2/assets", "/v2/assets/"]
    assert all(h.get("APCA-API-KEY-ID") == "kid" for _, h in script.requests)


def test_a_redirect_from_https_to_http_is_refused():
    """No https server here: the handler is given the redirect urllib would hand it."""
    request = urllib.request.Request("https://api.example.com/v2/assets", headers=KEYS)
    handler = CredentialSafeRedirects()

    class Response:
        def close(self):
            pass

    with pytest.raises(FetchError, match="refusing the redirect from https://api.example.com/v2/assets"):
        handler.redirect_request(request, Response(), 302, "Found", {}, "http://api.example.com/v2/assets")
    allowed = CredentialSafeRedirects(insecure_http=True).redirect_request(
        request, Response(), 302, "Found", {}, "http://api.example.com/v2/assets"
    )
    assert not any(k.lower().startswith("apca") for k in allowed.headers)  # another origin: no keys
