"""iceoryx2's Python binding: zero-copy publish-subscribe over shared memory (lossless config:
no safe overflow, publisher retries until delivered). Payload: a byte slice of whole Ticks."""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

from .base import RECORD_SIZE, Receiver, Sender, Transport

BUFFER = 256  # samples a subscriber may hold before the publisher waits


def _service(iox2: Any, spec: Any, node: Any) -> Any:
    return (
        node.service_builder(iox2.ServiceName.new(spec["service"]))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(BUFFER)
        .history_size(0)
        .max_subscribers(max(2, spec["consumers"]))
        .max_publishers(2)
        .open_or_create()
    )


def _node(iox2: Any) -> Any:
    if hasattr(iox2, "set_log_level"):
        iox2.set_log_level(iox2.LogLevel.Error)
    return iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)


class _Tx(Sender):
    def __init__(self, iox2: Any, spec: Any) -> None:
        self.node = _node(iox2)
        self.svc = _service(iox2, spec, self.node)
        self.pub = (
            self.svc.publisher_builder()
            .initial_max_slice_len(spec["max_batch"] * RECORD_SIZE)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self._loan = self.pub.loan_slice_uninit

    def send(self, rec: Any) -> None:
        s = self._loan(len(rec))
        ctypes.memmove(s.payload_ptr, rec, len(rec))
        s.assume_init().send()

    def send_batch(self, blob: bytes, n: int) -> None:
        self.send(blob)

    def close(self) -> None:
        del self.pub, self.svc, self.node


class _Rx(Receiver):
    def __init__(self, iox2: Any, spec: Any) -> None:
        self.node = _node(iox2)
        self.svc = _service(iox2, spec, self.node)
        self.sub = self.svc.subscriber_builder().create()
        self._receive = self.sub.receive

    def poll(self) -> Sequence[Any]:
        receive, string_at = self._receive, ctypes.string_at
        for _ in range(2000):  # spin on non-blocking receives (~1 ms)
            s = receive()
            if s is None:
                continue
            out = []
            while s is not None and len(out) < 1024:
                out.append(string_at(s.payload_ptr, s.header.number_of_elements))
                s.delete()  # hand the sample back to the publisher
                s = receive()
            if s is not None:
                out.append(string_at(s.payload_ptr, s.header.number_of_elements))
                s.delete()
            return out
        return []

    def close(self) -> None:
        del self.sub, self.svc, self.node


class Iceoryx2Transport(Transport):
    name = "iceoryx2"
    receive_mode = "busy-poll (subscriber.receive() spin)"
    broadcast_unsupported = None

    def unavailable(self) -> str | None:
        try:
            import iceoryx2  # noqa: F401
        except ImportError as exc:
            return f"iceoryx2 Python binding not installed ({exc}); pip install iceoryx2"
        return None

    def version(self) -> str | None:
        from importlib import metadata

        return metadata.version("iceoryx2")

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        # The parent creates the service and keeps it alive for the run; the children open it.
        import iceoryx2

        spec = {"service": f"shmpipe-bench/{tag}", "consumers": consumers, "max_batch": max(1, max_batch)}
        node = _node(iceoryx2)
        spec["_keep"] = (node, _service(iceoryx2, spec, node))
        return spec

    def destroy_channel(self, spec: Any) -> None:
        spec.pop("_keep", None)

    def sender(self, spec: Any) -> Sender:
        import iceoryx2

        return _Tx(iceoryx2, spec)

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        import iceoryx2

        return _Rx(iceoryx2, spec)
