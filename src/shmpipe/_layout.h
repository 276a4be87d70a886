/* Everything that must agree across processes, in one place (after Agrona's RingBufferDescriptor):
 * the record structs that records.py mirrors as numpy dtypes, and the ring header.
 * Nobody else computes an offset. tests/test_records.py and tests/test_layout.py compare both sides.
 *
 * Segment = [header: SHMPIPE_DATA_OFFSET bytes][capacity * itemsize bytes of records].
 * The header holds offsets and counters only, never pointers: each process maps it elsewhere. */
#ifndef SHMPIPE_LAYOUT_H
#define SHMPIPE_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define SHMPIPE_PACKED __attribute__((packed))

/* ---------------------------------------------------------------- records (little-endian) */
typedef struct SHMPIPE_PACKED {
    uint64_t timestamp_ns;   /* exchange event time, ns since epoch */
    uint32_t symbol_id;      /* dense id from the symbol registry */
    float bid;
    float ask;
    float volume;
    uint8_t source;          /* 1 TrueFX .. 7 synthetic */
    uint8_t flags;           /* bit0 trade, bit1 quote, bit2 replayed, bit3 gap-before */
    uint16_t spread_bps;     /* 0.1 bp units, saturating */
    uint32_t sequence;       /* per-source, for gap detection */
} shmpipe_tick;

/* LevelUpdate, layout version 2: f64 size (8-decimal quantities), a checksum action, no sequence. */
typedef struct SHMPIPE_PACKED {
    uint64_t timestamp_ns;
    double price;            /* f64: f32 cannot hold BTC prices exactly; action 4: the checksum */
    double size;             /* f64: 8-decimal quantities exactly; 0 = delete */
    uint32_t symbol_id;
    uint8_t side;            /* 0 bid, 1 ask */
    uint8_t action;          /* 0 set, 1 snapshot-begin, 2 snapshot-end, 3 trade, 4 checksum, 5 invalidate */
    uint8_t source;
    uint8_t flags;           /* bit3 gap-before, as Tick's; bit4 last record of one venue message */
} shmpipe_level_update;
#define SHMPIPE_LEVEL_FLAG_GAP_BEFORE 8
#define SHMPIPE_LEVEL_FLAG_LAST 16
#define SHMPIPE_ACTION_INVALIDATE 5      /* capture can no longer vouch for this symbol's book */

/* OrderbookEntry, layout version 2 (DESIGN.md): f64 levels, so an entry gives the venue's numbers
 * back exactly (f32 made a one-cent spread at 97,000 read 0.0156), and the time it was published. */
#define SHMPIPE_ORDERBOOK_ENTRY_LAYOUT_VERSION 2
#define SHMPIPE_ORDERBOOK_DEPTH 50
typedef struct SHMPIPE_PACKED {
    uint64_t timestamp_ns;   /* exchange time of the last update applied */
    uint32_t symbol_id;
    uint32_t exchange_id;    /* the same codes as Tick.source */
    uint32_t sequence;       /* per symbol, from 1 */
    uint8_t flags;           /* SHMPIPE_BOOK_FLAG_* */
    uint8_t bid_count;       /* levels filled in bids[] (the rest are 0) */
    uint8_t ask_count;
    uint8_t padding0;
    uint64_t published_ns;   /* CLOCK_REALTIME when the order book wrote it */
    double bids[SHMPIPE_ORDERBOOK_DEPTH][2];  /* (price, size), best first, unused levels 0 */
    double asks[SHMPIPE_ORDERBOOK_DEPTH][2];
    uint8_t padding[32];     /* 1632 -> 1664 bytes: 26 whole cache lines */
} shmpipe_orderbook_entry;

/* OrderbookEntry.flags. INVALID: do not trade on this book. The other bits say why; crossed,
 * checksum failed, gap and stale stay set until the next complete snapshot. */
#define SHMPIPE_BOOK_FLAG_INVALID 1
#define SHMPIPE_BOOK_FLAG_CROSSED 2
#define SHMPIPE_BOOK_FLAG_CHECKSUM_FAILED 4
#define SHMPIPE_BOOK_FLAG_GAP 8
#define SHMPIPE_BOOK_FLAG_STALE 16       /* invalidated by capture: disconnect or silence */
#define SHMPIPE_BOOK_FLAG_UNVERIFIED 32  /* the venue sends checksums, this book could not be checked */

typedef struct SHMPIPE_PACKED {
    uint8_t id[16];          /* raw UUID bytes */
    char symbol[16];         /* NUL-padded UTF-8, cut only at a character boundary */
    char name[64];
    char exchange[16];
    char asset_class[16];
    uint64_t updated_ns;
    float maintenance_margin_requirement;
    float margin_requirement_long;
    float margin_requirement_short;
    uint8_t status;          /* 0 inactive, 1 active */
    uint8_t flags;           /* tradable, marginable, shortable, easy_to_borrow, fractionable */
    uint8_t truncated;       /* which string fields were cut to fit */
    uint8_t padding[1];      /* itemsize a multiple of 8 */
} shmpipe_asset;

_Static_assert(sizeof(shmpipe_tick) == 32, "Tick is 32 bytes");
_Static_assert(sizeof(shmpipe_level_update) == 32, "LevelUpdate is 32 bytes");
_Static_assert(offsetof(shmpipe_level_update, symbol_id) == 24, "LevelUpdate v2: symbol_id @24");
_Static_assert(sizeof(shmpipe_orderbook_entry) == 1664, "OrderbookEntry v2 is 26 cache lines");
_Static_assert(offsetof(shmpipe_orderbook_entry, published_ns) == 24, "OrderbookEntry v2: published_ns @24");
_Static_assert(offsetof(shmpipe_orderbook_entry, bids) == 32, "OrderbookEntry v2: bids @32");
_Static_assert(offsetof(shmpipe_orderbook_entry, asks) == 832, "OrderbookEntry v2: asks @832");
_Static_assert(sizeof(shmpipe_asset) % 8 == 0, "Asset itemsize is a multiple of 8");

/* ---------------------------------------------------------------- ring header */
#define SHMPIPE_MAGIC 0x31676e6952706d53ull   /* "SmpRing1" read as little-endian bytes */
#define SHMPIPE_LAYOUT_VERSION 2u   /* 2: slot state carries a generation; the membership block */
/* 128-byte blocks: a 64-byte line plus its pair, which the adjacent-line prefetcher drags along. */
#define SHMPIPE_BLOCK 128
#define SHMPIPE_MAX_CONSUMERS 32
#define SHMPIPE_DTYPE_DESCR_BYTES 1024
#define SHMPIPE_DATA_OFFSET 8192   /* page-aligned start of the records */

enum { SHMPIPE_WAIT_SPIN = 0, SHMPIPE_WAIT_YIELD = 1, SHMPIPE_WAIT_BLOCK = 2 };
enum { SHMPIPE_FLAG_BROADCAST = 1, SHMPIPE_FLAG_LOSSY = 2 };
enum { SHMPIPE_SLOT_FREE = 0, SHMPIPE_SLOT_ACTIVE = 1, SHMPIPE_SLOT_EVICTED = 2, SHMPIPE_SLOT_CLAIMING = 3 };
/* A slot's state word: the state in the low 32 bits, the slot's generation (bumped by every
 * join) in the high 32, so an evictor's compare-and-swap fails on a slot reused since it looked. */
#define SHMPIPE_SLOT_STATE_MASK 0xffffffffull
#define SHMPIPE_SLOT_GENERATION_SHIFT 32

/* Byte offsets in the segment file used as fcntl OFD record locks (never data): the kernel drops
 * them when the holder dies, even by kill -9, so liveness survives pid reuse. */
#define SHMPIPE_LOCK_PRODUCER 0
#define SHMPIPE_LOCK_CONSUMER0 1          /* + slot index */
#define SHMPIPE_LOCK_ATTACHED 64          /* shared lock held by every open handle */

typedef struct {                          /* written once by the creator, read-only after */
    uint64_t magic;                       /* stored last, with release: a half-made header reads 0 */
    uint32_t layout_version;
    uint32_t flags;                       /* SHMPIPE_FLAG_* */
    uint64_t capacity;                    /* records; a power of two */
    uint32_t itemsize;
    uint32_t wait_strategy;               /* SHMPIPE_WAIT_*, the default for both sides */
    uint64_t dtype_fingerprint;           /* first 8 bytes of blake2b(dtype_descr) */
    uint64_t data_offset;
    uint64_t segment_bytes;
    uint64_t created_unix_ns;
    uint32_t creator_pid;
    uint32_t max_consumers;
    uint64_t consumer_timeout_ns;         /* broadcast: a silent consumer is evicted after this */
    uint8_t pad[SHMPIPE_BLOCK - 80];
} shmpipe_config;

typedef struct {                          /* hot, written by the producer only */
    uint64_t write_pos;                   /* records published; store-release after the copy */
    uint64_t claim_pos;                   /* broadcast: records being written, never decreasing;
                                             readers re-check it after a copy (seqlock) */
    uint8_t pad[SHMPIPE_BLOCK - 16];
} shmpipe_producer_cursor;

typedef struct {                          /* cold: who the producer is, for people and tools */
    uint32_t pid;
    uint32_t attach_count;                /* how many times a producer attached (restarts) */
    uint64_t start_ticks;                 /* /proc/<pid>/stat start time, tells pid reuse apart */
    uint64_t heartbeat_ns;                /* CLOCK_MONOTONIC */
    uint64_t attached_unix_ns;
    uint64_t full_waits;                  /* times the producer found the ring full */
    uint64_t evictions;                   /* broadcast consumers evicted */
    uint8_t pad[SHMPIPE_BLOCK - 48];
} shmpipe_producer_info;

typedef struct {                          /* a sleeper's doorbell, on its own block */
    uint32_t seq;                         /* futex word: bumped by the side that makes progress */
    uint32_t waiters;                     /* sleepers announced; the waker skips the syscall at 0 */
    uint8_t pad[SHMPIPE_BLOCK - 8];
} shmpipe_doorbell;

typedef struct {                          /* broadcast joins, read by the producer on every publish */
    uint64_t joins;                       /* bumped by each joiner once its slot shows CLAIMING */
    uint8_t pad[SHMPIPE_BLOCK - 8];
} shmpipe_membership;

typedef struct {                          /* one consumer's cursor and identity, one block each */
    uint64_t read_pos;                    /* next record to read; store-release after the copy */
    uint64_t state_word;                  /* SHMPIPE_SLOT_* | generation << 32 */
    uint32_t pid;
    uint32_t reserved;
    uint64_t start_ticks;
    uint64_t heartbeat_ns;                /* CLOCK_MONOTONIC */
    uint64_t lost;                        /* records this cursor missed (lossy overrun, eviction) */
    uint64_t attached_unix_ns;
    uint8_t pad[SHMPIPE_BLOCK - 56];
} shmpipe_consumer_slot;

typedef struct {
    shmpipe_config config;
    char dtype_descr[SHMPIPE_DTYPE_DESCR_BYTES];   /* numpy descr text: open() rebuilds the dtype */
    shmpipe_producer_cursor producer;
    shmpipe_producer_info producer_info;
    shmpipe_doorbell data_ready;          /* consumers sleep here when empty */
    shmpipe_doorbell space_ready;         /* the producer sleeps here when full */
    shmpipe_membership membership;
    shmpipe_consumer_slot consumers[SHMPIPE_MAX_CONSUMERS];
} shmpipe_header;

_Static_assert(sizeof(shmpipe_config) == SHMPIPE_BLOCK, "config is one block");
_Static_assert(offsetof(shmpipe_header, producer) % SHMPIPE_BLOCK == 0, "write index on its own block");
_Static_assert(offsetof(shmpipe_header, consumers) % SHMPIPE_BLOCK == 0, "read indices on their own blocks");
_Static_assert(sizeof(shmpipe_consumer_slot) == SHMPIPE_BLOCK, "one block per consumer");
_Static_assert(offsetof(shmpipe_header, membership) % SHMPIPE_BLOCK == 0, "joins on their own block");
_Static_assert(sizeof(shmpipe_header) <= SHMPIPE_DATA_OFFSET, "header fits before the records");

/* ---------------------------------------------------------------- symbol registry
 * /dev/shm/shmpipe-symbols.<name> = [header: SHMPIPE_SYMBOLS_DATA_OFFSET bytes][capacity entries].
 * Appenders hold an fcntl OFD lock on byte SHMPIPE_SYMBOLS_LOCK of the segment; readers take no lock:
 * an appender fills entry[count] and only then store-releases count, readers load-acquire count and
 * read entries below it. Published entries never change, except the facts word (a 32-bit release
 * store that fills in facts that were unknown), so any reader sees whole facts. symbols.py.
 * Version 2: entry 0 stays zeroed and means "no symbol" (what a zeroed record's symbol_id holds), so
 * ids start at 1 and a count above 0 includes entry 0. Version 1 (same bytes, ids from 0) is still read. */
#define SHMPIPE_SYMBOLS_MAGIC 0x31626d7953706d53ull   /* "SmpSymb1" read as little-endian bytes */
#define SHMPIPE_SYMBOLS_LAYOUT_VERSION 2u
#define SHMPIPE_SYMBOLS_DATA_OFFSET 4096
#define SHMPIPE_SYMBOLS_EXCHANGE_BYTES 32
#define SHMPIPE_SYMBOLS_SYMBOL_BYTES 80
#define SHMPIPE_SYMBOLS_PATH_BYTES 3968
#define SHMPIPE_SYMBOLS_LOCK 0                  /* the appenders' lock byte */
#define SHMPIPE_DECIMALS_UNKNOWN 255

typedef struct {
    uint64_t magic;                       /* stored last, with release: a half-made table reads 0 */
    uint32_t layout_version;
    uint32_t entry_size;
    uint32_t capacity;                    /* entries the segment has room for */
    uint32_t reserved;
    uint64_t count;                       /* entries published; store-release after the entry */
    uint64_t persisted_bytes;             /* bytes of the file the table reflects (appenders only) */
    uint64_t created_unix_ns;
    uint32_t path_len;
    uint8_t pad[128 - 52];
    char path[SHMPIPE_SYMBOLS_PATH_BYTES];    /* the file every process of this registry persists to */
} shmpipe_symbols_header;

typedef struct {
    /* The facts: one aligned 32-bit word, stored at once (decimals 255 = not known yet). */
    uint8_t price_decimals;               /* as the exchange writes prices */
    uint8_t size_decimals;
    uint16_t depth;                       /* book depth the exchange maintains; 0 = none */
    uint32_t reserved;
    uint64_t registered_unix_ns;
    char exchange[SHMPIPE_SYMBOLS_EXCHANGE_BYTES];   /* UTF-8, NUL-padded, no NUL inside */
    char symbol[SHMPIPE_SYMBOLS_SYMBOL_BYTES];
} shmpipe_symbol_entry;

_Static_assert(sizeof(shmpipe_symbols_header) == SHMPIPE_SYMBOLS_DATA_OFFSET, "registry header is one page");
_Static_assert(offsetof(shmpipe_symbols_header, count) % 8 == 0, "count is an aligned word");
_Static_assert(sizeof(shmpipe_symbol_entry) == 128, "a registry entry is two cache lines");
_Static_assert(offsetof(shmpipe_symbol_entry, price_decimals) == 0, "the facts word is aligned");

/* ---------------------------------------------------------------- tick journal
 * <dir>/<YYYYMMDD>/<symbol_id>.ticks = [header: SHMPIPE_JOURNAL_DATA_OFFSET bytes][Ticks].
 * The writer copies ticks past `committed`, then store-releases `committed`; a reader
 * load-acquires it and trusts only that many records. journal.py. */
#define SHMPIPE_JOURNAL_MAGIC 0x316e726a54706d53ull   /* "SmpTjrn1" read as little-endian bytes */
#define SHMPIPE_JOURNAL_LAYOUT_VERSION 1u
#define SHMPIPE_JOURNAL_DATA_OFFSET 4096      /* page-aligned records: numpy.memmap(offset=4096) */
#define SHMPIPE_JOURNAL_LOCK 0                /* the writer's lock byte: one writer per file */

typedef struct {
    uint64_t magic;                       /* stored last, with release, when the file is made */
    uint32_t layout_version;
    uint32_t itemsize;                    /* 32: a Tick */
    uint64_t dtype_fingerprint;           /* of records.TICK, as rings record it */
    uint32_t symbol_id;
    uint32_t day;                         /* UTC day as YYYYMMDD */
    uint64_t capacity;                    /* records the file has room for now */
    uint64_t created_unix_ns;
    uint32_t writer_pid;                  /* the last writer, for people */
    uint32_t closed;                      /* 1 once closed cleanly; 0 while written (or killed) */
    uint8_t pad[128 - 56];
    uint64_t committed;                   /* own block: records complete; store-release after them */
    uint8_t pad2[SHMPIPE_JOURNAL_DATA_OFFSET - 136];
} shmpipe_journal_header;

_Static_assert(sizeof(shmpipe_journal_header) == SHMPIPE_JOURNAL_DATA_OFFSET, "journal header is one page");
_Static_assert(offsetof(shmpipe_journal_header, committed) == 128, "committed on its own block");

#endif
