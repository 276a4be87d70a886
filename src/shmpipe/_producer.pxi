# Included by _ring.pyx. The single writer: room, publishing, broadcast claims and eviction.
#
# SPSC: copy -> store-release write_pos. The room check uses a cached read position and re-reads
# the consumer's only when the cache says full.
# Broadcast adds claim_pos, stored with release (whoever sees a claim sees the write_pos published
# before it) and never decreasing, before the slots are overwritten:
#   lossy:    claim, release fence, copy. Readers re-check claim after their copy (seqlock).
#   lossless: claim, seq_cst fence, load membership.joins. A joiner does the mirror image (show
#             its slot, bump joins, seq_cst fence, load claim): either we see the join and count
#             the newcomer before we overwrite anything, or it sees our claim and starts past it.

cdef class Producer(_Side):
    """The single writer of a ring. Made by Ring.producer(); holds the producer role until closed."""
    cdef uint64_t write_pos          # private copy; the shared one is published with release
    cdef uint64_t claimed            # broadcast: the highest claim_pos stored (never decreases)
    cdef uint64_t read_limit         # cached slowest consumer position
    cdef uint64_t joins_seen         # broadcast: membership.joins as of the last full scan
    cdef uint64_t members            # broadcast: bit i = slot i was joining or active at the last look
    cdef uint64_t pending            # records the current wait needs room for
    cdef uint64_t last_eviction_check_ns
    cdef uint32_t writes_since_heartbeat

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
        self.own_bell = &h.space_ready
        # Only the producer sleeps on space_ready and we now hold that role alone: a count left
        # raised by a predecessor killed asleep would cost every read a needless wake syscall.
        shm_store_relaxed_u32(&h.space_ready.waiters, 0)
        h.producer_info.pid = pid
        h.producer_info.start_ticks = start_ticks
        h.producer_info.attach_count += 1
        h.producer_info.attached_unix_ns = shm_realtime_ns()
        shm_store_relaxed_u64(&h.producer_info.heartbeat_ns, shm_monotonic_ns())
        # A restarted producer carries on the sequence. claim_pos never moves backwards: slots a
        # predecessor killed mid-copy had claimed stay claimed, so lagging readers keep dropping
        # them (counted in lost) instead of taking them as whole records.
        self.write_pos = shm_load_acquire_u64(&h.producer.write_pos)
        self.claimed = shm_load_acquire_u64(&h.producer.claim_pos)
        if self.claimed < self.write_pos:
            self.claimed = self.write_pos
        shm_store_release_u64(&h.producer.claim_pos, self.claimed)
        self._refresh_limit()
        self.closed = False
        return self

    cdef void _release_role(self):
        self.ring.holds_producer = False
        self.ring._drop_role(SHMPIPE_LOCK_PRODUCER)

    @property
    def consumer_alive(self):
        """True while any consumer holds one of this ring's consumer slots."""
        self._check()
        cdef uint32_t i
        for i in range(self.ring.max_consumers):
            if self.ring.consumer_alive(i):
                return True
        return False

    @property
    def position(self):
        """Records written so far over the ring's life (the next record's sequence number)."""
        return self.write_pos

    # -- room ----------------------------------------------------------------------------------
    cdef void _refresh_limit(self) noexcept nogil:
        """Re-read the slowest consumer's position (broadcast: every slot that is joining or
        active). Every join bumps membership.joins after it shows its slot, so while joins is
        unchanged only the slots already known to be members are looked at (a bitmap, not all
        max_consumers slots); when it moved, every slot is, and joins is read first, so a join
        after it is noticed by the next publish."""
        cdef uint64_t lowest, pos, word, joins, left, bit
        cdef uint32_t i, state
        if not self.broadcast:
            self.read_limit = shm_load_acquire_u64(&self.hdr.consumers[0].read_pos)
            return
        joins = shm_load_acquire_u64(&self.hdr.membership.joins)
        if joins != self.joins_seen:
            self.joins_seen = joins
            self.members = (1ull << self.ring.max_consumers) - 1 if self.ring.max_consumers < 64 else ~0ull
        lowest = self.write_pos
        left = self.members
        while left:
            i = <uint32_t>__builtin_ctzll(left)
            bit = 1ull << i
            left &= ~bit
            word = shm_load_acquire_u64(&self.hdr.consumers[i].state_word)
            state = _slot_state(word)
            if state == SHMPIPE_SLOT_ACTIVE or state == SHMPIPE_SLOT_CLAIMING:
                pos = shm_load_acquire_u64(&self.hdr.consumers[i].read_pos)
                if pos < lowest:
                    lowest = pos
            else:
                self.members &= ~bit      # left, or evicted: back only through a join
        # No consumer at all: nothing to protect, the records go nowhere (as a PUB socket).
        self.read_limit = lowest

    cdef inline uint64_t _free_slots(self) noexcept nogil:
        """Slots free behind the slowest consumer, never more than the ring holds: a cursor more
        than a lap behind means none; one ahead of us (corrupt) is taken as caught up."""
        cdef uint64_t used = self.write_pos - self.read_limit
        if <int64_t>used < 0:
            return self.capacity
        if used >= self.capacity:
            return 0
        return self.capacity - used

    cdef bint _ready(self) noexcept nogil:
        if self.closing:
            return True
        self._refresh_limit()
        return self._free_slots() >= self.pending

    cdef void _on_wait_slice(self) except *:
        shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_monotonic_ns())
        if self.broadcast:
            self._evict_stale_consumers()

    cdef int _make_room(self, uint64_t n, int64_t deadline) except -1:
        """1 when n more records fit now, 0 when the deadline passed first."""
        cdef uint64_t now
        self._refresh_limit()
        if self._free_slots() >= n:
            return 1
        if self.broadcast:
            # A dead or silent consumer is evicted here too, not only inside a wait, so that
            # write(timeout=0) does not stay refused forever; lock probes are syscalls, hence the cap.
            now = shm_monotonic_ns()
            if now - self.last_eviction_check_ns >= EVICTION_CHECK_NS:
                self.last_eviction_check_ns = now
                self._evict_stale_consumers()
                self._refresh_limit()
                if self._free_slots() >= n:
                    return 1
        shm_store_relaxed_u64(&self.hdr.producer_info.full_waits,
                              shm_load_relaxed_u64(&self.hdr.producer_info.full_waits) + 1)
        if deadline == 0:
            return 0
        self.pending = n
        return self._wait(&self.hdr.space_ready, deadline)

    # -- broadcast membership --------------------------------------------------------------------
    cdef void _evict_stale_consumers(self) except *:
        """A lossless producer must not wait forever on a consumer that died (also while it was
        joining) or that is alive but silent longer than the consumer timeout."""
        cdef uint32_t i, state
        cdef shmpipe_consumer_slot *s
        cdef uint64_t now = shm_monotonic_ns()
        cdef uint64_t timeout_ns = self.ring.consumer_timeout_ns
        cdef uint64_t beat, word
        cdef bint dead, silent
        for i in range(self.ring.max_consumers):
            s = &self.hdr.consumers[i]
            word = shm_load_acquire_u64(&s.state_word)
            state = _slot_state(word)
            if state != SHMPIPE_SLOT_ACTIVE and state != SHMPIPE_SLOT_CLAIMING:
                continue
            beat = shm_load_relaxed_u64(&s.heartbeat_ns)
            dead = not self.ring.consumer_alive(i)
            silent = (state == SHMPIPE_SLOT_ACTIVE and timeout_ns > 0 and now > beat
                      and now - beat > timeout_ns)
            if (dead or silent) and self._cas_evict(i, word):
                shm_store_relaxed_u64(&self.hdr.producer_info.evictions,
                                      shm_load_relaxed_u64(&self.hdr.producer_info.evictions) + 1)

    cdef bint _cas_evict(self, uint32_t slot, uint64_t observed) noexcept nogil:
        """Evict only the very consumer we judged: the generation in the word changes with every
        join, so a newcomer that took the slot since we looked is spared."""
        cdef uint64_t evicted = (observed & ~SHMPIPE_SLOT_STATE_MASK) | SHMPIPE_SLOT_EVICTED
        return shm_cas_u64(&self.hdr.consumers[slot].state_word, observed, evicted)

    def _evict_if_unchanged(self, uint32_t slot, uint64_t observed):
        """Evict consumer slot `slot` if its state word still reads `observed` (for tests)."""
        self._check()
        if slot >= self.ring.max_consumers:
            raise InvalidArgumentError(f"ring {self.ring.name!r} has {self.ring.max_consumers} consumer slots")
        return self._cas_evict(slot, observed)

    cdef uint64_t _claim(self, uint64_t n) noexcept nogil:
        """Broadcast: announce the slots about to be overwritten; returns how many of the n
        records may go now (fewer only when a lossless ring just gained a consumer)."""
        cdef uint64_t end = self.write_pos + n
        cdef uint64_t joins, room
        if end > self.claimed:
            self.claimed = end
            shm_store_release_u64(&self.hdr.producer.claim_pos, end)
        if self.lossy:
            shm_fence_release()     # the claim is visible before any record store that follows
            return n
        shm_fence_seq_cst()         # Dekker with joiners (see the top of this file)
        joins = shm_load_acquire_u64(&self.hdr.membership.joins)
        if joins != self.joins_seen:
            self._refresh_limit()
            room = self._free_slots()
            if n > room:
                n = room
        return n

    # -- publishing ------------------------------------------------------------------------------
    cdef inline void _copy_in(self, const char *src, uint64_t n) noexcept nogil:
        """Copy n (<= capacity) records to the slots from write_pos on, in at most two memcpy."""
        cdef uint64_t first = self.write_pos & self.mask
        cdef uint64_t head = self.capacity - first
        if head > n:
            head = n
        memcpy(self.data + first * self.itemsize, src, head * self.itemsize)
        if n > head:
            memcpy(self.data, src + head * self.itemsize, (n - head) * self.itemsize)

    cdef inline void _publish(self, const char *src, uint64_t n) noexcept nogil:
        self._copy_in(src, n)
        self.write_pos += n
        shm_store_release_u64(&self.hdr.producer.write_pos, self.write_pos)
        if self.blocking:
            _wake(&self.hdr.data_ready)

    cdef const char *_record_pointer(self, object record, Py_buffer *view, bint *got_view) except NULL:
        """Address of one record's bytes, checked for size and (for numpy scalars) dtype."""
        cdef cnp.PyArray_Descr *descr
        if PyBytes_CheckExact(record):
            if <size_t>PyBytes_GET_SIZE(record) != self.itemsize:
                raise InvalidArgumentError(f"ring {self.ring.name!r} takes records of {self.itemsize} bytes, "
                                           f"got bytes of length {PyBytes_GET_SIZE(record)}")
            return PyBytes_AS_STRING(record)
        if isinstance(record, _VOID_SCALAR):
            descr = (<PyVoidScalarObject *>record).descr
            self._check_dtype(<object>descr, "a record")
            return (<PyVoidScalarObject *>record).obval
        if cnp.PyArray_Check(record):
            self._check_dtype(<object>cnp.PyArray_DESCR(<cnp.ndarray>record), "an array")
            if cnp.PyArray_SIZE(<cnp.ndarray>record) != 1:
                raise InvalidArgumentError(f"write() takes one record; use write_batch() for {record.size}")
            # One element is contiguous whatever its strides; the array cannot be resized under
            # us while we wait for room (numpy refuses while the caller holds a reference).
            return <const char *>cnp.PyArray_DATA(<cnp.ndarray>record)
        try:
            PyObject_GetBuffer(record, view, PyBUF_SIMPLE)
        except TypeError:
            raise InvalidArgumentError(f"write() takes a numpy record or bytes, not {type(record).__name__}") from None
        got_view[0] = True
        if <size_t>view.len != self.itemsize:
            got_view[0] = False
            PyBuffer_Release(view)
            raise InvalidArgumentError(f"ring {self.ring.name!r} takes records of {self.itemsize} bytes, "
                                       f"got {view.len} bytes")
        return <const char *>view.buf

    def write(self, record, timeout=None):
        """Write one record: a numpy structured scalar of the ring's dtype, or bytes of exactly
        itemsize. Waits for room by the ring's strategy; timeout=0 never waits. Returns False
        if the ring stayed full until the timeout."""
        self._enter()
        try:
            return self._write_one(record, timeout)
        finally:
            self._leave()

    cdef object _write_one(self, object record, object timeout):
        cdef Py_buffer view
        cdef bint got_view = False
        cdef double timeout_s = _timeout_seconds(timeout)
        cdef int64_t deadline = -2       # computed when the ring is first found full
        cdef const char *src = self._record_pointer(record, &view, &got_view)
        try:
            while True:
                if not self.lossy and self._free_slots() == 0:
                    if deadline == -2:
                        deadline = _deadline_after(timeout_s)
                    if not self._make_room(1, deadline):
                        return False
                if self.broadcast and self._claim(1) == 0:
                    continue          # a consumer joined and took the room: wait for it
                self._publish(src, 1)
                break
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
        self._enter()
        try:
            return self._write_many(array, timeout)
        finally:
            self._leave()

    cdef uint64_t _write_many(self, object array, object timeout) except? 0xffffffffffffffff:
        if not cnp.PyArray_Check(array):
            raise InvalidArgumentError(f"write_batch() takes a numpy array, not {type(array).__name__}")
        cdef cnp.ndarray arr = <cnp.ndarray>array
        self._check_dtype(<object>cnp.PyArray_DESCR(arr), "an array")
        if arr.ndim != 1:
            raise InvalidArgumentError(f"write_batch() takes a 1-d array, got shape {array.shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            arr = np.ascontiguousarray(arr)
        return self._write_from(<const char *>cnp.PyArray_DATA(arr), arr.shape[0], _timeout_seconds(timeout))

    cdef uint64_t _write_from(self, const char *src, uint64_t total, double timeout_s) \
            except? 0xffffffffffffffff:
        """Write total records from src, waiting for room up to timeout_s; returns how many went in."""
        cdef int64_t deadline = -2       # computed when the ring is first found full
        cdef uint64_t done = 0, chunk, room
        while done < total:
            chunk = total - done
            if self.lossy:
                if chunk > self.capacity:
                    chunk = self.capacity
            else:
                room = self._free_slots()
                if room == 0:
                    if deadline == -2:
                        deadline = _deadline_after(timeout_s)
                    if not self._make_room(1, deadline):
                        break
                    room = self._free_slots()
                    if room == 0:
                        continue      # never publish an empty chunk: wait again (or time out)
                if chunk > room:
                    chunk = room
            if self.broadcast:
                chunk = self._claim(chunk)
                if chunk == 0:
                    continue          # a consumer joined and took the room: wait for it
            if chunk * self.itemsize >= NOGIL_COPY_BYTES:
                with nogil:
                    self._publish(src + done * self.itemsize, chunk)
            else:   # dropping and retaking the GIL costs more than a small copy
                self._publish(src + done * self.itemsize, chunk)
            done += chunk
        shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_coarse_ns())
        return done

    cdef uint64_t _write_now(self, const char *src, uint64_t total) noexcept nogil:
        """Write as many of total records from src as fit now, never waiting (the C-level API)."""
        cdef uint64_t done = 0, chunk, room
        while done < total:
            chunk = total - done
            if self.lossy:
                if chunk > self.capacity:
                    chunk = self.capacity
            else:
                room = self._free_slots()
                if room < chunk:
                    self._refresh_limit()
                    room = self._free_slots()
                    if room == 0:
                        break
                if chunk > room:
                    chunk = room
            if self.broadcast:
                chunk = self._claim(chunk)
                if chunk == 0:
                    break             # a consumer joined and took the room: the caller tries again
            self._publish(src + done * self.itemsize, chunk)
            done += chunk
        self.writes_since_heartbeat += <uint32_t>done
        if self.writes_since_heartbeat >= HEARTBEAT_EVERY_WRITES:
            self.writes_since_heartbeat = 0
            shm_store_relaxed_u64(&self.hdr.producer_info.heartbeat_ns, shm_coarse_ns())
        return done
