"""The HTTP fetcher against a local server: headers, filters, retries on 429 (Retry-After) and
5xx, no retry on other 4xx, timeouts. Sleeps are injected, so the tests see every backoff and
never actually wait for one."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shmpipe_services.asset_sync.http_fetch import (
    FetchError,
    RetryPolicy,
    credentials_from_env,
    fetch_assets_body,
    parse_retry_after,
)

BODY = b'[{"id":"x"}]'


class Script:
    """What the server answers, request by request: (status, headers, body) tuples; the last repeats."""

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
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
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
