# Included by _ring.pyx. One thread sleeping on many consumers' doorbells at once (futex_waitv),
# which is how aio.py serves every awaiting consumer of a process.

cdef class WakeWord:
    """A process-private futex word: bumping it wakes a wait_any() sleeper early."""
    cdef uint32_t word

    def snapshot(self):
        """The word's value now: pass it to wait_any() so a wake() after this call, even one
        before wait_any() starts, ends that wait at once instead of being lost."""
        return shm_load_acquire_u32(&self.word)

    def wake(self):
        shm_fetch_add_u32(&self.word, 1)
        shm_futex_wake_private(&self.word)


def wait_any(list consumers, WakeWord interrupt, double timeout, interrupt_seq=None):
    """Sleep until any consumer has a record, interrupt.wake() is called (after interrupt_seq was
    taken with interrupt.snapshot(), or after this call started), or timeout seconds pass;
    return the indices of the consumers that have records.

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
        words[n].val = shm_load_acquire_u32(&interrupt.word) if interrupt_seq is None else <uint32_t>interrupt_seq
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
            shm_decrement_saturating_u32(&c.hdr.data_ready.waiters)
        return [i for i in range(n) if (<Consumer>checked[i])._ready()]
    finally:
        PyMem_Free(words)
