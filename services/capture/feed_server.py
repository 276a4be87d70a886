"""A local websocket server that plays recorded frames (``.jsonl``: one raw frame per line) to
subscribers, at the recorded pace or as fast as possible, with faults injected on request.

Each connecting client gets nothing until its first message (its subscribe, whatever it says), then
every line of the file as one text frame, then a normal close (1000). Tests and the demo point a feed
handler at it instead of the exchange, so nothing in them reaches the internet.

Pacing (``speed`` > 0): a frame's time is the first RFC 3339 timestamp in its line -- Coinbase: the
envelope ``timestamp``; Kraken: ``timestamp`` of book/ticker/trade data, ``time_in`` of acks; Alpaca:
the first item's ``t``. A line without one (Kraken's status, heartbeats and snapshots) goes out right
after the line before it, and time never runs backwards (Alpaca's two connections interleave).
Frame i is sent (t_i - t_first) / speed after the subscribe arrived; ``speed`` 0 never waits.

Several files: ``/1``, ``/2``, ... serve the files in command-line order, ``/<name>`` the file whose
name without extension is <name> (``/kraken_v2``), and ``/`` the first one.

Resubscribes (Kraken and Coinbase recordings): the server reads what the client sends while it
plays. A client's first subscribe of a book channel is answered by the recording itself (its acks and
snapshots); a later subscribe of a symbol's book (after an unsubscribe or not) is answered as the
venue would, from the book as the recording has been played so far: the ack and a fresh snapshot
(see ``feed_books``); between an unsubscribe and the subscribe, that symbol's book lines are
withheld. Coinbase lines after an inserted or withheld message go out renumbered, so the
connection's ``sequence_num`` stays consecutive.
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

from . import feed_books
from .feed_books import corrupt_level, detect_venue
from .timestamps import rfc3339_ns

log = logging.getLogger("shmpipe.feed_server")

_TIMESTAMP = re.compile(rb'"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d))"')


class FeedFileError(Exception):
    """A recording that cannot be served; the message is one line for the user."""


@dataclass(frozen=True)
class Faults:
    """Faults injected into a connection; frame numbers are 1-based line numbers of the file."""
    disconnect_after: int | None = None   # drop the TCP connection, no close frame, after N frames sent
    drop: frozenset[int] = frozenset()    # these lines are never sent: a gap
    malformed: frozenset[int] = frozenset()  # these lines are sent cut in half: invalid JSON
    stall_after: int | None = None        # after N frames sent, go silent with the socket left open
    connections: int = 0                  # faults apply to the first K connections per file; 0 = all
    corrupt: frozenset[int] = frozenset()  # these book lines are sent with one level's size altered

    def any(self) -> bool:
        return bool(self.disconnect_after or self.drop or self.malformed or self.stall_after or self.corrupt)


@dataclass
class Recording:
    path: Path
    frames: list[bytes]
    times_ns: list[int | None]           # each frame's recorded time, None where the line has none
    binary: frozenset[int] = frozenset()  # 0-based frames that are not UTF-8: sent as binary frames
    connections: int = 0
    venue: str | None = None              # "kraken", "coinbase", "alpaca": how resubscribes are answered

    @property
    def name(self) -> str:
        return self.path.name.split(".")[0]


def frame_time_ns(line: bytes) -> int | None:
    match = _TIMESTAMP.search(line)
    if match is None:
        return None
    try:
        return rfc3339_ns(match.group(1).decode())
    except ValueError:
        return None


def load_recording(path: str | Path) -> Recording:
    """Read a .jsonl recording (blank lines are skipped). Raises FeedFileError with a one-line message."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FeedFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise FeedFileError(f"not a file: {path}") from None
    except OSError as exc:
        raise FeedFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    frames = [line.rstrip(b"\r") for line in data.split(b"\n")]
    frames = [f for f in frames if f]
    binary = set()
    for index, frame in enumerate(frames):
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError:
            binary.add(index)   # a text frame cannot carry it; replaying it as bytes keeps the fault
    return Recording(path, frames, [frame_time_ns(f) for f in frames], frozenset(binary),
                     venue=detect_venue(frames))


def check_corruptible(recordings: list[Recording], lines: frozenset[int]) -> None:
    """Each --corrupt line must be a book message with a level in at least one recording."""
    for number in sorted(lines):
        if not any(number <= len(r.frames) and corrupt_level(r.frames[number - 1]) is not None
                   for r in recordings):
            names = ", ".join(r.path.name for r in recordings)
            raise FeedFileError(f"--corrupt {number}: line {number} of {names} is not a book message "
                                "with a level to alter")


def cut_in_half(frame: bytes) -> bytes:
    """The first half of a frame, ending on a UTF-8 character boundary (still a valid text frame)."""
    return frame[: len(frame) // 2].decode("utf-8", errors="ignore").encode()


@dataclass
class ConnectionReport:
    path: str
    recording: str
    frames_sent: int
    ended: str           # "complete", "disconnect fault", "stalled", "client closed"
    snapshots_sent: int = 0   # fresh snapshots answering mid-stream resubscribes


@dataclass
class FeedServer:
    recordings: list[Recording]
    speed: float = 0.0
    faults: Faults = field(default_factory=Faults)
    host: str = "127.0.0.1"
    port: int = 0
    exit_after: int | None = None   # stop after this many connections have finished
    reports: list[ConnectionReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.recordings:
            raise ValueError("no recordings to serve")
        if not self.speed >= 0:
            raise ValueError(f"speed must be >= 0, got {self.speed!r}")
        self._done = asyncio.Event()
        self._server = None

    def route(self, path: str) -> Recording | None:
        key = path.split("?")[0].strip("/")
        if not key:
            return self.recordings[0]
        if key.isdigit() and 1 <= int(key) <= len(self.recordings):
            return self.recordings[int(key) - 1]
        for rec in self.recordings:
            if rec.name == key or rec.path.name == key:
                return rec
        return self.recordings[0] if len(self.recordings) == 1 else None

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0). Raises OSError if the address is taken."""
        # compression off: a local replay is CPU-bound, and the exchanges' frames are compared byte for byte
        self._server = await serve(self._handle, self.host, self.port, compression=None, max_size=None,
                                   ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def run(self) -> None:
        """Serve until ``exit_after`` connections finished (forever without it) or ``stop()``."""
        if self._server is None:
            await self.start()
        try:
            await self._done.wait()
        finally:
            self._server.close()
            await self._server.wait_closed()

    def stop(self) -> None:
        self._done.set()

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        rec = self.route(path)
        if rec is None:
            names = ", ".join(f"/{i} or /{r.name}" for i, r in enumerate(self.recordings, 1))
            await ws.close(1008, f"no recording at {path}; try {names}"[:120])
            return
        rec.connections += 1
        faulty = self.faults.any() and (not self.faults.connections or rec.connections <= self.faults.connections)
        faults = self.faults if faulty else Faults()
        report = ConnectionReport(path, rec.path.name, 0, "complete")
        session = None
        if rec.venue in ("kraken", "coinbase"):
            session = feed_books.Resubscriptions(rec.frames, rec.times_ns, rec.venue)
        inbox: asyncio.Queue = asyncio.Queue()
        reader = None
        try:
            first = await ws.recv()   # the subscribe: playing starts once it arrived
            if session is not None:
                session.answer(first, 0)   # notes what it subscribed; the recording answers it
            reader = asyncio.create_task(self._read_client(ws, inbox))
            await self._play(ws, rec, faults, report, session, inbox)
        except Exception as exc:  # noqa: BLE001 -- the client left (closed, reset): report, keep serving
            report.ended = f"client closed ({type(exc).__name__})"
        finally:
            if reader is not None:
                reader.cancel()
            if session is not None:
                report.snapshots_sent = session.snapshots_sent
            self.reports.append(report)
            answered = f", {report.snapshots_sent} resubscribe snapshot(s)" if report.snapshots_sent else ""
            log.info("%s %s: %d frames sent%s, %s", path, rec.path.name, report.frames_sent, answered,
                     report.ended)
            if self.exit_after is not None and len(self.reports) >= self.exit_after:
                self.stop()

    @staticmethod
    async def _read_client(ws: ServerConnection, inbox: asyncio.Queue) -> None:
        """Everything the client sends after its first message, for ``_play`` to answer in order."""
        try:
            async for message in ws:
                inbox.put_nowait(message)
        except Exception as exc:  # noqa: BLE001 -- the connection ended; _play finds out when it sends
            log.debug("client reader ended: %s", exc)

    async def _answer(self, ws: ServerConnection, session, message, position: int, report) -> None:
        if session is None:
            return
        for frame in session.answer(message, position):
            await ws.send(frame, text=True)
            report.frames_sent += 1

    async def _play(self, ws: ServerConnection, rec: Recording, faults: Faults, report: ConnectionReport,
                    session=None, inbox: asyncio.Queue | None = None) -> None:
        loop = asyncio.get_running_loop()
        inbox = inbox if inbox is not None else asyncio.Queue()
        start, first_ns, last_ns = loop.time(), None, None
        for index, frame in enumerate(rec.frames):
            number = index + 1
            while not inbox.empty():   # the client's messages are answered between lines, in order
                await self._answer(ws, session, inbox.get_nowait(), index, report)
            if number in faults.drop:
                continue
            if self.speed > 0:
                t = rec.times_ns[index]
                if t is not None:
                    last_ns = t if last_ns is None else max(last_ns, t)
                    first_ns = last_ns if first_ns is None else first_ns
                if last_ns is not None:
                    while True:   # wait for the frame's time, answering the client meanwhile
                        delay = start + (last_ns - first_ns) / 1e9 / self.speed - loop.time()
                        if delay <= 0:
                            break
                        try:
                            message = await asyncio.wait_for(inbox.get(), delay)
                        except TimeoutError:
                            break
                        await self._answer(ws, session, message, index, report)
            else:
                await asyncio.sleep(0)   # lets the client's messages in: a send alone may never yield
            if session is not None:
                frame = session.outgoing(frame)
                if frame is None:   # its book is unsubscribed on this connection
                    continue
            if number in faults.corrupt:
                frame = corrupt_level(frame) or frame
            if number in faults.malformed:
                frame = cut_in_half(frame)
            await ws.send(frame, text=index not in rec.binary)
            report.frames_sent += 1
            if faults.disconnect_after is not None and report.frames_sent >= faults.disconnect_after:
                report.ended = "disconnect fault"
                ws.transport.abort()   # no close frame: what a dropped network looks like to the client
                return
            if faults.stall_after is not None and report.frames_sent >= faults.stall_after:
                report.ended = "stalled"
                await ws.wait_closed()   # silent, socket open, until the client gives up
                return
        await ws.close()


async def serve_files(paths: list[str], *, port: int, host: str = "127.0.0.1", speed: float = 0.0,
                      faults: Faults = Faults(), exit_after: int | None = None, ready=None) -> FeedServer:
    """Load, listen, call ``ready(server)`` once listening, serve until done. Raises FeedFileError/OSError."""
    recordings = [load_recording(p) for p in paths]
    check_corruptible(recordings, faults.corrupt)
    server = FeedServer(recordings, speed=speed, faults=faults, host=host, port=port, exit_after=exit_after)
    await server.start()
    if ready is not None:
        ready(server)
    await server.run()
    return server


def main_logging() -> None:
    """One line per finished connection on stderr; websockets' own per-connection lines are noise here."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="feed-server: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
