# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The synthetic market's per-event loop, compiled (issue 24: the Python loop cost ~5 µs a venue
message, 97 % of capture at 200k messages/s).

``MarketCore`` holds the true books as C arrays and writes one batch of events straight into a
Tick array and a LevelUpdate array. It is a transcription of ``synthetic_market_reference``
(the plain-Python specification): the same draws in the same order, the same arithmetic, so a
seed gives the same bytes from both; tests/test_synthetic_market.py checks that, faults
included. Prices and sizes are whole ticks / units divided by 10**decimals, which is exactly
Python's ``round(ticks * tick, decimals)`` (both are the double nearest the decimal), so the
order book's text of them is the venue's.
"""
import numpy as np

from libc.math cimport log1p, rint
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memmove

cdef extern from "zlib.h" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len)

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
    ctypedef struct shmpipe_tick:
        uint64_t timestamp_ns
        uint32_t symbol_id
        float bid
        float ask
        float volume
        uint8_t source
        uint8_t flags
        uint16_t spread_bps
        uint32_t sequence

cdef enum:
    SIDE_BID = 0
    SIDE_ASK = 1
    ACTION_SET = 0
    ACTION_TRADE = 3
    ACTION_CHECKSUM = 4
    SOURCE_SYNTHETIC = 7
    TICK_FLAG_TRADE = 1
    TICK_FLAG_QUOTE = 2
    LEVEL_FLAG_GAP_BEFORE = 8
    LEVEL_FLAG_LAST = 16
    CHECKSUM_DEPTH = 10
    # the most records one event writes: a whole-level trade (trade, delete, far level, and a
    # refill of a wide spread: 2) + a corrupted copy + a checksum
    MAX_RECORDS_PER_EVENT = 7

BLOCK = 4096           # synthetic_market.BLOCK: events drawn per step


cdef inline int _itoa(char *out, int64_t v) noexcept nogil:
    """v's decimal text (Python's str(int)) at out; returns its length."""
    cdef char tmp[24]
    cdef int n = 0, i
    cdef uint64_t u
    cdef int neg = v < 0
    u = <uint64_t>(-v) if neg else <uint64_t>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if neg:
        out[0] = 45
        i = 1
    while n:
        n -= 1
        out[i] = tmp[n]
        i += 1
    return i


cdef class MarketCore:
    """The books and the event loop. Public arrays (numpy, shared with this object's C view):
    ``best_bid``/``best_ask`` (ticks), ``bid_sizes``/``ask_sizes`` (symbols x depth, units, index 0
    the touch), ``skip``, ``gap_next``, ``corrupt_next`` (the fault state)."""
    cdef readonly int symbols, depth
    cdef double pscale, sscale, unit, trade_fraction, move_fraction
    cdef int64_t checksum_every
    cdef readonly object best_bid, best_ask, bid_sizes, ask_sizes, skip, gap_next, corrupt_next
    cdef object messages, sids_arr, rng
    cdef int64_t *bb
    cdef int64_t *ba
    cdef int64_t *bs
    cdef int64_t *as_
    cdef int64_t *msgs
    cdef int64_t *skp
    cdef uint8_t *gapn
    cdef uint8_t *corr
    cdef uint32_t *sids
    # the current block of draws
    cdef object blk_s, blk_u1, blk_u2, blk_u3, blk_size
    cdef int64_t *ds
    cdef double *du1
    cdef double *du2
    cdef double *du3
    cdef int64_t *dsize
    cdef int block_at

    def __init__(self, object rng, object symbol_ids, object best_bid, object bid_sizes, object ask_sizes, *,
                 int price_decimals, int size_decimals, double trade_fraction, double move_fraction,
                 int checksum_every):
        cdef int64_t[::1] v64
        cdef uint8_t[::1] v8
        cdef uint32_t[::1] v32
        self.rng = rng
        self.symbols, self.depth = len(best_bid), bid_sizes.shape[1]
        self.pscale, self.sscale = 10.0 ** price_decimals, 10.0 ** size_decimals
        self.unit = 10.0 ** -size_decimals
        self.trade_fraction, self.move_fraction = trade_fraction, move_fraction
        self.checksum_every = checksum_every
        self.best_bid = np.ascontiguousarray(best_bid, dtype=np.int64).copy()
        self.best_ask = self.best_bid + 1
        self.bid_sizes = np.ascontiguousarray(bid_sizes, dtype=np.int64).copy()
        self.ask_sizes = np.ascontiguousarray(ask_sizes, dtype=np.int64).copy()
        self.messages = np.zeros(self.symbols, np.int64)
        self.skip = np.zeros(self.symbols, np.int64)
        self.gap_next = np.zeros(self.symbols, np.uint8)
        self.corrupt_next = np.zeros(self.symbols, np.uint8)
        self.sids_arr = np.ascontiguousarray(symbol_ids, dtype=np.uint32).copy()
        v64 = self.best_bid; self.bb = &v64[0]
        v64 = self.best_ask; self.ba = &v64[0]
        v64 = self.bid_sizes.reshape(-1); self.bs = &v64[0]
        v64 = self.ask_sizes.reshape(-1); self.as_ = &v64[0]
        v64 = self.messages; self.msgs = &v64[0]
        v64 = self.skip; self.skp = &v64[0]
        v8 = self.gap_next; self.gapn = &v8[0]
        v8 = self.corrupt_next; self.corr = &v8[0]
        v32 = self.sids_arr; self.sids = &v32[0]
        self.block_at = BLOCK

    cdef int _refill(self) except -1:
        """The next block of draws, exactly as the reference takes them from the Generator."""
        cdef int64_t[::1] vs, vsize
        cdef double[::1] v1, v2, v3
        rng = self.rng
        self.blk_s = np.ascontiguousarray(rng.integers(0, self.symbols, BLOCK), dtype=np.int64)
        self.blk_u1 = rng.random(BLOCK)
        self.blk_u2 = rng.random(BLOCK)
        self.blk_u3 = rng.random(BLOCK)
        self.blk_size = np.ascontiguousarray(rng.integers(1, 50_000, BLOCK), dtype=np.int64)
        vs = self.blk_s; self.ds = &vs[0]
        v1 = self.blk_u1; self.du1 = &v1[0]
        v2 = self.blk_u2; self.du2 = &v2[0]
        v3 = self.blk_u3; self.du3 = &v3[0]
        vsize = self.blk_size; self.dsize = &vsize[0]
        self.block_at = 0
        return 0

    # -- the book ---------------------------------------------------------------------------------
    cpdef uint32_t checksum(self, int k):
        """Kraken's CRC32 of symbol k's true book (the reference's ``checksum``): each number's text
        without "." and leading zeros is its whole count of ticks or units."""
        cdef char buf[CHECKSUM_DEPTH * 2 * 2 * 24]
        cdef int n = CHECKSUM_DEPTH if self.depth > CHECKSUM_DEPTH else self.depth
        cdef int i, length = 0
        cdef int64_t a = self.ba[k], b = self.bb[k]
        cdef int64_t *asz = self.as_ + k * self.depth
        cdef int64_t *bsz = self.bs + k * self.depth
        for i in range(n):
            length += _itoa(buf + length, a + i)
            length += _itoa(buf + length, asz[i])
        for i in range(n):
            length += _itoa(buf + length, b - i)
            length += _itoa(buf + length, bsz[i])
        return <uint32_t>(crc32(0, <const unsigned char *>buf, length) & 0xFFFFFFFF)

    cdef inline shmpipe_level_update* _level(self, shmpipe_level_update *r, int k, int side, int i,
                                             int64_t units) noexcept nogil:
        cdef int64_t ticks = self.bb[k] - i if side == SIDE_BID else self.ba[k] + i
        r.timestamp_ns = 0
        r.price = <double>ticks / self.pscale
        r.size = <double>units / self.sscale
        r.symbol_id = self.sids[k]
        r.side = side
        r.action = ACTION_SET
        r.source = SOURCE_SYNTHETIC
        r.flags = 0
        return r + 1

    cdef inline int64_t _rng_size(self, int k) noexcept nogil:
        # derived from the book itself, as the reference does, so an event consumes one row of draws
        cdef int64_t x = self.bs[k * self.depth] * 7919 + self.as_[k * self.depth] * 104729 + self.bb[k]
        x = x % 49999
        if x < 0:
            x += 49999
        return 1 + x

    cdef shmpipe_level_update* _improve(self, shmpipe_level_update *r, int k, int side,
                                        int64_t units) noexcept nogil:
        cdef int64_t *sizes = (self.bs if side == SIDE_BID else self.as_) + k * self.depth
        r = self._level(r, k, side, self.depth - 1, 0)
        if side == SIDE_BID:
            self.bb[k] += 1
        else:
            self.ba[k] -= 1
        memmove(sizes + 1, sizes, (self.depth - 1) * sizeof(int64_t))
        sizes[0] = units
        return self._level(r, k, side, 0, units)

    cdef shmpipe_level_update* _remove_touch(self, shmpipe_level_update *r, int k, int side) noexcept nogil:
        cdef int64_t *sizes = (self.bs if side == SIDE_BID else self.as_) + k * self.depth
        cdef int64_t fresh
        r = self._level(r, k, side, 0, 0)
        if side == SIDE_BID:
            self.bb[k] -= 1
        else:
            self.ba[k] += 1
        fresh = self._rng_size(k)       # from the old touch size and the new best, as the reference
        memmove(sizes, sizes + 1, (self.depth - 1) * sizeof(int64_t))
        sizes[self.depth - 1] = fresh
        r = self._level(r, k, side, self.depth - 1, fresh)
        if self.ba[k] - self.bb[k] > 3:
            r = self._improve(r, k, SIDE_ASK if side == SIDE_BID else SIDE_BID, self._rng_size(k))
        return r

    # -- generation -------------------------------------------------------------------------------
    def fill(self, shmpipe_tick[::1] ticks, shmpipe_level_update[::1] levels, uint64_t[::1] ts,
             uint64_t first_sequence):
        """len(ts) events into ``ticks`` (one each) and ``levels`` (room for 7 an event); returns how
        many level records were written."""
        cdef Py_ssize_t n = ts.shape[0], e
        cdef shmpipe_level_update *base
        cdef shmpipe_level_update *start
        cdef shmpipe_level_update *r
        cdef shmpipe_level_update *w
        cdef shmpipe_tick *t
        cdef int k, side, i, is_trade
        cdef double u_kind, u_side, u_amount, d, trade_price = 0.0, trade_volume = 0.0, bid, ask
        cdef int64_t size, touch, taken
        cdef int64_t *sizes
        cdef int whole
        if n == 0:
            return 0
        if ticks.shape[0] < n or levels.shape[0] < n * MAX_RECORDS_PER_EVENT:
            raise ValueError("fill: ticks needs room for len(ts) records, levels for 7 per event")
        base = &levels[0]
        r = base
        for e in range(n):
            if self.block_at == BLOCK:
                self._refill()
            k = <int>self.ds[self.block_at]
            u_kind = self.du1[self.block_at]
            u_side = self.du2[self.block_at]
            u_amount = self.du3[self.block_at]
            size = self.dsize[self.block_at]
            self.block_at += 1
            start = r
            is_trade = 0
            if u_kind < self.trade_fraction:
                # a buy lifts the best ask, a sell hits the best bid; 1 in 4 takes the whole level
                is_trade = 1
                side = SIDE_ASK if u_side < 0.5 else SIDE_BID
                sizes = (self.as_ if side == SIDE_ASK else self.bs) + k * self.depth
                touch = self.ba[k] if side == SIDE_ASK else self.bb[k]
                trade_price = <double>touch / self.pscale
                whole = u_amount < 0.25 or sizes[0] < 2
                if whole:
                    taken = sizes[0]
                else:
                    taken = <int64_t>(<double>sizes[0] * u_amount)
                    if taken < 1:
                        taken = 1
                r.timestamp_ns = 0
                r.price = trade_price
                r.size = <double>taken / self.sscale
                r.symbol_id = self.sids[k]
                r.side = side
                r.action = ACTION_TRADE
                r.source = SOURCE_SYNTHETIC
                r.flags = 0
                r += 1
                if whole:
                    r = self._remove_touch(r, k, side)
                else:
                    sizes[0] -= taken
                    r = self._level(r, k, side, 0, sizes[0])
                trade_volume = <double>taken * self.unit
            elif u_kind < self.trade_fraction + self.move_fraction:
                # the touch moves: a level improves inside a wide spread, else the touch is cancelled
                side = SIDE_BID if u_side < 0.5 else SIDE_ASK
                if self.ba[k] - self.bb[k] > 1:
                    r = self._improve(r, k, side, size)
                elif side == SIDE_BID and self.bb[k] <= self.depth:
                    r = self._remove_touch(r, k, SIDE_ASK)     # a price near zero only moves up
                else:
                    r = self._remove_touch(r, k, side)
            else:
                side = SIDE_BID if u_side < 0.5 else SIDE_ASK
                d = -log1p(-u_amount) * 2.0                      # most changes near the touch
                i = self.depth - 1 if d >= self.depth - 1 else <int>d
                ((self.bs if side == SIDE_BID else self.as_) + k * self.depth)[i] = size
                r = self._level(r, k, side, i, size)
            self.msgs[k] += 1
            if self.skp[k]:
                self.skp[k] -= 1
                if not self.skp[k]:
                    self.gapn[k] = 1
                r = start                  # lost on the way: the true book moved, nobody saw it
            else:
                if self.corr[k]:
                    self.corr[k] = 0
                    w = r - 1
                    while w.action != ACTION_SET:
                        w -= 1
                    r[0] = w[0]
                    r.size = (rint(w.size * self.sscale) + self.sscale) / self.sscale
                    r.flags = 0
                    r += 1
                    self.msgs[k] = 0       # a checksum ends this message
                if self.msgs[k] % self.checksum_every == 0:
                    r.timestamp_ns = 0
                    r.price = <double>self.checksum(k)
                    r.size = 0.0
                    r.symbol_id = self.sids[k]
                    r.side = 0
                    r.action = ACTION_CHECKSUM
                    r.source = SOURCE_SYNTHETIC
                    r.flags = 0
                    r += 1
                if self.gapn[k]:
                    self.gapn[k] = 0
                    start.flags |= LEVEL_FLAG_GAP_BEFORE
                (r - 1).flags |= LEVEL_FLAG_LAST
                w = start
                while w < r:
                    w.timestamp_ns = ts[e]
                    w += 1
            t = &ticks[e]
            t.timestamp_ns = ts[e]
            t.symbol_id = self.sids[k]
            t.source = SOURCE_SYNTHETIC
            t.sequence = <uint32_t>((first_sequence + <uint64_t>e) & 0xFFFFFFFF)
            if is_trade:
                t.bid = <float>trade_price
                t.ask = <float>trade_price
                t.volume = <float>trade_volume
                t.flags = TICK_FLAG_TRADE
                t.spread_bps = 0
            else:
                bid = <double>self.bb[k] / self.pscale
                ask = <double>self.ba[k] / self.pscale
                t.bid = <float>bid
                t.ask = <float>ask
                t.volume = <float>(<double>(self.bs[k * self.depth] + self.as_[k * self.depth]) * self.unit)
                t.flags = TICK_FLAG_QUOTE
                d = rint((ask - bid) / (ask + bid) * 200000.0)
                t.spread_bps = <uint16_t>(d if d < 65535.0 else 65535.0)
        return r - base
