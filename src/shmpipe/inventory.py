"""What shmpipe segments exist on this host, and which of them anyone still uses.

"In use" comes from the OFD locks every open handle and every role holds (see _locks.h): the
kernel drops them when a process dies, so a crashed producer never keeps a name alive."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import _ring, segments
from .errors import RingNotFoundError, ShmpipeError


@dataclass
class SegmentInfo:
    name: str
    path: str
    size: int
    in_use: bool
    ring: dict[str, Any] | None   # Ring.stats() when it is a readable ring
    problem: str | None           # why it is not a readable ring, if it is not
    headerless: bool = False      # no magic yet: a ring being created, or junk
    age_s: float = 0.0            # since the segment was last modified

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A segment without a header this young may be a ring whose creator is still at work (and died
# before taking its lock, or is on an older shmpipe): `clean` leaves it alone until then.
YOUNG_HEADERLESS_S = 60.0


def survey(names: list[str] | None = None) -> list[SegmentInfo]:
    from .ring import Ring

    found = []
    for name in names if names is not None else segments.list_names():
        try:
            seg = segments.open_existing(name)
        except (RingNotFoundError, ShmpipeError):
            continue   # removed meanwhile, or not ours to read
        try:
            in_use = _ring.segment_in_use(seg.fd)
            size = seg.size
            # What a ring being created looks like: empty (just shm_open()ed) or full-size with
            # no magic yet. A file of any other size is junk however young it is.
            headerless = (size == 0 or size >= _ring.DATA_OFFSET) and \
                int.from_bytes(os.pread(seg.fd, 8, 0).ljust(8, b"\0"), "little") == 0
            age_s = max(0.0, time.time() - os.fstat(seg.fd).st_mtime)
        finally:
            seg.close()
        stats, problem = None, None
        try:
            with Ring.open(name) as ring:
                stats = ring.stats()
        except ShmpipeError as exc:
            problem = str(exc)
        found.append(SegmentInfo(name, str(segments.SHM_DIR / (segments.PREFIX + name)), size,
                                 in_use, stats, problem, headerless, round(age_s, 3)))
    return found


def stale(infos: list[SegmentInfo]) -> list[SegmentInfo]:
    """Segments that no live process holds: every owner is dead (or there never was one), less
    young header-less ones that may still be being created."""
    return [i for i in infos if not i.in_use and not (i.headerless and i.age_s < YOUNG_HEADERLESS_S)]


def remove(info: SegmentInfo) -> bool:
    """Unlink a segment if it is still unused right now; False if someone attached meanwhile."""
    try:
        seg = segments.open_existing(info.name)
    except RingNotFoundError:
        return False
    try:
        if _ring.segment_in_use(seg.fd):
            return False
        segments.unlink(info.name)
        return True
    except RingNotFoundError:
        return False
    finally:
        seg.close()


__all__ = ["SegmentInfo", "survey", "stale", "remove"]
