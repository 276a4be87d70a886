"""The compiled acquire/release helpers that the registry and the journal use on shared files."""
import mmap
import os

import numpy as np
import pytest

from shmpipe import _ring
from shmpipe.errors import InvalidArgumentError


def test_release_store_then_acquire_load_round_trips():
    with mmap.mmap(-1, 4096) as mm:
        _ring.store_release_u64(mm, 128, 2**64 - 1)
        _ring.store_release_u32(mm, 4, 0xDEADBEEF)
        assert _ring.load_acquire_u64(mm, 128) == 2**64 - 1
        assert _ring.load_acquire_u32(mm, 4) == 0xDEADBEEF
        view = np.frombuffer(mm, np.uint8)
        assert _ring.load_acquire_u64(view, 128) == 2**64 - 1      # any buffer: numpy, memmap
        del view


@pytest.mark.parametrize("offset", [-8, 4, 4090, 4096])
def test_a_word_outside_the_buffer_or_misaligned_is_refused(offset):
    with mmap.mmap(-1, 4096) as mm:
        with pytest.raises(InvalidArgumentError,
                           match=f"no aligned 8-byte word at offset {offset} of a 4096-byte"):
            _ring.load_acquire_u64(mm, offset)
        with pytest.raises(InvalidArgumentError, match="no aligned 8-byte word"):
            _ring.store_release_u64(mm, offset, 1)


def test_a_read_only_buffer_cannot_be_stored_to():
    with pytest.raises(BufferError):
        _ring.store_release_u64(bytes(16), 0, 1)
    assert _ring.load_acquire_u64(bytes(range(16)), 8) == int.from_bytes(bytes(range(8, 16)), "little")


def test_byte_locks_exclude_other_open_files_and_time_out(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 8)
    a, b = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        assert _ring.lock_byte(a, 0, 1.0)
        assert not _ring.try_lock_byte(b, 0)
        assert not _ring.lock_byte(b, 0, 0.02)
        assert _ring.try_lock_byte(b, 1)                 # another byte is another lock
        _ring.unlock_byte(a, 0)
        assert _ring.lock_byte(b, 0, 0.0)
    finally:
        os.close(a)
        os.close(b)
