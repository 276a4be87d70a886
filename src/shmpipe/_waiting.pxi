# Included by _ring.pyx. What a producer and a consumer share: the geometry bound from the
# validated configuration, the wait loop, the doorbell handshake, and a close() that is safe
# while another thread is inside a call.

cdef inline void _wake(shmpipe_doorbell *bell) noexcept nogil:
    # The seq_cst fence orders our release store of the position before the load of the waiter
    # count; the sleeper does the mirror image, so one of us always sees the other.
    shm_fence_seq_cst()
    if shm_load_relaxed_u32(&bell.waiters) != 0:
        shm_fetch_add_u32(&bell.seq, 1)
        shm_futex_wake_all(&bell.seq)


cdef inline void _ring_unconditionally(shmpipe_doorbell *bell) noexcept nogil:
    """Wake every sleeper on this doorbell (a spurious wake is harmless: each re-checks)."""
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
    cdef object void_dtype          # np.dtype(f"V{itemsize}"), see shm_new_array
    cdef readonly bint closed
    cdef readonly bint waiting      # inside a wait right now (tools and tests can see it)
    cdef bint closing               # close() was called while a call was in flight
    cdef int calls_in_flight        # changed only with the GIL held
    cdef bint at_signal_check       # the call in flight is parked in PyErr_CheckSignals()
    cdef shmpipe_doorbell *own_bell # where this side sleeps
    cdef uint64_t sleeps, woken, timed_out
    cdef object equal_dtype         # last dtype object found equal to ours (see _check_dtype)

    cdef void _bind(self, MappedRing ring, object dtype, int wait_strategy):
        self.ring = ring
        self.hdr = ring.hdr
        self.data = ring.data
        self.capacity = ring.capacity
        self.mask = self.capacity - 1
        self.itemsize = ring.itemsize
        self.wait_strategy = wait_strategy
        self.blocking = ring.wait_strategy == SHMPIPE_WAIT_BLOCK
        self.broadcast = (ring.flags & SHMPIPE_FLAG_BROADCAST) != 0
        self.lossy = (ring.flags & SHMPIPE_FLAG_LOSSY) != 0
        self.dtype = dtype
        self.void_dtype = np.dtype(f"V{self.itemsize}")

    cdef inline void _check(self) except *:
        if self.closed or self.ring.closed:
            self.ring._check()     # the ring's own reason (closed, or inherited across fork())
            raise RingClosedError(f"{type(self).__name__} of ring {self.ring.name!r} is closed")

    cdef inline int _check_dtype(self, object dtype, str what) except -1:
        """Equal dtypes are often distinct objects (Ring.open rebuilds one from the header), and
        comparing structured dtypes costs ~400 ns: remember the last object found equal."""
        if dtype is self.dtype or dtype is self.equal_dtype:
            return 0
        if dtype != self.dtype:
            raise DtypeMismatchError(f"ring {self.ring.name!r} holds {self.dtype}, got {what} of dtype {dtype}")
        self.equal_dtype = dtype
        return 0

    cdef inline void _enter(self) except *:
        """Start a public call: it counts as in flight until _leave(), so close() from another
        thread waits for it instead of freeing a role the call is still using."""
        self._check()
        self.calls_in_flight += 1

    cdef inline void _leave(self) noexcept:
        self.calls_in_flight -= 1

    cdef void _release_role(self):
        pass

    def close(self):
        """Give up this side's role. Safe from another thread: a call blocked in a wait wakes
        and raises RingClosedError, a copy in progress finishes, and only then is the role
        released; nothing touches the header after close() returns."""
        if self.closed:
            return
        if self.calls_in_flight and not self.ring.closed:
            self.closing = True
            _ring_unconditionally(self.own_bell)
            # A call parked at its signal check (where a handler may be the very caller of this
            # close()) looks at `closing` before it touches anything again: no need to wait.
            while self.calls_in_flight and not self.at_signal_check:
                with nogil:
                    usleep(200)
        self.closed = True
        if not self.ring.closed:
            self._release_role()

    @property
    def sleep_stats(self):
        """How this side's doorbell sleeps ended: woken by the peer, or by the sleep cap."""
        return {"sleeps": self.sleeps, "woken": self.woken, "timed_out": self.timed_out}

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
        cdef int r
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
                shm_decrement_saturating_u32(&bell.waiters)
                return 1
            now = shm_monotonic_ns()
            if now >= end:
                shm_decrement_saturating_u32(&bell.waiters)
                return 0
            sleep_ns = end - now
            if sleep_ns > FUTEX_SLEEP_NS:
                sleep_ns = FUTEX_SLEEP_NS
            self.sleeps += 1
            r = shm_futex_wait(&bell.seq, seq, sleep_ns)
            if r == 0 or r == -11:      # woken, or EAGAIN: the doorbell rang before we slept
                self.woken += 1
            else:
                self.timed_out += 1
            shm_decrement_saturating_u32(&bell.waiters)
            if self._ready():
                return 1

    cdef bint _spin_holding_gil(self, int64_t deadline) noexcept:
        """The first GIL_HELD_SPIN_NS of a wait, GIL held (see GIL_HELD_SPIN_NS). True: ready."""
        cdef uint64_t end = shm_monotonic_ns() + GIL_HELD_SPIN_NS
        cdef uint32_t i = 0
        if deadline > 0 and <uint64_t>deadline < end:
            end = <uint64_t>deadline
        while True:
            if self._ready():
                return True
            shm_cpu_relax()
            i += 1
            if (i & 15) == 0 and shm_monotonic_ns() >= end:
                return False

    cdef void _raise_if_closing(self) except *:
        if self.closing or self.ring.closed:
            raise RingClosedError(f"{type(self).__name__} of ring {self.ring.name!r} was "
                                  f"closed while waiting")

    cdef int _wait(self, shmpipe_doorbell *bell, int64_t deadline) except -1:
        """Wait for _ready() until the deadline (-1: forever). 1: ready, 0: timed out, and
        RingClosedError once close() was called: _ready() answers True for a closing side (so a
        sleeper wakes at once), so every "ready" below is checked against `closing` before it is
        believed; a caller that took it for room or data would loop on a ring that has neither.
        The first GIL_HELD_SPIN_NS spin holds the GIL; after it the GIL is released while
        waiting; Ctrl-C raises KeyboardInterrupt within a slice."""
        cdef int r
        self._raise_if_closing()      # close() came during a GIL-free copy of this same call
        if self._spin_holding_gil(deadline):
            self._raise_if_closing()
            return 1
        self.waiting = True
        try:
            while True:
                with nogil:
                    r = self._wait_slice(bell, deadline)
                self._raise_if_closing()
                if r:
                    return 1
                self.at_signal_check = True
                try:
                    PyErr_CheckSignals()
                finally:
                    self.at_signal_check = False
                self._raise_if_closing()    # closed by a signal handler on this very thread
                self._on_wait_slice()
                if deadline >= 0 and <int64_t>shm_monotonic_ns() >= deadline:
                    return 0
        finally:
            self.waiting = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
