"""The ring header: write and read positions on separate 128-byte blocks, data page-aligned."""
from shmpipe import _ring


def test_positions_do_not_share_a_block():
    off = _ring.layout_offsets()
    blocks = {
        "write": off["producer.write_pos"] // 128,
        "read0": off["consumers"] // 128,
        "data_ready": off["data_ready"] // 128,
        "space_ready": off["space_ready"] // 128,
        "producer_info": off["producer_info"] // 128,
    }
    assert len(set(blocks.values())) == len(blocks), blocks
    assert off["consumer_stride"] == 128
    assert off["producer.write_pos"] % 128 == 0 and off["consumers"] % 128 == 0


def test_header_fits_before_page_aligned_data():
    off = _ring.layout_offsets()
    assert off["header"] <= off["data_offset"]
    assert off["data_offset"] % 4096 == 0
