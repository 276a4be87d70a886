"""``shmpipe demo``: the example pipeline (``examples/pipeline.toml``) run by the launcher for a
while, watched live, stopped, checked and summed up.

Everything the run makes is private to it and removed at the end: its rings (prefix
``demo-<pid>.``), its control sockets and signals bus (a temporary ``SHMPIPE_RUNTIME_DIR``), its
symbol registry (a temporary one, so the synthetic symbols never reach the user's), its logs (kept,
and named, only when the run fails).

The run passes when every stage moved records, no stage lost one, the verifier saw no tick out of
order, every process ended cleanly when stopped, and nothing is left behind: no child process, no
ring segment of the run. Beside the stages' own counters the demo reads the market as a consumer
would (demo_market.py: every order-book entry, every bar and features message on the bus), and
fails the run when fewer than 99.9 % of the entries are valid (after each book's first valid one),
more than 0.1 % of the trades came late for their bar, a symbol has no bar for a period that closed
during the run, or features published nothing for a symbol. With ``faults`` it injects a sequence
gap, a corrupted level and a dropped connection into the synthetic market, and passes only when the
order book flagged each and a resnapshot repaired it within the run (the order-book share is not
judged then: the faults make books invalid on purpose).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import demo_market
from .config import Pipeline, load, loads
from .figures import read_counters, stage_figures
from .private_run import private_registry
from .supervisor import Launcher, LaunchError

SAMPLE_S = 0.25
RATE_WINDOW_S = 2.0
CLOSE_SETTLE_S = 0.6          # longer than any stage's stats interval (0.5 s)
CLOSE_DEADLINE_S = 5.0


@dataclass
class Sample:
    at: float
    stages: dict[str, dict[str, Any]]
    rings: dict[str, dict[str, Any]]


@dataclass
class DemoResult:
    summary: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    log_dir: str | None = None
    faults: list[dict[str, Any]] | None = None     # with --faults: one per fault injected

    def as_json(self) -> dict[str, Any]:
        """The stages (one key each, as before), ``ok``, ``reasons`` when not ok, ``faults``."""
        out: dict[str, Any] = dict(self.summary)
        out["ok"] = self.ok
        if not self.ok:
            out["reasons"] = list(self.problems)
        if self.faults is not None:
            out["faults"] = self.faults
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def example_path(name: str = "pipeline.toml") -> Path:
    """The installed example (package ``shmpipe_examples``), else the checkout's ``examples/``."""
    try:
        from shmpipe_examples import path

        found = path(name)
        if found.exists():
            return found
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2] / "examples" / name


def final_counters(log_path: str) -> dict | None:
    """The last JSON object a process printed in its log (services print their final counters with
    --json), numbers only; None when there is none."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return {k: v for k, v in obj.items() if isinstance(v, int) and not isinstance(v, bool)}
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_demo_pipeline(feed: str, prefix: str) -> Pipeline:
    if feed == "fixtures":
        path = example_path("pipeline-fixtures.toml")
        fixture = example_path("kraken_v2.jsonl")
        text = path.read_text().replace("{feed_port}", str(_free_port())).replace("{fixture}", str(fixture))
        return loads(text, str(path), ring_prefix=prefix)
    return load(example_path(), ring_prefix=prefix)


class Watcher:
    """Samples every stage's counters and every ring's, keeps the first and last samples."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.first: Sample | None = None
        self.recent: collections.deque[Sample] = collections.deque(maxlen=16)
        self.last: Sample | None = None
        self.known: dict[str, dict] = {}  # each stage's last counters: a stage that ended keeps its figures
        self.final: dict[str, dict | None] = {}  # counters an ended stage printed (--json) in its log

    def sample(self) -> Sample:
        stages = {}
        for name, state in self.launcher.processes.items():
            if state.state == "exited" and name not in self.final:
                # it ended by itself and took its stats segment along: its last words are exact
                self.final[name] = final_counters(state.log_path)
                if self.final[name]:
                    self.known[name] = self.final[name]
            counters = None if self.final.get(name) else read_counters(state.spec.service,
                                                                        use_control=state.spec.control)
            if counters is not None:
                self.known[name] = counters
            if name not in self.known and not (state.spec.reads or state.spec.writes):
                continue  # a helper outside the rings (the feed server): no figures to show
            figures = stage_figures(name, self.known.get(name))
            figures["restarts"] = state.restarts
            figures["state"] = state.state
            stages[name] = figures
        rings = self.launcher.ring_stats()["rings"]
        s = Sample(time.monotonic(), stages, rings)
        self.last = s
        self.recent.append(s)
        if self.first is None:
            self.first = s
        return s

    def rate(self, stage: str) -> float:
        """Records per second over the last ~2 s (stages publish their counters every 0.1-0.5 s)."""
        b = self.last
        a = next((x for x in self.recent if b is not None and b.at - x.at <= RATE_WINDOW_S), None)
        if a is None or b is None or b.at <= a.at or stage not in a.stages or stage not in b.stages:
            return 0.0
        return max(0.0, (b.stages[stage]["records"] - a.stages[stage]["records"]) / (b.at - a.at))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plain_line(watcher: Watcher, elapsed: float) -> str:
    s = watcher.last
    parts = []
    for name, f in s.stages.items():
        lat = f" p50 {_fmt(f['p50_us'])} µs p99 {_fmt(f['p99_us'])} µs" if "p50_us" in f else ""
        parts.append(f"{name} {_fmt(f['records'])} ({watcher.rate(name):,.0f}/s) lost {f['lost']}{lat}")
    return f"[{elapsed:5.1f} s] " + " | ".join(parts)


def _rich_view(watcher: Watcher, elapsed: float, seconds: float, recent: list[str],
               market: demo_market.MarketWatch | None = None):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = watcher.last
    stages = Table(title=f"shmpipe demo: {elapsed:4.1f} / {seconds:g} s", expand=False)
    for col in ("stage", "state", "cpus", "records", "rate /s", "lost", "p50 µs", "p99 µs", "restarts"):
        stages.add_column(col, justify="left" if col in ("stage", "state") else "right")
    for name, f in s.stages.items():
        cpus = watcher.launcher.processes[name].cpus
        stages.add_row(
            name,
            f["state"],
            ",".join(map(str, cpus)) if cpus else "-",
            _fmt(f["records"]),
            f"{watcher.rate(name):,.0f}",
            _fmt(f["lost"]),
            _fmt(f.get("p50_us")),
            _fmt(f.get("p99_us")),
            _fmt(f["restarts"]),
        )
    rings = Table(expand=False)
    for col in ("ring", "written", "fill", "readers", "max lag", "lost", "full waits"):
        rings.add_column(col, justify="left" if col == "ring" else "right")
    for r in s.rings.values():
        if "error" in r:
            continue
        lags = [c["lag"] for c in r["consumers"]]
        rings.add_row(
            r["segment"],
            _fmt(r["written"]),
            _fmt(r["fill"]),
            str(len(r["consumers"])),
            _fmt(max(lags) if lags else 0),
            _fmt(r["lost"]),
            _fmt(r["full_waits"]),
        )
    tables = [_market_table(market)] if market is not None else []
    return Group(*tables, stages, rings, *(Text(f"launcher: {line}", style="dim") for line in recent))


def _market_table(market: demo_market.MarketWatch):
    """Per symbol: the latest book's touch, the last closed bar, the latest features."""
    from rich.table import Table

    t = Table(title="market", expand=False)
    for col in ("symbol", "bid", "ask", "spread", "book", "last bar (1s) o/h/l/c", "vol", "mid", "imbalance",
                "microprice"):
        t.add_column(col, justify="left" if col in ("symbol", "book", "last bar (1s) o/h/l/c") else "right")
    books = market.books.books if market.books is not None else {}
    sig = market.signals
    for name, sid in sorted(market.symbol_ids.items()):
        b = books.get(sid)
        bid, ask, flags = (b.last[0], b.last[1], b.last[2]) if b is not None and b.last else (None, None, None)
        state = "-" if flags is None else ("valid" if not flags & 1 else f"INVALID ({flags:#04x})")
        bar = sig.last_bar.get(sid) if sig is not None else None
        feat = sig.last_features.get(sid) if sig is not None else None
        t.add_row(
            name,
            f"{bid:,.2f}" if bid else "-",
            f"{ask:,.2f}" if ask else "-",
            f"{ask - bid:,.2f}" if bid and ask else "-",
            state,
            "/".join(f"{bar[k]:,.2f}" for k in ("open", "high", "low", "close")) if bar else "-",
            f"{bar['volume']:,.2f}" if bar else "-",
            f"{feat['mid']:,.3f}" if feat else "-",
            f"{feat['imbalance']:+.2f}" if feat else "-",
            f"{feat['microprice']:,.3f}" if feat else "-",
        )
    return t


def _children_left(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            import psutil

            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except ImportError:
            try:
                os.kill(pid, 0)
                left.append(pid)
            except ProcessLookupError:
                pass
        except Exception:  # noqa: BLE001 - gone while we looked
            pass
    return left


def _left_behind(pids: list[int], ring_prefix: str) -> list[str]:
    """A run's stage processes still alive and its ring segments still in /dev/shm, as problems."""
    problems = []
    left = _children_left(pids)
    if left:
        problems.append(f"processes left running: {left}")
    segments = sorted(p.name for p in Path("/dev/shm").glob(f"shmpipe.{ring_prefix}*"))
    if segments:
        problems.append(f"ring segments left in /dev/shm: {segments}")
    return problems


def run_demo(
    seconds: float,
    feed: str = "synthetic",
    *,
    as_json: bool = False,
    metrics_port: int | None = None,
    out=sys.stdout,
    err=sys.stderr,
    faults: bool = False,
    rate: float | None = None,
) -> DemoResult:
    tmp = tempfile.mkdtemp(prefix="shmpipe-demo-", dir="/tmp")  # short: ipc:// paths are limited
    with private_registry(tmp, f"demo-{os.getpid()}"):
        log_dir = os.path.join(tmp, "logs")
        messages: list[str] = []
        live_view = [False]   # while the rich view is up, the launcher's lines show inside it

        def say(line: str) -> None:
            messages.append(line)
            if not as_json and not live_view[0]:
                print(f"shmpipe demo: {line}", file=err, flush=True)

        result = DemoResult({}, log_dir=log_dir)
        launcher = market = None
        try:
            if faults and feed != "synthetic":
                raise ValueError(f"--faults injects into the synthetic market; --feed {feed} has none")
            prefix = f"demo-{os.getpid()}."
            if rate is not None and feed != "synthetic":
                raise ValueError(f"--rate paces the synthetic market; --feed {feed} has none")
            pipeline = load_demo_pipeline(feed, prefix)
            if rate is not None:
                _set_market_rate(pipeline, rate)
            opens = _open_the_market_when_up(pipeline)
            launcher = Launcher(pipeline, log_dir=log_dir, metrics_port=metrics_port, say=say)
            from .supervisor import install_stop_signals

            install_stop_signals(launcher)
            started = time.monotonic()
            launcher.start()
            watcher = Watcher(launcher)
            # The seconds count from when every stage is up: on a loaded box starting five Python
            # processes can take most of a short run, and the last stage would then be judged on
            # the fraction of a second it had (seen: features 'moved no records' in a 4 s run
            # whose start took 3 s).
            market = demo_market.MarketWatch(pipeline, faults=faults, seconds=seconds, say=say,
                                             judged=feed == "synthetic")
            if opens is not None:
                _resume(opens, say)
            opened = time.monotonic()
            market.start()
            _watch(launcher, watcher, seconds, time.monotonic(), as_json, out, messages, live_view, market)
            open_s = time.monotonic() - opened
            if opens is not None:
                _close_the_market(opens, launcher, watcher, market, say)
            market.finish()          # before the last sample: what it read is then <= each ring's written
            final = watcher.sample()
            pids = [s.pid for s in launcher.processes.values() if s.pid]
            launcher.stop()
            result.summary = _summary(final, launcher, pipeline, time.monotonic() - started)
            result.problems = _problems(final, launcher, pipeline, pids)
            first = watcher.first.stages if watcher.first is not None else {}
            result.problems += market.judge(result.summary, first)
            if rate is not None:
                result.problems += _rate_held(result.summary, rate, open_s)
            result.faults = market.faults()
        except (LaunchError, OSError, ValueError) as exc:
            result.problems.append(str(exc))
        finally:
            if market is not None:
                market.close()
            if launcher is not None:
                launcher.stop()
            if result.ok:
                shutil.rmtree(tmp, ignore_errors=True)
                result.log_dir = None
            else:
                shutil.rmtree(os.path.join(tmp, "run"), ignore_errors=True)
                if as_json:
                    for line in messages:
                        print(f"shmpipe demo: {line}", file=err)
    return result


def _set_market_rate(pipeline: Pipeline, rate: float) -> None:
    """The synthetic capture's --rate (venue messages per second) becomes ``rate``."""
    import dataclasses

    for name, spec in pipeline.processes.items():
        cmd = list(spec.command)
        if "capture" in cmd and "synthetic" in cmd:
            if "--rate" in cmd:
                cmd[cmd.index("--rate") + 1] = repr(float(rate))
            else:
                cmd += ["--rate", repr(float(rate))]
            pipeline.processes[name] = dataclasses.replace(spec, command=cmd)


RATE_HELD = 0.99   # --rate: capture must have sent this share of the messages due while the market was open


def _rate_held(summary: dict[str, dict], rate: float, open_s: float) -> list[str]:
    """With --rate: a lossless pipeline that cannot keep up slows capture down rather than lose a
    record, so "lost 0" alone would call a run at a fraction of the rate asked ok. Capture's ticks
    (one per message, the ring's exact count) against the rate over the time the market was open;
    the figures go into capture's summary as ``rate``."""
    for name, stage in summary.items():
        if stage.get("ticks") is None or open_s <= 0:
            continue
        sent = stage["ticks"]
        stage["rate"] = {"asked": rate, "messages_per_s": round(sent / open_s), "open_s": round(open_s, 3)}
        due = rate * open_s
        if sent < RATE_HELD * due:
            return [f"{name} sent {sent:,} messages in the {open_s:.1f} s the market was open, "
                    f"{1 - sent / due:.1%} behind --rate {rate:,.0f} (about {sent / open_s:,.0f}/s): "
                    "the pipeline did not hold the rate"]
    return []


def _open_the_market_when_up(pipeline: Pipeline) -> str | None:
    """The synthetic capture starts paused and is resumed once every stage is up: a reader that
    started a second or two after capture would otherwise begin with a backlog whose trades are
    late for bars already closed by the wall clock, and books it never saw the snapshot of. Returns
    the service to resume, or None (another feed: it runs as the file says)."""
    import dataclasses

    for name, spec in pipeline.processes.items():
        cmd = list(spec.command)
        if "capture" in cmd and "synthetic" in cmd and spec.control and "--paused" not in cmd:
            pipeline.processes[name] = dataclasses.replace(spec, command=[*cmd, "--paused"])
            return spec.service
    return None


def _resume(service: str, say) -> None:
    from shmpipe import control

    try:
        control.request(service, "resume", timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - it stays paused: "moved no records" will say so
        say(f"could not resume {service}: {exc}")


def _close_the_market(service: str, launcher: Launcher, watcher: Watcher, market, say) -> None:
    """Pause the market and let the stages drain, so the summary's counts agree with the rings'
    (each stage publishes its counters every 0.1-0.5 s): until every reader of every ring has read
    all and no stage's count moved over CLOSE_SETTLE_S, or CLOSE_DEADLINE_S."""
    from shmpipe import control

    try:
        control.request(service, "pause", timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - the summary is then as of the last sample, and says so
        say(f"could not pause {service} to close the market: {exc}")
        return
    deadline = time.monotonic() + CLOSE_DEADLINE_S
    before = None
    while time.monotonic() < deadline:
        launcher.supervise_once()
        market.poll(-1.0)
        s = watcher.sample()
        lag = sum(c["lag"] for r in s.rings.values() if "error" not in r for c in r["consumers"])
        counts = {name: f["records"] for name, f in s.stages.items()}
        if lag == 0 and counts == before:
            return
        before = counts
        time.sleep(CLOSE_SETTLE_S)   # a Ctrl-C already set stop_event: still let them drain
    say(f"the stages had not drained {CLOSE_DEADLINE_S:g} s after the market closed")


def _watch(launcher: Launcher, watcher: Watcher, seconds: float, started: float, as_json: bool, out,
           messages: list[str], live_view: list[bool], market: demo_market.MarketWatch | None = None) -> None:
    use_rich = not as_json and out.isatty()
    live = None
    if use_rich:
        try:
            from rich.live import Live
        except ImportError:
            use_rich = False
    deadline = started + seconds
    next_sample = next_line = 0.0
    try:
        while not launcher.stop_event.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            launcher.supervise_once()
            if market is not None:
                market.poll(now - started)
            if now >= next_sample:
                watcher.sample()
                next_sample = now + SAMPLE_S
                elapsed = now - started
                if use_rich:
                    view = _rich_view(watcher, elapsed, seconds, messages[-4:], market)
                    if live is None:
                        live = Live(view, refresh_per_second=4, transient=False)
                        live.start()
                        live_view[0] = True
                    else:
                        live.update(view)
                elif not as_json and now >= next_line:
                    print(_plain_line(watcher, elapsed), file=out, flush=True)
                    next_line = now + 2.0
            launcher.stop_event.wait(0.05)
    finally:
        if live is not None:
            live.stop()
            live_view[0] = False


def _summary(final: Sample, launcher: Launcher, pipeline: Pipeline, elapsed: float) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for name, figures in final.stages.items():
        state = launcher.processes[name]
        stage = dict(figures)
        stage["state"] = state.state
        stage["exit_code"] = state.exit_code
        stage["cpus"] = list(state.cpus) if state.cpus else None
        stage["records_per_s"] = round(figures["records"] / elapsed) if elapsed > 0 else 0
        spec = pipeline.processes[name]
        stage["rings"] = {}
        for key in (*spec.writes, *spec.reads):
            r = final.rings.get(key, {})
            if "error" not in r and r:
                stage["rings"][key] = {
                    "segment": r["segment"],
                    "written": r["written"],
                    "lost": r["lost"],
                    "evictions": r["evictions"],
                }
        # A source (reads no ring) that is the only writer of rings the launcher made: those rings'
        # own counts are exact, across its restarts (its counters start again at 0) and after it
        # ended (its stats segment is gone).
        own = [
            k
            for k in spec.writes
            if k in launcher.created
            and all(k not in other.writes for o, other in pipeline.processes.items() if o != name)
        ]
        if not spec.reads and own and len(own) == len(spec.writes) and all(k in stage["rings"] for k in own):
            stage["records"] = sum(stage["rings"][k]["written"] for k in own)
            for k in own:
                kind = {"tick": "ticks", "level_update": "levels"}.get(pipeline.rings[k].type)
                if kind in stage:
                    stage[kind] = stage["rings"][k]["written"]
        # a reader's loss on a lossy ring is counted by the ring, in the reader's slot (found by
        # pid); verify counts it itself (ring_lost), other stages may not
        if spec.reads and "ring_lost" not in figures and "evictions" not in figures:
            stage["lost"] += sum(
                c["lost"]
                for k in spec.reads
                for c in final.rings.get(k, {}).get("consumers", [])
                if c["pid"] == state.pid
            )
        summary[name] = stage
    return summary


def _problems(final: Sample, launcher: Launcher, pipeline: Pipeline, pids: list[int]) -> list[str]:
    problems = []
    for name, state in launcher.processes.items():
        f = final.stages.get(name, {"records": None, "lost": 0})
        if f["records"] == 0:
            problems.append(f"{name} moved no records (see its log)")
        if f["lost"]:
            problems.append(f"{name} lost {f['lost']:,} records")
        if f.get("disorder"):
            problems.append(f"{name} saw {f['disorder']:,} records out of order")
        if state.exit_code not in (0, None):
            problems.append(f"{name} ended with exit code {state.exit_code} (see its log)")
        if state.restarts:
            problems.append(f"{name} was restarted {state.restarts} time(s) (see its log)")
    problems += _left_behind(pids, pipeline.ring_prefix)
    return problems
