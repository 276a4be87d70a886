"""The library's Asset codec: mappings -> ASSET records and back, UTF-8 cutting, the AoS buffer.
(The Alpaca listing rules, validation and the diff, are tested in test_asset_listing.py.)"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest

from shmpipe.asset_codec import (
    ASSET_FLAG_REMOVED,
    MARGIN_FIELDS,
    AssetFormatError,
    cut_utf8,
    pack_aos,
    records_to_assets,
    unpack_aos,
)
from shmpipe.asset_codec import assets_to_records as _encode
from shmpipe.records import (
    ASSET,
    ASSET_FLAG_EASY_TO_BORROW,
    ASSET_FLAG_FRACTIONABLE,
    ASSET_FLAG_MARGINABLE,
    ASSET_FLAG_SHORTABLE,
    ASSET_FLAG_TRADABLE,
    ASSET_STATUS_ACTIVE,
    ASSET_TRUNCATED_NAME,
    ASSET_TRUNCATED_SYMBOL,
)

ASSETS = Path(__file__).parent / "fixtures" / "assets"
KNOWN = json.loads((ASSETS / "known_answers_assets.json").read_text())


@pytest.fixture(scope="module")
def v1_docs():
    return json.loads((ASSETS / "alpaca_assets_v1.json").read_bytes())


def assets_to_records(docs, **kwargs):
    """The encoder fed as its producers feed it: margins as numbers (the fixtures carry Alpaca's
    decimal strings, which the listing rules turn into numbers before encoding)."""
    numeric = [{**d, **{f: None if d.get(f) is None else float(d[f]) for f in MARGIN_FIELDS}} for d in docs]
    return _encode(numeric, **kwargs)


def _asset(**overrides):
    doc = {
        "id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
        "class": "us_equity",
        "exchange": "NASDAQ",
        "symbol": "AAPL",
        "name": "Apple Inc. Common Stock",
        "status": "active",
        "tradable": True,
        "marginable": True,
        "maintenance_margin_requirement": 30,
        "margin_requirement_long": "30",
        "margin_requirement_short": "30",
        "shortable": True,
        "easy_to_borrow": False,
        "fractionable": True,
        "attributes": ["has_options"],
    }
    doc.update(overrides)
    return doc


# ---------------------------------------------------------------------------------- UTF-8 cut


@pytest.mark.parametrize(
    "case", KNOWN["alpaca_assets"]["utf8_truncation"]["cases"], ids=lambda c: c["symbol"]
)
def test_cut_utf8_matches_known_answers(case, v1_docs):
    docs = {d["id"]: d for d in v1_docs}
    name = docs[case["id"]]["name"].encode("utf-8")
    assert len(name) == case["name_bytes"]
    for width in (16, 32, 48, 64, 96, 128):
        kept, truncated = cut_utf8(name, width)
        assert len(kept) == case[str(width)]["kept_bytes"], width
        assert truncated is case[str(width)]["truncated"], width
        kept.decode("utf-8")  # a cut inside a character would raise here


def test_names_whose_naive_cut_splits_a_character_stay_valid_utf8(v1_docs):
    split_symbols = KNOWN["alpaca_assets"]["utf8_truncation"]["names_where_naive_64_byte_cut_splits_a_char"]
    wanted = [d for d in v1_docs if d["symbol"] in split_symbols]
    assert len(wanted) == len(split_symbols)
    records = assets_to_records(wanted)
    for doc, record in zip(wanted, records):
        full = doc["name"].encode("utf-8")
        with pytest.raises(UnicodeDecodeError):
            full[:64].decode("utf-8")  # proves the fixture really is the hard case
        stored = record["name"]
        assert full.startswith(stored) and len(stored) < 64
        assert stored.decode("utf-8") == doc["name"][: len(stored.decode("utf-8"))]
        assert record["truncated"] & ASSET_TRUNCATED_NAME


def test_truncation_flags_count_matches_known_answers(v1_docs):
    records = assets_to_records(v1_docs)
    over_64 = KNOWN["alpaca_assets"]["v1"]["names_over_64_bytes"]
    assert int(((records["truncated"] & ASSET_TRUNCATED_NAME) != 0).sum()) == over_64
    assert not (records["truncated"] & ASSET_TRUNCATED_SYMBOL).any()


def test_long_symbol_sets_its_own_bit():
    record = assets_to_records([_asset(symbol="É" * 9)])[0]  # 18 bytes: the 9th É does not fit
    assert record["symbol"] == ("É" * 8).encode()
    assert record["truncated"] == ASSET_TRUNCATED_SYMBOL


# ---------------------------------------------------------------------------------- encoding


def test_record_fields_and_flags():
    doc = _asset(easy_to_borrow=True, marginable=False, margin_requirement_short="100")
    record = assets_to_records([doc], updated_ns=123)[0]
    assert bytes(record["id"]) == uuid.UUID(doc["id"]).bytes
    assert (
        record["symbol"] == b"AAPL"
        and record["exchange"] == b"NASDAQ"
        and record["asset_class"] == b"us_equity"
    )
    assert record["status"] == ASSET_STATUS_ACTIVE and record["updated_ns"] == 123
    assert record["flags"] == (
        ASSET_FLAG_TRADABLE | ASSET_FLAG_SHORTABLE | ASSET_FLAG_EASY_TO_BORROW | ASSET_FLAG_FRACTIONABLE
    )
    assert not record["flags"] & ASSET_FLAG_MARGINABLE
    assert (
        record["maintenance_margin_requirement"],
        record["margin_requirement_long"],
        record["margin_requirement_short"],
    ) == (30.0, 30.0, 100.0)
    assert record["truncated"] == 0


def test_null_name_and_margins_are_tolerated():
    record = assets_to_records([_asset(name=None, margin_requirement_long=None)])[0]
    assert record["name"] == b"" and math.isnan(record["margin_requirement_long"])


def test_round_trip_of_untruncated_assets(v1_docs):
    short = [d for d in v1_docs if len((d.get("name") or "").encode()) <= 64][:200]
    back = records_to_assets(assets_to_records(short))
    for doc, decoded in zip(short, back):
        for key in (
            "id",
            "class",
            "exchange",
            "symbol",
            "status",
            "tradable",
            "marginable",
            "shortable",
            "easy_to_borrow",
            "fractionable",
        ):
            assert decoded[key] == doc[key], key
        assert decoded["name"] == (doc.get("name") or "")
        assert decoded["margin_requirement_long"] == float(doc["margin_requirement_long"])


def test_known_counts_from_records(v1_docs):
    records = assets_to_records(v1_docs)
    v1 = KNOWN["alpaca_assets"]["v1"]
    assert len(records) == v1["count"]
    values, counts = np.unique(records["exchange"], return_counts=True)
    assert {v.decode(): int(c) for v, c in zip(values, counts)} == v1["by_exchange"]
    assert int(((records["flags"] & ASSET_FLAG_TRADABLE) != 0).sum()) == v1["tradable"]
    assert int((records["status"] == ASSET_STATUS_ACTIVE).sum()) == v1["by_status"]["active"]


# ---------------------------------------------------------------------------------- AoS buffer


def test_aos_pack_and_zero_copy_unpack(v1_docs):
    records = assets_to_records(v1_docs[:10])
    buffer = pack_aos(records)
    assert len(buffer) == 4 + 10 * ASSET.itemsize == 4 + 10 * 152
    assert int.from_bytes(buffer[:4], "little") == 10
    view = unpack_aos(buffer)
    assert np.array_equal(view, records)
    assert not view.flags.owndata  # a view of the buffer, not a copy


def test_aos_empty_and_bad_lengths():
    assert len(unpack_aos(pack_aos(np.zeros(0, dtype=ASSET)))) == 0
    good = pack_aos(assets_to_records([_asset()]))
    with pytest.raises(AssetFormatError, match="shorter than its 4-byte count"):
        unpack_aos(b"\x01\x00")
    with pytest.raises(AssetFormatError, match="says 1 records"):
        unpack_aos(good[:-1])
    with pytest.raises(AssetFormatError, match="says 1 records"):
        unpack_aos(good + b"x")
    assert len(unpack_aos(good + b"sidecar", allow_trailing=True)) == 1


def test_encoder_does_not_parse_margin_text():
    with pytest.raises(
        AssetFormatError, match=r"asset \[0\] field 'margin_requirement_long': expected a number"
    ):
        _encode([_asset()])  # "30": text is the listing's business, not the record's


def test_removed_flag_does_not_collide_with_record_flags():
    all_bits = (
        ASSET_FLAG_TRADABLE
        | ASSET_FLAG_MARGINABLE
        | ASSET_FLAG_SHORTABLE
        | ASSET_FLAG_EASY_TO_BORROW
        | ASSET_FLAG_FRACTIONABLE
    )
    assert ASSET_FLAG_REMOVED & all_bits == 0 and ASSET_FLAG_REMOVED < 256
