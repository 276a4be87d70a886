"""What one stream entry holds, and the checks a receiver makes before trusting it.

Fields (bytes keys, one entry per batch of up to N records of one ring):
  data  the records, packed back to back in the ring's dtype
  n     how many records
  seq   the stream sequence of the first one (contiguous across the stream's entries)
  type  record type name ("tick", ... or "custom")
  fp    the dtype fingerprint (shmpipe.dtypes.fingerprint), decimal
  ring  the source ring's identity ("<name>@<created_unix_ns>.<creator_pid>")
  pos   the source ring position this entry covers up to (exclusive)
  epoch which numbering the seq belongs to: a sender that finds the stream empty (new, or deleted
        and re-made) starts a new epoch, so a receiver never takes the new numbering's seqs for
        records it already has
  base  the seq the epoch's numbering starts at: a reader whose first entry has a higher seq
        knows how many records of the epoch it can never have
  prev  the epoch this one goes on from ("" when the sender did not know one): its base is where
        prev ended, so a reader of prev counts exactly what it missed across the change
Entries written before base/prev existed read as base 0, prev "".
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from shmpipe import records
from shmpipe.dtypes import fingerprint
from shmpipe.errors import ShmpipeError
from shmpipe.segments import validate_name


class BridgeError(Exception):
    """A bridge failure with a one-line message meant for the user."""

    exit_code = 1


class BridgeInputError(BridgeError):
    """A mistake in what the user asked for (bad URL, wrong ring for the stream): exit 2."""

    exit_code = 2


class RecordTypeMismatchError(BridgeInputError):
    """The stream carries records of another type than the local ring holds."""


class GapError(BridgeError):
    """Records between two points are missing and allow_gap is off."""


def check_ring_name(name: str) -> None:
    """Before anything else: a bad --ring is named as a ring, not as the stats name made from it."""
    try:
        validate_name(name)
    except ShmpipeError as exc:
        raise BridgeInputError(str(exc)) from None


def record_type_name(dt: np.dtype) -> str:
    for name, known in records.BY_NAME.items():
        if known == dt:
            return name
    return "custom"


def ring_identity(ring) -> str:
    """Tells one incarnation of a ring name from the next (a ring re-created under the same name)."""
    st = ring.stats()
    return f"{ring.name}@{st['created_unix_ns']}.{st['creator_pid']}"


def dtype_key(stream: str) -> str:
    """Key holding the dtype description, so a receiver can create its ring without being told."""
    return f"{stream}:dtype"


def new_epoch() -> str:
    return f"{time.time_ns():x}.{os.getpid()}"


def encode_entry(data: bytes, n: int, seq: int, type_name: str, fp: int, ring_id: str, pos: int,
                 epoch: str, base: int = 0, prev: str = "") -> dict:
    return {b"data": data, b"n": n, b"seq": seq, b"type": type_name, b"fp": fp, b"ring": ring_id, b"pos": pos,
            b"epoch": epoch, b"base": base, b"prev": prev}


@dataclass(frozen=True)
class Entry:
    entry_id: bytes
    n: int
    seq: int
    type_name: str
    fp: int
    ring_id: str
    pos: int
    epoch: str
    data: bytes
    base: int = 0
    prev: str = ""


def decode_entry(entry_id: bytes, fields: dict, stream: str, group: str | None = None) -> Entry:
    """``group``: the reader's consumer group, so the error says how to get past the entry."""
    try:
        return Entry(entry_id, int(fields[b"n"]), int(fields[b"seq"]), fields[b"type"].decode(),
                     int(fields[b"fp"]), fields[b"ring"].decode(), int(fields[b"pos"]), fields[b"epoch"].decode(),
                     fields[b"data"], int(fields.get(b"base", 0)), fields.get(b"prev", b"").decode())
    except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
        hint = ""
        if group is not None:
            hint = (f"; it stays pending and stops every start: to skip it, XACK {stream} {group} "
                    f"{entry_id.decode()}")
        raise BridgeInputError(f"stream {stream!r}: entry {entry_id.decode()} is not a shmpipe bridge entry "
                               f"(fields {sorted(k.decode(errors='replace') for k in fields)}){hint}") from None


@functools.lru_cache(maxsize=16)
def _fingerprint(dt: np.dtype) -> int:
    return fingerprint(dt)        # a hash of the dtype's text: worth keeping per entry


def check_entry(entry: Entry, dt: np.dtype, ring_name: str, stream: str) -> None:
    """A mismatch is refused, never reinterpreted as the local ring's type."""
    ours = _fingerprint(dt)
    if entry.fp != ours:
        raise RecordTypeMismatchError(
            f"stream {stream!r} carries {entry.type_name} records (dtype fingerprint {entry.fp:#x}) but ring "
            f"{ring_name!r} holds {record_type_name(dt)} records (fingerprint {ours:#x}): refusing to write them")
    if len(entry.data) != entry.n * dt.itemsize:
        raise BridgeInputError(f"stream {stream!r}: entry {entry.entry_id.decode()} says {entry.n} records "
                               f"of {dt.itemsize} bytes but holds {len(entry.data)} bytes")
