"""A plain os.pipe(): records written as bytes, read back in whole records."""
from __future__ import annotations

import os
import select
from typing import Any, Sequence

from .base import RECORD_SIZE, Receiver, Sender, Transport


class _Tx(Sender):
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, rec: Any) -> None:
        os.write(self.fd, rec)  # 32 bytes <= PIPE_BUF: atomic, never partial on a blocking fd

    def send_batch(self, blob: bytes, n: int) -> None:
        view = memoryview(blob)
        while view:
            view = view[os.write(self.fd, view):]


class _Rx(Receiver):
    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.rest = b""

    def poll(self) -> Sequence[Any]:
        try:
            data = os.read(self.fd, 1 << 17)
        except BlockingIOError:
            select.select([self.fd], [], [], 0.005)
            return []
        if self.rest:
            data = self.rest + data
        cut = len(data) - len(data) % RECORD_SIZE
        self.rest = data[cut:]
        return [data[:cut]] if cut else []


class PipeTransport(Transport):
    name = "pipe"
    receive_mode = "blocking (non-blocking read, select(5ms) when empty)"
    broadcast_unsupported = "a pipe delivers each byte to one reader (no fan-out)"

    def version(self) -> str | None:
        return "kernel pipe"

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        r, w = os.pipe()
        return {"r": r, "w": w}

    def destroy_channel(self, spec: Any) -> None:
        for fd in (spec["r"], spec["w"]):
            try:
                os.close(fd)
            except OSError:
                pass

    def sender(self, spec: Any) -> Sender:
        return _Tx(spec["w"])

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        return _Rx(spec["r"])
