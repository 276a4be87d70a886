"""Alpaca's ``GET /v2/assets`` listing: parse, validate, and turn into Asset records.

The rules of the listing live here, not in the library. They are at least as strict as what
PostgreSQL accepts, so an asset that passes can always be written, to either database:

* every string anywhere in an asset (keys, values, nested) is valid Unicode without NUL
  (PostgreSQL's text and jsonb reject ``\\u0000`` and lone surrogates);
* every number anywhere is finite and within a double's range (NaN, Infinity and ``1e400`` are
  rejected), and is put in canonical form (canonical.py);
* margins are JSON numbers or decimal strings (Alpaca documents both) whose value is 0 or fits an
  f32 without becoming 0 or infinite (the record holds them as f32), at most 64 characters;
* the id is a UUID in any form ``uuid.UUID`` reads (braces, ``urn:uuid:``, no hyphens, upper
  case) and is rewritten as lower-case ``8-4-4-4-12``, the one form the rest of the sync uses;
* status, class and exchange go through explicit tables; an unknown value is an error rather than
  a guess, because a new enum value upstream usually means the meaning changed.

A listing is judged asset by asset (``parse_listing``): a bad asset is left out of the cycle, named
(index, id, field) in an ``AssetFormatError``, and its id, where it could be read, is *held*: the
sync keeps its stored row as it is and never counts it as removed. So one bad asset upstream does
not block the others, this cycle or any later one. Problems with the document itself (not UTF-8,
not JSON, not an array) reject the whole listing. ``validate_assets`` is the strict form for a
trust boundary (the sync service's socket): the first problem raises.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
import dataclasses
from decimal import Decimal
from typing import Any

import numpy as np

from shmpipe.asset_codec import BOOL_FLAGS, MARGIN_FIELDS, STATUS_CODES, AssetFormatError, assets_to_records

from .canonical import canonical_number

# Alpaca's AssetClass enum; us_option is listed although /v2/assets does not return options.
ASSET_CLASSES = frozenset({"us_equity", "us_option", "crypto"})
# Alpaca's Exchange enum, plus the crypto venues it has used (CRYPTO now, FTXU and ERSX earlier).
EXCHANGES = frozenset({"AMEX", "ARCA", "BATS", "NYSE", "NASDAQ", "NYSEARCA", "OTC", "CRYPTO", "FTXU", "ERSX"})
REQUIRED_FIELDS = ("id", "class", "exchange", "symbol", "status", *(key for key, _ in BOOL_FLAGS))
# Keys whose text is known to be storable; any other key is checked like a value.
_KNOWN_KEYS = frozenset(
    (
        *REQUIRED_FIELDS,
        "name",
        *MARGIN_FIELDS,
        "attributes",
        "min_order_size",
        "min_trade_increment",
        "price_increment",
    )
)

DOUBLE_MAX = float(np.finfo(np.float64).max)
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal f32: below it a margin would lose digits
MAX_DECIMAL_TEXT = 64  # a margin string longer than this is not a percentage; numeric has limits too
# Decimal text as both PostgreSQL's numeric and Python read it: no spaces, no underscores, no NaN;
# an exponent of at most 4 digits (beyond that Decimal itself refuses to convert).
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")
# The forms nearly every asset uses, checked first because the general paths cost more.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PLAIN_PERCENT = re.compile(r"(?:0|[1-9]\d{0,5})(?:\.\d{1,6})?")  # "30", "0.25": within f32 as is
# Integer literals longer than this are beyond a double; json.loads would refuse the whole
# document past 4300 digits, this keeps the judgement per asset.
_MAX_INT_DIGITS = 310
# In JSON text a NUL or a lone surrogate can only be written as one of these escapes (raw control
# characters are invalid JSON, and UTF-8 cannot hold a surrogate). A text without them needs no
# per-string check. A false hit (an escaped backslash before "u0000") only costs the slow path.
_SUSPICIOUS_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")


@dataclasses.dataclass
class Listing:
    """One listing judged asset by asset."""

    docs: list[dict[str, Any]]  # the valid assets, in canonical form, in listing order
    rejected: list[AssetFormatError] = dataclasses.field(default_factory=list)  # one per element left out
    held_ids: list[str] = dataclasses.field(default_factory=list)  # readable ids of rejected elements
    fetched: int = 0  # elements in the listing, rejected ones included


class _BadNumber:
    """A number PostgreSQL or a double cannot hold (NaN, Infinity, 1e400), kept as its text so
    that its asset alone is rejected, with the text in the message."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def load_json(text: str) -> tuple[Any, bool]:
    """``json.loads`` with every number in canonical form. The flag says whether the values need
    the per-value checks of ``judge_assets(deep=True)``: the text has a NUL or surrogate escape,
    or a number no double holds (those are returned as markers, not as numbers)."""
    bad_numbers: list[_BadNumber] = []

    def bad(text: str) -> _BadNumber:
        bad_numbers.append(_BadNumber(text))
        return bad_numbers[-1]

    def number(text: str) -> int | float | _BadNumber:
        value = float(text)
        return canonical_number(value) if math.isfinite(value) else bad(text)

    def integer(text: str) -> int | _BadNumber:
        if len(text) > _MAX_INT_DIGITS:
            return bad(text)
        value = int(text)
        return value if abs(value) <= DOUBLE_MAX else bad(text)

    value = json.loads(text, parse_float=number, parse_int=integer, parse_constant=bad)
    deep = bool(bad_numbers) or _SUSPICIOUS_ESCAPE.search(text) is not None
    if not deep and not text.isascii():  # a str (not decoded bytes) may hold raw surrogates
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            deep = True
    return value, deep


def parse_listing(body: bytes | str) -> Listing:
    """Parse a ``GET /v2/assets`` body; each asset is kept or rejected on its own."""
    items, deep = _load_array(body)
    return judge_assets(items, deep=deep)


def parse_assets_json(body: bytes | str) -> list[dict[str, Any]]:
    """Parse and validate strictly: the first bad asset raises. Returns the assets."""
    listing = parse_listing(body)
    if listing.rejected:
        raise listing.rejected[0]
    return listing.docs


def validate_assets(docs: Sequence[Any], *, deep: bool = True) -> None:
    """Raise AssetFormatError for the first bad asset; put the good ones in canonical form."""
    listing = judge_assets(docs, deep=deep)
    if listing.rejected:
        raise listing.rejected[0]


def judge_assets(items: Sequence[Any], *, deep: bool = True) -> Listing:
    """Validate each element (in place: ids and numbers are put in canonical form); an id that
    appears more than once rejects every element that carries it, as nobody can tell which is
    right. ``deep=False`` skips the per-value checks of strings and numbers, for items that
    ``load_json`` read and found clean."""
    valid: dict[int, dict[str, Any]] = {}
    rejected: dict[int, AssetFormatError] = {}
    indices_of: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        asset_id = readable_id(item)
        if asset_id is not None:
            indices_of.setdefault(asset_id, []).append(index)
        try:
            valid[index] = validate_asset(item, index, asset_id, deep=deep)
        except AssetFormatError as exc:
            rejected[index] = exc
    for asset_id, indices in indices_of.items():
        if len(indices) > 1:
            for index in indices:
                valid.pop(index, None)
                if index not in rejected:
                    others = ", ".join(f"[{i}]" for i in indices if i != index)
                    rejected[index] = AssetFormatError(
                        f"duplicate id, also at asset {others}; every asset with this id is left out",
                        index=index,
                        field="id",
                        asset_id=asset_id,
                    )
    held = sorted({exc.asset_id for exc in rejected.values() if exc.asset_id})
    return Listing(
        docs=[valid[i] for i in sorted(valid)],
        rejected=[rejected[i] for i in sorted(rejected)],
        held_ids=held,
        fetched=len(items),
    )


def readable_id(item: Any) -> str | None:
    """The element's id in canonical form, or None where there is no readable one."""
    if not isinstance(item, dict):
        return None
    text = item.get("id")
    if type(text) is not str:
        return None
    if _CANONICAL_UUID.fullmatch(text):
        return text
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _load_array(body: bytes | str) -> tuple[list[Any], bool]:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssetFormatError(f"body is not UTF-8 ({exc})") from None
    if not body.strip():
        raise AssetFormatError("empty document: expected a JSON array of assets")
    try:
        items, deep = load_json(body)
    except json.JSONDecodeError as exc:
        raise AssetFormatError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise AssetFormatError("JSON nested too deeply") from None
    if not isinstance(items, list):
        raise AssetFormatError(f"expected a JSON array of assets, got {type(items).__name__}")
    return items, deep


# --------------------------------------------------------------------------------------------
# one asset


def validate_asset(doc: Any, index: int, asset_id: str | None, *, deep: bool = True) -> dict[str, Any]:
    """Check one element whose ``readable_id`` is ``asset_id``; on success it is in canonical
    form (id, numbers) and returned. ``deep``: check every string and number in it too."""
    if not isinstance(doc, dict):
        raise AssetFormatError(f"expected a JSON object, got {type(doc).__name__}", index=index)

    def bad(message: str, field: str | None = None) -> AssetFormatError:
        return AssetFormatError(message, index=index, field=field, asset_id=asset_id)

    for key, value in (
        doc.items() if deep else ()
    ):  # every value the database stores, as PostgreSQL would judge it
        kind = type(value)
        if kind is str:  # most values: plain text, no canonical form to take
            problem = None if "\x00" not in value and value.isascii() else _text_problem(value)
        elif kind is bool or value is None:
            problem = None
        else:
            problem, doc[key] = _storable(value)  # replacing a key's value keeps the dict's size
        if problem is None and key not in _KNOWN_KEYS:
            problem = _text_problem(key)
        if problem is not None:
            raise bad(problem, key)
    for field in REQUIRED_FIELDS:
        if field not in doc:
            raise bad("required field is missing", field)
    for field in ("id", "symbol", "class", "exchange", "status"):
        if not isinstance(doc[field], str):
            raise bad(f"expected a string, got {doc[field]!r}", field)
    if asset_id is None:
        raise bad(f"not a UUID: {doc['id']!r}", "id")
    doc["id"] = asset_id
    if doc.get("name") is not None and not isinstance(doc["name"], str):
        raise bad(f"expected a string, got {doc['name']!r}", "name")
    for field, known, what in (
        ("status", STATUS_CODES, "status"),
        ("class", ASSET_CLASSES, "asset class"),
        ("exchange", EXCHANGES, "exchange"),
    ):
        if doc[field] not in known:
            raise bad(f"unknown {what} {doc[field]!r} (known: {sorted(known)})", field)
    for field, _bit in BOOL_FLAGS:
        if not isinstance(doc[field], bool):
            raise bad(f"expected true/false, got {doc[field]!r}", field)
    for field in MARGIN_FIELDS:
        problem = _margin_problem(doc.get(field))
        if problem is not None:
            raise bad(problem, field)
    attributes = doc.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, list) and all(isinstance(a, str) for a in attributes)
    ):
        raise bad(f"expected a list of strings, got {attributes!r}", "attributes")
    return doc


def _storable(value: Any) -> tuple[str | None, Any]:
    """(problem or None, the value in canonical form) for any JSON value, however nested."""
    if isinstance(value, str):
        return _text_problem(value), value
    if value is None or isinstance(value, bool):
        return None, value
    if isinstance(value, int):
        if abs(value) > DOUBLE_MAX:
            return f"number {value:.3e} is beyond a double's range", value
        return None, value
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"number {value!r} is refused: NaN, Infinity and numbers beyond a double's range", value
        return None, canonical_number(value)
    if isinstance(value, _BadNumber):
        text = value.text if len(value.text) <= 24 else f"{value.text[:20]}... ({len(value.text)} characters)"
        return f"number {text} is refused: NaN, Infinity and numbers beyond a double's range", value
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem, value[i] = _storable(item)
            if problem is not None:
                return problem, value
        return None, value
    if isinstance(value, dict):
        for key in list(value):
            problem = _text_problem(key)
            if problem is None:
                problem, value[key] = _storable(value[key])
            if problem is not None:
                return problem, value
        return None, value
    return f"not a JSON value: {type(value).__name__}", value


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (PostgreSQL cannot store it)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate, not valid Unicode"
    return None


def _margin_problem(value: Any) -> str | None:
    """Margins come as JSON numbers or decimal strings (Alpaca documents both); null is allowed."""
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass: true is not a margin of 1 %
        return f"expected a number or decimal string, got {value!r}"
    if isinstance(value, str):
        if _PLAIN_PERCENT.fullmatch(value):
            return None
        if len(value) > MAX_DECIMAL_TEXT or not _DECIMAL_TEXT.fullmatch(value):
            return f"expected a number or decimal string, got {value[:MAX_DECIMAL_TEXT]!r}"
        exact = Decimal(value)  # exact: "1e-20000" is not 0, though float() says so
    elif isinstance(value, int | float):
        if value == 0 or F32_TINY <= abs(value) <= F32_MAX:  # a finite number, as validated
            return None
        exact = Decimal(value)
    else:
        return f"expected a number or decimal string, got {value!r}"
    if exact != 0 and not F32_TINY <= abs(float(exact)) <= F32_MAX:
        return (
            f"margin {value!r} does not fit the record's f32 "
            f"(0, or {F32_TINY:.2g} to {F32_MAX:.3g} in magnitude)"
        )
    return None


def margin_number(value: Any) -> float:
    """A validated margin as a number for the record; null is NaN."""
    return math.nan if value is None else float(value)


def to_records(docs: Sequence[Mapping[str, Any]], *, updated_ns: int = 0) -> np.ndarray:
    """Validated listing objects as ``ASSET`` records: the margins' decimal strings become numbers."""
    return assets_to_records(
        [{**doc, **{field: margin_number(doc.get(field)) for field in MARGIN_FIELDS}} for doc in docs],
        updated_ns=updated_ns,
    )
