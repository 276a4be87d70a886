"""Asset sync pipeline (issue 6): fetch the Alpaca asset list, diff it at the source, ship the delta as
an Asset AoS buffer to the sync service, upsert into PostgreSQL or SQLite, publish what changed on ZeroMQ.

Modules, one job each:
    http_fetch   GET /v2/assets with timeouts and retries (429 / 5xx / network)
    listing      the Alpaca listing rules: parse, validate, encode as Asset records
    canonical    one text per asset value, and the per-field diff
    source_map   the fetcher's view of what the service holds; turns a listing into a delta
    delta_wire   the delta on the wire: the Asset AoS plus a sidecar with the full JSON
    transport    how a delta reaches the service: in-process, or a Unix socket with framed messages
    store        the database side's interface: rows, errors, the typed columns
    store_factory  which backend a --db value names (store_postgres: asyncpg, store_sqlite: sqlite3)
    service      the canonical cache, batched writes with retry, publish-after-commit
    zmq_pubsub   ZeroMQ publisher and subscriber of ``assets.changed``
    features     statistics the subscriber derives from its cache
    reconnect    retry a store operation across a lost connection (service writes, watch features)
    removal_guard  refuse a listing that would mark many assets removed
    watch        the subscriber process: cache, features, feature rows
    cli          ``shmpipe assets sync | serve | watch``
"""
