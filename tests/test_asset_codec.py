"""Asset codec: JSON -> ASSET records and back, UTF-8 cutting, enum tables, the AoS buffer,
and every malformed assets fixture (each must fail with an error naming what is wrong)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest

from shmpipe.asset_codec import (
    ASSET_FLAG_REMOVED,
    AssetFormatError,
    assets_to_records,
    changed_fields,
    cut_utf8,
    pack_aos,
    parse_assets_json,
    records_to_assets,
    unpack_aos,
)
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
    return parse_assets_json((ASSETS / "alpaca_assets_v1.json").read_bytes())


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


def test_removed_flag_does_not_collide_with_record_flags():
    all_bits = (
        ASSET_FLAG_TRADABLE
        | ASSET_FLAG_MARGINABLE
        | ASSET_FLAG_SHORTABLE
        | ASSET_FLAG_EASY_TO_BORROW
        | ASSET_FLAG_FRACTIONABLE
    )
    assert ASSET_FLAG_REMOVED & all_bits == 0 and ASSET_FLAG_REMOVED < 256


# ---------------------------------------------------------------------------------- bad input

BAD_FILES = {
    "assets_missing_required_field.json": r"asset \[2\] field 'symbol': required field is missing",
    "assets_wrong_types.json": r"asset \[1\] field 'tradable': expected true/false, got 'yes'",
    "assets_duplicate_ids.json": r"asset \[4\] field 'id': duplicate id c40195e6-3af4-4e1d-8274-420288ee0adc "
    r"\(first seen at asset \[1\]\)",
    "assets_unknown_status.json": r"asset \[0\] field 'status': unknown status 'delisted'",
    "assets_unknown_class.json": r"asset \[5\] field 'class': unknown asset class 'us_bond'",
    "assets_truncated.json": r"malformed JSON at line 1 column \d+",
    "empty.json": r"empty document",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_fixture_is_rejected_clearly(name):
    with pytest.raises(AssetFormatError, match=BAD_FILES[name]):
        parse_assets_json((ASSETS / "bad" / name).read_bytes())


def test_bad_fixture_facts_match_known_answers():
    bad = KNOWN["bad"]
    missing = json.loads((ASSETS / "bad" / "assets_missing_required_field.json").read_bytes())
    assert (
        bad["assets_missing_required_field.json"]["field"]
        not in missing[bad["assets_missing_required_field.json"]["index"]]
    )
    wrong = KNOWN["bad"]["assets_wrong_types.json"]["problems"][1]
    doc = json.loads((ASSETS / "bad" / "assets_wrong_types.json").read_bytes())
    fixed = [dict(d) for d in doc]
    fixed[1]["tradable"] = True  # with the first fault fixed the second one is reported
    with pytest.raises(
        AssetFormatError, match=rf"asset \[{wrong['index']}\] field '{wrong['field']}'.*'thirty'"
    ):
        parse_assets_json(json.dumps(fixed))


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{}", "expected a JSON array of assets, got dict"),
        ("[1]", r"asset \[0\]: expected a JSON object, got int"),
        (json.dumps([_asset(id="not-a-uuid")]), "not a UUID"),
        (json.dumps([_asset(exchange="LSE")]), "unknown exchange 'LSE'"),
        (json.dumps([_asset(symbol=5)]), r"field 'symbol': expected a string, got 5"),
        (json.dumps([_asset(margin_requirement_long=True)]), "expected a number or decimal string, got True"),
        (
            json.dumps([_asset(margin_requirement_short="NaN")]),
            "expected a number or decimal string, got 'NaN'",
        ),
        (json.dumps([_asset(attributes="ipo")]), r"field 'attributes': expected a list of strings"),
        (b"\xff\xfe[]", "not UTF-8"),
    ],
)
def test_more_bad_input(doc, message):
    with pytest.raises(AssetFormatError, match=message):
        parse_assets_json(doc)


def test_changed_fields_compares_json_values_not_python_equality():
    a = _asset()
    assert changed_fields(a, a) == []
    assert changed_fields(a, _asset(maintenance_margin_requirement=30.0)) == [
        "maintenance_margin_requirement"
    ]
    b = dict(a)
    del b["attributes"]
    assert changed_fields(a, {**b, "min_order_size": "1"}) == ["attributes", "min_order_size"]
