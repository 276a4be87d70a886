"""The tick journal: Ticks appended to a memory-mapped file per symbol per UTC day, readable with
numpy while they are written.

    journal = TickJournal("journal")                 # clock=... in tests
    journal.append(ticks)                            # records.TICK array, any symbols
    journal.close()
    ticks_for("journal", 7, "2024-06-11")            # or ("kraken", "BTC/USD") through the registry

File: ``<dir>/<YYYYMMDD>/<symbol_id>.ticks`` = a 4096-byte header (_layout.h shmpipe_journal_header)
then the Ticks, page-aligned, so ``numpy.memmap(path, records.TICK, mode="r", offset=4096)`` maps
them. The day is the writer's UTC day when the tick was appended (its receive day), so the files of
a day hold what arrived that day; at midnight (by the writer's clock) every file of the old day
is closed.

Ordering. The writer copies ticks into the mapping past ``committed``, then store-releases
``committed`` (a u64 on its own 128-byte block of the header). A reader load-acquires
``committed`` (``committed_count``, through the compiled helpers: numpy has no atomic loads) and
trusts only that many records: the acquire pairs with the release, so every byte of those
records is visible to it, and the writer never writes below ``committed`` again. Both map the same
page-cache pages, so this holds across processes and across the reader's own separate mappings
(numpy.memmap). A writer killed mid-copy leaves ``committed`` at its last complete append: the
file reads exactly that far, and the next writer of the file carries on from there. (Durability
against a machine crash needs ``flush()``, an msync; against kill -9 the page cache suffices.)
"""
from __future__ import annotations

import datetime as _dt
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _ring, records
from .dtypes import fingerprint
from .errors import (
    InvalidArgumentError,
    JournalBusyError,
    JournalFormatError,
    JournalNotFoundError,
    NoSpaceError,
    UnknownSymbolError,
)

_C = _ring.file_layouts()["constants"]
MAGIC = _C["JOURNAL_MAGIC"]
LAYOUT_VERSION = _C["JOURNAL_LAYOUT_VERSION"]
DATA_OFFSET = _C["JOURNAL_DATA_OFFSET"]
_LOCK_BYTE = _C["JOURNAL_LOCK"]
TICK_FINGERPRINT = fingerprint(records.TICK)

# Mirror of shmpipe_journal_header (tests/test_journal.py compares it with offsetof).
HEADER = np.dtype({
    "names": ["magic", "layout_version", "itemsize", "dtype_fingerprint", "symbol_id", "day", "capacity",
              "created_unix_ns", "writer_pid", "closed", "committed"],
    "formats": ["<u8", "<u4", "<u4", "<u8", "<u4", "<u4", "<u8", "<u8", "<u4", "<u4", "<u8"],
    "offsets": [0, 8, 12, 16, 24, 28, 32, 40, 48, 52, 128],
    "itemsize": DATA_OFFSET,
})
_COMMITTED = HEADER.fields["committed"][1]
_CLOSED = HEADER.fields["closed"][1]
_CAPACITY = HEADER.fields["capacity"][1]
DAY_NS = 86_400 * 1_000_000_000
INITIAL_CAPACITY = 1 << 16            # records (2 MiB); files double as they fill
SUFFIX = ".ticks"


def day_stamp(day: object) -> str:
    """YYYYMMDD from a date, a datetime (its UTC date), "YYYYMMDD", "YYYY-MM-DD" or an int YYYYMMDD."""
    if isinstance(day, _dt.datetime):
        day = (day.astimezone(_dt.UTC) if day.tzinfo else day).date()
    if isinstance(day, _dt.date):
        return day.strftime("%Y%m%d")
    if isinstance(day, (str, int)) and not isinstance(day, bool):
        for fmt in ("%Y%m%d", "%Y-%m-%d"):
            try:
                return _dt.datetime.strptime(str(day), fmt).strftime("%Y%m%d")
            except ValueError:
                pass
    raise InvalidArgumentError(f"day must be a date or 'YYYYMMDD' / 'YYYY-MM-DD', not {day!r}")


def journal_path(directory: str | os.PathLike, symbol_id: int, day: object) -> Path:
    return Path(directory) / day_stamp(day) / f"{int(symbol_id)}{SUFFIX}"


# -- reading -----------------------------------------------------------------------------------------
def committed_count(buffer) -> int:
    """The committed count of a journal mapped in ``buffer`` (an mmap of the file, or a numpy.memmap
    of its header), loaded with acquire: read it before the records it covers."""
    return _ring.load_acquire_u64(buffer, _COMMITTED)


def _check_header(path: Path, header: np.void, symbol_id: int | None = None, day: str | None = None) -> None:
    if header["magic"] != MAGIC or header["layout_version"] != LAYOUT_VERSION:
        raise JournalFormatError(f"{path} is not a version-{LAYOUT_VERSION} tick journal (magic "
                                 f"{int(header['magic']):#x}, version {header['layout_version']})")
    if header["itemsize"] != records.TICK.itemsize or header["dtype_fingerprint"] != TICK_FINGERPRINT:
        raise JournalFormatError(f"{path} holds records of {header['itemsize']} bytes with dtype fingerprint "
                                 f"{int(header['dtype_fingerprint']):#x}, not shmpipe.records.TICK")
    if symbol_id is not None and header["symbol_id"] != symbol_id:
        raise JournalFormatError(f"{path} is the journal of symbol {header['symbol_id']}, not {symbol_id}")
    if day is not None and str(header["day"]) != day:
        raise JournalFormatError(f"{path} is the journal of day {header['day']}, not {day}")


def read_journal(path: str | os.PathLike, *, copy: bool = False, symbol_id: int | None = None,
                 day: str | None = None) -> np.ndarray:
    """The committed ticks of one journal file, as a read-only array over its mapping (a copy with
    ``copy=True``). Safe while a writer appends: it returns what was committed when it looked.
    ``symbol_id`` and ``day``, when given, must be the ones the header names."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < DATA_OFFSET:
            if size == 0:                   # a writer is making it right now
                return np.zeros(0, records.TICK)
            raise JournalFormatError(f"{path} is {size} bytes, shorter than a journal header ({DATA_OFFSET})")
        mm = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    header = np.frombuffer(mm, HEADER, count=1)[0]
    if header["magic"] == 0:
        return np.zeros(0, records.TICK)    # made but not yet stamped: nothing committed
    _check_header(path, header, symbol_id, day)
    n = min(committed_count(mm), (size - DATA_OFFSET) // records.TICK.itemsize)
    ticks = np.frombuffer(mm, records.TICK, count=n, offset=DATA_OFFSET)
    return ticks.copy() if copy else ticks


def journal_info(path: str | os.PathLike) -> dict:
    """The header's facts: symbol_id, day, committed, capacity, closed, writer_pid, created_unix_ns."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(DATA_OFFSET)
    if len(raw) < DATA_OFFSET:
        raise JournalFormatError(f"{path} is {len(raw)} bytes, shorter than a journal header ({DATA_OFFSET})")
    header = np.frombuffer(raw, HEADER, count=1)[0]
    _check_header(path, header)
    facts = {name: int(header[name]) for name in ("symbol_id", "day", "committed", "capacity", "writer_pid",
                                                  "created_unix_ns")}
    return facts | {"closed": bool(header["closed"])}


def ticks_for(directory: str | os.PathLike, symbol: int | tuple[str, str], day: object, *,
              registry=None, copy: bool = False) -> np.ndarray:
    """A day's ticks of one symbol (its id, or (exchange, symbol) looked up in ``registry``, the
    host's default registry if None) as a numpy array of records.TICK; empty when that symbol had
    none that day. Raises JournalNotFoundError when ``directory`` does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        raise JournalNotFoundError(f"no tick journal at {directory}")
    if isinstance(symbol, tuple):
        from . import symbols
        found = (registry or symbols.default_registry()).find(*symbol)
        if found is None:
            raise UnknownSymbolError(f"symbol {symbol!r} is not registered, so it has no journal")
        symbol_id = found
    elif isinstance(symbol, (int, np.integer)) and not isinstance(symbol, bool) and 0 <= symbol < 1 << 32:
        symbol_id = int(symbol)
    else:
        raise InvalidArgumentError(f"symbol must be a u32 symbol id or (exchange, symbol), not {symbol!r}")
    stamp = day_stamp(day)
    path = journal_path(directory, symbol_id, stamp)
    if not path.exists():
        return np.zeros(0, records.TICK)
    return read_journal(path, copy=copy, symbol_id=symbol_id, day=stamp)


# -- writing -----------------------------------------------------------------------------------------
class _DayFile:
    """One journal file this process writes (it holds the file's lock while open)."""

    def __init__(self, path: Path, symbol_id: int, day: str, initial_capacity: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _ring.try_lock_byte(self.fd, _LOCK_BYTE):
                raise JournalBusyError(f"{path} is being written by another process")
            raw = os.pread(self.fd, DATA_OFFSET, 0)
            header = np.frombuffer(raw.ljust(DATA_OFFSET, b"\0"), HEADER, count=1)[0]
            if header["magic"] == 0:
                self._create(symbol_id, day, initial_capacity)
            else:
                _check_header(path, header, symbol_id, day)
            self.capacity = int(header["capacity"]) if header["magic"] else initial_capacity
            size = os.fstat(self.fd).st_size
            self.capacity = min(self.capacity, (size - DATA_OFFSET) // records.TICK.itemsize)
            self._map()
            self.committed = committed_count(self.mm)
            if self.committed > self.capacity:
                raise JournalFormatError(f"{path} claims {self.committed} committed ticks but has room for "
                                         f"{self.capacity}")
            # Ours now: not closed, and the pid is ours (for people; liveness is the lock).
            _ring.store_release_u32(self.mm, _CLOSED, 0)
            np.frombuffer(self.mm, HEADER, count=1)["writer_pid"] = os.getpid()
        except BaseException:
            self._unmap()
            os.close(self.fd)
            raise

    def _create(self, symbol_id: int, day: str, capacity: int) -> None:
        """Under the lock: reserve the space, write the header, stamp the magic last."""
        os.ftruncate(self.fd, 0)
        self._reserve(DATA_OFFSET + capacity * records.TICK.itemsize)
        header = np.zeros(1, HEADER)
        header["layout_version"], header["itemsize"] = LAYOUT_VERSION, records.TICK.itemsize
        header["dtype_fingerprint"] = TICK_FINGERPRINT
        header["symbol_id"], header["day"] = symbol_id, int(day)
        header["capacity"], header["created_unix_ns"] = capacity, time.time_ns()
        os.pwrite(self.fd, header.tobytes(), 0)
        with mmap.mmap(self.fd, DATA_OFFSET) as mm:
            _ring.store_release_u64(mm, 0, MAGIC)

    def _reserve(self, size: int) -> None:
        # Reserved, not sparse: a full disk fails here, not with SIGBUS on a later store.
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            raise NoSpaceError(f"{self.path}: no room to grow to {size} bytes ({exc.strerror})") from None

    def _map(self) -> None:
        self.mm = mmap.mmap(self.fd, DATA_OFFSET + self.capacity * records.TICK.itemsize)
        self.ticks = np.frombuffer(self.mm, records.TICK, count=self.capacity, offset=DATA_OFFSET)

    def _unmap(self) -> None:
        self.ticks = None
        mm = getattr(self, "mm", None)
        if mm is not None:
            mm.close()
            self.mm = None

    def append(self, ticks: np.ndarray) -> None:
        n = len(ticks)
        if self.committed + n > self.capacity:
            self._grow(self.committed + n)
        self.ticks[self.committed:self.committed + n] = ticks
        self.committed += n
        _ring.store_release_u64(self.mm, _COMMITTED, self.committed)     # after the records

    def _grow(self, needed: int) -> None:
        capacity = max(2 * self.capacity, needed)
        self._reserve(DATA_OFFSET + capacity * records.TICK.itemsize)
        self._unmap()          # readers keep their own mappings; the records below committed stay put
        self.capacity = capacity
        self._map()
        _ring.store_release_u64(self.mm, _CAPACITY, capacity)

    def flush(self) -> None:
        self.mm.flush()

    def close(self) -> None:
        """Clean close: msync, mark closed, give back the unused tail (never below committed, so
        a reader's mapping of the records stays valid), and drop the lock with the fd."""
        if self.mm is not None:
            self.mm.flush()
            _ring.store_release_u64(self.mm, _CAPACITY, self.committed)
            _ring.store_release_u32(self.mm, _CLOSED, 1)
            self.mm.flush()
            self._unmap()
            os.ftruncate(self.fd, DATA_OFFSET + self.committed * records.TICK.itemsize)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_live: weakref.WeakSet[TickJournal] = weakref.WeakSet()


class TickJournal:
    """Appends Ticks to ``<directory>/<YYYYMMDD>/<symbol_id>.ticks``, the day being the UTC day of
    ``clock()`` (ns since the epoch) when they are appended. One writer per file (a second gets
    JournalBusyError); a writer that reopens a day's file carries on after its committed ticks."""

    def __init__(self, directory: str | os.PathLike, *, clock: Callable[[], int] = time.time_ns,
                 initial_capacity: int = INITIAL_CAPACITY):
        if isinstance(initial_capacity, bool) or not isinstance(initial_capacity, int) \
                or initial_capacity < 1:
            raise InvalidArgumentError(f"initial_capacity must be a positive int, not {initial_capacity!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._initial_capacity = initial_capacity
        self._lock = threading.Lock()
        self._files: dict[int, _DayFile] = {}
        self._day: int | None = None
        self._pid = os.getpid()
        self._closed = False
        _live.add(self)

    @property
    def day(self) -> str:
        """The UTC day (YYYYMMDD) appends go to now."""
        return time.strftime("%Y%m%d", time.gmtime(self._clock() // DAY_NS * 86_400))

    def append(self, ticks: np.ndarray) -> None:
        """Append Ticks (records.TICK; a batch may mix symbols) to today's files; each symbol's
        records become visible to readers together, after they are written."""
        ticks = self._as_ticks(ticks)
        with self._lock:
            self._check_usable()
            self._rotate_locked()
            if len(ticks) == 0:
                return
            ids = ticks["symbol_id"]
            if ids[0] == ids[-1] and (len(ids) < 3 or (ids == ids[0]).all()):
                self._file(int(ids[0])).append(ticks)
                return
            order = np.argsort(ids, kind="stable")
            grouped, sorted_ids = ticks[order], ids[order]
            starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
            for start, end in zip(starts, np.r_[starts[1:], len(grouped)]):
                self._file(int(sorted_ids[start])).append(grouped[start:end])

    def rotate(self) -> None:
        """Close the previous day's files if the clock has passed midnight (append does this too;
        call it on a timer so a symbol that went quiet has its file closed at midnight)."""
        with self._lock:
            self._check_usable()
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        today = self._clock() // DAY_NS
        if today != self._day:
            self._close_files()
            self._day = today

    def _file(self, symbol_id: int) -> _DayFile:
        f = self._files.get(symbol_id)
        if f is None:
            stamp = time.strftime("%Y%m%d", time.gmtime(self._day * 86_400))
            f = self._files[symbol_id] = _DayFile(journal_path(self.directory, symbol_id, stamp), symbol_id,
                                                  stamp, self._initial_capacity)
        return f

    def flush(self) -> None:
        """msync every open file: what is committed survives a machine crash, not only kill -9."""
        with self._lock:
            self._check_usable()
            for f in self._files.values():
                f.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pid == os.getpid():
                self._close_files()

    def _close_files(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalBusyError(f"tick journal {self.directory} is closed")
        if self._pid != os.getpid():
            # fork() shares the parent's open files and with them its locks: the child would be a
            # second writer the lock cannot see.
            raise JournalBusyError(f"tick journal {self.directory} belongs to process {self._pid}; a forked "
                                   f"child must open a TickJournal of its own")

    @staticmethod
    def _as_ticks(ticks: object) -> np.ndarray:
        if not isinstance(ticks, (np.ndarray, np.void)) or ticks.dtype != records.TICK:
            what = getattr(ticks, "dtype", type(ticks).__name__)
            raise InvalidArgumentError(f"the journal takes shmpipe.records.TICK records, not {what}")
        return np.atleast_1d(ticks) if isinstance(ticks, np.ndarray) else np.array([ticks], records.TICK)

    def __enter__(self) -> TickJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_fork_in_child() -> None:
    # The child must not close (and truncate) files its parent is still writing.
    for journal in list(_live):
        journal._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "DATA_OFFSET",
    "HEADER",
    "TickJournal",
    "committed_count",
    "day_stamp",
    "journal_info",
    "journal_path",
    "read_journal",
    "ticks_for",
]
