"""The exact-record check every ring test relies on must reject what it exists to catch: a short,
long or empty batch, a changed byte, a shifted start, another dtype."""
import numpy as np
import pytest

from ring_workers import check_ticks, make_ticks


def test_accepts_exactly_the_expected_records():
    check_ticks(make_ticks(5, 3), 5, 3)
    check_ticks(make_ticks(5, 3), 5)          # stream form: whatever came, from 5 on
    check_ticks(make_ticks(5, 0), 5, 0)       # nothing, when nothing is expected


@pytest.mark.parametrize("batch, start, n", [
    (make_ticks(0, 2), 0, 3),                 # short
    (make_ticks(0, 4), 0, 3),                 # long
    (make_ticks(0, 0), 0, None),              # empty stream read
    (make_ticks(1, 3), 0, 3),                 # shifted
], ids=["short", "long", "empty-stream-read", "shifted"])
def test_rejects_wrong_count_or_position(batch, start, n):
    with pytest.raises(AssertionError):
        check_ticks(batch, start, n)


@pytest.mark.parametrize("field", ["timestamp_ns", "symbol_id", "bid", "ask", "volume", "source", "flags",
                                   "spread_bps", "sequence"])
def test_rejects_a_change_in_any_field(field):
    batch = make_ticks(10, 4)
    batch[field][2] += 1
    with pytest.raises(AssertionError, match="record 12"):
        check_ticks(batch, 10, 4)


def test_rejects_another_dtype_of_the_same_size():
    raw = make_ticks(0, 2).view(np.dtype([("raw", "V32")]))
    with pytest.raises(AssertionError, match="dtype"):
        check_ticks(raw, 0, 2)
