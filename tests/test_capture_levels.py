"""The compiled per-level normaliser (services/capture/_levels.pyx) against the Python code it
replaces: the same bytes for every level, the same errors, the same nanoseconds for every time."""
from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpipe.records import ACTION_CHECKSUM, ACTION_SET, ACTION_SNAPSHOT_BEGIN, ACTION_SNAPSHOT_END, LEVEL_UPDATE
from shmpipe_services.capture import _levels, coinbase, kraken
from shmpipe_services.capture.feed_parser import BadValue, check_level
from shmpipe_services.capture.record_batch import pack_level
from shmpipe_services.capture.timestamps import rfc3339_ns


def _kraken_levels(pairs):
    return [kraken.BookLevel(price=msgspec.Raw(p.encode()), qty=msgspec.Raw(q.encode())) for p, q in pairs]


def _python_kraken(bids, asks, ts, sid, flags, snapshot, checksum):
    records = []
    if snapshot:
        records.append(pack_level(ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_BEGIN, 5, flags))
        flags = 0
    for side, levels in ((0, bids), (1, asks)):
        for level in levels:
            price, size = float(level.price), float(level.qty)
            check_level(price, size)
            records.append(pack_level(ts, price, size, sid, side, ACTION_SET, 5, flags))
            flags = 0
    if snapshot:
        records.append(pack_level(ts, 0.0, 0.0, sid, 0, ACTION_SNAPSHOT_END, 5, 0))
    records.append(pack_level(ts, float(checksum & 0xFFFFFFFF), 0.0, sid, 0, ACTION_CHECKSUM, 5, flags))
    return b"".join(records)


@pytest.mark.parametrize("snapshot", [False, True])
@pytest.mark.parametrize("flags", [0, 8])
def test_kraken_book_records_equal_the_python_ones(snapshot, flags):
    bids = _kraken_levels([("66991.7", "0.14285402"), ("66990.7", "0.00000000"), ("1e2", "3")])
    asks = _kraken_levels([("66994.7", "0.28672429")])
    out = bytearray(b"x" * 32)     # appends after what is there
    _levels.append_kraken_book(out, bids, asks, 1718116200048000000, 7, 5, flags, snapshot, 3840501380)
    assert bytes(out[32:]) == _python_kraken(bids, asks, 1718116200048000000, 7, flags, snapshot, 3840501380)
    recs = np.frombuffer(bytes(out[32:]), LEVEL_UPDATE)
    assert recs["action"][-1] == ACTION_CHECKSUM and recs["price"][-1] == 3840501380
    # an empty update still carries its checksum, with the gap flag
    out = bytearray()
    _levels.append_kraken_book(out, [], [], 1, 2, 5, flags, False, -1)
    assert bytes(out) == _python_kraken([], [], 1, 2, flags, False, -1)


@pytest.mark.parametrize("price, qty, error", [
    ("0", "1", BadValue), ("-1.5", "1", BadValue), ("1", "-0.1", BadValue), ("1e400", "1", BadValue),
    ('"1.5"', "1", ValueError), ("true", "1", ValueError), ("null", "1", ValueError),
    ("1." + "1" * 80, "1", None),   # longer than the compiled buffer: the slow path, still right
    ("1" * 80, "1", BadValue),      # 1.1e79: a finite f64 no market has (issue 21)
])
def test_kraken_bad_levels_raise_like_python_and_leave_the_batch_alone(price, qty, error):
    bids = _kraken_levels([("5.5", "1"), (price, qty)])
    out = bytearray(b"keep")
    if error is None:
        _levels.append_kraken_book(out, bids, [], 1, 1, 5, 0, False, 0)
        assert bytes(out[4:]) == _python_kraken(bids, [], 1, 1, 0, False, 0)
        return
    with pytest.raises(error):
        _python_kraken(bids, [], 1, 1, 0, False, 0)
    with pytest.raises(error):
        _levels.append_kraken_book(out, bids, [], 1, 1, 5, 0, False, 0)
    assert out == bytearray(b"keep")


def _coinbase_levels(rows):
    return [coinbase.L2Level(side=s, event_time=t, price_level=p, new_quantity=q) for s, t, p, q in rows]


def test_coinbase_updates_equal_the_python_ones():
    rows = [("bid", "2024-06-11T14:30:00.048123Z", 67012.84, 0.91024878),
            ("offer", "2024-06-11T14:30:00.048123Z", 67012.94, 0.0),
            ("offer", "2024-06-11T14:30:01Z", 67013.06, 0.1522232)]
    out = bytearray()
    ts = _levels.append_coinbase_updates(out, _coinbase_levels(rows), 3, 4, 8)
    expected, flags = [], 8
    for side, t, p, q in rows:
        expected.append(pack_level(rfc3339_ns(t), p, q, 3, coinbase.SIDES[side], ACTION_SET, 4, flags))
        flags = 0
    assert bytes(out) == b"".join(expected) and ts == rfc3339_ns(rows[-1][1])
    assert _levels.append_coinbase_updates(bytearray(), [], 3, 4, 0) == 0


@pytest.mark.parametrize("row", [("bid", "2024-06-11T14:30:00Z", float("nan"), 1.0),
                                 ("bid", "2024-06-11T14:30:00Z", 1.0, float("inf")),
                                 ("bid", "not a time", 1.0, 1.0)])
def test_coinbase_bad_levels_raise_and_leave_the_batch_alone(row):
    out = bytearray(b"keep")
    good = ("offer", "2024-06-11T14:30:00Z", 2.0, 1.0)
    with pytest.raises(ValueError):
        _levels.append_coinbase_updates(out, _coinbase_levels([good, row]), 1, 4, 0)
    assert out == bytearray(b"keep")


@pytest.mark.parametrize("text", [
    "2024-06-11T14:30:00.150435272Z", "2024-06-11T14:30:00Z", "2024-06-11T14:30:00.1Z",
    "1970-01-01T00:00:00Z", "2000-02-29T23:59:59.999999999Z", "2100-12-31T00:00:00.5Z",
    "2024-06-11t14:30:00Z", "2024-06-11 14:30:00Z", "2024-06-11T14:30:00.150435272123Z",
    "2024-06-11T14:30:00+02:00", "2024-06-11T14:30:00.25-05:30",
])
def test_rfc3339_compiled_equals_python(text):
    assert _levels.rfc3339_ns(text) == rfc3339_ns(text)


@pytest.mark.parametrize("text", [
    "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-04-31T00:00:00Z", "0000-01-01T00:00:00Z",
    "2024-06-11T24:00:00Z", "2024-06-11T14:30:60Z", "2024-06-11T14:30:00.Z", "2024-06-11T14:30:0xZ",
    "2024-06-11T14:30:00", "garbage garbage garbage", "",
])
def test_rfc3339_bad_times_raise_like_python(text):
    with pytest.raises(ValueError):
        rfc3339_ns(text)
    with pytest.raises(ValueError):
        _levels.rfc3339_ns(text)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
       st.integers(0, 9), st.integers(0, 999_999_999))
def test_rfc3339_any_date(when, digits, fraction):
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if len(text) != 19:        # years before 1000 print with fewer digits on some platforms
        text = f"{when.year:04d}" + text[text.index("-"):]
    if digits:
        text += "." + str(fraction).zfill(9)[:digits]
    text += "Z"
    assert _levels.rfc3339_ns(text) == rfc3339_ns(text)
