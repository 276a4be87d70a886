"""faster-fifo: a multiprocessing queue over a shared-memory circular buffer (pthread mutex + condvar)."""
from __future__ import annotations

import queue
from typing import Any, Sequence

from .base import RECORD_SIZE, Receiver, Sender, Transport


class _Tx(Sender):
    def __init__(self, q: Any) -> None:
        self._put = q.put

    def send(self, rec: Any) -> None:
        self._put(rec, True, 10.0)

    def send_batch(self, blob: bytes, n: int) -> None:
        self._put(blob, True, 10.0)


class _Rx(Receiver):
    def __init__(self, q: Any) -> None:
        self._get_many = q.get_many

    def poll(self) -> Sequence[Any]:
        try:
            return self._get_many(True, 0.005, 1024)
        except queue.Empty:
            return []


class FasterFifoTransport(Transport):
    name = "faster-fifo"
    receive_mode = "blocking (get_many(timeout=5ms))"
    broadcast_unsupported = "a queue delivers each message to one reader (no fan-out)"

    def unavailable(self) -> str | None:
        try:
            import faster_fifo  # noqa: F401
        except ImportError as exc:
            return f"faster-fifo not installed ({exc}); pip install 'shmpipe[bench]'"
        return None

    def version(self) -> str | None:
        from importlib import metadata

        return metadata.version("faster-fifo")

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        from faster_fifo import Queue

        size = max(4 << 20, 64 * (max_batch * RECORD_SIZE + 64))
        return {"q": Queue(max_size_bytes=size)}

    def destroy_channel(self, spec: Any) -> None:
        spec["q"].close()

    def sender(self, spec: Any) -> Sender:
        return _Tx(spec["q"])

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        return _Rx(spec["q"])
