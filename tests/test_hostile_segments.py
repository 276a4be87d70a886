"""Issue 9's hostile-segment suite: /dev/shm is world-writable, so whatever sits at a ring's name
may have been put there by someone else. Each case gives a ShmpipeError naming the ring, fast,
with no crash and no growth of /dev/shm (cases that could crash run in a child process)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import shmpipe
from shmpipe import _ring, dtypes, inventory, segments
from shmpipe import ring as ring_module
from shmpipe.records import TICK
from hardening_workers import poke
from isolation import run_isolated

OFFSETS = _ring.layout_offsets()
HUGE = 512 << 20


def _path(name: str) -> str:
    return f"/dev/shm/shmpipe.{name}"


def _make_ring(name: str, dtype=TICK, capacity: int = 8) -> bytes:
    """A real ring, closed again; returns its header bytes."""
    with shmpipe.Ring.create(name, dtype, capacity):
        pass
    with open(_path(name), "rb") as f:
        return f.read(_ring.DATA_OFFSET)


def _refused_fast(name: str, error=shmpipe.ShmpipeError, match: str | None = None, **kwargs) -> str:
    free_before = segments.free_bytes()
    started = time.monotonic()
    with pytest.raises(error) as err:
        shmpipe.Ring.open(name, **kwargs)
    elapsed = time.monotonic() - started
    assert isinstance(err.value, shmpipe.ShmpipeError)
    assert name in str(err.value)
    if match:
        assert match in str(err.value), str(err.value)
    # "Fast" means it did not sit out the grace open() gives a creator still stamping its header
    # (a segment nobody holds has none); the margin is for a loaded machine, not a speed claim.
    assert elapsed < ring_module._HALF_MADE_GRACE_S * 0.8, \
        f"refusing took {elapsed * 1000:.0f} ms: open() waited for a creator that does not exist"
    assert segments.free_bytes() >= free_before - (1 << 20), "opening grew /dev/shm"
    return str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a segment owned by another uid needs root")
def test_another_users_segment_is_refused(ring_name):
    _make_ring(ring_name)
    os.chown(_path(ring_name), 65534, 65534)
    _refused_fast(ring_name, shmpipe.RingPermissionError, match="uid 65534")
    with shmpipe.Ring.open(ring_name, allow_other_users=True) as ring:   # the documented opt-in
        assert ring.capacity == 8
    segments.unlink(ring_name)


def test_a_segment_others_may_write_is_refused(ring_name):
    _make_ring(ring_name)
    os.chmod(_path(ring_name), 0o666)
    _refused_fast(ring_name, shmpipe.RingPermissionError, match="0666")
    with shmpipe.Ring.open(ring_name, allow_other_users=True) as ring:
        assert ring.capacity == 8
    segments.unlink(ring_name)


def test_create_with_a_shared_mode_is_opened_with_the_opt_in(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8, mode=0o660):
        assert oct(os.stat(_path(ring_name)).st_mode & 0o777) == oct(0o660)
        _refused_fast(ring_name, shmpipe.RingPermissionError)
        with shmpipe.Ring.open(ring_name, allow_other_users=True):
            pass
    segments.unlink(ring_name)


def test_an_object_dtype_in_the_header_is_refused(ring_name):
    _make_ring(ring_name, np.dtype("<u8"))
    evil = np.dtype([("o", "O")])
    descr = dtypes.describe(evil).encode()
    poke(ring_name, OFFSETS["dtype_descr"], descr + b"\0")
    poke(ring_name, OFFSETS["config"] + 32, dtypes.fingerprint(evil).to_bytes(8, "little"))
    _refused_fast(ring_name, shmpipe.RingFormatError, match="object")
    segments.unlink(ring_name)


def test_a_truncated_file_is_refused(ring_name):
    header = _make_ring(ring_name)
    os.truncate(_path(ring_name), _ring.DATA_OFFSET + 3 * 32)    # records cut off
    _refused_fast(ring_name, shmpipe.RingFormatError, match="segment is")
    os.truncate(_path(ring_name), 100)                           # header cut off
    _refused_fast(ring_name, shmpipe.RingFormatError)
    assert header
    segments.unlink(ring_name)


def test_a_sparse_huge_junk_file_is_refused_without_touching_it(ring_name):
    fd = os.open(_path(ring_name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, HUGE)
    os.pwrite(fd, b"junk" * 64, 0)
    os.close(fd)
    _refused_fast(ring_name, shmpipe.RingFormatError, match="magic")
    segments.unlink(ring_name)


def test_a_sparse_huge_file_with_a_valid_header_is_refused(ring_name):
    """A ring's header copied into a sparse file: space was never reserved, so a write could
    SIGBUS when /dev/shm fills. Refused before it is mapped."""
    _make_ring(ring_name, TICK, 8)
    poke(ring_name, OFFSETS["config"] + 16, (1 << 24).to_bytes(8, "little"))      # capacity
    os.truncate(_path(ring_name), _ring.DATA_OFFSET + (1 << 24) * 32)            # 512 MiB, sparse
    _refused_fast(ring_name, shmpipe.RingFormatError, match="reserved")
    segments.unlink(ring_name)


def test_a_foreign_file_is_refused(ring_name):
    with open(_path(ring_name), "wb") as f:
        f.write(os.urandom(_ring.DATA_OFFSET * 2))
    os.chmod(_path(ring_name), 0o600)
    _refused_fast(ring_name, shmpipe.RingFormatError)
    segments.unlink(ring_name)


def test_a_header_rewritten_after_open_cannot_steer_the_reader(ring_name):
    from hardening_workers import rewrite_header_after_open
    assert run_isolated(rewrite_header_after_open, ring_name) == "ok"


def _survey_hostile(names: list[str]) -> list[tuple[str, str | None]]:
    return [(i.name, i.problem) for i in inventory.survey(names)]


def test_inspect_lists_hostile_segments_as_problems(ring_name):
    names = [ring_name + "-junk", ring_name + "-shared"]
    with open(_path(names[0]), "wb") as f:
        f.write(b"x" * 100)
    _make_ring(names[1])
    os.chmod(_path(names[1]), 0o666)
    try:
        found = dict(run_isolated(_survey_hostile, names))
        assert set(found) == set(names)
        assert all(found[n] and n in found[n] for n in names), found
    finally:
        for n in names:
            segments.unlink(n)
