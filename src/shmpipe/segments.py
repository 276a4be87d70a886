"""POSIX shared-memory segments named ``shmpipe.<name>``: create (space reserved up front),
open, unlink and list. posix_ipc does the shm_open/shm_unlink calls; this module owns naming,
modes and turning OS errors into messages that name the ring."""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import posix_ipc

from . import _ring
from .errors import InvalidNameError, NoSpaceError, RingExistsError, RingNotFoundError, RingPermissionError

PREFIX = "shmpipe."
SHM_DIR = Path("/dev/shm")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def validate_name(name: object, what: str = "ring") -> str:
    """Return ``name`` if it is a safe ring (or other segment) name, else raise InvalidNameError
    saying why; ``what`` names the kind of segment in the message."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} name must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . - (no '/')"
        )
    if ".." in name or name in (".",):
        raise InvalidNameError(f"invalid {what} name {name!r}: '..' is not allowed")
    return name


def shm_name(name: str) -> str:
    """The POSIX name (``/shmpipe.<name>``) of a ring's segment."""
    return "/" + PREFIX + validate_name(name)


@dataclass
class Segment:
    """An open segment: its fd stays open for as long as the ring is attached (locks live on it)."""

    name: str
    fd: int
    size: int

    def close(self) -> None:
        if self.fd >= 0:
            with _ring.fork_guard:
                _ring.untrack_fd(self.fd)
                os.close(self.fd)
            self.fd = -1


def create(name: str, size: int, mode: int = 0o600) -> Segment:
    """Create ``shmpipe.<name>`` with ``mode`` (0600 unless a ring is shared on purpose) and
    reserve ``size`` bytes now, so a full /dev/shm fails here with NoSpaceError rather than with
    SIGBUS on some later write. The segment is marked in use (its "attached" lock) from its first
    moment, so `shmpipe clean` never removes a ring that is still being made."""
    posix = shm_name(name)
    free = free_bytes()
    if free is not None and size > free:
        raise NoSpaceError(
            f"ring {name!r} needs {size} bytes but /dev/shm has {free} free; use a smaller capacity"
        )
    try:
        shm = _shm_open_tracked(posix, flags=posix_ipc.O_CREX, mode=mode)
    except posix_ipc.ExistentialError:
        raise RingExistsError(
            f"ring {name!r} already exists ({SHM_DIR / (PREFIX + name)}); open it with Ring.open, "
            f"or remove it with `shmpipe clean` once its users are gone"
        ) from None
    except posix_ipc.PermissionsError as exc:
        raise RingPermissionError(f"cannot create ring {name!r}: {exc}") from None
    fd = shm.fd
    try:
        _ring.hold_attached(fd)
        if mode != 0o600:
            os.fchmod(fd, mode)   # the umask may have cleared bits the caller asked for
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        Segment(name=name, fd=fd, size=size).close()
        _unlink_quietly(posix)
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            raise NoSpaceError(f"ring {name!r}: /dev/shm has no room for {size} bytes ({exc.strerror})") from None
        raise
    return Segment(name=name, fd=fd, size=size)


def _shm_open_tracked(posix: str, **kwargs) -> posix_ipc.SharedMemory:
    """shm_open() with the fd tracked before any fork() can copy it: a child closes every tracked
    fd (an untracked one would hold the parent's segment and its locks for the child's life)."""
    with _ring.fork_guard:
        shm = posix_ipc.SharedMemory(posix, **kwargs)
        _ring.track_unmapped_fd(shm.fd)
    return shm


def open_existing(name: str) -> Segment:
    posix = shm_name(name)
    try:
        shm = _shm_open_tracked(posix)
    except posix_ipc.ExistentialError:
        raise RingNotFoundError(f"ring {name!r} does not exist (no {SHM_DIR / (PREFIX + name)})") from None
    except posix_ipc.PermissionsError as exc:
        raise RingPermissionError(f"cannot open ring {name!r}: {exc}") from None
    return Segment(name=name, fd=shm.fd, size=os.fstat(shm.fd).st_size)


def unlink(name: str) -> None:
    """Remove the name; processes that have it mapped keep their mapping until they close."""
    try:
        posix_ipc.unlink_shared_memory(shm_name(name))
    except posix_ipc.ExistentialError:
        raise RingNotFoundError(f"ring {name!r} does not exist") from None


def _unlink_quietly(posix: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(posix)
    except posix_ipc.ExistentialError:
        pass


def list_names() -> list[str]:
    """Names (without the prefix) of every shmpipe segment on this host."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(p.name[len(PREFIX):] for p in SHM_DIR.iterdir() if p.name.startswith(PREFIX))


def free_bytes() -> int | None:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
