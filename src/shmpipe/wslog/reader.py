"""Reading .wslog and .wslog.zst files entry by entry, with bounded memory and a clear account of
where a damaged file stops; merging several captures by receive time with a heap."""
from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO

from ..errors import WslogFormatError, WslogTruncatedError
from .format import (
    HEADER,
    HEADER_BYTES,
    MARKER_EXCHANGE_ID,
    MAX_ENTRY_BYTES,
    WslogEntry,
    WslogStop,
    decode_marker,
)

log = logging.getLogger("shmpipe.wslog")

CHUNK = 1 << 20


def zstandard_module():
    try:
        import zstandard
    except ImportError:
        raise WslogFormatError("compressed captures need the zstandard package "
                               "(pip install 'shmpipe[services]')") from None
    return zstandard


class WslogReader:
    """Iterate a capture's entries. A file that ends inside an entry (a killed writer) or declares
    an impossible length ends the iteration there, without raising: ``stop`` then says where and
    why (offset, declared and present bytes) and a warning is logged. ``strict=True`` raises
    WslogTruncatedError / WslogFormatError instead. A corrupt .zst raises WslogFormatError naming
    the file, after the entries that decompressed cleanly."""

    def __init__(self, path: str | os.PathLike, *, decode_markers: bool = True, strict: bool = False,
                 max_entry_bytes: int = MAX_ENTRY_BYTES):
        self.path = str(path)
        self.decode_markers = decode_markers
        self.strict = strict
        self.max_entry_bytes = max_entry_bytes
        self.stop: WslogStop | None = None
        self.entries = 0          # read so far

    def __iter__(self) -> Iterator[WslogEntry]:
        return self._read()

    def _read(self) -> Iterator[WslogEntry]:
        self.stop, self.entries = None, 0
        with open(self.path, "rb") as raw:
            if self.path.endswith(".zst"):
                zstandard = zstandard_module()
                total = _content_size(raw, zstandard)
                try:
                    source = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                                        closefd=False)
                except zstandard.ZstdError as exc:
                    raise WslogFormatError(f"{self.path}: not a readable zstd file ({exc})") from None
                yield from self._parse(_ZstdSource(self.path, source, total, zstandard.ZstdError), total)
            else:
                yield from self._parse(raw, os.fstat(raw.fileno()).st_size)

    def _parse(self, source: BinaryIO, total: int | None) -> Iterator[WslogEntry]:
        """Entries from a byte stream of ``total`` bytes (None: unknown until the end)."""
        buf, pos, base, eof = bytearray(), 0, 0, False   # base: the stream offset of buf[0]
        while True:
            if pos > CHUNK and pos * 2 > len(buf):
                del buf[:pos]
                base, pos = base + pos, 0
            offset = base + pos
            while len(buf) - pos < HEADER_BYTES and not eof:
                eof = not _read_more(source, buf)
            if len(buf) - pos < HEADER_BYTES:
                if len(buf) - pos == 0:
                    if offset == 0:
                        self._stopped(WslogStop(self.path, 0, "empty file"))
                    return
                self._stopped(WslogStop(self.path, offset, "the file ends inside an entry's header",
                                        present=len(buf) - pos))
                return
            recv_ns, exchange_id, length = HEADER.unpack_from(buf, pos)
            remaining = None if total is None else total - offset - HEADER_BYTES
            if remaining is not None and length > remaining:
                self._stopped(WslogStop(self.path, offset, "the file ends inside an entry's payload",
                                        declared=length, present=remaining))
                return
            if length > self.max_entry_bytes:
                self._stopped(WslogStop(self.path, offset, f"the length is over the "
                                        f"{self.max_entry_bytes}-byte limit (a corrupt header)",
                                        declared=length, present=remaining))
                return
            end = pos + HEADER_BYTES + length
            while len(buf) < end and not eof:
                eof = not _read_more(source, buf)
            if len(buf) < end:
                self._stopped(WslogStop(self.path, offset, "the file ends inside an entry's payload",
                                        declared=length, present=len(buf) - pos - HEADER_BYTES))
                return
            payload = bytes(buf[pos + HEADER_BYTES:end])
            pos = end
            if exchange_id == MARKER_EXCHANGE_ID and self.decode_markers:
                entry = decode_marker(recv_ns, payload)
                if entry is None:
                    self._stopped(WslogStop(self.path, offset, "a marker entry too short to hold a marker",
                                            declared=length, present=length))
                    return
            else:
                entry = WslogEntry(recv_ns, exchange_id, payload)
            self.entries += 1
            yield entry

    def _stopped(self, stop: WslogStop) -> None:
        self.stop = stop
        if self.strict:
            kind = WslogTruncatedError if "ends inside" in stop.reason else WslogFormatError
            raise kind(f"{stop} after {self.entries} entries")
        log.warning("%s after %d entries", stop, self.entries)


def _read_more(source: BinaryIO, buf: bytearray) -> bool:
    chunk = source.read(CHUNK)
    buf += chunk
    return bool(chunk)


def _content_size(raw: BinaryIO, zstandard) -> int | None:
    """The decompressed size the first frame declares (shmpipe's writer always records it)."""
    head = raw.read(18)
    raw.seek(0)
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None           # the decompressor will say what is wrong, naming the file
    return None if size < 0 else size


class _ZstdSource:
    """A zstd stream reader that names its file in every error, and notices a stream that ends
    before the size its frame declared (a .zst cut short)."""

    def __init__(self, path: str, reader, total: int | None, error_type):
        self.path, self.reader, self.total, self.error_type = path, reader, total, error_type
        self.produced = 0

    def read(self, n: int) -> bytes:
        try:
            chunk = self.reader.read(n)
        except self.error_type as exc:
            raise WslogFormatError(f"{self.path}: corrupt zstd data after {self.produced} decompressed bytes "
                                   f"({exc})") from None
        self.produced += len(chunk)
        if not chunk and self.total is not None and self.produced < self.total:
            raise WslogFormatError(f"{self.path}: the zstd stream ends after {self.produced} of the "
                                   f"{self.total} bytes its frame declares (a truncated .zst)")
        return chunk


def read_wslog(path: str | os.PathLike, **options) -> WslogReader:
    """Iterate one .wslog or .wslog.zst file (see WslogReader for the options)."""
    return WslogReader(path, **options)


def wslog_files(*paths: str | os.PathLike) -> list[Path]:
    """Files as given, and every .wslog / .wslog.zst under directories (sorted). A .wslog whose
    .zst is also there is left out: the writer was killed after compressing it, before removing it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*")
                            if p.name.endswith((".wslog", ".wslog.zst")) and p.is_file())
            found += [p for p in inside
                      if not (p.suffix == ".wslog" and p.with_name(p.name + ".zst").exists())]
        else:
            found.append(path)
    return found


class WslogMerge:
    """Entries of several captures in receive-time order (a heap over one reader per file; each
    file is in order already). Ties keep the order of the files given. ``stops`` lists where
    damaged files stopped."""

    def __init__(self, paths: Iterable[str | os.PathLike], **options):
        self.readers = [WslogReader(p, **options) for p in wslog_files(*paths)]

    def __iter__(self) -> Iterator[WslogEntry]:
        return heapq.merge(*self.readers, key=attrgetter("recv_ns"))

    @property
    def stops(self) -> list[WslogStop]:
        return [r.stop for r in self.readers if r.stop is not None]


def merge_wslogs(paths: Iterable[str | os.PathLike], **options) -> WslogMerge:
    """Merge files (or directories of them) by receive timestamp."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return WslogMerge(paths, **options)
