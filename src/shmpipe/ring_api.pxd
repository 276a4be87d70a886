# The ring's C-level API for Cython: `from shmpipe.ring_api cimport *` (or `cimport shmpipe.ring_api`).
# Build with include_dirs=[shmpipe.get_include()]; call import_ring_api() once at module import.
# Semantics of each call: shmpipe_ring_api.h (the same file, for C callers).
cdef extern from "shmpipe_ring_api.h":
    ctypedef struct shmpipe_consumer
    ctypedef struct shmpipe_producer
    enum:
        SHMPIPE_RING_API_VERSION

    int import_ring_api "shmpipe_import_ring_api" () except -1
    shmpipe_consumer *consumer_handle "shmpipe_consumer_handle" (object consumer) except NULL
    shmpipe_producer *producer_handle "shmpipe_producer_handle" (object producer) except NULL
    Py_ssize_t consumer_wait "shmpipe_consumer_wait" (shmpipe_consumer *c, double timeout_s) except -1
    Py_ssize_t producer_write_wait "shmpipe_producer_write_wait" (
        shmpipe_producer *p, const void *src, Py_ssize_t n, double timeout_s) except -1
    Py_ssize_t itemsize "shmpipe_itemsize" (object side) except -1

cdef extern from "shmpipe_ring_api.h" nogil:
    Py_ssize_t consumer_read "shmpipe_consumer_read" (shmpipe_consumer *c, void *dst, Py_ssize_t max_n)
    Py_ssize_t consumer_peek "shmpipe_consumer_peek" (shmpipe_consumer *c, const void **first, Py_ssize_t max_n)
    int consumer_commit "shmpipe_consumer_commit" (shmpipe_consumer *c, Py_ssize_t n)
    Py_ssize_t producer_write "shmpipe_producer_write" (shmpipe_producer *p, const void *src, Py_ssize_t n)
