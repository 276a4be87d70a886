"""Redis connections for the bridges: URLs (redis://, rediss:// for TLS, password in the URL),
one-line errors that never show the password, and waiting out a Redis restart."""
from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.cluster

from .wire import BridgeInputError

# A blocked XREADGROUP must return well inside this, or a healthy server reads as a dead one.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 1.0

# Errors that mean "the server went away or is restarting": wait, reconnect, resync, go on.
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
             redis.exceptions.BusyLoadingError, redis.exceptions.TryAgainError,
             redis.exceptions.ClusterDownError, redis.exceptions.ClusterError,
             redis.exceptions.SlotNotCoveredError)


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_auth_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, redis.exceptions.AuthenticationError) or "wrongpass" in text \
        or "noauth" in text or "invalid password" in text or "invalid username-password" in text


def connect(url: str):
    """A client that has answered PING, or BridgeError/BridgeInputError in one line naming the URL.
    A server in cluster mode gets a cluster client (keys routed to their nodes, MOVED followed)."""
    shown = redact(url)
    options = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S,
               "decode_responses": False}
    _check_db(url, shown)
    try:
        client = redis.Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        raise BridgeInputError(f"bad Redis URL {shown}: {_scrub(exc, url)}") from None
    try:
        client.ping()
        cluster = client.info("cluster").get("cluster_enabled") == 1
        if cluster:
            client.close()
            client = redis.cluster.RedisCluster.from_url(url, **options)
            client.ping()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        client.close()
        if _is_auth_failure(exc):
            raise BridgeInputError(f"Redis at {shown} refused the credentials: {_scrub(exc, url)}") from None
        # at start this is what the user named (a wrong host, port or CA), hence a usage error;
        # a server lost later is waited for (Retrier)
        raise BridgeInputError(f"cannot reach Redis at {shown}: {_scrub(exc, url)}") from None
    return client


def _check_db(url: str, shown: str) -> None:
    """redis-py reads redis://host/abc as db 0: a typo would write into another database."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return                      # from_url names what is wrong
    if parts.scheme not in ("redis", "rediss"):
        return
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise BridgeInputError(f"bad Redis URL {shown}: the path must be a database number "
                               f"(/0, /1, ...), not {db!r}")


def _scrub(exc: BaseException, url: str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    password = urlsplit(url).password if "://" in url else None
    return text.replace(password, "***") if password else text


class Retrier:
    """Backoff for a run of transient failures; fatal ones (bad credentials after a restart) raise."""

    def __init__(self, url: str, on_retry, on_recovered=None, while_waiting=None) -> None:
        self.url = url
        self._on_retry = on_retry
        self._on_recovered = on_recovered
        # called every few ms of a backoff: the sender stays a live consumer of a broadcast ring
        self._while_waiting = while_waiting
        self._delay = BACKOFF_FIRST_S

    def failed(self, exc: BaseException, stopping) -> None:
        if _is_auth_failure(exc):
            raise BridgeInputError(f"Redis at {redact(self.url)} refused the credentials: "
                                   f"{_scrub(exc, self.url)}") from None
        self._on_retry(exc)
        deadline = time.monotonic() + self._delay
        while time.monotonic() < deadline and not stopping():
            if self._while_waiting is not None:
                self._while_waiting()
            time.sleep(0.01)
        self._delay = min(self._delay * 2, BACKOFF_MAX_S)

    def succeeded(self) -> None:
        if self._on_recovered is not None:
            self._on_recovered()
        self._delay = BACKOFF_FIRST_S
