# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-level work of a book message, compiled: text or float -> checked f64 -> a packed
LevelUpdate appended to the parser's bytearray, and RFC 3339 timestamps -> ns.

The parsers stay Python (schemas, gaps, instruments); only the loops that run once per level and
the timestamp arithmetic are here, because those are what a book message's few-µs budget cannot
pay for in Python (a float(), a check, a struct.pack and a list append per level, ~1 µs each).
Semantics are exactly those of ``feed_parser.check_level`` / ``record_batch.pack_level`` /
``timestamps.rfc3339_ns``; tests/test_capture_levels.py checks them against each other.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from .feed_parser import BadValue
from .timestamps import rfc3339_ns as _rfc3339_ns_python

from cpython.object cimport PyObject

cdef extern from "Python.h":
    # overflow_exception NULL: an overflow gives +-inf (which _check_level then refuses)
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0

cdef extern from "_layout.h" nogil:   # the record layouts the ring and the dtypes share
    ctypedef struct shmpipe_level_update:
        uint64_t timestamp_ns
        double price
        double size
        uint32_t symbol_id
        uint8_t side
        uint8_t action
        uint8_t source
        uint8_t flags

ctypedef shmpipe_level_update capture_level_update

cdef enum:
    ACTION_SET = 0
    ACTION_SNAPSHOT_BEGIN = 1
    ACTION_SNAPSHOT_END = 2
    ACTION_CHECKSUM = 4
    ACTION_INVALIDATE = 5
    MAX_NUMBER_TEXT = 64
cdef double INF = float("inf")


cdef inline capture_level_update* _grow(bytearray out, Py_ssize_t n) except NULL:
    """Room for n more records at the end of ``out``; returns where the first goes."""
    cdef Py_ssize_t used = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, used + n * 32)
    return <capture_level_update*>(PyByteArray_AS_STRING(out) + used)


cdef inline void _put(capture_level_update* r, uint64_t ts, double price, double size, uint32_t sid,
                      uint8_t side, uint8_t action, uint8_t source, uint8_t flags) noexcept:
    r.timestamp_ns = ts
    r.price = price
    r.size = size
    r.symbol_id = sid
    r.side = side
    r.action = action
    r.source = source
    r.flags = flags


cdef inline void _check_level(double price, double size) except *:
    if not (0.0 < price < INF and 0.0 <= size < INF):
        raise BadValue(f"level price {price!r} size {size!r}: price must be finite and > 0, "
                       "size finite and >= 0")


cdef double _raw_number(object raw) except? -1.0:
    """float(raw) for a bytes-like raw JSON number (msgspec.Raw), without building a Python float.
    Anything else (a quoted string, true, null) raises ValueError, as float() does."""
    cdef Py_buffer view
    cdef char text[MAX_NUMBER_TEXT + 1]
    PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
    try:
        if view.len == 0 or view.len > MAX_NUMBER_TEXT:
            return float(bytes(raw))          # the slow path names the value in its error
        memcpy(text, view.buf, view.len)
        text[view.len] = 0
    finally:
        PyBuffer_Release(&view)
    return PyOS_string_to_double(text, NULL, NULL)   # the whole text or ValueError; overflow -> inf


def append_kraken_book(bytearray out, list bids, list asks, uint64_t ts, uint32_t symbol_id,
                       uint8_t source, uint8_t flags, bint snapshot, object checksum):
    """One Kraken v2 book message's records: [snapshot-begin,] a SET per bid then per ask (levels
    with msgspec.Raw ``price``/``qty``) [, snapshot-end], then the checksum record. ``flags`` (the
    gap-before bit) goes on the first record. Raises BadValue for a level the market cannot have;
    ``out`` is then left as it was."""
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    cdef Py_ssize_t n = len(bids) + len(asks) + 1 + (2 if snapshot else 0)
    cdef capture_level_update* r
    cdef double price, size
    cdef object level
    cdef list side_levels
    cdef uint8_t side
    cdef Py_ssize_t i = 0
    cdef double checksum_value = <double>(<uint64_t>(checksum & 0xFFFFFFFF))
    r = _grow(out, n)
    try:
        if snapshot:
            _put(&r[i], ts, 0.0, 0.0, symbol_id, 0, ACTION_SNAPSHOT_BEGIN, source, flags)
            i += 1
            flags = 0
        for side in range(2):
            side_levels = bids if side == 0 else asks
            for level in side_levels:
                price = _raw_number(level.price)
                size = _raw_number(level.qty)
                _check_level(price, size)
                _put(&r[i], ts, price, size, symbol_id, side, ACTION_SET, source, flags)
                i += 1
                flags = 0
        if snapshot:
            _put(&r[i], ts, 0.0, 0.0, symbol_id, 0, ACTION_SNAPSHOT_END, source, 0)
            i += 1
        _put(&r[i], ts, checksum_value, 0.0, symbol_id, 0, ACTION_CHECKSUM, source, flags)
    except BaseException:
        PyByteArray_Resize(out, start)
        raise


def append_coinbase_updates(bytearray out, list updates, uint32_t symbol_id, uint8_t source,
                            uint8_t flags):
    """One Coinbase l2_data update event's SET records (levels with ``side`` "bid"/"offer",
    ``event_time`` RFC 3339 text, ``price_level`` and ``new_quantity`` floats). ``flags`` goes on
    the first record. Returns the last level's timestamp (0 when there were none). Raises BadValue
    or ValueError for a bad level or time; ``out`` is then left as it was."""
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    cdef capture_level_update* r
    cdef Py_ssize_t i = 0
    cdef double price, size
    cdef uint64_t ts = 0
    cdef object time_text = None, u, side_text
    cdef uint8_t side
    r = _grow(out, len(updates))
    try:
        for u in updates:
            text = u.event_time
            if text is not time_text and text != time_text:   # an update's levels usually share it
                time_text = text
                ts = rfc3339_ns(text)
            price = u.price_level
            size = u.new_quantity
            _check_level(price, size)
            side_text = u.side
            if side_text == "bid":
                side = 0
            elif side_text == "offer":
                side = 1
            else:
                raise BadValue(f"level side {side_text!r} is neither 'bid' nor 'offer'")
            _put(&r[i], ts, price, size, symbol_id, side, ACTION_SET, source, flags)
            i += 1
            flags = 0
    except BaseException:
        PyByteArray_Resize(out, start)
        raise
    return ts


cdef enum:
    LEVEL_FLAG_LAST = 16
    SEEN_INLINE = 16


def mark_last(bytearray out, Py_ssize_t start):
    """Set flags bit4 ("last", DESIGN.md) on the final record of each symbol among the records
    appended to ``out`` from byte ``start`` on (one venue message's): the order book judges and
    publishes a book only there. Returns how many records were marked."""
    cdef Py_ssize_t n = (PyByteArray_GET_SIZE(out) - start) // 32
    cdef capture_level_update* r = <capture_level_update*>(PyByteArray_AS_STRING(out) + start)
    cdef uint32_t seen[SEEN_INLINE]
    cdef Py_ssize_t nseen = 0, i, k, marked = 0
    cdef uint32_t sid
    cdef bint found
    cdef set more = None             # a message naming more than SEEN_INLINE symbols (rare)
    i = n - 1
    while i >= 0:
        sid = r[i].symbol_id
        found = False
        for k in range(nseen):
            if seen[k] == sid:
                found = True
                break
        if not found and more is not None and sid in more:
            found = True
        if not found:
            if nseen < SEEN_INLINE:
                seen[nseen] = sid
                nseen += 1
            else:
                if more is None:
                    more = set()
                more.add(sid)
            r[i].flags |= LEVEL_FLAG_LAST
            marked += 1
        i -= 1
    return marked


def append_invalidates(bytearray out, object symbol_ids, uint64_t ts, uint8_t source, uint8_t flags):
    """One invalidate record (action 5, no level, bit4 set: a message of its own) per symbol id."""
    cdef list sids = list(symbol_ids)
    cdef capture_level_update* r = _grow(out, len(sids))
    cdef Py_ssize_t i
    for i in range(len(sids)):
        _put(&r[i], ts, 0.0, 0.0, <uint32_t>sids[i], 0, ACTION_INVALIDATE, source, flags | LEVEL_FLAG_LAST)
    return len(sids)


# -- RFC 3339 -> ns --------------------------------------------------------------------------------
cdef inline int _digits(const char* s, int n) noexcept:
    """The value of n ASCII digits, or -1 if any is not a digit."""
    cdef int v = 0, k
    for k in range(n):
        if not (48 <= s[k] <= 57):
            return -1
        v = v * 10 + (s[k] - 48)
    return v


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept:
    # Howard Hinnant's days_from_civil: days since 1970-01-01 of a proleptic Gregorian date.
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int[13] _MONTH_DAYS = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def rfc3339_ns(str text):
    """``timestamps.rfc3339_ns``, compiled for the venues' form ``YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z``;
    any other form (an offset, lower-case z, more digits) and every error go to the Python one."""
    cdef Py_ssize_t n = len(text)
    cdef bytes raw
    cdef const char* s
    cdef int year, month, day, hour, minute, second, frac_digits, k
    cdef int64_t frac = 0, scale
    if n < 20 or n > 30 or not text.isascii():
        return _rfc3339_ns_python(text)
    raw = text.encode("ascii")
    s = raw
    if s[4] != b"-"[0] or s[7] != b"-"[0] or s[10] != b"T"[0] or s[13] != b":"[0] or s[16] != b":"[0] \
            or s[n - 1] != b"Z"[0]:
        return _rfc3339_ns_python(text)
    year, month, day = _digits(s, 4), _digits(s + 5, 2), _digits(s + 8, 2)
    hour, minute, second = _digits(s + 11, 2), _digits(s + 14, 2), _digits(s + 17, 2)
    # int64 ns spans 1677-09-21 .. 2262-04-11: outside whole years of it Python's ints decide
    if not (1678 <= year <= 2261) or not (1 <= month <= 12) or not (1 <= day <= _MONTH_DAYS[month]) or not (0 <= hour <= 23) \
            or not (0 <= minute <= 59) or not (0 <= second <= 59):
        return _rfc3339_ns_python(text)   # Feb 29 of a common year, a leap second, junk: Python decides
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return _rfc3339_ns_python(text)
    if n == 20:
        frac_digits = 0
    else:
        frac_digits = <int>(n - 21)
        if s[19] != b"."[0] or not (1 <= frac_digits <= 9):
            return _rfc3339_ns_python(text)
        frac = _digits(s + 20, frac_digits)
        if frac < 0:
            return _rfc3339_ns_python(text)
        scale = 1
        for k in range(9 - frac_digits):
            scale *= 10
        frac *= scale
    return (((_days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second) \
        * 1_000_000_000 + frac
