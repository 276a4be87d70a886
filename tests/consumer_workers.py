"""Child-process bodies for the consumer tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

import numpy as np

import shmpipe
from ring_workers import make_ticks


def produce_in_chunks(name: str, total: int, seed: int) -> None:
    """Write ticks 0..total-1 in chunks of random size, then leave (closing the producer role)."""
    rng = np.random.default_rng(seed)
    with shmpipe.Ring.open(name) as ring, ring.producer() as out:
        written = 0
        while written < total:
            n = int(min(total - written, rng.integers(1, 3000)))
            assert out.write_batch(make_ticks(written, n), timeout=30.0) == n
            written += n
