"""Redis Streams against the local server: XADD one entry per record (or per batch), XREAD BLOCK."""
from __future__ import annotations

import os
from typing import Any, Sequence

from .base import Receiver, Sender, Transport

URL = os.environ.get("SHMPIPE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class _Tx(Sender):
    def __init__(self, redis: Any, key: str) -> None:
        self.r = redis.Redis.from_url(URL)
        self.key = key
        self._xadd = self.r.xadd

    def send(self, rec: Any) -> None:
        self._xadd(self.key, {"t": rec})

    def send_batch(self, blob: bytes, n: int) -> None:
        self._xadd(self.key, {"t": blob})

    def close(self) -> None:
        self.r.close()


class _Rx(Receiver):
    def __init__(self, redis: Any, key: str) -> None:
        self.r = redis.Redis.from_url(URL)
        self.key = key
        self.last = "0-0"
        self._xread = self.r.xread

    def poll(self) -> Sequence[Any]:
        resp = self._xread({self.key: self.last}, count=1024, block=5)
        if not resp:
            return []
        entries = resp[0][1]
        self.last = entries[-1][0]
        return [fields[b"t"] for _id, fields in entries]

    def close(self) -> None:
        self.r.close()


class RedisStreamsTransport(Transport):
    name = "redis-streams"
    receive_mode = "blocking (XREAD BLOCK 5 COUNT 1024); server not pinned"
    broadcast_unsupported = None  # every reader XREADs the same stream

    def unavailable(self) -> str | None:
        try:
            import redis
        except ImportError as exc:
            return f"redis (redis-py) not installed ({exc}); pip install 'shmpipe[bench]'"
        try:
            r = redis.Redis.from_url(URL, socket_connect_timeout=1.0)
            r.ping()
            r.close()
        except Exception as exc:
            return f"Redis not reachable at {URL}: {type(exc).__name__}: {exc}"
        return None

    def version(self) -> str | None:
        import redis

        try:
            r = redis.Redis.from_url(URL, socket_connect_timeout=1.0)
            server = r.info("server").get("redis_version")
            r.close()
        except Exception:
            server = "unreachable"
        return f"redis-py {redis.__version__} / server {server}"

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        return {"key": f"shmpipe-bench:{tag}"}

    def destroy_channel(self, spec: Any) -> None:
        import redis

        r = redis.Redis.from_url(URL, socket_connect_timeout=1.0)
        try:
            r.delete(spec["key"])
        finally:
            r.close()

    def sender(self, spec: Any) -> Sender:
        import redis

        return _Tx(redis, spec["key"])

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        import redis

        return _Rx(redis, spec["key"])
