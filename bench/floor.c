/* The physical floors the ring's figures are compared with, three modes:
 *
 *   floor CORE_A CORE_B ITERATIONS WARMUP              latency: one cache line ping-pong
 *   floor throughput CORE_A CORE_B RECORDS BATCH CAPACITY RECORD_SIZE
 *                                                       a two-process C SPSC ring
 *   floor memcpy BYTES REPEATS                          this core's memcpy bandwidth
 *
 * Latency:
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

static int throughput(int argc, char **argv);
static int memcpy_bandwidth(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "throughput") == 0) return throughput(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "memcpy") == 0) return memcpy_bandwidth(argc, argv);
    if (argc != 5) {
        fprintf(stderr, "usage: %s CORE_A CORE_B ITERATIONS WARMUP | throughput CORE_A CORE_B RECORDS BATCH "
                        "CAPACITY RECORD_SIZE | memcpy BYTES REPEATS\n", argv[0]);
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

/* Throughput: the best a two-process SPSC ring of fixed-size records can do here, written the way
 * the shmpipe ring is (the same segment layout idea): a power-of-two array of RECORD_SIZE slots in a
 * MAP_SHARED mapping; the producer's write index and the consumer's read index on their own 128-byte
 * lines; each side keeps a private copy of the other's index and reloads it (acquire) only when that
 * copy says full / empty; records are copied in with memcpy and published with one release store per
 * batch of BATCH records, and copied out up to READ_MAX (default 4096, what the bench's receivers ask
 * for) per read with one release store of the read index. The producer stamps each record's first
 * 8 bytes with its sequence and the consumer checks every record's, so nothing is skipped or torn.
 * Prints records/s from the consumer's first to last record (after WARMUP = RECORDS/10). */
struct spsc {
    _Alignas(128) uint64_t write_pos;
    _Alignas(128) uint64_t read_pos;
    _Alignas(128) volatile int child_pinned;
    _Alignas(128) unsigned char slots[];
};

static int throughput(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s throughput CORE_A CORE_B RECORDS BATCH CAPACITY RECORD_SIZE [READ_MAX]\n",
                argv[0]);
        return 2;
    }
    int core_a = atoi(argv[2]), core_b = atoi(argv[3]);
    uint64_t records = strtoull(argv[4], NULL, 10);
    uint64_t batch = strtoull(argv[5], NULL, 10), capacity = strtoull(argv[6], NULL, 10);
    size_t size = (size_t)strtoull(argv[7], NULL, 10);
    uint64_t read_max = argc == 9 ? strtoull(argv[8], NULL, 10) : 4096;
    if (records == 0 || batch == 0 || capacity == 0 || (capacity & (capacity - 1)) || batch > capacity
        || size < 8 || size % 8 || read_max == 0) {
        fprintf(stderr, "throughput: RECORDS, BATCH >= 1, CAPACITY a power of two >= BATCH, RECORD_SIZE a "
                        "multiple of 8\n");
        return 2;
    }
    uint64_t mask = capacity - 1;
    struct spsc *r = mmap(NULL, sizeof *r + capacity * size, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) { perror("mmap"); return 1; }
    /* the producer's records / the consumer's array */
    unsigned char *local = calloc(batch > read_max ? batch : read_max, size);
    if (!local) { perror("calloc"); return 1; }
    uint64_t warmup = records / 10;

    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child == 0) {   /* consumer */
        r->child_pinned = pin(core_b) ? 1 : -1;
        uint64_t pos = 0, limit = 0, t_first = 0, bad = 0;
        while (pos < records) {
            if (pos == limit) {
                limit = __atomic_load_n(&r->write_pos, __ATOMIC_ACQUIRE);
                if (pos == limit) continue;
            }
            uint64_t n = limit - pos;
            if (n > read_max) n = read_max;
            uint64_t first = pos & mask, run = n;
            if (first + run > capacity) run = capacity - first;
            memcpy(local, r->slots + first * size, run * size);
            if (run < n) memcpy(local + run * size, r->slots, (n - run) * size);
            for (uint64_t i = 0; i < n; i++) {
                uint64_t seq;
                memcpy(&seq, local + i * size, 8);
                bad += seq != pos + i;
            }
            pos += n;
            __atomic_store_n(&r->read_pos, pos, __ATOMIC_RELEASE);
            if (t_first == 0 && pos > warmup) t_first = now_ns();
        }
        uint64_t t_end = now_ns();
        /* the child reports through its exit status and the shared page */
        memcpy(r->slots, &t_first, 8);
        memcpy(r->slots + 8, &t_end, 8);
        memcpy(r->slots + 16, &bad, 8);
        _exit(0);
    }
    int parent_pinned = pin(core_a);
    while (r->child_pinned == 0) { }
    uint64_t pos = 0, cached_read = 0;
    while (pos < records) {
        uint64_t n = records - pos;
        if (n > batch) n = batch;
        while (pos + n - cached_read > capacity) cached_read = __atomic_load_n(&r->read_pos, __ATOMIC_ACQUIRE);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t seq = pos + i;
            memcpy(local + i * size, &seq, 8);
        }
        uint64_t first = pos & mask, run = n;
        if (first + run > capacity) run = capacity - first;
        memcpy(r->slots + first * size, local, run * size);
        if (run < n) memcpy(r->slots, local + run * size, (n - run) * size);
        pos += n;
        __atomic_store_n(&r->write_pos, pos, __ATOMIC_RELEASE);
    }
    int status = 0;
    waitpid(child, &status, 0);
    uint64_t t_first, t_end, bad;
    memcpy(&t_first, r->slots, 8);
    memcpy(&t_end, r->slots + 8, 8);
    memcpy(&bad, r->slots + 16, 8);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || bad) {
        fprintf(stderr, "throughput: the consumer failed (status %d, %llu records out of sequence)\n",
                status, (unsigned long long)bad);
        return 1;
    }
    uint64_t timed = records - warmup;
    printf("{\"records\": %llu, \"timed_records\": %llu, \"batch\": %llu, \"capacity\": %llu, "
           "\"record_size\": %zu, \"read_max\": %llu, \"elapsed_ns\": %llu, \"records_per_s\": %.0f, \"pinned\": %s}\n",
           (unsigned long long)records, (unsigned long long)timed, (unsigned long long)batch,
           (unsigned long long)capacity, size, (unsigned long long)read_max, (unsigned long long)(t_end - t_first),
           timed * 1e9 / (double)(t_end - t_first > 0 ? t_end - t_first : 1),
           (parent_pinned && r->child_pinned == 1) ? "true" : "false");
    return 0;
}

/* memcpy bandwidth of one core: copy a BYTES buffer REPEATS times (after one untimed pass that
 * faults the pages in), report the best pass, in GB/s of bytes copied (read + write = 2x traffic). */
static int memcpy_bandwidth(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s memcpy BYTES REPEATS\n", argv[0]);
        return 2;
    }
    size_t bytes = (size_t)strtoull(argv[2], NULL, 10);
    long repeats = atol(argv[3]);
    if (bytes == 0 || repeats <= 0) { fprintf(stderr, "memcpy: BYTES and REPEATS >= 1\n"); return 2; }
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b) { perror("malloc"); return 1; }
    memset(a, 1, bytes);
    memcpy(b, a, bytes);
    uint64_t best = UINT64_MAX;
    for (long i = 0; i < repeats; i++) {
        uint64_t t0 = now_ns();
        memcpy(i % 2 ? a : b, i % 2 ? b : a, bytes);
        uint64_t t = now_ns() - t0;
        if (t < best) best = t;
    }
    printf("{\"bytes\": %zu, \"repeats\": %ld, \"best_ns\": %llu, \"gb_per_s\": %.2f, \"check\": %d}\n",
           bytes, repeats, (unsigned long long)best, bytes / (double)best, a[bytes / 2] + b[bytes / 3]);
    return 0;
}
