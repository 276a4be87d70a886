"""ring -> Redis: peek records, XADD them in batches (pipelined), commit them in the ring only
once Redis has them. See the package docstring for why that is exactly-once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
import redis

import shmpipe
from shmpipe.dtypes import describe, fingerprint

from . import connection
from .connection import TRANSIENT, Retrier
from .runtime import Runtime
from .stream_keys import Owner, owner_key, read_dtype, read_owner, ring_name_of
from .wire import (
    BridgeError,
    BridgeInputError,
    GapError,
    check_ring_name,
    decode_entry,
    dtype_key,
    encode_entry,
    new_epoch,
    record_type_name,
    ring_identity,
)

PROG = "shmpipe bridge ring-to-redis"
SHARD_PLACEHOLDER = "{shard}"
# One stream entry's data field: Redis refuses bulk strings past 512 MB, and a reader holds
# --count entries at once; past a few MB per entry nothing gets faster (bench/README.md).
MAX_ENTRY_BYTES = 64 << 20
IDLE_PING_S = 1.0
# how often a sender waiting on Redis shows a broadcast ring it is alive (well under any sane
# consumer_timeout)
HEARTBEAT_S = 0.05


@dataclass
class SenderConfig:
    ring: str
    url: str
    stream: str
    batch: int = 256                 # records per stream entry
    pipeline: int = 16               # entries per round trip
    shards: int = 1
    shard_field: str = "symbol_id"
    maxlen: int | None = None        # XADD MAXLEN ~ this many entries
    minid_age_s: float | None = None  # XADD MINID ~ (now - this): entries older than this go
    allow_gap: bool = False

    def stream_keys(self) -> list[str]:
        if self.shards == 1:
            return [self.stream.replace(SHARD_PLACEHOLDER, "0")]
        if SHARD_PLACEHOLDER not in self.stream:
            raise BridgeInputError(f"--shards {self.shards} needs {SHARD_PLACEHOLDER} in the stream key "
                                   f"(e.g. 'ticks:{SHARD_PLACEHOLDER}'), got {self.stream!r}")
        return [self.stream.replace(SHARD_PLACEHOLDER, str(j)) for j in range(self.shards)]


def open_source_ring(name: str) -> shmpipe.Ring:
    try:
        ring = shmpipe.Ring.open(name)
    except shmpipe.ShmpipeError as exc:
        raise BridgeInputError(str(exc)) from None
    if ring.policy == "lossy":
        ring.close()
        raise BridgeInputError(f"ring {name!r} is lossy: its producer may overwrite records before the bridge "
                               f"has them in Redis, so nothing could be delivered exactly once; bridge a "
                               f"lossless ring")
    return ring


class RingToRedis:
    def __init__(self, cfg: SenderConfig, runtime: Runtime) -> None:
        self.cfg = cfg
        self.rt = runtime
        self.keys = cfg.stream_keys()
        self.next_seq = [0] * len(self.keys)
        # per stream: ring positions below this are in the stream already (or belong to another shard)
        self.covered = [0] * len(self.keys)
        self.epochs = [""] * len(self.keys)
        self.bases = [0] * len(self.keys)       # where each stream's epoch numbering starts
        self.prevs = [""] * len(self.keys)      # the epoch it goes on from
        # per stream: it holds entries of ours, so finding it empty means Redis lost it or it was
        # deleted (XADD MAXLEN/MINID ~ never trims the entry it adds)
        self.written = [False] * len(self.keys)
        self._last_contact = 0.0
        self._shown = 0          # records the last peek() showed and no commit() took yet
        self._io = None          # a broadcast source's Redis calls run here (see _call)

    # -- setup -----------------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.cfg
        self.ring = open_source_ring(cfg.ring)
        dt = self.ring.dtype
        if cfg.shards > 1 and (dt.names is None or cfg.shard_field not in dt.names
                               or dt[cfg.shard_field].kind not in "iu"):
            raise BridgeInputError(f"ring {cfg.ring!r} ({record_type_name(dt)}) has no integer field "
                                   f"{cfg.shard_field!r} to shard by")
        if cfg.batch * dt.itemsize > MAX_ENTRY_BYTES:
            raise BridgeInputError(f"--batch {cfg.batch} of {dt.itemsize}-byte records makes entries of "
                                   f"{cfg.batch * dt.itemsize:,} bytes; keep them under {MAX_ENTRY_BYTES:,} "
                                   f"(--batch {MAX_ENTRY_BYTES // dt.itemsize} at most)")
        self.ring_id = ring_identity(self.ring)
        self.type_name = record_type_name(dt)
        self.fp = fingerprint(dt)
        self.descr = describe(dt)
        try:
            self.consumer = self.ring.consumer(start="oldest")
        except shmpipe.ShmpipeError as exc:
            raise BridgeError(str(exc)) from None
        if self.ring.broadcast:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="redis-io")

    def _call(self, fn):
        """fn() (a Redis exchange). A broadcast ring's producer evicts a reader silent for its
        consumer_timeout, and an unanswering Redis holds one command up to the socket timeout
        (10 s): so for a broadcast source fn runs in a worker thread while this one heartbeats."""
        if self._io is None:
            return fn()
        future = self._io.submit(fn)
        while True:
            try:
                return future.result(timeout=HEARTBEAT_S)
            except FutureTimeout:
                self._heartbeat()

    def _resync(self) -> None:
        """Read each stream's last entry back: what Redis has is the checkpoint. Numbering only
        moves forward: a seq a receiver may have seen is never given to another record."""
        client = self.client
        pipe = client.pipeline(transaction=False)
        for key in self.keys:
            pipe.xrevrange(key, "+", "-", count=1)
        try:
            replies = pipe.execute()
        except redis.exceptions.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise BridgeInputError(f"a key among {', '.join(map(repr, self.keys))} holds another Redis type "
                                       f"than a stream: use another stream key") from None
            raise
        owners = [read_owner(client, key) for key in self.keys]
        me = Owner.here(self.ring_id, "", 0)
        for key, last, owner in zip(self.keys, replies, owners):
            if owner is not None and not owner.same_source(me):
                raise BridgeInputError(_owned_by(key, owner))
            if last:
                theirs = ring_name_of(decode_entry(*last[0], key).ring_id)
                if theirs != self.ring.name:
                    raise BridgeInputError(f"stream {key!r} belongs to ring {theirs!r} (its last entry): one "
                                           f"stream per source ring; use another stream key")
        gap_streams = []
        for j, (key, last, owner) in enumerate(zip(self.keys, replies, owners)):
            if not last:
                self._start_epoch(j, key, owner)
                continue
            entry = decode_entry(*last[0], key)
            if entry.fp != self.fp:
                raise BridgeInputError(f"stream {key!r} already carries {entry.type_name} records (fingerprint "
                                       f"{entry.fp:#x}), ring {self.cfg.ring!r} holds {self.type_name} "
                                       f"(fingerprint {self.fp:#x}): use another stream key")
            if owner is None and self.epochs[j]:
                self.rt.warn(PROG, f"key {owner_key(key)!r} was gone (Redis restarted without persistence, or it "
                                   f"was deleted): entries of stream {key!r} may be lost too, and readers count "
                                   f"what they miss; re-established it and {dtype_key(key)!r}")
            self.next_seq[j] = entry.seq + entry.n
            self.epochs[j], self.bases[j], self.prevs[j] = entry.epoch, entry.base, entry.prev
            self.written[j] = True
            # a new incarnation of the ring (re-created under its name): none of it is in Redis yet
            self.covered[j] = entry.pos if entry.ring_id == self.ring_id else 0
            if entry.ring_id == self.ring_id:
                gap_streams.append(j)
        position = self.consumer.position
        top = max((self.covered[j] for j in gap_streams), default=0)
        if top and position > top:
            missing = position - top
            message = (f"ring {self.cfg.ring!r}: records at positions {top}..{position - 1} ({missing}) left the "
                       f"ring but are not in Redis (a broadcast ring overwrote them while the bridge was "
                       f"down, or Redis lost acknowledged writes)")
            if not self.cfg.allow_gap:
                raise GapError(message + "; --allow-gap skips them")
            if len(self.keys) == 1:
                # numbered as if sent: a receiver that saw them (before Redis lost them) keeps its
                # numbering, one that did not counts them as missing
                self.next_seq[0] += missing
                self.rt.warn(PROG, message + f"; skipped (--allow-gap), numbering goes on at seq {self.next_seq[0]}")
            else:
                # which shard each missing record was in is gone with it: a new numbering per shard
                for j, key in enumerate(self.keys):
                    self.epochs[j], self.bases[j], self.prevs[j] = new_epoch(), self.next_seq[j], ""
                self.rt.warn(PROG, message + "; skipped (--allow-gap); each shard stream starts a new epoch "
                                             "(its readers cannot count what they missed, and say so)")
            self.rt.add(gap_records=missing)
            self.covered = [position] * len(self.keys)
        self._claim_keys()

    def _start_epoch(self, j: int, key: str, owner: Owner | None) -> None:
        """An empty stream: a new epoch, going on from the numbering this sender (or the owner key
        it wrote) knows, so readers of the old one count what they missed."""
        if self.epochs[j]:
            lineage = (self.epochs[j], self.next_seq[j])
        elif owner is not None and owner.epoch:
            lineage = (owner.epoch, owner.next_seq)
        else:
            lineage = None
        epoch = new_epoch()
        if lineage is not None and lineage[1] > 0:
            self.rt.warn(PROG, f"stream {key!r} is empty but held seq ..{lineage[1] - 1} (epoch {lineage[0]}): it "
                               f"was lost (Redis restarted without persistence, or it was deleted); records only "
                               f"in it are gone for readers that had not read them (they count them); numbering "
                               f"goes on at seq {lineage[1]} (epoch {epoch})")
        elif self.consumer.position > 0 and self.ring.policy != "lossy" and not self.ring.broadcast:
            self.rt.warn(PROG, f"stream {key!r} is empty, but ring {self.cfg.ring!r} was read up to position "
                               f"{self.consumer.position} before: those records were sent and are gone from Redis; "
                               f"a new numbering starts (epoch {epoch}; readers of the old one say they cannot "
                               f"count what they missed)")
        self.epochs[j], self.prevs[j] = epoch, lineage[0] if lineage else ""
        self.next_seq[j] = self.bases[j] = lineage[1] if lineage else 0
        self.covered[j] = 0
        self.written[j] = False

    def _claim_keys(self) -> None:
        """KEY:dtype is never overwritten (a mismatch is refused before anything is written), then
        KEY:owner is taken with SET NX (of two senders started together, one wins)."""
        client = self.client
        for key in self.keys:
            theirs = read_dtype(client, key)
            if theirs is not None and fingerprint(theirs) != self.fp:
                raise BridgeInputError(f"key {dtype_key(key)!r} names {record_type_name(theirs)} records ({theirs}), "
                                       f"ring {self.cfg.ring!r} holds {self.type_name} records: use another stream "
                                       f"key (or DEL {dtype_key(key)} if nothing reads {key!r})")
        for j, key in enumerate(self.keys):
            mine = self._owner(j)
            if not client.set(owner_key(key), mine.encode(), nx=True):
                owner = read_owner(client, key)
                if owner is not None and not owner.same_source(mine):
                    raise BridgeInputError(_owned_by(key, owner))
                client.set(owner_key(key), mine.encode())
            client.set(dtype_key(key), self.descr, nx=True)

    def _owner(self, j: int, next_seq: int | None = None) -> Owner:
        return Owner.here(self.ring_id, self.epochs[j], self.next_seq[j] if next_seq is None else next_seq)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        cfg, rt = self.cfg, self.rt
        check_ring_name(cfg.ring)
        self.client = connection.connect(cfg.url)
        try:
            self._open()
        except BaseException:
            self.client.close()
            raise
        retrier = Retrier(cfg.url, lambda exc: rt.retrying(PROG, connection.redact(cfg.url), exc),
                          lambda: rt.recovered(PROG), while_waiting=self._heartbeat)
        max_records = cfg.batch * cfg.pipeline
        try:
            rt.start_publishing()
            rt.serve_control(lambda: {
                "mode": "ring-to-redis", "ring": cfg.ring, "streams": self.keys,
                "redis": connection.redact(cfg.url), "batch": cfg.batch, "next_seq": list(self.next_seq)}, PROG)
            self._resync_until_up(retrier)
            while not rt.stopping():
                try:
                    if not self._step(max_records):
                        self._resync_until_up(retrier)      # Redis lost keys: say so, go on from there
                    retrier.succeeded()
                except TRANSIENT as exc:
                    retrier.failed(exc, rt.stopping)
                    self._resync_until_up(retrier)
                rt.publish()
        finally:
            rt.publish(force=True)
            if self._io is not None:
                self._io.shutdown(wait=False, cancel_futures=True)
            self.consumer.close()
            self.ring.close()
            self.client.close()
        return 0

    def _resync_until_up(self, retrier: Retrier) -> None:
        while not self.rt.stopping():
            try:
                self._call(self._resync)
                retrier.succeeded()
                return
            except TRANSIENT as exc:
                retrier.failed(exc, self.rt.stopping)

    def _heartbeat(self) -> None:
        """A broadcast ring's producer evicts a reader silent for its consumer_timeout: while the
        sender waits for Redis it still shows it is alive. A peek shows again the records the
        last one showed (same cursor, never fewer), so the commit that follows is unchanged."""
        self.consumer.peek(max(self._shown, 1), timeout=0)

    def _keys_still_there(self) -> bool:
        """Idle or paused: every second, whether Redis still has our owner keys and our streams'
        entries (a restart without persistence, a DEL); False sends the loop to resync, which
        says what was lost."""
        if time.monotonic() - self._last_contact < IDLE_PING_S:
            return True
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.exists(owner_key(key))
        for j in self._written_streams():
            pipe.xlen(self.keys[j])
        replies = self._call(pipe.execute)
        self._last_contact = time.monotonic()
        return all(replies)

    def _written_streams(self) -> list[int]:
        return [j for j in range(len(self.keys)) if self.written[j]]

    def _step(self, max_records: int) -> bool:
        """One batch; False when Redis turned out to have lost the stream's keys."""
        if self.rt.holding():        # records wait in the ring (a lossless producer waits for room)
            self.rt.set(lag_records=self.consumer.available)
            self._heartbeat()
            time.sleep(0.02)
            return self._keys_still_there()
        view = self.consumer.peek(max_records, timeout=0.1)
        n = self._shown = len(view)
        self.rt.set(lag_records=self.consumer.available)
        if n == 0:
            return self._keys_still_there()
        base = self.consumer.position
        plan = self._plan(view, base)
        keys_kept = True
        if plan:
            pipe = self.client.pipeline(transaction=False)
            retention = self._retention()
            ends = {}
            for j, fields in plan:
                ends[j] = fields[b"seq"] + fields[b"n"]
            # before the XADDs: the owner key's numbering is never behind the stream (SET XX: a
            # key Redis lost is noticed here, not re-made behind the loss)
            for j, end in ends.items():
                pipe.set(owner_key(self.keys[j]), self._owner(j, end).encode(), xx=True)
            emptied = [j for j in ends if self.written[j]]
            for j in emptied:
                pipe.xlen(self.keys[j])
            for j, fields in plan:
                pipe.xadd(self.keys[j], fields, **retention)
            replies = self._call(pipe.execute)
            keys_kept = all(replies[:len(ends)])
            for j, length in zip(emptied, replies[len(ends):len(ends) + len(emptied)]):
                if length == 0:
                    # the numbering goes on in these entries, so readers count exactly what they missed
                    self.rt.warn(PROG, f"stream {self.keys[j]!r} was found empty: it was lost (Redis restarted "
                                       f"without persistence, or it was deleted) with seq ..{self.next_seq[j] - 1}; "
                                       f"records only in it are gone for readers that had not read them (they "
                                       f"count them); numbering goes on at seq {self.next_seq[j]}")
            self._last_contact = time.monotonic()
        self.rt.crash_point("after_xadd")
        records = 0
        for j, fields in plan:
            self.next_seq[j] = fields[b"seq"] + fields[b"n"]
            self.covered[j] = fields[b"pos"]
            self.written[j] = True
            records += fields[b"n"]
        self.consumer.commit(n)
        self._shown = 0
        self.rt.add(records=records, entries=len(plan), bytes=records * self.ring.itemsize,
                    duplicates_dropped=n - records if self.cfg.shards == 1 else 0)
        self.rt.set(last_seq=max(self.next_seq))
        return keys_kept

    def _retention(self) -> dict:
        if self.cfg.maxlen is not None:
            return {"maxlen": self.cfg.maxlen, "approximate": True}
        if self.cfg.minid_age_s is not None:
            return {"minid": f"{int(time.time() * 1000 - self.cfg.minid_age_s * 1000)}", "approximate": True}
        return {}

    def _plan(self, view: np.ndarray, base: int) -> list[tuple[int, dict]]:
        """The entries to XADD for records at ring positions base.., leaving out what each stream
        already covers (a crash between XADD and commit shows those again)."""
        n, batch, end = len(view), self.cfg.batch, base + len(view)
        plan: list[tuple[int, dict]] = []
        if self.cfg.shards == 1:
            shard_rows = [np.arange(max(0, self.covered[0] - base), n)]
        else:
            shard_of = view[self.cfg.shard_field].astype(np.int64) % self.cfg.shards
            positions = np.arange(base, end)
            shard_rows = [np.flatnonzero((shard_of == j) & (positions >= self.covered[j]))
                          for j in range(self.cfg.shards)]
        for j, rows in enumerate(shard_rows):
            seq = self.next_seq[j]
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                last_chunk = start + batch >= len(rows)
                if self.cfg.shards == 1:
                    data = view[chunk[0]:chunk[-1] + 1].tobytes()
                else:
                    data = view[chunk].tobytes()
                pos = end if last_chunk else base + int(chunk[-1]) + 1
                plan.append((j, encode_entry(data, len(chunk), seq, self.type_name, self.fp, self.ring_id, pos,
                                             self.epochs[j], self.bases[j], self.prevs[j])))
                seq += len(chunk)
        return plan


def _owned_by(key: str, owner: Owner) -> str:
    return (f"stream {key!r} belongs to {owner} (key {owner_key(key)!r}): one stream per source ring; use "
            f"another stream key, or DEL {owner_key(key)} if that sender is gone for good")
