"""The Alpaca listing rules (services/asset_sync/listing.py): every malformed assets fixture and
hostile input is rejected with an error naming the asset and field at fault, and the diff's
per-field comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shmpipe.asset_codec import AssetFormatError
from shmpipe_services.asset_sync.canonical import changed_fields
from shmpipe_services.asset_sync.listing import parse_assets_json
from test_asset_codec import _asset

ASSETS = Path(__file__).parent / "fixtures" / "assets"
KNOWN = json.loads((ASSETS / "known_answers_assets.json").read_text())


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
