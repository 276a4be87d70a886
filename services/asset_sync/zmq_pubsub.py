"""``assets.changed`` over ZeroMQ: a two-frame message [topic, Asset AoS buffer].

The publisher is an XPUB socket so it can *see* subscriptions arrive: a one-shot
``shmpipe assets sync`` that publishes and exits can wait until N subscribers are connected
(``--wait-subscribers``) instead of losing its only message to the slow-joiner problem.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import zmq

from shmpipe.asset_codec import pack_aos, record_id, unpack_aos

TOPIC = b"assets.changed"
DEFAULT_PUB_ENDPOINT = "ipc:///tmp/shmpipe-assets.pub"
LINGER_MS = 5000  # how long close() may wait to flush the last message to connected peers


class AssetPublisher:
    def __init__(self, endpoint: str = DEFAULT_PUB_ENDPOINT, *, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, LINGER_MS)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscribe, not just the first
        self._socket.bind(endpoint)
        self.subscribers = 0

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Block until ``count`` subscriptions to our topic have arrived, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.subscribers < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return self.subscribers >= count
            message = self._socket.recv()
            # b"\x01" + prefix subscribes, b"\x00" + prefix unsubscribes; an empty prefix matches us too.
            if message[1:] and not TOPIC.startswith(message[1:]):
                continue
            self.subscribers += 1 if message[:1] == b"\x01" else -1
        return True

    def publish(self, records: np.ndarray) -> int:
        if len(records) == 0:
            return 0
        self._socket.send_multipart([TOPIC, pack_aos(records)], copy=False)
        return len(records)

    def close(self) -> None:
        self._socket.close()  # lingers up to LINGER_MS so the last message still goes out


class AssetSubscriber:
    """Receives ``assets.changed`` and keeps a local cache: id (raw 16 bytes) -> record."""

    def __init__(self, endpoint: str = DEFAULT_PUB_ENDPOINT, *, context: zmq.Context | None = None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self._socket.connect(endpoint)  # connect before the publisher binds is fine: ZeroMQ retries
        self.cache: dict[bytes, np.void] = {}
        self.messages = 0

    def receive(self, timeout: float) -> np.ndarray | None:
        """The next message's records (a zero-copy view of the frame), applied to the cache;
        None when nothing arrived within ``timeout`` seconds."""
        if not self._socket.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        topic, payload = self._socket.recv_multipart(copy=False)
        records = unpack_aos(payload.buffer)  # frombuffer over the frame: no copy of the records
        for record in records:
            self.cache[bytes(record["id"])] = record.copy()  # the cache must outlive the frame
        self.messages += 1
        return records

    def records(self) -> np.ndarray:
        """The cache as one array (order: first arrival)."""
        from shmpipe.records import ASSET

        out = np.empty(len(self.cache), dtype=ASSET)
        for i, record in enumerate(self.cache.values()):
            out[i] = record
        return out

    def ids(self) -> set[str]:
        return {record_id(r) for r in self.cache.values()}

    def close(self) -> None:
        self._socket.close()


@contextmanager
def publisher(endpoint: str) -> Iterator[AssetPublisher]:
    pub = AssetPublisher(endpoint)
    try:
        yield pub
    finally:
        pub.close()
