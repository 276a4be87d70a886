"""The Alpaca listing rules (services/asset_sync/listing.py).

Every malformed fixture and hostile input is rejected with an error naming the asset's index, id
and field; a bad asset is left out on its own (quarantine) while the rest of the listing stays
good; ids in any UUID spelling become one canonical form; numbers become the canonical form the
database would store; and the fast path (no per-value walk for clean text) judges exactly as the
slow one.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpipe.asset_codec import AssetFormatError
from shmpipe_services.asset_sync.canonical import canonical_json, changed_fields, loads
from shmpipe_services.asset_sync.listing import judge_assets, parse_assets_json, parse_listing, to_records
from test_asset_codec import _asset

ASSETS = Path(__file__).parent / "fixtures" / "assets"
KNOWN = json.loads((ASSETS / "known_answers_assets.json").read_text())
AAPL_ID = _asset()["id"]


def listing_of(*docs, raw: str | None = None):
    return parse_listing(raw if raw is not None else json.dumps(list(docs)))


def only_problem(listing) -> AssetFormatError:
    assert len(listing.rejected) == 1, listing.rejected
    return listing.rejected[0]


# ---------------------------------------------------------------------------------- fixtures

BAD_FILES = {
    "assets_missing_required_field.json": r"asset \[2\] id [0-9a-f-]{36} field 'symbol': "
    r"required field is missing",
    "assets_wrong_types.json": r"asset \[1\] id [0-9a-f-]{36} field 'tradable': "
    r"expected true/false, got 'yes'",
    "assets_duplicate_ids.json": r"asset \[1\] id c40195e6-3af4-4e1d-8274-420288ee0adc field 'id': "
    r"duplicate id, also at asset \[4\]; every asset with this id is left out",
    "assets_unknown_status.json": r"asset \[0\] id [0-9a-f-]{36} field 'status': unknown status 'delisted'",
    "assets_unknown_class.json": r"asset \[5\] id [0-9a-f-]{36} field 'class': unknown asset class 'us_bond'",
    "assets_truncated.json": r"malformed JSON at line 1 column \d+",
    "empty.json": r"empty document",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_fixture_is_rejected_clearly(name):
    with pytest.raises(AssetFormatError, match=BAD_FILES[name]):
        parse_assets_json((ASSETS / "bad" / name).read_bytes())


def _known_bad_indices(name: str) -> set[int]:
    facts = KNOWN["bad"][name]
    if "indices" in facts:
        return set(facts["indices"])
    if "problems" in facts:
        return {p["index"] for p in facts["problems"]}
    return {facts["index"]}


@pytest.mark.parametrize(
    "name",
    [
        "assets_missing_required_field.json",
        "assets_wrong_types.json",
        "assets_duplicate_ids.json",
        "assets_unknown_status.json",
        "assets_unknown_class.json",
    ],
)
def test_a_bad_asset_is_left_out_and_the_others_kept(name):
    """Quarantine: exactly the known bad elements are rejected, every other one is kept, and the
    readable ids of the rejected ones are held (never counted as removed)."""
    items = json.loads((ASSETS / "bad" / name).read_bytes())
    listing = parse_listing((ASSETS / "bad" / name).read_bytes())
    bad = _known_bad_indices(name)
    assert {e.index for e in listing.rejected} == bad
    assert [d["id"] for d in listing.docs] == [items[i]["id"] for i in range(len(items)) if i not in bad]
    assert listing.fetched == len(items)
    assert listing.held_ids == sorted({items[i]["id"] for i in bad})
    for problem in listing.rejected:
        assert problem.asset_id == items[problem.index]["id"] and problem.field


def test_bad_fixture_facts_match_known_answers():
    bad = KNOWN["bad"]
    missing = json.loads((ASSETS / "bad" / "assets_missing_required_field.json").read_bytes())
    assert (
        bad["assets_missing_required_field.json"]["field"]
        not in missing[bad["assets_missing_required_field.json"]["index"]]
    )
    wrong = KNOWN["bad"]["assets_wrong_types.json"]["problems"][1]
    listing = parse_listing((ASSETS / "bad" / "assets_wrong_types.json").read_bytes())
    second = listing.rejected[1]  # each asset is judged: the second fault is reported too
    assert (second.index, second.field) == (wrong["index"], wrong["field"])
    assert "'thirty'" in str(second)


# ---------------------------------------------------------------------------------- whole document


@pytest.mark.parametrize(
    "body, message",
    [
        ("{}", "expected a JSON array of assets, got dict"),
        ("", "empty document"),
        (b"\xff\xfe[]", "not UTF-8"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_document_problems_reject_the_whole_listing(body, message):
    with pytest.raises(AssetFormatError, match=message):
        parse_listing(body)


def test_an_empty_array_is_a_listing_of_nothing():
    """Judged here as valid; refusing it is the sync's removal guard's job (removal_guard.py)."""
    listing = parse_listing("[]")
    assert (listing.docs, listing.rejected, listing.fetched) == ([], [], 0)


# ---------------------------------------------------------------------------------- hostile values

HOSTILE = [
    # (what the raw JSON text of the asset replaces, field named, message)
    ('"maintenance_margin_requirement": NaN', "maintenance_margin_requirement", "number NaN is refused"),
    ('"maintenance_margin_requirement": Infinity', "maintenance_margin_requirement", "Infinity is refused"),
    ('"maintenance_margin_requirement": -Infinity', "maintenance_margin_requirement", "-Infinity is refused"),
    ('"maintenance_margin_requirement": 1e400', "maintenance_margin_requirement", "number 1e400 is refused"),
    (
        '"maintenance_margin_requirement": 1e39',
        "maintenance_margin_requirement",
        "does not fit the record's f32",
    ),
    (
        '"maintenance_margin_requirement": 1e-39',
        "maintenance_margin_requirement",
        "does not fit the record's f32",
    ),
    ('"maintenance_margin_requirement": true', "maintenance_margin_requirement", "expected a number"),
    ('"margin_requirement_long": "1e39"', "margin_requirement_long", "does not fit the record's f32"),
    ('"margin_requirement_long": "1e-20000"', "margin_requirement_long", "expected a number or decimal"),
    ('"margin_requirement_long": "1e-2000"', "margin_requirement_long", "does not fit the record's f32"),
    ('"margin_requirement_long": "NaN"', "margin_requirement_long", "expected a number or decimal string"),
    ('"margin_requirement_long": "Infinity"', "margin_requirement_long", "expected a number or decimal"),
    ('"margin_requirement_long": "1_000"', "margin_requirement_long", "expected a number or decimal string"),
    ('"margin_requirement_long": " 30"', "margin_requirement_long", "expected a number or decimal string"),
    ('"margin_requirement_long": "thirty"', "margin_requirement_long", "expected a number or decimal string"),
    ('"margin_requirement_long": "' + "1" * 65 + '"', "margin_requirement_long", "expected a number"),
    ('"name": "Apple\\u0000Inc"', "name", "contains a NUL character"),
    ('"symbol": "\\u0000"', "symbol", "contains a NUL character"),
    ('"attributes": ["ok", "bad\\u0000"]', "attributes", "contains a NUL character"),
    ('"extra": {"deep": ["\\u0000"]}', "extra", "contains a NUL character"),
    ('"ke\\u0000y": 1', "ke\x00y", "contains a NUL character"),
    ('"name": "\\ud800"', "name", "lone UTF-16 surrogate"),
    ('"extra": {"\\udfff": 1}', "extra", "lone UTF-16 surrogate"),
    ('"extra": [1e999]', "extra", "number 1e999 is refused"),
    ('"extra": ' + "9" * 400, "extra", "400 characters"),
    ('"extra": -' + "9" * 309, "extra", "beyond a double's range"),
    ('"id": "not-a-uuid"', "id", "not a UUID: 'not-a-uuid'"),
    ('"id": 5', "id", "expected a string, got 5"),
    ('"exchange": "LSE"', "exchange", "unknown exchange 'LSE'"),
    ('"symbol": 5', "symbol", "expected a string, got 5"),
    ('"attributes": "ipo"', "attributes", "expected a list of strings"),
]


def _asset_text(replacement: str) -> str:
    """AAPL's JSON with one "key": value pair replaced or added, as raw text (NaN, 1e400 and
    escapes cannot be written by json.dumps)."""
    key = replacement.split(":", 1)[0].strip()
    doc = {k: v for k, v in _asset().items() if json.dumps(k) != key}
    body = json.dumps(doc)
    return body[:-1] + ", " + replacement + "}"


@pytest.mark.parametrize("replacement, field, message", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_value_rejects_its_asset_naming_index_id_and_field(replacement, field, message):
    good = _asset(id=str(uuid.uuid4()), symbol="MSFT")
    listing = listing_of(raw="[" + json.dumps(good) + ", " + _asset_text(replacement) + "]")
    problem = only_problem(listing)
    assert (problem.index, problem.field) == (1, field)
    assert message in str(problem)
    if field != "id":  # the asset is still identified: held, so never counted as removed
        assert problem.asset_id == AAPL_ID and f"asset [1] id {AAPL_ID} field {field!r}: " in str(problem)
        assert listing.held_ids == [AAPL_ID]
    assert [d["id"] for d in listing.docs] == [good["id"]]


def test_raw_lone_surrogate_in_a_str_body_is_rejected():
    """A str body (not bytes) can hold a surrogate without any escape."""
    body = json.dumps([_asset(name="bad \ud800")], ensure_ascii=False)
    problem = only_problem(parse_listing(body))
    assert problem.field == "name" and "surrogate" in str(problem)


ACCEPTED_MARGINS = ["0", "-0.0", "30", "0.25", "3.4e38", "1.2e-38", "100.000", "+5", ".5", "5.", "1E+2"]


@pytest.mark.parametrize("margin", ACCEPTED_MARGINS)
def test_margin_text_at_the_edges_is_accepted(margin):
    listing = listing_of(_asset(margin_requirement_long=margin))
    assert not listing.rejected
    assert listing.docs[0]["margin_requirement_long"] == margin  # the database keeps the text
    assert to_records(listing.docs)[0]["margin_requirement_long"] == pytest.approx(float(margin), rel=1e-6)


# ---------------------------------------------------------------------------------- UUIDs

CANONICAL = "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415"


@pytest.mark.parametrize(
    "spelling",
    [
        CANONICAL,
        CANONICAL.upper(),
        "{" + CANONICAL + "}",
        "urn:uuid:" + CANONICAL,
        CANONICAL.replace("-", ""),
        "{" + CANONICAL.replace("-", "").upper() + "}",
    ],
)
def test_uuid_spellings_are_normalised(spelling):
    listing = listing_of(_asset(id=spelling))
    assert not listing.rejected and listing.docs[0]["id"] == CANONICAL
    assert bytes(to_records(listing.docs)[0]["id"]) == uuid.UUID(CANONICAL).bytes


@pytest.mark.parametrize("spelling", ["", "b0b6dd9d", CANONICAL + "0", "urn:uuid:xyz", " " + CANONICAL])
def test_unreadable_ids_are_rejected(spelling):
    problem = only_problem(listing_of(_asset(id=spelling)))
    assert problem.field == "id" and "not a UUID" in str(problem) and problem.asset_id is None


def test_one_id_in_two_spellings_is_a_duplicate():
    listing = listing_of(_asset(), _asset(id="{" + CANONICAL.upper() + "}"))
    assert not listing.docs and {e.index for e in listing.rejected} == {0, 1}
    assert listing.held_ids == [CANONICAL]


# ---------------------------------------------------------------------------------- canonical numbers


def test_numbers_take_the_form_the_database_stores():
    """jsonb stores numbers as numeric: 1e16 comes back as 10000000000000000, 30.0 equals 30."""
    raw = _asset_text('"extra": [1e16, 30.0, -0.0, 1.0e2, 1.5e300, 0.1, 1.5e-7, 7]')
    (doc,) = parse_listing("[" + raw + "]").docs
    assert doc["extra"] == [10**16, 30, 0, 100, 15 * 10**299, 0.1, 1.5e-7, 7]
    assert [type(v) for v in doc["extra"]] == [int, int, int, int, int, float, float, int]
    # what PostgreSQL returns for that text reads back to the same canonical text
    jsonb_text = '{"extra": [10000000000000000, 30, 0, 100, 15' + "0" * 299 + ", 0.1, 0.00000015, 7]}"
    assert canonical_json({**doc, **loads(jsonb_text)}) == canonical_json(doc)


def test_changed_fields_compares_canonical_json_values():
    a = listing_of(_asset()).docs[0]
    assert changed_fields(a, a) == []
    same_value = parse_listing("[" + _asset_text('"maintenance_margin_requirement": 30.0') + "]").docs[0]
    assert changed_fields(a, same_value) == []  # 30 and 30.0 are one number, as in jsonb
    assert changed_fields(a, _asset(tradable=1)) == ["tradable"]  # but true is not 1
    assert changed_fields(a, _asset(maintenance_margin_requirement="30")) == [
        "maintenance_margin_requirement"
    ]
    b = dict(a)
    del b["attributes"]
    assert changed_fields(a, {**b, "min_order_size": "1"}) == ["attributes", "min_order_size"]


# ---------------------------------------------------------------------------------- fast path = slow path

_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(name=_TEXT, extra=st.lists(_TEXT, max_size=3), ascii_only=st.booleans())
def test_fast_path_judges_as_the_per_value_walk(name, extra, ascii_only):
    """parse_listing skips the per-value walk for text without NUL/surrogate escapes; it must
    reject exactly the assets that the full walk (deep=True) rejects, however the JSON is written."""
    doc = _asset(name=name, attributes=extra)
    body = json.dumps([doc], ensure_ascii=ascii_only)
    fast = parse_listing(body)
    slow = judge_assets([json.loads(body)[0]], deep=True)
    assert [str(e) for e in fast.rejected] == [str(e) for e in slow.rejected]
    storable = all("\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in [name, *extra])
    assert (not fast.rejected) == storable
