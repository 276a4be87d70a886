"""Alpaca asset JSON <-> ``ASSET`` records, and the Asset AoS buffer (``u32 count`` + records).

Everything that knows how an Alpaca asset maps onto the 152-byte record lives here, so the
fetcher, the sync service and the subscribers cannot disagree about it.

* Validation is strict and names the element and field at fault (``AssetFormatError``): the
  sync service writes to a database, and a silently defaulted field would become a wrong row.
* Strings longer than their field are cut at a UTF-8 character boundary and the matching
  ``ASSET_TRUNCATED_*`` bit is set; the full text stays in the JSON (and in the database).
* Status, class and exchange go through explicit tables; an unknown value is an error rather
  than a guess, because a new enum value upstream usually means the meaning changed.
* Columns are built as Python lists once and assigned to the structured array field by field,
  and flags are combined with numpy, so encoding 100k assets costs one pass of Python per field.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
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
# Alpaca's AssetClass enum; us_option is listed although /v2/assets does not return options.
ASSET_CLASSES = frozenset({"us_equity", "us_option", "crypto"})
# Alpaca's Exchange enum, plus the crypto venues it has used (CRYPTO now, FTXU and ERSX earlier).
EXCHANGES = frozenset({"AMEX", "ARCA", "BATS", "NYSE", "NASDAQ", "NYSEARCA", "OTC", "CRYPTO", "FTXU", "ERSX"})

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
REQUIRED_FIELDS = ("id", "class", "exchange", "symbol", "status", *(key for key, _ in BOOL_FLAGS))

_COUNT = struct.Struct("<I")


class AssetFormatError(ShmpipeError, ValueError):
    """The assets JSON does not have the shape the Alpaca API documents.

    ``index`` is the array element at fault (None for whole-document problems), ``field`` the key.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        where = "" if index is None else f"asset [{index}]" + (f" field {field!r}" if field else "") + ": "
        super().__init__(where + message)
        self.index = index
        self.field = field


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
# JSON -> records


def parse_assets_json(body: bytes | str) -> list[dict[str, Any]]:
    """Parse a ``GET /v2/assets`` body and validate every element; returns the JSON objects."""
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body)
        if not body.strip():
            raise AssetFormatError("empty document: expected a JSON array of assets")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssetFormatError(f"body is not UTF-8 ({exc})") from None
    else:
        text = body
    if not text.strip():
        raise AssetFormatError("empty document: expected a JSON array of assets")
    try:
        docs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AssetFormatError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(docs, list):
        raise AssetFormatError(f"expected a JSON array of assets, got {type(docs).__name__}")
    validate_assets(docs)
    return docs


def validate_assets(docs: Sequence[Any]) -> None:
    """Raise AssetFormatError for the first problem found: shape, types, enums, duplicate ids."""
    first_index: dict[str, int] = {}
    for index, doc in enumerate(docs):
        _validate_one(doc, index)
        asset_id = doc["id"].lower()
        if asset_id in first_index:
            raise AssetFormatError(
                f"duplicate id {asset_id} (first seen at asset [{first_index[asset_id]}])",
                index=index,
                field="id",
            )
        first_index[asset_id] = index


def _validate_one(doc: Any, index: int) -> None:
    if not isinstance(doc, dict):
        raise AssetFormatError(f"expected a JSON object, got {type(doc).__name__}", index=index)
    for field in REQUIRED_FIELDS:
        if field not in doc:
            raise AssetFormatError("required field is missing", index=index, field=field)
    _expect_str(doc, "id", index)
    try:
        uuid.UUID(doc["id"])
    except ValueError:
        raise AssetFormatError(f"not a UUID: {doc['id']!r}", index=index, field="id") from None
    for field in ("symbol", "class", "exchange", "status"):
        _expect_str(doc, field, index)
    if doc.get("name") is not None:
        _expect_str(doc, "name", index)
    if doc["status"] not in STATUS_CODES:
        raise AssetFormatError(
            f"unknown status {doc['status']!r} (known: {sorted(STATUS_CODES)})", index=index, field="status"
        )
    if doc["class"] not in ASSET_CLASSES:
        raise AssetFormatError(
            f"unknown asset class {doc['class']!r} (known: {sorted(ASSET_CLASSES)})",
            index=index,
            field="class",
        )
    if doc["exchange"] not in EXCHANGES:
        raise AssetFormatError(
            f"unknown exchange {doc['exchange']!r} (known: {sorted(EXCHANGES)})",
            index=index,
            field="exchange",
        )
    for field, _bit in BOOL_FLAGS:
        if not isinstance(doc[field], bool):
            raise AssetFormatError(f"expected true/false, got {doc[field]!r}", index=index, field=field)
    for field in MARGIN_FIELDS:
        _margin_value(doc.get(field), index, field)
    attributes = doc.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, list) and all(isinstance(a, str) for a in attributes)
    ):
        raise AssetFormatError(
            f"expected a list of strings, got {attributes!r}", index=index, field="attributes"
        )


def _expect_str(doc: Mapping[str, Any], field: str, index: int) -> None:
    if not isinstance(doc[field], str):
        raise AssetFormatError(f"expected a string, got {doc[field]!r}", index=index, field=field)


def _margin_value(value: Any, index: int | None, field: str) -> float:
    """Margins come as JSON numbers or decimal strings (Alpaca documents both); null is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):  # bool is an int subclass: true is not a margin of 1 %
        raise AssetFormatError(
            f"expected a number or decimal string, got {value!r}", index=index, field=field
        )
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    raise AssetFormatError(f"expected a number or decimal string, got {value!r}", index=index, field=field)


def assets_to_records(
    docs: Sequence[Mapping[str, Any]], *, updated_ns: int = 0, validate: bool = True
) -> np.ndarray:
    """Encode validated asset objects as an ``ASSET`` array (one record per object, in order)."""
    if validate:
        validate_assets(docs)
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
        records[field] = [_margin_value(d.get(field), i, field) for i, d in enumerate(docs)]
    records["status"] = [STATUS_CODES[d["status"]] for d in docs]
    flags = np.zeros(n, dtype=np.uint8)
    for key, bit in BOOL_FLAGS:
        flags |= np.fromiter((d[key] for d in docs), dtype=bool, count=n) * np.uint8(bit)
    records["flags"] = flags
    return records


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


def canonical_json(doc: Mapping[str, Any]) -> str:
    """One text per asset value, independent of key order: what the diff compares."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ or that exist on one side only (the issue's diff rule)."""
    keys: Iterable[str] = sorted(set(old) | set(new))
    # Compare as JSON text: in Python True == 1 and 30 == 30.0, in JSON they are different values.
    return [
        k
        for k in keys
        if k not in old
        or k not in new
        or json.dumps(old[k], sort_keys=True) != json.dumps(new[k], sort_keys=True)
    ]


__all__ = [
    "ASSET_FLAG_REMOVED",
    "AssetFormatError",
    "cut_utf8",
    "parse_assets_json",
    "validate_assets",
    "assets_to_records",
    "records_to_assets",
    "record_id",
    "pack_aos",
    "unpack_aos",
    "aos_size",
    "canonical_json",
    "changed_fields",
    "STATUS_CODES",
    "ASSET_CLASSES",
    "EXCHANGES",
]
