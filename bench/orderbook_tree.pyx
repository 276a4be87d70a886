# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False
"""The comparison the order book's structure rests on: the same book changes applied to a balanced
tree per side (C++ std::map<double, double>, a red-black tree), with the top 50 per side read best
first after each change, as the order book's entries need. Built on demand by orderbook_bench.py."""
from libcpp.map cimport map as cmap
from libcpp.vector cimport vector
from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport uint8_t, uint32_t, uint64_t
import numpy as np


cdef packed struct LevelUpdate:
    uint64_t timestamp_ns
    double price
    double size
    uint32_t symbol_id
    uint8_t side
    uint8_t action
    uint8_t source
    uint8_t flags


def apply(records, int symbols, bint read_top, int top=50):
    """Apply sets/deletes (action 0) to per-symbol trees; returns ns per record and a checksum of
    what was read (so the reads are not optimised away)."""
    cdef vector[cmap[double, double]] bids = vector[cmap[double, double]](symbols + 1)
    cdef vector[cmap[double, double]] asks = vector[cmap[double, double]](symbols + 1)
    cdef const unsigned char[::1] raw = np.ascontiguousarray(records).view(np.uint8)
    cdef const LevelUpdate *u = <const LevelUpdate *>&raw[0]
    cdef Py_ssize_t n = len(records), i, j
    cdef cmap[double, double] *m
    cdef cmap[double, double].iterator it
    cdef cmap[double, double].reverse_iterator rit
    cdef float buf[200]
    cdef double acc = 0
    import time
    t0 = time.perf_counter_ns()
    for i in range(n):
        if u[i].action != 0:
            continue
        m = &bids[u[i].symbol_id] if u[i].side == 0 else &asks[u[i].symbol_id]
        if u[i].size == 0.0:
            m.erase(u[i].price)
        else:
            deref(m)[u[i].price] = u[i].size
        if read_top:
            rit = bids[u[i].symbol_id].rbegin()
            j = 0
            while rit != bids[u[i].symbol_id].rend() and j < top:
                buf[2 * j] = <float>deref(rit).first
                buf[2 * j + 1] = <float>deref(rit).second
                inc(rit)
                j += 1
            it = asks[u[i].symbol_id].begin()
            j = 0
            while it != asks[u[i].symbol_id].end() and j < top:
                buf[100 + 2 * j] = <float>deref(it).first
                buf[101 + 2 * j] = <float>deref(it).second
                inc(it)
                j += 1
            acc += buf[0] + buf[100]
    return (time.perf_counter_ns() - t0) / n, acc
