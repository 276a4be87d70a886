"""Alpaca's ``GET /v2/assets`` listing: parse, validate, and turn into Asset records.

The rules of the listing live here, not in the library: which fields are required, the enums
Alpaca documents, margins as JSON numbers or decimal strings. Validation is strict and names the
element and field at fault (``AssetFormatError``): the sync service writes to a database, and a
silently defaulted field would become a wrong row. Status, class and exchange go through explicit
tables; an unknown value is an error rather than a guess, because a new enum value upstream
usually means the meaning changed.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shmpipe.asset_codec import BOOL_FLAGS, MARGIN_FIELDS, STATUS_CODES, AssetFormatError, assets_to_records

# Alpaca's AssetClass enum; us_option is listed although /v2/assets does not return options.
ASSET_CLASSES = frozenset({"us_equity", "us_option", "crypto"})
# Alpaca's Exchange enum, plus the crypto venues it has used (CRYPTO now, FTXU and ERSX earlier).
EXCHANGES = frozenset({"AMEX", "ARCA", "BATS", "NYSE", "NASDAQ", "NYSEARCA", "OTC", "CRYPTO", "FTXU", "ERSX"})
REQUIRED_FIELDS = ("id", "class", "exchange", "symbol", "status", *(key for key, _ in BOOL_FLAGS))


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
        margin_value(doc.get(field), index, field)
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


def margin_value(value: Any, index: int | None, field: str) -> float:
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


def to_records(docs: Sequence[Mapping[str, Any]], *, updated_ns: int = 0) -> np.ndarray:
    """Validated listing objects as ``ASSET`` records: the margins' decimal strings become numbers."""
    return assets_to_records(
        [
            {**doc, **{field: margin_value(doc.get(field), index, field) for field in MARGIN_FIELDS}}
            for index, doc in enumerate(docs)
        ],
        updated_ns=updated_ns,
    )
