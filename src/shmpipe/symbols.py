"""The symbol registry: (exchange, symbol) <-> dense u32 ids that every process on the host agrees on.

    from shmpipe import symbols
    sid = symbols.id_of("kraken", "BTC/USD")          # registers the pair when it is new
    symbols.register("kraken", "BTC/USD", price_decimals=1, size_decimals=8, depth=10)
    symbols.lookup(sid)                               # ("kraken", "BTC/USD"), in any process
    symbols.info(sid)                                 # SymbolInfo(..., price_decimals=1, ...)

Where it lives: a table in ``/dev/shm/shmpipe-symbols.<name>`` (name "default", or
``$SHMPIPE_SYMBOLS``), persisted line by line to a JSON-lines file (``$SHMPIPE_SYMBOLS_FILE`` for the
default registry, else ``$XDG_DATA_HOME/shmpipe/symbols-<name>.jsonl``, else
``~/.local/share/shmpipe/symbols-<name>.jsonl``). Whoever finds no table rebuilds it from the file,
so ids survive the segment's removal and reboots.

Ids start at 1: 0 means "no symbol", because a zeroed record (a slot never written, a memset buffer)
holds symbol_id 0 and must not name a real instrument. The table's entry 0 stays zeroed (an empty
exchange, which no symbol can have) and the file's first line is id 1. A registry made before ids
started at 1 may hold a real symbol at id 0: it keeps it (records written then carry that id), new
ids come after, and every handle that opens it logs a warning naming the symbol and how to renumber.

Ordering (the layout is _layout.h's shmpipe_symbols_header and shmpipe_symbol_entry):
- Appenders serialise on an fcntl OFD lock on one byte of the segment; the kernel drops a dead
  holder's lock, so a killed appender never wedges the others. Under the lock an appender writes
  the entry's line to the file and fsyncs it, fills entry[count], and only then store-releases
  count + 1. The file comes first so that any id a process has seen is on disk: a crash between
  the two leaves a line the table lacks, and the next appender, finding the file longer than the
  header's persisted_bytes, publishes it before anything else.
- Readers take no lock. They load-acquire count, which pairs with that release store, so every
  byte of every entry below count is visible to them. Entries are never rewritten except their
  facts word, which is one aligned 32-bit release store read with acquire: a reader sees whole
  facts, old or new.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import stat
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import posix_ipc

from . import _ring, segments
from .durable import fsync_dir
from .errors import (
    InvalidArgumentError,
    NoSpaceError,
    RegistryBusyError,
    RegistryFormatError,
    RegistryFullError,
    RegistryPermissionError,
    SymbolConflictError,
    SymbolNameError,
    UnknownSymbolError,
)

log = logging.getLogger(__name__)

_C = _ring.file_layouts()["constants"]
MAGIC = _C["SYMBOLS_MAGIC"]
LAYOUT_VERSION = _C["SYMBOLS_LAYOUT_VERSION"]
DATA_OFFSET = _C["SYMBOLS_DATA_OFFSET"]
EXCHANGE_BYTES = _C["SYMBOLS_EXCHANGE_BYTES"]
SYMBOL_BYTES = _C["SYMBOLS_SYMBOL_BYTES"]
PATH_BYTES = _C["SYMBOLS_PATH_BYTES"]
_LOCK_BYTE = _C["SYMBOLS_LOCK"]
_UNKNOWN = _C["DECIMALS_UNKNOWN"]   # decimals not known yet (0 is a real number of decimals)
MAX_DECIMALS = _UNKNOWN - 1
MAX_DEPTH = 0xFFFF
NO_SYMBOL = 0                       # what a zeroed record's symbol_id holds: never issued
FIRST_ID = 1
OLD_LAYOUT_VERSIONS = (1,)         # same bytes; made by code that still issued id 0: read as they are

# Mirrors of the C structs (tests/test_symbols.py compares them with offsetof).
HEADER = np.dtype({
    "names": ["magic", "layout_version", "entry_size", "capacity", "count", "persisted_bytes",
              "created_unix_ns", "path_len", "path"],
    "formats": ["<u8", "<u4", "<u4", "<u4", "<u8", "<u8", "<u8", "<u4", f"S{PATH_BYTES}"],
    "offsets": [0, 8, 12, 16, 24, 32, 40, 48, 128],
    "itemsize": DATA_OFFSET,
})
ENTRY = np.dtype({
    "names": ["price_decimals", "size_decimals", "depth", "registered_unix_ns", "exchange", "symbol"],
    "formats": ["u1", "u1", "<u2", "<u8", f"S{EXCHANGE_BYTES}", f"S{SYMBOL_BYTES}"],
    "offsets": [0, 1, 2, 8, 16, 48],
    "itemsize": 128,
})
_COUNT = HEADER.fields["count"][1]
_MAGIC_AT = HEADER.fields["magic"][1]
_PERSISTED = HEADER.fields["persisted_bytes"][1]
_VERSION = HEADER.fields["layout_version"][1]

DEFAULT_NAME = "default"
DEFAULT_CAPACITY = 1 << 16          # 8 MiB of table: every US equity and crypto pair fits many times
MAX_CAPACITY = 1 << 24
LOCK_TIMEOUT_S = 10.0
SHM_PREFIX = "shmpipe-symbols."
_FILE_FORMAT = 1


@dataclass(frozen=True)
class SymbolInfo:
    """One registered instrument. Decimals are None until someone registers them."""

    symbol_id: int
    exchange: str
    symbol: str
    price_decimals: int | None
    size_decimals: int | None
    depth: int                      # the book depth the exchange maintains; 0 = none


# -- checks ------------------------------------------------------------------------------------------
def _check_text(kind: str, value: object, limit: int) -> bytes:
    if not isinstance(value, str):
        raise SymbolNameError(f"{kind} must be a str, not {type(value).__name__} ({value!r})")
    if not value:
        raise SymbolNameError(f"{kind} is empty")
    if "\0" in value:
        raise SymbolNameError(f"{kind} {value!r} contains a NUL character")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SymbolNameError(f"{kind} {value!r} is not valid UTF-8 text ({exc.reason})") from None
    if len(raw) > limit:
        raise SymbolNameError(f"{kind} {value!r} is {len(raw)} UTF-8 bytes; the registry holds at most "
                              f"{limit}")
    return raw


def _check_fact(kind: str, value: object, limit: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= limit:
        raise SymbolNameError(f"{kind} must be an int from 0 to {limit}, not {value!r}")
    return int(value)


def _facts_word(price_decimals: int | None, size_decimals: int | None, depth: int | None) -> int:
    pd = _UNKNOWN if price_decimals is None else price_decimals
    sd = _UNKNOWN if size_decimals is None else size_decimals
    return pd | sd << 8 | (depth or 0) << 16


def _facts(word: int) -> tuple[int | None, int | None, int]:
    pd, sd = word & 0xFF, word >> 8 & 0xFF
    return (None if pd == _UNKNOWN else pd), (None if sd == _UNKNOWN else sd), word >> 16


def _merged_facts(label: str, word: int, price_decimals: int | None, size_decimals: int | None,
                  depth: int | None, *, change: bool = False) -> int:
    """The facts word with unknown facts filled in from the ones given; a known fact that differs
    from the one given is a conflict, unless ``change`` (the venue changed it: recorded, with when)."""
    old = _facts(word)
    new = list(old)
    for i, (kind, given) in enumerate((("price_decimals", price_decimals), ("size_decimals", size_decimals),
                                       ("depth", depth))):
        unset = old[i] is None or (kind == "depth" and old[i] == 0)
        if given is None or given == old[i]:
            continue
        if not unset and not change:
            raise SymbolConflictError(f"{label} is registered with {kind}={old[i]}, not {given} (a venue's "
                                      f"change is registered with effective_ns=)")
        new[i] = given
    return _facts_word(*new)


def default_path(name: str) -> Path:
    """The file a registry persists to unless told otherwise."""
    if name == _default_name() and os.environ.get("SHMPIPE_SYMBOLS_FILE"):
        return Path(os.environ["SHMPIPE_SYMBOLS_FILE"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "shmpipe" / f"symbols-{name}.jsonl"


def _default_name() -> str:
    return os.environ.get("SHMPIPE_SYMBOLS") or DEFAULT_NAME


def segment_path(name: str) -> Path:
    return segments.SHM_DIR / (SHM_PREFIX + name)


# -- the file ----------------------------------------------------------------------------------------
def _parse_line(raw: bytes, where: str) -> dict:
    try:
        line = json.loads(raw)
        if not isinstance(line, dict):
            raise ValueError("not a JSON object")
        return line
    except ValueError as exc:
        raise RegistryFormatError(f"symbol registry file {where}: unreadable line {raw[:80]!r} "
                                  f"({exc})") from None


def _split_complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines and how many bytes they take; a last line without its newline is a write a
    crash cut short (it was never published: the table is filled only after the fsync)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


# -- the registry ------------------------------------------------------------------------------------
_live: weakref.WeakSet[SymbolRegistry] = weakref.WeakSet()


class SymbolRegistry:
    """One process's handle on a registry. Lookups are lock-free reads of the shared table (cached
    per handle); registering takes the registry's lock for microseconds plus an fsync."""

    def __init__(self, name: str, path: Path | None, capacity: int, lock_timeout: float):
        self.name = name
        self._asked_path = path
        self._asked_capacity = capacity
        self._lock_timeout = lock_timeout
        self._thread_lock = threading.RLock()
        self._names: list[tuple[str, str]] = []          # id -> (exchange, symbol), what we have seen
        self._ids: dict[tuple[str, str], int] = {}
        self._mm: mmap.mmap | None = None
        self._fd = -1
        self._attach()
        _live.add(self)

    @classmethod
    def open(cls, name: str | None = None, *, path: str | os.PathLike | None = None,
             capacity: int = DEFAULT_CAPACITY, lock_timeout: float = LOCK_TIMEOUT_S) -> SymbolRegistry:
        """Attach to registry ``name``, creating its table from its file (or empty) when there is
        none. ``path`` is the file; every process of one registry must agree on it (the table
        records it, and a different one is refused). ``capacity`` applies only when the table is
        made."""
        name = segments.validate_name(name if name is not None else _default_name(), "symbol registry")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
            raise InvalidArgumentError(f"capacity must be an int from 1 to {MAX_CAPACITY}, not {capacity!r}")
        return cls(name, None if path is None else Path(path), capacity, lock_timeout)

    # -- attaching -----------------------------------------------------------------------------------
    def _attach(self) -> None:
        """Open (or create) the segment, and under the lock either validate the table or build it
        from the file; then map it."""
        try:
            shm = posix_ipc.SharedMemory("/" + SHM_PREFIX + self.name, flags=posix_ipc.O_CREAT, mode=0o600)
        except posix_ipc.PermissionsError as exc:
            raise RegistryPermissionError(f"cannot open symbol registry {self.name!r}: {exc}") from None
        fd = shm.fd
        try:
            self._check_owner(os.fstat(fd))
            if not _ring.lock_byte(fd, _LOCK_BYTE, self._lock_timeout):
                raise RegistryBusyError(f"symbol registry {self.name!r}: another process held its lock for "
                                        f"{self._lock_timeout} s")
            try:
                raw = os.pread(fd, DATA_OFFSET, 0)
                header = np.frombuffer(raw.ljust(DATA_OFFSET, b"\0"), HEADER)[0]
                if len(raw) < DATA_OFFSET or header["magic"] == 0:
                    self.path = (self._asked_path or default_path(self.name)).absolute()
                    self.capacity = self._build(fd)
                else:
                    self.path, self.capacity = self._validate(header, os.fstat(fd))
                mm = mmap.mmap(fd, DATA_OFFSET + self.capacity * ENTRY.itemsize)
            finally:
                _ring.unlock_byte(fd, _LOCK_BYTE)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._mm, self._pid = fd, mm, os.getpid()
        self._entries = np.frombuffer(mm, ENTRY, count=self.capacity, offset=DATA_OFFSET)
        self._inode = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        self._warn_if_zero_is_a_symbol()

    @property
    def zero_id_symbol(self) -> tuple[str, str] | None:
        """(exchange, symbol) holding id 0 in a registry made before ids started at 1, else None."""
        self._check_open()
        if self._published() == 0 or not self._entries[NO_SYMBOL]["exchange"]:
            return None
        e = self._entries[NO_SYMBOL]
        return bytes(e["exchange"]).decode("utf-8"), bytes(e["symbol"]).decode("utf-8")

    def _warn_if_zero_is_a_symbol(self) -> None:
        old = self.zero_id_symbol
        if old is not None:
            log.warning("symbol registry %r: id 0 is %r, given before ids started at 1; it keeps that id, so "
                        "a zeroed record (symbol_id 0) reads as that symbol. To renumber: stop its "
                        "processes, move %s aside, remove %s, and register again (records written before "
                        "keep the old ids)", self.name, old, self.path, segment_path(self.name))

    def _check_owner(self, st: os.stat_result) -> None:
        # /dev/shm is world-writable: a table someone else put at the name could lie about ids.
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise RegistryPermissionError(
                f"symbol registry {self.name!r} ({segment_path(self.name)}) is owned by uid {st.st_uid} "
                f"with mode "
                f"{stat.S_IMODE(st.st_mode):04o}: refusing a table this user did not make 0600")

    def _validate(self, header: np.void, st: os.stat_result) -> tuple[Path, int]:
        what = f"symbol registry {self.name!r} ({segment_path(self.name)})"
        if header["magic"] != MAGIC or header["entry_size"] != ENTRY.itemsize \
                or header["layout_version"] not in (LAYOUT_VERSION, *OLD_LAYOUT_VERSIONS):
            raise RegistryFormatError(f"{what} is not a version-{LAYOUT_VERSION} symbol table (magic "
                                      f"{int(header['magic']):#x}, version {header['layout_version']})")
        capacity, needed = int(header["capacity"]), DATA_OFFSET + int(header["capacity"]) * ENTRY.itemsize
        if not 1 <= capacity <= MAX_CAPACITY + FIRST_ID or st.st_size < needed \
                or st.st_blocks * 512 < needed \
                or header["count"] > capacity or header["path_len"] > PATH_BYTES:
            raise RegistryFormatError(f"{what} has a corrupt header (capacity {capacity}, count "
                                      f"{header['count']}, {st.st_size} bytes, "
                                      f"{st.st_blocks * 512} reserved)")
        path = Path(bytes(header["path"])[:header["path_len"]].decode("utf-8", "surrogateescape"))
        if self._asked_path is not None and self._asked_path.absolute() != path:
            raise RegistryFormatError(f"{what} persists to {path}, not to {self._asked_path.absolute()}: "
                                      f"every process of one registry must use one file")
        return path, capacity

    def _build(self, fd: int) -> int:
        """Make the table from the file (we hold the lock; the magic goes in last)."""
        raw_path = os.fsencode(self.path)
        if len(raw_path) > PATH_BYTES:
            raise SymbolNameError(f"symbol registry file path {self.path} is longer than {PATH_BYTES} bytes")
        lines, good_bytes = self._read_file()
        # One slot more than the symbols asked for: entry 0 is "no symbol".
        capacity = max(self._asked_capacity, 2 * len(lines)) + FIRST_ID
        size = DATA_OFFSET + capacity * ENTRY.itemsize
        os.ftruncate(fd, 0)                      # whatever a builder killed mid-way left behind
        try:
            os.posix_fallocate(fd, 0, size)      # reserved now: never SIGBUS on a full /dev/shm later
        except OSError as exc:
            raise NoSpaceError(f"symbol registry {self.name!r}: /dev/shm has no room for {size} bytes "
                               f"({exc.strerror})") from None
        # Built in private memory, then copied in: nothing that can fail runs with a view on the mapping.
        entries = np.zeros(capacity, ENTRY)
        count = 0
        for where, line in lines:
            count = _apply_line(entries, count, line, f"{self.path} {where}", self.name)
        header = np.zeros(1, HEADER)
        header["layout_version"], header["entry_size"] = LAYOUT_VERSION, ENTRY.itemsize
        header["capacity"] = capacity
        header["count"], header["persisted_bytes"] = count, good_bytes
        header["created_unix_ns"] = time.time_ns()
        header["path_len"], header["path"] = len(raw_path), raw_path
        with mmap.mmap(fd, size) as mm:
            mm[:DATA_OFFSET] = header.tobytes()
            mm[DATA_OFFSET:DATA_OFFSET + count * ENTRY.itemsize] = entries[:count].tobytes()
            _ring.store_release_u64(mm, _MAGIC_AT, MAGIC)
        return capacity

    def _read_file(self, start: int = 0) -> tuple[list[tuple[str, dict]], int]:
        """The file's entry lines from byte ``start`` (after its first line when start is 0), and
        the offset after the last complete line; a torn last line is cut off (we hold the lock)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return [], 0
        lines, complete = _split_complete_lines(data)
        if complete < len(data):
            log.warning("symbol registry %r: dropping a torn last line of %s (%d bytes at offset %d)",
                        self.name, self.path, len(data) - complete, start + complete)
            os.truncate(self.path, start + complete)
        parsed, offset = [], start
        for i, raw in enumerate(lines):
            where = f"line {i + 1}" if start == 0 else f"at byte {offset}"
            line = _parse_line(raw, f"{self.path} {where}")
            if start == 0 and i == 0:
                if line.get("shmpipe_symbols") != _FILE_FORMAT or line.get("registry") != self.name:
                    raise RegistryFormatError(
                        f"{self.path} is not the file of symbol registry {self.name!r} (its first line is "
                        f"{raw[:80]!r})")
            else:
                parsed.append((where, line))
            offset += len(raw) + 1
        return parsed, start + complete

    # -- locking and staleness -----------------------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The appenders' lock, on the table that is at the name now (re-attaching when the segment
        was removed or replaced since we mapped it, or when we are a forked child whose fd would
        share the parent's lock)."""
        with self._thread_lock:
            self._check_open()
            if self._pid != os.getpid() or not self._is_current():
                self._reattach()
            for _ in range(3):
                if not _ring.lock_byte(self._fd, _LOCK_BYTE, self._lock_timeout):
                    raise RegistryBusyError(f"symbol registry {self.name!r}: another process held its lock "
                                            f"for {self._lock_timeout} s")
                if self._is_current():
                    break
                _ring.unlock_byte(self._fd, _LOCK_BYTE)
                self._reattach()
            else:
                raise RegistryFormatError(f"symbol registry {self.name!r}: its segment keeps being replaced")
            try:
                yield
            finally:
                _ring.unlock_byte(self._fd, _LOCK_BYTE)

    def _is_current(self) -> bool:
        try:
            st = os.stat(segment_path(self.name))
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _reattach(self) -> None:
        self._release()
        self._attach()

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """How many symbols are registered (entry 0 counts only where it holds one)."""
        self._check_open()
        n = self._published()
        return n - 1 if n and not self._entries[NO_SYMBOL]["exchange"] else n

    def _published(self) -> int:
        return min(_ring.load_acquire_u64(self._mm, _COUNT), self.capacity)

    def _sync(self) -> None:
        """Learn the entries published since we last looked."""
        with self._thread_lock:
            n = self._published()
            for i in range(len(self._names), n):
                e = self._entries[i]
                if not e["exchange"]:           # entry 0 of a registry that starts at 1: no symbol
                    self._names.append(None)
                    continue
                key = (bytes(e["exchange"]).decode("utf-8"), bytes(e["symbol"]).decode("utf-8"))
                self._names.append(key)
                self._ids.setdefault(key, i)

    def lookup(self, symbol_id: int) -> tuple[str, str]:
        """(exchange, symbol) of an id registered by any process on the host."""
        names = self._names
        if isinstance(symbol_id, (int, np.integer)) and not isinstance(symbol_id, bool) \
                and 0 <= symbol_id < len(names) and names[symbol_id] is not None:
            return names[symbol_id]
        return self._names[self._known_id(symbol_id)]

    def _known_id(self, symbol_id: object) -> int:
        if isinstance(symbol_id, bool) or not isinstance(symbol_id, (int, np.integer)):
            raise UnknownSymbolError(f"symbol id must be an int, not {type(symbol_id).__name__} "
                                     f"({symbol_id!r})")
        self._check_open()
        self._sync()
        if not 0 <= symbol_id < len(self._names) and not self._is_current():
            with self._thread_lock:
                self._reattach()
            self._sync()
        n = len(self._names)
        if symbol_id == NO_SYMBOL and (n == 0 or self._names[NO_SYMBOL] is None):
            raise UnknownSymbolError(f"symbol id 0 names no symbol in symbol registry {self.name!r} (ids "
                                     f"start at 1; 0 is what a zeroed record holds)")
        if not 0 <= symbol_id < n:
            first = NO_SYMBOL if n and self._names[NO_SYMBOL] is not None else FIRST_ID
            known = f"ids {first}..{n - 1}" if n > first else "none yet"
            raise UnknownSymbolError(f"symbol id {symbol_id} is not registered in symbol registry "
                                     f"{self.name!r} ({len(self)} symbols, {known})")
        return int(symbol_id)

    def info(self, symbol_id: int) -> SymbolInfo:
        sid = self._known_id(symbol_id)
        word = _ring.load_acquire_u32(self._mm, DATA_OFFSET + sid * ENTRY.itemsize)
        return SymbolInfo(sid, *self._names[sid], *_facts(word))

    def find(self, exchange: str, symbol: str) -> int | None:
        """The id of a pair if it is registered, else None (registers nothing)."""
        _check_text("exchange", exchange, EXCHANGE_BYTES)
        _check_text("symbol", symbol, SYMBOL_BYTES)
        sid = self._ids.get((exchange, symbol))
        if sid is None:
            self._check_open()
            self._sync()
            sid = self._ids.get((exchange, symbol))
        return sid

    def entries(self) -> list[SymbolInfo]:
        self._check_open()
        self._sync()
        return [self.info(i) for i, name in enumerate(list(self._names)) if name is not None]

    # -- registering ---------------------------------------------------------------------------------
    def id_of(self, exchange: str, symbol: str) -> int:
        """The pair's id, registering it (facts unknown) when it is new."""
        sid = self._ids.get((exchange, symbol)) if isinstance(exchange, str) and isinstance(symbol, str) \
            else None
        return sid if sid is not None else self.register(exchange, symbol)

    def register(self, exchange: str, symbol: str, *, price_decimals: int | None = None,
                 size_decimals: int | None = None, depth: int | None = None,
                 effective_ns: int | None = None) -> int:
        """The pair's id, registering it when it is new, and recording the facts given. A fact not
        known yet (None, or depth 0) is filled in; a known one that differs raises
        SymbolConflictError, unless ``effective_ns`` says when the venue changed it (Kraken changes
        a pair's precision): then the new facts replace the old ones in one atomic store, and the
        file line records the change with ``effective_unix_ns`` (the file keeps every version)."""
        change = effective_ns is not None
        if change and (isinstance(effective_ns, bool) or not isinstance(effective_ns, int) or effective_ns < 0):
            raise InvalidArgumentError(f"effective_ns must be an int >= 0 (ns since the epoch), not {effective_ns!r}")
        raw_exchange = _check_text("exchange", exchange, EXCHANGE_BYTES)
        raw_symbol = _check_text("symbol", symbol, SYMBOL_BYTES)
        pd = _check_fact("price_decimals", price_decimals, MAX_DECIMALS)
        sd = _check_fact("size_decimals", size_decimals, MAX_DECIMALS)
        depth = _check_fact("depth", depth, MAX_DEPTH)
        label = f"symbol ({exchange!r}, {symbol!r})"
        sid = self.find(exchange, symbol)
        if sid is not None:
            word = self._facts_word(sid)
            if _merged_facts(label, word, pd, sd, depth, change=change) == word:
                return sid
        with self._exclusive():
            self._catch_up()
            self._sync()
            sid = self._ids.get((exchange, symbol))
            if sid is None:
                return self._append(raw_exchange, raw_symbol, _facts_word(pd, sd, depth))
            word = self._facts_word(sid)
            merged = _merged_facts(label, word, pd, sd, depth, change=change)
            if merged != word:
                self._persist(self._line(sid, merged, int(self._entries[sid]["registered_unix_ns"]),
                                         effective_ns if change else None))
                _ring.store_release_u32(self._mm, DATA_OFFSET + sid * ENTRY.itemsize, merged)
            return sid

    def _facts_word(self, sid: int) -> int:
        return _ring.load_acquire_u32(self._mm, DATA_OFFSET + sid * ENTRY.itemsize)

    def _append(self, raw_exchange: bytes, raw_symbol: bytes, word: int) -> int:
        """Under the lock: the file line (fsynced), then the entry, then count with release."""
        sid = max(self._published(), FIRST_ID)     # an empty table leaves entry 0 zeroed: no symbol
        if sid >= self.capacity:
            raise RegistryFullError(f"symbol registry {self.name!r} is full ({len(self)} symbols): "
                                    f"remove its segment ({segment_path(self.name)}) and reopen with a "
                                    f"larger capacity")
        if sid == FIRST_ID and struct.unpack_from("<I", self._mm, _VERSION)[0] != LAYOUT_VERSION:
            # An empty table an older process made: from now on it is one that starts at 1, which
            # that code would misread, so it is told the version it does not know.
            struct.pack_into("<I", self._mm, _VERSION, LAYOUT_VERSION)
        now = time.time_ns()
        self._entries[sid] = (word & 0xFF, word >> 8 & 0xFF, word >> 16, now, raw_exchange, raw_symbol)
        self._persist(self._line(sid, word, now))
        _ring.store_release_u64(self._mm, _COUNT, sid + 1)
        self._sync()
        return sid

    def _line(self, sid: int, word: int, registered_ns: int, effective_ns: int | None = None) -> bytes:
        e = self._entries[sid]
        pd, sd, depth = _facts(word)
        line = {"id": sid, "exchange": bytes(e["exchange"]).decode("utf-8"),
                "symbol": bytes(e["symbol"]).decode("utf-8"), "price_decimals": pd,
                "size_decimals": sd, "depth": depth, "registered_unix_ns": registered_ns}
        if effective_ns is not None:      # a venue's change of a known fact, and when it took effect
            line["effective_unix_ns"] = effective_ns
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def _persist(self, line: bytes) -> None:
        """Append one line and fsync it (we hold the lock); a new file starts with its own header."""
        persisted = struct.unpack_from("<Q", self._mm, _PERSISTED)[0]
        if persisted == 0:
            line = self._file_header() + line
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if persisted == 0:
            fsync_dir(self.path.parent)
        struct.pack_into("<Q", self._mm, _PERSISTED, persisted + len(line))

    def _file_header(self) -> bytes:
        return (json.dumps({"shmpipe_symbols": _FILE_FORMAT, "registry": self.name}) + "\n").encode()

    def _catch_up(self) -> None:
        """Under the lock: publish lines an appender wrote but died before publishing; rewrite the
        file from the table if it lost lines (removed or truncated behind our back)."""
        persisted = struct.unpack_from("<Q", self._mm, _PERSISTED)[0]
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size == persisted:
            return
        if size > persisted:
            lines, end = self._read_file(persisted)
            count = self._published()
            for where, line in lines:
                count = _apply_line(self._entries, count, line, f"{self.path} {where}", self.name,
                                    publish=lambda n: _ring.store_release_u64(self._mm, _COUNT, n),
                                    set_facts=lambda i, w: _ring.store_release_u32(
                                        self._mm, DATA_OFFSET + i * ENTRY.itemsize, w))
            struct.pack_into("<Q", self._mm, _PERSISTED, end)
            return
        log.warning("symbol registry %r: %s has %d bytes but %d were written to it; rewriting it from "
                    "the table", self.name, self.path, size, persisted)
        self._rewrite_file()

    def _rewrite_file(self) -> None:
        self._sync()
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        struct.pack_into("<Q", self._mm, _PERSISTED, 0)
        body = self._file_header()
        body += b"".join(self._line(i, self._facts_word(i), int(self._entries[i]["registered_unix_ns"]))
                         for i, name in enumerate(self._names) if name is not None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        struct.pack_into("<Q", self._mm, _PERSISTED, len(body))

    # -- life cycle ----------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._mm is None

    def _check_open(self) -> None:
        if self._mm is None:
            raise RegistryFormatError(f"symbol registry {self.name!r} is closed")

    def _release(self) -> None:
        self._entries = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        with self._thread_lock:
            self._release()

    def unlink(self) -> None:
        """Remove the table's name from /dev/shm (the file stays: the next opener rebuilds it)."""
        remove_segment(self.name)

    def __enter__(self) -> SymbolRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} symbols"
        return f"<SymbolRegistry {self.name!r} {state}, file {getattr(self, 'path', '?')}>"


def _apply_line(entries: np.ndarray, count: int, line: dict, where: str, registry: str,
                publish=None, set_facts=None) -> int:
    """Apply one file line to the table: id == count adds an entry, id < count updates its facts.
    Returns the new count."""
    try:
        sid = line["id"]
        exchange, symbol = line["exchange"], line["symbol"]
        raw_exchange = _check_text("exchange", exchange, EXCHANGE_BYTES)
        raw_symbol = _check_text("symbol", symbol, SYMBOL_BYTES)
        word = _facts_word(_check_fact("price_decimals", line.get("price_decimals"), MAX_DECIMALS),
                           _check_fact("size_decimals", line.get("size_decimals"), MAX_DECIMALS),
                           _check_fact("depth", line.get("depth"), MAX_DEPTH))
        registered = int(line.get("registered_unix_ns", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryFormatError(f"symbol registry file {where}: bad entry {line!r} ({exc})") from None
    if count == NO_SYMBOL and sid == FIRST_ID:
        count = FIRST_ID                  # a registry that starts at 1: entry 0 stays zeroed
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid <= count:
        raise RegistryFormatError(f"symbol registry file {where}: id {sid!r} where {count or FIRST_ID} "
                                  f"was next")
    if sid >= len(entries):
        raise RegistryFullError(f"symbol registry {registry!r} is full ({len(entries) - FIRST_ID} symbols) "
                                f"at {where}")
    if sid < count:
        e = entries[sid]
        if not e["exchange"]:
            raise RegistryFormatError(f"symbol registry file {where}: id 0 names no symbol in this registry "
                                      f"(its ids start at 1)")
        if (bytes(e["exchange"]), bytes(e["symbol"])) != (raw_exchange, raw_symbol):
            raise RegistryFormatError(f"symbol registry file {where}: id {sid} is ({exchange!r}, {symbol!r}) "
                                      f"here but {e['exchange']!r}, {e['symbol']!r} before")
        if set_facts is not None:
            set_facts(sid, word)          # a live table: one atomic store of the whole facts word
        else:                             # a table being built: nobody reads it yet
            entries[sid] = (word & 0xFF, word >> 8 & 0xFF, word >> 16, e["registered_unix_ns"],
                            e["exchange"], e["symbol"])
        return count
    entries[sid] = (word & 0xFF, word >> 8 & 0xFF, word >> 16, registered, raw_exchange, raw_symbol)
    if publish is not None:
        publish(sid + 1)
    return sid + 1


def remove_segment(name: str) -> bool:
    """Remove registry ``name``'s table from /dev/shm (its file stays). False if there was none."""
    try:
        posix_ipc.unlink_shared_memory("/" + SHM_PREFIX + segments.validate_name(name, "symbol registry"))
        return True
    except posix_ipc.ExistentialError:
        return False


# -- fork: a child must not share the parent's lock (an OFD lock belongs to the open file, which
# fork shares), nor inherit a thread lock some other thread held at the fork.
def _after_fork_in_child() -> None:
    for registry in list(_live):
        registry._thread_lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the host's default registry, for one-call use in any process --------------------------------------
_default: SymbolRegistry | None = None
_default_guard = threading.Lock()


def default_registry() -> SymbolRegistry:
    """The registry named by $SHMPIPE_SYMBOLS (else "default"), opened once per process."""
    global _default
    registry = _default
    if registry is None or registry.closed or registry.name != _default_name():
        with _default_guard:
            registry = _default
            if registry is None or registry.closed or registry.name != _default_name():
                registry = _default = SymbolRegistry.open()
    return registry


def id_of(exchange: str, symbol: str) -> int:
    """The id of (exchange, symbol) in the host's registry, registering it when it is new."""
    return default_registry().id_of(exchange, symbol)


def register(exchange: str, symbol: str, *, price_decimals: int | None = None,
             size_decimals: int | None = None, depth: int | None = None, effective_ns: int | None = None) -> int:
    return default_registry().register(exchange, symbol, price_decimals=price_decimals,
                                       size_decimals=size_decimals, depth=depth, effective_ns=effective_ns)


def lookup(symbol_id: int) -> tuple[str, str]:
    """(exchange, symbol) of an id, in any process on the host."""
    return default_registry().lookup(symbol_id)


def info(symbol_id: int) -> SymbolInfo:
    return default_registry().info(symbol_id)


def find(exchange: str, symbol: str) -> int | None:
    return default_registry().find(exchange, symbol)


__all__ = [
    "FIRST_ID",
    "NO_SYMBOL",
    "SymbolInfo",
    "SymbolRegistry",
    "default_path",
    "default_registry",
    "find",
    "id_of",
    "info",
    "lookup",
    "register",
    "remove_segment",
]
