# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The order book's hot path: LevelUpdates in, one book per symbol, OrderbookEntries out.

Records come from the levels ring and entries go to the books ring through shmpipe's C-level ring
API (shmpipe/ring_api.pxd: peek/commit and a non-blocking write, all nogil), so a record costs no
Python call. The process around it (services/orderbook/process.py) owns the loop, the control
endpoint, the resnapshot requests and the counters' publication.

A side of a book is two parallel sorted arrays (keys, sizes) with the best level LAST: bids keyed
by price ascending, asks by -price ascending (negation is exact), so one code path serves both.
Most changes land at or near the top of the book, which is then the cheap end of every memmove,
and the top N are the last N entries, read backwards with no search. Against a std::map per side
(bench/orderbook_bench.py): a change costs about the same, a change plus the top-50 read an entry
needs is ~7x cheaper here.

Integrity, per DESIGN.md's LevelUpdate rules. A book is judged and published only at a record with
flags bit4 ("last": the final record capture wrote for one venue message and symbol), never in the
middle of a message: one exchange message may cross the book between its own changes, and a Kraken
message's checksum comes after its levels. At such a record:
  - a checksum record (action 4) has been verified: the book is truncated to the registry's depth
    (Kraken requires clients to) and Kraken's CRC32 is computed over the top 10 asks then the top 10
    bids, each number as the exchange writes it (the registry's decimals, "." removed, leading zeros
    stripped); without decimals the book is still truncated and flagged UNVERIFIED (not valid);
  - a crossed book (best bid >= best ask) is flagged CROSSED;
and at any record:
  - the gap-before flag means capture lost messages of this symbol: GAP;
  - an invalidate record (action 5) means capture can no longer vouch for the book: STALE (the
    connection dropped or went silent), or GAP when it carries gap-before (a connection-wide gap);
  - a set with a value no market has (not finite, negative size, >= 1e15) is a lost change: GAP;
  - a change to a book that never had a snapshot since this process started leaves it invalid.
Any of these sets BOOK_FLAG_INVALID (and the reason bit) on the book's entries until the next
complete snapshot (snapshot-end) makes it valid again; the process asks capture for that snapshot.
Records without bit4 are applied but publish nothing: no entry shows a book mid-message.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memmove, memset
from libc.stdlib cimport malloc, realloc, free, calloc
from libc.stdio cimport snprintf
from libc.math cimport llround, fabs, isfinite, signbit

cimport shmpipe.ring_api as ring_api

import numpy as np
from shmpipe.records import LEVEL_UPDATE, ORDERBOOK_ENTRY
from shmpipe.errors import RingClosedError

cdef extern from "_layout.h" nogil:
    ctypedef struct shmpipe_level_update:
        uint64_t timestamp_ns
        double price
        double size
        uint32_t symbol_id
        uint8_t side
        uint8_t action
        uint8_t source
        uint8_t flags
    ctypedef struct shmpipe_orderbook_entry:
        uint64_t timestamp_ns
        uint32_t symbol_id
        uint32_t exchange_id
        uint32_t sequence
        uint8_t flags
        uint8_t bid_count
        uint8_t ask_count
        uint64_t published_ns
        double bids[50][2]
        double asks[50][2]
    enum:
        SHMPIPE_ORDERBOOK_DEPTH
        SHMPIPE_BOOK_FLAG_INVALID
        SHMPIPE_BOOK_FLAG_CROSSED
        SHMPIPE_BOOK_FLAG_CHECKSUM_FAILED
        SHMPIPE_BOOK_FLAG_GAP
        SHMPIPE_BOOK_FLAG_STALE
        SHMPIPE_BOOK_FLAG_UNVERIFIED

cdef extern from "_atomics.h" nogil:
    uint64_t shm_monotonic_ns()

cdef extern from "zlib.h" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int length)

cdef enum:
    ACTION_SET = 0
    ACTION_SNAPSHOT_BEGIN = 1
    ACTION_SNAPSHOT_END = 2
    ACTION_TRADE = 3
    ACTION_CHECKSUM = 4
    ACTION_INVALIDATE = 5
    SIDE_BID = 0
    SIDE_ASK = 1
    LEVEL_FLAG_GAP_BEFORE = 8
    LEVEL_FLAG_LAST = 16
    # The reason bits only a complete snapshot clears (UNVERIFIED clears when a checksum verifies).
    REASONS_UNTIL_SNAPSHOT = SHMPIPE_BOOK_FLAG_CROSSED | SHMPIPE_BOOK_FLAG_CHECKSUM_FAILED | \
        SHMPIPE_BOOK_FLAG_GAP | SHMPIPE_BOOK_FLAG_STALE
    CHECKSUM_DEPTH = 10          # Kraken: top 10 levels per side
    DECIMALS_UNKNOWN = -1
    READ_BATCH = 1024            # lossy levels rings are read (copied) this many records at a time
    # Entries are built in a staging array and published to the books ring STAGE at a time (and at
    # the end of every batch read from the levels ring): one claim, fence and doorbell per STAGE
    # entries instead of per entry. An entry waits for at most STAGE - 1 later updates of the same
    # batch (~1-2 us); under light load every batch is small and each entry goes at once.
    STAGE = 16
    MIN_SIDE_CAPACITY = 64

cdef double[16] POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
                         1e13, 1e14, 1e15]
cdef double EXACT_INTEGER_LIMIT = 9007199254740992.0   # 2**53
# No market quotes a price or size this large; a value past it is a parsing accident (1e39), and a
# consumer must never see it in a valid entry.
cdef double MAX_LEVEL_VALUE = 1e15


cdef struct Side:
    double *key          # ascending, best last: bids price, asks -price
    double *size
    Py_ssize_t count
    Py_ssize_t capacity


cdef struct Book:
    Side bids
    Side asks
    uint64_t last_ts             # timestamp_ns of the last record applied to this book
    uint64_t written_mono_ns     # when its last entry was written (conflation)
    uint32_t exchange_id
    uint32_t sequence            # entries written for this symbol (the entry's `sequence`)
    int price_decimals
    int size_decimals
    int depth                    # the exchange's book depth, to truncate to; 0 = none
    uint8_t flags                # SHMPIPE_BOOK_FLAG_*
    uint8_t in_snapshot
    uint8_t synced               # a complete snapshot has been applied
    uint8_t dirty                # conflated: an entry is owed
    uint8_t pending              # changed since its last entry; published at the message's last record
    uint8_t mid_message          # its last record applied had no bit4: a conflated entry must wait
    uint8_t snapshot_damaged     # a bad record inside the snapshot being applied
    uint8_t facts_known


cdef extern from *:
    """
    #include <stddef.h>
    #define ENTRY_BIDS_OFFSET offsetof(shmpipe_orderbook_entry, bids)
    #define ENTRY_ASKS_OFFSET offsetof(shmpipe_orderbook_entry, asks)
    #include <time.h>
    /* Best first from arrays kept best last: (price, size) pairs as the exact f64s the book holds
     * (OrderbookEntry v2). Plain pointers (not the packed struct's fields) and restrict let the
     * compiler vectorise the copy; negating an ask key back is exact. */
    static inline void _fill_levels(double *restrict dst, const double *restrict best_key,
                                    const double *restrict best_size, Py_ssize_t n, double sign) {
        for (Py_ssize_t j = 0; j < n; j++) {
            dst[2 * j] = sign * best_key[-j];
            dst[2 * j + 1] = best_size[-j];
        }
    }
    /* OrderbookEntry.published_ns: wall-clock time, comparable with other hosts' exchange times. */
    static inline uint64_t _realtime_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    """
    size_t ENTRY_BIDS_OFFSET
    size_t ENTRY_ASKS_OFFSET
    uint64_t _realtime_ns() noexcept nogil
    void _fill_levels(double *dst, const double *best_key, const double *best_size, Py_ssize_t n,
                      double sign) noexcept nogil


cdef inline Py_ssize_t _lower_bound(const double *a, Py_ssize_t n, double k) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    # Most changes hit the top (the end): a new best, or the best itself, costs two compares.
    if n == 0 or a[n - 1] < k:
        return n
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < k:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int _side_grow(Side *s) noexcept nogil:
    cdef Py_ssize_t cap = s.capacity * 2 if s.capacity else MIN_SIDE_CAPACITY
    cdef double *k = <double *>realloc(s.key, cap * sizeof(double))
    if k == NULL:
        return -1
    s.key = k
    cdef double *z = <double *>realloc(s.size, cap * sizeof(double))
    if z == NULL:
        return -1
    s.size = z
    s.capacity = cap
    return 0


cdef inline int _side_set(Side *s, double key, double size) noexcept nogil:
    """0: set or deleted; 1: a delete of a level that is not there; -1: out of memory."""
    cdef Py_ssize_t i = _lower_bound(s.key, s.count, key)
    cdef Py_ssize_t tail = s.count - i
    if i < s.count and s.key[i] == key:
        if size != 0.0:
            s.size[i] = size
            return 0
        tail -= 1
        memmove(&s.key[i], &s.key[i + 1], tail * sizeof(double))
        memmove(&s.size[i], &s.size[i + 1], tail * sizeof(double))
        s.count -= 1
        return 0
    if size == 0.0:
        return 1
    if s.count == s.capacity and _side_grow(s) != 0:
        return -1
    if tail:
        memmove(&s.key[i + 1], &s.key[i], tail * sizeof(double))
        memmove(&s.size[i + 1], &s.size[i], tail * sizeof(double))
    s.key[i] = key
    s.size[i] = size
    s.count += 1
    return 0


cdef inline void _side_truncate(Side *s, Py_ssize_t depth) noexcept nogil:
    """Keep the best `depth` levels (the last ones)."""
    cdef Py_ssize_t drop
    if depth <= 0 or s.count <= depth:
        return
    drop = s.count - depth
    memmove(s.key, s.key + drop, depth * sizeof(double))
    memmove(s.size, s.size + drop, depth * sizeof(double))
    s.count = depth


cdef inline int _put_checksum_number(char *buf, int pos, double x, int decimals) noexcept nogil:
    """Append x as the exchange writes it with `decimals` decimals, "." removed and leading zeros
    stripped (Kraken's rule), i.e. the decimal digits of round(x * 10**decimals)."""
    cdef char digits[32]
    cdef char text[400]
    cdef int n = 0, i, length
    cdef double scaled
    cdef long long k
    if decimals < 16 and isfinite(x) and not signbit(x):
        scaled = x * POW10[decimals]
        if scaled < EXACT_INTEGER_LIMIT:
            k = llround(scaled)
            # Far from a tie: the text Python's f"{x:.{decimals}f}" writes has these digits. Near a
            # tie (a value with more decimals than the registry says) printf rounds it exactly instead.
            if fabs(scaled - <double>k) < 0.25:
                while k > 0:
                    digits[n] = <char>(48 + k % 10)
                    k //= 10
                    n += 1
                for i in range(n):
                    buf[pos + i] = digits[n - 1 - i]
                return pos + n
    # printf's "%.*f" rounds the exact binary value half-to-even, as Python's formatting does. The
    # rule strips leading zeros from the text, so a negative number (its "-" first) keeps them.
    length = snprintf(text, sizeof(text), "%.*f", decimals, x)
    if length < 0 or length >= <int>sizeof(text):
        return pos
    i = 0
    if text[0] != 45:
        while i < length and (text[i] == 48 or text[i] == 46):   # "." goes anyway
            i += 1
    while i < length:
        if text[i] != 46:
            buf[pos] = text[i]
            pos += 1
        i += 1
    return pos


cdef uint32_t _book_checksum(const Book *b) noexcept nogil:
    """Kraken's CRC32: the top 10 asks (lowest first), then the top 10 bids (highest first)."""
    cdef char buf[2 * CHECKSUM_DEPTH * 2 * 440]
    cdef int pos = 0
    cdef Py_ssize_t j, idx
    for j in range(min(<Py_ssize_t>CHECKSUM_DEPTH, b.asks.count)):
        idx = b.asks.count - 1 - j
        pos = _put_checksum_number(buf, pos, -b.asks.key[idx], b.price_decimals)
        pos = _put_checksum_number(buf, pos, b.asks.size[idx], b.size_decimals)
    for j in range(min(<Py_ssize_t>CHECKSUM_DEPTH, b.bids.count)):
        idx = b.bids.count - 1 - j
        pos = _put_checksum_number(buf, pos, b.bids.key[idx], b.price_decimals)
        pos = _put_checksum_number(buf, pos, b.bids.size[idx], b.size_decimals)
    return <uint32_t>crc32(0, <const unsigned char *>buf, <unsigned int>pos)


def checksum_text_digits(double x, int decimals):
    """What the checksum appends for one number (for tests against the Python reference)."""
    cdef char buf[512]
    cdef int n = _put_checksum_number(buf, 0, x, decimals)
    return buf[:n].decode("ascii")


COUNTER_NAMES = ("records", "updates", "deletes_of_missing_levels", "trades", "snapshots_begun",
                 "snapshots_completed", "snapshots_written", "checksums_verified", "checksum_failures",
                 "checksums_unverifiable", "crossed", "gaps", "unsynced", "invalid_books", "repaired",
                 "bad_records", "books_full_waits", "entries_dropped_at_stop", "invalidations",
                 "facts_refreshed")


cdef class BookEngine:
    """Books for every symbol of one levels ring. ``pump()`` applies what the levels consumer has
    and writes entries to the books producer; ``apply(array)`` does the same from a numpy array of
    LevelUpdates (tests, the in-process bench). Either side may be None."""
    cdef Book **books
    cdef Py_ssize_t books_capacity
    cdef object consumer
    cdef object producer
    cdef ring_api.shmpipe_consumer *levels
    cdef ring_api.shmpipe_producer *out
    cdef bint peekable
    cdef char *read_buffer
    cdef shmpipe_orderbook_entry *staged     # entries built here, published STAGE at a time
    cdef Py_ssize_t nstaged
    cdef readonly uint64_t conflate_ns
    cdef readonly int max_levels
    cdef object facts
    cdef uint32_t *dirty
    cdef Py_ssize_t dirty_count, dirty_capacity
    cdef public bint stop_requested
    cdef public bint build_without_ring    # bench: build every entry even with no books ring, then drop it
    cdef readonly uint64_t records, updates, deletes_of_missing_levels, trades, snapshots_begun
    cdef readonly uint64_t snapshots_completed, snapshots_written, checksums_verified, checksum_failures
    cdef readonly uint64_t checksums_unverifiable, crossed, gaps, unsynced, invalid_books, repaired
    cdef readonly uint64_t bad_records, books_full_waits, entries_dropped_at_stop, invalidations
    cdef readonly uint64_t facts_refreshed

    def __cinit__(self):
        self.books = NULL
        self.books_capacity = 0
        self.dirty = NULL
        self.read_buffer = NULL
        self.staged = <shmpipe_orderbook_entry *>calloc(STAGE, sizeof(shmpipe_orderbook_entry))
        if self.staged == NULL:
            raise MemoryError()
        self.nstaged = 0

    def __init__(self, consumer=None, producer=None, *, double conflate_ms=0.0, facts=None,
                 int max_levels=SHMPIPE_ORDERBOOK_DEPTH):
        """consumer: a shmpipe.Consumer of a LEVEL_UPDATE ring; producer: a shmpipe.Producer of an
        ORDERBOOK_ENTRY ring; conflate_ms: at most one entry per symbol per interval (0: one per
        applied update); facts: symbol_id -> (price_decimals, size_decimals, depth), None unknown."""
        ring_api.import_ring_api()
        if not conflate_ms >= 0:
            raise ValueError(f"conflate_ms must be >= 0, not {conflate_ms}")
        if not 1 <= max_levels <= SHMPIPE_ORDERBOOK_DEPTH:
            raise ValueError(f"max_levels must be 1..{SHMPIPE_ORDERBOOK_DEPTH}, not {max_levels}")
        self.conflate_ns = <uint64_t>(conflate_ms * 1e6)
        self.max_levels = max_levels
        self.facts = facts
        if consumer is not None:
            if ring_api.itemsize(consumer) != LEVEL_UPDATE.itemsize or consumer.dtype != LEVEL_UPDATE:
                raise TypeError(f"the levels ring must hold LEVEL_UPDATE records, not {consumer.dtype}")
            self.consumer = consumer
            self.levels = ring_api.consumer_handle(consumer)
            self.peekable = not consumer.lossy
            if not self.peekable:
                self.read_buffer = <char *>malloc(READ_BATCH * sizeof(shmpipe_level_update))
                if self.read_buffer == NULL:
                    raise MemoryError()
        if producer is not None:
            if ring_api.itemsize(producer) != ORDERBOOK_ENTRY.itemsize or producer.dtype != ORDERBOOK_ENTRY:
                raise TypeError(f"the books ring must hold ORDERBOOK_ENTRY records, not {producer.dtype}")
            self.producer = producer
            self.out = ring_api.producer_handle(producer)

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.books != NULL:
            for i in range(self.books_capacity):
                if self.books[i] != NULL:
                    free(self.books[i].bids.key)
                    free(self.books[i].bids.size)
                    free(self.books[i].asks.key)
                    free(self.books[i].asks.size)
                    free(self.books[i])
            free(self.books)
        free(self.dirty)
        free(self.read_buffer)
        free(self.staged)

    def replace_levels_consumer(self, consumer):
        """Read from this consumer from now on (the process rejoined after an eviction): records
        were missed, so every book is marked invalid (BOOK_FLAG_GAP) until its next snapshot."""
        cdef Py_ssize_t i
        if ring_api.itemsize(consumer) != LEVEL_UPDATE.itemsize or consumer.dtype != LEVEL_UPDATE:
            raise TypeError(f"the levels ring must hold LEVEL_UPDATE records, not {consumer.dtype}")
        if consumer.lossy != (not self.peekable):
            raise ValueError("the new levels consumer must be of a ring with the same policy")
        self.levels = ring_api.consumer_handle(consumer)
        self.consumer = consumer
        for i in range(self.books_capacity):
            if self.books[i] != NULL:
                self.books[i].in_snapshot = 0
                self.gaps += 1
                self._invalidate(self.books[i], SHMPIPE_BOOK_FLAG_GAP)
                self._changed(self.books[i], <uint32_t>i)
        if self.nstaged:
            self._publish_staged()

    # -- books ----------------------------------------------------------------------------------
    cdef Book *_book(self, uint32_t sid) except NULL:
        cdef Py_ssize_t cap
        cdef Book **grown
        cdef Book *b
        if sid < self.books_capacity and self.books[sid] != NULL:
            return self.books[sid]
        if sid >= self.books_capacity:
            cap = self.books_capacity * 2 if self.books_capacity else 64
            while cap <= sid:
                cap *= 2
            grown = <Book **>realloc(self.books, cap * sizeof(Book *))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.books_capacity, 0, (cap - self.books_capacity) * sizeof(Book *))
            self.books = grown
            self.books_capacity = cap
        b = <Book *>calloc(1, sizeof(Book))
        if b == NULL:
            raise MemoryError()
        b.price_decimals = DECIMALS_UNKNOWN
        b.size_decimals = DECIMALS_UNKNOWN
        self.books[sid] = b
        self._learn_facts(b, sid)
        return b

    cdef int _learn_facts(self, Book *b, uint32_t sid, bint refresh=False) except -1:
        """Ask the registry (a Python call: once per symbol while facts are missing, and again at each
        snapshot-end and failed checksum, where a venue's change of precision shows)."""
        if self.facts is None or (b.facts_known and not refresh):
            return 0
        found = self.facts(sid)
        if found is None:
            return 0
        price_decimals, size_decimals, depth = found
        if price_decimals is not None:
            b.price_decimals = price_decimals
        if size_decimals is not None:
            b.size_decimals = size_decimals
        b.depth = depth or 0
        b.facts_known = price_decimals is not None and size_decimals is not None
        return 0

    cdef bint _facts_changed(self, Book *b, uint32_t sid) except -1:
        """A failed checksum: did the registry's facts change since we read them (the venue changed
        the pair's precision)? Then the book is checked again with the new ones."""
        cdef int pd = b.price_decimals, sd = b.size_decimals, depth = b.depth
        self._learn_facts(b, sid, True)
        if pd == b.price_decimals and sd == b.size_decimals and depth == b.depth:
            return False
        self.facts_refreshed += 1
        _side_truncate(&b.bids, b.depth)
        _side_truncate(&b.asks, b.depth)
        return True

    cdef inline void _invalidate(self, Book *b, uint8_t why) noexcept nogil:
        if not (b.flags & SHMPIPE_BOOK_FLAG_INVALID):
            self.invalid_books += 1
        b.flags |= SHMPIPE_BOOK_FLAG_INVALID | why

    cdef inline void _check_crossed(self, Book *b) noexcept nogil:
        if b.flags & SHMPIPE_BOOK_FLAG_CROSSED:
            return
        if b.bids.count and b.asks.count and \
                b.bids.key[b.bids.count - 1] >= -b.asks.key[b.asks.count - 1]:
            self.crossed += 1
            self._invalidate(b, SHMPIPE_BOOK_FLAG_CROSSED)
            b.pending = 1

    # -- applying -------------------------------------------------------------------------------
    cdef int _apply(self, const shmpipe_level_update *u) except -1:
        cdef uint32_t sid = u.symbol_id
        cdef Book *b = self._book(sid)
        cdef uint8_t action = u.action
        cdef int r
        self.records += 1
        b.exchange_id = u.source
        b.mid_message = not (u.flags & LEVEL_FLAG_LAST)
        if u.flags & LEVEL_FLAG_GAP_BEFORE and action != ACTION_SNAPSHOT_BEGIN:
            self.gaps += 1
            self._invalidate(b, SHMPIPE_BOOK_FLAG_GAP)
            b.pending = 1
        if action == ACTION_SET:
            if not (isfinite(u.price) and isfinite(u.size)) or u.size < 0 or u.side > SIDE_ASK \
                    or not (u.price < MAX_LEVEL_VALUE and u.size < MAX_LEVEL_VALUE):
                # The venue's change is lost: the book is not the venue's any more.
                self.bad_records += 1
                if not b.in_snapshot:
                    self._invalidate(b, SHMPIPE_BOOK_FLAG_GAP)
                    b.pending = 1
                else:
                    b.snapshot_damaged = 1
                return self._at_boundary(b, sid, u)
            b.last_ts = u.timestamp_ns
            if u.side == SIDE_BID:
                r = _side_set(&b.bids, u.price, u.size)
            else:
                r = _side_set(&b.asks, -u.price, u.size)
            if r < 0:
                raise MemoryError()
            self.deletes_of_missing_levels += r
            self.updates += 1
            if not b.in_snapshot:
                if not b.synced and not (b.flags & SHMPIPE_BOOK_FLAG_INVALID):
                    self.unsynced += 1
                    self._invalidate(b, 0)
                b.pending = 1
        elif action == ACTION_SNAPSHOT_BEGIN:
            b.bids.count = 0
            b.asks.count = 0
            b.in_snapshot = 1
            b.snapshot_damaged = 0
            b.last_ts = u.timestamp_ns
            self.snapshots_begun += 1
        elif action == ACTION_SNAPSHOT_END:
            if not b.in_snapshot:
                self.bad_records += 1
                return self._at_boundary(b, sid, u)
            b.in_snapshot = 0
            b.last_ts = u.timestamp_ns
            self._learn_facts(b, sid, True)      # a snapshot is where a changed precision shows
            _side_truncate(&b.bids, b.depth)
            _side_truncate(&b.asks, b.depth)
            if b.snapshot_damaged:
                b.synced = 0
                self._invalidate(b, SHMPIPE_BOOK_FLAG_GAP)
            else:
                if b.flags & SHMPIPE_BOOK_FLAG_INVALID:
                    self.repaired += 1
                b.flags = 0
                b.synced = 1
            self.snapshots_completed += 1
            b.pending = 1
        elif action == ACTION_TRADE:
            self.trades += 1
        elif action == ACTION_CHECKSUM:
            self._verify(b, sid, u)
        elif action == ACTION_INVALIDATE:
            # Capture can no longer vouch for this book (its connection dropped or went silent, or a
            # connection-wide gap): unknown until the next snapshot-end.
            self.invalidations += 1
            b.synced = 0
            b.in_snapshot = 0
            # with gap-before (a connection-wide sequence gap): GAP, set above; else dropped or silent
            self._invalidate(b, 0 if u.flags & LEVEL_FLAG_GAP_BEFORE else SHMPIPE_BOOK_FLAG_STALE)
            b.last_ts = u.timestamp_ns
            b.pending = 1
        else:
            self.bad_records += 1
        return self._at_boundary(b, sid, u)

    cdef inline int _at_boundary(self, Book *b, uint32_t sid, const shmpipe_level_update *u) except -1:
        """The last record of a venue message for this symbol: only here is the book consistent, so
        only here is it judged (crossed) and published; never in the middle of a message."""
        if not (u.flags & LEVEL_FLAG_LAST) or b.in_snapshot:
            return 0
        self._check_crossed(b)
        if b.pending:
            b.pending = 0
            return self._changed(b, sid)
        return 0

    cdef int _verify(self, Book *b, uint32_t sid, const shmpipe_level_update *u) except -1:
        cdef uint8_t before = b.flags
        cdef double carried = u.price
        if b.in_snapshot or not (0 <= carried <= 4294967295.0) or carried != <double>(<uint64_t>carried):
            self.bad_records += 1
            return 0
        b.last_ts = u.timestamp_ns
        if not b.facts_known:
            self._learn_facts(b, sid)
        # Kraken: after each message, the client truncates its book to the subscribed depth (known
        # from the subscription even when the decimals are not).
        _side_truncate(&b.bids, b.depth)
        _side_truncate(&b.asks, b.depth)
        if not b.facts_known:
            # The venue vouches for this book with a checksum nobody can check: not valid.
            self.checksums_unverifiable += 1
            self._invalidate(b, SHMPIPE_BOOK_FLAG_UNVERIFIED)
        elif _book_checksum(b) == <uint32_t>carried or self._facts_changed(b, sid) and \
                _book_checksum(b) == <uint32_t>carried:
            self.checksums_verified += 1
            if b.flags & SHMPIPE_BOOK_FLAG_UNVERIFIED and not (b.flags & REASONS_UNTIL_SNAPSHOT) and b.synced:
                b.flags = 0                # checked at last: the only doubt is gone
        else:
            self.checksum_failures += 1
            self._invalidate(b, SHMPIPE_BOOK_FLAG_CHECKSUM_FAILED)
        if b.flags != before:
            b.pending = 1                  # the levels stand, but the entry's flags change
        return 0

    # -- entries --------------------------------------------------------------------------------
    cdef inline int _changed(self, Book *b, uint32_t sid) except -1:
        cdef uint64_t now
        if self.out == NULL and not self.build_without_ring:
            return 0
        if self.conflate_ns == 0:
            return self._write_entry(b, sid)
        now = shm_monotonic_ns()
        if now - b.written_mono_ns >= self.conflate_ns:
            b.written_mono_ns = now
            if b.dirty:
                b.dirty = 0            # still listed; flush_due() skips it
            return self._write_entry(b, sid)
        if not b.dirty:
            b.dirty = 1
            if self.dirty_count == self.dirty_capacity:
                self._grow_dirty()
            self.dirty[self.dirty_count] = sid
            self.dirty_count += 1
        return 0

    cdef int _grow_dirty(self) except -1:
        cdef Py_ssize_t cap = self.dirty_capacity * 2 if self.dirty_capacity else 64
        cdef uint32_t *grown = <uint32_t *>realloc(self.dirty, cap * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        self.dirty = grown
        self.dirty_capacity = cap
        return 0

    cdef int _write_entry(self, Book *b, uint32_t sid) except -1:
        # Each staging slot keeps its previous entry: zero only what that one filled beyond this one.
        cdef shmpipe_orderbook_entry *e = &self.staged[self.nstaged]
        cdef Py_ssize_t limit = self.max_levels
        cdef Py_ssize_t nb, na, old_b = e.bid_count, old_a = e.ask_count
        if b.depth > 0 and b.depth < limit:
            limit = b.depth
        nb = min(b.bids.count, limit)
        na = min(b.asks.count, limit)
        b.sequence += 1
        e.timestamp_ns = b.last_ts
        e.symbol_id = sid
        e.exchange_id = b.exchange_id
        e.sequence = b.sequence
        e.flags = b.flags
        e.bid_count = <uint8_t>nb
        e.ask_count = <uint8_t>na
        _fill_levels(<double *>(<char *>e + ENTRY_BIDS_OFFSET), b.bids.key + b.bids.count - 1,
                     b.bids.size + b.bids.count - 1, nb, 1.0)
        _fill_levels(<double *>(<char *>e + ENTRY_ASKS_OFFSET), b.asks.key + b.asks.count - 1,
                     b.asks.size + b.asks.count - 1, na, -1.0)
        if old_b > nb:
            memset(&e.bids[nb][0], 0, (old_b - nb) * 2 * sizeof(double))
        if old_a > na:
            memset(&e.asks[na][0], 0, (old_a - na) * 2 * sizeof(double))
        self.nstaged += 1
        if self.nstaged == STAGE:
            self._publish_staged()
        return 0

    cdef int _publish_staged(self) except -1:
        """Publish the staged entries, in order; waits (a slice at a time) while the books ring is full."""
        cdef Py_ssize_t done = 0, w
        cdef Py_ssize_t n = self.nstaged
        cdef uint64_t published
        if n == 0:
            return 0
        # One clock read per published batch: the entries of a batch leave together.
        published = _realtime_ns()
        for w in range(n):
            self.staged[w].published_ns = published
        if self.out == NULL:             # build_without_ring: measured, then dropped
            self.nstaged = 0
            return 0
        w = ring_api.producer_write(self.out, self.staged, n)
        if w < 0:
            raise RingClosedError("the books ring's producer is closed")
        done = w
        # Full (a lossless books ring and a slow consumer): wait by the ring's strategy, which also
        # evicts dead consumers, a slice at a time so a stop request is noticed.
        while done < n:
            w = ring_api.producer_write_wait(self.out, &self.staged[done], n - done, 0.05)
            done += w
            if done < n:
                self.books_full_waits += 1
                if self.stop_requested:
                    self.entries_dropped_at_stop += <uint64_t>(n - done)
                    break
        self.snapshots_written += <uint64_t>done
        self.nstaged = 0
        return 0

    def flush_due(self, bint force=False):
        """Conflated entries whose interval has passed (force: all owed) are written now; how many."""
        cdef Py_ssize_t i, kept = 0, written = 0
        cdef uint64_t now
        cdef uint32_t sid
        cdef Book *b
        if self.dirty_count == 0:
            return 0
        now = shm_monotonic_ns()
        for i in range(self.dirty_count):
            sid = self.dirty[i]
            b = self.books[sid]
            if not b.dirty:
                continue
            if b.mid_message or b.in_snapshot:      # owed, but not in the middle of a message
                self.dirty[kept] = sid
                kept += 1
                continue
            if force or now - b.written_mono_ns >= self.conflate_ns:
                b.dirty = 0
                b.written_mono_ns = now
                self._write_entry(b, sid)
                written += 1
            else:
                self.dirty[kept] = sid
                kept += 1
        self.dirty_count = kept
        self._publish_staged()
        return written

    # -- driving --------------------------------------------------------------------------------
    def pump(self, Py_ssize_t max_records=4096):
        """Apply what the levels ring holds now (up to max_records); never waits. Returns how many."""
        cdef const void *first
        cdef const shmpipe_level_update *recs
        cdef Py_ssize_t n, i
        if self.levels == NULL:
            raise ValueError("this engine has no levels consumer")
        if self.peekable:
            n = ring_api.consumer_peek(self.levels, &first, max_records)
            if n < 0:
                self.consumer.peek(1, 0)      # raises the reason (evicted, closed)
                raise RingClosedError("the levels consumer is unusable")
            recs = <const shmpipe_level_update *>first
            try:
                for i in range(n):
                    self._apply(&recs[i])
            finally:
                ring_api.consumer_commit(self.levels, n)
                if self.nstaged:
                    self._publish_staged()
        else:
            n = ring_api.consumer_read(self.levels, self.read_buffer, min(max_records, <Py_ssize_t>READ_BATCH))
            if n < 0:
                self.consumer.read(1, 0)
                raise RingClosedError("the levels consumer is unusable")
            recs = <const shmpipe_level_update *>self.read_buffer
            try:
                for i in range(n):
                    self._apply(&recs[i])
            finally:
                if self.nstaged:
                    self._publish_staged()
        if self.dirty_count:
            self.flush_due()
        return n

    def wait(self, double timeout_s):
        """Wait (by the levels ring's strategy, GIL released) until records are readable; how many."""
        return ring_api.consumer_wait(self.levels, timeout_s)

    def apply(self, records):
        """Apply a 1-d array of LEVEL_UPDATE records (no ring needed); returns how many."""
        cdef const shmpipe_level_update *recs
        cdef Py_ssize_t i, n
        arr = np.ascontiguousarray(records)
        if arr.dtype != LEVEL_UPDATE or arr.ndim != 1:
            raise TypeError(f"apply() takes a 1-d array of LEVEL_UPDATE, not {arr.dtype} of shape {arr.shape}")
        cdef const unsigned char[::1] raw = arr.view(np.uint8)
        n = arr.shape[0]
        if n == 0:
            return 0
        recs = <const shmpipe_level_update *>&raw[0]
        try:
            for i in range(n):
                self._apply(&recs[i])
        finally:
            if self.nstaged:
                self._publish_staged()
        if self.dirty_count:
            self.flush_due()
        return n

    # -- what tests and the process read --------------------------------------------------------
    cdef Book *_existing(self, uint32_t sid) except NULL:
        if sid >= self.books_capacity or self.books[sid] == NULL:
            raise KeyError(f"no book for symbol id {sid}")
        return self.books[sid]

    def symbols(self):
        """Symbol ids with a book."""
        return [i for i in range(self.books_capacity) if self.books[i] != NULL]

    def top(self, uint32_t symbol_id, int side, Py_ssize_t n=10):
        """The best n levels of one side as exact f64 (price, size), best first."""
        cdef Book *b = self._existing(symbol_id)
        cdef Side *s = &b.bids if side == SIDE_BID else &b.asks
        cdef double sign = 1.0 if side == SIDE_BID else -1.0
        cdef Py_ssize_t j
        return [(sign * s.key[s.count - 1 - j], s.size[s.count - 1 - j]) for j in range(min(n, s.count))]

    def level_counts(self, uint32_t symbol_id):
        cdef Book *b = self._existing(symbol_id)
        return b.bids.count, b.asks.count

    def flags(self, uint32_t symbol_id):
        return self._existing(symbol_id).flags

    def checksum(self, uint32_t symbol_id):
        """Kraken's CRC32 of the book as it stands (no truncation), with the registry's decimals."""
        cdef Book *b = self._existing(symbol_id)
        if not b.facts_known:
            self._learn_facts(b, symbol_id)
        if not b.facts_known:
            raise ValueError(f"symbol id {symbol_id}: decimals unknown")
        return _book_checksum(b)

    def invalid_symbols(self):
        """Symbol ids whose book is invalid now (waiting for a fresh snapshot)."""
        cdef Py_ssize_t i
        return [i for i in range(self.books_capacity)
                if self.books[i] != NULL and self.books[i].flags & SHMPIPE_BOOK_FLAG_INVALID]

    def counters(self):
        c = {name: getattr(self, name) for name in COUNTER_NAMES}
        c["books"] = len(self.symbols())
        c["books_invalid_now"] = len(self.invalid_symbols())
        return c
