# Declarations of the static inline helpers in _atomics.h (the one place naming __atomic_*).
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "_atomics.h" nogil:
    uint64_t shm_load_acquire_u64(const uint64_t *p)
    uint64_t shm_load_relaxed_u64(const uint64_t *p)
    void shm_touch(const void *p)
    void shm_store_release_u64(uint64_t *p, uint64_t v)
    void shm_store_relaxed_u64(uint64_t *p, uint64_t v)
    uint64_t shm_fetch_add_u64(uint64_t *p, uint64_t v)
    uint32_t shm_load_acquire_u32(const uint32_t *p)
    uint32_t shm_load_relaxed_u32(const uint32_t *p)
    void shm_store_release_u32(uint32_t *p, uint32_t v)
    uint32_t shm_fetch_add_u32(uint32_t *p, uint32_t v)
    void shm_store_relaxed_u32(uint32_t *p, uint32_t v)
    void shm_decrement_saturating_u32(uint32_t *p)
    int shm_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
    void shm_fence_seq_cst()
    void shm_fence_release()
    void shm_fence_acquire()
    void shm_cpu_relax()
    uint64_t shm_monotonic_ns()
    uint64_t shm_coarse_ns()
    uint64_t shm_realtime_ns()
    int shm_futex_wait(uint32_t *word, uint32_t expected, uint64_t timeout_ns)
    int shm_futex_wake_all(uint32_t *word)
    void shm_sched_yield()

    struct shm_waitv:
        uint64_t val
        uint64_t uaddr
        uint32_t flags
        uint32_t reserved
    unsigned int SHM_FUTEX2_SIZE_U32
    unsigned int SHM_FUTEX2_PRIVATE
    int shm_futex_waitv(shm_waitv *words, unsigned int n, uint64_t timeout_ns)
    int shm_futex_wake_private(uint32_t *word)
