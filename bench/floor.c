/* The physical floor: ping-pong one cache line between two processes pinned to two cores.
 *
 * fork() + a MAP_SHARED anonymous mapping; "ping" and "pong" each own one 64-byte line, 128 bytes
 * apart (the adjacent-line prefetcher pairs lines). The parent stores seq into ping with release
 * ordering, the child spins (acquire) until it sees it and stores it into pong; the parent spins on
 * pong. Each round trip is timed with clock_gettime(CLOCK_MONOTONIC) (its ~20 ns cost is inside the
 * figure, as it is for every transport). Prints one JSON object with percentiles of RTT/2 in ns.
 *
 * usage: floor CORE_A CORE_B ITERATIONS WARMUP
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
    _Alignas(128) volatile uint64_t ping;
    _Alignas(128) volatile uint64_t pong;
    _Alignas(128) volatile int child_pinned;
};

static int pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) return 0;
    cpu_set_t got;
    CPU_ZERO(&got);
    if (sched_getaffinity(0, sizeof got, &got) != 0) return 0;
    return CPU_COUNT(&got) == 1 && CPU_ISSET(core, &got);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t pct(const uint64_t *v, long n, double p) {
    long i = (long)(p / 100.0 * (double)n + 0.5) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s CORE_A CORE_B ITERATIONS WARMUP\n", argv[0]);
        return 2;
    }
    int core_a = atoi(argv[1]), core_b = atoi(argv[2]);
    long iters = atol(argv[3]), warmup = atol(argv[4]);
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 1; }
    memset((void *)sh, 0, sizeof *sh);
    uint64_t total = (uint64_t)(iters + warmup);

    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child == 0) {
        sh->child_pinned = pin(core_b) ? 1 : -1;
        for (uint64_t seq = 1; seq <= total; seq++) {
            while (__atomic_load_n(&sh->ping, __ATOMIC_ACQUIRE) != seq) { }
            __atomic_store_n(&sh->pong, seq, __ATOMIC_RELEASE);
        }
        _exit(0);
    }
    int parent_pinned = pin(core_a);
    while (__atomic_load_n(&sh->child_pinned, __ATOMIC_ACQUIRE) == 0) { }
    uint64_t *half = malloc(sizeof(uint64_t) * (size_t)(iters > 0 ? iters : 1));
    if (!half) { perror("malloc"); return 1; }
    uint64_t t_begin = 0;
    for (uint64_t seq = 1; seq <= total; seq++) {
        if (seq == (uint64_t)warmup + 1) t_begin = now_ns();
        uint64_t t0 = now_ns();
        __atomic_store_n(&sh->ping, seq, __ATOMIC_RELEASE);
        while (__atomic_load_n(&sh->pong, __ATOMIC_ACQUIRE) != seq) { }
        uint64_t t1 = now_ns();
        if (seq > (uint64_t)warmup) half[seq - warmup - 1] = (t1 - t0) / 2;
    }
    uint64_t t_end = now_ns();
    waitpid(child, NULL, 0);
    qsort(half, (size_t)iters, sizeof *half, cmp_u64);
    printf("{\"iterations\": %ld, \"warmup\": %ld, \"elapsed_ns\": %llu, \"pinned\": %s, "
           "\"p50_ns\": %llu, \"p90_ns\": %llu, \"p99_ns\": %llu, \"p999_ns\": %llu, "
           "\"p9999_ns\": %llu, \"max_ns\": %llu}\n",
           iters, warmup, (unsigned long long)(t_end - t_begin),
           (parent_pinned && sh->child_pinned == 1) ? "true" : "false",
           (unsigned long long)pct(half, iters, 50), (unsigned long long)pct(half, iters, 90),
           (unsigned long long)pct(half, iters, 99), (unsigned long long)pct(half, iters, 99.9),
           (unsigned long long)pct(half, iters, 99.99), (unsigned long long)half[iters - 1]);
    return 0;
}
