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


class EndpointError(RuntimeError):
    """A ZeroMQ endpoint that cannot be bound or connected to (bad syntax, missing directory,
    address in use); the message names it."""


def _attach(socket: zmq.Socket, how: str, endpoint: str) -> None:
    """``socket.bind`` or ``socket.connect``, failing with an EndpointError that says why."""
    try:
        getattr(socket, how)(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot {how} ZeroMQ endpoint {endpoint!r}: {zmq.strerror(exc.errno)}") from None


class AssetPublisher:
    def __init__(self, endpoint: str = DEFAULT_PUB_ENDPOINT, *, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, LINGER_MS)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscribe, not just the first
        try:
            _attach(self._socket, "bind", endpoint)
        except EndpointError:
            self._socket.close(linger=0)
            raise
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
    """Receives ``assets.changed`` and keeps a local cache: id (raw 16 bytes) -> record.

    ``await_connection=S``: before returning, wait up to S seconds until the connection to the
    publisher is made (ZMTP handshake done, our subscription sent), or until ZeroMQ reports the
    publisher is not there (a refused connect; it retries in the background); ``connected``
    says which. A warm start (``load``) reads the database only after that, so a change
    published once the subscription reached the publisher arrives as a message."""

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        *,
        context: zmq.Context | None = None,
        await_connection: float | None = None,
    ):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self.cache: dict[bytes, np.void] = {}
        self.messages = 0
        self.connected: bool | None = None  # known only with await_connection
        monitor = None
        if await_connection is not None:  # the monitor must be there before connect()
            monitor = self._socket.get_monitor_socket(_CONNECT_EVENTS)
        try:
            try:
                # Connecting before the publisher binds is fine: ZeroMQ retries.
                _attach(self._socket, "connect", endpoint)
                if monitor is not None:
                    self.connected = _await_handshake(monitor, await_connection)
            finally:  # the monitor goes first: it cannot be disabled on a closed socket
                if monitor is not None:
                    self._socket.disable_monitor()
                    monitor.close(linger=0)
        except BaseException:
            self._socket.close()
            raise

    def load(self, records: np.ndarray) -> None:
        """Apply ``records`` to the cache as a message would (upsert by id, removed ones kept
        with their flag) without counting a message: the warm start from the database."""
        for record in records:
            self.cache[bytes(record["id"])] = record.copy()

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


_CONNECT_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _await_handshake(monitor: zmq.Socket, timeout: float) -> bool:
    """True once the handshake with the publisher succeeded; False when the connect was refused
    (nobody bound there yet), the handshake failed, or ``timeout`` seconds passed."""
    from zmq.utils.monitor import recv_monitor_message

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not monitor.poll(int(remaining * 1000) + 1, zmq.POLLIN):
            return False
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return True
        if event & _CONNECT_EVENTS:
            return False


@contextmanager
def publisher(endpoint: str) -> Iterator[AssetPublisher]:
    pub = AssetPublisher(endpoint)
    try:
        yield pub
    finally:
        pub.close()
