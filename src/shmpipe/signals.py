"""The signals bus: small typed messages (bars, features, heartbeats, asset changes) over ZeroMQ
PUB/SUB, next to the rings that carry the bulk data.

Topics (a subscriber filters on prefixes, so ``market.bar.`` gets every timeframe):

    system.heartbeat      {"service", "pid", "uptime_s", ...}       every service, once a second
    market.bar.<tf>       one OHLCV bar (tf: 1s, 1m, 5m)             the bar consumer
    signal.<name>         e.g. signal.features                       feature and strategy consumers
    assets.changed        (asset sync; its own binary AoS frame, see services/asset_sync)

Payloads (``data``) of the consumers' topics (services/consumers; every key always present):

    market.bar.<tf>   {"symbol_id": int, "exchange": str|None, "symbol": str|None, "timeframe": str,
                       "start_ns": int, "end_ns": int, "open": float, "high": float, "low": float,
                       "close": float, "volume": float, "vwap": float|None, "trades": int,
                       "first_ns": int, "last_ns": int, "complete": bool, "partial": list[str]}
                      one closed bar: [start_ns, end_ns) of exchange time, aligned to the epoch;
                      exchange/symbol None when the id is not in the host's symbol registry;
                      complete false when the bar consumer did not see the whole period, partial
                      says why: "start" (under way when it started), "end" (the stream ended
                      first), "lost" (records lost meanwhile)
    signal.features   {"symbol_id": int, "exchange": str|None, "symbol": str|None, "ts_ns": int,
                       "sequence": int, "mid": float, "spread": float, "spread_bps": float,
                       "microprice": float, "imbalance": float, "top_n": int,
                       "volatility": float|None, "vol_window": int, "books": int}
                      one symbol's latest book features; "books": valid books since its last message

Envelope: a two-frame ZeroMQ message ``[topic, body]``; topic is UTF-8, body is msgpack of
``{"v": 1, "topic": str, "source": str, "pid": int, "ts_ns": int, "data": {...}}`` where ``ts_ns`` is
the publisher's wall clock at send time (ns since the epoch). Any msgpack library reads it:

    topic, body = sub.recv_multipart(); msg = msgpack.unpackb(body)

Topology: a publisher binds its endpoint (``SignalPublisher(endpoint)``) and subscribers connect
to each publisher they want; or every publisher connects to one ``SignalBus`` (an XSUB/XPUB proxy,
the launcher runs one) and subscribers connect to the bus's output: ``bind=False`` on both sides.
PUB/SUB drops messages for subscribers that connect late or fall behind (ZeroMQ's design); what
must not be lost travels in rings.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .control import ControlError, _zmq, runtime_dir
from .errors import InvalidArgumentError

ENVELOPE_VERSION = 1
HEARTBEAT = "system.heartbeat"
HIGH_WATER_MARK = 100_000   # messages queued per peer before PUB drops (ZeroMQ's default is 1000)


def default_endpoint() -> str:
    """Where the host's bus delivers: ``ipc://<runtime dir>/shmpipe-signals``."""
    return f"ipc://{os.path.join(runtime_dir(), 'shmpipe-signals')}"


def default_input_endpoint() -> str:
    """Where publishers connect to the host's bus: ``ipc://<runtime dir>/shmpipe-signals.in``."""
    return f"ipc://{os.path.join(runtime_dir(), 'shmpipe-signals.in')}"


@dataclass(frozen=True)
class Signal:
    topic: str
    source: str
    pid: int
    ts_ns: int
    data: dict[str, Any]


def _msgpack():
    try:
        import msgspec.msgpack
    except ImportError:
        raise ControlError("the signals bus needs msgspec: pip install 'shmpipe[services]'") from None
    return msgspec.msgpack


def encode(topic: str, data: dict[str, Any], *, source: str = "", ts_ns: int | None = None) -> list[bytes]:
    """The two frames of one signal."""
    if not isinstance(topic, str) or not topic:
        raise InvalidArgumentError(f"topic must be a non-empty string, not {topic!r}")
    body = {"v": ENVELOPE_VERSION, "topic": topic, "source": source, "pid": os.getpid(),
            "ts_ns": time.time_ns() if ts_ns is None else ts_ns, "data": data}
    return [topic.encode(), _msgpack().encode(body)]


def decode(frames: list[bytes]) -> Signal:
    """A Signal from the two frames; ControlError naming what is wrong for anything else."""
    if len(frames) != 2:
        raise ControlError(f"a signal has 2 frames (topic, body), this message has {len(frames)}")
    msgpack = _msgpack()
    try:
        body = msgpack.decode(frames[1])
    except Exception:
        raise ControlError(f"signal on {frames[0][:64]!r}: the body is not msgpack") from None
    if not isinstance(body, dict) or body.get("v") != ENVELOPE_VERSION or not isinstance(body.get("data"), dict):
        raise ControlError(f"signal on {frames[0][:64]!r}: not a version {ENVELOPE_VERSION} envelope")
    return Signal(topic=str(body.get("topic", frames[0].decode(errors="replace"))), source=str(body.get("source", "")),
                  pid=int(body.get("pid", 0)), ts_ns=int(body.get("ts_ns", 0)), data=body["data"])


def _attach(socket, endpoint: str, bind: bool) -> None:
    zmq = _zmq()
    try:
        socket.bind(endpoint) if bind else socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ControlError(f"cannot {'bind' if bind else 'connect'} signals endpoint {endpoint!r}: "
                           f"{exc.strerror}") from None


class SignalPublisher:
    """Publishes signals; binds ``endpoint`` (default: connects to the host bus's input)."""

    def __init__(self, endpoint: str | None = None, *, bind: bool | None = None, source: str = "",
                 context=None) -> None:
        zmq = _zmq()
        if endpoint is None:
            endpoint, bind = default_input_endpoint(), False if bind is None else bind
        self.endpoint, self.source = endpoint, source
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self._socket.setsockopt(zmq.LINGER, 1000)
        _attach(self._socket, endpoint, True if bind is None else bind)
        self.sent = 0

    def publish(self, topic: str, data: dict[str, Any], *, ts_ns: int | None = None) -> None:
        self._socket.send_multipart(encode(topic, data, source=self.source, ts_ns=ts_ns))
        self.sent += 1

    def heartbeat(self, **facts: Any) -> None:
        self.publish(HEARTBEAT, {"service": self.source, "pid": os.getpid(), **facts})

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> SignalPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SignalSubscriber:
    """Receives signals whose topic starts with one of ``topics`` (default: all) from one or more
    endpoints (default: the host bus). Malformed messages are counted in ``bad`` and skipped."""

    def __init__(self, endpoints: str | Iterable[str] | None = None, topics: Iterable[str] = ("",), *,
                 bind: bool = False, context=None) -> None:
        zmq = _zmq()
        if endpoints is None:
            endpoints = [default_endpoint()]
        elif isinstance(endpoints, str):
            endpoints = [endpoints]
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self._socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.endpoints = list(endpoints)
        for endpoint in self.endpoints:
            _attach(self._socket, endpoint, bind)
        self.bad = 0

    def recv(self, timeout: float | None = None) -> Signal | None:
        """The next signal, or None after ``timeout`` seconds (None: wait for ever)."""
        zmq = _zmq()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart()
            try:
                return decode(frames)
            except ControlError:
                self.bad += 1

    def __iter__(self) -> Iterator[Signal]:
        while True:
            signal = self.recv()
            if signal is not None:
                yield signal

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> SignalSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SignalBus:
    """The host's bus: publishers connect to ``input_endpoint`` (XSUB), subscribers to
    ``output_endpoint`` (XPUB); a thread forwards between them until ``close()``."""

    def __init__(self, input_endpoint: str | None = None, output_endpoint: str | None = None, *,
                 context=None) -> None:
        zmq = _zmq()
        self.input_endpoint = input_endpoint or default_input_endpoint()
        self.output_endpoint = output_endpoint or default_endpoint()
        self._context = context or zmq.Context.instance()
        self._frontend = self._context.socket(zmq.XSUB)
        self._backend = self._context.socket(zmq.XPUB)
        for sock in (self._frontend, self._backend):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
            sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        _attach(self._frontend, self.input_endpoint, True)
        try:
            _attach(self._backend, self.output_endpoint, True)
        except ControlError:
            self._frontend.close(linger=0)
            raise
        self._control_endpoint = f"inproc://shmpipe-signal-bus-{id(self)}"
        self._control = self._context.socket(zmq.PAIR)
        self._control.bind(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, name="signal-bus", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        zmq = _zmq()
        control = self._context.socket(zmq.PAIR)
        control.connect(self._control_endpoint)
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, control)
        except zmq.ZMQError:
            pass
        finally:
            control.close(linger=0)
            self._frontend.close(linger=0)
            self._backend.close(linger=0)

    def close(self) -> None:
        if self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join(5)
        self._control.close(linger=0)

    def __enter__(self) -> SignalBus:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
