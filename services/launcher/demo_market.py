"""What the demo sees of the market itself, beside each stage's counters: the order books (a reader
of its own on the books ring), the bars and features on the signals bus, and the faults it asks
capture to inject. Every figure here is counted from what a consumer would read, not taken from the
stage that produced it, so the summary can tell a working pipeline from a hollow one.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from shmpipe.records import BOOK_FLAG_INVALID, ORDERBOOK_ENTRY

BAR_TOPIC = "market.bar."
FEATURES_TOPIC = "signal.features"
# When each fault goes in, as a share of the run: apart enough that one is repaired before the next.
FAULT_SCHEDULE = (("gap", 0.2), ("corrupt", 0.45), ("drop", 0.7))
MIN_VALID_SHARE = 0.999       # of order-book entries, after each book's first valid one
MAX_LATE_SHARE = 0.001        # of trades, for their bar
BAR_GRACE_S = 0.5             # bars' default --grace: a bar is out this long after its period ends


@dataclass
class BookState:
    entries: int = 0
    invalid: int = 0
    synced: bool = False           # a valid entry was seen: entries before it are the start's
    entries_synced: int = 0
    invalid_synced: int = 0
    last: tuple | None = None      # (best bid, best ask, flags, time ns)
    changes: list = field(default_factory=list)   # (time ns, invalid) at every change of validity


class BooksWatch:
    """Reads every OrderbookEntry the order book writes (it joins at the oldest record)."""

    def __init__(self, ring_name: str) -> None:
        import shmpipe

        self.ring = shmpipe.Ring.open(ring_name, ORDERBOOK_ENTRY)
        self.consumer = self.ring.consumer(start="oldest")
        names = ORDERBOOK_ENTRY.names
        # the time the order book wrote an entry where the layout has it (v2), else the exchange time
        # of its last update (the synthetic market stamps events with the time they were made)
        self.clock = "published_ns" if "published_ns" in names else "timestamp_ns"
        self.books: dict[int, BookState] = {}

    def poll(self) -> None:
        while True:
            got = self.consumer.read(4096, 0)
            if not len(got):
                return
            invalid = ((got["flags"] & BOOK_FLAG_INVALID) != 0).tolist()
            for sid, bad, t, flags, bids, asks in zip(got["symbol_id"].tolist(), invalid, got[self.clock].tolist(),
                                                      got["flags"].tolist(), got["bids"][:, 0, 0].tolist(),
                                                      got["asks"][:, 0, 0].tolist()):
                b = self.books.get(sid)
                if b is None:
                    b = self.books[sid] = BookState()
                b.entries += 1
                b.invalid += bad
                if not bad:
                    b.synced = True
                if b.synced:
                    b.entries_synced += 1
                    b.invalid_synced += bad
                if not b.changes or b.changes[-1][1] != bad:
                    b.changes.append((t, bad))
                b.last = (bids, asks, flags, t)
            if len(got) < 4096:
                return

    def close(self) -> None:
        self.consumer.close()
        self.ring.close()

    def figures(self) -> dict[str, Any]:
        entries = sum(b.entries for b in self.books.values())
        synced = sum(b.entries_synced for b in self.books.values())
        invalid_synced = sum(b.invalid_synced for b in self.books.values())
        return {
            "entries_read": entries,
            "entries_invalid": sum(b.invalid for b in self.books.values()),
            "entries_before_first_valid": entries - synced,
            "valid_share": round((synced - invalid_synced) / synced, 6) if synced else None,
            "symbols": len(self.books),
            "symbols_never_valid": sum(not b.synced for b in self.books.values()),
        }

    def fault_times(self, symbol_ids: list[int], injected_ns: int) -> tuple[float | None, float | None]:
        """Seconds from the injection until every hit symbol's book was flagged invalid (detected),
        and until every one was valid again after that (repaired); None when that never happened."""
        flagged, fixed = [], []
        for sid in symbol_ids:
            b = self.books.get(sid)
            changes = [c for c in (b.changes if b else []) if c[0] >= injected_ns]
            bad_at = next((i for i, c in enumerate(changes) if c[1]), None)
            if bad_at is None:
                return None, None
            flagged.append(changes[bad_at][0])
            fixed.append(next((c[0] for c in changes[bad_at:] if not c[1]), None))
        if not flagged:
            return None, None
        detected = round((max(flagged) - injected_ns) / 1e9, 4)
        repaired = None if None in fixed else round((max(fixed) - injected_ns) / 1e9, 4)
        return detected, repaired


class SignalsWatch:
    """Every bar and features message on the pipeline's signals bus, per symbol. A bar counts for
    its period only if it says it is complete (bars saw the whole period); partial ones (the period
    was under way when bars started, or the run ended inside it) are counted apart."""

    def __init__(self, sub=None) -> None:
        if sub is None:
            from shmpipe import signals

            sub = signals.SignalSubscriber(topics=(BAR_TOPIC, FEATURES_TOPIC))
        self.sub = sub
        self.bars: dict[tuple[int, str], set[int]] = {}     # (symbol_id, timeframe) -> bar starts
        self.complete_bars: dict[tuple[int, str], set[int]] = {}   # the same, complete bars only
        self.partial_why: dict[str, dict[str, int]] = {}   # timeframe -> reason ("start", "end", ...) -> bars
        self.last_bar: dict[int, dict] = {}                 # symbol_id -> its latest complete bar (shortest timeframe)
        self.features: dict[int, int] = {}                  # symbol_id -> messages
        self.last_features: dict[int, dict] = {}
        self.names: dict[int, str] = {}

    def poll(self) -> None:
        while True:
            s = self.sub.recv(timeout=0)
            if s is None:
                return
            d = s.data
            sid = d.get("symbol_id")
            if not isinstance(sid, int):
                continue
            if d.get("symbol"):
                self.names[sid] = d["symbol"]
            if s.topic.startswith(BAR_TOPIC):
                key = (sid, d.get("timeframe", ""))
                self.bars.setdefault(key, set()).add(d.get("start_ns", 0))
                if d.get("complete") is not True:      # a bar that does not say so is not trusted whole
                    why = self.partial_why.setdefault(key[1], {})
                    for reason in d.get("partial") or ["unsaid"]:
                        why[reason] = why.get(reason, 0) + 1
                    continue
                self.complete_bars.setdefault(key, set()).add(d.get("start_ns", 0))
                last = self.last_bar.get(sid)        # the live view's last bar: a whole one
                if last is None or d.get("end_ns", 0) - d.get("start_ns", 0) <= last["end_ns"] - last["start_ns"]:
                    self.last_bar[sid] = d
            else:
                self.features[sid] = self.features.get(sid, 0) + 1
                self.last_features[sid] = d

    def close(self) -> None:
        self.sub.close()

    def missing_bars(self, symbol_ids: list[int], timeframe: str, tf_ns: int, from_ns: int,
                     to_ns: int) -> dict[int, int]:
        """Per symbol, how many periods of ``timeframe`` wholly inside [from_ns, to_ns) had no
        complete bar."""
        first = -(-from_ns // tf_ns) * tf_ns
        starts = range(first, to_ns - tf_ns + 1, tf_ns)
        out = {}
        for sid in symbol_ids:
            got = self.complete_bars.get((sid, timeframe), set())
            n = sum(1 for s in starts if s not in got)
            if n:
                out[sid] = n
        return out

    def bars_published(self) -> dict[str, int]:
        """Per timeframe, every bar seen, complete or not."""
        return self._per_timeframe(self.bars)

    def bars_complete(self) -> dict[str, int]:
        return self._per_timeframe(self.complete_bars)

    def bars_partial(self) -> dict[str, int]:
        complete = self.bars_complete()
        return {tf: n - complete.get(tf, 0) for tf, n in self.bars_published().items()}

    @staticmethod
    def _per_timeframe(bars: dict[tuple[int, str], set[int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_sid, tf), starts in bars.items():
            out[tf] = out.get(tf, 0) + len(starts)
        return out


@dataclass
class Fault:
    kind: str
    at_s: float                     # when in the run (seconds after every stage was up)
    injected_ns: int | None = None
    symbol_ids: list[int] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self, books: BooksWatch | None) -> dict[str, Any]:
        detected = repaired = None
        if books is not None and self.injected_ns is not None:
            detected, repaired = books.fault_times(self.symbol_ids, self.injected_ns)
        out = {"kind": self.kind, "at_s": round(self.at_s, 3), "symbols": self.symbols,
               "detected_s": detected, "repaired_s": repaired}
        if self.error:
            out["error"] = self.error
        return out


class FaultPlan:
    """Asks capture (its control plane, command ``fault``) for each fault when its time comes."""

    def __init__(self, capture_service: str, seconds: float) -> None:
        self.capture_service = capture_service
        self.faults = [Fault(kind, share * seconds) for kind, share in FAULT_SCHEDULE]

    def due(self, elapsed: float, say) -> None:
        from shmpipe import control

        for f in self.faults:
            if f.injected_ns is None and not f.error and elapsed >= f.at_s:
                try:
                    got = control.request(self.capture_service, "fault", {"kind": f.kind}, timeout=2.0)
                except Exception as exc:  # noqa: BLE001 - no capture, a refusal: the fault is not done
                    f.error = str(exc)
                    say(f"fault {f.kind}: not injected: {exc}")
                    continue
                f.injected_ns = int(got["injected_ns"])
                f.symbol_ids = [int(x) for x in got.get("symbol_ids", [])]
                f.symbols = list(got.get("symbols", []))
                say(f"fault {f.kind} injected ({', '.join(f.symbols)})")


class MarketWatch:
    """The books, the bus and the faults of one demo run; ``judge`` adds their figures to the
    summary's stages and returns what is wrong."""

    def __init__(self, pipeline, *, faults: bool, seconds: float, say, judged: bool = True) -> None:
        """``judged``: the market is the synthetic one, whose books, bars and features must all be
        right; a recording (``--feed fixtures``, stamped in 2024) is only shown."""
        self.pipeline, self.with_faults, self.seconds, self.say = pipeline, faults, seconds, say
        self.judged = judged
        self.books: BooksWatch | None = None
        self.signals: SignalsWatch | None = None
        self.plan: FaultPlan | None = None
        self.symbol_ids: dict[str, int] = {}
        self.start_ns = self.end_ns = 0
        capture = pipeline.processes.get("capture")
        self.capture_service = capture.service if capture is not None else None

    def start(self) -> None:
        """Once every stage is up: the run's window opens."""
        from shmpipe import control

        ring = next((r.segment for r in self.pipeline.rings.values() if r.type == "orderbook_entry"), None)
        if ring is not None:
            try:
                self.books = BooksWatch(ring)
            except Exception as exc:  # noqa: BLE001 - the figures are missing, and said so
                self.say(f"cannot read the books ring {ring}: {exc}")
        try:
            self.signals = SignalsWatch()
        except Exception as exc:  # noqa: BLE001 - no pyzmq/msgspec: no bars or features to check
            self.say(f"cannot read the signals bus: {exc}")
        if self.capture_service is not None:
            try:
                self.symbol_ids = dict(control.request(self.capture_service, "status", timeout=2.0)["symbol_ids"])
            except Exception as exc:  # noqa: BLE001
                self.say(f"cannot ask capture for its symbols: {exc}")
            if self.with_faults:
                self.plan = FaultPlan(self.capture_service, self.seconds)
        self.start_ns = time.time_ns()

    def poll(self, elapsed: float) -> None:
        if self.books is not None:
            self.books.poll()
        if self.signals is not None:
            self.signals.poll()
        if self.plan is not None:
            self.plan.due(elapsed, self.say)

    def finish(self) -> None:
        """The window closes (before the stages are stopped)."""
        self.end_ns = time.time_ns()
        self.poll(-1.0)

    def close(self) -> None:
        for w in (self.books, self.signals):
            if w is not None:
                with contextlib.suppress(Exception):   # the ring or the socket went first
                    w.close()

    def faults(self) -> list[dict[str, Any]] | None:
        if not self.with_faults:
            return None
        faults = self.plan.faults if self.plan is not None else [Fault(k, s * self.seconds) for k, s in FAULT_SCHEDULE]
        return [f.as_dict(self.books) for f in faults]

    def judge(self, summary: dict[str, dict], first: dict[str, dict]) -> list[str]:
        """``first``: each stage's figures when the window opened (the late share is the window's)."""
        problems: list[str] = []
        sids = sorted(self.symbol_ids.values())
        if not self.judged:
            for stage, f in summary.items():
                if "checksums_verified" in f and self.books is not None:
                    f.update(self.books.figures())
            return problems
        name_of = {v: k for k, v in self.symbol_ids.items()}
        for stage, f in summary.items():
            if "checksums_verified" in f:
                problems += self._judge_books(stage, f)
            if "trades" in f and "late" in f:
                problems += self._judge_bars(stage, f, first.get(stage, {}), sids, name_of)
            if "skipped_invalid" in f and self.signals is not None:
                got = self.signals.features
                f["symbols_with_features"] = sum(1 for s in sids if got.get(s))
                silent = [name_of[s] for s in sids if not got.get(s)]
                if silent:
                    f["symbols_without_features"] = silent
                    problems.append(f"{stage} published nothing for {len(silent)} symbol(s): {', '.join(silent)}")
        if self.with_faults:
            for fault in self.faults() or []:
                if fault.get("error"):
                    problems.append(f"fault {fault['kind']} was not injected: {fault['error']}")
                elif fault["detected_s"] is None:
                    problems.append(f"fault {fault['kind']} ({', '.join(fault['symbols'])}) was never detected")
                elif fault["repaired_s"] is None:
                    problems.append(f"fault {fault['kind']} ({', '.join(fault['symbols'])}) was detected "
                                    f"after {fault['detected_s']} s but never repaired")
        return problems

    def _judge_books(self, stage: str, f: dict) -> list[str]:
        if self.books is None:
            return [f"{stage}: its entries could not be read, so their validity is unknown"]
        fig = self.books.figures()
        f.update(fig)
        # the books ring's own count is exact; the stage's counter is as of its last publication
        spec = self.pipeline.processes.get(stage)
        for key, ring in f.get("rings", {}).items():
            if spec is not None and key in spec.writes and self.pipeline.rings[key].type == "orderbook_entry":
                f["entries_published"] = ring["written"]
        f["valid_share_clock"] = self.books.clock
        out = []
        if fig["symbols_never_valid"]:
            out.append(f"{stage}: {fig['symbols_never_valid']} book(s) never had a valid entry")
        share = fig["valid_share"]
        if not self.with_faults and share is not None and share < MIN_VALID_SHARE:
            out.append(f"{stage}: only {share:.3%} of entries were valid (at least {MIN_VALID_SHARE:.1%} expected)")
        if share is None:
            out.append(f"{stage}: no valid entry was read")
        return out

    def _judge_bars(self, stage: str, f: dict, first: dict, sids: list[int], name_of: dict) -> list[str]:
        out = []
        trades = f["trades"] - first.get("trades", 0)
        late = max([f[k] - first.get(k, 0) for k in f if k.startswith("late_")] or [0])
        f["trades_while_up"], f["late_while_up"] = trades, late   # the window the share is judged on
        f["late_share"] = round(late / trades, 6) if trades else None
        if trades and late / trades > MAX_LATE_SHARE:
            out.append(f"{stage}: {late:,} of {trades:,} trades ({late / trades:.2%}) came late for their bar "
                       f"(at most {MAX_LATE_SHARE:.1%} expected)")
        if self.signals is None:
            return out + [f"{stage}: the signals bus could not be read, so its bars are unchecked"]
        f["bars_published"] = self.signals.bars_published()
        # only a complete bar stands for its period; a partial one (under way when bars started, cut
        # short at the end) is shown apart and never fills a period
        f["bars_complete"] = self.signals.bars_complete()
        f["bars_partial"] = self.signals.bars_partial()
        f["bars_partial_why"] = self.signals.partial_why
        try:
            from shmpipe_services.consumers.bars import DEFAULT_TIMEFRAMES, parse_timeframes
            timeframes = parse_timeframes(",".join(DEFAULT_TIMEFRAMES))
        except Exception:  # noqa: BLE001
            timeframes = [("1s", 1)]
        # periods wholly inside the window whose bar was due (end + grace, and a second to arrive)
        due_by = self.end_ns - int((BAR_GRACE_S + 1.0) * 1e9)
        missing_total = {}
        for label, tf_s in timeframes:
            missing = self.signals.missing_bars(sids, label, tf_s * 10**9, self.start_ns, due_by)
            for sid, n in missing.items():
                missing_total[name_of.get(sid, str(sid))] = missing_total.get(name_of.get(sid, str(sid)), 0) + n
        if missing_total:
            f["bars_missing"] = missing_total
            out.append(f"{stage}: complete bars missing for closed periods: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(missing_total.items())))
        return out

