"""``shmpipe demo``: the example pipeline under the launcher, its JSON summary (one key per stage,
records / lost / p50_us / p99_us), the live lines, Ctrl-C, nothing left behind, and the verdict
failing when a stage lost records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # a dependency of shmpipe: missing is a broken install, not a skip
import pytest


def _demo(*args, cwd, timeout=120):
    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe_tools.cli", "demo", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _left_behind(pid: int) -> tuple[list[str], list[int]]:
    prefix = f"demo-{pid}."
    segments = sorted(p.name for p in Path("/dev/shm").glob(f"shmpipe.{prefix}*"))
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(prefix in arg for arg in p.info["cmdline"] or []):
                procs.append(p.info["pid"])
        except psutil.Error:
            pass
    return segments, procs


def _cleanup(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    segments, procs = _left_behind(proc.pid)
    for pid in procs:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    for name in segments:
        Path("/dev/shm", name).unlink(missing_ok=True)


def test_demo_json_has_one_object_per_stage_with_no_loss(tmp_path):
    proc = _demo("--seconds", "4", "--json", cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summary = json.loads(out)  # stdout is exactly one JSON object
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
        assert _left_behind(proc.pid) == ([], [])
        assert not list(tmp_path.iterdir())  # no logs in the working directory
    finally:
        _cleanup(proc)


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
        assert _left_behind(proc.pid) == ([], [])
    finally:
        _cleanup(proc)


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
        _cleanup(proc)


def test_fixtures_feed_every_captured_tick_is_read(tmp_path):
    import websockets  # noqa: F401  a dependency of shmpipe
    proc = _demo("--feed", "fixtures", "--seconds", "22", "--json", cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        summary = json.loads(out)
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
        assert _left_behind(proc.pid) == ([], [])
    finally:
        _cleanup(proc)


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
        _cleanup(proc)
