# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled core: the shared header, and the producer and consumer hot paths.

Users import ``shmpipe`` (ring.py), never this module. It is one extension module built from
files split by role (after Agrona's OneToOneRingBuffer / BroadcastTransmitter / BroadcastReceiver),
so each ordering argument reads in one place:
  _mapping.pxi   the mapping, the validated configuration bound once, liveness locks, fork
  _waiting.pxi   what both sides share: the wait loop and the doorbell handshake
  _producer.pxi  publishing (SPSC and broadcast), room, claims, eviction
  _consumer.pxi  joining, read, peek/commit
  _aio_wait.pxi  one thread sleeping on many doorbells (futex_waitv) for asyncio

The ordering on one screen:
  producer: copy records -> store-release write_pos -> (block mode) seq_cst fence, wake if a
            consumer announced itself asleep.
  consumer: load-acquire write_pos -> copy records -> store-release read_pos -> (block mode) wake
            the producer if it sleeps on a full ring.
  broadcast adds a seqlock: the producer store-releases claim_pos (never decreasing) and fences
  before it overwrites slots; a reader fences (acquire) after its copy and drops what claim_pos
  says may have been overwritten meanwhile. A lossless producer also pairs its claim with each
  joiner's announcement (Dekker: store, seq_cst fence, load on both sides), so a joiner either is
  counted before the producer overwrites anything, or starts past what is being overwritten.
Each side keeps a private copy of the other's position and re-reads the shared one only when
that copy says empty/full, so in steady state the two cores do not bounce one line per record.
Configuration (capacity, itemsize, max_consumers, flags) is validated once by ring.py and bound
into C fields; nothing here re-reads it from shared memory, which another process could rewrite.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memmove, memset
from posix.unistd cimport close, usleep
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from cpython.exc cimport PyErr_CheckSignals
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBUF_C_CONTIGUOUS)
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cimport numpy as cnp

from ._atomics cimport *
from ._layout cimport *

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)

cdef extern from * nogil:
    int __builtin_ctzll(unsigned long long x)

import errno
import os
import time
import weakref

import numpy as np
from .errors import (ConsumerEvictedError, DtypeMismatchError, InvalidArgumentError, RingClosedError,
                     RingIOError, RoleTakenError, ShmpipeError)

cnp.import_array()

cdef extern from "numpy/arrayscalars.h":
    ctypedef struct PyVoidScalarObject:
        char *obval
        cnp.PyArray_Descr *descr

cdef extern from "numpy/arrayobject.h":
    """
    /* A 1-d array of n records: fresh memory when data is NULL, else a read-only view of data.
     * numpy builds an array of a structured dtype in ~350 ns but one of the plain void dtype of
     * the same itemsize in ~50 ns (measured here, numpy 2.x), so we build the void one and then
     * give it the record dtype. Sound because the two have the same itemsize, the record dtype
     * holds no objects (create and open refuse them), and numpy's own allocation is aligned for
     * any field. Callers pass void_descr = np.dtype(f"V{itemsize}"). */
    static PyObject *shm_new_array(PyObject *descr, PyObject *void_descr, npy_intp n, void *data) {
        PyObject *arr;
        Py_INCREF(void_descr);  /* PyArray_NewFromDescr steals it */
        arr = PyArray_NewFromDescr(&PyArray_Type, (PyArray_Descr *)void_descr, 1, &n, NULL, data, 0, NULL);
        if (arr == NULL) return NULL;
        Py_INCREF(descr);
        Py_SETREF(((PyArrayObject_fields *)arr)->descr, (PyArray_Descr *)descr);
        return arr;
    }
    """
    object shm_new_array(object descr, object void_descr, cnp.npy_intp n, void *data)

cdef extern from "_locks.h" nogil:
    int shm_lock_try(int fd, long long byte, int exclusive)
    int shm_lock_release(int fd, long long byte)
    int shm_lock_held_elsewhere(int fd, long long byte)

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MAP_POPULATE
    #define MAP_POPULATE 0
    #endif
    """
    int MAP_POPULATE
    int MAP_PRIVATE
    int MAP_ANONYMOUS
    int MAP_FIXED

cdef enum:
    # A wait releases the GIL for at most this long before it looks for Ctrl-C, a dead peer or
    # its deadline: short enough to feel instant, long enough to cost nothing.
    WAIT_SLICE_NS = 20000000
    # How long a blocking waiter spins before it sleeps: a reply that is microseconds away is
    # cheaper to spin for than a futex round trip (~5-10 us each way).
    SPIN_BEFORE_SLEEP = 2000
    SPIN_BEFORE_YIELD = 64
    # A sleeper re-checks at least this often, which bounds the cost of a peer that died
    # without waking it.
    FUTEX_SLEEP_NS = 10000000
    HEARTBEAT_EVERY_WRITES = 1024
    # Copies at least this large release the GIL (~1 us of memcpy at ~14 GB/s).
    NOGIL_COPY_BYTES = 16384
    # A wait first spins this long holding the GIL: giving it away and taking it back costs
    # ~50-100 ns, as much as the hop between cores a ping-pong waits for; past this the cost is
    # small against the wait, and other threads get the GIL (Python itself holds it 5 ms a turn).
    GIL_HELD_SPIN_NS = 2000
    # read(out=) keeps the views it returns up to this many records (a list entry per count);
    # making a larger one (~150 ns) is small against its copy (>= 3 us).
    VIEWS_KEPT = 4096
    # A producer that finds the ring full probes the consumers' locks at most this often.
    EVICTION_CHECK_NS = 1000000

# Timeouts at or above this (about 31 years) mean "as long as it takes".
cdef double FOREVER_S = 1e9
# Bound once: looking np.void up through the module on every write costs ~25 ns.
cdef type _VOID_SCALAR = np.void

WAIT_STRATEGIES = {"spin": SHMPIPE_WAIT_SPIN, "yield": SHMPIPE_WAIT_YIELD, "block": SHMPIPE_WAIT_BLOCK}
WAIT_NAMES = {v: k for k, v in WAIT_STRATEGIES.items()}

# Layout facts, exported for ring.py, the tools and the layout test.
MAGIC = SHMPIPE_MAGIC
LAYOUT_VERSION = SHMPIPE_LAYOUT_VERSION
DATA_OFFSET = SHMPIPE_DATA_OFFSET
MAX_CONSUMERS = SHMPIPE_MAX_CONSUMERS
DTYPE_DESCR_BYTES = SHMPIPE_DTYPE_DESCR_BYTES
FLAG_BROADCAST = SHMPIPE_FLAG_BROADCAST
FLAG_LOSSY = SHMPIPE_FLAG_LOSSY
SLOT_STATES = {SHMPIPE_SLOT_FREE: "free", SHMPIPE_SLOT_ACTIVE: "active",
               SHMPIPE_SLOT_EVICTED: "evicted", SHMPIPE_SLOT_CLAIMING: "claiming"}


def layout_offsets():
    """Offsets and sizes as the C compiler laid them out (compared with the dtypes in tests)."""
    cdef shmpipe_header h
    cdef size_t base = <size_t>&h
    return {
        "header": sizeof(shmpipe_header),
        "config": <size_t>&h.config - base,
        "dtype_descr": <size_t>&h.dtype_descr - base,
        "producer.write_pos": <size_t>&h.producer.write_pos - base,
        "producer.claim_pos": <size_t>&h.producer.claim_pos - base,
        "producer_info": <size_t>&h.producer_info - base,
        "data_ready": <size_t>&h.data_ready - base,
        "space_ready": <size_t>&h.space_ready - base,
        "membership": <size_t>&h.membership - base,
        "consumers": <size_t>&h.consumers[0] - base,
        "consumer_stride": <size_t>&h.consumers[1] - <size_t>&h.consumers[0],
        "slot.state": <size_t>&h.consumers[0].state_word - <size_t>&h.consumers[0],
        "data_offset": SHMPIPE_DATA_OFFSET,
    }


cdef extern from "_layout.h":
    """
    #define SHM_OFF(T, f) ((size_t)offsetof(T, f))
    static PyObject *shm_record_layouts(void) {
        return Py_BuildValue(
            "{s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}}",
            "tick", "itemsize", (Py_ssize_t)sizeof(shmpipe_tick),
                "timestamp_ns", SHM_OFF(shmpipe_tick, timestamp_ns), "symbol_id", SHM_OFF(shmpipe_tick, symbol_id),
                "bid", SHM_OFF(shmpipe_tick, bid), "ask", SHM_OFF(shmpipe_tick, ask),
                "volume", SHM_OFF(shmpipe_tick, volume), "source", SHM_OFF(shmpipe_tick, source),
                "flags", SHM_OFF(shmpipe_tick, flags), "spread_bps", SHM_OFF(shmpipe_tick, spread_bps),
                "sequence", SHM_OFF(shmpipe_tick, sequence),
            "level_update", "itemsize", (Py_ssize_t)sizeof(shmpipe_level_update),
                "timestamp_ns", SHM_OFF(shmpipe_level_update, timestamp_ns),
                "price", SHM_OFF(shmpipe_level_update, price), "size", SHM_OFF(shmpipe_level_update, size),
                "symbol_id", SHM_OFF(shmpipe_level_update, symbol_id), "side", SHM_OFF(shmpipe_level_update, side),
                "action", SHM_OFF(shmpipe_level_update, action), "source", SHM_OFF(shmpipe_level_update, source),
                "flags", SHM_OFF(shmpipe_level_update, flags),
            "orderbook_entry", "itemsize", (Py_ssize_t)sizeof(shmpipe_orderbook_entry),
                "timestamp_ns", SHM_OFF(shmpipe_orderbook_entry, timestamp_ns),
                "symbol_id", SHM_OFF(shmpipe_orderbook_entry, symbol_id),
                "exchange_id", SHM_OFF(shmpipe_orderbook_entry, exchange_id),
                "bids", SHM_OFF(shmpipe_orderbook_entry, bids), "asks", SHM_OFF(shmpipe_orderbook_entry, asks),
                "sequence", SHM_OFF(shmpipe_orderbook_entry, sequence),
                "flags", SHM_OFF(shmpipe_orderbook_entry, flags),
                "bid_count", SHM_OFF(shmpipe_orderbook_entry, bid_count),
                "ask_count", SHM_OFF(shmpipe_orderbook_entry, ask_count),
                "published_ns", SHM_OFF(shmpipe_orderbook_entry, published_ns),
            "asset", "itemsize", (Py_ssize_t)sizeof(shmpipe_asset),
                "id", SHM_OFF(shmpipe_asset, id), "symbol", SHM_OFF(shmpipe_asset, symbol),
                "name", SHM_OFF(shmpipe_asset, name), "exchange", SHM_OFF(shmpipe_asset, exchange),
                "asset_class", SHM_OFF(shmpipe_asset, asset_class), "updated_ns", SHM_OFF(shmpipe_asset, updated_ns),
                "maintenance_margin_requirement", SHM_OFF(shmpipe_asset, maintenance_margin_requirement),
                "margin_requirement_long", SHM_OFF(shmpipe_asset, margin_requirement_long),
                "margin_requirement_short", SHM_OFF(shmpipe_asset, margin_requirement_short),
                "status", SHM_OFF(shmpipe_asset, status), "flags", SHM_OFF(shmpipe_asset, flags),
                "truncated", SHM_OFF(shmpipe_asset, truncated));
    }
    """
    object shm_record_layouts()


def record_layouts():
    """{record: {"itemsize": n, field: offset, ...}} from the C structs (sizeof/offsetof)."""
    return shm_record_layouts()




def monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock heartbeats use, comparable across processes."""
    return shm_monotonic_ns()


cdef inline uint32_t _slot_state(uint64_t word) noexcept nogil:
    return <uint32_t>(word & SHMPIPE_SLOT_STATE_MASK)


cdef inline uint64_t _slot_word(uint64_t generation, uint32_t state) noexcept nogil:
    return (generation << SHMPIPE_SLOT_GENERATION_SHIFT) | state


cdef inline uint64_t _min_u64(uint64_t a, uint64_t b) noexcept nogil:
    return a if a < b else b


cdef double _timeout_seconds(object timeout) except -2:
    """Seconds to wait: -1 for as long as it takes (None, inf, or beyond FOREVER_S), 0 for never."""
    cdef double t
    if timeout is None:
        return -1
    # Exact float and small int first: isinstance() against numpy's scalar types costs ~200 ns,
    # more than a whole read of a few records.
    if type(timeout) is float:
        t = timeout
    elif type(timeout) is int and -1 <= timeout <= 1_000_000_000:
        t = timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"timeout must be a number of seconds or None, not {timeout!r}")
    else:
        t = float(timeout)
    if t != t or t < 0:
        raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return -1 if t >= FOREVER_S else t


cdef inline int64_t _deadline_after(double seconds) noexcept nogil:
    """-1: wait forever; 0: never wait; otherwise a CLOCK_MONOTONIC deadline in ns."""
    if seconds < 0:
        return -1
    if seconds == 0:
        return 0
    return <int64_t>shm_monotonic_ns() + <int64_t>(seconds * 1e9)


include "_mapping.pxi"
include "_waiting.pxi"
include "_producer.pxi"
include "_consumer.pxi"
include "_aio_wait.pxi"
include "_shared_words.pxi"
include "_ring_api.pxi"
