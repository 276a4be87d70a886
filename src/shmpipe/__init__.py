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

__all__ = [
    "Ring", "Producer", "Consumer", "records", "symbols",
    "ShmpipeError", "RingExistsError", "RingNotFoundError", "RingFormatError", "DtypeMismatchError",
    "InvalidNameError", "RoleTakenError", "RingPermissionError", "NoSpaceError",
    "ConsumerEvictedError", "RingClosedError", "InvalidArgumentError", "RingIOError",
    "SymbolNameError", "UnknownSymbolError", "SymbolConflictError", "RegistryFullError", "RegistryFormatError",
    "RegistryPermissionError", "RegistryBusyError", "WslogFormatError", "WslogTruncatedError", "WslogWriteError",
    "JournalFormatError", "JournalBusyError", "JournalNotFoundError",
    "batches", "abatches", "BatchStream", "AsyncBatchStream", "symbol_names", "symbol_table", "symbol_ids",
]
