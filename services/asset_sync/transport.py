"""How a delta gets from the fetcher to the sync service.

Both sides speak bytes produced by ``delta_wire.encode_delta``:

* ``InProcessSink``: ``shmpipe assets sync`` with no ``--to-service``; the service lives in the
  same process and the delta still goes through encode/decode, so both modes run the same path.
* ``UnixSocketSink`` / ``serve_unix``: a Unix stream socket carrying length-prefixed frames
  (``u32 little-endian length`` + payload). Each delta frame is answered by one reply frame, a
  JSON object: the cycle's summary, or ``{"error": ...}``. The fetcher advances its source map
  only on a summary, so a delta the service did not commit is sent again next cycle.

Why a socket and not a shmpipe ring: a ring carries fixed-size records with no boundaries, but a
delta also has to carry variable-length JSON (full names, attributes, crypto fields: the database
is the truth, the record is cut), needs one reply per delta for the at-least-once hand-off, and
arrives every few seconds to minutes, where a ring's sub-microsecond latency buys nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from .delta_wire import AssetDelta, decode_delta, encode_delta
from .service import SyncError, SyncResult, SyncService

DEFAULT_SOCKET = "/tmp/shmpipe-assets.sock"
MAX_FRAME = 256 * 1024 * 1024  # a bigger length prefix is corruption, not a delta: never allocate it
_LENGTH = struct.Struct("<I")


class TransportError(RuntimeError):
    pass


class DeltaSink(Protocol):
    async def send(self, delta: AssetDelta) -> dict[str, Any]:
        """Deliver ``delta``; returns the service's summary once it is committed and published."""

    async def close(self) -> None: ...


class InProcessSink:
    def __init__(self, service: SyncService):
        self.service = service
        self.last_result: SyncResult | None = None

    async def send(self, delta: AssetDelta) -> dict[str, Any]:
        self.last_result = await self.service.apply(decode_delta(encode_delta(delta)))
        return self.last_result.summary()

    async def close(self) -> None:
        pass


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame, or None at a clean end of stream (EOF before a length prefix)."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TransportError("connection closed inside a frame header") from None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise TransportError(f"frame length {length} exceeds the {MAX_FRAME}-byte limit")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TransportError(f"connection closed after {len(exc.partial)} of {length} frame bytes") from None


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(_LENGTH.pack(len(payload)))
    writer.write(payload)


class UnixSocketSink:
    """Fetcher side: one connection, reopened after any failure."""

    def __init__(self, path: str | os.PathLike = DEFAULT_SOCKET, *, timeout: float = 120.0):
        self.path = str(path)
        self.timeout = timeout  # a service writing 100k rows to a slow database needs a while
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, delta: AssetDelta) -> dict[str, Any]:
        payload = encode_delta(delta)
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path), self.timeout
                )
            write_frame(self._writer, payload)
            await self._writer.drain()
            reply = await asyncio.wait_for(read_frame(self._reader), self.timeout)
        except (OSError, TimeoutError, TransportError) as exc:
            await self.close()
            raise TransportError(f"sync service at {self.path}: {type(exc).__name__}: {exc}") from exc
        if reply is None:
            await self.close()
            raise TransportError(f"sync service at {self.path} closed the connection without a reply")
        answer = json.loads(reply)
        if "error" in answer:
            raise TransportError(f"sync service rejected the delta: {answer['error']}")
        return answer

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer, self._reader = self._writer, None, None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def serve_unix(
    path: str | os.PathLike,
    handle: Callable[[bytes], Awaitable[dict[str, Any]]],
    *,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve delta frames on a Unix socket until ``stop`` is set; removes the socket file after."""
    socket_path = Path(path)
    if socket_path.exists() and socket_path.is_socket():
        socket_path.unlink()  # a stale socket from a killed service; bind would fail on it

    open_writers: set[asyncio.StreamWriter] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            while (frame := await read_frame(reader)) is not None:
                try:
                    answer = await handle(frame)
                except Exception as exc:  # reported to the fetcher, which keeps the delta for next time
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                    if isinstance(exc, SyncError):
                        answer["partial"] = exc.result.summary()
                write_frame(writer, json.dumps(answer).encode())
                await writer.drain()
        except (TransportError, ConnectionError):
            pass  # a broken client costs only its own connection
        finally:
            open_writers.discard(writer)
            writer.close()

    try:
        server = await asyncio.start_unix_server(connection, path=str(socket_path))
    except OSError as exc:  # no such directory, a path too long for AF_UNIX, not a socket
        raise TransportError(
            f"cannot listen on Unix socket {str(socket_path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        if ready:
            ready()
        await (stop or asyncio.Event()).wait()
    finally:
        server.close()
        for writer in list(open_writers):  # idle fetcher connections would keep wait_closed waiting
            writer.close()
        await server.wait_closed()
        socket_path.unlink(missing_ok=True)
