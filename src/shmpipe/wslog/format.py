"""The .wslog entry: what one raw capture record is on disk, and how markers ride in it.

An entry is a 14-byte little-endian header -- u64 receive time (ns since the epoch), u16 exchange
id, u32 payload length -- then the payload: the frame's bytes exactly as received. No file header,
no padding (shared/data/README.md). Exchange ids are the capture's own (1 Coinbase, 2 Kraken,
3 Alpaca in the fixtures).

Markers (connect, disconnect, subscribe) are entries too, so a gap in a capture is visible where
it happened. They use exchange id 0, which no exchange has, and carry their facts in the payload:
u16 the exchange the marker is about, u8 the kind, then free UTF-8 text (the URL connected to, why
the socket closed, the subscribe message as sent). The 14-byte header is unchanged, so a reader
that knows nothing of markers still walks the file; it only has to skip exchange 0.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import InvalidArgumentError

HEADER = struct.Struct("<QHI")
HEADER_BYTES = HEADER.size                      # 14
MAX_LENGTH_FIELD = 0xFFFFFFFF
# Readers refuse to allocate more than this for one entry; writers refuse to write more. Exchanges
# cap frames far lower (websockets' default max_size is 1 MiB).
MAX_ENTRY_BYTES = 64 << 20

MARKER_EXCHANGE_ID = 0
MARKER_HEAD = struct.Struct("<HB")              # the exchange it is about, the kind
MARKER_CONNECT, MARKER_DISCONNECT, MARKER_SUBSCRIBE = 1, 2, 3
MARKER_NAMES = {MARKER_CONNECT: "connect", MARKER_DISCONNECT: "disconnect", MARKER_SUBSCRIBE: "subscribe"}
MARKER_KINDS = {name: kind for kind, name in MARKER_NAMES.items()}


class WslogEntry(NamedTuple):
    """One entry as read. For a marker, ``exchange_id`` is the exchange it is about, ``marker`` its
    kind ("connect", "disconnect", "subscribe") and ``payload`` its text; frames have marker None."""

    recv_ns: int
    exchange_id: int
    payload: bytes
    marker: str | None = None


@dataclass(frozen=True)
class WslogStop:
    """Where and why a reader stopped before the end of a file. ``offset`` is the entry's first
    byte; ``declared`` the payload length its header claims (None when the header itself is cut);
    ``present`` how many of those bytes (or header bytes) the file still had."""

    path: str
    offset: int
    reason: str
    declared: int | None = None
    present: int | None = None

    def __str__(self) -> str:
        detail = ""
        if self.declared is not None:
            detail = f" (declares {self.declared} payload bytes, {self.present} present)"
        elif self.present is not None:
            detail = f" ({self.present} of {HEADER_BYTES} header bytes present)"
        return f"{self.path}: stopped at byte {self.offset}: {self.reason}{detail}"


def check_exchange_id(exchange_id: object) -> int:
    if isinstance(exchange_id, bool) or not isinstance(exchange_id, int) or not 1 <= exchange_id <= 0xFFFF:
        raise InvalidArgumentError(f"exchange_id must be an int from 1 to 65535 (0 marks markers), "
                                   f"not {exchange_id!r}")
    return exchange_id


def check_recv_ns(recv_ns: object) -> int:
    if isinstance(recv_ns, bool) or not isinstance(recv_ns, int) or not 0 <= recv_ns < 1 << 64:
        raise InvalidArgumentError(f"recv_ns must be an int of nanoseconds since the epoch, not {recv_ns!r}")
    return recv_ns


def as_payload(payload: object) -> bytes:
    """A frame's bytes: text frames (str) are stored as their UTF-8 bytes."""
    if isinstance(payload, str):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"a text frame must be valid Unicode ({exc.reason}); pass the raw "
                                       f"bytes instead") from None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:
        raise InvalidArgumentError(f"payload must be bytes or str, not {type(payload).__name__}")
    if len(data) > MAX_ENTRY_BYTES:
        raise InvalidArgumentError(f"a {len(data)}-byte frame is over the {MAX_ENTRY_BYTES}-byte entry limit")
    return data


def marker_payload(exchange_id: int, kind: str, detail: str | bytes) -> bytes:
    if kind not in MARKER_KINDS:
        raise InvalidArgumentError(f"marker kind must be one of {', '.join(MARKER_KINDS)}, not {kind!r}")
    text = detail.encode("utf-8") if isinstance(detail, str) else as_payload(detail)
    return MARKER_HEAD.pack(check_exchange_id(exchange_id), MARKER_KINDS[kind]) + text


def decode_marker(recv_ns: int, payload: bytes) -> WslogEntry | None:
    """The marker an exchange-0 entry holds, or None when its payload is too short to be one."""
    if len(payload) < MARKER_HEAD.size:
        return None
    exchange_id, kind = MARKER_HEAD.unpack_from(payload)
    name = MARKER_NAMES.get(kind, f"marker-{kind}")
    return WslogEntry(recv_ns, exchange_id, payload[MARKER_HEAD.size:], name)


def encode_entry(recv_ns: int, exchange_id: int, payload: bytes) -> bytes:
    """One entry's bytes (exchange_id 0 with a marker payload for a marker)."""
    return HEADER.pack(recv_ns, exchange_id, len(payload)) + payload
