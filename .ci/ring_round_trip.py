"""CI: a two-process ring round trip through an installed shmpipe (run it from outside the
checkout): a spawned child writes records of random bytes, one by single write(bytes) and the rest
by write_batch; this process reads them back, compares every byte and the count, then checks that
unlinking removed the segment."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys

import numpy as np

import shmpipe
from shmpipe.records import TICK

COUNT = 50_000
CAPACITY = 1024  # far smaller than COUNT: the stream wraps ~50 times


def records() -> np.ndarray:
    """The same COUNT records of random bytes in both processes (fixed seed)."""
    raw = np.random.default_rng(20261126).integers(0, 256, COUNT * TICK.itemsize, dtype=np.uint8)
    return raw.view(TICK)


def produce(name: str) -> None:
    expected = records()
    with shmpipe.Ring.open(name, TICK) as ring, ring.producer() as producer:
        if not producer.write(expected[0].tobytes()):
            raise SystemExit("write() with no timeout returned False")
        if producer.write_batch(expected[1:]) != COUNT - 1:
            raise SystemExit("write_batch() with no timeout wrote fewer records than given")


def main() -> int:
    name = f"ci-round-trip-{os.getpid()}"
    with shmpipe.Ring.create(name, TICK, CAPACITY) as ring:
        try:
            with ring.consumer() as consumer:
                child = mp.get_context("spawn").Process(target=produce, args=(name,))
                child.start()
                batches, count = [], 0
                while count < COUNT:
                    got = consumer.read(4096, timeout=30)
                    if len(got) == 0:
                        raise SystemExit(f"no record for 30 s after {count}")
                    batches.append(got)
                    count += len(got)
                child.join(30)
                if child.exitcode != 0:
                    raise SystemExit(f"producer exited with {child.exitcode}")
                if len(consumer.read(16, timeout=0)):
                    raise SystemExit("records beyond those written")
        finally:
            ring.unlink()
    if count != COUNT or np.concatenate(batches).tobytes() != records().tobytes():
        raise SystemExit(f"read {count} records; they differ from the {COUNT} written")
    if os.path.exists(f"/dev/shm/shmpipe.{name}"):
        raise SystemExit("unlink() left the segment in /dev/shm")
    print(f"ring round trip: {COUNT:,} records between two processes, every byte equal "
          f"(shmpipe from {os.path.dirname(shmpipe.__file__)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
