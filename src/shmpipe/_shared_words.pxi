# Included by _ring.pyx. Acquire loads and release stores of single words inside a buffer that
# other processes map too (the symbol registry's count, the tick journal's committed count), and
# the appenders' lock. mmap and numpy have no atomics, so the plain-Python owners of those files
# publish and read their counters through these; only _atomics.h names __atomic_*.

cdef extern from "<stdint.h>":
    ctypedef size_t uintptr_t


cdef void *_word_address(Py_buffer *view, object buf, Py_ssize_t offset, Py_ssize_t width,
                         bint writable) except NULL:
    """The address of an aligned `width`-byte word at `offset` of buf (view acquired: the caller
    releases it). Refuses a word outside the buffer or misaligned, where an atomic would not be one."""
    PyObject_GetBuffer(buf, view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    cdef uintptr_t address = <uintptr_t>view.buf + <uintptr_t>offset
    if offset < 0 or offset + width > view.len or address % <uintptr_t>width != 0:
        PyBuffer_Release(view)
        raise InvalidArgumentError(f"no aligned {width}-byte word at offset {offset} of a "
                                   f"{view.len}-byte buffer")
    return <void *>address


def load_acquire_u64(buf, Py_ssize_t offset):
    """The u64 at buf[offset], loaded with acquire: what was stored before its release store is
    visible to the loads that follow this one."""
    cdef Py_buffer view
    cdef uint64_t *word = <uint64_t *>_word_address(&view, buf, offset, 8, False)
    cdef uint64_t value = shm_load_acquire_u64(word)
    PyBuffer_Release(&view)
    return value


def store_release_u64(buf, Py_ssize_t offset, uint64_t value):
    """Store value at buf[offset] with release: every store this thread made before (the records
    or entry it publishes) is visible to whoever load-acquires this value."""
    cdef Py_buffer view
    cdef uint64_t *word = <uint64_t *>_word_address(&view, buf, offset, 8, True)
    shm_store_release_u64(word, value)
    PyBuffer_Release(&view)


def load_acquire_u32(buf, Py_ssize_t offset):
    cdef Py_buffer view
    cdef uint32_t *word = <uint32_t *>_word_address(&view, buf, offset, 4, False)
    cdef uint32_t value = shm_load_acquire_u32(word)
    PyBuffer_Release(&view)
    return value


def store_release_u32(buf, Py_ssize_t offset, uint32_t value):
    cdef Py_buffer view
    cdef uint32_t *word = <uint32_t *>_word_address(&view, buf, offset, 4, True)
    shm_store_release_u32(word, value)
    PyBuffer_Release(&view)


def try_lock_byte(int fd, long long byte):
    """Take an exclusive OFD lock on one byte of fd's file without waiting: True if taken."""
    cdef int err = shm_lock_try(fd, byte, 1)
    if err == 0:
        return True
    if err in (errno.EAGAIN, errno.EACCES):
        return False
    raise OSError(err, os.strerror(err))


def lock_byte(int fd, long long byte, double timeout):
    """Wait up to timeout seconds for an exclusive OFD lock on one byte of fd's file: True once
    taken, False on timeout. Held for microseconds by appenders, so the wait polls with a short
    backoff (GIL released) rather than parking in F_OFD_SETLKW, which has no timeout; the kernel
    drops a dead holder's lock, so a killed appender never blocks anyone."""
    cdef int err
    cdef unsigned int pause_us = 20
    cdef int64_t deadline = _deadline_after(timeout)
    while True:
        with nogil:
            err = shm_lock_try(fd, byte, 1)
        if err == 0:
            return True
        if err not in (errno.EAGAIN, errno.EACCES):
            raise OSError(err, os.strerror(err))
        if <int64_t>shm_monotonic_ns() >= deadline:
            return False
        PyErr_CheckSignals()
        with nogil:
            usleep(pause_us)
        pause_us = pause_us * 2 if pause_us < 2000 else 2000


def unlock_byte(int fd, long long byte):
    cdef int err = shm_lock_release(fd, byte)
    if err != 0:
        raise OSError(err, os.strerror(err))


def file_layouts():
    """Offsets and sizes of the symbol registry and tick journal structs, as the C compiler laid
    them out (compared with the dtypes of symbols.py and journal.py in tests)."""
    cdef shmpipe_symbols_header sh
    cdef shmpipe_symbol_entry se
    cdef shmpipe_journal_header jh
    cdef size_t s = <size_t>&sh, e = <size_t>&se, j = <size_t>&jh
    return {
        "symbols_header": {
            "itemsize": sizeof(shmpipe_symbols_header),
            "magic": <size_t>&sh.magic - s, "layout_version": <size_t>&sh.layout_version - s,
            "entry_size": <size_t>&sh.entry_size - s, "capacity": <size_t>&sh.capacity - s,
            "count": <size_t>&sh.count - s, "persisted_bytes": <size_t>&sh.persisted_bytes - s,
            "created_unix_ns": <size_t>&sh.created_unix_ns - s, "path_len": <size_t>&sh.path_len - s,
            "path": <size_t>&sh.path - s,
        },
        "symbol_entry": {
            "itemsize": sizeof(shmpipe_symbol_entry),
            "price_decimals": <size_t>&se.price_decimals - e, "size_decimals": <size_t>&se.size_decimals - e,
            "depth": <size_t>&se.depth - e, "registered_unix_ns": <size_t>&se.registered_unix_ns - e,
            "exchange": <size_t>&se.exchange - e, "symbol": <size_t>&se.symbol - e,
        },
        "journal_header": {
            "itemsize": sizeof(shmpipe_journal_header),
            "magic": <size_t>&jh.magic - j, "layout_version": <size_t>&jh.layout_version - j,
            "itemsize_field": <size_t>&jh.itemsize - j, "dtype_fingerprint": <size_t>&jh.dtype_fingerprint - j,
            "symbol_id": <size_t>&jh.symbol_id - j, "day": <size_t>&jh.day - j,
            "capacity": <size_t>&jh.capacity - j, "created_unix_ns": <size_t>&jh.created_unix_ns - j,
            "writer_pid": <size_t>&jh.writer_pid - j, "closed": <size_t>&jh.closed - j,
            "committed": <size_t>&jh.committed - j,
        },
        "constants": {
            "SYMBOLS_MAGIC": SHMPIPE_SYMBOLS_MAGIC, "SYMBOLS_LAYOUT_VERSION": SHMPIPE_SYMBOLS_LAYOUT_VERSION,
            "SYMBOLS_DATA_OFFSET": SHMPIPE_SYMBOLS_DATA_OFFSET,
            "SYMBOLS_EXCHANGE_BYTES": SHMPIPE_SYMBOLS_EXCHANGE_BYTES,
            "SYMBOLS_SYMBOL_BYTES": SHMPIPE_SYMBOLS_SYMBOL_BYTES, "SYMBOLS_PATH_BYTES": SHMPIPE_SYMBOLS_PATH_BYTES,
            "SYMBOLS_LOCK": SHMPIPE_SYMBOLS_LOCK, "DECIMALS_UNKNOWN": SHMPIPE_DECIMALS_UNKNOWN,
            "JOURNAL_MAGIC": SHMPIPE_JOURNAL_MAGIC, "JOURNAL_LAYOUT_VERSION": SHMPIPE_JOURNAL_LAYOUT_VERSION,
            "JOURNAL_DATA_OFFSET": SHMPIPE_JOURNAL_DATA_OFFSET, "JOURNAL_LOCK": SHMPIPE_JOURNAL_LOCK,
        },
    }
