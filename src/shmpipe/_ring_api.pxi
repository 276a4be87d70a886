# Included by _ring.pyx. The C-level API (shmpipe_ring_api.h): a table of function pointers in the
# capsule shmpipe._ring._C_API, for compiled code in other modules (services/orderbook, or a user's
# own Cython) to read and write records with no Python call per record.
#
# Each entry is a thin wrapper over the Producer/Consumer code paths read()/write() use (the copy,
# the claim, the store-release of the position, the doorbell), so the memory ordering is the one
# described at the top of _producer.pxi and _consumer.pxi, written once. Handles are the objects
# themselves; the nogil entries take them as their cdef class (a borrowed reference) and the table
# stores them as pointers to opaque structs, which is what a C caller sees.

from cpython.pycapsule cimport PyCapsule_New

cdef extern from *:
    """
    #define SHMPIPE_RING_API_IMPLEMENTATION
    #include "shmpipe_ring_api.h"
    """
    ctypedef struct shmpipe_consumer
    ctypedef struct shmpipe_producer
    ctypedef shmpipe_consumer *(*shmpipe_consumer_handle_fn)(object) except NULL
    ctypedef shmpipe_producer *(*shmpipe_producer_handle_fn)(object) except NULL
    ctypedef Py_ssize_t (*shmpipe_consumer_read_fn)(shmpipe_consumer *, void *, Py_ssize_t) noexcept nogil
    ctypedef Py_ssize_t (*shmpipe_consumer_peek_fn)(shmpipe_consumer *, const void **, Py_ssize_t) noexcept nogil
    ctypedef int (*shmpipe_consumer_commit_fn)(shmpipe_consumer *, Py_ssize_t) noexcept nogil
    ctypedef Py_ssize_t (*shmpipe_consumer_wait_fn)(shmpipe_consumer *, double) except -1
    ctypedef Py_ssize_t (*shmpipe_producer_write_fn)(shmpipe_producer *, const void *, Py_ssize_t) noexcept nogil
    ctypedef Py_ssize_t (*shmpipe_producer_write_wait_fn)(shmpipe_producer *, const void *, Py_ssize_t,
                                                          double) except -1
    ctypedef Py_ssize_t (*shmpipe_itemsize_fn)(object) except -1
    ctypedef struct shmpipe_ring_api:
        unsigned int version
        unsigned int size
        shmpipe_consumer_handle_fn consumer_handle
        shmpipe_producer_handle_fn producer_handle
        shmpipe_consumer_read_fn consumer_read
        shmpipe_consumer_peek_fn consumer_peek
        shmpipe_consumer_commit_fn consumer_commit
        shmpipe_consumer_wait_fn consumer_wait
        shmpipe_producer_write_fn producer_write
        shmpipe_producer_write_wait_fn producer_write_wait
        shmpipe_itemsize_fn itemsize
    enum:
        SHMPIPE_RING_API_VERSION


cdef shmpipe_consumer *_api_consumer_handle(object consumer) except NULL:
    if not isinstance(consumer, Consumer):
        raise TypeError(f"a shmpipe.Consumer is needed, not {type(consumer).__name__}")
    (<Consumer>consumer)._check()
    return <shmpipe_consumer *><void *>consumer


cdef shmpipe_producer *_api_producer_handle(object producer) except NULL:
    if not isinstance(producer, Producer):
        raise TypeError(f"a shmpipe.Producer is needed, not {type(producer).__name__}")
    (<Producer>producer)._check()
    return <shmpipe_producer *><void *>producer


cdef inline bint _api_side_gone(_Side side) noexcept nogil:
    """The handle is closed or being closed, or its ring is (closed, or inherited across fork():
    the child's mapping is then private zero pages, so a call would read zeros or write nowhere)."""
    return side.closed or side.closing or side.ring.closed


cdef inline bint _api_unusable(Consumer c) noexcept nogil:
    """Closed, being closed, or evicted: the nogil calls answer -1 and Python-level calls explain."""
    if _api_side_gone(c):
        return True
    return c.broadcast and _slot_state(shm_load_acquire_u64(&c.mine.state_word)) == SHMPIPE_SLOT_EVICTED


cdef Py_ssize_t _api_consumer_read(Consumer c, void *dst, Py_ssize_t max_n) noexcept nogil:
    cdef uint64_t avail, n, dropped
    cdef bint evicted = False
    if max_n <= 0 or _api_unusable(c):
        return -1
    c.shown = 0
    while True:
        avail = c._unread()
        if avail < <uint64_t>max_n:
            c.write_seen = shm_load_acquire_u64(&c.hdr.producer.write_pos)
            avail = c._unread()
        if avail == 0:
            if c.broadcast:
                c._heartbeat()
            return 0
        if c.lossy:
            c._skip_overwritten()
            avail = c._unread()
            if avail == 0:
                continue
        n = _min_u64(_min_u64(avail, <uint64_t>max_n), c.capacity)
        dropped = c._copy_out_nogil(<char *>dst, n, &evicted)
        if evicted:
            return -1
        if dropped < n:
            if dropped:
                memmove(<char *>dst, <char *>dst + dropped * c.itemsize, (n - dropped) * c.itemsize)
            return <Py_ssize_t>(n - dropped)


cdef Py_ssize_t _api_consumer_peek(Consumer c, const void **first, Py_ssize_t max_n) noexcept nogil:
    cdef uint64_t avail, start, n
    if max_n <= 0 or c.lossy or _api_unusable(c):
        return -1
    avail = c._unread()
    if avail < <uint64_t>max_n:
        c.write_seen = shm_load_acquire_u64(&c.hdr.producer.write_pos)
        avail = c._unread()
    start = c.read_pos & c.mask
    n = _min_u64(_min_u64(avail, <uint64_t>max_n), c.capacity - start)
    c._heartbeat()
    first[0] = <const void *>(c.data + start * c.itemsize)
    c.shown = n
    return <Py_ssize_t>n


cdef int _api_consumer_commit(Consumer c, Py_ssize_t n) noexcept nogil:
    if n < 0 or <uint64_t>n > c.shown or _api_side_gone(c):
        return -1
    if c._evicted_since_peek():      # what the peek showed may be overwritten: count none of it
        c.shown = 0
        return -1
    if n == 0:
        return 0
    c.shown -= n
    c.read_pos += n
    shm_store_release_u64(&c.mine.read_pos, c.read_pos)
    if c.blocking:
        _wake(&c.hdr.space_ready)
    c._heartbeat()
    return 0


cdef double _api_timeout(double timeout_s) except -2:
    if timeout_s != timeout_s:
        raise InvalidArgumentError("timeout must be a number of seconds, not NaN")
    return -1 if timeout_s < 0 or timeout_s >= FOREVER_S else timeout_s


cdef Py_ssize_t _api_consumer_wait(Consumer c, double timeout_s) except -1:
    cdef double t = _api_timeout(timeout_s)
    c._enter()
    try:
        c._check_slot()
        return <Py_ssize_t>c._available_or_wait(1, t)
    finally:
        c._leave()


cdef Py_ssize_t _api_producer_write(Producer p, const void *src, Py_ssize_t n) noexcept nogil:
    if n < 0 or _api_side_gone(p):
        return -1
    return <Py_ssize_t>p._write_now(<const char *>src, <uint64_t>n)


cdef Py_ssize_t _api_producer_write_wait(Producer p, const void *src, Py_ssize_t n,
                                         double timeout_s) except -1:
    cdef double t = _api_timeout(timeout_s)
    if n < 0:
        raise InvalidArgumentError(f"cannot write {n} records")
    p._enter()
    try:
        return <Py_ssize_t>p._write_from(<const char *>src, <uint64_t>n, t)
    finally:
        p._leave()


cdef Py_ssize_t _api_itemsize(object side) except -1:
    if not isinstance(side, _Side):
        raise TypeError(f"a shmpipe.Consumer or shmpipe.Producer is needed, not {type(side).__name__}")
    return <Py_ssize_t>(<_Side>side).itemsize


cdef shmpipe_ring_api _API
_API.version = SHMPIPE_RING_API_VERSION
_API.size = sizeof(shmpipe_ring_api)
_API.consumer_handle = _api_consumer_handle
_API.producer_handle = _api_producer_handle
_API.consumer_read = <shmpipe_consumer_read_fn><void *>_api_consumer_read
_API.consumer_peek = <shmpipe_consumer_peek_fn><void *>_api_consumer_peek
_API.consumer_commit = <shmpipe_consumer_commit_fn><void *>_api_consumer_commit
_API.consumer_wait = <shmpipe_consumer_wait_fn><void *>_api_consumer_wait
_API.producer_write = <shmpipe_producer_write_fn><void *>_api_producer_write
_API.producer_write_wait = <shmpipe_producer_write_wait_fn><void *>_api_producer_write_wait
_API.itemsize = _api_itemsize

_C_API = PyCapsule_New(<void *>&_API, "shmpipe._ring._C_API", NULL)
