"""await consumer.read_async(): the event loop keeps running while consumers wait."""
import asyncio
import multiprocessing as mp
import time

import pytest

import shmpipe
from shmpipe.records import TICK
from ring_workers import check_ticks, make_ticks, produce

SPAWN = mp.get_context("spawn")


async def _ticker(stop):
    ticks = 0
    while not stop.is_set():
        await asyncio.sleep(0.001)
        ticks += 1
    return ticks


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_read_async_waits_without_blocking_the_loop(ring_name, wait):
    total = 200_000
    with shmpipe.Ring.create(ring_name, TICK, 1024, wait=wait) as ring, ring.consumer() as consumer:
        async def main():
            stop = asyncio.Event()
            ticker = asyncio.create_task(_ticker(stop))
            empty = await consumer.read_async(16, timeout=0.1)      # nothing yet: times out
            assert len(empty) == 0
            producer = SPAWN.Process(target=produce, args=(ring_name, total, 500))
            producer.start()
            pos = 0
            while pos < total:
                got = await consumer.read_async(4096, timeout=30)
                assert len(got), "read_async timed out with a live producer"
                check_ticks(got, pos)
                pos += len(got)
            assert pos == total
            producer.join(30)
            stop.set()
            return await ticker
        started = time.monotonic()
        ticks = asyncio.run(main())
        # The 1 ms ticker ran throughout: the loop was never blocked for long. A blocked loop ticks
        # ~never while a read waits; a loaded 2-core machine still gives it one tick per 50 ms.
        assert ticks >= (time.monotonic() - started) * 1000 * 0.02
    ring.unlink()


def test_many_broadcast_consumers_awaited_at_once(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 256, broadcast=True, wait="block") as ring, \
            ring.producer() as producer:
        consumers = [ring.consumer() for _ in range(5)]

        async def main():
            waits = [asyncio.create_task(c.read_async(100, timeout=10)) for c in consumers]
            await asyncio.sleep(0.05)
            assert not any(w.done() for w in waits)      # all parked, none returned empty-handed
            producer.write_batch(make_ticks(0, 7))
            results = await asyncio.wait_for(asyncio.gather(*waits), 5)
            for got in results:
                check_ticks(got, 0, 7)

        asyncio.run(main())
        for c in consumers:
            c.close()
    ring.unlink()


def test_read_async_rejects_negative_timeout(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.consumer() as consumer:
        with pytest.raises(ValueError):
            asyncio.run(consumer.read_async(1, timeout=-1))
    ring.unlink()
