"""shmpipe's own SPSC ring and its lossless broadcast ring."""
from __future__ import annotations

from typing import Any, Sequence

from .base import Receiver, Sender, Transport

# 8192 Ticks (256 KiB): small against the 100k+ messages of a throughput run, so the figure is the
# steady state with the consumer keeping up, not a burst the ring absorbs (a 64k ring held most of
# a run and reported ~11M/s single-record where the steady state is ~2M/s on this machine).
CAPACITY = 1 << 13
READ_MAX = 4096  # records one poll() takes at most, as before (read(4096))


class _Tx(Sender):
    def __init__(self, ring: Any, tick: Any) -> None:
        import numpy as np

        self._np, self._tick = np, tick
        self.ring = ring
        self.p = ring.producer()
        # send() is exactly one library call (write() without a timeout waits for room, so it
        # never returns False): bound directly, as a user would call it, without a Python frame.
        self.send = self.p.write
        self._write_batch = self.p.write_batch

    def prepare_batch(self, blob: bytes, n: int) -> Any:
        return self._np.frombuffer(blob, dtype=self._tick, count=n).copy()

    def send_batch(self, arr: Any, n: int) -> None:
        done = self._write_batch(arr)
        while done < n:  # a partial batch write: push the rest
            done += self._write_batch(arr[done:])

    def close(self) -> None:
        for obj in (self.p, self.ring):
            try:
                obj.close()
            except Exception:
                pass


class _Rx(Receiver):
    def __init__(self, ring: Any, broadcast: bool, tick: Any) -> None:
        import functools

        import numpy as np

        self.ring = ring
        self.c = ring.consumer(start="oldest") if broadcast else ring.consumer()
        # The zero-allocation read path: every poll() reads into one preallocated buffer and
        # returns the view of its filled part (read(out=...) keeps one view per count), so a poll
        # allocates nothing. A poll's result is valid until the next poll (every scenario uses it
        # before polling again). The ring waits in C (wait="spin") up to the 5 ms timeout: its
        # natural fastest mode. poll is the bound library call itself, no Python frame around it.
        self._buf = np.empty(READ_MAX, dtype=tick)
        self.poll = functools.partial(self.c.read, READ_MAX, 0.005, self._buf)
        self._first = self._buf[:1]

    def first(self, batch: Any) -> Any:
        return self._first  # a poll's result always starts at the start of the buffer

    def stamps(self, batch: Any) -> list[int]:
        return batch["timestamp_ns"].tolist()

    def count(self, batch: Any) -> int:
        return len(batch)

    def close(self) -> None:
        for obj in (self.c, self.ring):
            try:
                obj.close()
            except Exception:
                pass


class ShmpipeTransport(Transport):
    name = "shmpipe"
    receive_mode = "busy-poll (ring wait='spin', read(4096, timeout=5ms, out=reused buffer))"

    # No unavailable() and no broadcast_reason(): shmpipe is the thing measured, so it is never
    # skipped. If it cannot be imported or a broadcast ring cannot be made, every run fails and says
    # why (a skip would turn that bug into a quiet "not measured").

    def version(self) -> str | None:
        try:
            import shmpipe

            return getattr(shmpipe, "__version__", None) or _dist_version("shmpipe")
        except Exception:
            return None

    def make_channel(self, tag: str, consumers: int = 1, max_batch: int = 1, broadcast: bool = False) -> Any:
        import shmpipe
        from shmpipe.records import TICK

        name = f"bench-{tag}"
        kwargs = {"broadcast": True, "policy": "lossless"} if broadcast else {}
        ring = shmpipe.Ring.create(name, TICK, CAPACITY, wait="spin", **kwargs)
        return {"name": name, "ring": ring, "broadcast": broadcast}

    def destroy_channel(self, spec: Any) -> None:
        ring = spec["ring"]
        try:
            ring.close()
        finally:
            try:
                ring.unlink()
            except FileNotFoundError:
                pass

    def _open(self, spec: Any) -> Any:
        import shmpipe
        from shmpipe.records import TICK

        return shmpipe.Ring.open(spec["name"], TICK)

    def sender(self, spec: Any) -> Sender:
        from shmpipe.records import TICK

        return _Tx(self._open(spec), TICK)

    def receiver(self, spec: Any, index: int = 0) -> Receiver:
        from shmpipe.records import TICK

        return _Rx(self._open(spec), spec["broadcast"], TICK)


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
