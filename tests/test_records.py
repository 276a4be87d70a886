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
    assert records.ORDERBOOK_ENTRY.itemsize == 1664
    assert records.ASSET.itemsize % 8 == 0


def test_tick_round_trips_through_bytes():
    t = np.zeros(1, records.TICK)
    t["timestamp_ns"] = 1_718_116_200_000_000_000
    t["sequence"] = 0xFFFFFFFF
    raw = t.tobytes()
    assert raw[:8] == (1_718_116_200_000_000_000).to_bytes(8, "little")
    assert raw[28:32] == b"\xff\xff\xff\xff"


def test_level_update_is_layout_version_2():
    """DESIGN.md's LevelUpdate v2: f64 price and size, symbol_id @24, no sequence."""
    lu = records.LEVEL_UPDATE
    expected = {"timestamp_ns": ("<u8", 0), "price": ("<f8", 8), "size": ("<f8", 16), "symbol_id": ("<u4", 24),
                "side": ("u1", 28), "action": ("u1", 29), "source": ("u1", 30), "flags": ("u1", 31)}
    assert {name: (lu.fields[name][0].str.replace("|", ""), lu.fields[name][1]) for name in lu.names} == expected
    assert records.LEVEL_UPDATE_LAYOUT_VERSION == 2
    assert (records.ACTION_SET, records.ACTION_SNAPSHOT_BEGIN, records.ACTION_SNAPSHOT_END,
            records.ACTION_TRADE, records.ACTION_CHECKSUM) == (0, 1, 2, 3, 4)


def test_orderbook_entry_is_layout_version_2():
    """DESIGN.md's OrderbookEntry v2: f64 levels, published_ns @24, 1664 bytes (26 cache lines)."""
    ob = records.ORDERBOOK_ENTRY
    fields = {name: (ob.fields[name][0].base.str.replace("|", ""), ob.fields[name][1]) for name in ob.names}
    assert fields == {"timestamp_ns": ("<u8", 0), "symbol_id": ("<u4", 8), "exchange_id": ("<u4", 12),
                      "sequence": ("<u4", 16), "flags": ("u1", 20), "bid_count": ("u1", 21),
                      "ask_count": ("u1", 22), "published_ns": ("<u8", 24), "bids": ("<f8", 32),
                      "asks": ("<f8", 832)}
    assert ob.fields["bids"][0].shape == ob.fields["asks"][0].shape == (records.ORDERBOOK_DEPTH, 2)
    assert ob.itemsize == 1664 and records.ORDERBOOK_ENTRY_LAYOUT_VERSION == 2
    assert (records.BOOK_FLAG_INVALID, records.BOOK_FLAG_CROSSED, records.BOOK_FLAG_CHECKSUM_FAILED,
            records.BOOK_FLAG_GAP, records.BOOK_FLAG_STALE, records.BOOK_FLAG_UNVERIFIED) == (1, 2, 4, 8, 16, 32)
    assert records.LEVEL_FLAG_LAST == 16 and records.ACTION_INVALIDATE == 5


def test_orderbook_entry_gives_the_venues_numbers_back():
    """Version 1's f32 read a one-cent spread at 97,000 as 0.015625 and merged 131072.01 with .02."""
    e = np.zeros(1, records.ORDERBOOK_ENTRY)
    e["bids"][0, 0] = (97000.12, 0.13047207)
    e["asks"][0, 0] = (97000.13, 1234.56789012)
    e["bids"][0, 1] = (131072.01, 1)
    e["asks"][0, 1] = (131072.02, 1)
    assert round(float(e["asks"][0, 0, 0] - e["bids"][0, 0, 0]), 8) == 0.01
    assert f"{e['bids'][0, 0, 1]:.8f}" == "0.13047207" and f"{e['asks'][0, 0, 1]:.8f}" == "1234.56789012"
    assert e["bids"][0, 1, 0] != e["asks"][0, 1, 0]


def test_level_update_holds_eight_decimal_sizes_and_a_crc32_exactly():
    lu = np.zeros(2, records.LEVEL_UPDATE)
    lu[0]["size"] = 0.13047207          # an f32 would store 0.13047207891941071
    lu[1]["price"] = 3840501380          # a Kraken CRC32 in a checksum record
    lu[1]["action"] = records.ACTION_CHECKSUM
    assert f"{lu[0]['size']:.8f}" == "0.13047207"
    assert int(lu[1]["price"]) == 3840501380


# Version 1 of LevelUpdate (f32 size, a per-level sequence), as rings made before version 2 hold it.
LEVEL_UPDATE_V1 = np.dtype({
    "names": ["timestamp_ns", "symbol_id", "sequence", "price", "size", "side", "action", "source", "flags"],
    "formats": ["<u8", "<u4", "<u4", "<f8", "<f4", "u1", "u1", "u1", "u1"],
    "offsets": [0, 8, 12, 16, 24, 28, 29, 30, 31],
    "itemsize": 32,
})


def test_a_ring_of_version_1_level_updates_refuses_version_2(ring_name):
    """Same itemsize, different fields: the dtype fingerprint in the header tells them apart."""
    from shmpipe import DtypeMismatchError, Ring

    with Ring.create(ring_name, LEVEL_UPDATE_V1, 16) as ring:
        with pytest.raises(DtypeMismatchError, match=ring_name) as caught:
            Ring.open(ring_name, records.LEVEL_UPDATE)
        assert "sequence" in str(caught.value) and "'<f8'" in str(caught.value)
        ring.unlink()
