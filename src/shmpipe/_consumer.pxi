# Included by _ring.pyx. A reader with its own cursor: joining, read, peek/commit.
#
# read: load-acquire write_pos (only when the cached copy, write_seen, cannot fill the call) ->
# copy at most one lap -> store-release read_pos. SPSC and lossless broadcast never touch claim_pos.
# Lossy broadcast: claim_pos is loaded before the copy to skip what is already lapped (write_pos
# is re-read after it only when claim - capacity has passed write_seen), and after the copy an
# acquire fence and a re-check of claim_pos drop and count whatever may have been overwritten.
# Lossless broadcast: the producer overwrites nothing a live member has not read, so the only
# way a copy can be overwritten is that we were evicted during it: after the copy an acquire
# fence and a look at our own slot's state catch that, and the copy is thrown away.

cdef class Consumer(_Side):
    """A reader with its own cursor (a slot in the header). Made by Ring.consumer()."""
    cdef uint64_t read_pos
    cdef uint64_t write_seen       # cached producer position
    cdef uint64_t shown            # records the last peek() showed and commit() has not taken
    cdef uint32_t slot_index
    cdef uint64_t generation       # broadcast: this join's generation of the slot
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
        self.own_bell = &h.data_ready
        if not self.broadcast:
            if ring.consumer_roles & 1 or not ring._take_role(SHMPIPE_LOCK_CONSUMER0):
                raise RoleTakenError(
                    f"ring {ring.name!r} already has a live consumer (pid {h.consumers[0].pid}); "
                    f"an SPSC ring takes one reader (create it with broadcast=True for more)")
            found = 0
            # The only sleeper on data_ready of an SPSC ring is its one consumer, which we now
            # are: a count left raised by one killed asleep would cost every write a syscall.
            shm_store_relaxed_u32(&h.data_ready.waiters, 0)
            self._fill_identity(&h.consumers[0], pid, start_ticks)
            self.generation = (shm_load_acquire_u64(&h.consumers[0].state_word)
                               >> SHMPIPE_SLOT_GENERATION_SHIFT) + 1
            # SPSC keeps its cursor across consumer restarts: nothing published is skipped.
            shm_store_release_u64(&h.consumers[0].state_word, _slot_word(self.generation, SHMPIPE_SLOT_ACTIVE))
        else:
            for i in range(ring.max_consumers):
                if not ring.consumer_roles & (1ull << i) and ring._take_role(SHMPIPE_LOCK_CONSUMER0 + i):
                    found = i
                    break
            if found < 0:
                raise RoleTakenError(f"ring {ring.name!r} has all {ring.max_consumers} consumer "
                                     f"slots held by live consumers")
            self._join(&h.consumers[found], pid, start_ticks, start == "oldest")
        ring.consumer_roles |= (1ull << found)
        self.slot_index = found
        self.mine = &h.consumers[found]
        self.read_pos = shm_load_acquire_u64(&self.mine.read_pos)
        self.write_seen = shm_load_acquire_u64(&h.producer.write_pos)
        self.closed = False
        return self

    cdef void _fill_identity(self, shmpipe_consumer_slot *s, uint32_t pid, uint64_t start_ticks):
        s.pid = pid
        s.start_ticks = start_ticks
        s.attached_unix_ns = shm_realtime_ns()
        # Before the slot can be seen as joining: a newcomer is never judged silent.
        shm_store_relaxed_u64(&s.heartbeat_ns, shm_monotonic_ns())

    cdef void _join(self, shmpipe_consumer_slot *s, uint32_t pid, uint64_t start_ticks, bint oldest):
        """Take a broadcast slot (its lock is already ours) and pick a start the producer will
        not overwrite: see the Dekker pairing at the top of _producer.pxi."""
        cdef shmpipe_header *h = self.hdr
        cdef uint64_t w, claim, front, start
        self.generation = (shm_load_acquire_u64(&s.state_word) >> SHMPIPE_SLOT_GENERATION_SHIFT) + 1
        # A provisional position no later than any start we can pick: while we choose, a
        # producer that sees our slot holds back behind it.
        w = shm_load_acquire_u64(&h.producer.write_pos)
        shm_store_release_u64(&s.read_pos, w - self.capacity if w > self.capacity else 0)
        shm_store_relaxed_u64(&s.lost, 0)
        self._fill_identity(s, pid, start_ticks)
        # A plain store, not a CAS: whatever an evictor wrote into this slot before we took its
        # lock is overwritten, and the new generation fails any evictor that looked earlier.
        shm_store_release_u64(&s.state_word, _slot_word(self.generation, SHMPIPE_SLOT_CLAIMING))
        shm_fetch_add_u64(&h.membership.joins, 1)
        shm_fence_seq_cst()
        claim = shm_load_acquire_u64(&h.producer.claim_pos)
        w = shm_load_acquire_u64(&h.producer.write_pos)
        if oldest:
            front = claim if claim > w else w
            start = front - self.capacity if front > self.capacity else 0
            if start > w:
                start = w
        else:
            start = w
        shm_store_release_u64(&s.read_pos, start)
        shm_store_release_u64(&s.state_word, _slot_word(self.generation, SHMPIPE_SLOT_ACTIVE))
        if self.blocking:
            _wake(&h.space_ready)   # a producer may be waiting on our provisional position

    cdef void _release_role(self):
        self.lost_here = shm_load_relaxed_u64(&self.mine.lost)
        if self.broadcast:
            shm_store_release_u64(&self.mine.state_word, _slot_word(self.generation, SHMPIPE_SLOT_FREE))
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
        """Records this cursor missed (lossy overruns, or records overwritten under an evicted reader)."""
        return self.lost_here if self.closed or self.ring.closed else shm_load_relaxed_u64(&self.mine.lost)

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
        cdef uint64_t w = shm_load_acquire_u64(&self.hdr.producer.write_pos)
        return w - self.read_pos if w > self.read_pos else 0

    cdef inline uint64_t _unread(self) noexcept nogil:
        """Records between our cursor and the producer's, as last seen; never 'negative'."""
        return self.write_seen - self.read_pos if self.write_seen > self.read_pos else 0

    cdef bint _ready(self) noexcept nogil:
        if self.closing:
            return True
        self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
        if self.write_seen > self.read_pos:
            return True
        shm_touch(self.data + (self.read_pos & self.mask) * self.itemsize)
        return False

    cdef void _on_wait_slice(self) except *:
        self._heartbeat()

    cdef inline void _heartbeat(self) noexcept nogil:
        shm_store_relaxed_u64(&self.mine.heartbeat_ns, shm_coarse_ns())

    cdef inline void _check_slot(self) except *:
        if self.broadcast and _slot_state(shm_load_acquire_u64(&self.mine.state_word)) == SHMPIPE_SLOT_EVICTED:
            raise ConsumerEvictedError(
                f"consumer slot {self.slot_index} of ring {self.ring.name!r} was evicted by the "
                f"producer (dead or silent longer than the consumer timeout); close it and join again")

    cdef uint64_t _available_or_wait(self, uint64_t wanted, double timeout_s) except? 0xffffffffffffffff:
        cdef uint64_t avail = self._unread()
        cdef int64_t deadline
        if avail < wanted:
            # The cached position cannot fill this call: look at the producer's line once.
            self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
            avail = self._unread()
            if avail == 0:
                deadline = _deadline_after(timeout_s)
                if deadline == 0 or not self._wait(&self.hdr.data_ready, deadline):
                    return 0
                avail = self._unread()
        return avail

    cdef void _skip_overwritten(self) noexcept nogil:
        """Lossy: jump over records the producer has claimed (lapped), counting them.
        The cached write_seen is used while the oldest valid position (claim - capacity) is at
        or behind it: the records between are published and the seqlock check after the copy
        drops any overwritten meanwhile. Only when the producer has lapped past the cache is
        write_pos re-read, after claim_pos: the producer stored the write_pos behind a claim
        before that claim (release), so claim - capacity never passes the write_pos read then."""
        cdef uint64_t claim = shm_load_acquire_u64(&self.hdr.producer.claim_pos)
        cdef uint64_t oldest = claim - self.capacity if claim > self.capacity else 0
        if oldest > self.write_seen:
            self.write_seen = shm_load_acquire_u64(&self.hdr.producer.write_pos)
            if oldest > self.write_seen:
                oldest = self.write_seen   # only a corrupt header gets here
        if self.read_pos < oldest:
            shm_store_relaxed_u64(&self.mine.lost, shm_load_relaxed_u64(&self.mine.lost) + oldest - self.read_pos)
            self.read_pos = oldest

    cdef bint _evicted_while_copying(self) noexcept nogil:
        """Lossless broadcast, after a copy: the producer evicts (CAS) before it overwrites, and
        fences before its copy; so if our copy saw any overwritten byte, we see EVICTED here."""
        shm_fence_acquire()
        return _slot_state(shm_load_relaxed_u64(&self.mine.state_word)) == SHMPIPE_SLOT_EVICTED

    cdef uint64_t _dropped_while_copying(self, uint64_t n) noexcept nogil:
        """Lossy seqlock check after a copy of n records from read_pos: how many of them the
        producer may have overwritten meanwhile (those are counted lost, never returned)."""
        cdef uint64_t claim, oldest, dropped
        shm_fence_acquire()
        claim = shm_load_relaxed_u64(&self.hdr.producer.claim_pos)
        oldest = claim - self.capacity if claim > self.capacity else 0
        if self.read_pos >= oldest:
            return 0
        dropped = _min_u64(oldest - self.read_pos, n)
        shm_store_relaxed_u64(&self.mine.lost, shm_load_relaxed_u64(&self.mine.lost) + dropped)
        return dropped

    def read(self, Py_ssize_t max_n=1024, timeout=None, out=None):
        """Copy out up to max_n records (a new numpy array). Waits by the ring's strategy while
        empty; timeout=0 never waits. An empty array means the timeout passed with no data.
        Records shown by peek() and not committed are read again here.

        With out (a 1-d C-contiguous writeable array of the ring's dtype) no record memory is
        allocated: up to min(max_n, len(out)) records are copied into out and a new view of
        out[:n] is returned (numpy's out= convention: the next read into out overwrites what the
        view shows). Each call returns its own view object (~60 ns), so nothing set on one
        (shape, flags, dtype) carries into another, and the consumer keeps no reference to out
        after the call: resizing out between calls is safe. Do not resize it from another
        thread while a read into it is in flight."""
        self._enter()
        try:
            if out is None:
                return self._read(max_n, timeout)
            return self._read_view(max_n, timeout, out)
        finally:
            self._leave()

    cdef object _read_view(self, Py_ssize_t max_n, object timeout, object out):
        cdef cnp.ndarray arr
        cdef uint64_t room, n
        self._check_slot()
        if max_n <= 0:
            raise InvalidArgumentError(f"max_n must be positive, not {max_n}")
        if not cnp.PyArray_Check(out):
            raise InvalidArgumentError(f"read(out=...) takes a numpy array of the ring's dtype, "
                                       f"not {type(out).__name__}")
        arr = <cnp.ndarray>out
        self._check_dtype(<object>cnp.PyArray_DESCR(arr), "an array")
        if cnp.PyArray_NDIM(arr) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISWRITEABLE(arr):
            raise InvalidArgumentError(f"read(out=...) takes a 1-d C-contiguous writeable array, got "
                                       f"shape {out.shape}, contiguous {out.flags.c_contiguous}, "
                                       f"writeable {out.flags.writeable}")
        room = _min_u64(<uint64_t>max_n, <uint64_t>cnp.PyArray_DIM(arr, 0))
        if room == 0:
            raise InvalidArgumentError("read(out=...) needs room for at least one record")
        n = self._read_into_memory(<char *>cnp.PyArray_DATA(arr), room * self.itemsize, timeout)
        return shm_prefix_view(out, self.void_dtype, <cnp.npy_intp>n)

    cdef uint64_t _readable(self, uint64_t max_n, double timeout_s) except? 0xffffffffffffffff:
        """Wait (by the strategy, up to the timeout) for records; how many of at most max_n
        (never more than a lap) a copy may take from read_pos now. 0: the timeout passed."""
        cdef uint64_t avail
        while True:
            avail = self._available_or_wait(max_n, timeout_s)
            if avail == 0:
                if self.broadcast:         # polling an idle ring is a sign of life too
                    self._heartbeat()
                return 0
            if self.lossy:
                self._skip_overwritten()
                avail = self._unread()
                if avail == 0:
                    continue
            return _min_u64(_min_u64(avail, max_n), self.capacity)

    cdef uint64_t _copy_out_nogil(self, char *dst, uint64_t n, bint *evicted) noexcept nogil:
        """Copy n records from read_pos to dst and consume them; returns how many at the front
        of dst the producer may have overwritten meanwhile (lossy: dropped and counted lost).
        Sets *evicted (and consumes nothing) when the copy may hold overwritten bytes."""
        cdef uint64_t first, head, dropped = 0
        first = self.read_pos & self.mask
        head = self.capacity - first
        if head > n:
            head = n
        memcpy(dst, self.data + first * self.itemsize, head * self.itemsize)
        if n > head:
            memcpy(dst + head * self.itemsize, self.data, (n - head) * self.itemsize)
        if self.lossy:
            dropped = self._dropped_while_copying(n)
        elif self.broadcast:
            evicted[0] = self._evicted_while_copying()
        if not evicted[0]:
            self.read_pos += n
            shm_store_release_u64(&self.mine.read_pos, self.read_pos)
            if self.blocking:
                _wake(&self.hdr.space_ready)
            self._heartbeat()
        return dropped

    cdef uint64_t _copy_out(self, char *dst, uint64_t n) except? 0xffffffffffffffff:
        """_copy_out_nogil (with the GIL released for a large copy), raising
        ConsumerEvictedError if evicted."""
        cdef uint64_t dropped
        cdef bint evicted = False
        if n * self.itemsize >= NOGIL_COPY_BYTES:
            with nogil:
                dropped = self._copy_out_nogil(dst, n, &evicted)
        else:   # dropping and retaking the GIL costs more than a small copy
            dropped = self._copy_out_nogil(dst, n, &evicted)
        if evicted:
            self._check_slot()      # raises ConsumerEvictedError
        return dropped

    cdef object _read(self, Py_ssize_t max_n, object timeout):
        self._check_slot()
        if max_n <= 0:
            raise InvalidArgumentError(f"max_n must be positive, not {max_n}")
        cdef double timeout_s = _timeout_seconds(timeout)
        cdef uint64_t n, dropped
        self.shown = 0
        while True:
            n = self._readable(<uint64_t>max_n, timeout_s)
            arr = shm_new_array(self.dtype, self.void_dtype, <cnp.npy_intp>n, NULL)
            if n == 0:
                return arr
            dropped = self._copy_out(<char *>cnp.PyArray_DATA(<cnp.ndarray>arr), n)
            if dropped == 0:
                return arr
            if dropped < n:
                return arr[dropped:]
            # Lapped during the copy: all of it was overwritten. Try again from the oldest.

    def read_into(self, out, timeout=None):
        """Copy up to len(out) records into `out` (a 1-d C-contiguous writeable numpy array of
        the ring's dtype, or any writeable buffer a whole number of records long) and return
        how many: read() without allocating. 0 means the timeout passed with no data."""
        self._enter()
        try:
            return self._read_into(out, timeout)
        finally:
            self._leave()

    cdef uint64_t _read_into(self, object out, object timeout) except? 0xffffffffffffffff:
        cdef Py_buffer view
        cdef cnp.ndarray arr
        self._check_slot()
        if cnp.PyArray_Check(out):
            arr = <cnp.ndarray>out
            self._check_dtype(<object>cnp.PyArray_DESCR(arr), "an array")
            # The common case, a reused record array, skips the buffer protocol (~40 ns a call):
            # numpy refuses to resize an array while the caller holds a reference, so its memory
            # stays put while we wait.
            if cnp.PyArray_CheckExact(out) and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISWRITEABLE(arr):
                return self._read_into_memory(<char *>cnp.PyArray_DATA(arr), <uint64_t>cnp.PyArray_NBYTES(arr),
                                              timeout)
        try:
            PyObject_GetBuffer(out, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        except (TypeError, BufferError, ValueError):
            raise InvalidArgumentError(f"read_into() takes a writeable C-contiguous array or buffer, "
                                       f"not {type(out).__name__}") from None
        try:
            return self._read_into_memory(<char *>view.buf, <uint64_t>view.len, timeout)
        finally:
            PyBuffer_Release(&view)

    cdef uint64_t _read_into_memory(self, char *dst, uint64_t nbytes, object timeout) \
            except? 0xffffffffffffffff:
        cdef uint64_t capacity_of_out, n, dropped
        cdef double timeout_s
        if nbytes % self.itemsize:
            raise InvalidArgumentError(f"ring {self.ring.name!r} holds records of {self.itemsize} bytes; "
                                       f"a buffer of {nbytes} bytes is not a whole number of them")
        capacity_of_out = nbytes // self.itemsize
        if capacity_of_out == 0:
            raise InvalidArgumentError("read_into() needs room for at least one record")
        timeout_s = _timeout_seconds(timeout)
        self.shown = 0
        while True:
            n = self._readable(capacity_of_out, timeout_s)
            if n == 0:
                return 0
            dropped = self._copy_out(dst, n)
            if dropped < n:
                if dropped:
                    memmove(dst, dst + dropped * self.itemsize, (n - dropped) * self.itemsize)
                return n - dropped

    def peek(self, Py_ssize_t max_n=1024, timeout=0):
        """A read-only zero-copy view of up to max_n unread records from this consumer's position
        (up to the wrap point). Calling it again shows the same records; commit(k) consumes the
        first k shown. Not offered on lossy rings, where the producer may overwrite the slots
        under the view."""
        self._enter()
        try:
            return self._peek(max_n, timeout)
        finally:
            self._leave()

    cdef object _peek(self, Py_ssize_t max_n, object timeout):
        self._check_slot()
        if self.lossy:
            raise ShmpipeError(f"ring {self.ring.name!r} is lossy: peek() cannot guard a zero-copy "
                               f"view against overwrite; use read()")
        if max_n <= 0:
            raise InvalidArgumentError(f"max_n must be positive, not {max_n}")
        cdef uint64_t avail = self._available_or_wait(<uint64_t>max_n, _timeout_seconds(timeout))
        cdef uint64_t first = self.read_pos & self.mask
        cdef uint64_t n = _min_u64(_min_u64(avail, <uint64_t>max_n), self.capacity - first)
        self._heartbeat()
        view = shm_new_array(self.dtype, self.void_dtype, <cnp.npy_intp>n, <void *>(self.data + first * self.itemsize))
        cnp.set_array_base(<cnp.ndarray>view, self.ring)   # the mapping outlives the view
        self.shown = n
        return view

    def commit(self, Py_ssize_t n):
        """Consume the first n records the last peek() showed (hand their slots back). On a
        broadcast ring, raises ConsumerEvictedError (and consumes nothing) when this consumer
        was evicted since the peek: the producer may have overwritten the records the view
        showed, so whatever was derived from them must be thrown away."""
        self._enter()
        try:
            if self._evicted_since_peek():
                self.shown = 0
                self._check_slot()      # raises ConsumerEvictedError
            if n < 0 or <uint64_t>n > self.shown:
                raise InvalidArgumentError(f"commit({n}): the last peek() of ring {self.ring.name!r} "
                                           f"showed {self.shown} records not yet committed")
            self.shown -= n
            self.read_pos += n
            shm_store_release_u64(&self.mine.read_pos, self.read_pos)
            if self.blocking:
                _wake(&self.hdr.space_ready)
            self._heartbeat()
        finally:
            self._leave()

    cdef inline bint _evicted_since_peek(self) noexcept nogil:
        """Lossless broadcast, at commit: re-validate what the caller read through the view since
        peek() by the same seqlock check a read's copy gets (_evicted_while_copying): the
        producer evicts (CAS) before it overwrites a member's slots, so if any record the view
        showed was overwritten before the caller's reads of it, the acquire fence here makes the
        EVICTED state visible. SPSC rings never evict; peek() refuses lossy ones."""
        return self.broadcast and not self.lossy and self._evicted_while_copying()

    def read_async(self, Py_ssize_t max_n=1024, timeout=None):
        """Awaitable read(): waits for the next batch without blocking the event loop. One
        helper thread per process sleeps on every awaiting consumer's doorbell at once
        (futex_waitv), so no thread spins per consumer."""
        from .aio import read_async
        return read_async(self, max_n, timeout)
