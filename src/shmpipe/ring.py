"""``shmpipe.Ring``: the Pythonic face of a ring segment (create/open, stats, roles).

The hot paths (Producer.write/read) are compiled classes in ``_ring``; this module owns
validation, the segment's life cycle and the readable error messages."""
from __future__ import annotations

import os
import stat
import time
from typing import Any

import numpy as np

from . import _ring, records, segments
from .dtypes import as_record_dtype, describe, fingerprint, from_description
from .errors import (DtypeMismatchError, InvalidArgumentError, RingClosedError, RingFormatError,
                     RingPermissionError)
from .liveness import process_start_ticks

WAIT_STRATEGIES = tuple(_ring.WAIT_STRATEGIES)
POLICIES = ("lossless", "lossy")
MAX_CAPACITY = 1 << 40
# How long open() waits for a creator that has made the segment but not yet stamped the magic.
_HALF_MADE_GRACE_S = 1.0


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise InvalidArgumentError(f"capacity must be an int, not {type(capacity).__name__}")
    capacity = int(capacity)
    if capacity < 2 or capacity & (capacity - 1) or capacity > MAX_CAPACITY:
        raise InvalidArgumentError(f"capacity must be a power of two between 2 and 2**40, not {capacity}")
    return capacity


def _check_mode(mode: object) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise InvalidArgumentError(f"mode must be permission bits 0o600..0o777 that let the owner read "
                                   f"and write, not {mode!r}")
    return mode


class Ring:
    """A ring of fixed-size records in ``/dev/shm/shmpipe.<name>``.

    SPSC by default: one producer, one consumer, lossless. ``broadcast=True`` gives every
    consumer its own cursor (up to ``max_consumers``), lossless or lossy."""

    def __init__(self, name: str, mapped: _ring.MappedRing, config: dict[str, Any], dtype: np.dtype):
        self._mapped = mapped
        self._config = config
        self.name = name
        self.dtype = dtype
        self._children: list[Any] = []

    # -- life cycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, dtype: object, capacity: int, *, wait: str = "block",
               broadcast: bool = False, policy: str = "lossless", max_consumers: int = 32,
               consumer_timeout: float = 5.0, mode: int = 0o600) -> "Ring":
        """Create a new ring. ``wait`` is how both sides wait when full/empty: "spin" (lowest
        latency, burns a core), "yield" (spin then sched_yield) or "block" (spin ~µs, then sleep
        in the kernel on a futex; the default). ``mode`` other than 0o600 shares the ring with
        other users; they must then open it with ``allow_other_users=True``."""
        segments.validate_name(name)
        dt = as_record_dtype(dtype)
        capacity = _check_capacity(capacity)
        mode = _check_mode(mode)
        if wait not in _ring.WAIT_STRATEGIES:
            raise InvalidArgumentError(f"wait must be one of {', '.join(WAIT_STRATEGIES)}, not {wait!r}")
        if policy not in POLICIES:
            raise InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if policy == "lossy" and not broadcast:
            raise InvalidArgumentError("policy='lossy' needs broadcast=True (an SPSC ring is always lossless)")
        if broadcast and not 1 <= max_consumers <= _ring.MAX_CONSUMERS:
            raise InvalidArgumentError(f"max_consumers must be 1..{_ring.MAX_CONSUMERS}, not {max_consumers}")
        if not isinstance(consumer_timeout, (int, float)) or not 0 <= consumer_timeout < float("inf"):
            raise InvalidArgumentError(f"consumer_timeout must be >= 0 seconds, not {consumer_timeout!r}")
        descr = describe(dt).encode()
        if len(descr) >= _ring.DTYPE_DESCR_BYTES:
            raise InvalidArgumentError(f"dtype {dt} is too complex to record in the header "
                                       f"({len(descr)} bytes of description, {_ring.DTYPE_DESCR_BYTES - 1} max)")
        size = _ring.DATA_OFFSET + capacity * dt.itemsize
        flags = (_ring.FLAG_BROADCAST if broadcast else 0) | (_ring.FLAG_LOSSY if policy == "lossy" else 0)
        config = {"capacity": capacity, "itemsize": dt.itemsize, "flags": flags,
                  "wait_strategy": _ring.WAIT_STRATEGIES[wait],
                  "max_consumers": max_consumers if broadcast else 1,
                  "consumer_timeout_ns": int(consumer_timeout * 1e9)}
        segment = segments.create(name, size, mode)
        try:
            mapped = _map(segment, name, config)
            mapped.init_header(descr, fingerprint(dt), os.getpid())
        except BaseException:
            segment.close()
            segments.unlink(name)
            raise
        config.update(created_unix_ns=time.time_ns(), creator_pid=os.getpid(), segment_bytes=size)
        return cls(name, mapped, config, dt)

    @classmethod
    def open(cls, name: str, dtype: object = None, *, allow_other_users: bool = False) -> "Ring":
        """Open an existing ring. Without ``dtype`` the ring's own is used; with one, it must
        match what the ring was created with. The segment must belong to this user and be closed
        to everyone else (/dev/shm is world-writable, so anyone could have put a file at the
        name first); ``allow_other_users=True`` accepts a segment shared on purpose."""
        segments.validate_name(name)
        wanted = None if dtype is None else as_record_dtype(dtype)
        segment = segments.open_existing(name)
        try:
            _check_ownership(name, os.fstat(segment.fd), allow_other_users)
            config, st = _read_header(name, segment.fd)
            ring_dtype = _validate_header(name, config, st)
            if wanted is not None:
                if fingerprint(wanted) != config["dtype_fingerprint"]:
                    raise DtypeMismatchError(
                        f"ring {name!r} holds records of dtype {ring_dtype} (itemsize {ring_dtype.itemsize}), "
                        f"but dtype {wanted} (itemsize {wanted.itemsize}) was given")
                ring_dtype = wanted          # the caller's own object: identity checks stay cheap
            else:
                ring_dtype = _known_dtype(ring_dtype)
            mapped = _map(segment, name, config)
        except BaseException:
            segment.close()
            raise
        return cls(name, mapped, config, ring_dtype)

    def close(self) -> None:
        """Detach: closes this handle's producer/consumers and releases their roles."""
        for child in self._children:
            child.close()
        self._children.clear()
        self._mapped.close()

    def unlink(self) -> None:
        """Remove the name from /dev/shm (attached processes keep their mapping until they close)."""
        segments.unlink(self.name)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._mapped.closed

    # -- roles -----------------------------------------------------------------------------
    def producer(self) -> _ring.Producer:
        """Attach as the producer. Raises RoleTakenError while another live producer holds it."""
        self._check_open()
        p = _ring.Producer._attach(self._mapped, self.dtype, self._config["wait_strategy"],
                                   os.getpid(), process_start_ticks(os.getpid()))
        self._children.append(p)
        return p

    def consumer(self, start: str = "oldest", *, wait: str | None = None) -> _ring.Consumer:
        """Attach a consumer. SPSC: the one reader, resuming where the last one stopped.
        Broadcast: a new cursor starting at the "newest" record or the "oldest" still held.
        ``wait`` ("spin", "yield" or "block") overrides how this consumer waits; None: the ring's
        own. A consumer may always spin or yield; it may only sleep ("block") on a ring whose
        producer rings the doorbell, i.e. one created with wait="block"."""
        self._check_open()
        if start not in ("newest", "oldest"):
            raise ValueError(f"start must be 'newest' or 'oldest', not {start!r}")
        if wait is None:
            strategy = self._config["wait_strategy"]
        elif wait not in _ring.WAIT_STRATEGIES:
            raise InvalidArgumentError(f"wait must be None (the ring's own) or one of "
                                       f"{', '.join(_ring.WAIT_STRATEGIES)}, not {wait!r}")
        elif wait == "block" and self.wait != "block":
            raise InvalidArgumentError(f"ring {self.name!r} was created with wait={self.wait!r}: its producer "
                                       f"rings no doorbell, so a consumer cannot sleep on it (use 'spin' or "
                                       f"'yield')")
        else:
            strategy = _ring.WAIT_STRATEGIES[wait]
        c = _ring.Consumer._attach(self._mapped, self.dtype, strategy,
                                   os.getpid(), process_start_ticks(os.getpid()), start)
        self._children.append(c)
        return c

    # -- facts -------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._config["capacity"]

    @property
    def itemsize(self) -> int:
        return self._config["itemsize"]

    @property
    def broadcast(self) -> bool:
        return bool(self._config["flags"] & _ring.FLAG_BROADCAST)

    @property
    def policy(self) -> str:
        return "lossy" if self._config["flags"] & _ring.FLAG_LOSSY else "lossless"

    @property
    def wait(self) -> str:
        return _ring.WAIT_NAMES[self._config["wait_strategy"]]

    def __len__(self) -> int:
        """Records published and not yet read by the slowest (active) consumer, at most capacity."""
        self._check_open()
        pos = self._mapped.positions()
        cursors = [s["position"] for s in pos["consumers"] if not self.broadcast or s["state"] == "active"]
        if not cursors:
            return 0
        return min(self.capacity, pos["write_pos"] - min(cursors))

    def stats(self) -> dict[str, Any]:
        """The header's counters and who is attached, as plain data (JSON-serialisable)."""
        self._check_open()
        cfg = self._config
        pos = self._mapped.positions()
        now = _ring.monotonic_ns()
        write_pos = pos["write_pos"]
        producer = dict(pos["producer"])
        producer["alive"] = self._mapped.producer_alive()
        producer["heartbeat_age_s"] = _age(now, producer["heartbeat_ns"])
        consumers = []
        for slot in pos["consumers"]:
            if self.broadcast and slot["state"] == "free" and not slot["pid"]:
                continue
            entry = dict(slot)
            entry["alive"] = self._mapped.consumer_alive(slot["slot"])
            entry["lag"] = max(0, write_pos - slot["position"])
            entry["heartbeat_age_s"] = _age(now, entry["heartbeat_ns"])   # heartbeat_ns: CLOCK_MONOTONIC
            entry["evicted"] = slot["state"] == "evicted"
            consumers.append(entry)
        return {
            "name": self.name,
            "dtype": describe(self.dtype),
            "itemsize": cfg["itemsize"],
            "capacity": cfg["capacity"],
            "broadcast": self.broadcast,
            "policy": self.policy,
            "wait": self.wait,
            "created_unix_ns": cfg["created_unix_ns"],
            "creator_pid": cfg["creator_pid"],
            "segment_bytes": cfg["segment_bytes"],
            "written": write_pos,
            "wraps": write_pos // cfg["capacity"],
            "lost": sum(c["lost"] for c in consumers),
            "full_waits": producer["full_waits"],
            "evictions": producer["evictions"],
            "fill": min(len(self), cfg["capacity"]),
            # Processes asleep on each doorbell. A sleeper killed by kill -9 stays counted (a
            # needless wake syscall per publish, never wrong) until the next producer, or SPSC
            # consumer, attaches: its role is exclusive, so it resets the count.
            "sleepers": {"data_ready": pos["data_ready_waiters"], "space_ready": pos["space_ready_waiters"]},
            "producer": producer,
            "consumers": consumers,
        }

    def _check_open(self) -> None:
        if self._mapped.closed:
            raise RingClosedError(f"ring {self.name!r} is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        kind = f"broadcast/{self.policy}" if not self.closed and self.broadcast else "spsc"
        return f"<shmpipe.Ring {self.name!r} {kind} dtype={self.dtype} {state}>"


def _known_dtype(dt: np.dtype) -> np.dtype:
    """The shared records.* object when the ring holds one of ours (so arrays users build with
    records.TICK are the very dtype object of the ring), else the rebuilt dtype."""
    for known in records.BY_NAME.values():
        if known == dt:
            return known
    return dt


def _age(now_ns: int, then_ns: int) -> float | None:
    return None if not then_ns else max(0.0, (now_ns - then_ns) / 1e9)


def _map(segment: segments.Segment, name: str, config: dict[str, Any]) -> _ring.MappedRing:
    """Map the validated geometry; the mapping takes over the segment's fd (closing it once)."""
    with _ring.fork_guard:      # the fd passes from the tracked set to the mapping, no fork between
        mapped = _ring.MappedRing(segment.fd, name, config["capacity"], config["itemsize"],
                                  config["flags"], config["wait_strategy"], config["max_consumers"],
                                  config["consumer_timeout_ns"])
        _ring.untrack_fd(segment.fd)
    segment.fd = -1
    return mapped


def _check_ownership(name: str, st: os.stat_result, allow_other_users: bool) -> None:
    if allow_other_users:
        return
    if st.st_uid != os.geteuid():
        raise RingPermissionError(
            f"ring {name!r} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
            f"refusing a segment someone else may have put at the name; pass allow_other_users=True "
            f"to Ring.open if it is shared on purpose")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RingPermissionError(
            f"ring {name!r} has mode {stat.S_IMODE(st.st_mode):04o}: other users can open it; shmpipe "
            f"creates rings 0600, so pass allow_other_users=True to Ring.open if it is shared on purpose")


def _read_header(name: str, fd: int) -> tuple[dict[str, Any], os.stat_result]:
    """The header, read with pread before anything is mapped (a huge or sparse file costs
    nothing). A creator stamps the magic last and holds the segment's lock from its first
    moment, so a header-less segment that someone holds is waited for, briefly."""
    deadline = time.monotonic() + _HALF_MADE_GRACE_S
    while True:
        st = os.fstat(fd)
        raw = os.pread(fd, _ring.DATA_OFFSET, 0) if st.st_size >= _ring.DATA_OFFSET else b""
        config = _ring.parse_header(raw) if raw else None
        if config is not None and config["magic"] != 0:
            # The creator stamps the magic last (release), but a plain copy that sees it may
            # still hold older bytes of the fields before it on a weakly ordered CPU: re-read
            # them after an acquire fence, so what is validated is what the creator wrote.
            _ring.fence_acquire()
            return _ring.parse_header(os.pread(fd, _ring.DATA_OFFSET, 0)), st
        if not (time.monotonic() < deadline and _ring.segment_in_use(fd)):
            break
        time.sleep(0.001)
    if config is None:
        raise RingFormatError(f"ring {name!r} is {st.st_size} bytes, smaller than a header "
                              f"({_ring.DATA_OFFSET}): not a shmpipe ring or a broken one")
    return config, st


def _validate_header(name: str, config: dict[str, Any], st: os.stat_result) -> np.dtype:
    """Everything a header claims, checked against itself and the file before it is trusted."""
    if config["magic"] != _ring.MAGIC:
        raise RingFormatError(f"ring {name!r} has magic {config['magic']:#018x}, expected "
                              f"{_ring.MAGIC:#018x}: not a shmpipe ring, or a corrupt header")
    if config["layout_version"] != _ring.LAYOUT_VERSION:
        raise RingFormatError(f"ring {name!r} has layout version {config['layout_version']}, this shmpipe "
                              f"reads version {_ring.LAYOUT_VERSION}")
    capacity, itemsize = config["capacity"], config["itemsize"]
    if capacity < 2 or capacity & (capacity - 1) or capacity > MAX_CAPACITY or itemsize == 0:
        raise RingFormatError(f"ring {name!r} has a corrupt header (capacity {capacity}, itemsize {itemsize})")
    needed = _ring.DATA_OFFSET + capacity * itemsize
    if config["data_offset"] != _ring.DATA_OFFSET or needed > st.st_size:
        raise RingFormatError(f"ring {name!r}: header says {capacity} x {itemsize} bytes at offset "
                              f"{config['data_offset']}, but the segment is {st.st_size} bytes")
    if st.st_blocks * 512 < needed:
        raise RingFormatError(f"ring {name!r}: only {st.st_blocks * 512} of its {needed} bytes are reserved "
                              f"(a sparse file, not made by Ring.create): writing could crash with SIGBUS")
    if not 1 <= config["max_consumers"] <= _ring.MAX_CONSUMERS:
        raise RingFormatError(f"ring {name!r} has a corrupt header (max_consumers {config['max_consumers']})")
    known_flags = _ring.FLAG_BROADCAST | _ring.FLAG_LOSSY
    if config["flags"] & ~known_flags or config["flags"] == _ring.FLAG_LOSSY \
            or config["wait_strategy"] not in _ring.WAIT_NAMES:
        raise RingFormatError(f"ring {name!r} has a corrupt header (flags {config['flags']:#x}, "
                              f"wait strategy {config['wait_strategy']})")
    try:
        dt = from_description(config["dtype_descr"])
    except Exception as exc:
        raise RingFormatError(f"ring {name!r} has an unreadable dtype description "
                              f"{config['dtype_descr']!r}: {exc}") from None
    if dt.hasobject:
        raise RingFormatError(f"ring {name!r} claims records of dtype {dt}, which holds Python objects: "
                              f"refusing to hand raw shared bytes to Python as object pointers")
    if dt.itemsize != itemsize or fingerprint(dt) != config["dtype_fingerprint"]:
        raise RingFormatError(f"ring {name!r} has a corrupt header: dtype {dt} (itemsize {dt.itemsize}) "
                              f"does not match itemsize {itemsize} / its fingerprint")
    return dt
