"""Capture (issue 11): exchange frames in, Ticks and LevelUpdates out.

Modules, one job each:
    coinbase, kraken, alpaca   one parser per venue: a raw text frame -> records (typed msgspec decoding)
    feed_parser                what every venue parser shares: errors, gaps, instruments, the record batch
    record_batch               packed Tick / LevelUpdate records accumulated as bytes, taken as numpy arrays
    timestamps                 RFC 3339 text -> ns since the epoch, without datetime on the hot path
    symbol_ids                 the injectable (exchange, symbol) -> u32 id callable and its in-memory default
    bad_input                  bad frames counted per kind, the first N logged in full, then rate-limited
    staleness                  a per-channel watchdog for sockets that stay open but go silent
    kraken_checksum            Kraken's CRC32 book checksum (the order book reuses it)
    synthetic                  a seeded, vectorised random-walk feed for load tests and demos
    feed_server                ``shmpipe feed-server``: plays recorded frames to websocket clients
"""
