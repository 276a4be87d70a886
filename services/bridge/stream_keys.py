"""The two small keys beside a stream, and reading them with errors that name the key.

KEY:dtype  the record type's description, so a receiver can create its ring without being told.
KEY:owner  which source ring's sender writes the stream (host, ring, identity) and how far its
           numbering went (epoch, next_seq). A stream belongs to one source ring: a second sender
           from another ring is refused, naming this one. The sender rewrites it (SET XX) before
           every batch of XADDs, so ``next_seq`` is never behind the stream; a SET XX that finds
           the key gone tells the sender that Redis lost keys (a restart without persistence, a
           DEL), and the numbering it stored lets a new epoch go on from where the lost one ended.
"""
from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass

import numpy as np
import redis

from shmpipe.dtypes import from_description

from .wire import BridgeInputError, dtype_key


def owner_key(stream: str) -> str:
    return f"{stream}:owner"


def ring_name_of(ring_id: str) -> str:
    """'ticks@1700000000.42' -> 'ticks' (ring names have no '@')."""
    return ring_id.rsplit("@", 1)[0]


@dataclass(frozen=True)
class Owner:
    host: str
    ring: str
    ring_id: str
    epoch: str
    next_seq: int

    @classmethod
    def here(cls, ring_id: str, epoch: str, next_seq: int) -> "Owner":
        return cls(socket.gethostname(), ring_name_of(ring_id), ring_id, epoch, next_seq)

    def same_source(self, other: "Owner") -> bool:
        """The same ring on the same host (a re-created ring under its name included)."""
        return (self.host, self.ring) == (other.host, other.ring)

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def __str__(self) -> str:
        return f"ring {self.ring!r} on {self.host}"


def _get(client, key: str, what: str) -> bytes | None:
    try:
        return client.get(key)
    except redis.exceptions.ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            raise BridgeInputError(f"key {key!r} holds another Redis type than a string ({what}): DEL it, "
                                   f"or use another stream key") from None
        raise


def read_dtype(client, stream: str) -> np.dtype | None:
    key = dtype_key(stream)
    raw = _get(client, key, "the stream's record type")
    if raw is None:
        return None
    try:
        return from_description(raw.decode())
    except Exception:  # noqa: BLE001 -- literal_eval and numpy raise many kinds; all mean "not a dtype"
        raise BridgeInputError(f"key {key!r} does not hold a record type description ({raw[:60]!r}): DEL it "
                               f"and restart the stream's ring-to-redis, which writes it") from None


def read_owner(client, stream: str) -> Owner | None:
    key = owner_key(stream)
    raw = _get(client, key, "the stream's owner")
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Owner(str(data["host"]), str(data["ring"]), str(data["ring_id"]), str(data["epoch"]),
                     int(data["next_seq"]))
    except (ValueError, KeyError, TypeError):
        raise BridgeInputError(f"key {key!r} does not hold a shmpipe stream owner ({raw[:60]!r}): DEL it "
                               f"if no other ring-to-redis writes {stream!r}") from None
