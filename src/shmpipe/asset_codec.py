"""The Asset record (``ASSET``) and its AoS buffer (``u32 count`` + records): encode and decode.

What the library knows is the record: which mapping keys fill which field, how strings are cut,
how the buffer is laid out. Which listings are valid (an Alpaca ``/v2/assets`` body, its enums, its
margin strings, the diff) is the asset-sync service's business (``shmpipe_services.asset_sync``).

* ``assets_to_records`` takes mappings already checked by their producer: the keys of
  ``records_to_assets``'s output, margins as numbers or None. It does not guess: a margin that is
  not a number is an error here, turning text into numbers is the producer's rule.
* Strings longer than their field are cut at a UTF-8 character boundary and the matching
  ``ASSET_TRUNCATED_*`` bit is set: nothing is lost silently.
* Columns are built as Python lists once and assigned to the structured array field by field,
  and flags are combined with numpy, so encoding 100k assets costs one pass of Python per field.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shmpipe.errors import ShmpipeError
from shmpipe.records import (
    ASSET,
    ASSET_CLASS_BYTES,
    ASSET_EXCHANGE_BYTES,
    ASSET_FLAG_EASY_TO_BORROW,
    ASSET_FLAG_FRACTIONABLE,
    ASSET_FLAG_MARGINABLE,
    ASSET_FLAG_SHORTABLE,
    ASSET_FLAG_TRADABLE,
    ASSET_NAME_BYTES,
    ASSET_STATUS_ACTIVE,
    ASSET_STATUS_INACTIVE,
    ASSET_SYMBOL_BYTES,
    ASSET_TRUNCATED_CLASS,
    ASSET_TRUNCATED_EXCHANGE,
    ASSET_TRUNCATED_NAME,
    ASSET_TRUNCATED_SYMBOL,
    ASSET_FLAG_REMOVED,
)

STATUS_CODES: dict[str, int] = {"inactive": ASSET_STATUS_INACTIVE, "active": ASSET_STATUS_ACTIVE}
STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}

BOOL_FLAGS = (
    ("tradable", ASSET_FLAG_TRADABLE),
    ("marginable", ASSET_FLAG_MARGINABLE),
    ("shortable", ASSET_FLAG_SHORTABLE),
    ("easy_to_borrow", ASSET_FLAG_EASY_TO_BORROW),
    ("fractionable", ASSET_FLAG_FRACTIONABLE),
)
MARGIN_FIELDS = ("maintenance_margin_requirement", "margin_requirement_long", "margin_requirement_short")
# (JSON key, record field, width in bytes, truncated bit)
STRING_FIELDS = (
    ("symbol", "symbol", ASSET_SYMBOL_BYTES, ASSET_TRUNCATED_SYMBOL),
    ("name", "name", ASSET_NAME_BYTES, ASSET_TRUNCATED_NAME),
    ("exchange", "exchange", ASSET_EXCHANGE_BYTES, ASSET_TRUNCATED_EXCHANGE),
    ("class", "asset_class", ASSET_CLASS_BYTES, ASSET_TRUNCATED_CLASS),
)

_COUNT = struct.Struct("<I")


class AssetFormatError(ShmpipeError, ValueError):
    """Asset data does not have the expected shape (an AoS buffer, a record's fields, a listing).

    ``index`` is the array element at fault (None for whole-document problems), ``asset_id`` its
    id where it could be read, ``field`` the key.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
        asset_id: str | None = None,
    ):
        where = ""
        if index is not None:
            where = (
                f"asset [{index}]"
                + (f" id {asset_id}" if asset_id else "")
                + (f" field {field!r}" if field else "")
                + ": "
            )
        super().__init__(where + message)
        self.index = index
        self.field = field
        self.asset_id = asset_id
        self.reason = message


# --------------------------------------------------------------------------------------------
# UTF-8 cutting


def cut_utf8(data: bytes, width: int) -> tuple[bytes, bool]:
    """Longest prefix of ``data`` no longer than ``width`` that ends on a character boundary.

    Returns (prefix, truncated). Continuation bytes look like 0b10xxxxxx, so stepping back over
    them from the cut point lands on the first byte of the character that did not fit.
    """
    if len(data) <= width:
        return data, False
    cut = width
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut], True


# --------------------------------------------------------------------------------------------
# mappings -> records


def assets_to_records(docs: Sequence[Mapping[str, Any]], *, updated_ns: int = 0) -> np.ndarray:
    """Encode asset mappings as an ``ASSET`` array (one record per mapping, in order).

    Each mapping has the keys ``records_to_assets`` returns (``name`` and the margins may be
    missing or None; a missing margin is NaN), status ``"active"`` or ``"inactive"``, and the
    id as a UUID string in any form ``uuid.UUID`` reads."""
    n = len(docs)
    records = np.zeros(n, dtype=ASSET)
    if n == 0:
        return records
    records["id"] = np.frombuffer(b"".join(uuid.UUID(d["id"]).bytes for d in docs), dtype="V16")
    truncated = np.zeros(n, dtype=np.uint8)
    for key, field, width, bit in STRING_FIELDS:
        cut = [cut_utf8((d.get(key) or "").encode("utf-8"), width) for d in docs]
        records[field] = [data for data, _ in cut]
        truncated |= np.fromiter((was_cut for _, was_cut in cut), dtype=bool, count=n) * np.uint8(bit)
    records["truncated"] = truncated
    records["updated_ns"] = updated_ns
    for field in MARGIN_FIELDS:
        records[field] = [_margin_number(d.get(field), i, field) for i, d in enumerate(docs)]
    records["status"] = [STATUS_CODES[d["status"]] for d in docs]
    flags = np.zeros(n, dtype=np.uint8)
    for key, bit in BOOL_FLAGS:
        flags |= np.fromiter((d[key] for d in docs), dtype=bool, count=n) * np.uint8(bit)
    records["flags"] = flags
    return records


def _margin_number(value: Any, index: int, field: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise AssetFormatError(f"expected a number or None, got {value!r}", index=index, field=field)


# --------------------------------------------------------------------------------------------
# records -> JSON-like dicts (lossy where strings were cut; attributes are not in the record)


def record_id(record: np.void | np.ndarray) -> str:
    return str(uuid.UUID(bytes=bytes(record["id"])))


def records_to_assets(records: np.ndarray) -> list[dict[str, Any]]:
    """Decode records back to Alpaca-shaped objects (the fields the record carries)."""
    out = []
    for r in records:
        flags = int(r["flags"])
        doc: dict[str, Any] = {
            "id": record_id(r),
            "class": r["asset_class"].decode("utf-8"),
            "exchange": r["exchange"].decode("utf-8"),
            "symbol": r["symbol"].decode("utf-8"),
            "name": r["name"].decode("utf-8"),
            "status": STATUS_NAMES[int(r["status"])],
        }
        for key, bit in BOOL_FLAGS:
            doc[key] = bool(flags & bit)
        for field in MARGIN_FIELDS:
            doc[field] = float(r[field])
        out.append(doc)
    return out


# --------------------------------------------------------------------------------------------
# The AoS buffer: u32 little-endian count, then count records, nothing else required.


def pack_aos(records: np.ndarray) -> bytes:
    records = np.ascontiguousarray(records, dtype=ASSET)
    return _COUNT.pack(len(records)) + records.tobytes()


def unpack_aos(buffer: bytes | bytearray | memoryview, *, allow_trailing: bool = False) -> np.ndarray:
    """View the records of an AoS buffer without copying (read-only when the buffer is).

    Trailing bytes are an error unless ``allow_trailing`` (the sync delta appends a sidecar).
    """
    view = memoryview(buffer).cast("B")
    if len(view) < _COUNT.size:
        raise AssetFormatError(f"AoS buffer of {len(view)} bytes is shorter than its 4-byte count")
    (count,) = _COUNT.unpack_from(view)
    needed = _COUNT.size + count * ASSET.itemsize
    if len(view) < needed or (len(view) > needed and not allow_trailing):
        raise AssetFormatError(
            f"AoS buffer says {count} records ({needed} bytes) but holds {len(view)} bytes"
        )
    return np.frombuffer(view, dtype=ASSET, count=count, offset=_COUNT.size)


def aos_size(buffer: bytes | bytearray | memoryview) -> int:
    """Bytes taken by the AoS at the start of ``buffer`` (count prefix included)."""
    (count,) = _COUNT.unpack_from(buffer)
    return _COUNT.size + count * ASSET.itemsize


__all__ = [
    "ASSET_FLAG_REMOVED",
    "AssetFormatError",
    "cut_utf8",
    "assets_to_records",
    "records_to_assets",
    "record_id",
    "pack_aos",
    "unpack_aos",
    "aos_size",
    "STATUS_CODES",
]
