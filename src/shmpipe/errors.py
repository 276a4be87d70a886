"""shmpipe's exceptions. Each also derives from the builtin that fits, so callers who only know
Python's own exceptions (``except FileNotFoundError``) still catch them."""
from __future__ import annotations

import errno


class ShmpipeError(Exception):
    """Base of every error shmpipe raises on purpose."""


class InvalidArgumentError(ShmpipeError, ValueError, TypeError):
    """A bad argument: a capacity, a timeout, a record of the wrong size, a non-array batch.
    A ValueError and a TypeError too, so callers who catch either keep working."""


class RingIOError(ShmpipeError, OSError):
    """The operating system refused a mapping or a lock on a ring segment."""


class RingExistsError(ShmpipeError, FileExistsError):
    """A segment of that name already exists."""


class RingNotFoundError(ShmpipeError, FileNotFoundError):
    """No segment of that name exists."""


class RingFormatError(ShmpipeError, ValueError):
    """The segment is not a usable shmpipe ring: bad magic, layout version, size or header."""


class DtypeMismatchError(RingFormatError):
    """The dtype given does not match the one the ring was created with."""


class InvalidNameError(ShmpipeError, ValueError):
    """A ring name that could escape /dev/shm or is otherwise not allowed."""


class RoleTakenError(ShmpipeError, PermissionError):
    """Another live process already holds this ring's producer or consumer role."""


class RingPermissionError(ShmpipeError, PermissionError):
    """The segment exists but this user may not open it."""


class NoSpaceError(ShmpipeError, OSError):
    """/dev/shm cannot hold the ring (checked, and space reserved, at create time)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.args[1]


class ConsumerEvictedError(ShmpipeError, RuntimeError):
    """The producer evicted this broadcast consumer (dead-looking, or silent past the timeout)."""


class RingClosedError(ShmpipeError, ValueError):
    """The ring, producer or consumer was closed."""


# -- symbol registry (symbols.py) --------------------------------------------------------------
class SymbolNameError(ShmpipeError, ValueError):
    """An exchange or symbol name the registry cannot hold: empty, too long, NUL, not text."""


class UnknownSymbolError(ShmpipeError, LookupError):
    """No symbol has this id (or this (exchange, symbol) pair) in the registry."""


class SymbolConflictError(ShmpipeError, ValueError):
    """A symbol's registered facts (decimals, depth) differ from the ones given now."""


class RegistryFullError(ShmpipeError, RuntimeError):
    """The registry's shared table has no room for another symbol."""


class RegistryFormatError(ShmpipeError, ValueError):
    """The registry's segment or file is not one this shmpipe can read (corrupt, other version,
    another file than the one asked for)."""


class RegistryPermissionError(ShmpipeError, PermissionError):
    """The registry's segment belongs to another user or is open to other users."""


class RegistryBusyError(ShmpipeError, TimeoutError):
    """Another live process held the registry's lock for longer than the timeout."""


# -- raw capture (wslog) -----------------------------------------------------------------------
class WslogFormatError(ShmpipeError, ValueError):
    """A .wslog or .wslog.zst file that cannot be read: a corrupt zstd stream, a bad marker."""


class WslogTruncatedError(WslogFormatError):
    """Raised only by strict reads: the file ends inside an entry (a killed writer)."""


class WslogWriteError(ShmpipeError, OSError):
    """The capture writer's background thread could not write, rotate or compress a file."""


# -- tick journal (journal.py) -----------------------------------------------------------------
class JournalFormatError(ShmpipeError, ValueError):
    """A tick journal file with a bad magic, version, record size or size."""


class JournalBusyError(ShmpipeError, PermissionError):
    """Another live process is writing this journal file."""


class JournalNotFoundError(ShmpipeError, FileNotFoundError):
    """No journal directory at the path given."""
