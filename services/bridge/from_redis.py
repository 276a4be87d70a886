"""Redis -> ring: a consumer-group reader that writes records into a local ring and XACKs only
once they are in it; on start and after a reconnect it claims and replays its pending entries
(XAUTOCLAIM) and drops what the ring already holds (see ring_state)."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

import shmpipe
from shmpipe.dtypes import fingerprint, from_description

from . import connection
from .connection import TRANSIENT, Retrier
from .ring_state import AnchorFile, SeqAnchor, default_state_dir
from .runtime import Runtime
from .wire import (
    BridgeError,
    BridgeInputError,
    GapError,
    RecordTypeMismatchError,
    check_entry,
    decode_entry,
    dtype_key,
    record_type_name,
    ring_identity,
)

PROG = "shmpipe bridge redis-to-ring"


@dataclass
class ReceiverConfig:
    url: str
    stream: str
    group: str
    ring: str
    consumer: str | None = None
    count: int = 64                  # entries per XREADGROUP
    capacity: int = 1 << 16          # when the bridge has to create the ring
    state_dir: Path = field(default_factory=default_state_dir)
    allow_gap: bool = False


class RedisToRing:
    def __init__(self, cfg: ReceiverConfig, runtime: Runtime) -> None:
        self.cfg = cfg
        self.rt = runtime
        self.consumer_name = cfg.consumer or f"{socket.gethostname()}:{cfg.ring}"
        self.anchor: SeqAnchor | None = None
        self._lag_checked = 0.0

    # -- setup -----------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        try:
            # id 0: entries written before the first reader started are delivered too
            self.client.xgroup_create(self.cfg.stream, self.cfg.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise BridgeInputError(f"key {self.cfg.stream!r} holds another Redis type than a stream") from None
            if "BUSYGROUP" not in str(exc):
                raise BridgeError(f"stream {self.cfg.stream!r}: cannot create group {self.cfg.group!r}: {exc}") from None

    def _open_ring(self) -> shmpipe.Ring:
        cfg = self.cfg
        descr = self.client.get(dtype_key(cfg.stream))
        try:
            ring = shmpipe.Ring.open(cfg.ring)
        except shmpipe.RingNotFoundError:
            if descr is None:
                raise BridgeInputError(f"ring {cfg.ring!r} does not exist and stream {cfg.stream!r} names no "
                                       f"record type yet: create the ring, or start ring-to-redis first") from None
            try:
                ring = shmpipe.Ring.create(cfg.ring, from_description(descr.decode()), cfg.capacity)
            except shmpipe.RingExistsError:
                ring = shmpipe.Ring.open(cfg.ring)
        except shmpipe.ShmpipeError as exc:
            raise BridgeInputError(str(exc)) from None
        if descr is not None:
            theirs = from_description(descr.decode())
            if fingerprint(theirs) != fingerprint(ring.dtype):
                ring.close()
                raise RecordTypeMismatchError(
                    f"stream {cfg.stream!r} carries {record_type_name(theirs)} records ({theirs}) but ring "
                    f"{cfg.ring!r} holds {record_type_name(ring.dtype)} records ({ring.dtype}): refusing to "
                    f"write them")
        return ring

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        cfg, rt = self.cfg, self.rt
        self.client = connection.connect(cfg.url)
        self._ensure_group()
        self.ring = self._open_ring()
        try:
            self.producer = self.ring.producer()
        except shmpipe.ShmpipeError as exc:
            self.ring.close()
            raise BridgeError(str(exc)) from None
        self.ring_id = ring_identity(self.ring)
        self.anchors = AnchorFile(cfg.state_dir, cfg.ring)
        self.anchor = self.anchors.load(self.ring_id, cfg.stream)
        retrier = Retrier(cfg.url, lambda exc: rt.retrying(PROG, connection.redact(cfg.url), exc),
                          lambda: rt.recovered(PROG))
        replay_pending = True
        rt.serve_control(lambda: {
            "mode": "redis-to-ring", "ring": cfg.ring, "stream": cfg.stream, "group": cfg.group,
            "consumer": self.consumer_name, "redis": connection.redact(cfg.url)}, PROG)
        try:
            while not rt.stopping():
                if rt.holding():         # entries wait in Redis, delivered to nobody
                    time.sleep(0.02)
                    rt.publish()
                    continue
                try:
                    if replay_pending:
                        self._ensure_group()      # a Redis restarted without persistence lost it
                        self._replay_pending()
                        replay_pending = False
                    self._read_new()
                    self._report_lag()
                    retrier.succeeded()
                except TRANSIENT as exc:
                    retrier.failed(exc, rt.stopping)
                    replay_pending = True   # a reply lost in flight left entries pending, unseen
                rt.publish()
        finally:
            rt.publish(force=True)
            self.producer.close()
            self.ring.close()
            self.client.close()
        return 0

    def _replay_pending(self) -> None:
        """Claim every pending entry of the group (ours from before a crash, or a previous
        consumer name's) and write what the ring lacks, in stream order."""
        start = "0-0"
        while not self.rt.stopping():
            reply = self.client.xautoclaim(self.cfg.stream, self.cfg.group, self.consumer_name, 0, start,
                                           count=self.cfg.count)
            next_start, claimed = reply[0], reply[1]
            # (reply[2], Redis >= 7: pending ids trimmed away meanwhile; the seq check sees the hole)
            if claimed and not self._deliver(claimed):
                return
            if next_start in (b"0-0", "0-0"):
                return
            start = next_start

    def _read_new(self) -> None:
        reply = self.client.xreadgroup(self.cfg.group, self.consumer_name, {self.cfg.stream: ">"},
                                       count=self.cfg.count, block=200)
        for _stream, entries in reply or ():
            self._deliver(entries)

    def _deliver(self, entries) -> bool:
        """Write the entries' records the ring lacks, then XACK them. False when SIGTERM came
        while the ring was full: what is not in the ring stays pending, to be replayed."""
        done_ids = []
        complete = True
        for entry_id, fields in entries:
            if not fields:            # deleted after delivery: the seq check sees the hole
                done_ids.append(entry_id)
                continue
            entry = decode_entry(entry_id, fields, self.cfg.stream)
            check_entry(entry, self.ring.dtype, self.cfg.ring, self.cfg.stream)
            if not self._write(entry):
                complete = False
                break
            done_ids.append(entry_id)
        self.rt.crash_point("after_ring_write")
        if done_ids:
            self.client.xack(self.cfg.stream, self.cfg.group, *done_ids)
        return complete

    def _write(self, entry) -> bool:
        position = self.producer.position
        if self.anchor is not None and self.anchor.epoch != entry.epoch:
            self.rt.warn(PROG, f"stream {self.cfg.stream!r} was started afresh (the sender found it empty; "
                               f"epoch {self.anchor.epoch} -> {entry.epoch}): continuing from its seq {entry.seq}")
            self.anchor = None
        if self.anchor is None:
            self.anchor = SeqAnchor(self.ring_id, self.cfg.stream, entry.epoch, entry.seq, position)
            self.anchors.save(self.anchor)       # before the first record: no record without its seq
        expected = self.anchor.next_seq(position)
        if entry.seq + entry.n <= expected:
            self.rt.add(duplicates_dropped=entry.n)
            return True
        if entry.seq > expected:
            message = (f"stream {self.cfg.stream!r}: records with seq {expected}..{entry.seq - 1} "
                       f"({entry.seq - expected}) are missing before entry {entry.entry_id.decode()} "
                       f"(trimmed by the stream's retention before group {self.cfg.group!r} read them?)")
            if not self.cfg.allow_gap:
                raise GapError(message + "; --allow-gap skips them")
            self.rt.warn(PROG, message + "; skipped (--allow-gap)")
            self.rt.add(gap_records=entry.seq - expected)
            self.anchor = SeqAnchor(self.ring_id, self.cfg.stream, entry.epoch, entry.seq, position)
            self.anchors.save(self.anchor)
            expected = entry.seq
        skip = expected - entry.seq
        records = np.frombuffer(entry.data, dtype=self.ring.dtype)[skip:]
        written = 0
        while written < len(records):
            written += self.producer.write_batch(records[written:], timeout=0.2)
            if written < len(records):
                self.rt.publish()
                if self.rt.stopping():
                    self._count(written, entry, skip)
                    return False
        self._count(written, entry, skip)
        return True

    def _count(self, written: int, entry, skip: int) -> None:
        self.rt.add(records=written, entries=1 if written else 0, bytes=written * self.ring.itemsize,
                    duplicates_dropped=skip)
        self.rt.set(last_seq=self.anchor.next_seq(self.producer.position))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        for group in self.client.xinfo_groups(self.cfg.stream):
            name = group.get("name")
            if name in (self.cfg.group, self.cfg.group.encode()):
                # Redis >= 7 reports lag: entries not yet delivered to the group
                self.rt.set(lag_entries=int(group.get("lag") or 0), pending_entries=int(group.get("pending") or 0))
                return
