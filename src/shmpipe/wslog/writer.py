"""WslogWriter: raw frames to ``<dir>/<exchange>/YYYYMMDD_HH.wslog`` from a background thread.

The caller's thread (an event loop) only appends to an in-memory list; a writer thread turns the
list into entries, writes them through large buffers and hands them to the OS at least every
``flush_interval``. Files rotate by the hour of each entry's receive time; an hour's file is also
closed once the clock is past that hour and nothing went into it for ``idle_grace`` seconds, so
a quiet exchange's last file does not stay open. Closed files are fsynced, then compressed to
``.wslog.zst`` by a second thread
(written to ``.zst.part``, fsynced, renamed, and only then the ``.wslog`` removed), and
``index.json`` is updated as files open, close and compress.

Back-pressure: a caller waits only when ``max_pending_bytes`` are queued, that is when the disk has
been slower than the feed for a long while; ``stats()["full_waits"]`` counts those waits.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..durable import fsync_dir
from ..errors import InvalidArgumentError, WslogWriteError
from .format import (
    HEADER,
    HEADER_BYTES,
    MARKER_EXCHANGE_ID,
    as_payload,
    check_exchange_id,
    check_recv_ns,
    marker_payload,
)
from .index import update_index
from .reader import zstandard_module

log = logging.getLogger("shmpipe.wslog")

HOUR_NS = 3600 * 1_000_000_000
_WAKE_BYTES = 1 << 20            # a batch this big wakes the writer before its interval is up
_FILE_BUFFER = 1 << 20
_EXCHANGE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


@dataclass
class _OpenFile:
    exchange_id: int
    exchange: str
    hour: int
    path: Path
    key: str                     # its name in index.json
    file: BinaryIO
    first_recv_ns: int | None = None
    last_recv_ns: int | None = None
    entries: int = 0
    markers: int = 0
    bytes: int = 0
    last_write_clock_ns: int = 0      # the clock when an entry last went in: idle is measured from it

    def index_fields(self, state: str, compressed_bytes: int | None = None) -> dict:
        fields = {"exchange": self.exchange, "exchange_id": self.exchange_id,
                  "first_recv_ns": self.first_recv_ns, "last_recv_ns": self.last_recv_ns,
                  "entries": self.entries, "markers": self.markers, "bytes": self.bytes, "state": state}
        if compressed_bytes is not None:
            fields["compressed_bytes"] = compressed_bytes
        return fields


class WslogWriter:
    """Append raw frames and markers; never waits on the disk in the caller's thread.

    ``exchanges`` names each exchange id's directory ({1: "coinbase", ...}; an id without a name
    gets its number). ``clock`` (ns since the epoch) stamps markers given no time and decides when
    an idle hour's file closes; tests inject one."""

    def __init__(self, directory: str | os.PathLike, exchanges: Mapping[int, str] | None = None, *,
                 clock: Callable[[], int] = time.time_ns, compress: bool = True, compress_level: int = 3,
                 flush_interval: float = 0.2, idle_grace: float = 5.0, max_pending_bytes: int = 256 << 20):
        self.directory = Path(directory)
        self._names = {check_exchange_id(k): _check_exchange_name(v) for k, v in (exchanges or {}).items()}
        if not flush_interval > 0 or not idle_grace >= 0 or not max_pending_bytes > 0:
            raise InvalidArgumentError("flush_interval and max_pending_bytes must be > 0, idle_grace >= 0")
        self._zstd = zstandard_module() if compress else None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._compress_level = compress_level
        self._flush_interval = flush_interval
        self._idle_grace_ns = int(idle_grace * 1e9)
        self._max_pending = max_pending_bytes
        self._cond = threading.Condition()
        self._pending: list[tuple[int, int, int, bytes]] = []   # recv_ns, file's exchange, header's, payload
        self._pending_bytes = 0
        self._flush_asked = self._flush_done = 0
        self._compress_asked = self._compress_done = 0
        self._closing = False
        self._error: BaseException | None = None
        self._compress_errors: list[str] = []
        self._stats = {"entries": 0, "markers": 0, "bytes": 0, "files_opened": 0, "files_closed": 0,
                       "files_compressed": 0, "full_waits": 0}
        self._files: dict[int, _OpenFile] = {}                  # the writer thread's alone
        self._to_compress: queue.Queue[_OpenFile | None] = queue.Queue()
        self._writer = threading.Thread(target=self._run, name=f"wslog-writer {self.directory}", daemon=True)
        self._compressor = threading.Thread(target=self._compress_loop,
                                            name=f"wslog-compress {self.directory}", daemon=True)
        self._writer.start()
        self._compressor.start()
        _live.add(self)

    # -- the caller's side -------------------------------------------------------------------------------
    def write(self, recv_ns: int, exchange_id: int, payload: bytes | str) -> None:
        """Queue one frame as received (text frames as str or their UTF-8 bytes)."""
        self._submit(check_recv_ns(recv_ns), check_exchange_id(exchange_id), exchange_id, as_payload(payload))

    def marker(self, exchange_id: int, kind: str, detail: str | bytes = "",
               recv_ns: int | None = None) -> None:
        """Queue a marker entry ("connect", "disconnect" or "subscribe") about ``exchange_id``."""
        payload = marker_payload(exchange_id, kind, detail)
        when = self._clock() if recv_ns is None else check_recv_ns(recv_ns)
        self._submit(when, exchange_id, MARKER_EXCHANGE_ID, payload)

    def connect(self, exchange_id: int, url: str = "", recv_ns: int | None = None) -> None:
        self.marker(exchange_id, "connect", url, recv_ns)

    def disconnect(self, exchange_id: int, reason: str = "", recv_ns: int | None = None) -> None:
        self.marker(exchange_id, "disconnect", reason, recv_ns)

    def subscribe(self, exchange_id: int, message: str | bytes = "", recv_ns: int | None = None) -> None:
        self.marker(exchange_id, "subscribe", message, recv_ns)

    def _submit(self, recv_ns: int, file_exchange: int, header_exchange: int, payload: bytes) -> None:
        size = HEADER_BYTES + len(payload)
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise WslogWriteError(f"capture writer for {self.directory} is closed")
            if self._pending_bytes + size > self._max_pending and self._pending:
                self._stats["full_waits"] += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._pending_bytes + size <= self._max_pending
                                    or not self._pending or self._error is not None or self._closing)
                self._raise_if_failed()
            self._pending.append((recv_ns, file_exchange, header_exchange, payload))
            self._pending_bytes += size
            if self._pending_bytes >= _WAKE_BYTES:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is in the OS's hands (and idle hours are
        closed by the clock); False if ``timeout`` seconds passed first."""
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise WslogWriteError(f"capture writer for {self.directory} is closed")
            self._flush_asked += 1
            wanted = self._flush_asked
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._flush_done >= wanted or self._error is not None, timeout)
            self._raise_if_failed()
            return done

    def wait_compressed(self, timeout: float | None = None) -> bool:
        """Wait until every file closed so far is compressed (or failed to be; close() reports it)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._compress_done >= self._compress_asked, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, close and compress every file, and stop both threads. Raises
        WslogWriteError if a write or a compression failed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(timeout)
        self._compressor.join(timeout)
        if self._writer.is_alive() or self._compressor.is_alive():
            raise WslogWriteError(f"capture writer for {self.directory} did not finish within {timeout} s")
        with self._cond:
            self._raise_if_failed()
            if self._compress_errors:
                raise WslogWriteError(f"capture writer for {self.directory}: "
                                      f"{'; '.join(self._compress_errors)}")

    def stats(self) -> dict:
        with self._cond:
            return dict(self._stats, pending_bytes=self._pending_bytes,
                        compress_errors=list(self._compress_errors))

    def __enter__(self) -> WslogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WslogWriteError(f"capture writer for {self.directory} stopped: "
                                  f"{self._error}") from self._error

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not (self._pending or self._closing or self._flush_asked > self._flush_done):
                        self._cond.wait(self._flush_interval)
                    batch, self._pending, self._pending_bytes = self._pending, [], 0
                    flush_wanted, closing = self._flush_asked, self._closing
                    self._cond.notify_all()                      # callers waiting for room
                self._write(batch)
                self._close_idle(self._clock())
                with self._cond:
                    self._flush_done = flush_wanted
                    self._cond.notify_all()
                    if closing and not self._pending:
                        break
            for f in list(self._files.values()):
                self._close(f)
        except BaseException as exc:
            log.exception("capture writer for %s stopped", self.directory)
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            self._to_compress.put(None)

    def _write(self, batch: list[tuple[int, int, int, bytes]]) -> None:
        touched = {}
        now = self._clock() if batch else 0
        for recv_ns, exchange_id, header_exchange, payload in batch:
            f = self._file_for(exchange_id, recv_ns)
            f.file.write(HEADER.pack(recv_ns, header_exchange, len(payload)))
            f.file.write(payload)
            f.first_recv_ns = recv_ns if f.first_recv_ns is None else f.first_recv_ns
            f.last_recv_ns = recv_ns
            f.entries += 1
            f.markers += header_exchange == MARKER_EXCHANGE_ID
            f.bytes += HEADER_BYTES + len(payload)
            f.last_write_clock_ns = now
            touched[id(f)] = f
        for f in touched.values():
            if not f.file.closed:                      # a file rotated out was flushed as it closed
                f.file.flush()
        with self._cond:
            markers = sum(1 for e in batch if e[2] == MARKER_EXCHANGE_ID)
            self._stats["entries"] += len(batch) - markers
            self._stats["markers"] += markers
            self._stats["bytes"] += sum(HEADER_BYTES + len(e[3]) for e in batch)

    def _file_for(self, exchange_id: int, recv_ns: int) -> _OpenFile:
        """The exchange's file for the hour of recv_ns. An entry older than the open file's hour
        (the clock stepped back) goes into the open file rather than reopening a closed one."""
        hour = recv_ns // HOUR_NS
        f = self._files.get(exchange_id)
        if f is not None and hour > f.hour:
            self._close(f)
            f = None
        if f is None:
            f = self._files[exchange_id] = self._open(exchange_id, hour)
        return f

    def _open(self, exchange_id: int, hour: int) -> _OpenFile:
        """A new file for the hour: YYYYMMDD_HH.wslog, or YYYYMMDD_HH.N.wslog when that hour already
        has one (a restart within the hour): never append after what a killed writer left."""
        name = self._names.get(exchange_id, str(exchange_id))
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H", time.gmtime(hour * 3600))
        for n in itertools.count():
            path = folder / (f"{stamp}.wslog" if n == 0 else f"{stamp}.{n}.wslog")
            if path.with_name(path.name + ".zst").exists():
                continue
            try:
                handle = open(path, "xb", buffering=_FILE_BUFFER)
                break
            except FileExistsError:
                continue
        f = _OpenFile(exchange_id, name, hour, path, f"{name}/{path.name}", handle)
        update_index(self.directory, f.key, f.index_fields("open"))
        with self._cond:
            self._stats["files_opened"] += 1
        return f

    def _close(self, f: _OpenFile) -> None:
        f.file.flush()
        os.fsync(f.file.fileno())
        f.file.close()
        del self._files[f.exchange_id]
        update_index(self.directory, f.key, f.index_fields("closed"))
        with self._cond:
            self._stats["files_closed"] += 1
            if self._zstd is not None:
                self._compress_asked += 1
        if self._zstd is not None:
            self._to_compress.put(f)

    def _close_idle(self, now_ns: int) -> None:
        """Close files whose hour is over by the clock and that got nothing for ``idle_grace``
        (a file of an old hour that is still being written, as in a backfill, stays open)."""
        for f in list(self._files.values()):
            if (f.hour + 1) * HOUR_NS <= now_ns and now_ns - f.last_write_clock_ns >= self._idle_grace_ns:
                self._close(f)

    # -- the compressor thread ---------------------------------------------------------------------------
    def _compress_loop(self) -> None:
        while True:
            f = self._to_compress.get()
            if f is None:
                return
            try:
                self._compress(f)
            except Exception as exc:                    # the .wslog stays: nothing is lost
                log.exception("compressing %s failed", f.path)
                with self._cond:
                    self._compress_errors.append(f"compressing {f.path} failed: {exc}")
            finally:
                with self._cond:
                    self._compress_done += 1
                    self._cond.notify_all()

    def _compress(self, f: _OpenFile) -> None:
        """.wslog -> .wslog.zst.part (content size and checksum in the frame), fsync, rename, then
        remove the .wslog: at every moment one complete copy exists under a name readers know."""
        done = f.path.with_name(f.path.name + ".zst")
        part = f.path.with_name(f.path.name + ".zst.part")
        compressor = self._zstd.ZstdCompressor(level=self._compress_level, write_checksum=True,
                                               write_content_size=True)
        with open(f.path, "rb") as src, open(part, "wb") as dst:
            compressor.copy_stream(src, dst, size=os.fstat(src.fileno()).st_size)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(part, done)
        fsync_dir(done.parent)
        os.unlink(f.path)
        update_index(self.directory, f"{f.key}.zst", f.index_fields("compressed", done.stat().st_size),
                     replaces=f.key)
        with self._cond:
            self._stats["files_compressed"] += 1


# Both threads are daemons (a stuck disk must not hang interpreter exit), so a writer the program
# forgot to close is closed at exit: what it queued still reaches its files.
_live: weakref.WeakSet[WslogWriter] = weakref.WeakSet()


@atexit.register
def _close_forgotten_writers() -> None:
    for writer in list(_live):
        try:
            writer.close(timeout=10)
        except Exception:
            log.exception("closing the capture writer for %s at exit failed", writer.directory)


def _check_exchange_name(name: object) -> str:
    if not isinstance(name, str) or not _EXCHANGE_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidArgumentError(f"exchange name {name!r} cannot be a directory name: use 1-64 characters "
                                   f"from A-Z a-z 0-9 _ . -")
    return name


