"""What shmpipe segments exist on this host, which of them anyone still uses, and what is in them.

"In use" comes from the OFD locks every open handle and every role holds (see _locks.h): the
kernel drops them when a process dies, so a crashed producer never keeps a name alive.

Three kinds of segment live in /dev/shm: rings (``shmpipe.<name>``, :func:`survey`), the live
counters services publish (``shmpipe-stats.<name>``, :func:`survey_stats`) and symbol registries
(``shmpipe-symbols.<name>``, :func:`survey_symbols`). :func:`dump` copies a ring's newest records
without attaching to it; :func:`decode` turns them into plain values with names."""
from __future__ import annotations

import mmap
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _ring, records, segments
from . import stats as stats_segments
from . import symbols as symbol_registry
from .errors import InvalidArgumentError, RingNotFoundError, RingPermissionError, ShmpipeError

# What a ring segment turned out to be (SegmentInfo.condition).
OK, HALF_CREATED, FOREIGN, CORRUPT, UNREADABLE = "ok", "half-created", "foreign", "corrupt", "unreadable"


@dataclass
class SegmentInfo:
    name: str
    path: str
    size: int
    in_use: bool
    ring: dict[str, Any] | None   # Ring.stats() when it is a readable ring
    problem: str | None           # why it is not a readable ring, if it is not
    headerless: bool = False      # no magic yet: a ring being created, or junk
    age_s: float = 0.0            # since the segment was last modified
    kind: str = "ring"
    # ok | half-created (no magic yet) | foreign (not a shmpipe ring) | corrupt (our magic, a header
    # that does not hold together) | unreadable (another user's, or permissions)
    condition: str = OK
    notes: list[str] = field(default_factory=list)   # "empty", "full", "producer gone", ...
    rates: dict[str, Any] | None = None               # see with_rates()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A segment without a header this young may be a ring whose creator is still at work (and died
# before taking its lock, or is on an older shmpipe): `clean` leaves it alone until then.
YOUNG_HEADERLESS_S = 60.0


def process_name(pid: int) -> str | None:
    """The name of process ``pid`` (psutil), or None when there is none or it cannot be read."""
    if not pid:
        return None
    try:
        import psutil
    except ImportError:     # psutil comes with the services extra; names are a nicety
        return None
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


def survey(names: list[str] | None = None) -> list[SegmentInfo]:
    from .ring import Ring

    found = []
    for name in names if names is not None else segments.list_names():
        try:
            seg = segments.open_existing(name)
        except (RingNotFoundError, ShmpipeError):
            continue   # removed meanwhile, or not ours to read
        try:
            in_use = _ring.segment_in_use(seg.fd)
            size = seg.size
            magic = int.from_bytes(os.pread(seg.fd, 8, 0).ljust(8, b"\0"), "little")
            # What a ring being created looks like: empty (just shm_open()ed) or full-size with
            # no magic yet. A file of any other size is junk however young it is.
            headerless = (size == 0 or size >= _ring.DATA_OFFSET) and magic == 0
            age_s = max(0.0, time.time() - os.fstat(seg.fd).st_mtime)
        finally:
            seg.close()
        stats, problem, condition = None, None, OK
        try:
            with Ring.open(name) as ring:
                stats = ring.stats()
        except RingNotFoundError:
            continue   # removed between the two opens
        except RingPermissionError as exc:
            problem, condition = str(exc), UNREADABLE
        except ShmpipeError as exc:
            problem = str(exc)
            if headerless:
                condition = HALF_CREATED
            elif size < _ring.DATA_OFFSET or magic != _ring.MAGIC:
                condition = FOREIGN
            else:
                condition = CORRUPT
        info = SegmentInfo(name, str(segments.SHM_DIR / (segments.PREFIX + name)), size,
                           in_use, stats, problem, headerless, round(age_s, 3), condition=condition)
        if stats is not None:
            _name_processes(stats)
            info.notes = ring_notes(stats)
        found.append(info)
    return found


def _name_processes(stats: dict[str, Any]) -> None:
    """Add "process" (the name) to the producer and each consumer; only while their role is held,
    since a dead process's pid may belong to someone else by now."""
    for side in [stats["producer"], *stats["consumers"]]:
        side["process"] = process_name(side["pid"]) if side["alive"] else None


def ring_notes(stats: dict[str, Any]) -> list[str]:
    """The states worth a human's attention, as short words."""
    notes = []
    if stats["written"] == 0:
        notes.append("empty")
    elif stats["fill"] >= stats["capacity"]:
        notes.append("full")
    producer = stats["producer"]
    if not producer["alive"]:
        notes.append("producer gone" if producer["pid"] or stats["written"] else "no producer yet")
    for c in stats["consumers"]:
        if c["evicted"]:
            notes.append(f"consumer {c['slot']} evicted")
        elif not c["alive"] and c["pid"]:
            notes.append(f"consumer {c['slot']} gone")
        elif c["alive"] and c["lag"] > 0:
            notes.append(f"consumer {c['slot']} lagging {c['lag']}")
    return notes


def stale(infos: list[SegmentInfo]) -> list[SegmentInfo]:
    """Segments that no live process holds: every owner is dead (or there never was one), less
    young header-less ones that may still be being created."""
    return [i for i in infos if not i.in_use and not (i.headerless and i.age_s < YOUNG_HEADERLESS_S)]


def remove(info: SegmentInfo) -> bool:
    """Unlink a segment if it is still unused right now; False if someone attached meanwhile."""
    try:
        seg = segments.open_existing(info.name)
    except RingNotFoundError:
        return False
    try:
        if _ring.segment_in_use(seg.fd):
            return False
        segments.unlink(info.name)
        return True
    except RingNotFoundError:
        return False
    finally:
        seg.close()


# -- stats publishers and symbol registries ------------------------------------------------------------
def _names_with_prefix(prefix: str) -> list[str]:
    if not segments.SHM_DIR.is_dir():
        return []
    return sorted(p.name[len(prefix):] for p in segments.SHM_DIR.iterdir() if p.name.startswith(prefix))


@dataclass
class StatsInfo:
    """One ``shmpipe.stats`` publisher: shmpipe.stats.read() plus the process name, or a problem."""
    name: str
    path: str
    live: bool = False
    pid: int = 0
    process: str | None = None
    started_ns: int = 0
    updated_ns: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    rates: dict[str, Any] | None = None
    kind: str = "stats"
    gauges: list[str] = field(default_factory=list)   # fields that are levels: no rate for them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stale_stats(infos: list[StatsInfo]) -> list[StatsInfo]:
    """Stats segments whose publisher is dead (a kill -9'd service leaves its segment behind):
    their numbers are history. Segments that cannot be read (another user's, half made) are not
    ours to judge."""
    return [i for i in infos if not i.live and not i.problem]


def remove_stats(info: StatsInfo) -> bool:
    """Unlink a dead publisher's stats segment if it is still dead right now."""
    return stats_segments.unlink_if_dead(info.name)


def stats_names() -> list[str]:
    """Names of every stats segment on this host (/dev/shm/shmpipe-stats.<name>)."""
    return _names_with_prefix(stats_segments.SHM_PREFIX)


def survey_stats(names: list[str] | None = None) -> list[StatsInfo]:
    """Every stats segment (/dev/shm/shmpipe-stats.*), or the named ones that exist."""
    found = []
    for name in names if names is not None else _names_with_prefix(stats_segments.SHM_PREFIX):
        info = StatsInfo(name, stats_segments.segment_path(name))
        try:
            got = stats_segments.read(name)
        except FileNotFoundError:
            continue
        except (ShmpipeError, OSError) as exc:
            info.problem = str(exc)
        else:
            info.live, info.pid, info.counters = got["live"], got["pid"], got["counters"]
            info.started_ns, info.updated_ns = got["started_ns"], got["updated_ns"]
            info.gauges = list(got.get("gauges", []))
            info.process = process_name(info.pid) if info.live else None
        found.append(info)
    return found


@dataclass
class SymbolsInfo:
    """One symbol registry table (/dev/shm/shmpipe-symbols.<name>)."""
    name: str
    path: str
    size: int = 0
    count: int = 0           # symbols registered
    capacity: int = 0
    file: str | None = None  # where the registry persists
    default: bool = False    # the registry this environment's processes use ($SHMPIPE_SYMBOLS)
    problem: str | None = None
    kind: str = "symbols"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def survey_symbols(names: list[str] | None = None) -> list[SymbolsInfo]:
    """Every symbol registry table, read (never created, never locked) from its header."""
    import posix_ipc

    found = []
    default_name = os.environ.get("SHMPIPE_SYMBOLS") or symbol_registry.DEFAULT_NAME
    for name in names if names is not None else _names_with_prefix(symbol_registry.SHM_PREFIX):
        info = SymbolsInfo(name, str(symbol_registry.segment_path(name)), default=name == default_name)
        try:
            shm = posix_ipc.SharedMemory("/" + symbol_registry.SHM_PREFIX + segments.validate_name(name))
        except posix_ipc.ExistentialError:
            continue
        except (posix_ipc.Error, ShmpipeError) as exc:
            info.problem = str(exc)
            found.append(info)
            continue
        try:
            info.size = os.fstat(shm.fd).st_size
            table_start = symbol_registry.DATA_OFFSET + symbol_registry.ENTRY.itemsize
            raw = os.pread(shm.fd, table_start, 0).ljust(table_start, b"\0")
        finally:
            os.close(shm.fd)
        header = np.frombuffer(raw, symbol_registry.HEADER, count=1)[0]
        entry0 = np.frombuffer(raw, symbol_registry.ENTRY, count=1, offset=symbol_registry.DATA_OFFSET)[0]
        versions = (symbol_registry.LAYOUT_VERSION, *symbol_registry.OLD_LAYOUT_VERSIONS)
        if header["magic"] != symbol_registry.MAGIC or header["layout_version"] not in versions:
            info.problem = ("being made (no header yet)" if header["magic"] == 0 else
                            f"not a version-{symbol_registry.LAYOUT_VERSION} symbol table")
        else:
            # Entry 0 is "no symbol" (zeroed) in a table whose ids start at 1: not a symbol, not room.
            count = int(header["count"])
            reserved = int(header["layout_version"] == symbol_registry.LAYOUT_VERSION
                           or (count > 0 and not entry0["exchange"]))
            info.count = count - reserved if count else 0
            info.capacity = int(header["capacity"]) - reserved
            path_len = min(int(header["path_len"]), symbol_registry.PATH_BYTES)
            info.file = bytes(header["path"])[:path_len].decode("utf-8", "replace")
        found.append(info)
    return found


# -- rates --------------------------------------------------------------------------------------------
def with_rates(before: list, after: list, elapsed_s: float) -> list:
    """Fill ``rates`` of each entry of ``after`` (SegmentInfo or StatsInfo) from the same entry of
    ``before``, ``elapsed_s`` seconds earlier. Rings: written/lost per second and, per consumer
    slot, records read per second; stats: each counter's change per second (gauges -- a latency,
    a lag -- get none: the change of a level per second means nothing)."""
    if elapsed_s <= 0:
        return after
    earlier = {(type(i).__name__, i.name): i for i in before}
    for info in after:
        old = earlier.get((type(info).__name__, info.name))
        if old is None:
            continue
        if isinstance(info, SegmentInfo) and info.ring and old.ring:
            r, o = info.ring, old.ring
            old_positions = {c["slot"]: c["position"] for c in o["consumers"]}
            info.rates = {
                "interval_s": round(elapsed_s, 3),
                "written_per_s": max(0, r["written"] - o["written"]) / elapsed_s,
                "lost_per_s": max(0, r["lost"] - o["lost"]) / elapsed_s,
                "consumers": [{"slot": c["slot"],
                               "read_per_s": max(0, c["position"] - old_positions[c["slot"]]) / elapsed_s}
                              for c in r["consumers"] if c["slot"] in old_positions],
            }
        elif isinstance(info, StatsInfo) and not info.problem and not old.problem:
            info.rates = {"interval_s": round(elapsed_s, 3),
                          "counters": {k: (v - old.counters[k]) / elapsed_s
                                       for k, v in info.counters.items()
                                       if k in old.counters and k not in info.gauges}}
    return after


# -- the newest records of a ring, without attaching ----------------------------------------------
@dataclass
class RecordDump:
    """A ring's newest records as copied by dump(): ``sequences[i]`` is the sequence number (the
    write position) of ``records[i]``."""
    name: str
    dtype: np.dtype
    written: int
    sequences: list[int]
    records: np.ndarray
    dropped: int        # records the producer overwrote during the copy, left out


_OFFSETS = _ring.layout_offsets()
_WRITE_POS, _CLAIM_POS = _OFFSETS["producer.write_pos"], _OFFSETS["producer.claim_pos"]


def dump(name: str, n: int) -> RecordDump:
    """Copy the newest ``n`` records of ring ``name`` (fewer when fewer were written).

    Nothing is attached and nothing written: the segment is mapped read-only and the positions are
    read from the header, so the ring and its consumers are undisturbed. Ordering: the write
    position is loaded with acquire, so every record before it is visible; the records are then
    copied word by word with acquire loads, and after them the producer's claim and write
    positions are loaded again -- the consumers' seqlock check. A record whose slot the producer
    had claimed (broadcast rings claim before they overwrite) or published over by then is left
    out and counted in ``dropped``. SPSC rings claim nothing: a slot the producer is rewriting at
    that instant (only possible for records the consumer has read already) can show a torn record.
    It is a best-effort snapshot for people, never a data path."""
    from .ring import Ring

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"the number of records to dump must be a positive int, not {n!r}")
    with Ring.open(name) as ring:   # validates the header and rebuilds the ring's own dtype
        dtype, capacity, itemsize = ring.dtype, ring.capacity, ring.itemsize
    seg = segments.open_existing(name)
    try:
        with mmap.mmap(seg.fd, _ring.DATA_OFFSET + capacity * itemsize, prot=mmap.PROT_READ) as mm:
            written = _ring.load_acquire_u64(mm, _WRITE_POS)
            n = min(n, written, capacity)
            first = written - n
            raw = bytearray(n * itemsize)
            done = 0
            while done < n:   # one or two runs of slots (the second after the wrap)
                slot = (first + done) & (capacity - 1)
                run = min(n - done, capacity - slot)
                start = _ring.DATA_OFFSET + slot * itemsize
                raw[done * itemsize:(done + run) * itemsize] = _copy_words(mm, start, run * itemsize)
                done += run
            front = max(_ring.load_acquire_u64(mm, _CLAIM_POS), _ring.load_acquire_u64(mm, _WRITE_POS))
    finally:
        seg.close()
    oldest_intact = front - capacity if front > capacity else 0
    dropped = max(0, min(n, oldest_intact - first))
    array = np.frombuffer(bytes(raw), dtype=dtype)[dropped:].copy()
    return RecordDump(name, dtype, written, list(range(first + dropped, written)), array, dropped)


def _copy_words(mm: mmap.mmap, start: int, nbytes: int) -> bytes:
    """bytes [start, start + nbytes) of mm, read as aligned u64 words each loaded with acquire, so
    that no load of a record can be ordered after the claim check that follows the copy."""
    begin, end = start & ~7, min((start + nbytes + 7) & ~7, len(mm) & ~7)
    load = _ring.load_acquire_u64
    words = np.fromiter((load(mm, at) for at in range(begin, end, 8)), dtype="<u8",
                        count=(end - begin) // 8).tobytes()
    # A record size that is not a multiple of 8 can leave a few bytes past the mapping's last
    # whole word: those are copied plainly (no ring of shmpipe's own record types has them).
    words += mm[end:start + nbytes]
    return words[start - begin:start - begin + nbytes]


# Names of the coded fields of our own record types (records.py, DESIGN.md).
_SOURCES = {records.SOURCE_TRUEFX: "truefx", records.SOURCE_OANDA: "oanda", records.SOURCE_IB: "ib",
            records.SOURCE_COINBASE: "coinbase", records.SOURCE_KRAKEN: "kraken",
            records.SOURCE_ALPACA: "alpaca", records.SOURCE_SYNTHETIC: "synthetic"}
_TICK_FLAGS = {records.TICK_FLAG_TRADE: "trade", records.TICK_FLAG_QUOTE: "quote",
               records.TICK_FLAG_REPLAYED: "replayed", records.TICK_FLAG_GAP_BEFORE: "gap"}
_LEVEL_FLAGS = {records.LEVEL_FLAG_GAP_BEFORE: "gap"}
_SIDES = {records.SIDE_BID: "bid", records.SIDE_ASK: "ask"}
_ACTIONS = {records.ACTION_SET: "set", records.ACTION_SNAPSHOT_BEGIN: "snapshot_begin",
            records.ACTION_SNAPSHOT_END: "snapshot_end", records.ACTION_TRADE: "trade",
            records.ACTION_CHECKSUM: "checksum"}


def _flag_names(value: int, names: dict[int, str]) -> str:
    parts = [label for bit, label in names.items() if value & bit]
    rest = value & ~sum(names)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) if parts else "-"


def _coded(dtype: np.dtype) -> dict[str, Any]:
    """field -> function giving the name of a coded value, for our own record types."""
    if dtype == records.TICK:
        return {"source": lambda v: _SOURCES.get(v, str(v)), "flags": lambda v: _flag_names(v, _TICK_FLAGS)}
    if dtype == records.LEVEL_UPDATE:
        return {"side": lambda v: _SIDES.get(v, str(v)), "action": lambda v: _ACTIONS.get(v, str(v)),
                "source": lambda v: _SOURCES.get(v, str(v)), "flags": lambda v: _flag_names(v, _LEVEL_FLAGS)}
    return {}


def symbol_name(symbol_id: int) -> str | None:
    """"exchange:symbol" of an id in this environment's registry, None when it is not known."""
    try:
        exchange, symbol = symbol_registry.lookup(int(symbol_id))
    except (ShmpipeError, OSError, ValueError):
        return None
    return f"{exchange}:{symbol}"


def _plain(value: Any) -> Any:
    """A numpy field value as JSON-ready Python: numbers, text, lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).rstrip(b"\0").decode("utf-8", "replace")
    if isinstance(value, np.void):
        return bytes(value).hex()
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode(snapshot: RecordDump) -> list[dict[str, Any]]:
    """One dict per record: "seq", then every field by name (plain Python values). A "symbol_id"
    field adds "symbol" ("exchange:symbol" through the symbol registry, or the raw id when it is
    not registered); Tick and LevelUpdate codes add "<field>_name" (source, flags, side, action)."""
    dtype = snapshot.dtype
    coded = _coded(dtype)
    names_cache: dict[int, str | None] = {}
    out = []
    for seq, rec in zip(snapshot.sequences, snapshot.records):
        row: dict[str, Any] = {"seq": seq}
        for fname in dtype.names or ():
            value = _plain(rec[fname])
            row[fname] = value
            if fname == "symbol_id":
                if value not in names_cache:
                    names_cache[value] = symbol_name(value)
                row["symbol"] = names_cache[value] or str(value)
            elif fname in coded:
                row[f"{fname}_name"] = coded[fname](value)
        if dtype.names is None:
            row["bytes"] = bytes(rec).hex()
        out.append(row)
    return out


__all__ = [
    "RecordDump",
    "SegmentInfo",
    "StatsInfo",
    "SymbolsInfo",
    "decode",
    "dump",
    "process_name",
    "remove",
    "remove_stats",
    "ring_notes",
    "stale",
    "stale_stats",
    "stats_names",
    "survey",
    "survey_stats",
    "survey_symbols",
    "symbol_name",
    "with_rates",
]
