"""The small interface every transport implements, so every scenario drives every transport
through the same code.

Lifecycle of one measured run:

* in the parent: ``t.unavailable()`` -> reason or None; ``spec = t.make_channel(tag, consumers=k)``
  creates whatever must exist before the children start (a ring, a queue, a pipe, a stream key);
  ``t.destroy_channel(spec)`` removes it afterwards (always, in ``finally``);
* in a child process (forked, pinned to one core): ``t.sender(spec)`` / ``t.receiver(spec, index)``.

Records are the 32-byte Tick.  Byte-oriented peers move ``bytes`` (one record, or a batch of
records concatenated: one message per batch, the natural way to batch on a byte transport).
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

RECORD_SIZE = 32
# Tick layout (src/shmpipe/records.py, DESIGN.md): timestamp_ns u64, symbol_id u32, bid f32,
# ask f32, volume f32, source u8, flags u8, spread_bps u16, sequence u32.
TICK_STRUCT = struct.Struct("<QIfffBBHI")
assert TICK_STRUCT.size == RECORD_SIZE
_STAMP = struct.Struct("<Q")


def pack_tick(timestamp_ns: int, sequence: int) -> bytes:
    """One Tick as 32 bytes (symbol 1, synthetic source, quote flag)."""
    return TICK_STRUCT.pack(timestamp_ns, 1, 1.0842, 1.0843, 1.0, 7, 2, 9, sequence & 0xFFFFFFFF)


def stamps_of_blobs(blobs: Sequence[bytes]) -> list[int]:
    """timestamp_ns of every record in a list of blobs of whole records."""
    out: list[int] = []
    unpack = _STAMP.unpack_from
    for b in blobs:
        if len(b) == RECORD_SIZE:
            out.append(unpack(b)[0])
        else:
            out.extend(unpack(b, off)[0] for off in range(0, len(b), RECORD_SIZE))
    return out


def count_of_blobs(blobs: Sequence[bytes]) -> int:
    return sum(len(b) for b in blobs) // RECORD_SIZE


class Sender:
    def send(self, rec: Any) -> None:
        """Send one record (32 bytes, or what this transport's receiver handed over for echoing)."""
        raise NotImplementedError

    def prepare_batch(self, blob: bytes, n: int) -> Any:
        """Turn ``n`` records given as ``n * 32`` bytes into what send_batch() takes (done once,
        outside the timed loop: a user holds records in the transport's native form)."""
        return blob

    def send_batch(self, batch: Any, n: int) -> None:
        """Send ``n`` records (from prepare_batch) in as few calls as the transport allows."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Receiver:
    def poll(self) -> Sequence[Any]:
        """What arrived (possibly nothing); may wait a few ms at most so callers can check deadlines."""
        raise NotImplementedError

    def first(self, batch: Sequence[Any]) -> Any:
        """The first record of a non-empty poll() result, in a form this transport's send() accepts."""
        b = batch[0]
        return b if len(b) == RECORD_SIZE else b[:RECORD_SIZE]

    def stamps(self, batch: Sequence[Any]) -> list[int]:
        return stamps_of_blobs(batch)

    def count(self, batch: Sequence[Any]) -> int:
        return count_of_blobs(batch)

    def close(self) -> None:
        pass


class Transport:
    name: str = "?"
    # How a receiver waits: "busy-poll" (spins on a non-blocking call) or "blocking" (sleeps in the kernel).
    receive_mode: str = "?"
    # Why the broadcast-K scenario cannot run on this transport, or None if it can.
    broadcast_unsupported: str | None = None

    def broadcast_reason(self) -> str | None:
        """Why broadcast-K cannot run here (a feature check where needed), or None."""
        return self.broadcast_unsupported

    def unavailable(self) -> str | None:
        """None when usable here, else the reason (missing package, server down ...)."""
        return None

    def version(self) -> str | None:
        return None

    def make_channel(self, tag: str, consumers: int = 1) -> Any:
        raise NotImplementedError

    def destroy_channel(self, spec: Any) -> None:
        pass

    def sender(self, spec: Any) -> Sender:
        raise NotImplementedError

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        raise NotImplementedError
