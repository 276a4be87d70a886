"""Live counters one process publishes and any other process of the same user reads.

    pub = stats.publish("capture-1", ["messages", "bytes", "latency_p99_us"])
    pub.update({"messages": 10, "bytes": 4096})                 # /dev/shm/shmpipe-stats.capture-1
    stats.read("capture-1") -> {"name", "live", "pid", "started_ns", "updated_ns", "counters": {...},
                                "gauges": ["latency_p99_us"]}
    pub.close()                                                 # removes the segment

The segment is a few u64 words: a header, one word per field, then the field names as JSON (so a
reader needs no schema of its own). Each field is a counter (only goes up: a rate means something)
or a gauge (a level: a latency, a lag, a flag); ``publish(..., gauges=[...])`` says which, and
without it :func:`looks_like_gauge` decides by the name. The names are stored as
``{"fields": [...], "gauges": [...]}`` (a plain list, as older publishers wrote, is all
counters). The publisher writes each word with a release store and the reader reads it with an
acquire load (the compiled helpers the rings use), so a reader never sees a torn word; fields are
independent words, not one snapshot, which suits monotonic counters.

Liveness: the publisher holds an OFD lock on byte 0 of the segment for its whole life. The kernel
drops it when the publisher dies (kill -9 included), so ``read`` reports a segment whose lock it can
take as ``live: False`` -- the numbers are the last ones published, not trusted as current -- and a
new publisher of the same name replaces such a segment rather than refusing it.
"""
from __future__ import annotations

import json
import mmap
import os
import stat
import time

import posix_ipc

from . import _ring, segments
from .errors import InvalidArgumentError, ShmpipeError

SHM_PREFIX = "shmpipe-stats."
MAGIC = 0x5354415453504D53            # "SMPSTATS"
VERSION = 1
_MAGIC, _VERSION, _NFIELDS, _NAMES_LEN, _PID, _STARTED, _UPDATED = (8 * i for i in range(7))
FIELDS_OFFSET = 64
_LOCK_BYTE = 0
MAX_FIELDS = 256


class StatsBusyError(ShmpipeError, FileExistsError):
    """A live process already publishes stats under this name."""


class StatsFormatError(ShmpipeError, ValueError):
    """The segment is not a stats segment this version can read."""


def segment_path(name: str) -> str:
    return f"/dev/shm/{SHM_PREFIX}{name}"


def _shm_name(name: str) -> str:
    return "/" + SHM_PREFIX + segments.validate_name(name, "stats")


def _owner_alive(fd: int) -> bool:
    """True while the publisher holds its lock; our own probe lock is released at once. (Two readers
    probing the same dead segment at the same instant can see each other's probe as an owner: a
    transient "live" that the next read corrects, never a live publisher reported dead.)"""
    if _ring.try_lock_byte(fd, _LOCK_BYTE):
        _ring.unlock_byte(fd, _LOCK_BYTE)
        return False
    return True


# Field names that are levels, not running totals, in shmpipe's own services: a latency
# percentile, a lag, a backlog, a rate already computed, an up/paused flag, a count of things now.
_GAUGE_PREFIXES = ("latency_", "lag_", "pending_")
_GAUGE_SUFFIXES = ("_per_s", "_now", "_up", "_us", "_ms", "_lag", "_fill")
_GAUGE_NAMES = {"paused", "books", "fill", "lag", "up", "depth"}


def looks_like_gauge(field: str) -> bool:
    """True for a field whose name says it is a level (``latency_p99_us``, ``lag_records``,
    ``redis_up``, ``books_invalid_now``): its rate of change would mean nothing."""
    return field in _GAUGE_NAMES or field.startswith(_GAUGE_PREFIXES) or field.endswith(_GAUGE_SUFFIXES)


class StatsPublisher:
    def __init__(self, name: str, fields: list[str], gauges: list[str] | None = None) -> None:
        fields = list(fields)
        if not fields or len(fields) > MAX_FIELDS or len(set(fields)) != len(fields) \
                or not all(isinstance(f, str) and f for f in fields):
            raise InvalidArgumentError(f"fields must be 1 to {MAX_FIELDS} distinct non-empty names")
        gauges = [f for f in fields if looks_like_gauge(f)] if gauges is None else list(gauges)
        if not set(gauges) <= set(fields):
            raise InvalidArgumentError(f"gauges {sorted(set(gauges) - set(fields))} are not among the fields")
        self.name, self.fields, self.gauges = name, fields, gauges
        self._index = {f: FIELDS_OFFSET + 8 * i for i, f in enumerate(fields)}
        names = json.dumps({"fields": fields, "gauges": gauges}).encode()
        size = FIELDS_OFFSET + 8 * len(fields) + len(names)
        shm_name = _shm_name(name)
        for _attempt in range(3):
            try:
                shm = posix_ipc.SharedMemory(shm_name, flags=posix_ipc.O_CREX, mode=0o600, size=size)
                break
            except posix_ipc.ExistentialError:
                self._replace_stale(shm_name)
        else:
            raise StatsBusyError(f"stats {name!r}: {segment_path(name)} keeps reappearing")
        fd = shm.fd
        # taken before anything is published: a reader never sees a fresh segment without an owner.
        # A reader's liveness probe holds the byte for an instant, hence a short wait, not a try.
        if not _ring.lock_byte(fd, _LOCK_BYTE, 1.0):
            os.close(fd)
            raise StatsBusyError(f"stats {name!r}: another process took {segment_path(name)} as it was made")
        self._fd = fd
        self._mm = mmap.mmap(fd, size)
        self._mm[FIELDS_OFFSET + 8 * len(fields):] = names
        for offset, value in ((_VERSION, VERSION), (_NFIELDS, len(fields)), (_NAMES_LEN, len(names)),
                              (_PID, os.getpid()), (_STARTED, time.time_ns()), (_UPDATED, time.time_ns())):
            _ring.store_release_u64(self._mm, offset, value)
        _ring.store_release_u64(self._mm, _MAGIC, MAGIC)   # last: the header is complete once it shows
        self._closed = False

    def _replace_stale(self, shm_name: str) -> None:
        try:
            shm = posix_ipc.SharedMemory(shm_name)
        except posix_ipc.ExistentialError:
            return          # gone in between: create again
        try:
            if _owner_alive(shm.fd):
                raise StatsBusyError(f"stats {self.name!r}: a live process (pid "
                                     f"{_read_pid(shm.fd)}) publishes {segment_path(self.name)}")
            posix_ipc.unlink_shared_memory(shm_name)   # its publisher died: its numbers are history
        finally:
            os.close(shm.fd)

    def update(self, values: dict[str, int]) -> None:
        """Store the given fields (unknown names raise KeyError) and the update time."""
        mm = self._mm
        for field, value in values.items():
            _ring.store_release_u64(mm, self._index[field], max(0, int(value)))
        _ring.store_release_u64(mm, _UPDATED, time.time_ns())

    def close(self, unlink: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if unlink:
            try:
                posix_ipc.unlink_shared_memory(_shm_name(self.name))
            except posix_ipc.ExistentialError:
                pass
        self._mm.close()
        os.close(self._fd)   # releases the lock

    def __enter__(self) -> StatsPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_pid(fd: int) -> int:
    raw = os.pread(fd, 8, _PID)
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def publish(name: str, fields: list[str], gauges: list[str] | None = None) -> StatsPublisher:
    """Make ``/dev/shm/shmpipe-stats.<name>`` with these u64 fields, all 0; replaces a segment whose
    publisher died, raises StatsBusyError when a live one holds the name. ``gauges``: the fields
    that are levels, not counters (default: those :func:`looks_like_gauge` names)."""
    return StatsPublisher(name, fields, gauges)


def read(name: str) -> dict:
    """The published counters of ``name``. FileNotFoundError when nothing publishes it;
    ``live`` False (and ``stale`` True) when its publisher is gone."""
    try:
        shm = posix_ipc.SharedMemory(_shm_name(name))
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(f"no stats {name!r} ({segment_path(name)})") from None
    fd = shm.fd
    try:
        st = os.fstat(fd)
        # /dev/shm is world-writable: numbers in a segment another user made are not ours to trust
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise StatsFormatError(f"stats {name!r}: {segment_path(name)} is not a 0600 segment of this user")
        if st.st_size < FIELDS_OFFSET:
            raise StatsFormatError(f"stats {name!r}: {segment_path(name)} is {st.st_size} bytes, not a stats segment")
        live = _owner_alive(fd)
        with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as mm:
            if _ring.load_acquire_u64(mm, _MAGIC) != MAGIC:
                raise StatsFormatError(f"stats {name!r}: {segment_path(name)} is not a stats segment "
                                       f"(or is still being made)")
            version, n, names_len = (_ring.load_acquire_u64(mm, o) for o in (_VERSION, _NFIELDS, _NAMES_LEN))
            end = FIELDS_OFFSET + 8 * n + names_len
            if version != VERSION or not 1 <= n <= MAX_FIELDS or end > st.st_size:
                raise StatsFormatError(f"stats {name!r}: version {version}, {n} fields: not readable here")
            try:
                names = json.loads(mm[FIELDS_OFFSET + 8 * n:end])
            except ValueError:
                raise StatsFormatError(f"stats {name!r}: corrupt field names") from None
            fields, gauges = (names.get("fields"), names.get("gauges", [])) if isinstance(names, dict) \
                else (names, [])
            if not isinstance(fields, list) or len(fields) != n or not isinstance(gauges, list):
                raise StatsFormatError(f"stats {name!r}: corrupt field names")
            counters = {f: _ring.load_acquire_u64(mm, FIELDS_OFFSET + 8 * i) for i, f in enumerate(fields)}
            pid, started, updated = (_ring.load_acquire_u64(mm, o) for o in (_PID, _STARTED, _UPDATED))
    finally:
        os.close(fd)
    return {"name": name, "live": live, "stale": not live, "pid": pid, "started_ns": started,
            "updated_ns": updated, "counters": counters, "gauges": [g for g in gauges if g in counters]}


def unlink_if_dead(name: str) -> bool:
    """Remove a stats segment only while no live process publishes it (``shmpipe clean``); False
    when there is none or its publisher is alive. The segment's lock is held across the check and
    the unlink, so a publisher that takes the name meanwhile is never unlinked from under."""
    try:
        shm = posix_ipc.SharedMemory(_shm_name(name))
    except posix_ipc.ExistentialError:
        return False
    fd = shm.fd
    try:
        if not _ring.try_lock_byte(fd, _LOCK_BYTE):
            return False
        try:
            here = os.fstat(fd)
            try:
                now = os.stat(segment_path(name))
            except FileNotFoundError:
                return False
            if (here.st_dev, here.st_ino) != (now.st_dev, now.st_ino):
                return False  # replaced by a new publisher's segment in between
            posix_ipc.unlink_shared_memory(_shm_name(name))
            return True
        finally:
            _ring.unlock_byte(fd, _LOCK_BYTE)
    except posix_ipc.ExistentialError:
        return False
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove a stats segment (a dead publisher's); False if there was none."""
    try:
        posix_ipc.unlink_shared_memory(_shm_name(name))
    except posix_ipc.ExistentialError:
        return False
    return True
