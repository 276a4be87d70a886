"""Child-process bodies for the .wslog tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

from shmpipe.wslog import WslogWriter

BASE_NS = 1_718_116_200_000_000_000          # 2024-06-11T14:30:00Z


def payload_for(i: int) -> bytes:
    """Entry i's payload: its number, then 0-1999 bytes of a pattern that depends on i."""
    return f"{i:08d}|".encode() + bytes([i % 251]) * (i * 7919 % 2000)


def write_until_killed(directory: str, progress) -> None:
    """Write entries 0, 1, 2, ... forever; after each 2,000 (about 2 MB, several write() calls of
    the writer's 1 MiB buffer) flush and report how many are in the OS's hands."""
    writer = WslogWriter(directory, {1: "coinbase"}, compress=False, flush_interval=0.05,
                         idle_grace=3600)      # 2024 entries, today's clock: keep the one file open
    writer.connect(1, "wss://example.invalid", recv_ns=BASE_NS)
    i = 0
    while True:
        for _ in range(2000):
            writer.write(BASE_NS + 1 + i, 1, payload_for(i))
            i += 1
        writer.flush()
        progress.send(i)
