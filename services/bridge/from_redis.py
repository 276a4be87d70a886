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
from shmpipe.dtypes import fingerprint

from . import connection
from .connection import TRANSIENT, Retrier
from .ring_state import AnchorFile, SeqAnchor, default_state_dir
from .runtime import Runtime
from .stream_keys import read_dtype
from .wire import (
    BridgeError,
    BridgeInputError,
    GapError,
    RecordTypeMismatchError,
    check_entry,
    check_ring_name,
    decode_entry,
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
        theirs = read_dtype(self.client, cfg.stream)
        try:
            ring = shmpipe.Ring.open(cfg.ring)
        except shmpipe.RingNotFoundError:
            if theirs is None:
                raise BridgeInputError(f"ring {cfg.ring!r} does not exist and stream {cfg.stream!r} names no "
                                       f"record type yet: create the ring, or start ring-to-redis first") from None
            try:
                ring = shmpipe.Ring.create(cfg.ring, theirs, cfg.capacity)
            except shmpipe.RingExistsError:
                ring = shmpipe.Ring.open(cfg.ring)
        except shmpipe.ShmpipeError as exc:
            raise BridgeInputError(str(exc)) from None
        if theirs is not None:
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
        check_ring_name(cfg.ring)
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
        retrier = Retrier(cfg.url, lambda exc: rt.retrying(PROG, connection.redact(cfg.url), exc),
                          lambda: rt.recovered(PROG))
        replay_pending = True
        try:
            self.anchor = self.anchors.load(self.ring_id, cfg.stream)
            self._check_anchor_needed()
            rt.start_publishing()
            rt.serve_control(lambda: {
                "mode": "redis-to-ring", "ring": cfg.ring, "stream": cfg.stream, "group": cfg.group,
                "consumer": self.consumer_name, "redis": connection.redact(cfg.url)}, PROG)
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
                except redis.exceptions.ResponseError as exc:
                    if not _group_gone(exc):
                        raise
                    rt.warn(PROG, f"group {cfg.group!r} of stream {cfg.stream!r} is gone (Redis restarted without "
                                  f"persistence, XGROUP DESTROY, or DEL of the stream): re-creating it at the "
                                  f"stream's start; entries the ring holds are dropped as duplicates, records the "
                                  f"stream no longer has are a gap")
                    replay_pending = True
                rt.publish()
        finally:
            rt.publish(force=True)
            self.producer.close()
            self.ring.close()
            self.client.close()
        return 0

    def _check_anchor_needed(self) -> None:
        """Records in the ring and no anchor (another --state-dir, a lost disk): which seqs the
        ring holds cannot be known, and a guess would duplicate or drop records."""
        position = self.producer.position
        if self.anchor is None and position > 0:
            raise BridgeInputError(
                f"ring {self.cfg.ring!r} already holds {position} records, but {self.anchors.path} has no "
                f"anchor tying them to stream {self.cfg.stream!r}: which of its records the ring has cannot be "
                f"known; run with the --state-dir that filled it, or re-create the ring")

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
            entry = decode_entry(entry_id, fields, self.cfg.stream, self.cfg.group)
            try:
                check_entry(entry, self.ring.dtype, self.cfg.ring, self.cfg.stream)
            except BridgeInputError as exc:
                # it stays pending and fails every start the same way: say how to get past it
                raise type(exc)(f"{exc}; to skip it: XACK {self.cfg.stream} {self.cfg.group} "
                                f"{entry_id.decode()}") from None
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
            self._change_epoch(entry, position)
        if self.anchor is None:
            # the epoch's numbering starts at entry.base: a first entry above it is a gap below
            self.anchor = SeqAnchor(self.ring_id, self.cfg.stream, entry.epoch, entry.base, position)
            self.anchors.save(self.anchor)       # before the first record: no record without its seq
        expected = self.anchor.next_seq(position)
        if entry.seq + entry.n <= expected:
            self.rt.add(duplicates_dropped=entry.n)
            return True
        if entry.seq > expected:
            message = (f"stream {self.cfg.stream!r}: records with seq {expected}..{entry.seq - 1} "
                       f"({entry.seq - expected}) are missing before entry {entry.entry_id.decode()} "
                       f"(trimmed by the stream's retention before group {self.cfg.group!r} read them, or "
                       f"lost by Redis)")
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

    def _change_epoch(self, entry, position: int) -> None:
        old = self.anchor
        expected = old.next_seq(position)
        if entry.prev == old.epoch:
            # the sender went on numbering from where the old epoch ended: the usual gap check counts
            self.rt.warn(PROG, f"stream {self.cfg.stream!r} was started afresh (epoch {old.epoch} -> {entry.epoch}, "
                               f"numbering going on from seq {entry.base}); the ring has up to seq {expected - 1}")
            self.anchor = SeqAnchor(self.ring_id, self.cfg.stream, entry.epoch, expected, position)
            self.anchors.save(self.anchor)
            return
        message = (f"stream {self.cfg.stream!r} was started afresh (epoch {old.epoch} -> {entry.epoch}) by a sender "
                   f"that did not know where epoch {old.epoch} ended: how many of its records after seq "
                   f"{expected - 1} this ring never got cannot be counted")
        if not self.cfg.allow_gap:
            raise GapError(message + "; --allow-gap goes on with the new epoch")
        self.rt.warn(PROG, message + "; going on with the new epoch (--allow-gap)")
        self.anchor = None

    def _count(self, written: int, entry, skip: int) -> None:
        self.rt.add(records=written, entries=1 if written else 0, bytes=written * self.ring.itemsize,
                    duplicates_dropped=skip)
        self.rt.set(last_seq=self.anchor.next_seq(self.producer.position))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        try:
            groups = self.client.xinfo_groups(self.cfg.stream)
        except redis.exceptions.ResponseError:
            return                  # the stream went away: the next read says so and re-creates it
        for group in groups:
            name = group.get("name")
            if name in (self.cfg.group, self.cfg.group.encode()):
                # Redis >= 7 reports lag: entries not yet delivered to the group
                self.rt.set(lag_entries=int(group.get("lag") or 0), pending_entries=int(group.get("pending") or 0))
                return


def _group_gone(exc: BaseException) -> bool:
    """The group or its stream vanished between two commands (XGROUP DESTROY, DEL, a restart)."""
    text = str(exc)
    return "NOGROUP" in text or "no longer exists" in text
