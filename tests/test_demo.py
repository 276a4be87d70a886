"""``shmpipe demo``: the example pipeline under the launcher, its JSON summary (one key per stage,
records / lost / p50_us / p99_us, plus ``ok``, ``reasons`` and, with --faults, ``faults``), the
live lines, Ctrl-C, nothing left behind, the verdict failing when a stage lost records, and the
market it shows: valid books, bars and features per symbol, faults detected and repaired."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from demo_helpers import cleanup_demo, left_behind


def _demo(*args, cwd, timeout=120):
    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe_tools.cli", "demo", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_json_has_one_object_per_stage_with_no_loss(tmp_path):
    proc = _demo("--seconds", "4", "--json", cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summary = json.loads(out)  # stdout is exactly one JSON object
        assert summary.pop("ok") is True and "reasons" not in summary and "faults" not in summary
        assert {"capture", "verify"} <= set(summary)
        for stage, figures in summary.items():
            assert isinstance(figures, dict)
            assert figures["records"] > 0, (stage, figures)
            assert figures["lost"] == 0, (stage, figures)
            assert figures["exit_code"] == 0 and figures["restarts"] == 0
        assert summary["capture"]["ticks"] > 0 and summary["capture"]["levels"] > 0
        assert summary["verify"]["disorder"] == 0
        assert 0 <= summary["verify"]["p50_us"] <= summary["verify"]["p99_us"]
        # the verifier cannot have checked more ticks than the ring was given
        assert summary["verify"]["records"] <= summary["verify"]["rings"]["ticks"]["written"]
        assert summary["capture"]["cpus"] != summary["verify"]["cpus"] or len(summary["capture"]["cpus"]) > 1
        assert left_behind(proc.pid) == ([], [])
        assert not list(tmp_path.iterdir())  # no logs in the working directory
    finally:
        cleanup_demo(proc)


def test_demo_plain_output_and_ctrl_c(tmp_path):
    proc = _demo("--seconds", "60", cwd=tmp_path)
    try:
        first = proc.stdout.readline()  # a live line (stdout is not a terminal: plain lines)
        assert first.startswith("[") and "capture" in first and "verify" in first, first
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stage" in out and "capture" in out
        assert "shmpipe demo: ok: loss 0" in out
        assert "verify: stopped (exited with code 0)" in err
        assert left_behind(proc.pid) == ([], [])
    finally:
        cleanup_demo(proc)


def test_the_verdict_fails_on_loss_disorder_restarts_and_exit_codes():
    from shmpipe_services.launcher import demo
    from shmpipe_services.launcher.config import loads

    pipeline = loads(
        '[processes.a]\ncommand = "sleep 1"\n[processes.b]\ncommand = "sleep 1"\n',
        "x.toml",
        ring_prefix="no-such-prefix-for-sure.",
    )

    class State:
        def __init__(self, restarts=0, exit_code=0):
            self.restarts, self.exit_code = restarts, exit_code

    class FakeLauncher:
        processes = {"a": State(), "b": State()}

    good = demo.Sample(
        0.0, {"a": {"records": 10, "lost": 0}, "b": {"records": 5, "lost": 0, "disorder": 0}}, {}
    )
    assert demo._problems(good, FakeLauncher(), pipeline, []) == []
    bad = demo.Sample(
        0.0, {"a": {"records": 0, "lost": 3}, "b": {"records": 5, "lost": 0, "disorder": 2}}, {}
    )
    FakeLauncher.processes = {"a": State(restarts=1), "b": State(exit_code=1)}
    problems = demo._problems(bad, FakeLauncher(), pipeline, [])
    assert problems == [
        "a moved no records (see its log)",
        "a lost 3 records",
        "a was restarted 1 time(s) (see its log)",
        "b saw 2 records out of order",
        "b ended with exit code 1 (see its log)",
    ]


def test_metrics_during_the_demo_show_ring_counters(tmp_path):
    import prometheus_client.parser as parser

    import shmpipe.metrics  # noqa: F401  first party: must import, not skip
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _demo("--seconds", "8", "--json", "--metrics-port", str(port), cwd=tmp_path)
    ticks_ring = f"demo-{proc.pid}.ticks"
    try:
        deadline = time.monotonic() + 60
        found = []
        while time.monotonic() < deadline and not found:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            for family in parser.text_string_to_metric_families(text):
                for sample in family.samples:
                    if ticks_ring in sample.labels.values() and sample.value > 0:
                        found.append(sample)
            if not found:
                time.sleep(0.2)
        assert found, f"no non-zero counter of {ticks_ring} in the metrics"
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        cleanup_demo(proc)


def test_fixtures_feed_every_captured_tick_is_read(tmp_path):
    import websockets  # noqa: F401  a dependency of shmpipe
    proc = _demo("--feed", "fixtures", "--seconds", "22", "--json", cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary.pop("ok") is True
        assert "feed" not in summary  # the feed server moves no ring records: no stage of its own
        assert {"capture", "verify"} <= set(summary)
        assert all(stage["lost"] == 0 for stage in summary.values())
        capture, verify = summary["capture"], summary["verify"]
        assert capture["state"] == "exited" and capture["exit_code"] == 0  # the recording ended: feed closed
        assert capture["ticks"] > 0 and capture["levels"] > 0
        # the reader joined at the oldest record of a lossless ring: it read every tick capture wrote
        assert verify["records"] == capture["ticks"] == verify["rings"]["ticks"]["written"]
        # every later stage read everything its ring was given: exact counts across the pipeline
        if "orderbook" in summary:
            assert summary["orderbook"]["records"] == capture["levels"]
        if "bars" in summary:
            assert summary["bars"]["records"] == capture["ticks"]
        if "features" in summary:
            assert summary["features"]["records"] == summary["orderbook"]["rings"]["books"]["written"] > 0
        assert capture["lost"] == verify["lost"] == 0
        assert left_behind(proc.pid) == ([], [])
    finally:
        cleanup_demo(proc)


def _shadow(tmp_path, *modules):
    """A PYTHONPATH entry on which importing each module fails, as on an install without it."""
    root = tmp_path / "shadow"
    for module in modules:
        (root / module).mkdir(parents=True)
        (root / module / "__init__.py").write_text(f"raise ImportError('simulated: no {module}')\n")
    return str(root)


@pytest.mark.parametrize("missing", ["msgspec", "zmq"])
def test_without_a_pipeline_dependency_the_ring_demo_runs(tmp_path, missing):
    import os

    env = dict(os.environ, PYTHONPATH=_shadow(tmp_path, missing))
    out = subprocess.run(
        [sys.executable, "-m", "shmpipe_tools.cli", "demo", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert f"the pipeline cannot run on this install (simulated: no {missing}" in out.stderr
    ring = json.loads(out.stdout)["ring"]
    assert ring["records"] == 10_000_000 and ring["lost"] == 0 and ring["verified"]


@pytest.mark.parametrize("counters, figures", [
    ({"ticks_written": 5, "levels_written": 7, "gaps": 1, "latency_p50_us": 3, "latency_p99_us": 9},
     {"records": 12, "lost": 0, "ticks": 5, "levels": 7, "feed_gaps": 1, "p50_us": 3, "p99_us": 9}),
    ({"records": 10, "lost": 2, "disorder": 0, "latency_p50_us": 0, "latency_p99_us": 0},
     {"records": 10, "lost": 2, "disorder": 0}),                      # no latency measured: no keys
    ({"records": 40, "updates": 30, "snapshots_written": 30}, {"records": 40, "lost": 0}),   # orderbook
    ({"consumed": 8, "lost": 1, "published": 3}, {"records": 8, "lost": 1}),                # bars, features
    ({"entries_written": 4, "bars_published": 2}, {"records": 6, "lost": 0}),
    (None, {"records": 0, "lost": 0}),
], ids=["capture", "verify", "orderbook", "consumer", "generic", "nothing"])
def test_stage_figures(counters, figures):
    from shmpipe_services.launcher.figures import stage_figures
    got = stage_figures("x", counters)
    assert {k: got[k] for k in figures} == figures
    assert ("p50_us" in got) == ("p50_us" in figures)


def test_final_counters_are_the_last_json_object_in_a_log(tmp_path):
    from shmpipe_services.launcher.demo import final_counters
    log = tmp_path / "x.log"
    assert final_counters(str(log)) is None
    log.write_text('==== start\n{"records": 5}\nnoise\n{"records": 7, "ended": "feed closed", "ok": true}\n'
                   "{not json}\n")
    assert final_counters(str(log)) == {"records": 7}


SLOW_START = """
import sys, time
from shmpipe_services.launcher import supervisor
spawn = supervisor.Launcher._spawn
def slow_spawn(self, state):
    time.sleep(1.0)            # a loaded box: every stage takes a second longer to start
    spawn(self, state)
supervisor.Launcher._spawn = slow_spawn
from shmpipe_tools.cli import main
sys.exit(main(["demo", "--seconds", "2", "--json"]))
"""


def test_demo_seconds_count_from_when_every_stage_is_up(tmp_path):
    """Five stages starting a second late each: the last one still gets its full run (it used to
    get none, and 'moved no records' failed the demo)."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_START], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["features"]["records"] > 0, summary["features"]
    finally:
        cleanup_demo(proc)


# -- the market (issue 23) ---------------------------------------------------------------------------
def _run_json(args, tmp_path, timeout=180, script=None):
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "shmpipe_tools.cli", "demo", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        assert left_behind(proc.pid) == ([], [])
        return proc.returncode, json.loads(out), err
    finally:
        cleanup_demo(proc)


def test_the_demo_shows_a_market_whose_books_bars_and_features_hold(tmp_path):
    """Each exit-status condition, read from the real processes of a plain run: nothing lost,
    >= 99.9 % of the book entries valid, <= 0.1 % of trades late, a bar for every symbol and closed
    second, features for every symbol; and the figures agree with the rings'."""
    rc, summary, err = _run_json(["--seconds", "6", "--json"], tmp_path)
    assert rc == 0 and summary["ok"] is True, (err, summary.get("reasons"))
    stages = {k: v for k, v in summary.items() if isinstance(v, dict)}
    assert all(s["lost"] == 0 for s in stages.values())
    book, bars, features, verify = (summary[k] for k in ("orderbook", "bars", "features", "verify"))
    assert book["valid_share"] >= 0.999 and book["symbols"] == 8 and book["symbols_never_valid"] == 0
    assert book["checksums_verified"] > 100 and book["checksums_failed"] == 0 and book["crossed"] == 0
    # the demo read every entry the ring was given, no more
    assert 0 < book["entries_read"] <= book["entries_published"] == book["rings"]["books"]["written"]
    # the market closed and the stages drained before the last sample: the counts agree exactly
    capture = summary["capture"]
    assert verify["records"] == bars["records"] == capture["ticks"]
    assert book["records"] == capture["levels"] and features["records"] == book["entries_published"]
    assert bars["late_share"] is not None and bars["late_share"] <= 0.001
    # the market opens once every stage is up: no backlog of trades late for closed bars, no book
    # whose snapshot the order book missed
    assert bars["late"] <= 0.001 * bars["trades"] and book["entries_before_first_valid"] == 0
    assert bars["bars_published"]["1s"] >= 8 * 3 and "bars_missing" not in bars
    # bars was up before the market opened: its seconds are whole; a 6 s run sees no minute whole,
    # so any 1m or 5m bar it shows (a boundary crossed) says it is partial
    assert bars["bars_complete"]["1s"] >= 8 * 3
    for tf in ("1m", "5m"):
        assert bars["bars_complete"].get(tf, 0) == 0
        assert bars["bars_partial"].get(tf, 0) == bars["bars_published"].get(tf, 0)
    assert features["symbols_with_features"] == 8 and features["published"] >= 8
    assert 0 < verify["event_to_read_p50_us"] <= verify["event_to_read_p99_us"] < 5_000_000


FAULTS_AS_A_PLAIN_RUN = """
import sys
from shmpipe_services.launcher import demo_market
start = demo_market.MarketWatch.start
def start_with_faults(self):
    start(self)
    self.plan = demo_market.FaultPlan(self.capture_service, self.seconds)   # injected, judged as a plain run
demo_market.MarketWatch.start = start_with_faults
from shmpipe_tools.cli import main
sys.exit(main(["demo", "--seconds", "6", "--json"]))
"""


def test_a_plain_run_whose_books_go_invalid_exits_1_and_says_why(tmp_path):
    """The same faults injected without --faults: the books are invalid for a while, fewer than
    99.9 % of the entries are valid, and the run fails naming that."""
    rc, summary, err = _run_json([], tmp_path, script=FAULTS_AS_A_PLAIN_RUN)
    assert rc == 1 and summary["ok"] is False, err
    assert any("of entries were valid" in r for r in summary["reasons"]), summary["reasons"]
    assert summary["orderbook"]["valid_share"] < 0.999
    assert "faults" not in summary


def test_faults_are_each_detected_and_repaired_within_the_run(tmp_path):
    rc, summary, err = _run_json(["--faults", "--seconds", "10", "--json"], tmp_path)
    assert rc == 0 and summary["ok"] is True, (err, summary.get("reasons"), summary.get("faults"))
    faults = summary["faults"]
    assert [f["kind"] for f in faults] == ["gap", "corrupt", "drop"]
    for f in faults:
        assert f["symbols"], f
        assert 0 <= f["detected_s"] <= f["repaired_s"] < 10, f
    assert len(faults[2]["symbols"]) == 8            # a dropped connection hits every book
    book = summary["orderbook"]
    assert book["checksums_failed"] >= 1            # the corrupted level, found by its checksum
    assert book["resnapshots"] >= 3 and book["gaps"] >= 1


class _Books:
    def __init__(self, figures, times=(None, None)):
        self._figures, self._times, self.clock = figures, times, "timestamp_ns"

    def figures(self):
        return dict(self._figures)

    def fault_times(self, _sids, _at):
        return self._times


def _watch(books=None, signals=None, faults=False):
    from shmpipe_services.launcher import demo_market
    from shmpipe_services.launcher.config import loads

    pipeline = loads('[processes.capture]\ncommand = "sleep 1"\n', "x.toml", ring_prefix="no-such-prefix.")
    w = demo_market.MarketWatch(pipeline, faults=faults, seconds=10.0, say=lambda _line: None)
    w.books, w.symbol_ids = books, {"SYN0000": 1, "SYN0001": 2}
    if signals is not None:
        w.signals = signals
    w.start_ns, w.end_ns = 10 * 10**9, 20 * 10**9
    return w


GOOD_BOOKS = {"entries_read": 1000, "entries_invalid": 0, "entries_before_first_valid": 0, "valid_share": 1.0,
              "symbols": 2, "symbols_never_valid": 0}


class _Sub:
    """What a SignalSubscriber would receive, handed out one message at a time."""

    def __init__(self, messages):
        self.messages = list(messages)

    def recv(self, timeout=None):
        return self.messages.pop(0) if self.messages else None

    def close(self):
        pass


def _bar(sid, start_s, complete=True):
    from types import SimpleNamespace
    return SimpleNamespace(topic="market.bar.1s", data={
        "symbol_id": sid, "symbol": f"SYN000{sid - 1}", "timeframe": "1s", "start_ns": start_s * 10**9,
        "end_ns": (start_s + 1) * 10**9, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
        "complete": complete, "partial": [] if complete else ["start"]})


def _signals(bars_for=(1, 2), features_for=(1, 2), partial_for=()):
    """A SignalsWatch that saw 1 s bars from 9 s to 20 s for bars_for (marked partial for
    partial_for), features for features_for."""
    from types import SimpleNamespace

    from shmpipe_services.launcher.demo_market import SignalsWatch

    messages = [_bar(sid, t, complete=sid not in partial_for) for sid in bars_for for t in range(9, 21)]
    messages += [SimpleNamespace(topic="signal.features", data={"symbol_id": sid})
                 for sid in features_for for _ in range(5)]
    s = SignalsWatch(_Sub(messages))
    s.poll()
    return s


NO_LATE = {"trades": 10_000, "late": 0, "late_1s": 0}


@pytest.mark.parametrize("books, bars, signals, reason", [
    (GOOD_BOOKS, NO_LATE, {}, None),
    ({**GOOD_BOOKS, "valid_share": 0.998}, NO_LATE, {}, "only 99.800% of entries were valid"),
    ({**GOOD_BOOKS, "symbols_never_valid": 1}, NO_LATE, {}, "1 book(s) never had a valid entry"),
    (GOOD_BOOKS, {"trades": 10_000, "late": 11, "late_1s": 11}, {}, "11 of 10,000 trades (0.11%) came late"),
    (GOOD_BOOKS, NO_LATE, {"bars_for": (1,)}, "bars missing for closed periods: SYN0001 8"),
    # bars published, but bars did not see their periods whole: they do not count for them
    (GOOD_BOOKS, NO_LATE, {"partial_for": (2,)}, "bars missing for closed periods: SYN0001 8"),
    (GOOD_BOOKS, NO_LATE, {"features_for": (2,)}, "published nothing for 1 symbol(s): SYN0000"),
], ids=["good", "valid-share", "never-valid", "late", "bars-missing", "bars-partial", "features-silent"])
def test_each_market_condition_fails_the_run(books, bars, signals, reason):
    w = _watch(_Books(books), _signals(**signals))
    summary = {"orderbook": {"checksums_verified": 5}, "bars": dict(bars), "features": {"skipped_invalid": 0}}
    problems = w.judge(summary, {"bars": {"trades": 0, "late": 0, "late_1s": 0}})
    if reason is None:
        assert problems == []
    else:
        assert len(problems) == 1 and reason in problems[0], problems


def test_the_summary_counts_partial_bars_apart_from_complete_ones():
    w = _watch(_Books(GOOD_BOOKS), _signals(partial_for=(2,)))
    summary = {"bars": dict(NO_LATE)}
    w.judge(summary, {"bars": {"trades": 0, "late": 0, "late_1s": 0}})
    bars = summary["bars"]
    assert bars["bars_published"] == {"1s": 24}       # every bar the bus carried, as before
    assert (bars["bars_complete"], bars["bars_partial"]) == ({"1s": 12}, {"1s": 12})
    assert bars["bars_partial_why"] == {"1s": {"start": 12}}     # what each partial bar said


@pytest.mark.parametrize("times, reason", [
    ((0.01, 0.05), None),
    ((None, None), "was never detected"),
    ((0.01, None), "was detected after 0.01 s but never repaired"),
])
def test_a_fault_not_detected_or_not_repaired_fails_the_run(times, reason):
    from shmpipe_services.launcher.demo_market import Fault

    w = _watch(_Books(GOOD_BOOKS, times), _signals(), faults=True)

    class Plan:
        def __init__(self):
            self.faults = [Fault("gap", 2.0, injected_ns=1, symbol_ids=[1], symbols=["SYN0000"])]

    w.plan = Plan()
    problems = w.judge({}, {})
    assert problems == ([] if reason is None else [f"fault gap (SYN0000) {reason}"])
    assert w.faults() == [{"kind": "gap", "at_s": 2.0, "symbols": ["SYN0000"], "detected_s": times[0],
                           "repaired_s": times[1]}]


def test_the_live_view_shows_each_symbols_touch_last_bar_and_features():
    from rich.console import Console
    from shmpipe_services.launcher import demo
    from shmpipe_services.launcher.demo_market import BookState

    books = _Books(GOOD_BOOKS)
    books.books = {1: BookState(entries=3, last=(100.25, 100.27, 0, 0)),
                   2: BookState(entries=3, last=(110.0, 110.01, 1 | 8, 0))}
    signals = _signals()
    signals.last_bar = {1: {"open": 100.1, "high": 100.4, "low": 100.0, "close": 100.26, "volume": 12.5,
                            "start_ns": 0, "end_ns": 10**9}}
    signals.last_features = {1: {"mid": 100.26, "imbalance": 0.25, "microprice": 100.261}}
    console = Console(record=True, width=200)
    console.print(demo._market_table(_watch(books, signals)))
    text = console.export_text()
    row1 = next(line for line in text.splitlines() if "SYN0000" in line)
    for shown in ("100.25", "100.27", "0.02", "valid", "100.10/100.40/100.00/100.26", "12.50", "+0.25", "100.261"):
        assert shown in row1, (shown, row1)
    row2 = next(line for line in text.splitlines() if "SYN0001" in line)
    assert "INVALID (0x09)" in row2 and "110.00" in row2 and "0.01" in row2


def test_the_live_views_last_bar_is_a_complete_one():
    """A partial bar (the period cut short at the end) is not shown as the symbol's last bar."""
    from shmpipe_services.launcher.demo_market import SignalsWatch

    s = SignalsWatch(_Sub([_bar(1, 9), _bar(1, 10, complete=False)]))
    s.poll()
    assert s.last_bar[1]["start_ns"] == 9 * 10**9
