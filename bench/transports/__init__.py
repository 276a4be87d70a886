"""Transport registry: name -> module implementing ``transports.base.Transport``.

Modules are imported lazily so a missing optional peer costs nothing until it is asked for,
and its absence becomes a ``skipped`` row instead of an import error.
"""
from __future__ import annotations

import importlib

from .base import Transport

# JSON name -> (module, class). Order is the table order.
REGISTRY: dict[str, tuple[str, str]] = {
    "shmpipe": ("shmpipe_ring", "ShmpipeTransport"),
    "pyzmq-ipc": ("zmq_ipc", "ZmqIpcTransport"),
    "mp-queue": ("mp_queue", "MpQueueTransport"),
    "faster-fifo": ("faster_fifo_queue", "FasterFifoTransport"),
    "iceoryx2": ("iceoryx2_pubsub", "Iceoryx2Transport"),
    "redis-streams": ("redis_streams", "RedisStreamsTransport"),
    "pipe": ("os_pipe", "PipeTransport"),
}

_cache: dict[str, Transport] = {}


def get(name: str) -> Transport:
    if name not in _cache:
        module, cls = REGISTRY[name]
        mod = importlib.import_module(f"{__name__}.{module}")
        _cache[name] = getattr(mod, cls)()
    return _cache[name]


__all__ = ["REGISTRY", "get", "Transport"]
