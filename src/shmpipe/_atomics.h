/* The only place in shmpipe that names __atomic_* builtins, futexes or the CPU's pause hint.
 *
 * Every shared index is read with acquire and written with release: the release store of a
 * position publishes the records (or frees the slots) before it, whatever the CPU's own model.
 * seq_cst fences appear only in the sleep/wake handshake, where a store must be ordered before a
 * later load (a Dekker pattern that acquire/release alone does not give). */
#ifndef SHMPIPE_ATOMICS_H
#define SHMPIPE_ATOMICS_H

#include <stdint.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>

static inline uint64_t shm_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t shm_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void shm_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void shm_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t shm_fetch_add_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }

static inline void shm_store_relaxed_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t shm_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t shm_load_relaxed_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void shm_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t shm_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
/* Never below zero: a count reset by a new owner (a sleeper killed by kill -9 left it raised)
 * must not wrap when a sleeper from before the reset leaves. */
static inline void shm_decrement_saturating_u32(uint32_t *p) {
    uint32_t seen = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (seen != 0 && !__atomic_compare_exchange_n(p, &seen, seen - 1, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {}
}
static inline int shm_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline void shm_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* Lossy broadcast's seqlock: the claim store must be ordered before the record stores that follow
 * (release fence after it), and the reader's record loads before its re-check of the claim
 * (acquire fence before it). */
static inline void shm_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void shm_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

/* A load whose value nobody uses, kept by the compiler: a reader that waits for write_pos also
 * asks for the line of the record it will read next, so when the producer writes both, the two
 * misses overlap instead of following each other. Racing with the producer's copy is harmless:
 * the value is thrown away, and the real copy comes after the acquire load of write_pos. */
static inline void shm_touch(const void *p) {
    __asm__ __volatile__("" :: "r"(*(const volatile unsigned char *)p) : "memory");
}

/* Tell the core we are spinning: saves power and frees the sibling hyperthread. */
static inline void shm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static inline uint64_t shm_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Heartbeats need only millisecond truth; the coarse clock is a plain memory read. */
static inline uint64_t shm_coarse_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t shm_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Shared (not FUTEX_PRIVATE) so the kernel keys the wait on the page, not on our address space:
 * the peer in another process maps the same word at another address. */
static inline int shm_futex_wait(uint32_t *word, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
    ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
    /* 0: woken; -EAGAIN: the word had already changed (the wake came first); -ETIMEDOUT; -EINTR */
    return syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0) == 0 ? 0 : -errno;
}

static inline int shm_futex_wake_all(uint32_t *word) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

static inline void shm_sched_yield(void) { sched_yield(); }

/* futex_waitv (Linux 5.16+): one thread sleeps on many doorbells at once, which is how a single
 * asyncio helper thread serves every awaiting consumer. Declared here, not taken from
 * <linux/futex.h>, whose spelling of these names changed across kernel header versions. */
struct shm_waitv { uint64_t val; uint64_t uaddr; uint32_t flags; uint32_t reserved; };
#define SHM_FUTEX2_SIZE_U32 0x02u
#define SHM_FUTEX2_PRIVATE 128u
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449   /* the same number on x86-64 and the generic table (arm64) */
#endif

/* >= 0: index of a woken word; -ETIMEDOUT, -EAGAIN (a word already changed), -ENOSYS, ... */
static inline int shm_futex_waitv(struct shm_waitv *words, unsigned int n, uint64_t timeout_ns) {
    struct timespec ts;
    uint64_t deadline;
    long r;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    deadline = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + timeout_ns;
    ts.tv_sec = (time_t)(deadline / 1000000000ull);
    ts.tv_nsec = (long)(deadline % 1000000000ull);
    r = syscall(SYS_futex_waitv, words, n, 0, &ts, CLOCK_MONOTONIC);
    return r >= 0 ? (int)r : -errno;
}

static inline int shm_futex_wake_private(uint32_t *word) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

#endif
