"""``shmpipe replay --report``: what a capture lost, read from its .wslog alone (no rings).

Per exchange and symbol: sequence / heartbeat / trade-id gaps the venue parsers detect (the same
parsers, fed the same receive times as the live run, so the report says what the live consumers
were flagged about), disconnect spans from the disconnect/connect markers, stale periods (a
channel/symbol silent longer than ``stale_after_s`` in receive time) and parse errors by kind.

Gaps of kind "reconnect" are left out of the gap lists: the disconnect span says the same thing
with its bounds. Connection-wide gaps (a skipped Coinbase sequence_num) are listed under symbol "*".
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .feed_parser import FeedParser
from .process import EXCHANGE_NAMES, PARSERS
from .symbol_ids import InMemorySymbolIds

ALL = "*"   # the symbol key of a connection-wide gap or channel
# Replies to a subscribe (one per subscribe message sent), not streams: their silence means nothing.
CONTROL_CHANNELS = {"subscriptions", "status"}
_MISSING = re.compile(r"(\d+) message\(s\) missing")


class _Touches:
    """Stands in for the parser's StalenessWatchdog: the parser calls touch(key) with key
    (exchange, channel, symbol) on every message of that channel; silences are measured in receive
    time (the capture's clock), not in the replaying machine's."""

    def __init__(self, stale_after_ns: int) -> None:
        self.stale_after_ns = stale_after_ns
        self.now_ns = 0
        self.last: dict[Hashable, int] = {}
        self.count: Counter = Counter()
        self.periods: list[tuple[Hashable, int, int | None]] = []

    def touch(self, key: Hashable) -> None:
        if key[1] in CONTROL_CHANNELS:
            return
        last = self.last.get(key)
        if last is not None and self.now_ns - last > self.stale_after_ns:
            self.periods.append((key, last, self.now_ns))
        self.last[key] = self.now_ns
        self.count[key] += 1

    def finish(self, end_ns: int) -> None:
        """Channels silent from their last message to the end of the capture (end None: still silent).
        A channel heard once (a subscription or status reply) is a one-shot answer, not a stream
        that went quiet, so only channels with two or more messages count here."""
        for key, last in self.last.items():
            if self.count[key] > 1 and end_ns - last > self.stale_after_ns:
                self.periods.append((key, last, None))


@dataclass
class _Exchange:
    name: str
    parser: FeedParser
    touches: _Touches
    messages: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    connects: int = 0
    disconnects: list[dict] = field(default_factory=list)
    gaps: list[tuple[int, object]] = field(default_factory=list)   # (recv_ns, Gap)
    seen_gaps: int = 0


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def gap_report(paths: Iterable[str], *, stale_after_s: float = 5.0) -> dict:
    """The report as one JSON-able object (shape in README "Capture: gap report")."""
    from shmpipe.wslog import merge_wslogs

    stale_ns = int(stale_after_s * 1e9)
    symbol_id = InMemorySymbolIds()   # ids are not reported; the host registry is left alone
    exchanges: dict[int, _Exchange] = {}
    unknown = Counter()
    merge = merge_wslogs(list(paths))
    capture_end = 0

    def exchange(eid: int) -> _Exchange | None:
        ex = exchanges.get(eid)
        if ex is None and eid in EXCHANGE_NAMES:
            touches = _Touches(stale_ns)
            parser = PARSERS[EXCHANGE_NAMES[eid]](symbol_id, watchdog=touches)
            ex = exchanges[eid] = _Exchange(EXCHANGE_NAMES[eid], parser, touches)
        return ex

    for entry in merge:
        capture_end = max(capture_end, entry.recv_ns)
        ex = exchange(entry.exchange_id)
        if ex is None:
            unknown[entry.exchange_id] += 1
            continue
        if entry.marker is not None:
            if entry.marker == "disconnect":
                ex.disconnects.append({"start_ns": entry.recv_ns, "end_ns": None,
                                       "reason": entry.payload.decode("utf-8", "replace")})
            elif entry.marker == "connect":
                ex.connects += 1
                if ex.connects > 1:
                    ex.parser.reset_connection()   # as the live run did (process.replay)
                if ex.disconnects and ex.disconnects[-1]["end_ns"] is None:
                    ex.disconnects[-1]["end_ns"] = entry.recv_ns
            continue
        ex.messages += 1
        ex.first_ns = entry.recv_ns if ex.first_ns is None else ex.first_ns
        ex.last_ns = entry.recv_ns
        ex.touches.now_ns = entry.recv_ns
        ex.parser.parse(entry.payload, entry.recv_ns)
        total = sum(ex.parser.gap_counts.values())
        if total != ex.seen_gaps:
            new = min(total - ex.seen_gaps, len(ex.parser.gaps))
            ex.gaps += [(entry.recv_ns, g) for g in list(ex.parser.gaps)[-new:]]
            ex.seen_gaps = total

    out: dict = {"stale_after_s": stale_after_s, "exchanges": {},
                 "stopped": [str(s) for s in merge.stops],
                 "unknown_exchange_entries": {str(k): v for k, v in sorted(unknown.items())}}
    for eid, ex in sorted(exchanges.items()):
        ex.parser.bad_input.flush()
        ex.touches.finish(capture_end)
        symbols: dict[str, dict] = {}

        def sym(name: str | None) -> dict:
            return symbols.setdefault(name or ALL, {"gaps": [], "stale": []})
        for recv_ns, gap in ex.gaps:
            if gap.kind == "reconnect":
                continue
            found = _MISSING.search(gap.detail)
            sym(gap.symbol)["gaps"].append({"kind": gap.kind, "at_ns": recv_ns, "at": _seconds(recv_ns),
                                            "missing": int(found.group(1)) if found else None,
                                            "detail": gap.detail})
        for (_exchange, channel, symbol), start, end in sorted(ex.touches.periods, key=lambda p: p[1]):
            stop = capture_end if end is None else end
            sym(symbol)["stale"].append({"channel": channel, "start_ns": start, "end_ns": end,
                                         "start": _seconds(start), "end": _seconds(end),
                                         "silent_s": (stop - start) / 1e9, "until_end": end is None})
        for span in ex.disconnects:
            span["start"], span["end"] = _seconds(span["start_ns"]), _seconds(span["end_ns"])
            span["duration_s"] = None if span["end_ns"] is None else (span["end_ns"] - span["start_ns"]) / 1e9
        out["exchanges"][ex.name] = {
            "exchange_id": eid, "messages": ex.messages, "first_ns": ex.first_ns, "last_ns": ex.last_ns,
            "connections": ex.connects, "disconnects": ex.disconnects,
            "parse_errors": dict(sorted(ex.parser.errors.items())),
            "gap_counts": {k: v for k, v in sorted(ex.parser.gap_counts.items()) if k != "reconnect"},
            "symbols": dict(sorted(symbols.items())),
        }
    return out


def format_report(report: dict) -> list[str]:
    """The report as text lines: one per finding, grouped by exchange and symbol."""
    lines = [f"stale after: {report['stale_after_s']} s"]
    for name, ex in report["exchanges"].items():
        errors = ", ".join(f"{k}={v}" for k, v in ex["parse_errors"].items()) or "none"
        lines.append(f"{name}: {ex['messages']} messages, {ex['connections']} connection(s), "
                     f"parse errors: {errors}")
        for span in ex["disconnects"]:
            end = "end of capture" if span["end_ns"] is None else f"{span['end']:.6f}"
            dur = "open" if span["duration_s"] is None else f"{span['duration_s']:.3f} s"
            lines.append(f"  disconnect {span['start']:.6f} -> {end} ({dur}): {span['reason']}")
        for symbol, found in ex["symbols"].items():
            for gap in found["gaps"]:
                missing = "" if gap["missing"] is None else f", {gap['missing']} missing"
                lines.append(f"  {symbol} gap ({gap['kind']}{missing}) at {gap['at']:.6f}: {gap['detail']}")
            for st in found["stale"]:
                end = "end of capture" if st["end_ns"] is None else f"{st['end']:.6f}"
                lines.append(f"  {symbol} stale {st['channel']} {st['start']:.6f} -> {end} "
                             f"({st['silent_s']:.3f} s silent)")
        if not ex["disconnects"] and not ex["symbols"]:
            lines.append("  no gaps, disconnects or stale periods")
    for stop in report["stopped"]:
        lines.append(f"stopped early: {stop}")
    return lines
