/* shmpipe's C-level ring API, for compiled code in other extension modules (Cython or C).
 *
 * The way numpy exports its C API: shmpipe._ring publishes a table of function pointers in a
 * capsule (shmpipe._ring._C_API); shmpipe_import_ring_api() fetches it once per module, and the
 * inline wrappers below call through it. The table, not the Producer/Consumer object layouts, is
 * the contract, so a module built against one shmpipe keeps working with the next as long as
 * SHMPIPE_RING_API_VERSION is unchanged (only ever appended to).
 *
 * Handles are the shmpipe.Consumer / shmpipe.Producer objects themselves, borrowed: keep the Python
 * object alive and open while you use its handle, and do not close it from another thread while a
 * nogil call is running (a *_wait call that another thread closes ends in RingClosedError). The nogil calls never wait and never raise; they use the ring's own
 * code paths (the same acquire/release ordering as read()/write()). The two *_wait calls need the
 * GIL: they wait by the ring's strategy (releasing the GIL meanwhile), notice Ctrl-C, and return -1
 * with a Python exception set on failure.
 */
#ifndef SHMPIPE_RING_API_H
#define SHMPIPE_RING_API_H

#include <Python.h>

#define SHMPIPE_RING_API_VERSION 1

typedef struct shmpipe_consumer shmpipe_consumer;   /* a shmpipe.Consumer, borrowed */
typedef struct shmpipe_producer shmpipe_producer;   /* a shmpipe.Producer, borrowed */

typedef shmpipe_consumer *(*shmpipe_consumer_handle_fn)(PyObject *consumer);
typedef shmpipe_producer *(*shmpipe_producer_handle_fn)(PyObject *producer);
typedef Py_ssize_t (*shmpipe_consumer_read_fn)(shmpipe_consumer *c, void *dst, Py_ssize_t max_n);
typedef Py_ssize_t (*shmpipe_consumer_peek_fn)(shmpipe_consumer *c, const void **first, Py_ssize_t max_n);
typedef int (*shmpipe_consumer_commit_fn)(shmpipe_consumer *c, Py_ssize_t n);
typedef Py_ssize_t (*shmpipe_consumer_wait_fn)(shmpipe_consumer *c, double timeout_s);
typedef Py_ssize_t (*shmpipe_producer_write_fn)(shmpipe_producer *p, const void *src, Py_ssize_t n);
typedef Py_ssize_t (*shmpipe_producer_write_wait_fn)(shmpipe_producer *p, const void *src, Py_ssize_t n,
                                                     double timeout_s);
typedef Py_ssize_t (*shmpipe_itemsize_fn)(PyObject *side);

typedef struct {
    unsigned int version;          /* SHMPIPE_RING_API_VERSION of the library that filled it */
    unsigned int size;             /* sizeof(shmpipe_ring_api) there: later versions only append */
    shmpipe_consumer_handle_fn consumer_handle;
    shmpipe_producer_handle_fn producer_handle;
    shmpipe_consumer_read_fn consumer_read;
    shmpipe_consumer_peek_fn consumer_peek;
    shmpipe_consumer_commit_fn consumer_commit;
    shmpipe_consumer_wait_fn consumer_wait;
    shmpipe_producer_write_fn producer_write;
    shmpipe_producer_write_wait_fn producer_write_wait;
    shmpipe_itemsize_fn itemsize;
} shmpipe_ring_api;

#ifndef SHMPIPE_RING_API_IMPLEMENTATION
static const shmpipe_ring_api *shmpipe_ring_api_table = NULL;

/* 0 on success; -1 with ImportError set. Call once (module init) before any other call. */
static int shmpipe_import_ring_api(void) {
    const shmpipe_ring_api *api;
    if (shmpipe_ring_api_table != NULL)
        return 0;
    api = (const shmpipe_ring_api *)PyCapsule_Import("shmpipe._ring._C_API", 0);
    if (api == NULL)
        return -1;
    if (api->version != SHMPIPE_RING_API_VERSION || api->size < sizeof(shmpipe_ring_api)) {
        PyErr_Format(PyExc_ImportError, "shmpipe ring C API version %u (table of %u bytes), this module was "
                     "built for version %d: rebuild it against the installed shmpipe",
                     api->version, api->size, SHMPIPE_RING_API_VERSION);
        return -1;
    }
    shmpipe_ring_api_table = api;
    return 0;
}

/* A handle for a shmpipe.Consumer / shmpipe.Producer; NULL with TypeError or RingClosedError set. */
static inline shmpipe_consumer *shmpipe_consumer_handle(PyObject *consumer) {
    return shmpipe_ring_api_table->consumer_handle(consumer);
}
static inline shmpipe_producer *shmpipe_producer_handle(PyObject *producer) {
    return shmpipe_ring_api_table->producer_handle(producer);
}
/* Copy up to max_n records now; returns how many (0: none yet), -1 when this consumer was evicted or
 * closed (call the Python read() to get the error). Never waits; no GIL needed. */
static inline Py_ssize_t shmpipe_consumer_read(shmpipe_consumer *c, void *dst, Py_ssize_t max_n) {
    return shmpipe_ring_api_table->consumer_read(c, dst, max_n);
}
/* Zero-copy: *first points at up to max_n unread records, contiguous up to the wrap point; returns
 * how many (0: none), -1 as above or on a lossy ring (whose slots may be overwritten under a view).
 * On a lossless broadcast ring the view is only known sound once consumer_commit() answers 0.
 * The same records are shown until consumer_commit(). No GIL needed. */
static inline Py_ssize_t shmpipe_consumer_peek(shmpipe_consumer *c, const void **first, Py_ssize_t max_n) {
    return shmpipe_ring_api_table->consumer_peek(c, first, max_n);
}
/* Consume the first n records the last peek showed; 0 on success. -1 (consuming nothing) if n is more
 * than it showed, the handle or ring is closed (or inherited across fork()), or the consumer was
 * evicted since the peek: then the records it showed may have been overwritten while you used them,
 * so discard what you derived from them (the Python commit() raises ConsumerEvictedError). */
static inline int shmpipe_consumer_commit(shmpipe_consumer *c, Py_ssize_t n) {
    return shmpipe_ring_api_table->consumer_commit(c, n);
}
/* GIL held: wait (by the ring's strategy) until records are readable; returns how many (0: timeout),
 * -1 with an exception (Ctrl-C, evicted, closed). timeout_s < 0 waits as long as it takes. */
static inline Py_ssize_t shmpipe_consumer_wait(shmpipe_consumer *c, double timeout_s) {
    return shmpipe_ring_api_table->consumer_wait(c, timeout_s);
}
/* Write up to n records now, in order; returns how many went in (fewer when a lossless ring is full;
 * a lossy one takes all), -1 when closed (the handle or its ring, or inherited across fork()).
 * Never waits; no GIL needed. */
static inline Py_ssize_t shmpipe_producer_write(shmpipe_producer *p, const void *src, Py_ssize_t n) {
    return shmpipe_ring_api_table->producer_write(p, src, n);
}
/* GIL held: write n records, waiting for room by the ring's strategy (and evicting dead consumers) up
 * to timeout_s (< 0: as long as it takes); returns how many went in, -1 with an exception
 * (RingClosedError when the producer is closed from another thread meanwhile, KeyboardInterrupt). */
static inline Py_ssize_t shmpipe_producer_write_wait(shmpipe_producer *p, const void *src, Py_ssize_t n,
                                                     double timeout_s) {
    return shmpipe_ring_api_table->producer_write_wait(p, src, n, timeout_s);
}
/* GIL held: the record size of a Consumer's or Producer's ring; -1 with TypeError. */
static inline Py_ssize_t shmpipe_itemsize(PyObject *side) {
    return shmpipe_ring_api_table->itemsize(side);
}
#endif /* SHMPIPE_RING_API_IMPLEMENTATION */

#endif /* SHMPIPE_RING_API_H */
