"""pyzmq PUSH/PULL over ipc:// (a Unix-domain socket)."""
from __future__ import annotations

import os
from typing import Any, Sequence

from .base import Receiver, Sender, Transport


class _Tx(Sender):
    def __init__(self, zmq: Any, path: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(path)
        self._send = self.sock.send

    def send(self, rec: Any) -> None:
        self._send(rec, copy=True)

    def send_batch(self, blob: bytes, n: int) -> None:
        self._send(blob, copy=len(blob) < 65536)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class _Rx(Receiver):
    def __init__(self, zmq: Any, path: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(path)
        self._recv = self.sock.recv
        self._noblock = zmq.NOBLOCK
        self._again = zmq.Again

    def poll(self) -> Sequence[Any]:
        # Block in zmq_poll: libzmq moves data on its own I/O thread, which shares this pinned
        # core, so spinning here would starve it (measured: p99 in the milliseconds).
        recv, nb, again = self._recv, self._noblock, self._again
        try:
            out = [recv(nb)]
        except again:
            if not self.sock.poll(5):
                return []
            out = [recv(nb)]
        while len(out) < 1024:  # drain what is already there
            try:
                out.append(recv(nb))
            except again:
                break
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class ZmqIpcTransport(Transport):
    name = "pyzmq-ipc"
    receive_mode = "blocking (zmq poll(5ms), then recv(NOBLOCK) drain)"
    broadcast_unsupported = ("PUSH/PULL delivers each message to one reader; PUB/SUB drops at the "
                             "high-water mark, so it is not a lossless fan-out")

    def unavailable(self) -> str | None:
        try:
            import zmq  # noqa: F401
        except ImportError as exc:
            return f"pyzmq not installed ({exc}); pip install 'shmpipe[bench]'"
        return None

    def version(self) -> str | None:
        import zmq

        return f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}"

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        path = f"/tmp/shmpipe-bench-{tag}.sock"
        return {"addr": f"ipc://{path}", "path": path}

    def destroy_channel(self, spec: Any) -> None:
        try:
            os.unlink(spec["path"])
        except FileNotFoundError:
            pass

    def sender(self, spec: Any) -> Sender:
        import zmq

        return _Tx(zmq, spec["addr"])

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        import zmq

        return _Rx(zmq, spec["addr"])
