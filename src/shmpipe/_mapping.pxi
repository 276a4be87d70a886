# Included by _ring.pyx. One process's mapping of a ring: the validated configuration bound
# into C fields, the liveness locks, and what fork() must not hand down.

def segment_in_use(int fd):
    """True while any handle other than fd's own holds the segment open or holds a role."""
    cdef int byte
    if shm_lock_held_elsewhere(fd, SHMPIPE_LOCK_ATTACHED) != 0:
        return True
    for byte in range(SHMPIPE_LOCK_PRODUCER, SHMPIPE_LOCK_CONSUMER0 + SHMPIPE_MAX_CONSUMERS):
        if shm_lock_held_elsewhere(fd, byte) != 0:
            return True
    return False


def hold_attached(int fd):
    """Take the shared "attached" lock every open handle holds, on a segment just shm_open()ed:
    from then on `shmpipe clean` sees it in use, even before its header exists."""
    cdef int err = shm_lock_try(fd, SHMPIPE_LOCK_ATTACHED, 0)
    if err != 0:
        raise RingIOError(err, f"cannot lock a ring segment: {os.strerror(err)}")


def parse_header(bytes raw):
    """The configuration block and dtype text of a header read with pread(), as a dict: open()
    validates this before it maps anything."""
    cdef shmpipe_header h
    memset(&h, 0, sizeof(h))
    memcpy(&h, PyBytes_AS_STRING(raw), _min_u64(<uint64_t>len(raw), sizeof(h)))
    return {
        "magic": h.config.magic,
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


def fence_acquire():
    """An acquire fence: ring.py re-reads a header after it saw the magic, and this orders the
    re-read after that sighting (the creator stamps the magic last, with release)."""
    shm_fence_acquire()


# Every live mapping of this process, so a forked child can disown them all (see below).
_mappings = weakref.WeakSet()
# Segment fds opened and not yet owned by a mapping (segments.py tracks them), closed in a child.
_unmapped_fds = set()
# Held from shm_open() until the fd is tracked, and while a mapping takes an fd over: a fork()
# from another thread waits for it, so no fd of ours reaches a child untracked. Reentrant: a signal
# handler that forks on the thread holding it must not deadlock (that fork is not guarded).
fork_guard = threading.RLock()


def track_unmapped_fd(int fd):
    """Call with fork_guard held, in the same stretch as the shm_open() that returned fd."""
    _unmapped_fds.add(fd)


def untrack_fd(int fd):
    """Call with fork_guard held, before the fd is closed or once a MappedRing owns it."""
    _unmapped_fds.discard(fd)


def _disown_after_fork():
    for mapped in list(_mappings):
        (<MappedRing>mapped)._disown()
    for fd in _unmapped_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _unmapped_fds.clear()


def _after_fork_in_child():
    fork_guard.release()        # taken by the thread that forked, which is this one now
    _disown_after_fork()


# A child of fork() inherits our fds and with them our open file descriptions, which carry the
# OFD locks: it would keep a dead parent's producer "alive" and could write as a second producer.
# The child closes its copies (the parent's locks live on in the parent) and every inherited
# handle raises RingClosedError; the child opens the ring again to take a role of its own.
os.register_at_fork(before=fork_guard.acquire, after_in_parent=fork_guard.release,
                    after_in_child=_after_fork_in_child)


cdef class MappedRing:
    """One process's mapping of a ring segment, and the roles (locks) it holds on it.

    It owns the fd it is given. close() releases the locks and the fd at once, but the memory
    is unmapped only when the last Python object using it (a producer, consumer or peek() view)
    is gone: a stale view reads stale records, never unmapped memory."""
    cdef shmpipe_header *hdr
    cdef char *data
    cdef size_t size
    cdef int fd
    cdef readonly str name
    cdef readonly bint closed
    cdef readonly bint forked            # closed because it was inherited across fork()
    cdef readonly bint holds_producer
    cdef uint64_t consumer_roles         # bit i: this handle holds consumer slot i
    # The validated configuration, bound once (a peer may rewrite the header; we never re-read it).
    cdef readonly uint64_t capacity
    cdef readonly uint32_t itemsize
    cdef readonly uint32_t flags
    cdef readonly uint32_t wait_strategy
    cdef readonly uint32_t max_consumers
    cdef readonly uint64_t consumer_timeout_ns
    cdef object __weakref__

    def __cinit__(self, int fd, str name, uint64_t capacity, uint32_t itemsize, uint32_t flags,
                  uint32_t wait_strategy, uint32_t max_consumers, uint64_t consumer_timeout_ns):
        self.fd = -1
        self.hdr = NULL
        self.closed = True
        if capacity < 2 or capacity & (capacity - 1) or itemsize == 0 \
                or not 1 <= max_consumers <= SHMPIPE_MAX_CONSUMERS:
            raise InvalidArgumentError(f"ring {name!r}: configuration out of range")
        mapped_bytes = SHMPIPE_DATA_OFFSET + capacity * itemsize    # a Python int: cannot overflow
        if mapped_bytes >= (1 << 62):
            raise InvalidArgumentError(f"ring {name!r}: {capacity} x {itemsize} bytes cannot be mapped")
        cdef size_t size = mapped_bytes
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        if p == MAP_FAILED:
            raise RingIOError(f"cannot map ring {name!r} ({size} bytes)")
        self.hdr = <shmpipe_header *>p
        self.data = <char *>p + SHMPIPE_DATA_OFFSET
        self.size = size
        self.capacity = capacity
        self.itemsize = itemsize
        self.flags = flags
        self.wait_strategy = wait_strategy
        self.max_consumers = max_consumers
        self.consumer_timeout_ns = consumer_timeout_ns
        self.fd = fd
        self.name = name
        self.closed = False
        # Every open handle holds a shared lock: `shmpipe clean` removes only unheld segments.
        shm_lock_try(fd, SHMPIPE_LOCK_ATTACHED, 0)
        _mappings.add(self)

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

    cdef void _disown(self):
        """In a forked child: let go of the parent's open file description entirely. Closing the
        fd is not enough, the mapping holds the description (and its locks) too, so the mapping
        is replaced in place by private zero pages: views the child still holds stay readable
        memory, and the child can no longer write into the parent's ring."""
        if self.closed:
            return
        self.close()
        self.forked = True
        if self.hdr != NULL:
            mmap(<void *>self.hdr, self.size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)

    cdef inline void _check(self) except *:
        if self.closed:
            if self.forked:
                raise RingClosedError(f"ring {self.name!r} was opened before fork(); a forked child "
                                      f"must open it again (Ring.open) to use it")
            raise RingClosedError(f"ring {self.name!r} is closed")

    @property
    def mapped_bytes(self):
        return self.size

    # -- header, written once by the creator ---------------------------------------------
    def init_header(self, bytes descr, uint64_t fingerprint, uint32_t creator_pid):
        self._check()
        cdef shmpipe_header *h = self.hdr
        if len(descr) >= SHMPIPE_DTYPE_DESCR_BYTES:
            raise InvalidArgumentError(f"dtype description is {len(descr)} bytes; the header holds "
                                       f"{SHMPIPE_DTYPE_DESCR_BYTES - 1}")
        memset(<void *>h, 0, sizeof(shmpipe_header))
        h.config.layout_version = SHMPIPE_LAYOUT_VERSION
        h.config.flags = self.flags
        h.config.capacity = self.capacity
        h.config.itemsize = self.itemsize
        h.config.wait_strategy = self.wait_strategy
        h.config.dtype_fingerprint = fingerprint
        h.config.data_offset = SHMPIPE_DATA_OFFSET
        h.config.segment_bytes = self.size
        h.config.created_unix_ns = shm_realtime_ns()
        h.config.creator_pid = creator_pid
        h.config.max_consumers = self.max_consumers
        h.config.consumer_timeout_ns = self.consumer_timeout_ns
        memcpy(h.dtype_descr, PyBytes_AS_STRING(descr), len(descr))
        # Last, with release: an opener that sees the magic sees everything above.
        shm_store_release_u64(&h.config.magic, SHMPIPE_MAGIC)

    # -- liveness --------------------------------------------------------------------------
    def producer_alive(self):
        self._check()
        if self.holds_producer:
            return True
        return shm_lock_held_elsewhere(self.fd, SHMPIPE_LOCK_PRODUCER) == 1

    def consumer_alive(self, uint32_t slot):
        self._check()
        if slot >= self.max_consumers:
            raise InvalidArgumentError(f"ring {self.name!r} has {self.max_consumers} consumer slots, not {slot + 1}")
        if self.consumer_roles & (1ull << slot):
            return True
        return shm_lock_held_elsewhere(self.fd, SHMPIPE_LOCK_CONSUMER0 + slot) == 1

    cdef int _take_role(self, long long byte) except -1:
        cdef int err = shm_lock_try(self.fd, byte, 1)
        if err == 0:
            return 1
        if err == 11 or err == 13:   # EAGAIN / EACCES: held elsewhere
            return 0
        raise RingIOError(err, f"cannot lock ring {self.name!r}: {os.strerror(err)}")

    cdef void _drop_role(self, long long byte):
        if not self.closed:
            shm_lock_release(self.fd, byte)

    # -- positions and counters, for stats() and len() ------------------------------------
    def slot_word(self, uint32_t slot):
        """A consumer slot's state word (state | generation << 32), as an evictor reads it."""
        self._check()
        if slot >= self.max_consumers:
            raise InvalidArgumentError(f"ring {self.name!r} has {self.max_consumers} consumer slots")
        return shm_load_acquire_u64(&self.hdr.consumers[slot].state_word)

    def positions(self):
        self._check()
        cdef shmpipe_header *h = self.hdr
        cdef uint32_t i
        cdef uint64_t word
        cdef shmpipe_consumer_slot *s
        slots = []
        for i in range(self.max_consumers):
            s = &h.consumers[i]
            word = shm_load_acquire_u64(&s.state_word)
            slots.append({
                "slot": i,
                "state": SLOT_STATES.get(_slot_state(word), "unknown"),
                "generation": word >> SHMPIPE_SLOT_GENERATION_SHIFT,
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
            "joins": shm_load_acquire_u64(&h.membership.joins),
            "producer": {
                "pid": h.producer_info.pid,
                "start_ticks": h.producer_info.start_ticks,
                "attach_count": h.producer_info.attach_count,
                "heartbeat_ns": shm_load_relaxed_u64(&h.producer_info.heartbeat_ns),
                "attached_unix_ns": h.producer_info.attached_unix_ns,
                "full_waits": shm_load_relaxed_u64(&h.producer_info.full_waits),
                "evictions": shm_load_relaxed_u64(&h.producer_info.evictions),
            },
            "data_ready_waiters": shm_load_relaxed_u32(&h.data_ready.waiters),
            "space_ready_waiters": shm_load_relaxed_u32(&h.space_ready.waiters),
            "consumers": slots,
        }
