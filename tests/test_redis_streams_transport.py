"""The bench's Redis Streams transport against the local Redis: records go in through its sender
(one XADD per record, one per batch), come out of its receiver (XREAD) byte for byte, and the
stream is gone afterwards. Needs Redis: skips without it, fails under SHMPIPE_REQUIRE_SERVICES=1."""
import os
import time
import uuid

import pytest
import redis

from shmpipe_bench.transports import redis_streams
from shmpipe_bench.transports.base import RECORD_SIZE, TICK_STRUCT, pack_tick


@pytest.mark.services
def test_records_cross_redis_streams_exactly(redis_url, monkeypatch):
    monkeypatch.setattr(redis_streams, "URL", redis_url)  # the transport reads its URL at call time
    transport = redis_streams.RedisStreamsTransport()
    assert transport.unavailable() is None
    assert "server" in transport.version()
    singles = [pack_tick(1_000 + i, i) for i in range(5)]
    batch = b"".join(pack_tick(2_000 + i, 5 + i) for i in range(64))
    spec = transport.make_channel(f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}")
    server = redis.Redis.from_url(redis_url)
    try:
        tx, rx = transport.sender(spec), transport.receiver(spec)
        try:
            for record in singles:
                tx.send(record)
            tx.send_batch(tx.prepare_batch(batch, 64), 64)
            assert server.xlen(spec["key"]) == 6  # every XADD landed before we read

            got: list[bytes] = []
            deadline = time.monotonic() + 10  # each poll blocks 5 ms at most
            while len(got) < 6 and time.monotonic() < deadline:
                got.extend(rx.poll())
            assert got == singles + [batch]
            assert rx.poll() == []  # nothing beyond what was sent
            assert rx.count(got) == 5 + 64
            assert rx.stamps(got) == [1_000 + i for i in range(5)] + [2_000 + i for i in range(64)]
            sequences = [TICK_STRUCT.unpack_from(blob, off)[-1]
                         for blob in got for off in range(0, len(blob), RECORD_SIZE)]
            assert sequences == list(range(69))
        finally:
            tx.close()
            rx.close()
    finally:
        transport.destroy_channel(spec)
        try:
            assert server.exists(spec["key"]) == 0, "destroy_channel left the stream behind"
        finally:
            server.close()
