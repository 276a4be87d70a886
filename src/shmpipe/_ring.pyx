# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled core: the shared header, and the producer and consumer hot paths.

Users import ``shmpipe`` (ring.py), never this module. The ordering on one screen:
  producer: copy records -> store-release write_pos -> (block mode) seq_cst fence, wake if a
            consumer announced itself asleep.
  consumer: load-acquire write_pos -> copy records -> store-release read_pos -> (block mode) wake
            the producer if it sleeps on a full ring.
  lossy broadcast adds a seqlock: the producer stores claim_pos and fences (release) before it
  overwrites slots; a reader fences (acquire) after its copy and drops what claim_pos says may
  have been overwritten meanwhile.
Each side keeps a private copy of the other's position and re-reads the shared one only when
that copy says empty/full, so in steady state the two cores do not bounce one line per record.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)
from posix.unistd cimport close
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from cpython.exc cimport PyErr_CheckSignals
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cimport numpy as cnp

from ._atomics cimport *
from ._layout cimport *

import time

import numpy as np
from .errors import (ConsumerEvictedError, DtypeMismatchError, RingClosedError,
                     RoleTakenError, ShmpipeError)

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
     * holds no objects (Ring.create refuses them), and numpy's own allocation is aligned for
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

# A wait releases the GIL for at most this long before it looks for Ctrl-C, a dead peer or
# its deadline: short enough to feel instant, long enough to cost nothing.
cdef enum:
    WAIT_SLICE_NS = 20000000
    # How long a blocking waiter spins before it sleeps: a reply that is microseconds away is
    # cheaper to spin for than a futex round trip (~5-10 us each way).
    SPIN_BEFORE_SLEEP = 2000
    SPIN_BEFORE_YIELD = 64
    FUTEX_SLEEP_NS = 10000000
    HEARTBEAT_EVERY_WRITES = 1024
    # Copies at least this large release the GIL (~1 us of memcpy at ~14 GB/s).
    NOGIL_COPY_BYTES = 16384

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
        "consumers": <size_t>&h.consumers[0] - base,
        "consumer_stride": <size_t>&h.consumers[1] - <size_t>&h.consumers[0],
        "data_offset": SHMPIPE_DATA_OFFSET,
    }


cdef extern from "_layout.h":
    """
    #define SHM_OFF(T, f) ((size_t)offsetof(T, f))
    static PyObject *shm_record_layouts(void) {
        return Py_BuildValue(
            "{s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n},"
            " s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}}",
            "tick", "itemsize", (Py_ssize_t)sizeof(shmpipe_tick),
                "timestamp_ns", SHM_OFF(shmpipe_tick, timestamp_ns), "symbol_id", SHM_OFF(shmpipe_tick, symbol_id),
                "bid", SHM_OFF(shmpipe_tick, bid), "ask", SHM_OFF(shmpipe_tick, ask),
                "volume", SHM_OFF(shmpipe_tick, volume), "source", SHM_OFF(shmpipe_tick, source),
                "flags", SHM_OFF(shmpipe_tick, flags), "spread_bps", SHM_OFF(shmpipe_tick, spread_bps),
                "sequence", SHM_OFF(shmpipe_tick, sequence),
            "level_update", "itemsize", (Py_ssize_t)sizeof(shmpipe_level_update),
                "timestamp_ns", SHM_OFF(shmpipe_level_update, timestamp_ns),
                "symbol_id", SHM_OFF(shmpipe_level_update, symbol_id),
                "sequence", SHM_OFF(shmpipe_level_update, sequence), "price", SHM_OFF(shmpipe_level_update, price),
                "size", SHM_OFF(shmpipe_level_update, size), "side", SHM_OFF(shmpipe_level_update, side),
                "action", SHM_OFF(shmpipe_level_update, action), "source", SHM_OFF(shmpipe_level_update, source),
                "flags", SHM_OFF(shmpipe_level_update, flags),
            "orderbook_entry", "itemsize", (Py_ssize_t)sizeof(shmpipe_orderbook_entry),
                "timestamp_ns", SHM_OFF(shmpipe_orderbook_entry, timestamp_ns),
                "symbol_id", SHM_OFF(shmpipe_orderbook_entry, symbol_id),
                "exchange_id", SHM_OFF(shmpipe_orderbook_entry, exchange_id),
                "bids", SHM_OFF(shmpipe_orderbook_entry, bids), "asks", SHM_OFF(shmpipe_orderbook_entry, asks),
                "sequence", SHM_OFF(shmpipe_orderbook_entry, sequence),
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


def segment_in_use(int fd):
    """True while any handle other than fd's own holds the segment open or holds a role."""
    cdef int byte
    if shm_lock_held_elsewhere(fd, SHMPIPE_LOCK_ATTACHED) != 0:
        return True
    for byte in range(SHMPIPE_LOCK_PRODUCER, SHMPIPE_LOCK_CONSUMER0 + SHMPIPE_MAX_CONSUMERS):
        if shm_lock_held_elsewhere(fd, byte) != 0:
            return True
    return False


def monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock heartbeats use, comparable across processes."""
    return shm_monotonic_ns()


cdef inline int64_t _deadline(object timeout) except -2:
    """-1: wait forever; 0: never wait; otherwise a CLOCK_MONOTONIC deadline in ns."""
    if timeout is None:
        return -1
    cdef double t = timeout
    if t < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    if t == 0:
        return 0
    return <int64_t>shm_monotonic_ns() + <int64_t>(t * 1e9)


cdef class MappedRing:
    """One process's mapping of a ring segment, and the roles (locks) it holds on it.

    close() releases the locks and the fd at once, but the memory is unmapped only when the
    last Python object using it (a producer, consumer or peek() view) is gone: a stale view
    reads stale records, never unmapped memory."""
    cdef shmpipe_header *hdr
    cdef char *data
    cdef size_t size
    cdef int fd
    cdef readonly str name
    cdef readonly bint closed
    cdef readonly bint holds_producer
    cdef uint64_t consumer_roles     # bit i: this handle holds consumer slot i

    def __cinit__(self, int fd, size_t size, str name):
        self.fd = -1
        self.hdr = NULL
        self.closed = True
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        if p == MAP_FAILED:
            raise OSError(f"cannot map ring {name!r} ({size} bytes)")
        self.hdr = <shmpipe_header *>p
        self.data = <char *>p + SHMPIPE_DATA_OFFSET
        self.size = size
        self.fd = fd
        self.name = name
        self.closed = False
        # Every open handle holds a shared lock: `shmpipe clean` removes only unheld segments.
        shm_lock_try(fd, SHMPIPE_LOCK_ATTACHED, 0)

    def __dealloc__(self):
        if not self.closed and self.fd >= 0:   # dropped without close(): do not leak the fd
            close(self.fd)
        if self.hdr != NULL:
            munmap(<void *>self.hdr, self.size)
            self.hdr = NULL

    def close(self):
        """Release roles and the fd; the fd's close drops every lock this handle held."""
        if self.closed:
            return
        self.closed = True
        self.holds_producer = False
        self.consumer_roles = 0
        close(self.fd)
        self.fd = -1

    cdef inline void _check(self) except *:
        if self.closed:
            raise RingClosedError(f"ring {self.name!r} is closed")

    # -- header, written once by the creator ---------------------------------------------
    def init_header(self, uint64_t capacity, uint32_t itemsize, bytes descr, uint64_t fingerprint,
                    uint32_t wait_strategy, uint32_t flags, uint32_t max_consumers,
                    uint64_t consumer_timeout_ns, uint32_t creator_pid):
        self._check()
        cdef shmpipe_header *h = self.hdr
        if len(descr) >= SHMPIPE_DTYPE_DESCR_BYTES:
            raise ValueError(f"dtype description is {len(descr)} bytes; the header holds "
                             f"{SHMPIPE_DTYPE_DESCR_BYTES - 1}")
        memset(<void *>h, 0, sizeof(shmpipe_header))
        h.config.layout_version = SHMPIPE_LAYOUT_VERSION
        h.config.flags = flags
        h.config.capacity = capacity
        h.config.itemsize = itemsize
        h.config.wait_strategy = wait_strategy
        h.config.dtype_fingerprint = fingerprint
        h.config.data_offset = SHMPIPE_DATA_OFFSET
        h.config.segment_bytes = self.size
        h.config.created_unix_ns = shm_realtime_ns()
        h.config.creator_pid = creator_pid
        h.config.max_consumers = max_consumers
        h.config.consumer_timeout_ns = consumer_timeout_ns
        memcpy(h.dtype_descr, PyBytes_AS_STRING(descr), len(descr))
        # Last, with release: an opener that sees the magic sees everything above.
        shm_store_release_u64(&h.config.magic, SHMPIPE_MAGIC)

    def config(self):
        """The immutable header fields as a dict, after an acquire load of the magic."""
        self._check()
        cdef shmpipe_header *h = self.hdr
        cdef uint64_t magic = shm_load_acquire_u64(&h.config.magic)
        return {
            "magic": magic,
            "layout_version": h.config.layout_version,
            "flags": h.config.flags,
            "capacity": h.config.capacity,
            "itemsize": h.config.itemsize,
            "wait_strategy": h.config.wait_strategy,
            "dtype_fingerprint": h.config.dtype_fingerprint,
            "data_offset": h.config.data_offset,
            "segment_bytes": h.config.segment_bytes,
            "created_unix_ns": h.config.created_unix_ns,
            "creator_pid": h.config.creator_pid,
            "max_consumers": h.config.max_consumers,
            "consumer_timeout_ns": h.config.consumer_timeout_ns,
            "dtype_descr": (<char *>h.dtype_descr)[:strnlen(h.dtype_descr, SHMPIPE_DTYPE_DESCR_BYTES)]
                           .decode("utf-8", "replace"),
        }

    # -- liveness --------------------------------------------------------------------------
    def producer_alive(self):
        self._check()
        if self.holds_producer:
            return True
        return shm_lock_held_elsewhere(self.fd, SHMPIPE_LOCK_PRODUCER) == 1

    def consumer_alive(self, int slot):
        self._check()
        if self.consumer_roles & (1ull << slot):
            return True
        return shm_lock_held_elsewhere(self.fd, SHMPIPE_LOCK_CONSUMER0 + slot) == 1

    cdef int _take_role(self, long long byte) except -1:
        cdef int err = shm_lock_try(self.fd, byte, 1)
        if err == 0:
            return 1
        if err == 11 or err == 13:   # EAGAIN / EACCES: held elsewhere
            return 0
        raise OSError(err, f"cannot lock ring {self.name!r}")

    cdef void _drop_role(self, long long byte):
        if not self.closed:
            shm_lock_release(self.fd, byte)

    # -- positions and counters, for stats() and len() ------------------------------------
    def positions(self):
        self._check()
        cdef shmpipe_header *h = self.hdr
        cdef uint32_t i
        cdef shmpipe_consumer_slot *s
        slots = []
        for i in range(h.config.max_consumers):
            s = &h.consumers[i]
            slots.append({
                "slot": i,
                "state": SLOT_STATES.get(shm_load_acquire_u32(&s.state), "unknown"),
                "pid": s.pid,
                "start_ticks": s.start_ticks,
                "position": shm_load_acquire_u64(&s.read_pos),
                "heartbeat_ns": shm_load_relaxed_u64(&s.heartbeat_ns),
                "lost": shm_load_relaxed_u64(&s.lost),
                "attached_unix_ns": s.attached_unix_ns,
            })
        return {
            "write_pos": shm_load_acquire_u64(&h.producer.write_pos),
            "claim_pos": shm_load_acquire_u64(&h.producer.claim_pos),
            "producer": {
                "pid": h.producer_info.pid,
                "start_ticks": h.producer_info.start_ticks,
                "attach_count": h.producer_info.attach_count,
                "heartbeat_ns": shm_load_relaxed_u64(&h.producer_info.heartbeat_ns),
                "attached_unix_ns": h.producer_info.attached_unix_ns,
                "full_waits": h.producer_info.full_waits,
                "evictions": h.producer_info.evictions,
            },
            "data_ready_waiters": shm_load_relaxed_u32(&h.data_ready.waiters),
            "space_ready_waiters": shm_load_relaxed_u32(&h.space_ready.waiters),
            "consumers": slots,
        }


cdef inline void _wake(shmpipe_doorbell *bell) noexcept nogil:
    # The seq_cst fence orders our release store of the position before the load of the waiter
    # count; the sleeper does the mirror image, so one of us always sees the other.
    shm_fence_seq_cst()
    if shm_load_relaxed_u32(&bell.waiters) != 0:
        shm_fetch_add_u32(&bell.seq, 1)
        shm_futex_wake_all(&bell.seq)


cdef class _Side:
    """What a producer and a consumer share: the mapping, geometry, and the wait loop."""
    cdef MappedRing ring
    cdef shmpipe_header *hdr
    cdef char *data
    cdef uint64_t capacity
    cdef uint64_t mask
    cdef size_t itemsize
    cdef int wait_strategy
    cdef readonly bint blocking     # the ring's producer rings the doorbell (wait="block")
    cdef readonly bint broadcast
    cdef readonly bint lossy
    cdef readonly object dtype
    cdef object void_dtype         # np.dtype(f"V{itemsize}"), see shm_new_array
    cdef readonly bint closed

    cdef void _bind(self, MappedRing ring, object dtype, int wait_strategy):
        self.ring = ring
        self.hdr = ring.hdr
        self.data = ring.data
        self.capacity = ring.hdr.config.capacity
        self.mask = self.capacity - 1
        self.itemsize = ring.hdr.config.itemsize
        self.wait_strategy = wait_strategy
        self.blocking = ring.hdr.config.wait_strategy == SHMPIPE_WAIT_BLOCK
        self.broadcast = (ring.hdr.config.flags & SHMPIPE_FLAG_BROADCAST) != 0
        self.lossy = (ring.hdr.config.flags & SHMPIPE_FLAG_LOSSY) != 0
        self.dtype = dtype
        self.void_dtype = np.dtype(f"V{self.itemsize}")

    cdef inline void _check(self) except *:
        if self.closed or self.ring.closed:
            raise RingClosedError(f"{type(self).__name__} of ring {self.ring.name!r} is closed")

    cdef bint _ready(self) noexcept nogil:
        return True

    cdef void _on_wait_slice(self) except *:
        pass

    cdef int _wait_slice(self, shmpipe_doorbell *bell, int64_t deadline) noexcept nogil:
        """Wait up to one slice (or the deadline) for _ready(). 1: ready, 0: not yet."""
        cdef uint64_t now = shm_monotonic_ns()
        cdef uint64_t end = now + WAIT_SLICE_NS
        cdef uint64_t sleep_ns
        cdef uint32_t seq
        cdef long i = 0
        if deadline > 0 and <uint64_t>deadline < end:
            end = <uint64_t>deadline
        if self.wait_strategy == SHMPIPE_WAIT_SPIN:
            while True:
                if self._ready():
                    return 1
                shm_cpu_relax()
                i += 1
                if (i & 255) == 0 and shm_monotonic_ns() >= end:
                    return 0
        if self.wait_strategy == SHMPIPE_WAIT_YIELD:
            while True:
                if self._ready():
                    return 1
                i += 1
                if i < SPIN_BEFORE_YIELD:
                    shm_cpu_relax()
                    continue
                shm_sched_yield()
                if shm_monotonic_ns() >= end:
                    return 0
        # block: spin briefly, then sleep on the doorbell until woken or the slice ends.
        for i in range(SPIN_BEFORE_SLEEP):
            if self._ready():
                return 1
            shm_cpu_relax()
        while True:
            seq = shm_load_acquire_u32(&bell.seq)
            shm_fetch_add_u32(&bell.waiters, 1)
            shm_fence_seq_cst()
            if self._ready():
                shm_fetch_sub_u32(&bell.waiters, 1)
                return 1
            now = shm_monotonic_ns()
            if now >= end:
                shm_fetch_sub_u32(&bell.waiters, 1)
                return 0
            sleep_ns = end - now
            if sleep_ns > FUTEX_SLEEP_NS:
                sleep_ns = FUTEX_SLEEP_NS
            shm_futex_wait(&bell.seq, seq, sleep_ns)
            shm_fetch_sub_u32(&bell.waiters, 1)
            if self._ready():
                return 1

    cdef int _wait(self, shmpipe_doorbell *bell, int64_t deadline) except -1:
        """Wait for _ready() until the deadline (-1: forever). 1: ready, 0: timed out.
        The GIL is released while waiting; Ctrl-C raises KeyboardInterrupt within a slice."""
        cdef int r
        while True:
            with nogil:
                r = self._wait_slice(bell, deadline)
            if r:
                return 1
            PyErr_CheckSignals()
            self._on_wait_slice()
            if deadline >= 0 and <int64_t>shm_monotonic_ns() >= deadline:
                return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True


cdef class Producer(_Side):
    """The single writer of a ring. Made by Ring.producer(); holds the producer role until closed."""
    cdef uint64_t write_pos          # private copy; the shared one is published with release
    cdef uint64_t read_limit         # cached slowest consumer position
    cdef uint64_t pending            # records the current wait needs room for
    cdef uint32_t writes_since_heartbeat
    cdef object equal_dtype          # last dtype object found equal to ours (see _check_dtype)
    cdef double consumer_timeout_s

    def __cinit__(self):
        self.closed = True

    @staticmethod
    def _attach(MappedRing ring, object dtype, int wait_strategy, uint32_t pid, uint64_t start_ticks):
        ring._check()
        cdef Producer self = Producer.__new__(Producer)
        # Our own OFD lock never conflicts with us, so a role this handle holds is checked here.
        if ring.holds_producer or not ring._take_role(SHMPIPE_LOCK_PRODUCER):
            raise RoleTakenError(
                f"ring {ring.name!r} already has a live producer (pid {ring.hdr.producer_info.pid}); "
                f"an SPSC or broadcast ring takes one writer")
        ring.holds_producer = True
        self._bind(ring, dtype, wait_strategy)
        cdef shmpipe_header *h = ring.hdr
        h.producer_info.pid = pid
        h.producer_info.start_ticks = start_ticks
        h.producer_info.attach_count += 1
        h.producer_info.attached_unix_ns = shm_realtime_ns()
        shm_store_relaxed_u64(&h.producer_info.heartbeat_ns, shm_monotonic_ns())
        # A restarted producer carries on the sequence. A predecessor killed mid-copy left only
        # unpublished slots past write_pos, which we simply overwrite.
        self.write_pos = shm_load_acquire_u64(&h.producer.write_pos)
        shm_store_release_u64(&h.producer.claim_pos, self.write_pos)
        self.consumer_timeout_s = h.config.consumer_timeout_ns / 1e9
        self._refresh_limit()
        self.closed = False
        return self

    def close(self):
        """Give up the producer role (a new producer may then attach and carry on)."""
        if not self.closed:
            self.closed = True
            if not self.ring.closed:
                self.ring.holds_producer = False
                self.ring._drop_role(SHMPIPE_LOCK_PRODUCER)

    @property
    def consumer_alive(self):
        """True while a consumer holds this ring's (first) consumer slot."""
        self._check()
        cdef int i
        for i in range(self.hdr.config.max_consumers):
            if self.ring.consumer_alive(i):
                return True
        return False

    @property
    def position(self):
        """Records written so far over the ring's life (the next record's sequence number)."""
        return self.write_pos

    cdef inline void _refresh_limit(self) noexcept nogil:
        cdef uint64_t lowest, pos
        cdef uint32_t i, state
        cdef bint any_active = False
        if not self.broadcast:
            self.read_limit = shm_load_acquire_u64(&self.hdr.consumers[0].read_pos)
            return
        lowest = self.write_pos
        for i in range(self.hdr.config.max_consumers):
            state = shm_load_acquire_u32(&self.hdr.consumers[i].state)
            if state == SHMPIPE_SLOT_ACTIVE or state == SHMPIPE_SLOT_CLAIMING:
                pos = shm_load_acquire_u64(&self.hdr.consumers[i].read_pos)
                if pos < lowest:
                    lowest = pos
        # No consumer at all: nothing to protect, the records go nowhere (as a PUB socket).
        self.read_limit = lowest

    cdef bint _ready(self) noexcept nogil:
        self._refresh_limit()
        return self.write_pos + self.pending - self.read_limit <= self.capacity

    cdef void _on_wait_slice(self) except *:
        shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_monotonic_ns())
        if self.broadcast:
            self._evict_stale_consumers()

    cdef void _evict_stale_consumers(self) except *:
        """A lossless producer must not wait forever on a consumer that died or went silent."""
        cdef uint32_t i
        cdef shmpipe_consumer_slot *s
        cdef uint64_t now = shm_monotonic_ns()
        cdef uint64_t timeout_ns = self.hdr.config.consumer_timeout_ns
        cdef uint64_t beat
        for i in range(self.hdr.config.max_consumers):
            s = &self.hdr.consumers[i]
            if shm_load_acquire_u32(&s.state) != SHMPIPE_SLOT_ACTIVE:
                continue
            beat = shm_load_relaxed_u64(&s.heartbeat_ns)
            dead = not self.ring.consumer_alive(i)
            silent = timeout_ns > 0 and now > beat and now - beat > timeout_ns
            if dead or silent:
                if shm_cas_u32(&s.state, SHMPIPE_SLOT_ACTIVE, SHMPIPE_SLOT_EVICTED):
                    self.hdr.producer_info.evictions += 1

    cdef int _make_room(self, uint64_t n, int64_t deadline) except -1:
        """1 when n more records fit (lossy rings always fit), 0 when the deadline passed."""
        if self.lossy or self.write_pos + n - self.read_limit <= self.capacity:
            return 1
        self._refresh_limit()
        if self.write_pos + n - self.read_limit <= self.capacity:
            return 1
        self.hdr.producer_info.full_waits += 1
        if deadline == 0:
            return 0
        self.pending = n
        return self._wait(&self.hdr.space_ready, deadline)

    cdef inline void _copy_in(self, const char *src, uint64_t n) noexcept nogil:
        """Copy n records to the slots from write_pos on, in at most two memcpy (the wrap)."""
        cdef uint64_t first = self.write_pos & self.mask
        cdef uint64_t head = self.capacity - first
        if head > n:
            head = n
        memcpy(self.data + first * self.itemsize, src, head * self.itemsize)
        if n > head:
            memcpy(self.data, src + head * self.itemsize, (n - head) * self.itemsize)

    cdef inline void _publish(self, const char *src, uint64_t n) noexcept nogil:
        if self.lossy or self.broadcast:
            # Seqlock for readers racing an overwrite: announce the slots we are about to reuse.
            shm_store_relaxed_u64(&self.hdr.producer.claim_pos, self.write_pos + n)
            shm_fence_release()
        self._copy_in(src, n)
        self.write_pos += n
        shm_store_release_u64(&self.hdr.producer.write_pos, self.write_pos)
        if self.blocking:
            _wake(&self.hdr.data_ready)

    cdef inline int _check_dtype(self, object dtype, str what) except -1:
        """Equal dtypes are often distinct objects (Ring.open rebuilds one from the header), and
        comparing structured dtypes costs ~400 ns: remember the last object found equal."""
        if dtype is self.dtype or dtype is self.equal_dtype:
            return 0
        if dtype != self.dtype:
            raise DtypeMismatchError(f"ring {self.ring.name!r} holds {self.dtype}, got {what} of dtype {dtype}")
        self.equal_dtype = dtype
        return 0

    cdef const char *_record_pointer(self, object record, Py_buffer *view, bint *got_view) except NULL:
        """Address of one record's bytes, checked for size and (for numpy scalars) dtype."""
        cdef cnp.PyArray_Descr *descr
        if PyBytes_CheckExact(record):
            if <size_t>PyBytes_GET_SIZE(record) != self.itemsize:
                raise ValueError(f"ring {self.ring.name!r} takes records of {self.itemsize} bytes, "
                                 f"got bytes of length {PyBytes_GET_SIZE(record)}")
            return PyBytes_AS_STRING(record)
        if isinstance(record, np.void):
            descr = (<PyVoidScalarObject *>record).descr
            self._check_dtype(<object>descr, "a record")
            return (<PyVoidScalarObject *>record).obval
        if isinstance(record, np.ndarray):
            self._check_dtype(record.dtype, "an array")
            if record.size != 1:
                raise ValueError(f"write() takes one record; use write_batch() for {record.size}")
            record = np.ascontiguousarray(record)
        PyObject_GetBuffer(record, view, PyBUF_SIMPLE)
        got_view[0] = True
        if <size_t>view.len != self.itemsize:
            got_view[0] = False
            PyBuffer_Release(view)
            raise ValueError(f"ring {self.ring.name!r} takes records of {self.itemsize} bytes, "
                             f"got {view.len} bytes")
        return <const char *>view.buf

    def write(self, record, timeout=None):
        """Write one record: a numpy structured scalar of the ring's dtype, or bytes of exactly
        itemsize. Waits for room by the ring's strategy; timeout=0 never waits. Returns False
        if the ring stayed full until the timeout."""
        self._check()
        cdef Py_buffer view
        cdef bint got_view = False
        cdef int64_t deadline
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
        cdef const char *src = self._record_pointer(record, &view, &got_view)
        try:
            if not (self.lossy or self.write_pos + 1 - self.read_limit <= self.capacity):
                deadline = _deadline(timeout)
                if not self._make_room(1, deadline):
                    return False
            self._publish(src, 1)
        finally:
            if got_view:
                PyBuffer_Release(&view)
        self.writes_since_heartbeat += 1
        if self.writes_since_heartbeat >= HEARTBEAT_EVERY_WRITES:
            self.writes_since_heartbeat = 0
            shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_coarse_ns())
        return True

    def write_batch(self, array, timeout=None):
        """Write the records of a 1-d array of the ring's dtype; returns how many went in (all of
        them unless the timeout passed while the ring was full). Each chunk that fits is copied
        with at most two memcpy and published at once."""
        self._check()
        if not isinstance(array, np.ndarray):
            raise TypeError(f"write_batch() takes a numpy array, not {type(array).__name__}")
        cdef cnp.ndarray arr = <cnp.ndarray>array
        self._check_dtype(arr.dtype, "an array")
        if arr.ndim != 1:
            raise ValueError(f"write_batch() takes a 1-d array, got shape {array.shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            arr = np.ascontiguousarray(arr)
        cdef uint64_t total = arr.shape[0]
        cdef uint64_t done = 0, chunk, room
        cdef const char *src = <const char *>cnp.PyArray_DATA(arr)
        cdef int64_t deadline = -2
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
        while done < total:
            chunk = total - done
            if self.lossy:
                if chunk > self.capacity:
                    chunk = self.capacity
            else:
                room = self.capacity - (self.write_pos - self.read_limit)
                if room == 0:
                    self._refresh_limit()
                    room = self.capacity - (self.write_pos - self.read_limit)
                if room == 0:
                    if deadline == -2:
                        deadline = _deadline(timeout)
                    if not self._make_room(1, deadline):
                        break
                    room = self.capacity - (self.write_pos - self.read_limit)
                if chunk > room:
                    chunk = room
            if chunk * self.itemsize >= NOGIL_COPY_BYTES:
                with nogil:
                    self._publish(src + done * self.itemsize, chunk)
            else:   # dropping and retaking the GIL costs more than a small copy
                self._publish(src + done * self.itemsize, chunk)
            done += chunk
        shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_coarse_ns())
        return done


cdef class Consumer(_Side):
    """A reader with its own cursor (a slot in the header). Made by Ring.consumer()."""
    cdef uint64_t read_pos
    cdef uint64_t write_seen       # cached producer position
    cdef uint64_t peeked           # records handed out by peek() and not yet committed
    cdef uint32_t slot_index
    cdef shmpipe_consumer_slot *mine
    cdef readonly uint64_t lost_here

    def __cinit__(self):
        self.closed = True

    @staticmethod
    def _attach(MappedRing ring, object dtype, int wait_strategy, uint32_t pid, uint64_t start_ticks,
                str start):
        ring._check()
        cdef Consumer self = Consumer.__new__(Consumer)
        self._bind(ring, dtype, wait_strategy)
        cdef shmpipe_header *h = ring.hdr
        cdef uint32_t i
        cdef int found = -1
        cdef uint64_t w
        cdef shmpipe_consumer_slot *s
        if not self.broadcast:
            if ring.consumer_roles & 1 or not ring._take_role(SHMPIPE_LOCK_CONSUMER0):
                raise RoleTakenError(
                    f"ring {ring.name!r} already has a live consumer (pid {h.consumers[0].pid}); "
                    f"an SPSC ring takes one reader (create it with broadcast=True for more)")
            found = 0
            # SPSC keeps its cursor across consumer restarts: nothing published is skipped.
            shm_store_release_u32(&h.consumers[0].state, SHMPIPE_SLOT_ACTIVE)
        else:
            for i in range(h.config.max_consumers):
                if not ring.consumer_roles & (1ull << i) and ring._take_role(SHMPIPE_LOCK_CONSUMER0 + i):
                    found = i
                    break
            if found < 0:
                raise RoleTakenError(f"ring {ring.name!r} has all {h.config.max_consumers} consumer "
                                     f"slots held by live consumers")
            s = &h.consumers[found]
            # Claim first so the producer counts us (CLAIMING) before we pick a start position;
            # then re-read write_pos, which can only have moved forward.
            shm_store_release_u64(&s.read_pos, shm_load_acquire_u64(&h.producer.write_pos))
            shm_store_release_u32(&s.state, SHMPIPE_SLOT_CLAIMING)
            shm_fence_seq_cst()
            w = shm_load_acquire_u64(&h.producer.write_pos)
            if start == "oldest":
                shm_store_release_u64(&s.read_pos, w - self.capacity if w > self.capacity else 0)
            else:
                shm_store_release_u64(&s.read_pos, w)
            shm_store_relaxed_u64(&s.lost, 0)
            shm_store_release_u32(&s.state, SHMPIPE_SLOT_ACTIVE)
        ring.consumer_roles |= (1ull << found)
        self.slot_index = found
        self.mine = &h.consumers[found]
        self.mine.pid = pid
        self.mine.start_ticks = start_ticks
        self.mine.attached_unix_ns = shm_realtime_ns()
        shm_store_relaxed_u64(&self.mine.heartbeat_ns, shm_monotonic_ns())
        self.read_pos = shm_load_acquire_u64(&self.mine.read_pos)
        self.write_seen = shm_load_acquire_u64(&h.producer.write_pos)
        self.closed = False
        return self

    def close(self):
        """Leave: a broadcast slot is freed for others; an SPSC cursor is kept for the next consumer."""
        if self.closed:
            return
        self.closed = True
        if self.ring.closed:
            return
        self.lost_here = self.mine.lost
        if self.broadcast:
            shm_store_release_u32(&self.mine.state, SHMPIPE_SLOT_FREE)
            if self.blocking:
                _wake(&self.hdr.space_ready)
        self.ring.consumer_roles &= ~(1ull << self.slot_index)
        self.ring._drop_role(SHMPIPE_LOCK_CONSUMER0 + self.slot_index)

    @property
    def producer_alive(self):
        """True while a producer holds the ring's producer role; False when none ever attached
        or it is gone (closed, crashed, killed). Empty reads plus this tell 'gone' from 'no data yet'."""
        self._check()
        return self.ring.producer_alive()

    @property
    def lost(self):
        """Records this cursor missed (lossy overruns, or records overwritten while joining)."""
        return self.lost_here if self.closed or self.ring.closed else self.mine.lost

    @property
    def slot(self):
        """This consumer's slot number in the ring header."""
        return self.slot_index

    @property
    def position(self):
        """Sequence number of the next record this consumer will read."""
        return self.read_pos

    @property
    def available(self):
        """Records published and not yet read by this consumer (as of now)."""
        self._check()
        return shm_load_acquire_u64(&self.hdr.producer.write_pos) - self.read_pos

    cdef bint _ready(self) noexcept nogil:
        self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
        return self.write_seen > self.read_pos

    cdef void _on_wait_slice(self) except *:
        shm_store_relaxed_u64(&self.mine.heartbeat_ns, shm_monotonic_ns())

    cdef inline void _check_slot(self) except *:
        if self.broadcast and shm_load_acquire_u32(&self.mine.state) == SHMPIPE_SLOT_EVICTED:
            raise ConsumerEvictedError(
                f"consumer slot {self.slot_index} of ring {self.ring.name!r} was evicted by the "
                f"producer (dead or silent longer than the consumer timeout); close it and join again")

    cdef uint64_t _available_or_wait(self, uint64_t wanted, object timeout) except? 0xffffffffffffffff:
        cdef uint64_t avail = self.write_seen - self.read_pos
        cdef int64_t deadline
        if avail < wanted:
            # The cached position cannot fill this call: look at the producer's line once.
            self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
            avail = self.write_seen - self.read_pos
            if avail == 0:
                deadline = _deadline(timeout)
                if deadline == 0 or not self._wait(&self.hdr.data_ready, deadline):
                    return 0
                avail = self.write_seen - self.read_pos
        return avail

    cdef void _skip_overwritten(self) noexcept nogil:
        """Lossy: jump over records the producer has already lapped, and count them."""
        cdef uint64_t claim = shm_load_acquire_u64(&self.hdr.producer.claim_pos)
        cdef uint64_t oldest = claim - self.capacity if claim > self.capacity else 0
        if self.read_pos < oldest:
            shm_store_relaxed_u64(&self.mine.lost, self.mine.lost + oldest - self.read_pos)
            self.read_pos = oldest

    def read(self, Py_ssize_t max_n=1024, timeout=None):
        """Copy out up to max_n records (a new numpy array). Waits by the ring's strategy while
        empty; timeout=0 never waits. An empty array means the timeout passed with no data."""
        self._check()
        self._check_slot()
        if max_n <= 0:
            raise ValueError(f"max_n must be positive, not {max_n}")
        if self.peeked:
            raise ShmpipeError("commit() the records from peek() before read()")
        cdef uint64_t avail, n, first, head, claim, oldest, dropped
        cdef char *dst
        while True:
            avail = self._available_or_wait(<uint64_t>max_n, timeout)
            if avail == 0:
                return shm_new_array(self.dtype, self.void_dtype, 0, NULL)
            if self.broadcast:
                # write_pos first, claim_pos after: then claim - capacity <= write_seen, so the
                # skip below never passes what is published.
                self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
                self._skip_overwritten()
                avail = self.write_seen - self.read_pos
                if avail == 0:
                    continue
            n = avail if avail < <uint64_t>max_n else <uint64_t>max_n
            arr = shm_new_array(self.dtype, self.void_dtype, <cnp.npy_intp>n, NULL)
            dst = <char *>cnp.PyArray_DATA(<cnp.ndarray>arr)
            dropped = 0
            with nogil:
                first = self.read_pos & self.mask
                head = self.capacity - first
                if head > n:
                    head = n
                memcpy(dst, self.data + first * self.itemsize, head * self.itemsize)
                if n > head:
                    memcpy(dst + head * self.itemsize, self.data, (n - head) * self.itemsize)
                if self.broadcast:
                    # Seqlock check: anything the producer claimed to overwrite while we copied
                    # is dropped (and counted), never returned half-written.
                    shm_fence_acquire()
                    claim = shm_load_relaxed_u64(&self.hdr.producer.claim_pos)
                    oldest = claim - self.capacity if claim > self.capacity else 0
                    if self.read_pos < oldest:
                        dropped = oldest - self.read_pos
                        if dropped > n:
                            dropped = n
                        shm_store_relaxed_u64(&self.mine.lost, self.mine.lost + dropped)
                self.read_pos += n
                shm_store_release_u64(&self.mine.read_pos, self.read_pos)
                if self.blocking:
                    _wake(&self.hdr.space_ready)
                shm_store_relaxed_u64(&self.mine.heartbeat_ns, shm_coarse_ns())
            if dropped == 0:
                return arr
            if dropped < n:
                return arr[dropped:]
            # Lapped during the copy: all of it was overwritten. Try again from the oldest.

    def peek(self, Py_ssize_t max_n=1024, timeout=0):
        """A read-only zero-copy view of up to max_n unread records (up to the wrap point);
        call commit(n) when done with them. Not offered on lossy rings, where the producer may
        overwrite the slots under the view."""
        self._check()
        self._check_slot()
        if self.lossy:
            raise ShmpipeError(f"ring {self.ring.name!r} is lossy: peek() cannot guard a zero-copy "
                               f"view against overwrite; use read()")
        if max_n <= 0:
            raise ValueError(f"max_n must be positive, not {max_n}")
        cdef uint64_t start = self.read_pos + self.peeked
        cdef uint64_t avail = self._available_or_wait(self.peeked + <uint64_t>max_n, timeout) - self.peeked
        cdef uint64_t first = start & self.mask
        cdef uint64_t n = avail if avail < <uint64_t>max_n else <uint64_t>max_n
        if n > self.capacity - first:
            n = self.capacity - first
        view = shm_new_array(self.dtype, self.void_dtype, <cnp.npy_intp>n, <void *>(self.data + first * self.itemsize))
        cnp.set_array_base(<cnp.ndarray>view, self.ring)   # the mapping outlives the view
        self.peeked += n
        return view

    def commit(self, Py_ssize_t n):
        """Release the first n records handed out by peek() back to the producer."""
        self._check()
        if n < 0 or <uint64_t>n > self.peeked:
            raise ValueError(f"commit({n}): only {self.peeked} records are peeked")
        self.peeked -= n
        self.read_pos += n
        shm_store_release_u64(&self.mine.read_pos, self.read_pos)
        if self.blocking:
            _wake(&self.hdr.space_ready)
        shm_store_relaxed_u64(&self.mine.heartbeat_ns, shm_coarse_ns())

    def read_async(self, Py_ssize_t max_n=1024, timeout=None):
        """Awaitable read(): waits for the next batch without blocking the event loop. One
        helper thread per process sleeps on every awaiting consumer's doorbell at once
        (futex_waitv), so no thread spins per consumer."""
        from .aio import read_async
        return read_async(self, max_n, timeout)


cdef class WakeWord:
    """A process-private futex word: bumping it wakes a wait_any() sleeper early."""
    cdef uint32_t word

    def wake(self):
        shm_fetch_add_u32(&self.word, 1)
        shm_futex_wake_private(&self.word)


def wait_any(list consumers, WakeWord interrupt, double timeout):
    """Sleep until any consumer has a record, interrupt.wake() is called, or timeout seconds
    pass; return the indices of the consumers that have records.

    The sleeper protocol is the same as a blocking read's: announce on each doorbell, fence,
    re-check, then sleep. Rings whose producer does not ring the doorbell (spin/yield) are
    only re-checked when the timeout ends, so callers poll those with a short timeout."""
    cdef Py_ssize_t n = len(consumers), i
    cdef Consumer c
    cdef shm_waitv *words = <shm_waitv *>PyMem_Malloc((n + 1) * sizeof(shm_waitv))
    cdef list checked = []
    cdef int r = 0
    cdef bint any_ready = False
    cdef uint64_t timeout_ns = <uint64_t>(timeout * 1e9) if timeout > 0 else 0
    if words == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            c = <Consumer>consumers[i]
            c._check()
            checked.append(c)
        for i in range(n):
            c = <Consumer>checked[i]
            words[i].val = shm_load_acquire_u32(&c.hdr.data_ready.seq)
            words[i].uaddr = <uint64_t><size_t>&c.hdr.data_ready.seq
            words[i].flags = SHM_FUTEX2_SIZE_U32
            words[i].reserved = 0
            shm_fetch_add_u32(&c.hdr.data_ready.waiters, 1)
        words[n].val = shm_load_acquire_u32(&interrupt.word)
        words[n].uaddr = <uint64_t><size_t>&interrupt.word
        words[n].flags = SHM_FUTEX2_SIZE_U32 | SHM_FUTEX2_PRIVATE
        words[n].reserved = 0
        shm_fence_seq_cst()
        for i in range(n):
            if (<Consumer>checked[i])._ready():
                any_ready = True
        if not any_ready and timeout_ns:
            with nogil:
                r = shm_futex_waitv(words, <unsigned int>(n + 1), timeout_ns)
            if r == -38:   # ENOSYS: a kernel before 5.16; sleep the slice instead
                time.sleep(timeout)
        for i in range(n):
            c = <Consumer>checked[i]
            shm_fetch_sub_u32(&c.hdr.data_ready.waiters, 1)
        return [i for i in range(n) if (<Consumer>checked[i])._ready()]
    finally:
        PyMem_Free(words)
