"""What shmpipe segments exist on this host, and which of them anyone still uses.

"In use" comes from the OFD locks every open handle and every role holds (see _locks.h): the
kernel drops them when a process dies, so a crashed producer never keeps a name alive."""
from __future__ import annotations

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        finally:
            seg.close()
        stats, problem = None, None
        try:
            with Ring.open(name) as ring:
                stats = ring.stats()
        except ShmpipeError as exc:
            problem = str(exc)
        found.append(SegmentInfo(name, str(segments.SHM_DIR / (segments.PREFIX + name)), size,
                                 in_use, stats, problem))
    return found


def stale(infos: list[SegmentInfo]) -> list[SegmentInfo]:
    """Segments that no live process holds: every owner is dead (or there never was one)."""
    return [i for i in infos if not i.in_use]


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
