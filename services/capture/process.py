"""The capture process: one venue's websocket -> parser -> TICK / LEVEL_UPDATE broadcast rings, with
the raw frames to a .wslog capture and the ticks to a journal; and replay of such a capture through
the same parsers into rings.

Exactness between a live run and its replay rests on two things: every frame is parsed with the
receive time that is also written to the .wslog (the only input a parser takes besides the frame),
and the parser's connection state is reset at the same points (live: after every reconnect; replay:
on every connect marker after the first of that exchange).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import shmpipe
from shmpipe.records import LEVEL_UPDATE, SOURCE_ALPACA, SOURCE_COINBASE, SOURCE_KRAKEN, TICK

from . import alpaca, coinbase, kraken
from .alpaca import AlpacaParser
from .coinbase import CoinbaseParser
from .feed_parser import FeedParser
from .kraken import KrakenParser
from .record_batch import RecordBatch
from .staleness import StalenessWatchdog
from .symbol_ids import SymbolIdFn, host_registry_or_memory

# The capture's exchange ids: the .wslog header's u16 (shared/data/README.md uses the same).
# One code space for exchanges everywhere (DESIGN.md): Tick.source's, which LevelUpdate.source and
# OrderbookEntry.exchange_id carry too; the raw logs' exchange ids are the same codes.
EXCHANGE_IDS = {"coinbase": SOURCE_COINBASE, "kraken": SOURCE_KRAKEN, "alpaca": SOURCE_ALPACA}
# Raw logs written before the codes were unified used 1, 2, 3: still read as those venues.
LEGACY_EXCHANGE_IDS = {"coinbase": 1, "kraken": 2, "alpaca": 3}
EXCHANGE_NAMES = {v: k for k, v in (*LEGACY_EXCHANGE_IDS.items(), *EXCHANGE_IDS.items())}
PARSERS: dict[str, type[FeedParser]] = {"coinbase": CoinbaseParser, "kraken": KrakenParser,
                                        "alpaca": AlpacaParser}
# What the fixtures (and so the feed server) carry; a real capture passes --symbols.
DEFAULT_SYMBOLS = {"coinbase": ["BTC-USD", "ETH-USD"], "kraken": ["BTC/USD", "ETH/USD"],
                   "alpaca": ["AAPL", "MSFT", "SPY"]}

# Capacities of rings capture creates itself. A book message fans out into many LevelUpdates (a
# Kraken depth-10 snapshot is 21 records, a Coinbase level2 snapshot hundreds), so the levels ring
# is 4x the ticks ring. 2^16 ticks (2 MiB) and 2^18 levels (8 MiB) hold seconds of a busy venue:
# a consumer that stalls that long makes capture wait (lossless), counted as ring-full waits.
TICKS_CAPACITY = 1 << 16
LEVELS_CAPACITY = 1 << 18
# One blocking attempt to write into a full ring lasts this long before capture yields to the event
# loop (pings, the deadline) and tries again; every such round is one ring-full wait.
RING_WAIT_S = 0.05


class CaptureError(Exception):
    """A user-caused failure (bad URL, unreachable server, wrong ring type): one line, exit 1."""


def open_or_create_rings(ticks: str, levels: str) -> tuple[Any, Any, list[str]]:
    """Attach to the rings if they exist, else create them as lossless broadcast rings. Returns
    (ticks ring, levels ring, names of the rings created here)."""
    rings, created = [], []
    try:
        for name, dtype, capacity in ((ticks, TICK, TICKS_CAPACITY), (levels, LEVEL_UPDATE, LEVELS_CAPACITY)):
            try:
                ring = shmpipe.Ring.open(name, dtype)
            except FileNotFoundError:
                try:
                    ring = shmpipe.Ring.create(name, dtype, capacity, broadcast=True)
                    created.append(name)
                except FileExistsError:   # another process created it in between: join it
                    ring = shmpipe.Ring.open(name, dtype)
            rings.append(ring)
    except shmpipe.ShmpipeError as exc:   # the wrong dtype, a bad name, not ours
        for ring in rings:
            ring.close()
        raise CaptureError(f"ring {name!r}: {exc}") from None
    return rings[0], rings[1], created


@dataclass
class Counters:
    messages: int = 0            # frames received (or replayed)
    bytes: int = 0
    ticks_written: int = 0
    levels_written: int = 0
    ring_full_waits: int = 0
    reconnects: int = 0
    resubscribes: int = 0        # symbols resubscribed for a fresh snapshot (after a gap, or asked to)
    resnapshots: int = 0         # resnapshots asked for over the control plane
    invalidates: int = 0         # invalidate records written (books capture could no longer vouch for)
    silences: int = 0            # connections replaced because the venue went silent
    parse_errors: Counter = field(default_factory=Counter)
    gaps: Counter = field(default_factory=Counter)
    by_channel: Counter = field(default_factory=Counter)
    latency: Any = None          # HdrHistogram of frame-to-ring µs, when hdrhistogram is installed

    def __post_init__(self) -> None:
        try:
            from hdrh.histogram import HdrHistogram
            self.latency = HdrHistogram(1, 60_000_000, 3)
        except ImportError:   # the counters still work without percentiles
            self.latency = None

    def as_dict(self) -> dict:
        out = {"messages": self.messages, "bytes": self.bytes, "ticks_written": self.ticks_written,
               "levels_written": self.levels_written, "ring_full_waits": self.ring_full_waits,
               "reconnects": self.reconnects, "resubscribes": self.resubscribes,
               "resnapshots": self.resnapshots, "invalidates": self.invalidates, "silences": self.silences,
               "parse_errors": dict(self.parse_errors), "gaps": dict(self.gaps),
               "messages_by_channel": dict(self.by_channel)}
        if self.latency is not None and self.latency.get_total_count():
            out["latency_us"] = {"p50": self.latency.get_value_at_percentile(50),
                                 "p99": self.latency.get_value_at_percentile(99),
                                 "p999": self.latency.get_value_at_percentile(99.9),
                                 "max": self.latency.get_max_value(),
                                 "count": self.latency.get_total_count()}
        else:
            out["latency_us"] = None
        return out


# What capture publishes to its stats segment (shmpipe.stats), every STATS_INTERVAL_S and at the end.
STATS_FIELDS = ["messages", "bytes", "parse_errors", "gaps", "reconnects", "resubscribes", "ring_full_waits",
                "ticks_written", "levels_written", "latency_p50_us", "latency_p99_us", "resnapshots"]
# Often enough for a human or a control plane polling; rare enough that the percentile queries
# (microseconds each) cost nothing next to the frames.
STATS_INTERVAL_S = 0.1


class StatsFeed:
    """Copies the counters (and, while a capture runs, its parser's error and gap counts, which
    Counters only receives at the end) into a shmpipe.stats publisher."""

    def __init__(self, publisher, counters: Counters) -> None:
        self.publisher, self.counters, self.parser = publisher, counters, None
        self._next = 0.0

    def publish(self) -> None:
        c = self.counters
        errors, gaps = c.parse_errors, c.gaps
        if self.parser is not None:
            errors, gaps = self.parser.errors, self.parser.gap_counts
        values = {"messages": c.messages, "bytes": c.bytes, "parse_errors": sum(errors.values()),
                  "gaps": sum(v for k, v in gaps.items() if k != "reconnect"), "reconnects": c.reconnects,
                  "resubscribes": c.resubscribes, "resnapshots": c.resnapshots,
                  "ring_full_waits": c.ring_full_waits,
                  "ticks_written": c.ticks_written, "levels_written": c.levels_written}
        if c.latency is not None and c.latency.get_total_count():
            values["latency_p50_us"] = c.latency.get_value_at_percentile(50)
            values["latency_p99_us"] = c.latency.get_value_at_percentile(99)
        self.publisher.update(values)
        self._next = time.monotonic() + STATS_INTERVAL_S

    def maybe_publish(self) -> None:
        if time.monotonic() >= self._next:
            self.publish()

    async def run(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(STATS_INTERVAL_S)


class RingWriter:
    """Writes batches into the two rings, waiting (never dropping) while a lossless ring is full."""

    def __init__(self, ticks_ring, levels_ring, counters: Counters, journal=None) -> None:
        self.ticks_out = ticks_ring.producer()
        self.levels_out = levels_ring.producer()
        self.counters = counters
        self.journal = journal

    def close(self) -> None:
        self.ticks_out.close()
        self.levels_out.close()

    def _journal(self, batch: RecordBatch) -> None:
        if self.journal is not None and batch.ticks:
            view = np.frombuffer(batch.ticks, TICK)
            self.journal.append(view)
            del view   # the bytearray cannot shrink while a view exports it

    def _write_counted(self, batch: RecordBatch, timeout: float | None) -> bool:
        """Write what the rings take within timeout, count it; True once the batch is empty."""
        t, lv = batch.write_to(self.ticks_out, self.levels_out, timeout=timeout)
        self.counters.ticks_written += t
        self.counters.levels_written += lv
        return not len(batch)

    async def write(self, batch: RecordBatch) -> None:
        self._journal(batch)
        while not self._write_counted(batch, 0):
            # a consumer is behind: wait, but let the event loop run (pings, --seconds) meanwhile
            self.counters.ring_full_waits += 1
            if self._write_counted(batch, RING_WAIT_S):
                return
            await asyncio.sleep(0)

    def write_blocking(self, batch: RecordBatch) -> None:
        self._journal(batch)
        while not self._write_counted(batch, 0):
            self.counters.ring_full_waits += 1
            if self._write_counted(batch, None):
                return

    def write_arrays(self, ticks: np.ndarray, levels: np.ndarray, stop: Callable[[], bool]) -> None:
        """Synthetic records (already arrays): same waiting rule, stopping early only if asked to."""
        if self.journal is not None and len(ticks):
            self.journal.append(ticks)
        for array, producer, key in ((ticks, self.ticks_out, "ticks_written"),
                                     (levels, self.levels_out, "levels_written")):
            while len(array):
                n = producer.write_batch(array, 0)
                if n < len(array):
                    self.counters.ring_full_waits += 1
                    n += producer.write_batch(array[n:], RING_WAIT_S)
                setattr(self.counters, key, getattr(self.counters, key) + n)
                array = array[n:]
                if len(array) and stop():
                    return


def subscribe_frames(feed: str, symbols: list[str]) -> list[str]:
    if feed == "coinbase":
        return coinbase.subscribe_messages(symbols)
    if feed == "kraken":
        return kraken.subscribe_messages(symbols)
    key, secret = os.environ.get("APCA_API_KEY_ID", ""), os.environ.get("APCA_API_SECRET_KEY", "")
    # the local feed server accepts anything; the real endpoint wants the auth frame first
    return [alpaca.auth_message(key, secret), alpaca.subscribe_message(symbols)]


def resubscribe_frames(feed: str, symbols: list[str]) -> list[str]:
    """Only the book channel of the symbols whose book needs a fresh snapshot."""
    if feed == "coinbase":
        # unsubscribe first: a second subscribe to a channel already held would not send a snapshot
        unsub = {"type": "unsubscribe", "channel": "level2", "product_ids": symbols}
        return [json.dumps(unsub)] + coinbase.subscribe_messages(symbols, channels=("level2",))[1:]
    if feed == "kraken":
        unsub = {"method": "unsubscribe", "params": {"channel": "book", "symbol": symbols,
                                                      "depth": kraken.DEFAULT_DEPTH}}
        return [json.dumps(unsub)] + kraken.subscribe_messages(symbols, channels=("book",))
    return []   # Alpaca has no books


@dataclass
class CaptureOptions:
    feed: str
    url: str
    symbols: list[str]
    seconds: float | None = None
    max_attempts: int = 10          # reconnect attempts in a row before giving up
    backoff_s: float = 0.5          # first reconnect delay; doubles per failed attempt
    max_backoff_s: float = 30.0
    open_timeout_s: float = 10.0
    # A connection silent this long (several of the venue's ~1 s heartbeat intervals) with its socket
    # open can no longer vouch for its books: they are invalidated and the connection is replaced.
    # None: never (a venue with no heartbeats, like Alpaca's, may be quiet for good reasons).
    silence_s: float | None = 5.0


# The disconnect marker of a feed that ended on purpose: the one disconnect that invalidates nothing.
NORMAL_CLOSE = "closed normally (1000)"
# Venues whose streams carry heartbeats (so silence means trouble), and how often silence is checked.
SILENCE_WATCHED = ("coinbase", "kraken")
SILENCE_CHECK_S = 0.25

# How often the event loop answers control-plane requests (shmpipe.control): a request waits this
# long at most, and polling an idle ZeroMQ socket this often costs nothing next to the frames.
CONTROL_POLL_S = 0.02


class Capture:
    """One venue's websocket capture. Besides ``run()``, it answers the control plane (see
    ``commands``): ``pause``/``resume`` (paused, it stops reading the socket: the frames wait in the
    kernel's and the venue's buffers, TCP backpressure, and nothing is dropped or written meanwhile),
    ``resnapshot`` (the symbol's book channel is resubscribed, as after a gap) and ``stop`` (the end
    SIGTERM gives)."""

    def __init__(self, options: CaptureOptions, writer: RingWriter, wslog=None,
                 symbol_id: SymbolIdFn | None = None, stats: StatsFeed | None = None) -> None:
        self.options = options
        self.writer = writer
        self.counters = writer.counters
        self.wslog = wslog
        self.exchange = options.feed
        self.exchange_id = EXCHANGE_IDS[options.feed]
        self.parser = PARSERS[options.feed](symbol_id if symbol_id is not None else host_registry_or_memory())
        self.connections = 0
        self.ended = ""
        self.stats = stats
        if stats is not None:
            stats.parser = self.parser
        self.control = None          # a shmpipe.control.ControlServer, polled from the event loop
        self.connected = False
        self.paused = False
        self._resumed: asyncio.Event | None = None
        self._ws = None
        self._task: asyncio.Task | None = None
        self.silences = 0            # connections replaced because the venue went silent
        self._last_frame_mono = time.monotonic()

    # -- what the control plane asks (called in the event loop's thread, from ``_answer_control``) --
    @property
    def symbols(self) -> list[str]:
        return list(self.options.symbols)

    @property
    def has_books(self) -> bool:
        return self.options.feed != "alpaca"

    def symbol_ids(self) -> dict[str, int]:
        """Ids of the symbols seen so far (the others take theirs on their first message)."""
        known = self.parser.instruments
        return {s: known[s].symbol_id for s in self.options.symbols if s in known}

    def symbol_for_id(self, symbol_id: int) -> str | None:
        for symbol, inst in self.parser.instruments.items():
            if inst.symbol_id == symbol_id and symbol in self.options.symbols:
                return symbol
        for symbol in self.options.symbols:   # not seen yet: its id, taken now, may still match
            if self.parser.instrument(symbol).symbol_id == symbol_id:
                return symbol
        return None

    def live_counters(self) -> dict:
        """The counters ``--json`` prints at the end, as they stand now."""
        out = self.counters.as_dict()
        out.update(invalidates=self.parser.invalidates_written, silences=self.silences)
        out.update(parse_errors=dict(self.parser.errors), gaps=dict(self.parser.gap_counts),
                   messages_by_channel=dict(self.parser.messages), connections=self.connections)
        return out

    def pause(self) -> None:
        self.paused = True
        if self._resumed is not None:
            self._resumed.clear()

    def resume(self) -> None:
        self.paused = False
        if self._resumed is not None:
            self._resumed.set()

    def stop(self) -> None:
        """The end SIGTERM gives: the run task is cancelled, counters printed, exit 0."""
        self.ended = "stop requested"
        if self._task is not None:
            self._task.cancel()

    def resnapshot(self, symbol: str) -> dict:
        """Resubscribe this symbol's book channel (the same frames as after a detected gap)."""
        self.parser.request_resync(symbol)
        self.counters.resnapshots += 1
        if self._ws is not None:   # else the next connection's subscribe brings a snapshot anyway
            asyncio.get_running_loop().create_task(self._resubscribe_now(self._ws))
        return {"symbol_id": self.parser.instrument(symbol).symbol_id, "sent": self._ws is not None}

    async def _resubscribe_now(self, ws) -> None:
        from websockets.exceptions import WebSocketException
        try:
            await self._send_resubscribes(ws)
        except (OSError, WebSocketException):
            pass   # the connection just went: its reconnect subscribes every book afresh

    async def _answer_control(self) -> None:
        while True:
            self.control.poll(0)
            await asyncio.sleep(CONTROL_POLL_S)

    def _marker(self, kind: str, detail: str, when_ns: int | None = None) -> None:
        if self.wslog is not None:
            self.wslog.marker(self.exchange_id, kind, detail, time.time_ns() if when_ns is None else when_ns)

    async def _connection_lost(self, detail: str) -> None:
        """The connection is gone (or no longer trusted): its books are invalidated at once, not at
        the reconnect (which may be 30 s away), and the raw log says when (replay does the same)."""
        now = time.time_ns()
        self._marker("disconnect", detail, now)
        batch = RecordBatch()
        if self.parser.invalidate_all(batch, now):
            await self.writer.write(batch)

    async def _watch_silence(self, ws, limit_s: float) -> None:
        """Silence past ``limit_s`` with the socket open: close it, so the books are invalidated and
        the reconnect brings fresh snapshots (the staleness watchdog, on the live connection)."""
        watchdog = StalenessWatchdog(limit_s)
        watchdog.watch("connection")
        last = self._last_frame_mono
        while True:
            await asyncio.sleep(SILENCE_CHECK_S)
            if self._last_frame_mono != last:
                last = self._last_frame_mono
                watchdog.touch("connection")
            if self.paused:                      # not reading on purpose: silence is ours
                watchdog.touch("connection")
                continue
            if watchdog.check():
                self.silences += 1
                self._silent = True
                # invalidate now, then drop the socket without a closing handshake a silent peer
                # would never answer; the reconnect resubscribes every book
                await self._connection_lost(f"silent for {limit_s} s: connection replaced")
                ws.transport.abort()
                return

    async def run(self) -> None:
        deadline = None if self.options.seconds is None else time.monotonic() + self.options.seconds
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._resumed = asyncio.Event()
        if not self.paused:
            self._resumed.set()
        stats_task = None if self.stats is None else loop.create_task(self.stats.run())
        control_task = None if self.control is None else loop.create_task(self._answer_control())
        try:
            if deadline is None:
                await self._run()
            else:
                await asyncio.wait_for(self._run(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.ended = "time"
        finally:
            self.parser.bad_input.flush()
            self.counters.parse_errors = Counter(self.parser.errors)
            self.counters.gaps = Counter(self.parser.gap_counts)
            self.counters.by_channel = Counter(self.parser.messages)
            self.counters.invalidates = self.parser.invalidates_written
            self.counters.silences = self.silences
            if control_task is not None:
                control_task.cancel()
            if stats_task is not None:
                stats_task.cancel()
                self.stats.publish()   # the final numbers, before the segment goes

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosedOK, InvalidURI, WebSocketException

        failures = 0
        while True:
            try:
                ws = await asyncio.wait_for(
                    connect(self.options.url, max_size=self._max_size(), compression=None,
                            open_timeout=None), self.options.open_timeout_s)
            except InvalidURI as exc:
                raise CaptureError(f"bad --url {self.options.url!r}: {exc}") from None
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}".strip()
                if self.connections == 0:
                    # never connected: a wrong URL or a server that is not there is a setup error the
                    # operator must see now, not after minutes of retries
                    raise CaptureError(f"cannot connect to {self.options.url}: {reason}") from None
                failures += 1
                if failures >= self.options.max_attempts:
                    self.ended = f"gave up after {failures} failed reconnect attempts ({reason})"
                    return
                await asyncio.sleep(self._backoff(failures))
                continue
            failures = 0
            self.connections += 1
            self._marker("connect", self.options.url)
            if self.connections > 1:
                self.counters.reconnects += 1
                self.parser.reset_connection()
            self._silent = False
            watcher = None
            if self.options.silence_s and self.options.feed in SILENCE_WATCHED:
                self._last_frame_mono = time.monotonic()
                watcher = asyncio.get_running_loop().create_task(self._watch_silence(ws, self.options.silence_s))
            try:
                async with ws:
                    for frame in subscribe_frames(self.options.feed, self.options.symbols):
                        self._marker("subscribe", frame)
                        await ws.send(frame)
                    self._ws, self.connected = ws, True
                    async for frame in ws:
                        if self.paused:
                            # not read while paused: the socket's buffers fill and TCP holds the venue
                            # back; this frame, already received, waits here for the resume
                            await self._resumed.wait()
                        self._last_frame_mono = time.monotonic()
                        await self._on_frame(ws, frame)
            except ConnectionClosedOK:   # a close frame: 1000 ends the capture, 1001 etc. reconnect
                pass
            except (OSError, WebSocketException) as exc:
                self._ws, self.connected = None, False
                if not self._silent:
                    await self._connection_lost(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._backoff(1))
                continue
            finally:
                self._ws, self.connected = None, False
                if watcher is not None:
                    watcher.cancel()
            if ws.close_code == 1000 and not self._silent:   # the server ended the feed on purpose: done
                # capture ends with it, and the order book with capture (producer gone): the last
                # books stand as they were, not invalidated
                self._marker("disconnect", NORMAL_CLOSE)
                self.ended = "feed closed"
                return
            if not self._silent:   # (a silence was dealt with when it was noticed)
                await self._connection_lost(f"closed: code {ws.close_code} {ws.close_reason or ''}".strip())
            await asyncio.sleep(self._backoff(1))

    def _max_size(self) -> int:
        # Above the parser's limit so an oversized frame reaches the parser, which counts it and
        # the raw log keeps it (websockets would close the connection instead, losing what follows);
        # still bounded, so a hostile peer cannot make capture buffer without end.
        return max(4 * self.parser.max_frame_bytes, 64 << 20)

    def _backoff(self, attempt: int) -> float:
        # exponential with full jitter in [0.5, 1.5) x: many captures dropped at once by one venue
        # outage do not all come back in the same instant
        base = min(self.options.max_backoff_s, self.options.backoff_s * (2 ** (attempt - 1)))
        return base * (0.5 + random.random())

    async def _on_frame(self, ws, frame: bytes | str) -> None:
        recv_ns = time.time_ns()
        counters = self.counters
        counters.messages += 1
        counters.bytes += len(frame)
        if self.wslog is not None:
            self.wslog.write(recv_ns, self.exchange_id, frame)
        batch = RecordBatch()
        self.parser.feed(frame, batch, recv_ns)
        if len(batch):
            await self.writer.write(batch)
            if counters.latency is not None:
                counters.latency.record_value(max(1, (time.time_ns() - recv_ns) // 1000))
        if self.parser.resync_needed:
            await self._send_resubscribes(ws)

    async def _send_resubscribes(self, ws) -> None:
        """Resubscribe the book channel of the symbols whose books need a fresh snapshot."""
        symbols = sorted(self.parser.take_resync())
        if not symbols:
            return
        for out in resubscribe_frames(self.options.feed, symbols):
            self._marker("subscribe", out)
            await ws.send(out)
        self.counters.resubscribes += len(symbols)


DROP_S = 0.3   # how long a "drop" fault keeps the synthetic market's connection down
# A batch's first message waits for the whole batch to be made before its ring write. With the
# Python market (~5 µs a message) rate // 100 (10,000 at 1 M/s) held it back ~50 ms; the cap of 256
# bounded that (bench/README: pipeline_bench, same-run A/B). The compiled market makes 256 in ~55 µs
# (0.21 µs a message, ~13 µs of it per call) and at 1 M messages/s the readers then cost 0.14-0.23
# µs/record (~70 % of core 1 in all): the cap costs no rate, so it stays for the latency.
MARKET_BATCH = 256


class SyntheticCapture:
    """The synthetic feed at a paced rate into the rings, in this thread; answers the control plane
    between rounds: ``pause`` stops generating (the stream resumes where it stopped, at the same
    pace: no burst, no gap), ``resnapshot`` writes a fresh snapshot of the symbol's book as the
    records written so far built it, ``stop`` ends the run like SIGTERM."""

    exchange = "synthetic"
    has_books = True
    connected = True   # no socket: "connected" while it runs

    def __init__(self, writer: RingWriter, *, rate: float, symbols: int, seed: int, seconds: float | None,
                 stop_flag: list[bool], symbol_id: SymbolIdFn | None = None,
                 stats: StatsFeed | None = None, market: bool = False) -> None:
        from .synthetic import SyntheticFeed
        from .synthetic_market import SyntheticMarket
        make = SyntheticMarket if market else SyntheticFeed
        self.feed = make(symbols, seed, symbol_id=symbol_id if symbol_id is not None else host_registry_or_memory(),
                         events_per_second=rate)
        self.market = market
        self.writer, self.counters = writer, writer.counters
        self.rate, self.seconds, self.stop_flag, self.stats = rate, seconds, stop_flag, stats
        self.control = None
        self.paused = False
        self.ended = ""
        self._snapshots_due: list[int] = []
        self._down_until = 0.0       # a dropped connection (fault "drop"): no level record until then
        self._was_down = False
        self.faults_injected = 0

    @property
    def symbols(self) -> list[str]:
        return list(self.feed.names)

    def symbol_ids(self) -> dict[str, int]:
        return {name: int(sid) for name, sid in zip(self.feed.names, self.feed.symbol_ids)}

    def symbol_for_id(self, symbol_id: int) -> str | None:
        return next((n for n, sid in self.symbol_ids().items() if sid == symbol_id), None)

    def live_counters(self) -> dict:
        return self.counters.as_dict()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self) -> None:
        self.ended = "stop requested"
        self.stop_flag[0] = True

    def resnapshot(self, symbol: str) -> dict:
        k = self.feed.names.index(symbol)
        self._snapshots_due.append(k)   # written by the loop, after the records already handed out
        self.counters.resnapshots += 1
        return {"symbol_id": int(self.feed.symbol_ids[k]), "sent": True}

    def inject_fault(self, kind: str, symbol: str | None = None) -> dict:
        """The market only (``--market``): ``gap`` loses a few of one symbol's messages, ``corrupt``
        hands out one wrong level, ``drop`` loses the connection for DROP_S (every book is
        invalidated, its level messages are lost meanwhile, the first after it carries gap-before).
        The order book is to find each and ask for a resnapshot."""
        from .synthetic_market import FAULT_KINDS
        if not self.market:
            raise ValueError("faults are injected into the synthetic market only (capture --market)")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        names = self.feed.names
        if symbol is not None and symbol not in names:
            raise ValueError(f"symbol {symbol!r} is not one of this capture's ({', '.join(names)})")
        injected_ns = time.time_ns()
        if kind == "drop":
            hit = list(range(len(names)))
            self._down_until = time.monotonic() + DROP_S
            self.counters.reconnects += 1
            self._write_invalidates(hit)
        else:
            default = {"gap": 1, "corrupt": 2}[kind] % len(names)
            hit = [names.index(symbol) if symbol is not None else default]
            self.feed.inject(kind, hit[0])
        self.faults_injected += 1
        return {"kind": kind, "symbols": [names[k] for k in hit],
                "symbol_ids": [int(self.feed.symbol_ids[k]) for k in hit], "injected_ns": injected_ns}

    def _write_invalidates(self, hit: list[int]) -> None:
        """What capture writes when it can no longer vouch for a book (DESIGN.md, action 5)."""
        from shmpipe import records
        action = getattr(records, "ACTION_INVALIDATE", None)
        if action is None:      # an order book that predates it: the gap-before flags after the drop say it
            return
        out = np.zeros(len(hit), LEVEL_UPDATE)
        out["timestamp_ns"] = time.time_ns()
        out["symbol_id"] = self.feed.symbol_ids[hit]
        out["action"] = action
        out["source"] = 7
        out["flags"] = 16      # each is a message of its own
        self.writer.write_arrays(np.empty(0, TICK), out, lambda: self.stop_flag[0])

    def _write_snapshots(self) -> None:
        if time.monotonic() < self._down_until:
            return          # asked for while disconnected: sent once the connection is back
        while self._snapshots_due:
            levels = self.feed.snapshot(self._snapshots_due.pop(0))
            self.writer.write_arrays(np.empty(0, TICK), levels, lambda: self.stop_flag[0])

    def run(self) -> None:
        writer, rate, stop_flag, stats, control = self.writer, self.rate, self.stop_flag, self.stats, self.control
        start = time.monotonic()
        deadline = None if self.seconds is None else start + self.seconds
        sent = 0
        chunk = max(1, min(65536, int(rate // 100) or 1))   # ~10 ms of records per ring write
        if self.market:
            chunk = min(chunk, MARKET_BATCH)
        while not stop_flag[0]:
            if control is not None:
                control.poll(0)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if self.paused:
                paused_at = now
                while self.paused and not stop_flag[0] and (deadline is None or time.monotonic() < deadline):
                    if control is not None:
                        control.poll(5)   # waits for the next request up to 5 ms
                    else:
                        time.sleep(0.005)
                    if stats is not None:
                        stats.maybe_publish()
                start += time.monotonic() - paused_at   # the pace goes on from where it stopped
                continue
            if self._snapshots_due:
                self._write_snapshots()
            due = int((now - start) * rate) - sent
            if due <= 0:
                time.sleep(min(0.005, 1.0 / rate))
                continue
            n = min(due, chunk)
            down = now < self._down_until
            if self._was_down and not down:       # reconnected: what was sent meanwhile is lost
                self.feed.lose_everything_until_snapshot()
                self._was_down = False
            ticks, levels = self.feed.next_batch(n)
            if down:      # the market moved on; its level messages never arrived (ticks are kept:
                levels = levels[:0]      # verify's sequence is the demo's loss check)
                self._was_down = True
            writer.write_arrays(ticks, levels, lambda: stop_flag[0])
            writer.counters.messages += n
            sent += n
            if stats is not None:
                stats.maybe_publish()
        if stats is not None:
            stats.publish()


def run_synthetic(writer: RingWriter, *, rate: float, symbols: int, seed: int, seconds: float | None,
                  stop_flag: list[bool], symbol_id: SymbolIdFn | None = None,
                  stats: StatsFeed | None = None) -> None:
    """Paced synthetic records: the events due by now (rate per second) every round."""
    SyntheticCapture(writer, rate=rate, symbols=symbols, seed=seed, seconds=seconds, stop_flag=stop_flag,
                     symbol_id=symbol_id, stats=stats).run()


@dataclass
class ReplayResult:
    counters: Counters
    entries: int = 0
    markers: int = 0
    unknown_exchange: int = 0
    stops: list[str] = field(default_factory=list)
    per_exchange: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        out = self.counters.as_dict()
        out.update(entries=self.entries, markers=self.markers, unknown_exchange=self.unknown_exchange,
                   per_exchange={EXCHANGE_NAMES.get(k, str(k)): v for k, v in sorted(self.per_exchange.items())},
                   stopped=self.stops)
        return out


def replay(paths: Iterable[str], writer: RingWriter, *, speed: float = 0.0,
           symbol_id: SymbolIdFn | None = None) -> ReplayResult:
    """Every entry of the captures, merged by receive time, through the venue parsers into the rings.
    ``speed`` 0: as fast as possible; X > 0: the recorded spacing divided by X."""
    from shmpipe.wslog import merge_wslogs

    symbol_id = symbol_id if symbol_id is not None else host_registry_or_memory()
    result = ReplayResult(writer.counters)
    parsers: dict[int, FeedParser] = {}
    connects: Counter = Counter()
    merge = merge_wslogs(list(paths))
    first_ns = start = None
    batch = RecordBatch()
    for entry in merge:
        if speed > 0:
            if first_ns is None:
                first_ns, start = entry.recv_ns, time.monotonic()
            delay = start + (entry.recv_ns - first_ns) / 1e9 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        result.entries += 1
        parser = parsers.get(entry.exchange_id)
        if parser is None and entry.exchange_id in EXCHANGE_NAMES:
            parser = parsers[entry.exchange_id] = PARSERS[EXCHANGE_NAMES[entry.exchange_id]](symbol_id)
        if entry.marker is not None:
            result.markers += 1
            # the live run reset its parser after every reconnect, i.e. at each connect but the first
            if entry.marker == "connect" and parser is not None:
                connects[entry.exchange_id] += 1
                if connects[entry.exchange_id] > 1:
                    parser.reset_connection()
                    writer.counters.reconnects += 1
            elif entry.marker == "disconnect" and parser is not None and \
                    not bytes(entry.payload).startswith(NORMAL_CLOSE.encode()):
                # the live run invalidated this connection's books here
                if parser.invalidate_all(batch, entry.recv_ns):
                    writer.write_blocking(batch)
            continue
        if parser is None:
            result.unknown_exchange += 1
            continue
        result.per_exchange[entry.exchange_id] += 1
        writer.counters.messages += 1
        writer.counters.bytes += len(entry.payload)
        parser.feed(entry.payload, batch, entry.recv_ns)
        if len(batch):
            writer.write_blocking(batch)
    result.stops = [str(s) for s in merge.stops]
    for parser in parsers.values():
        parser.bad_input.flush()
        writer.counters.parse_errors.update(parser.errors)
        writer.counters.gaps.update(parser.gap_counts)
        writer.counters.by_channel.update({f"{parser.exchange}.{k}": v for k, v in parser.messages.items()})
        writer.counters.invalidates += parser.invalidates_written
    return result


def install_stop_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> None:
    """SIGTERM / SIGINT end the capture like --seconds does: counters printed, exit 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
