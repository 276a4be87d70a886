"""Smoke test of the benchmark harness (issue 5): a cut-down ``shmpipe bench --quick`` run, then
the JSON shape that outside checks read. Finishes in well under a minute.

A run that fails is a failure here, never a skip: the only rows allowed to be skipped are the
scenarios that do not apply to a transport, and the optional peer Redis when it cannot run on this
machine (never under SHMPIPE_REQUIRE_SERVICES=1, as CI sets). The harness needs hdrhistogram and
matplotlib (both in the dev extra, like everything else the suite imports), so their absence fails."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REQUIRE_SERVICES

TRANSPORTS = ["shmpipe", "c-floor", "pipe", "mp-queue", "redis-streams"]
SCENARIOS = ["pingpong", "open-loop-100k", "throughput-single", "throughput-batch-64", "broadcast-2"]
FIGURES = ("p50_us", "p99_us", "p999_us", "msgs_per_s")


def allowed_skip(transport: str, scenario: str, reason: str) -> bool:
    """Whether a skipped row is one that cannot run here, rather than a failure in disguise."""
    if transport == "c-floor":
        if not scenario.startswith(("pingpong", "throughput")):
            return reason == "the C floors are a cache-line ping-pong and an SPSC ring's throughput"
        return reason.startswith("no C compiler")
    if transport in ("pipe", "mp-queue") and scenario.startswith("broadcast"):
        return "no fan-out" in reason
    if transport == "redis-streams" and not REQUIRE_SERVICES:
        return reason.startswith(("Redis not reachable", "redis (redis-py) not installed"))
    return False  # shmpipe itself, and every other cell, must be measured


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "shmpipe_bench.cli", "--quick", "--json", str(out), "--no-plot",
           "--transports", ",".join(TRANSPORTS), "--scenarios", ",".join(SCENARIOS), "--timeout", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    result = json.loads(out.read_text()) if out.exists() else None
    return proc, result


@pytest.fixture(scope="module")
def result(bench_run):
    proc, result = bench_run
    assert result is not None, f"no JSON written (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return result


def test_bench_exits_zero_with_a_table(bench_run):
    proc, _ = bench_run
    assert proc.returncode == 0, proc.stderr[-3000:]  # nonzero when any run failed
    assert "== pingpong ==" in proc.stdout  # the terminal table


def test_no_run_failed(result):
    failed = {(r["transport"], r["scenario"]): r["error"] for r in result["results"] if r["error"]}
    assert not failed, failed


def test_skips_are_only_what_cannot_run_here(result):
    for r in result["results"]:
        if r["skipped"] is None:
            continue
        assert isinstance(r["skipped"], str) and r["skipped"], r
        assert allowed_skip(r["transport"], r["scenario"], r["skipped"]), (
            f"{r['transport']}/{r['scenario']} skipped, but it must run here: {r['skipped']}")


def test_machine_block(result):
    m = result["machine"]
    for key in ("cpu_model", "logical_cores", "kernel", "python", "packages", "cores_used",
                "pinning_granted", "date"):
        assert key in m, key
    assert isinstance(m["pinning_granted"], bool)


def test_every_transport_and_scenario_has_a_row(result):
    rows = {(r["transport"], r["scenario"]) for r in result["results"]}
    assert rows == {(t, s) for t in TRANSPORTS for s in SCENARIOS}
    for r in result["results"]:
        for key in FIGURES + ("runs", "skipped", "transport", "scenario"):
            assert key in r, (r["transport"], r["scenario"], key)


def test_rows_are_measured_or_say_why_not(result):
    for r in result["results"]:
        if r["skipped"]:
            assert all(r[k] is None for k in FIGURES), r
            continue
        assert r["runs"] == result["config"]["runs"] == 1 and r["msgs_per_s"] > 0, r
        if r["scenario"].startswith("throughput"):
            assert r["p50_us"] is None, r  # a figure the scenario does not measure is null
        else:
            assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"], r


def test_expected_measurements_happened(result):
    by = {(r["transport"], r["scenario"]): r for r in result["results"]}
    # The ring and the C floor must actually run here; the pipe cannot fan out and says so.
    assert by[("shmpipe", "pingpong")]["skipped"] is None, by[("shmpipe", "pingpong")]
    assert by[("shmpipe", "throughput-batch-64")]["skipped"] is None
    assert by[("pipe", "broadcast-2")]["skipped"]
    assert by[("c-floor", "open-loop-100k")]["skipped"]
    floor = by[("c-floor", "pingpong")]
    if floor["skipped"] is None:
        assert by[("shmpipe", "pingpong")]["ratio_to_floor_p50"] > 0
        # The throughput rows carry shmpipe's share of the C SPSC ring at the same batch size, and
        # the machine block the memcpy bandwidth they are bounded by.
        for scenario in ("throughput-single", "throughput-batch-64"):
            assert by[("c-floor", scenario)]["msgs_per_s"] > 0
            ratio = by[("shmpipe", scenario)]["ratio_to_floor"]
            assert ratio == by[("shmpipe", scenario)]["msgs_per_s"] / by[("c-floor", scenario)]["msgs_per_s"]
        assert result["machine"]["memcpy"]["gb_per_s"] > 0


def test_plot_and_table_render(result, tmp_path):
    from shmpipe_bench import report

    assert "pingpong" in report.table(result)
    assert report.markdown_table(result).startswith("| scenario |")
    png = tmp_path / "bench.png"
    assert report.plot(result, png) is None
    assert png.stat().st_size > 10_000
