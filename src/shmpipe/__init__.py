"""shmpipe: fixed-size records between processes over POSIX shared memory.

    ring = shmpipe.Ring.create("ticks", shmpipe.records.TICK, 1 << 16)
    ring.producer().write_batch(ticks)          # in one process
    shmpipe.Ring.open("ticks").consumer().read()  # in another
"""
from . import records, symbols
from ._ring import Consumer, Producer
from .errors import (
    ConsumerEvictedError,
    DtypeMismatchError,
    InvalidArgumentError,
    InvalidNameError,
    JournalBusyError,
    JournalFormatError,
    JournalNotFoundError,
    NoSpaceError,
    RingClosedError,
    RingExistsError,
    RingFormatError,
    RingIOError,
    RingNotFoundError,
    RingPermissionError,
    RegistryBusyError,
    RegistryFormatError,
    RegistryFullError,
    RegistryPermissionError,
    RoleTakenError,
    ShmpipeError,
    SymbolConflictError,
    SymbolNameError,
    UnknownSymbolError,
    WslogFormatError,
    WslogTruncatedError,
    WslogWriteError,
)
from .ring import Ring
from .consume import AsyncBatchStream, BatchStream, abatches, batches, symbol_ids, symbol_names, symbol_table

__version__ = "0.1.0"


def get_include() -> str:
    """The directory holding shmpipe's C headers and .pxd files (shmpipe_ring_api.h, ring_api.pxd), for
    compiled code that uses the ring's C-level API: ``Extension(..., include_dirs=[shmpipe.get_include()])``.
    Cython finds ``cimport shmpipe.ring_api`` through the directory above it (``os.path.dirname``)."""
    import os
    return os.path.dirname(os.path.abspath(__file__))


__all__ = [
    "Ring", "Producer", "Consumer", "records", "symbols", "get_include",
    "ShmpipeError", "RingExistsError", "RingNotFoundError", "RingFormatError", "DtypeMismatchError",
    "InvalidNameError", "RoleTakenError", "RingPermissionError", "NoSpaceError",
    "ConsumerEvictedError", "RingClosedError", "InvalidArgumentError", "RingIOError",
    "SymbolNameError", "UnknownSymbolError", "SymbolConflictError", "RegistryFullError", "RegistryFormatError",
    "RegistryPermissionError", "RegistryBusyError", "WslogFormatError", "WslogTruncatedError", "WslogWriteError",
    "JournalFormatError", "JournalBusyError", "JournalNotFoundError",
    "batches", "abatches", "BatchStream", "AsyncBatchStream", "symbol_names", "symbol_table", "symbol_ids",
]
