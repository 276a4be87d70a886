# Cython view of _layout.h: the ring header and record structs (offsets come from the C compiler).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "_layout.h" nogil:
    const unsigned long long SHMPIPE_MAGIC
    const unsigned long long SHMPIPE_SLOT_STATE_MASK
    enum:
        SHMPIPE_LAYOUT_VERSION
        SHMPIPE_BLOCK
        SHMPIPE_MAX_CONSUMERS
        SHMPIPE_DTYPE_DESCR_BYTES
        SHMPIPE_DATA_OFFSET
        SHMPIPE_WAIT_SPIN
        SHMPIPE_WAIT_YIELD
        SHMPIPE_WAIT_BLOCK
        SHMPIPE_FLAG_BROADCAST
        SHMPIPE_FLAG_LOSSY
        SHMPIPE_SLOT_FREE
        SHMPIPE_SLOT_ACTIVE
        SHMPIPE_SLOT_EVICTED
        SHMPIPE_SLOT_CLAIMING
        SHMPIPE_SLOT_GENERATION_SHIFT
        SHMPIPE_LOCK_PRODUCER
        SHMPIPE_LOCK_CONSUMER0
        SHMPIPE_LOCK_ATTACHED

    ctypedef struct shmpipe_config:
        uint64_t magic
        uint32_t layout_version
        uint32_t flags
        uint64_t capacity
        uint32_t itemsize
        uint32_t wait_strategy
        uint64_t dtype_fingerprint
        uint64_t data_offset
        uint64_t segment_bytes
        uint64_t created_unix_ns
        uint32_t creator_pid
        uint32_t max_consumers
        uint64_t consumer_timeout_ns

    ctypedef struct shmpipe_producer_cursor:
        uint64_t write_pos
        uint64_t claim_pos

    ctypedef struct shmpipe_producer_info:
        uint32_t pid
        uint32_t attach_count
        uint64_t start_ticks
        uint64_t heartbeat_ns
        uint64_t attached_unix_ns
        uint64_t full_waits
        uint64_t evictions

    ctypedef struct shmpipe_doorbell:
        uint32_t seq
        uint32_t waiters

    ctypedef struct shmpipe_membership:
        uint64_t joins

    ctypedef struct shmpipe_consumer_slot:
        uint64_t read_pos
        uint64_t state_word
        uint32_t pid
        uint64_t start_ticks
        uint64_t heartbeat_ns
        uint64_t lost
        uint64_t attached_unix_ns

    ctypedef struct shmpipe_header:
        shmpipe_config config
        char dtype_descr[1024]
        shmpipe_producer_cursor producer
        shmpipe_producer_info producer_info
        shmpipe_doorbell data_ready
        shmpipe_doorbell space_ready
        shmpipe_membership membership
        shmpipe_consumer_slot consumers[32]

    ctypedef struct shmpipe_tick:
        pass
    ctypedef struct shmpipe_level_update:
        pass
    ctypedef struct shmpipe_orderbook_entry:
        pass
    ctypedef struct shmpipe_asset:
        pass

    const unsigned long long SHMPIPE_SYMBOLS_MAGIC
    const unsigned long long SHMPIPE_JOURNAL_MAGIC
    enum:
        SHMPIPE_SYMBOLS_LAYOUT_VERSION
        SHMPIPE_SYMBOLS_DATA_OFFSET
        SHMPIPE_SYMBOLS_EXCHANGE_BYTES
        SHMPIPE_SYMBOLS_SYMBOL_BYTES
        SHMPIPE_SYMBOLS_PATH_BYTES
        SHMPIPE_SYMBOLS_LOCK
        SHMPIPE_DECIMALS_UNKNOWN
        SHMPIPE_JOURNAL_LAYOUT_VERSION
        SHMPIPE_JOURNAL_DATA_OFFSET
        SHMPIPE_JOURNAL_LOCK

    ctypedef struct shmpipe_symbols_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t entry_size
        uint32_t capacity
        uint64_t count
        uint64_t persisted_bytes
        uint64_t created_unix_ns
        uint32_t path_len
        char path[1]

    ctypedef struct shmpipe_symbol_entry:
        uint8_t price_decimals
        uint8_t size_decimals
        uint16_t depth
        uint64_t registered_unix_ns
        char exchange[1]
        char symbol[1]

    ctypedef struct shmpipe_journal_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t itemsize
        uint64_t dtype_fingerprint
        uint32_t symbol_id
        uint32_t day
        uint64_t capacity
        uint64_t created_unix_ns
        uint32_t writer_pid
        uint32_t closed
        uint64_t committed
