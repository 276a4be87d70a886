"""Bridges between shmpipe rings and Redis Streams, so a pipeline can cross hosts.

``to_redis.RingToRedis`` reads a ring and XADDs batches of records; ``from_redis.RedisToRing``
reads a consumer group and writes the records into a local ring. Together they deliver every
record exactly once, in order, across kill -9 of either side and restarts of Redis.

How exactly-once holds (the one idea behind both sides): records are numbered, per stream, by a
contiguous sequence (``seq``) that the sender assigns and stores in each entry.

* Sender: it takes records from the ring with ``peek()`` and ``commit()``s them only after the
  XADDs holding them returned, so a crash re-shows records Redis may already have. Each entry
  also carries the ring position it covers up to (``pos``) and the ring's identity, so the last
  entry of the stream *is* the checkpoint, written atomically with the XADD (one command; no
  second key, so nothing crosses Redis Cluster slots). On start and after every reconnect the
  sender reads the last entry back and skips what it covers.
* Receiver: it XACKs only after records are in the ring. The local ring's own write position
  (published atomically by the ring) tells how many records it holds since the bridge started
  filling it; a small state file, written once before the first record goes in, ties that
  position to a ``seq``. So the highest ``seq`` already in the ring is known after any crash,
  and replayed entries (XAUTOCLAIM of the pending list) are trimmed of what is already there.

A hole in the numbering (Redis trimmed entries no reader had read, a broadcast ring overwrote
records while the sender was down, Redis lost acknowledged writes) is an error naming the
missing range, or, with ``allow_gap``, a counted and logged skip. Numbering only moves forward,
across a lost stream too (a new epoch names the one it goes on from, and where its numbering
starts), so a seq a receiver may have seen never names another record; ``stream_keys`` holds
the stream's owner (one source ring per stream) and record type beside it.
"""
