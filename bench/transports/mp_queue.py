"""multiprocessing.Queue (pickling + a feeder thread + a pipe)."""
from __future__ import annotations

import multiprocessing as mp
import queue
from typing import Any, Sequence

from .base import Receiver, Sender, Transport


class _Tx(Sender):
    def __init__(self, q: Any) -> None:
        self.q = q
        self._put = q.put

    def send(self, rec: Any) -> None:
        self._put(rec)

    def send_batch(self, blob: bytes, n: int) -> None:
        self._put(blob)

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()  # flush the feeder thread


class _Rx(Receiver):
    def __init__(self, q: Any) -> None:
        self._get = q.get

    def poll(self) -> Sequence[Any]:
        try:
            return [self._get(True, 0.005)]
        except queue.Empty:
            return []


class MpQueueTransport(Transport):
    name = "mp-queue"
    receive_mode = "blocking (get(timeout=5ms))"
    broadcast_unsupported = "a queue delivers each message to one reader (no fan-out)"

    def version(self) -> str | None:
        import sys

        return f"stdlib (Python {sys.version.split()[0]})"

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        return {"q": mp.get_context("fork").Queue()}

    def destroy_channel(self, spec: Any) -> None:
        spec["q"].close()
        spec["q"].cancel_join_thread()

    def sender(self, spec: Any) -> Sender:
        return _Tx(spec["q"])

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        return _Rx(spec["q"])
