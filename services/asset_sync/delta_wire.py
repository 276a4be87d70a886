"""A delta on the wire: the Asset AoS buffer, then a sidecar carrying the full JSON.

    u32 count | count x ASSET record | u32 sidecar_length | sidecar (UTF-8 JSON)
    sidecar = {"v": 1, "full": bool, "scope": {...}, "fetched": N, "docs": [object | null, ...],
               "held": [id, ...], "allow_mass_removal": true}   (both optional)

The AoS prefix is exactly the shared Asset AoS format, so any AoS reader can read the records.
The sidecar exists because the database holds the truth: the record cuts names at 64 bytes and has
no room for ``attributes`` or the crypto-only fields, and the diff is defined over all of them.
``docs[i]`` belongs to record i; ``null`` marks a removal (that record also has ASSET_FLAG_REMOVED).
``held`` lists the ids of assets the listing carried but that failed validation: the service keeps
their rows as they are and never counts them as removed (listing.py). ``allow_mass_removal`` is
the fetcher's ``--allow-mass-removal``: this one delta may pass the service's removal guard.

Decoding is where a delta from another process is checked: the documents are validated with the
listing's rules, as strictly as PostgreSQL would (the first bad one rejects the delta).
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shmpipe.asset_codec import ASSET_FLAG_REMOVED, AssetFormatError, aos_size, pack_aos, unpack_aos

from .listing import load_json, readable_id, validate_assets

WIRE_VERSION = 1
_LENGTH = struct.Struct("<I")


@dataclass
class AssetDelta:
    records: np.ndarray  # ASSET records, one per entry of docs
    docs: list[dict[str, Any] | None]  # full JSON per record; None for a removal
    full: bool = False  # docs are the complete listing for scope
    scope: dict[str, str] = field(default_factory=dict)  # e.g. {"asset_class": "crypto"}
    fetched: int = 0  # assets in the listing this delta came from
    held: list[str] = field(default_factory=list)  # ids in the listing that failed validation
    allow_mass_removal: bool = False  # may pass the removal guard (removal_guard.py)

    def __post_init__(self) -> None:
        if len(self.records) != len(self.docs):
            raise AssetFormatError(f"delta has {len(self.records)} records but {len(self.docs)} documents")
        removed = (self.records["flags"] & ASSET_FLAG_REMOVED) != 0
        if any(bool(r) != (d is None) for r, d in zip(removed, self.docs)):
            raise AssetFormatError("delta: removal flags and null documents disagree")

    @staticmethod
    def id_of(record: np.void) -> str:
        return str(uuid.UUID(bytes=bytes(record["id"])))


def encode_delta(delta: AssetDelta) -> bytes:
    sidecar = json.dumps(
        {
            "v": WIRE_VERSION,
            "full": delta.full,
            "scope": delta.scope,
            "fetched": delta.fetched,
            "docs": delta.docs,
            **({"held": delta.held} if delta.held else {}),
            **({"allow_mass_removal": True} if delta.allow_mass_removal else {}),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    return b"".join((pack_aos(delta.records), _LENGTH.pack(len(sidecar)), sidecar))


def decode_delta(buffer: bytes | bytearray | memoryview) -> AssetDelta:
    view = memoryview(buffer).cast("B")
    records = unpack_aos(view, allow_trailing=True)
    at = aos_size(view)
    if len(view) < at + _LENGTH.size:
        raise AssetFormatError("delta: sidecar length is missing")
    (length,) = _LENGTH.unpack_from(view, at)
    body = view[at + _LENGTH.size :]
    if len(body) != length:
        raise AssetFormatError(f"delta: sidecar says {length} bytes, {len(body)} present")
    try:
        sidecar, deep = load_json(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AssetFormatError(f"delta: sidecar is not JSON ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("v") != WIRE_VERSION:
        raise AssetFormatError(
            f"delta: unsupported sidecar {str(sidecar)[:80]!r} (expected version {WIRE_VERSION})"
        )
    docs, held = sidecar.get("docs"), sidecar.get("held", [])
    if not isinstance(docs, list) or not isinstance(held, list):
        raise AssetFormatError("delta: sidecar docs and held must be arrays")
    validate_assets([d for d in docs if d is not None], deep=deep)  # the socket is a trust boundary
    canonical_held = [readable_id({"id": h}) for h in held]
    if None in canonical_held:
        raise AssetFormatError("delta: held ids must be UUIDs")
    # Copy the records out of the receive buffer: the service keeps them past this frame.
    return AssetDelta(
        records.copy(),
        docs,
        full=bool(sidecar["full"]),
        scope=dict(sidecar.get("scope") or {}),
        fetched=int(sidecar.get("fetched", 0)),
        held=canonical_held,
        allow_mass_removal=sidecar.get("allow_mass_removal") is True,
    )
