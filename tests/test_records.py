"""The numpy dtypes and the C structs of _layout.h must agree byte for byte."""
import numpy as np
import pytest

from shmpipe import _ring, records

CASES = {
    "tick": records.TICK,
    "level_update": records.LEVEL_UPDATE,
    "orderbook_entry": records.ORDERBOOK_ENTRY,
    "asset": records.ASSET,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dtype_matches_c_struct(name):
    c_side = _ring.record_layouts()[name]
    dt = CASES[name]
    assert dt.itemsize == c_side["itemsize"]
    for field, offset in c_side.items():
        if field == "itemsize":
            continue
        assert dt.fields[field][1] == offset, f"{name}.{field}"
    # Every dtype field is also in the C struct (nothing only one side knows about).
    assert set(dt.names) == set(c_side) - {"itemsize"}


def test_documented_sizes():
    assert records.TICK.itemsize == 32
    assert records.LEVEL_UPDATE.itemsize == 32
    assert records.ORDERBOOK_ENTRY.itemsize == 832
    assert records.ASSET.itemsize % 8 == 0


def test_tick_round_trips_through_bytes():
    t = np.zeros(1, records.TICK)
    t["timestamp_ns"] = 1_718_116_200_000_000_000
    t["sequence"] = 0xFFFFFFFF
    raw = t.tobytes()
    assert raw[:8] == (1_718_116_200_000_000_000).to_bytes(8, "little")
    assert raw[28:32] == b"\xff\xff\xff\xff"
